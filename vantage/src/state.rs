//! The state file: base policies and essential flags, kept across restarts.
//!
//! The file is JSON, rewritten whole after every accepted change: written to
//! a temporary file in the same directory, flushed, then renamed over the old
//! one, so a crash at any moment leaves either the old or the new state and
//! never a torn file. Runtime overrides (the adaptive controller's) are never
//! written. A file that exists but cannot be read or parsed is an error at
//! start-up; it is never silently replaced.
//!
//! Rewriting the whole file costs time proportional to the number of
//! policies (about a millisecond per 10,000 on a small host), paid by each
//! change.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use vantage_common::FlowKey;

use crate::{policy::PolicySpec, tenant::TenantId};

/// Version written to and expected in the file.
pub const STATE_VERSION: u32 = 1;

/// A state file problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading failed.
    #[error("read state file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The content is not a valid state file.
    #[error("state file {} is corrupt ({reason}); fix or move it away to start empty", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed.
    #[error("write state file {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// One stored base policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// Tenant.
    pub tenant: TenantId,
    /// IP protocol, 0 for any.
    pub proto: u8,
    /// Destination port, 0 for any.
    pub dst_port: u16,
    /// HTTP method code, 0 for any.
    pub http_method: u8,
    /// HTTP path hash, 0 for any.
    pub http_path_hash: u32,
    /// Parameters.
    #[serde(flatten)]
    pub spec: PolicySpec,
}

impl StoredPolicy {
    /// The policy's key.
    pub fn key(&self) -> FlowKey {
        FlowKey {
            cgroup_id: self.tenant.0,
            http_path_hash: self.http_path_hash,
            dst_port: self.dst_port,
            proto: self.proto,
            http_method: self.http_method,
        }
    }

    /// The stored form of `key` with `spec`.
    pub fn new(key: &FlowKey, spec: PolicySpec) -> Self {
        StoredPolicy {
            tenant: TenantId(key.cgroup_id),
            proto: key.proto,
            dst_port: key.dst_port,
            http_method: key.http_method,
            http_path_hash: key.http_path_hash,
            spec,
        }
    }
}

/// Everything the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Base policies.
    pub policies: Vec<StoredPolicy>,
    /// Essential tenants.
    pub essential: Vec<TenantId>,
}

/// Removes temporary files a crashed earlier run left next to `path`
/// (a kill during [`save`] leaves `.NAME.tmp.PID` behind); they never hold
/// a state that was acknowledged, since the rename is what commits it.
pub fn remove_stale_temporaries(path: &Path) {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Loads the state at `path`; a missing file is an empty state.
///
/// # Errors
///
/// [`StateError::Read`] or [`StateError::Corrupt`]; never a silent reset.
pub fn load(path: &Path) -> Result<State, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(State { version: STATE_VERSION, ..State::default() });
        }
        Err(source) => return Err(StateError::Read { path: path.to_owned(), source }),
    };
    let corrupt = |reason: String| StateError::Corrupt { path: path.to_owned(), reason };
    let state: State = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if state.version != STATE_VERSION {
        return Err(corrupt(format!("version {} is not {STATE_VERSION}", state.version)));
    }
    for p in &state.policies {
        let s = p.spec;
        if s.rate_tokens_per_sec == 0
            || s.rate_tokens_per_sec > vantage_common::bucket::MAX_RATE
            || s.burst_tokens > vantage_common::bucket::MAX_BURST
        {
            return Err(corrupt(format!("policy for {} has out-of-range rate or burst", p.tenant)));
        }
    }
    Ok(state)
}

/// Writes `state` to `path` atomically (temporary file, then rename).
///
/// # Errors
///
/// [`StateError::Write`]; the old file is then left untouched.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let err = |source| StateError::Write { path: path.to_owned(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));

    let write = || -> io::Result<()> {
        // Buffered: serde writes token by token, a syscall each otherwise.
        let mut f = io::BufWriter::new(fs::File::create(&tmp)?);
        serde_json::to_writer_pretty(&mut f, state)?;
        f.write_all(b"\n")?;
        let f = f.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_data()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vantage-state-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&d).expect("create temp dir");
        d
    }

    #[test]
    fn round_trips_and_missing_is_empty() {
        let dir = tmpdir();
        let path = dir.join("state.json");
        let _ = fs::remove_file(&path);
        assert_eq!(load(&path).expect("missing file is empty").policies, vec![]);

        let spec = PolicySpec { rate_tokens_per_sec: 5, burst_tokens: 9, enabled: true };
        let state = State {
            version: STATE_VERSION,
            policies: vec![StoredPolicy::new(&FlowKey::tenant(42), spec)],
            essential: vec![TenantId(7)],
        };
        save(&path, &state).expect("save");
        assert_eq!(load(&path).expect("load"), state);
        // No temporary files are left next to it.
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn corrupt_files_are_refused() {
        let dir = tmpdir().join("corrupt");
        fs::create_dir_all(&dir).expect("mkdir");
        let cases = [
            "{",
            "[]",
            r#"{"version":2,"policies":[],"essential":[]}"#,
            r#"{"version":1,"policies":[{"tenant":"cg:0"}],"essential":[]}"#,
            r#"{"version":1,"policies":[],"essential":["x"]}"#,
            r#"{"version":1,"policies":[{"tenant":"cg:1","proto":6,"dst_port":1,
                "http_method":0,"http_path_hash":0,"rate_tokens_per_sec":0,
                "burst_tokens":1,"enabled":true}],"essential":[]}"#,
        ];
        for (i, text) in cases.iter().enumerate() {
            let path = dir.join(format!("s{i}.json"));
            fs::write(&path, text).expect("write");
            let err = load(&path).expect_err(text);
            assert!(err.to_string().contains("corrupt"), "{text}: {err}");
        }
        fs::remove_dir_all(dir).expect("cleanup");
    }
}
