//! The policy model: selectors, validation and precedence resolution.
//!
//! [`PolicySet`] is the daemon's copy of both policy maps. Its
//! [`PolicySet::resolve`] walks the same ten levels in the same order as the
//! classifier, through the same [`probe_key`], so the API's answer and the
//! kernel's choice agree by construction (a kernel test checks it on random
//! policy sets). Nothing here touches the kernel.

use std::collections::BTreeMap;

use serde::Serialize;
use vantage_common::{
    bucket,
    http::{self, Method, PATH_HASH_MAX_BYTES},
    probe_key, FlowKey, Level, PolicyValue, PROTO_TCP, PROTO_UDP, STEPS,
};

use crate::cli::ValidationMode;

/// Which of the two policy maps an entry lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MapKind {
    /// Runtime overrides, levels 1–5 (the adaptive controller's).
    Override,
    /// Base policies, levels 6–10 (the API's).
    Base,
}

/// The parameters of one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PolicySpec {
    /// Refill rate, tokens (packets) per second, 1..=1e9.
    pub rate_tokens_per_sec: u64,
    /// Bucket capacity in tokens, 0..=1e9 (0 drops everything).
    pub burst_tokens: u64,
    /// A disabled policy is kept but skipped by resolution.
    pub enabled: bool,
}

impl PolicySpec {
    /// The map value for this spec with a fresh (full) bucket.
    pub fn to_value(self) -> PolicyValue {
        let interval = bucket::interval_ns(self.rate_tokens_per_sec);
        PolicyValue {
            tat_ns: 0,
            admitted: 0,
            dropped: 0,
            interval_ns: interval,
            tolerance_ns: bucket::tolerance_ns(interval, self.burst_tokens),
            rate_tokens_per_sec: self.rate_tokens_per_sec,
            burst_tokens: self.burst_tokens,
            enabled: u32::from(self.enabled),
            _pad: 0,
        }
    }

    /// The map value for this spec replacing `old` at ktime `now`: counters
    /// kept, bucket tokens kept but clamped to the new burst.
    pub fn update_value(self, old: &PolicyValue, now: u64) -> PolicyValue {
        let mut v = self.to_value();
        v.admitted = old.admitted;
        v.dropped = old.dropped;
        v.tat_ns = bucket::retune(
            old.tat_ns,
            now,
            old.interval_ns,
            old.tolerance_ns,
            v.interval_ns,
            self.burst_tokens,
        );
        v
    }
}

/// Ways a policy request can be wrong; each message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// `proto` is not tcp, udp or 0..=255.
    #[error("proto {0:?} is not tcp, udp or a protocol number 0..=255")]
    Proto(String),
    /// `dst_port` outside 0..=65535.
    #[error("dst_port {0} is out of range 0..=65535")]
    Port(String),
    /// Unknown HTTP method.
    #[error(
        "http_method {0:?} is not one of GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS, CONNECT, TRACE"
    )]
    Method(String),
    /// Path does not look like a request path.
    #[error(
        "http_path {0:?} must start with '/' and hold printable ASCII without spaces, \
         at most 2048 bytes"
    )]
    Path(String),
    /// Hash out of range.
    #[error("http_path_hash {0} is out of range 1..=4294967295")]
    PathHash(String),
    /// Path and hash given but different.
    #[error("http_path {path:?} hashes to {computed}, not the given http_path_hash {given}")]
    PathHashMismatch {
        /// The path.
        path: String,
        /// Its hash.
        computed: u32,
        /// The hash given.
        given: u32,
    },
    /// Strict mode: HTTP selectors without proto/port, or similar.
    #[error("strict validation: {0}")]
    Strict(String),
}

/// Selector fields as they arrive from JSON or a query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawSelector {
    /// `tcp`, `udp` or a number.
    pub proto: Option<String>,
    /// Decimal port.
    pub dst_port: Option<String>,
    /// Method name.
    pub http_method: Option<String>,
    /// Request path.
    pub http_path: Option<String>,
    /// Decimal FNV-1a 32 hash.
    pub http_path_hash: Option<String>,
}

