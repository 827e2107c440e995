//! The HTTP API (tiny_http), served by a small pool of worker threads.
//!
//! Workers parse and validate requests themselves and send only valid
//! changes to the map owner ([`Owner`]), so a bad request never reaches the
//! maps. Every error is a 4xx (or 5xx for a kernel or disk failure) with a
//! body `{"error": "..."}` naming the problem.

use std::{
    io::Read,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use log::{debug, warn};
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

mod guard;
mod handlers;

use handlers::{
    audit, delete_policy, get_essential, list_policies, put_essential, put_policies, put_policy,
    resolve, MAX_BATCH_BODY_BYTES,
};

use crate::{
    cli::ValidationMode, maps::Dataplane, metrics, owner::Owner, snapshot, store::StoreError,
    tenant::TenantId,
};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 16 * 1024;
/// Longest request URL accepted.
pub const MAX_URL_BYTES: usize = 4096;
/// Worker threads answering requests.
pub const WORKERS: usize = 4;

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

/// Serves the API on `addr` until `stop` is set.
///
/// Clients talk to the guard ([`guard`]); tiny_http listens on the Unix
/// socket `backend`, which only the guard uses.
///
/// # Errors
///
/// The address or the socket could not be bound.
pub fn serve<D: Dataplane + 'static>(
    addr: std::net::SocketAddr,
    backend: std::path::PathBuf,
    ctx: ApiContext<D>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>, std::io::Error> {
    let listener = std::net::TcpListener::bind(addr)?;
    if let Some(dir) = backend.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a crashed run would make the bind fail.
    let _ = std::fs::remove_file(&backend);
    let server = Arc::new(Server::http_unix(&backend).map_err(std::io::Error::other)?);
    let guard = guard::spawn(listener, backend, stop.clone())?;
    let ctx = Arc::new(ctx);
    let mut workers = vec![guard];
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
    let limit = if path == "/policies" { MAX_BATCH_BODY_BYTES } else { MAX_BODY_BYTES };
    let body = read_body(&mut req, limit);
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

fn read_body(req: &mut Request, limit: u64) -> Result<Vec<u8>, ApiError> {
    if req.url().len() > MAX_URL_BYTES {
        return Err(ApiError::new(414, format!("URL longer than {MAX_URL_BYTES} bytes")));
    }
    let too_large = || ApiError::new(413, format!("request body larger than {limit} bytes"));
    if req.body_length().is_some_and(|n| n as u64 > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad(format!("read request body: {e}")))?;
    if body.len() as u64 > limit {
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
        ["policies"] => match method {
            Method::Put => put_policies(ctx, body),
            _ => Err(not_allowed("PUT")),
        },
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

/// Parses a tenant in a path segment.
pub(crate) fn tenant(s: &str) -> Result<TenantId, ApiError> {
    let decoded = percent_decode(s)?;
    decoded.parse().map_err(|e: crate::tenant::TenantParseError| ApiError::bad(e.to_string()))
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
}
