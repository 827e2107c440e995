//! Start-up checks: each missing prerequisite is one clear line.

use std::path::{Path, PathBuf};

use crate::sys::{self, cap};

/// A prerequisite that is not met.
#[derive(Debug, thiserror::Error)]
pub enum PrereqError {
    /// Missing capabilities.
    #[error(
        "not privileged enough: vantage needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
         (or CAP_SYS_ADMIN); run it as root or grant them"
    )]
    Privileges,
    /// No cgroup2 mount.
    #[error(
        "cgroup v2 is not mounted: tenants are cgroup v2 ids; check with \
         `mount | grep cgroup2` and mount it (e.g. `mount -t cgroup2 none /sys/fs/cgroup`)"
    )]
    NoCgroup2,
    /// No kernel BTF.
    #[error(
        "kernel BTF is missing at {}: vantage needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y",
        path.display()
    )]
    NoBtf {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// No such interface.
    #[error("interface {iface} does not exist (see `ip link`)")]
    NoInterface {
        /// The interface asked for.
        iface: String,
    },
    /// Kernel too old.
    #[error("kernel {found} is too old: vantage needs Linux 5.8 or newer")]
    OldKernel {
        /// The running kernel's release.
        found: String,
    },
}

/// Where kernel BTF lives.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Runs every check for running on `iface`, in the order an operator would
/// fix them.
///
/// # Errors
///
/// The first unmet prerequisite.
pub fn check(iface: &str) -> Result<(), PrereqError> {
    check_kernel_version(&kernel_release())?;
    check_privileges()?;
    cgroup2_mount().ok_or(PrereqError::NoCgroup2)?;
    if !Path::new(KERNEL_BTF).exists() {
        return Err(PrereqError::NoBtf { path: KERNEL_BTF.into() });
    }
    if !Path::new("/sys/class/net").join(iface).exists() {
        return Err(PrereqError::NoInterface { iface: iface.to_owned() });
    }
    Ok(())
}

fn check_privileges() -> Result<(), PrereqError> {
    let eff = sys::effective_capabilities().map_err(|_| PrereqError::Privileges)?;
    let has = |c: u32| eff & (1 << c) != 0;
    let ok = has(cap::NET_ADMIN) && (has(cap::SYS_ADMIN) || (has(cap::BPF) && has(cap::PERFMON)));
    if ok {
        Ok(())
    } else {
        Err(PrereqError::Privileges)
    }
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn check_kernel_version(release: &str) -> Result<(), PrereqError> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let major: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if (major, minor) < (5, 8) {
        return Err(PrereqError::OldKernel { found: release.to_owned() });
    }
    Ok(())
}

/// The mount point of the cgroup2 hierarchy, from `/proc/mounts`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    parse_cgroup2_mount(&mounts)
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, path, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path.replace("\\040", " ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(parse_cgroup2_mount(mounts), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(parse_cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"), None);
    }

    #[test]
    fn kernel_version_floor_is_5_8() {
        for ok in ["5.8.0", "6.18.44-fc-v1147", "10.0"] {
            assert!(check_kernel_version(ok).is_ok(), "{ok}");
        }
        for old in ["5.7.19", "4.19.0-generic", "", "garbage"] {
            assert!(check_kernel_version(old).is_err(), "{old}");
        }
    }

    #[test]
    fn cgroup_error_says_how_to_check() {
        let msg = PrereqError::NoCgroup2.to_string();
        assert!(msg.contains("cgroup v2 is not mounted") && msg.contains("mount | grep cgroup2"));
    }
}