/// A validated selector: the key without its tenant, plus warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// IP protocol, 0 for any.
    pub proto: u8,
    /// Destination port, 0 for any.
    pub dst_port: u16,
    /// Method code, 0 for any.
    pub http_method: u8,
    /// Path hash, 0 for any.
    pub http_path_hash: u32,
    /// Things that are accepted but probably not what the operator meant.
    pub warnings: Vec<String>,
}

impl Selector {
    /// The policy key for `tenant`.
    pub fn key(&self, tenant: u64) -> FlowKey {
        FlowKey {
            cgroup_id: tenant,
            http_path_hash: self.http_path_hash,
            dst_port: self.dst_port,
            proto: self.proto,
            http_method: self.http_method,
        }
    }
}

/// Longest `http_path` accepted.
pub const MAX_PATH_LEN: usize = 2048;

/// Parses a protocol name or number.
pub fn parse_proto(s: &str) -> Result<u8, SelectorError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(PROTO_TCP),
        "udp" => Ok(PROTO_UDP),
        "icmp" => Ok(vantage_common::PROTO_ICMP),
        "icmpv6" => Ok(vantage_common::PROTO_ICMPV6),
        "any" => Ok(0),
        n => n.parse::<u8>().map_err(|_| SelectorError::Proto(s.to_owned())),
    }
}

/// The name of a protocol number for responses and labels.
pub fn proto_name(p: u8) -> String {
    match p {
        0 => "any".into(),
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        vantage_common::PROTO_ICMP => "icmp".into(),
        vantage_common::PROTO_ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Parses an HTTP method name (case-insensitive).
pub fn parse_method(s: &str) -> Result<u8, SelectorError> {
    let upper = s.trim().to_ascii_uppercase();
    Method::ALL
        .iter()
        .find(|m| m.token() == upper.as_bytes())
        .map(|m| *m as u8)
        .ok_or_else(|| SelectorError::Method(s.to_owned()))
}

/// The name of a method code, `None` for 0.
pub fn method_name(code: u8) -> Option<&'static str> {
    Method::from_code(code).and_then(|m| std::str::from_utf8(m.token()).ok())
}

/// Validates `raw` under `mode`.
///
/// # Errors
///
/// A [`SelectorError`] naming the first bad field; in strict mode also
/// partial HTTP selectors.
pub fn validate(raw: &RawSelector, mode: ValidationMode) -> Result<Selector, SelectorError> {
    let proto = raw.proto.as_deref().map(parse_proto).transpose()?.unwrap_or(0);
    let dst_port = match raw.dst_port.as_deref() {
        None => 0,
        Some(p) => p.trim().parse::<u16>().map_err(|_| SelectorError::Port(p.to_owned()))?,
    };
    let http_method = raw.http_method.as_deref().map(parse_method).transpose()?.unwrap_or(0);

    let mut warnings = Vec::new();
    let from_path = match raw.http_path.as_deref() {
        None => None,
        Some(p) => {
            let ok = p.starts_with('/')
                && p.len() <= MAX_PATH_LEN
                && p.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(SelectorError::Path(p.to_owned()));
            }
            if p.contains('?') {
                warnings.push(format!(
                    "http_path {p:?} has a query string; only the part before '?' is matched"
                ));
            }
            if p.split('?').next().is_some_and(|s| s.len() > PATH_HASH_MAX_BYTES) {
                warnings.push(format!(
                    "http_path is longer than {PATH_HASH_MAX_BYTES} bytes; only the first \
                     {PATH_HASH_MAX_BYTES} are matched"
                ));
            }
            Some(http::path_hash(p.as_bytes()))
        }
    };
    let from_hash = match raw.http_path_hash.as_deref() {
        None => None,
        Some(h) => match h.trim().parse::<u32>() {
            Ok(0) | Err(_) => return Err(SelectorError::PathHash(h.to_owned())),
            Ok(v) => Some(v),
        },
    };
    let http_path_hash = match (from_path, from_hash) {
        (Some(computed), Some(given)) if computed != given => {
            return Err(SelectorError::PathHashMismatch {
                path: raw.http_path.clone().unwrap_or_default(),
                computed,
                given,
            });
        }
        (Some(h), _) | (None, Some(h)) => h,
        (None, None) => 0,
    };

    let mut sel = Selector { proto, dst_port, http_method, http_path_hash, warnings };
    let problems = reachability_problems(&sel);
    match mode {
        ValidationMode::Strict if !problems.is_empty() => {
            return Err(SelectorError::Strict(problems.join("; ")));
        }
        _ => sel.warnings.extend(problems.into_iter().map(|p| format!("{p}: it can never match"))),
    }
    Ok(sel)
}

