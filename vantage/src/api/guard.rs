//! The guard in front of tiny_http: the only thing listening on
//! `--bind-addr`.
//!
//! tiny_http 0.12 has no limits of its own: it buffers request lines and
//! headers of any size, allocates a body's declared length when it drains
//! one unread, never answers an HTTP/2 request line, and reads bodies in the
//! caller's thread without a timeout. So each client connection is first
//! handled here, on a thread of its own (at most [`MAX_CONNECTIONS`] at
//! once), with socket timeouts: one request is read with every size bounded
//! and answered at once if it breaks a limit; a request that passes is
//! handed to tiny_http over a Unix socket only the daemon can reach, with
//! `Connection: close`, and the answer is copied back.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::unix::{io::AsRawFd, net::UnixStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use log::{debug, warn};

use super::{MAX_BODY_BYTES, MAX_URL_BYTES};

/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 512;
/// Stack of a connection thread: it only parses one bounded request.
const CONNECTION_STACK_BYTES: usize = 128 * 1024;
/// Longest request line plus headers.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A connection idle this long (reading or writing) is closed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time one request may take to arrive in full.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Largest body for `path`.
fn body_limit(path: &str) -> u64 {
    if path == "/policies" {
        super::handlers::MAX_BATCH_BODY_BYTES
    } else {
        MAX_BODY_BYTES
    }
}

/// Accepts on `listener` until `stop`, passing good requests to `backend`.
///
/// # Errors
///
/// The listener could not be made non-blocking or the thread not spawned.
pub fn spawn(
    listener: TcpListener,
    backend: PathBuf,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    // Non-blocking, with poll(2) waiting for the next client, so the loop
    // can notice `stop` between connections.
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));
    thread::Builder::new().name("api-guard".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        active.fetch_sub(1, Ordering::SeqCst);
                        let mut stream = stream;
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = reply(&mut stream, 503, "too many connections; try again");
                        continue;
                    }
                    let (active, backend) = (active.clone(), backend.clone());
                    let spawned = thread::Builder::new()
                        .name("api-conn".into())
                        .stack_size(CONNECTION_STACK_BYTES)
                        .spawn(move || {
                            if let Err(e) = serve(stream, &backend) {
                                debug!("api: connection: {e}");
                            }
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                    if let Err(e) = spawned {
                        warn!("api: spawn a connection thread: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(&listener, STOP_CHECK);
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!("api: accept: {e}");
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
    })
}

/// How often the accept loop looks at its stop flag while no client comes.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Waits until `listener` has a connection to accept or `timeout` passes.
fn wait_readable(listener: &TcpListener, timeout: Duration) {
    let mut fd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call. An error (EINTR)
    // just sends the loop round again.
    unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
}

/// A request head that passed the checks.
struct Head {
    bytes: Vec<u8>,
    path: String,
    body_len: u64,
}

/// Why a request was answered by the guard itself.
struct Refusal {
    status: u16,
    message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal { status, message: message.into() }
}

fn serve(mut client: TcpStream, backend: &PathBuf) -> io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + REQUEST_DEADLINE;

    let (head, mut rest) = match read_head(&mut client, deadline)? {
        Some(x) => x,
        None => return Ok(()),
    };
    let head = match check_head(&head) {
        Ok(h) => h,
        Err(r) => return reply(&mut client, r.status, &r.message),
    };

    // The body, exactly as long as declared (already bounded by the check).
    while (rest.len() as u64) < head.body_len {
        if Instant::now() > deadline {
            return reply(&mut client, 408, "request took too long to arrive");
        }
        let mut buf = [0u8; 8192];
        let want = (head.body_len - rest.len() as u64).min(buf.len() as u64) as usize;
        match client.read(&mut buf[..want]) {
            Ok(0) => return Ok(()),
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if timed_out(&e) => return reply(&mut client, 408, "request body stalled"),
            Err(e) => return Err(e),
        }
    }
    rest.truncate(head.body_len as usize);

    // Hand it to tiny_http and copy the answer back.
    debug!("api: forwarding {} bytes for {}", head.bytes.len() + rest.len(), head.path);
    let mut upstream = UnixStream::connect(backend)?;
    upstream.set_read_timeout(Some(IO_TIMEOUT * 3))?;
    upstream.write_all(&head.bytes)?;
    upstream.write_all(&rest)?;
    upstream.shutdown(Shutdown::Write).ok();
    io::copy(&mut upstream, &mut client)?;
    client.shutdown(Shutdown::Both).ok();
    Ok(())
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reads up to the end of the headers; returns them and any body bytes read
/// past them, or `None` when the client went away or stalled (then there is
/// nobody worth answering, except for an over-long head, answered 431).
fn read_head(client: &mut TcpStream, deadline: Instant) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD_BYTES {
            reply(client, 431, &format!("request line and headers exceed {MAX_HEAD_BYTES} bytes"))?;
            return Ok(None);
        }
        if Instant::now() > deadline {
            reply(client, 408, "request took too long to arrive")?;
            return Ok(None);
        }
        match client.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if timed_out(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks the request line and headers and rewrites the head for tiny_http
/// (`Connection: close`, no `Expect`, `Content-Length` as checked).
fn check_head(raw: &[u8]) -> Result<Head, Refusal> {
    let text = std::str::from_utf8(raw).map_err(|_| refuse(400, "request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(refuse(400, "malformed request line")),
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(refuse(400, format!("malformed method {method:?}")));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(refuse(505, format!("{version} is not supported; use HTTP/1.1")));
    }
    if target.len() > MAX_URL_BYTES {
        return Err(refuse(414, format!("URL longer than {MAX_URL_BYTES} bytes")));
    }
    if !target.starts_with('/') {
        return Err(refuse(400, "the request target must be a path"));
    }
    let path = target.split('?').next().unwrap_or_default().trim_end_matches('/').to_owned();

    let mut out = format!("{method} {target} {version}\r\n");
    let mut body_len: Option<u64> = None;
    for h in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = h.split_once(':') else {
            return Err(refuse(400, "malformed header line"));
        };
        let (name, value) = (name.trim(), value.trim());
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: u64 =
                    value.parse().map_err(|_| refuse(400, "Content-Length is not a number"))?;
                if body_len.is_some_and(|m| m != n) {
                    return Err(refuse(400, "conflicting Content-Length headers"));
                }
                body_len = Some(n);
            }
            "transfer-encoding" => {
                return Err(refuse(411, "chunked bodies are not accepted; send Content-Length"));
            }
            "connection" | "expect" | "keep-alive" => {}
            _ => out.push_str(&format!("{name}: {value}\r\n")),
        }
    }
    let body_len = body_len.unwrap_or(0);
    let limit = body_limit(&path);
    if body_len > limit {
        return Err(refuse(413, format!("request body larger than {limit} bytes")));
    }
    out.push_str(&format!("Content-Length: {body_len}\r\nConnection: close\r\n\r\n"));
    Ok(Head { bytes: out.into_bytes(), path, body_len })
}

