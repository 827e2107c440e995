//! The policy and tenancy endpoints: request parsing, validation, and the
//! JSON shapes of their answers.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use vantage_common::FlowKey;

use super::{percent_decode, tenant, ApiContext, ApiError, Reply};
use crate::{
    cli::ValidationMode,
    maps::Dataplane,
    policy::{self, method_name, proto_name, MapKind, PolicySpec, RawSelector, Resolved},
    tenant::TenantId,
};

/// Compares the kernel maps with the daemon's view of them.
pub(super) fn audit<D: Dataplane + 'static>(ctx: &ApiContext<D>) -> Result<Reply, ApiError> {
    let diffs =
        ctx.owner.call(|s| s.audit())?.map_err(|e| ApiError::new(500, crate::error_chain(&e)))?;
    Ok(Reply::Json(200, json!({ "consistent": diffs.is_empty(), "differences": diffs })))
}

/// The fields a PUT /policy body may hold.
const POLICY_FIELDS: &[&str] = &[
    "rate_tokens_per_sec",
    "burst_tokens",
    "enabled",
    "proto",
    "dst_port",
    "http_method",
    "http_path",
    "http_path_hash",
    "runtime_override",
];

fn parse_json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad("request body is empty; expected a JSON object"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("request body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("malformed JSON: {e}"))),
    }
}

fn u64_field(m: &Map<String, Value>, name: &str, required: bool) -> Result<Option<u64>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) if required => Err(ApiError::bad(format!("missing field {name}"))),
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n)),
            None => Err(ApiError::bad(format!("{name} must be a non-negative integer, got {v}"))),
        },
    }
}

/// A selector field from JSON: strings as given, integers as decimal text.
fn selector_field(
    m: &Map<String, Value>,
    name: &str,
    numeric: bool,
) -> Result<Option<String>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !numeric || name == "proto" => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(Some(n.to_string())),
        Some(v) => Err(ApiError::bad(format!(
            "{name} must be {}, got {v}",
            if numeric { "an integer" } else { "a string" }
        ))),
    }
}

/// One policy from a request body, validated.
struct ParsedPolicy {
    kind: MapKind,
    key: FlowKey,
    spec: PolicySpec,
    http_path: Option<String>,
    warnings: Vec<String>,
}

/// Validates the policy fields of `m` for `tenant`.
fn parse_policy(
    m: &Map<String, Value>,
    tenant: TenantId,
    mode: ValidationMode,
    allowed: &[&str],
) -> Result<ParsedPolicy, ApiError> {
    if let Some(unknown) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "unknown field {unknown}; expected some of {}",
            allowed.join(", ")
        )));
    }

    let rate = u64_field(m, "rate_tokens_per_sec", true)?.unwrap_or(0);
    let burst = u64_field(m, "burst_tokens", true)?.unwrap_or(0);
    let enabled = match m.get("enabled") {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => return Err(ApiError::bad("missing field enabled")),
        Some(v) => return Err(ApiError::bad(format!("enabled must be true or false, got {v}"))),
    };
    let runtime_override = match m.get("runtime_override") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::bad(format!("runtime_override must be true or false, got {v}")))
        }
    };
    let max_rate = vantage_common::bucket::MAX_RATE;
    let max_burst = vantage_common::bucket::MAX_BURST;
    if !(1..=max_rate).contains(&rate) {
        return Err(ApiError::bad(format!(
            "rate_tokens_per_sec {rate} is out of range 1..={max_rate} (use burst_tokens 0 to block)"
        )));
    }
    if burst > max_burst {
        return Err(ApiError::bad(format!("burst_tokens {burst} is out of range 0..={max_burst}")));
    }

    let raw = RawSelector {
        proto: selector_field(m, "proto", false)?,
        dst_port: selector_field(m, "dst_port", true)?,
        http_method: selector_field(m, "http_method", false)?,
        http_path: selector_field(m, "http_path", false)?,
        http_path_hash: selector_field(m, "http_path_hash", true)?,
    };
    let sel = policy::validate(&raw, mode).map_err(|e| ApiError::bad(e.to_string()))?;
    let mut warnings = sel.warnings.clone();
    if !enabled {
        warnings.push("policy is disabled: resolution skips it until it is enabled".into());
    }
    Ok(ParsedPolicy {
        kind: if runtime_override { MapKind::Override } else { MapKind::Base },
        key: sel.key(tenant.0),
        spec: PolicySpec { rate_tokens_per_sec: rate, burst_tokens: burst, enabled },
        http_path: raw.http_path,
        warnings,
    })
}