/// Why no packet could ever carry a flow matching this selector.
fn reachability_problems(s: &Selector) -> Vec<String> {
    let mut out = Vec::new();
    let http = s.http_method != 0 || s.http_path_hash != 0;
    if http && (s.proto != PROTO_TCP || s.dst_port == 0) {
        out.push("HTTP selectors need proto tcp and a dst_port".to_owned());
    }
    if s.http_path_hash != 0 && s.http_method == 0 {
        out.push("an HTTP path needs an http_method".to_owned());
    }
    if s.dst_port != 0 && s.proto != PROTO_TCP && s.proto != PROTO_UDP {
        out.push("dst_port needs proto tcp or udp".to_owned());
    }
    out
}

/// The level a stored key occupies in `kind`.
pub fn level_of(kind: MapKind, key: &FlowKey) -> Level {
    Level::new(kind == MapKind::Override, key.step())
}

/// One policy entry as resolution found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The level that matched.
    pub level: Level,
    /// The stored key that matched.
    pub key: FlowKey,
    /// Its parameters.
    pub spec: PolicySpec,
}

/// The daemon's copy of both policy maps.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    entries: BTreeMap<(MapKind, FlowKey), PolicySpec>,
}

impl PolicySet {
    /// The entry at `key` in `kind`.
    pub fn get(&self, kind: MapKind, key: &FlowKey) -> Option<PolicySpec> {
        self.entries.get(&(kind, *key)).copied()
    }

    /// Inserts or replaces; returns the previous spec.
    pub fn insert(&mut self, kind: MapKind, key: FlowKey, spec: PolicySpec) -> Option<PolicySpec> {
        self.entries.insert((kind, key), spec)
    }

    /// Removes; returns the removed spec.
    pub fn remove(&mut self, kind: MapKind, key: &FlowKey) -> Option<PolicySpec> {
        self.entries.remove(&(kind, *key))
    }

    /// Number of entries in `kind`.
    pub fn len(&self, kind: MapKind) -> usize {
        self.entries.keys().filter(|(k, _)| *k == kind).count()
    }

    /// Whether both maps are empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry of `kind`, in key order.
    pub fn iter(&self, kind: MapKind) -> impl Iterator<Item = (&FlowKey, &PolicySpec)> {
        self.entries.iter().filter(move |((k, _), _)| *k == kind).map(|((_, key), s)| (key, s))
    }

    /// Entries of one tenant in `kind`.
    pub fn tenant_entries(
        &self,
        kind: MapKind,
        tenant: u64,
    ) -> impl Iterator<Item = (&FlowKey, &PolicySpec)> {
        let lo = (kind, FlowKey::tenant(tenant));
        let hi = (kind, FlowKey { cgroup_id: tenant, ..max_key() });
        self.entries.range(lo..=hi).map(|((_, key), s)| (key, s))
    }

    /// Tenants with at least one entry in `kind`.
    pub fn tenants(&self, kind: MapKind) -> Vec<u64> {
        let mut v: Vec<u64> = self.iter(kind).map(|(k, _)| k.cgroup_id).collect();
        v.dedup();
        v
    }

    /// The tenant's level mask: a bit per level holding an enabled entry.
    pub fn level_mask(&self, tenant: u64) -> u32 {
        [MapKind::Override, MapKind::Base]
            .into_iter()
            .flat_map(|kind| {
                self.tenant_entries(kind, tenant)
                    .filter(|(_, s)| s.enabled)
                    .map(move |(k, _)| level_of(kind, k).mask_bit())
            })
            .fold(0, |m, b| m | b)
    }

