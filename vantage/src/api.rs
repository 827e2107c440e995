//! The HTTP API (tiny_http), served by a small pool of worker threads.
//!
//! Workers parse and validate requests themselves and send only valid
//! changes to the map owner ([`Owner`]), so a bad request never reaches the
//! maps. Every error is a 4xx (or 5xx for a kernel or disk failure) with a
//! body `{"error": "..."}` naming the problem.

use std::{
    collections::BTreeMap,
    io::Read,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use log::{debug, warn};
use serde_json::{json, Map, Value};
use tiny_http::{Header, Method, Request, Response, Server};
use vantage_common::FlowKey;

use crate::{
    cli::ValidationMode,
    maps::Dataplane,
    metrics,
    owner::Owner,
    policy::{self, method_name, proto_name, MapKind, PolicySpec, RawSelector, Resolved},
    snapshot,
    store::StoreError,
    tenant::TenantId,
};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 16 * 1024;
/// Longest request URL accepted.
pub const MAX_URL_BYTES: usize = 4096;
/// Worker threads answering requests.
pub const WORKERS: usize = 4;
/// A connection that sends or accepts nothing for this long is closed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings and shared state the handlers need.
pub struct ApiContext<D: Dataplane> {
    /// The map owner.
    pub owner: Owner<D>,
    /// `--policy-validation-mode`.
    pub validation: ValidationMode,
    /// Bearer token every endpoint but /metrics requires, when set.
    pub token: Option<String>,
    /// Data for /metrics and /debug/snapshot.
    pub observe: snapshot::Observed,
}

/// An HTTP error: status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Human-readable reason, returned as `{"error": ...}`.
    pub message: String,
    /// `Allow` header for 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), allow: None }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            // 507: the request is fine, the host has no room; the body says which map.
            StoreError::Full(_) => 507,
            _ => 500,
        };
        ApiError::new(status, crate::error_chain(&e))
    }
}

impl From<crate::owner::OwnerGone> for ApiError {
    fn from(e: crate::owner::OwnerGone) -> Self {
        ApiError::new(503, e.to_string())
    }
}

/// A successful answer.
pub enum Reply {
    /// JSON with a status.
    Json(u16, Value),
    /// Prometheus text.
    Text(String),
}

/// Serves the API until `stop` is set.
///
/// # Errors
///
/// The address could not be bound.
pub fn serve<D: Dataplane + 'static>(
    addr: std::net::SocketAddr,
    ctx: ApiContext<D>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>, std::io::Error> {
    let listener = std::net::TcpListener::bind(addr)?;
    set_io_timeouts(&listener)?;
    let server = Arc::new(Server::from_listener(listener, None).map_err(std::io::Error::other)?);
    let ctx = Arc::new(ctx);
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let (server, ctx, stop) = (server.clone(), ctx.clone(), stop.clone());
        workers.push(thread::Builder::new().name(format!("api-{i}")).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(req)) => respond(&ctx, req),
                    Ok(None) => {}
                    Err(e) => warn!("api: accept failed: {e}"),
                }
            }
        })?);
    }
    Ok(workers)
}

/// Sets receive and send timeouts on the listening socket; Linux copies
/// them to every accepted socket (`sk_clone_lock` clones the whole sock), so
/// tiny_http's connection threads give up on clients that stall, which
/// bounds how long a slow or idle client can hold one.
fn set_io_timeouts(listener: &std::net::TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval { tv_sec: IO_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: a valid socket and a timeval of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether `req` carries the configured bearer token. Compared in constant
/// time so response timing does not reveal how much of a guess was right.
fn authorized<D: Dataplane>(ctx: &ApiContext<D>, req: &Request) -> bool {
    let Some(token) = &ctx.token else {
        return true;
    };
    let given = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn respond<D: Dataplane + 'static>(ctx: &ApiContext<D>, mut req: Request) {
    let method = req.method().clone();
    let url = req.url().to_owned();
    let path = url.split('?').next().unwrap_or_default().trim_end_matches('/');
    if path != "/metrics" && !authorized(ctx, &req) {
        let r = json_response(401, &json!({ "error": "unauthorized" }))
            .with_header(header("WWW-Authenticate", "Bearer"));
        let _ = req.respond(r);
        return;
    }
    let body = read_body(&mut req);
    let result = body.and_then(|body| route(ctx, &method, &url, &body));
    let response = match result {
        Ok(Reply::Json(status, v)) => json_response(status, &v),
        Ok(Reply::Text(text)) => Response::from_string(text)
            .with_header(header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")),
        Err(e) => {
            debug!("api: {method} {url}: {} {}", e.status, e.message);
            let mut r = json_response(e.status, &json!({ "error": e.message }));
            if let Some(allow) = e.allow {
                r = r.with_header(header("Allow", allow));
            }
            r
        }
    };
    if let Err(e) = req.respond(response) {
        debug!("api: reply to {method} {url}: {e}");
    }
}

fn header(name: &str, value: &str) -> Header {
    // Both are ASCII literals or ASCII built here, which tiny_http accepts.
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|_| Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).expect("ascii header"))
}

fn json_response(status: u16, v: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

fn read_body(req: &mut Request) -> Result<Vec<u8>, ApiError> {
    if req.url().len() > MAX_URL_BYTES {
        return Err(ApiError::new(414, format!("URL longer than {MAX_URL_BYTES} bytes")));
    }
    let too_large =
        || ApiError::new(413, format!("request body larger than {MAX_BODY_BYTES} bytes"));
    if req.body_length().is_some_and(|n| n as u64 > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad(format!("read request body: {e}")))?;
    if body.len() as u64 > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(body)
}

/// Dispatches one request. Public for tests that skip the socket.
pub fn route<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    method: &Method,
    url: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let not_allowed = |allow: &'static str| ApiError {
        status: 405,
        message: format!("method {method} not allowed here; allowed: {allow}"),
        allow: Some(allow),
    };

    match segments.as_slice() {
        ["policy", tenant] => match method {
            Method::Put => put_policy(ctx, tenant, body),
            Method::Delete => delete_policy(ctx, tenant, query),
            Method::Get => list_policies(ctx, tenant),
            _ => Err(not_allowed("GET, PUT, DELETE")),
        },
        ["policy", tenant, "resolve"] => match method {
            Method::Get => resolve(ctx, tenant, query),
            _ => Err(not_allowed("GET")),
        },
        ["tenancy", tenant, "essential"] => match method {
            Method::Get => get_essential(ctx, tenant),
            Method::Put => put_essential(ctx, tenant, body),
            _ => Err(not_allowed("GET, PUT")),
        },
        ["metrics"] => match method {
            Method::Get => Ok(Reply::Text(metrics::render(ctx)?)),
            _ => Err(not_allowed("GET")),
        },
        ["debug", "snapshot"] => match method {
            Method::Get => Ok(Reply::Json(200, snapshot::render(ctx)?)),
            _ => Err(not_allowed("GET")),
        },
        ["debug", "audit"] => match method {
            Method::Get => audit(ctx),
            _ => Err(not_allowed("GET")),
        },
        _ => Err(ApiError::new(404, format!("no such endpoint: {path}"))),
    }
}