pub(super) fn put_policy<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    tenant_s: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let tenant = tenant(tenant_s)?;
    let m = parse_json_object(body)?;
    let p = parse_policy(&m, tenant, ctx.validation, POLICY_FIELDS)?;

    let (kind, key, spec) = (p.kind, p.key, p.spec);
    let up = ctx.owner.call(move |s| s.upsert(kind, key, spec))??;
    let mut policy = policy_json(&up.key, &up.spec);
    if let Some(path) = &p.http_path {
        policy["http_path"] = json!(path);
    }
    Ok(Reply::Json(
        if up.created { 201 } else { 200 },
        json!({
            "tenant": tenant,
            "map": up.kind,
            "level": up.level.number(),
            "level_name": up.level.name(),
            "created": up.created,
            "policy": policy,
            "shadowed_by_override": up.shadowed_by.is_some(),
            "shadowing_override": up.shadowed_by.as_ref().map(resolved_json),
            "warnings": p.warnings,
        }),
    ))
}

/// Most policies accepted by one `PUT /policies`.
pub const MAX_BATCH: usize = 10_000;
/// Largest `PUT /policies` body.
pub const MAX_BATCH_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// `PUT /policies`: many upserts, applied all or nothing, persisted once.
pub(super) fn put_policies<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let m = parse_json_object(body)?;
    if let Some(unknown) = m.keys().find(|k| k.as_str() != "policies") {
        return Err(ApiError::bad(format!("unknown field {unknown}; expected policies")));
    }
    let Some(Value::Array(items)) = m.get("policies") else {
        return Err(ApiError::bad("policies must be an array of policy objects"));
    };
    if items.len() > MAX_BATCH {
        return Err(ApiError::new(413, format!("at most {MAX_BATCH} policies per request")));
    }
    let fields: Vec<&str> = POLICY_FIELDS.iter().copied().chain(["tenant"]).collect();
    let mut parsed = Vec::with_capacity(items.len());
    let mut warnings = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = |e: ApiError| ApiError { message: format!("policies[{i}]: {}", e.message), ..e };
        let Value::Object(m) = item else {
            return Err(ApiError::bad(format!("policies[{i}]: expected a JSON object")));
        };
        let t = match m.get("tenant") {
            Some(Value::String(t)) => tenant(t).map_err(at)?,
            _ => return Err(ApiError::bad(format!("policies[{i}]: missing field tenant"))),
        };
        let p = parse_policy(m, t, ctx.validation, &fields).map_err(at)?;
        warnings.extend(p.warnings.iter().map(|w| format!("policies[{i}]: {w}")));
        parsed.push((p.kind, p.key, p.spec));
    }

    let n = parsed.len();
    let created = ctx.owner.call(move |s| s.upsert_many(&parsed))??;
    Ok(Reply::Json(
        200,
        json!({ "applied": n, "created": created, "updated": n - created, "warnings": warnings }),
    ))
}

/// Parses `a=b&c=d` into a map, refusing unknown or repeated keys.
fn query_map(query: &str, allowed: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k)?;
        let v = percent_decode(v)?;
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown query parameter {k}; expected some of {}",
                allowed.join(", ")
            )));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad(format!("query parameter {k} given twice")));
        }
    }
    Ok(out)
}

const SELECTOR_PARAMS: &[&str] =
    &["proto", "dst_port", "http_method", "http_path", "http_path_hash", "runtime_override"];

fn selector_from_query(
    q: &BTreeMap<String, String>,
    mode: ValidationMode,
) -> Result<policy::Selector, ApiError> {
    let raw = RawSelector {
        proto: q.get("proto").cloned(),
        dst_port: q.get("dst_port").cloned(),
        http_method: q.get("http_method").cloned(),
        http_path: q.get("http_path").cloned(),
        http_path_hash: q.get("http_path_hash").cloned(),
    };
    policy::validate(&raw, mode).map_err(|e| ApiError::bad(e.to_string()))
}

pub(super) fn delete_policy<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    tenant_s: &str,
    query: &str,
) -> Result<Reply, ApiError> {
    let tenant = tenant(tenant_s)?;
    let q = query_map(query, SELECTOR_PARAMS)?;
    let kind = match q.get("runtime_override").map(String::as_str) {
        None | Some("false") => MapKind::Base,
        Some("true") => MapKind::Override,
        Some(v) => {
            return Err(ApiError::bad(format!("runtime_override must be true or false, got {v:?}")))
        }
    };
    // Deleting must be able to name any stored key, so selectors are
    // checked for form only, never for strictness.
    let sel = selector_from_query(&q, ValidationMode::Permissive)?;
    let key = sel.key(tenant.0);

    let removed = ctx.owner.call(move |s| s.remove(kind, key))??;
    let Some(r) = removed else {
        return Err(ApiError::new(
            404,
            format!("no {} policy for {tenant} with these selectors", map_word(kind)),
        ));
    };
    Ok(Reply::Json(
        200,
        json!({
            "tenant": tenant,
            "removed": policy_json(&r.key, &r.spec),
            "effective": r.fallback.as_ref().map(resolved_json),
        }),
    ))
}

