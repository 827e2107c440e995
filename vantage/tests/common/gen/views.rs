//! Comparable views of what a daemon holds, from its API and from its state file, and of how
//! much memory it uses; the fuzz-style tests compare these before and after the abuse.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::common::Daemon;

/// One policy as the API lists it or the state file stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyView {
    /// Tenant (cgroup id).
    pub tenant: u64,
    /// A runtime override rather than a base policy.
    pub is_override: bool,
    /// Selectors.
    pub proto: u8,
    /// Destination port, 0 for any.
    pub dst_port: u16,
    /// Method code, 0 for any.
    pub http_method: u8,
    /// Path hash, 0 for any.
    pub http_path_hash: u32,
    /// Parameters.
    pub rate: u64,
    /// Bucket size.
    pub burst: u64,
    /// Whether resolution considers it.
    pub enabled: bool,
}

/// The policies `GET /policy/cg:<tenant>` lists; panics unless it answers 200.
pub fn listed(d: &Daemon, tenant: u64) -> BTreeSet<PolicyView> {
    let (status, v) = d.http_json("GET", &format!("/policy/cg:{tenant}"), None);
    assert_eq!(status, 200, "GET /policy/cg:{tenant}: {v}");
    from_listing(tenant, &v)
}

/// Parses a `GET /policy/{tenant}` answer.
pub fn from_listing(tenant: u64, v: &Value) -> BTreeSet<PolicyView> {
    let entries = v["policies"].as_array().unwrap_or_else(|| panic!("no policies array: {v}"));
    entries
        .iter()
        .map(|e| {
            let p = &e["policy"];
            let num = |f: &str| p[f].as_u64().unwrap_or_else(|| panic!("{f} in {e}"));
            let proto = p["proto"].as_str().unwrap_or_else(|| panic!("proto in {e}"));
            let method = match &p["http_method"] {
                Value::Null => 0,
                Value::String(m) => vantage::policy::parse_method(m).expect("listed method"),
                other => panic!("http_method {other} in {e}"),
            };
            PolicyView {
                tenant,
                is_override: e["map"] == "override",
                proto: vantage::policy::parse_proto(proto).expect("listed proto"),
                dst_port: num("dst_port") as u16,
                http_method: method,
                http_path_hash: num("http_path_hash") as u32,
                rate: num("rate_tokens_per_sec"),
                burst: num("burst_tokens"),
                enabled: p["enabled"].as_bool().unwrap_or_else(|| panic!("enabled in {e}")),
            }
        })
        .collect()
}

/// Base policies per tenant and the essential tenants, as the state file at `path` holds them
/// (read with the daemon's own loader, which is what a restart uses).
pub fn saved(path: &Path) -> (BTreeMap<u64, BTreeSet<PolicyView>>, BTreeSet<u64>) {
    let state = vantage::state::load(path)
        .unwrap_or_else(|e| panic!("load state file {}: {e}", path.display()));
    let mut by_tenant: BTreeMap<u64, BTreeSet<PolicyView>> = BTreeMap::new();
    for p in &state.policies {
        by_tenant.entry(p.tenant.0).or_default().insert(PolicyView {
            tenant: p.tenant.0,
            is_override: false,
            proto: p.proto,
            dst_port: p.dst_port,
            http_method: p.http_method,
            http_path_hash: p.http_path_hash,
            rate: p.spec.rate_tokens_per_sec,
            burst: p.spec.burst_tokens,
            enabled: p.spec.enabled,
        });
    }
    (by_tenant, state.essential.iter().map(|t| t.0).collect())
}

/// Whether `GET /tenancy/cg:<tenant>/essential` says essential.
pub fn essential(d: &Daemon, tenant: u64) -> bool {
    let (status, v) = d.http_json("GET", &format!("/tenancy/cg:{tenant}/essential"), None);
    assert_eq!(status, 200, "GET essential of cg:{tenant}: {v}");
    v["essential"].as_bool().unwrap_or_else(|| panic!("essential in {v}"))
}

/// Panics unless `GET /debug/audit` finds the kernel maps and the API in agreement.
pub fn assert_consistent(d: &Daemon, when: &str) {
    let (status, v) = d.http_json("GET", "/debug/audit", None);
    assert_eq!(status, 200, "{when}: GET /debug/audit: {v}");
    assert_eq!(v["consistent"], true, "{when}: kernel maps and API differ: {}", v["differences"]);
}

/// A field of /proc/<pid>/status in KiB (`VmRSS`, `VmHWM`).
pub fn memory_kib(pid: libc::pid_t, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
