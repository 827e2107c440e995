//! HTTP requests for abusing the API: well-formed ones, malformed ones and bytes that are not
//! HTTP at all, plus a raw client that reports a broken connection instead of panicking.
//!
//! The raw client uses the calling thread's network namespace: call it on a thread that has
//! entered the daemon's namespace ([`crate::common::Netns::enter_current_thread`]).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use super::Rng;
use crate::common::parse_http_response;

/// Sends `request`, half-closes the connection and reads until the server closes it.
///
/// A failed write does not end the exchange: a server that answers early (413) and closes
/// makes the rest of a large body fail to send, and its answer is still worth reading.
pub fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let _ = s.write_all(request);
    let _ = s.shutdown(Shutdown::Write);
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        // A reset after a complete answer (unread request bytes) still leaves the answer.
        Err(_) if !raw.is_empty() => Ok(raw),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(raw),
        Err(e) => Err(e),
    }
}

/// The status codes of every response in `raw` (several when requests were pipelined).
pub fn statuses(raw: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = find(&raw[i..], b"HTTP/1.") {
        let at = i + pos;
        let line_end = find(&raw[at..], b"\r\n").map_or(raw.len(), |e| at + e);
        let line = String::from_utf8_lossy(&raw[at..line_end]);
        if let Some(code) = line.split(' ').nth(1).and_then(|c| c.parse().ok()) {
            out.push(code);
        }
        i = line_end;
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request with `Connection: close`; errors instead of panics, for use while a daemon may
/// be killed.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_http_response(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A generated request and what may legitimately come back.
#[derive(Debug, Clone)]
pub struct Abuse {
    /// Which class of abuse, for the summary.
    pub class: &'static str,
    /// The bytes to send.
    pub bytes: Vec<u8>,
    /// A 5xx this request may get because HTTP says so (505 for an HTTP version above 1.1).
    pub allowed_5xx: Option<u16>,
}

const ENDPOINTS: &[&str] = &[
    "/policy/{t}",
    "/policy/{t}/resolve",
    "/tenancy/{t}/essential",
    "/metrics",
    "/debug/snapshot",
    "/debug/audit",
    "/policy/{t}/",
    "/policy",
    "/",
    "/tenancy/{t}",
    "/policies",
];
const METHODS: &[&str] = &["GET", "PUT", "DELETE", "POST", "PATCH", "HEAD", "OPTIONS", "TRACE"];
const GARBAGE_METHODS: &[&str] = &["FOO", "G3T", "get", "PUTT", "M-SEARCH", "\u{dc}BER", "_", "-"];
const QUERY_KEYS: &[&str] =
    &["proto", "dst_port", "http_method", "http_path", "http_path_hash", "runtime_override", "x"];
const QUERY_VALUES: &[&str] =
    &["tcp", "udp", "6", "17", "999", "-1", "80", "65536", "GET", "%2Fa", "%zz", "%ff", "", "true"];

/// A tenant name for `id` in one of the accepted spellings, or a name that is not a tenant.
fn tenant_text(rng: &mut Rng, id: u64) -> String {
    match rng.below(8) {
        0 => format!("{id}"),
        1 => format!("cg%3A{id}"),
        2 => format!("+{id}"),
        3 => rng
            .pick(&["cg:", "0", "cg:0", "-5", "abc", "%zz", "99999999999999999999999", "CG:1"])
            .to_string(),
        _ => format!("cg:{id}"),
    }
}

fn random_path(rng: &mut Rng, tenants: &[u64]) -> String {
    let id = rng.pick(tenants);
    let t = tenant_text(rng, id);
    let mut path = match rng.below(10) {
        0 => {
            let n = rng.range(1, 5);
            (0..n)
                .map(|_| {
                    let len = rng.range(0, 12);
                    String::from_utf8_lossy(&rng.bytes_from(b"abcxyz019:%._-~", len)).into_owned()
                })
                .fold(String::new(), |acc, s| acc + "/" + &s)
        }
        1 => format!("/{}", "a".repeat(rng.range(4000, 9000))),
        2 => rng
            .pick(&["*", "//", "/policy//", "http://x/metrics", "/%2e%2e/metrics", "/\u{7f}"])
            .to_string(),
        _ => rng.pick(ENDPOINTS).replace("{t}", &t),
    };
    if rng.chance(1, 3) {
        let n = rng.range(1, 4);
        let q: Vec<String> = (0..n)
            .map(|_| format!("{}={}", rng.pick(QUERY_KEYS), rng.pick(QUERY_VALUES)))
            .collect();
        path.push('?');
        path.push_str(&q.join("&"));
    }
    path
}

/// A JSON-ish body: valid policies and flags, wrong types, truncated and deeply nested JSON,
/// or random bytes.
fn random_body(rng: &mut Rng) -> Vec<u8> {
    let policy = format!(
        r#"{{"rate_tokens_per_sec":{},"burst_tokens":{},"enabled":{},"proto":{},"dst_port":{},"http_path":{}}}"#,
        rng.pick(&["10", "0", "-1", "1e3", "1000000001", "\"5\"", "null", "18446744073709551616"]),
        rng.pick(&["5", "0", "1000000001", "[]", "{}"]),
        rng.pick(&["true", "false", "1", "\"yes\""]),
        rng.pick(&["\"tcp\"", "\"udp\"", "6", "256", "\"sctp\"", "null"]),
        rng.pick(&["80", "0", "65536", "\"http\"", "-1", "null"]),
        rng.pick(&["\"/a\"", "\"a\"", "\"/a?b\"", "null", "\"/\\u0000\"", "7"]),
    );
    match rng.below(9) {
        0 | 1 => policy.into_bytes(),
        2 => {
            let cut = rng.below(policy.len());
            policy.as_bytes()[..cut].to_vec()
        }
        3 => {
            let depth = rng.range(100, 20_000);
            let open = if rng.chance(1, 2) { "[" } else { "{\"a\":" };
            let mut b = open.repeat(depth);
            if rng.chance(1, 2) {
                b.push_str(&(if open == "[" { "]" } else { "}" }).repeat(depth));
            }
            b.into_bytes()
        }
        4 => rng
            .pick(&[&br#"{"essential":true}"#[..], br#"{"essential":"no"}"#, b"{}", b"[]"])
            .to_vec(),
        5 => {
            let n = rng.range(0, 2048);
            rng.bytes(n)
        }
        6 => br#"{"rate_tokens_per_sec":1,"burst_tokens":1,"enabled":true,"bogus":1}"#.to_vec(),
        7 => format!(r#"{{"a":"{}"}}"#, "\u{1F600}".repeat(rng.range(1, 300))).into_bytes(),
        _ => Vec::new(),
    }
}

fn random_headers(rng: &mut Rng, out: &mut Vec<u8>) {
    for _ in 0..rng.range(0, 6) {
        let h: Vec<u8> = match rng.below(9) {
            0 => b"Expect: 100-continue".to_vec(),
            1 => b"Expect: teapot".to_vec(),
            2 => b"Transfer-Encoding: chunked".to_vec(),
            3 => b"Connection: keep-alive, Upgrade".to_vec(),
            4 => format!("X-Long: {}", "v".repeat(rng.range(100, 20_000))).into_bytes(),
            5 => b"Content-Type: text/garbage; charset=\x01".to_vec(),
            6 => b"No-Colon-Here".to_vec(),
            7 => b"Bad Name: space in the name".to_vec(),
            _ => {
                let mut h = rng.bytes_from(b"abcXYZ-_", 6);
                h.extend_from_slice(b": ");
                let n = rng.range(0, 40);
                h.extend(rng.bytes(n).into_iter().map(|b| if b == b'\n' { b'x' } else { b }));
                h
            }
        };
        out.extend_from_slice(&h);
        out.extend_from_slice(b"\r\n");
    }
}

/// One random request addressed to tenants from `tenants` (never to any other tenant, so a
/// tenant left out keeps its state).
pub fn random_request(rng: &mut Rng, tenants: &[u64]) -> Abuse {
    let mut allowed_5xx = None;
    let class;
    let mut out = Vec::new();
    match rng.below(20) {
        // Not HTTP at all.
        0 => {
            class = "raw garbage";
            let n = rng.range(1, 4096);
            out = rng.bytes(n);
        }
        1 => {
            class = "protocol confusion";
            let pick = rng.below(6);
            out = [
                &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
                b"\r\n\r\n",
                b"GET /metrics\r\n\r\n",
                b"GET /metrics HTTP/1.1",
                b"SSH-2.0-OpenSSH_9.2\r\n",
                b"GET /metrics HTTP/9.9\r\n\r\n",
            ][pick]
                .to_vec();
            // An unknown HTTP version is what 505 is for.
            if pick == 5 {
                allowed_5xx = Some(505);
            }
        }
        2 => {
            class = "newer http version";
            out = format!("GET /metrics HTTP/{}\r\n\r\n", rng.pick(&["2.0", "3.0"])).into_bytes();
            allowed_5xx = Some(505);
        }
        _ => {
            class = match rng.below(4) {
                0 => "garbage method",
                1 => "body over the limit",
                2 => "lying content-length",
                _ => "random request",
            };
            let method = if class == "garbage method" {
                rng.pick(GARBAGE_METHODS)
            } else {
                rng.pick(METHODS)
            };
            let path = random_path(rng, tenants);
            let body = if class == "body over the limit" {
                let n = rng.range(16 * 1024 + 1, 1 << 20);
                let mut b = b"{\"a\":\"".to_vec();
                b.resize(n, b'x');
                b
            } else {
                random_body(rng)
            };
            let version = rng.pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
            out.extend_from_slice(
                format!("{method} {path} {version}\r\nHost: vantage\r\n").as_bytes(),
            );
            random_headers(rng, &mut out);
            let declared = if class == "lying content-length" {
                // Both directions, up to a few times the body limit.
                rng.pick(&[0, 1, body.len() / 2, body.len() + 1, 1025, 20_000, 65_536])
            } else {
                body.len()
            };
            if rng.chance(9, 10) || class == "lying content-length" {
                out.extend_from_slice(format!("Content-Length: {declared}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
        }
    }
    Abuse { class, bytes: out, allowed_5xx }
}