/// Answers `status` with `{"error": message}` and closes.
fn reply(client: &mut TcpStream, status: u16, message: &str) -> io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let body = serde_json::json!({ "error": message }).to_string() + "\n";
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(msg.as_bytes())?;
    client.shutdown(Shutdown::Both).ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(raw: &str) -> u16 {
        match check_head(raw.as_bytes()) {
            Ok(_) => 200,
            Err(r) => r.status,
        }
    }

    #[test]
    fn heads_are_checked_before_tiny_http_sees_them() {
        let long_url = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000));
        let cases = [
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("PUT /policy/1 HTTP/1.0\r\nContent-Length: 16384\r\n\r\n", 200),
            ("PUT /policies HTTP/1.1\r\nContent-Length: 4194304\r\n\r\n", 200),
            ("PUT /policy/1 HTTP/1.1\r\nContent-Length: 16385\r\n\r\n", 413),
            ("PUT /policy/1 HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n", 413),
            ("PUT /policy/1 HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            ("PUT /policy/1 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            ("PUT /policy/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            ("GET /metrics HTTP/2.0\r\n\r\n", 505),
            ("GET /metrics HTTP/3.0\r\n\r\n", 505),
            ("GET /metrics\r\n\r\n", 400),
            ("get /metrics HTTP/1.1\r\n\r\n", 400),
            ("GET metrics HTTP/1.1\r\n\r\n", 400),
            ("GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (long_url.as_str(), 414),
        ];
        for (raw, want) in cases {
            assert_eq!(status(raw), want, "{raw:?}");
        }
        let head = check_head(b"PUT /policy/1 HTTP/1.1\r\nConnection: keep-alive\r\nContent-Length: 2\r\nAuthorization: Bearer t\r\n\r\n")
            .ok()
            .expect("valid");
        let text = String::from_utf8(head.bytes).expect("utf-8");
        assert!(text.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n"), "{text}");
        assert!(text.contains("Authorization: Bearer t\r\n") && !text.contains("keep-alive"));
    }
}