pub(super) fn resolve<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    tenant_s: &str,
    query: &str,
) -> Result<Reply, ApiError> {
    let tenant = tenant(tenant_s)?;
    let q = query_map(query, &SELECTOR_PARAMS[..5])?;
    // A flow is what a packet carries; any combination is a valid question.
    let sel = selector_from_query(&q, ValidationMode::Permissive)?;
    let flow = sel.key(tenant.0);
    let found = ctx.owner.call(move |s| s.resolve(&flow))?;
    Ok(Reply::Json(
        200,
        json!({
            "tenant": tenant,
            "flow": flow_json(&flow),
            "effective": found.as_ref().map(resolved_json),
        }),
    ))
}

pub(super) fn list_policies<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    tenant_s: &str,
) -> Result<Reply, ApiError> {
    let tenant = tenant(tenant_s)?;
    let list = ctx.owner.call(move |s| {
        [MapKind::Override, MapKind::Base]
            .into_iter()
            .flat_map(|kind| {
                s.policies()
                    .tenant_entries(kind, tenant.0)
                    .map(move |(k, spec)| {
                        let level = policy::level_of(kind, k);
                        json!({
                            "map": kind,
                            "level": level.number(),
                            "level_name": level.name(),
                            "policy": policy_json(k, spec),
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    })?;
    Ok(Reply::Json(200, json!({ "tenant": tenant, "policies": list })))
}

pub(super) fn get_essential<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    tenant_s: &str,
) -> Result<Reply, ApiError> {
    let tenant = tenant(tenant_s)?;
    let (essential, by_api) = ctx
        .owner
        .call(move |s| (s.is_essential(tenant.0), s.api_essentials().contains(&tenant.0)))?;
    Ok(Reply::Json(200, essential_json(tenant, essential, by_api)))
}

pub(super) fn put_essential<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    tenant_s: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let tenant = tenant(tenant_s)?;
    let m = parse_json_object(body)?;
    if let Some(unknown) = m.keys().find(|k| k.as_str() != "essential") {
        return Err(ApiError::bad(format!("unknown field {unknown}; expected essential")));
    }
    let essential = match m.get("essential") {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => return Err(ApiError::bad("missing field essential")),
        Some(v) => return Err(ApiError::bad(format!("essential must be true or false, got {v}"))),
    };
    let (now, by_api) = ctx.owner.call(move |s| {
        s.set_essential(tenant.0, essential)
            .map(|_| (s.is_essential(tenant.0), s.api_essentials().contains(&tenant.0)))
    })??;
    // The controller acts on the change at once rather than at its next tick.
    ctx.observe.adaptive.nudge();
    Ok(Reply::Json(200, essential_json(tenant, now, by_api)))
}

fn essential_json(tenant: TenantId, essential: bool, by_api: bool) -> Value {
    json!({
        "tenant": tenant,
        "essential": essential,
        "source": if by_api { "api" } else if essential { "flag" } else { "none" },
    })
}

fn map_word(kind: MapKind) -> &'static str {
    match kind {
        MapKind::Base => "base",
        MapKind::Override => "runtime override",
    }
}

/// A key's selectors as JSON (`any`/null for wildcards).
pub fn flow_json(k: &FlowKey) -> Value {
    json!({
        "proto": proto_name(k.proto),
        "dst_port": k.dst_port,
        "http_method": method_name(k.http_method),
        "http_path_hash": k.http_path_hash,
    })
}

fn policy_json(k: &FlowKey, spec: &PolicySpec) -> Value {
    let mut v = flow_json(k);
    v["rate_tokens_per_sec"] = json!(spec.rate_tokens_per_sec);
    v["burst_tokens"] = json!(spec.burst_tokens);
    v["enabled"] = json!(spec.enabled);
    v
}

fn resolved_json(r: &Resolved) -> Value {
    json!({
        "level": r.level.number(),
        "level_name": r.level.name(),
        "map": if r.level.is_override() { MapKind::Override } else { MapKind::Base },
        "policy": policy_json(&r.key, &r.spec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_refuses_unknown_and_repeated_keys() {
        assert!(query_map("proto=tcp&dst_port=80", SELECTOR_PARAMS).is_ok());
        assert!(query_map("colour=red", SELECTOR_PARAMS).is_err());
        assert!(query_map("proto=tcp&proto=udp", SELECTOR_PARAMS).is_err());
    }
}