/// Compares the kernel maps with the daemon's view of them.
fn audit<D: Dataplane + 'static>(ctx: &ApiContext<D>) -> Result<Reply, ApiError> {
    let diffs =
        ctx.owner.call(|s| s.audit())?.map_err(|e| ApiError::new(500, crate::error_chain(&e)))?;
    Ok(Reply::Json(200, json!({ "consistent": diffs.is_empty(), "differences": diffs })))
}

fn tenant(s: &str) -> Result<TenantId, ApiError> {
    let decoded = percent_decode(s)?;
    decoded.parse().map_err(|e: crate::tenant::TenantParseError| ApiError::bad(e.to_string()))
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

fn put_policy<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    tenant_s: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let tenant = tenant(tenant_s)?;
    let m = parse_json_object(body)?;
    if let Some(unknown) = m.keys().find(|k| !POLICY_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "unknown field {unknown}; expected some of {}",
            POLICY_FIELDS.join(", ")
        )));
    }

    let rate = u64_field(&m, "rate_tokens_per_sec", true)?.unwrap_or(0);
    let burst = u64_field(&m, "burst_tokens", true)?.unwrap_or(0);
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
        proto: selector_field(&m, "proto", false)?,
        dst_port: selector_field(&m, "dst_port", true)?,
        http_method: selector_field(&m, "http_method", false)?,
        http_path: selector_field(&m, "http_path", false)?,
        http_path_hash: selector_field(&m, "http_path_hash", true)?,
    };
    let sel = policy::validate(&raw, ctx.validation).map_err(|e| ApiError::bad(e.to_string()))?;
    let key = sel.key(tenant.0);
    let spec = PolicySpec { rate_tokens_per_sec: rate, burst_tokens: burst, enabled };
    let kind = if runtime_override { MapKind::Override } else { MapKind::Base };

    let up = ctx.owner.call(move |s| s.upsert(kind, key, spec))??;
    let mut policy = policy_json(&up.key, &up.spec);
    if let Some(p) = &raw.http_path {
        policy["http_path"] = json!(p);
    }
    let mut warnings = sel.warnings;
    if !enabled {
        warnings.push("policy is disabled: resolution skips it until it is enabled".into());
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
            "warnings": warnings,
        }),
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

fn delete_policy<D: Dataplane + 'static>(
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

fn resolve<D: Dataplane + 'static>(
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

fn list_policies<D: Dataplane + 'static>(
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

fn get_essential<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    tenant_s: &str,
) -> Result<Reply, ApiError> {
    let tenant = tenant(tenant_s)?;
    let (essential, by_api) = ctx
        .owner
        .call(move |s| (s.is_essential(tenant.0), s.api_essentials().contains(&tenant.0)))?;
    Ok(Reply::Json(200, essential_json(tenant, essential, by_api)))
}

fn put_essential<D: Dataplane + 'static>(
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

/// Decodes `%XX` escapes and `+`; refuses bad escapes and non-UTF-8.
fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let b = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(b) = b else {
                    return Err(ApiError::bad(format!("bad percent escape in {s:?}")));
                };
                out.push(b);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad(format!("{s:?} is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2Fpredict").ok().as_deref(), Some("/predict"));
        assert_eq!(percent_decode("a+b").ok().as_deref(), Some("a b"));
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%f").is_err());
        assert!(percent_decode("%ff").is_err());
    }

    #[test]
    fn query_parsing_refuses_unknown_and_repeated_keys() {
        assert!(query_map("proto=tcp&dst_port=80", SELECTOR_PARAMS).is_ok());
        assert!(query_map("colour=red", SELECTOR_PARAMS).is_err());
        assert!(query_map("proto=tcp&proto=udp", SELECTOR_PARAMS).is_err());
    }
}