    /// The effective policy for a packet with flow `flow`, exactly as the
    /// classifier picks it.
    pub fn resolve(&self, flow: &FlowKey) -> Option<Resolved> {
        for kind in [MapKind::Override, MapKind::Base] {
            for step in 0..STEPS {
                let Some(key) = probe_key(flow, step) else {
                    continue;
                };
                if let Some(spec) = self.get(kind, &key).filter(|s| s.enabled) {
                    return Some(Resolved { level: level_of(kind, &key), key, spec });
                }
            }
        }
        None
    }

    /// The override that wins over the base policy at `key` for a packet
    /// whose flow is exactly `key`, if any.
    pub fn shadowing_override(&self, key: &FlowKey) -> Option<Resolved> {
        self.resolve(key).filter(|r| r.level.is_override())
    }
}

fn max_key() -> FlowKey {
    FlowKey {
        cgroup_id: u64::MAX,
        http_path_hash: u32::MAX,
        dst_port: u16::MAX,
        proto: u8::MAX,
        http_method: u8::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CG: u64 = 77;

    fn spec(rate: u64) -> PolicySpec {
        PolicySpec { rate_tokens_per_sec: rate, burst_tokens: 10, enabled: true }
    }

    fn key(proto: u8, port: u16, method: u8, hash: u32) -> FlowKey {
        FlowKey { cgroup_id: CG, proto, dst_port: port, http_method: method, http_path_hash: hash }
    }

    fn raw(
        proto: Option<&str>,
        port: Option<&str>,
        method: Option<&str>,
        path: Option<&str>,
    ) -> RawSelector {
        RawSelector {
            proto: proto.map(Into::into),
            dst_port: port.map(Into::into),
            http_method: method.map(Into::into),
            http_path: path.map(Into::into),
            http_path_hash: None,
        }
    }

    #[test]
    fn precedence_walks_overrides_then_base_from_exact_to_wildcard() {
        let h = http::path_hash(b"/predict");
        let mut set = PolicySet::default();
        // One policy per base level; the rate encodes the level.
        set.insert(MapKind::Base, key(6, 80, 1, h), spec(6));
        set.insert(MapKind::Base, key(6, 80, 1, 0), spec(7));
        set.insert(MapKind::Base, key(6, 80, 0, 0), spec(8));
        set.insert(MapKind::Base, key(6, 0, 0, 0), spec(9));
        set.insert(MapKind::Base, key(0, 0, 0, 0), spec(10));
        let get = |flow: FlowKey| set.resolve(&flow).map(|r| r.level.number());

        let cases = [
            (key(6, 80, 1, h), 6),
            (key(6, 80, 1, 12345), 7),
            (key(6, 80, 2, 12345), 8),
            (key(6, 80, 0, 0), 8),
            (key(6, 443, 0, 0), 9),
            (key(17, 53, 0, 0), 10),
            (key(1, 0, 0, 0), 10),
        ];
        for (flow, want) in cases {
            assert_eq!(get(flow), Some(want), "{flow:?}");
            assert_eq!(set.resolve(&flow).map(|r| r.spec.rate_tokens_per_sec), Some(want as u64));
        }

        // An override full wildcard beats every base level.
        set.insert(MapKind::Override, key(0, 0, 0, 0), spec(5));
        for (flow, _) in cases {
            assert_eq!(set.resolve(&flow).map(|r| r.level.number()), Some(5));
        }
        assert!(set.shadowing_override(&key(6, 80, 1, h)).is_some());
    }

    #[test]
    fn disabled_policies_are_skipped_and_leave_the_mask() {
        let mut set = PolicySet::default();
        set.insert(MapKind::Base, key(6, 80, 0, 0), PolicySpec { enabled: false, ..spec(1) });
        set.insert(MapKind::Base, key(0, 0, 0, 0), spec(2));
        let r = set.resolve(&key(6, 80, 0, 0)).expect("wildcard applies");
        assert_eq!((r.level.number(), r.spec.rate_tokens_per_sec), (10, 2));
        assert_eq!(set.level_mask(CG), Level::new(false, 4).mask_bit());
        assert_eq!(set.level_mask(CG + 1), 0);
    }

    #[test]
    fn other_tenants_never_match() {
        let mut set = PolicySet::default();
        set.insert(MapKind::Base, FlowKey::tenant(CG + 1), spec(1));
        assert_eq!(set.resolve(&key(6, 80, 0, 0)), None);
        assert_eq!(set.tenant_entries(MapKind::Base, CG).count(), 0);
        assert_eq!(set.tenants(MapKind::Base), vec![CG + 1]);
    }

    #[test]
    fn validation_table() {
        use ValidationMode::{Permissive as P, Strict as S};
        let predict = "4021474487";
        // (selector, mode, Ok(key parts) or Err)
        // (selector, mode, expected (proto, port, method, hash), warning count)
        type Case = (RawSelector, ValidationMode, (u8, u16, u8, u32), usize);
        let ok: &[Case] = &[
            (raw(None, None, None, None), S, (0, 0, 0, 0), 0),
            (raw(Some("tcp"), Some("80"), None, None), S, (6, 80, 0, 0), 0),
            (raw(Some("UDP"), Some("53"), None, None), S, (17, 53, 0, 0), 0),
            (raw(Some("132"), None, None, None), S, (132, 0, 0, 0), 0),
            (
                raw(Some("tcp"), Some("80"), Some("get"), Some("/predict")),
                S,
                (6, 80, 1, 4_021_474_487),
                0,
            ),
            (raw(None, None, None, Some("/predict")), P, (0, 0, 0, 4_021_474_487), 2),
            (raw(None, None, Some("POST"), None), P, (0, 0, 2, 0), 1),
            (
                raw(Some("tcp"), Some("80"), Some("GET"), Some("/a?b")),
                S,
                (6, 80, 1, http::path_hash(b"/a")),
                1,
            ),
        ];
        for (r, mode, (proto, port, method, hash), nwarn) in ok {
            let s = validate(r, *mode).unwrap_or_else(|e| panic!("{r:?}: {e}"));
            assert_eq!(
                (s.proto, s.dst_port, s.http_method, s.http_path_hash),
                (*proto, *port, *method, *hash),
                "{r:?}"
            );
            assert_eq!(s.warnings.len(), *nwarn, "{r:?}: {:?}", s.warnings);
        }

        let mut both = raw(Some("tcp"), Some("80"), Some("GET"), Some("/predict"));
        both.http_path_hash = Some(predict.into());
        assert!(validate(&both, S).is_ok());
        both.http_path_hash = Some("1".into());
        assert!(matches!(validate(&both, S), Err(SelectorError::PathHashMismatch { .. })));

        let bad: &[(RawSelector, ValidationMode)] = &[
            (raw(Some("sctp"), None, None, None), P),
            (raw(Some("256"), None, None, None), P),
            (raw(Some("tcp"), Some("65536"), None, None), P),
            (raw(Some("tcp"), Some("-1"), None, None), P),
            (raw(Some("tcp"), Some("80"), Some("FETCH"), None), P),
            (raw(Some("tcp"), Some("80"), Some("GET"), Some("predict")), P),
            (raw(Some("tcp"), Some("80"), Some("GET"), Some("/a b")), P),
            (raw(None, None, None, Some("/predict")), S),
            (raw(Some("tcp"), None, Some("GET"), None), S),
            (raw(Some("udp"), Some("80"), Some("GET"), None), S),
            (raw(Some("tcp"), Some("80"), None, Some("/x")), S),
            (raw(Some("icmp"), Some("80"), None, None), S),
        ];
        for (r, mode) in bad {
            assert!(validate(r, *mode).is_err(), "{r:?} must be refused in {mode:?}");
        }
    }

    #[test]
    fn update_keeps_counters_and_clamps_tokens() {
        let old = PolicySpec { rate_tokens_per_sec: 10, burst_tokens: 100, enabled: true };
        let mut v = old.to_value();
        v.admitted = 5;
        v.dropped = 7;
        let now = 50 * bucket::NANOS_PER_SEC;
        let new = PolicySpec { rate_tokens_per_sec: 10, burst_tokens: 3, enabled: true };
        let u = new.update_value(&v, now);
        assert_eq!((u.admitted, u.dropped), (5, 7));
        assert_eq!(bucket::tokens(u.tat_ns, now, u.interval_ns, u.tolerance_ns), 3);
    }
}
