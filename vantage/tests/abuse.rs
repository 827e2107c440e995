//! The HTTP API under hostile clients: random and malformed requests, bytes that are not HTTP,
//! slow and idle connections, lying lengths and endless request lines, against the real daemon
//! in a namespace of the test's own.
//!
//! What must hold throughout: no 5xx (other than 505 for an HTTP version above 1.1), the
//! daemon stays up and keeps answering `GET /metrics`, its memory stays bounded, the kernel
//! maps keep agreeing with the API, and a tenant no request was addressed to keeps its state.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::gen::{
    self,
    requests::{self, exchange, statuses, try_request},
    views::{self, memory_kib, PolicyView},
    Rng,
};
use common::{Daemon, Netns};

/// The tenant set up before the abuse and never addressed by it.
const PROTECTED: u64 = 987_654_321;
/// Tenants the random requests address.
const TARGETS: &[u64] = &[11, 12, 13, 4242, 77_777];
/// Resident memory the daemon must stay below.
const RSS_LIMIT_KIB: u64 = 100 * 1024;
const ABUSE_THREADS: usize = 4;
/// Debug logs would record every one of thousands of multi-kilobyte URLs.
const QUIET: &[(&str, &str)] = &[("VANTAGE_LOG", "info")];

/// Everything a client can see of [`PROTECTED`].
#[derive(Debug, PartialEq, Eq)]
struct Protected {
    listed: BTreeSet<PolicyView>,
    essential: bool,
    saved: Option<BTreeSet<PolicyView>>,
    saved_essential: bool,
}

fn protected_state(d: &Daemon) -> Protected {
    let (saved, essential) = views::saved(&d.state_file);
    Protected {
        listed: views::listed(d, PROTECTED),
        essential: views::essential(d, PROTECTED),
        saved: saved.get(&PROTECTED).cloned(),
        saved_essential: essential.contains(&PROTECTED),
    }
}

fn protect(d: &Daemon) -> Protected {
    for body in [
        r#"{"rate_tokens_per_sec":100,"burst_tokens":20,"enabled":true}"#,
        r#"{"rate_tokens_per_sec":5,"burst_tokens":1,"enabled":true,"proto":"tcp","dst_port":8080,
            "http_method":"GET","http_path":"/predict"}"#,
    ] {
        let (status, v) = d.http_json("PUT", &format!("/policy/cg:{PROTECTED}"), Some(body));
        assert_eq!(status, 201, "protect: {v}");
    }
    let (status, v) = d.http_json(
        "PUT",
        &format!("/tenancy/cg:{PROTECTED}/essential"),
        Some(r#"{"essential":true}"#),
    );
    assert_eq!(status, 200, "protect: {v}");
    let state = protected_state(d);
    assert_eq!(state.listed.len(), 2);
    assert!(state.essential && state.saved_essential);
    assert_eq!(state.saved.as_ref(), Some(&state.listed));
    state
}

/// Samples the daemon's resident memory until `stop`; the peak is in `peak_kib`.
fn watch_memory(pid: libc::pid_t, stop: &AtomicBool, peak_kib: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        if let Some(rss) = memory_kib(pid, "VmRSS") {
            peak_kib.fetch_max(rss, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// `GET /metrics` must answer 200 within `limit`; returns how long it took.
fn metrics_latency(api: SocketAddr, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    match try_request(api, "GET", "/metrics", None, limit) {
        Ok((200, _)) => Ok(start.elapsed()),
        Ok((status, body)) => Err(format!("GET /metrics answered {status}: {body}")),
        Err(e) => Err(format!("GET /metrics: no answer after {:?}: {e}", start.elapsed())),
    }
}

/// What the abuse threads saw.
#[derive(Debug, Default)]
struct Report {
    sent: usize,
    by_class: BTreeMap<&'static str, usize>,
    statuses: BTreeMap<u16, usize>,
    closed_without_answer: usize,
    failures: Vec<String>,
    failures_by_class: BTreeMap<&'static str, usize>,
}

/// How long one abusive request may take; the daemon answers each in milliseconds.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// The abuse stops after this many bad answers: enough to diagnose, and a hanging daemon
/// would otherwise make the test run for minutes.
const ENOUGH_FAILURES: usize = 12;

fn abuse_thread(ns: &Netns, api: SocketAddr, seed: u64, count: usize, report: &Mutex<Report>) {
    let _in_ns = ns.enter_current_thread();
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let req = requests::random_request(&mut rng, TARGETS);
        let outcome = exchange(api, &req.bytes, ANSWER_WITHIN);
        let mut r = report.lock().expect("report lock");
        if r.failures.len() >= ENOUGH_FAILURES {
            return;
        }
        r.sent += 1;
        *r.by_class.entry(req.class).or_default() += 1;
        let shown = String::from_utf8_lossy(&req.bytes[..req.bytes.len().min(120)]).into_owned();
        let failure = match outcome {
            Ok(raw) => {
                let codes = statuses(&raw);
                if codes.is_empty() {
                    r.closed_without_answer += 1;
                }
                for &code in &codes {
                    *r.statuses.entry(code).or_default() += 1;
                }
                codes
                    .iter()
                    .find(|&&c| c >= 500 && Some(c) != req.allowed_5xx)
                    .map(|c| format!("answered {c}"))
            }
            Err(e) => Some(format!("no answer within {ANSWER_WITHIN:?}: {e}")),
        };
        if let Some(f) = failure {
            r.failures.push(format!("seed {seed:#x} request #{i} ({}): {f}: {shown:?}", req.class));
            *r.failures_by_class.entry(req.class).or_default() += 1;
        }
    }
}

#[test]
fn random_and_malformed_requests_get_no_server_error_and_change_nothing_else() {
    if !common::prerequisites() {
        return;
    }
    let per_thread = gen::count_from_env("VANTAGE_ABUSE_REQUESTS", 3000) / ABUSE_THREADS;
    let seed = gen::seed_from_env(0xab05_e000_0000_0001);
    let ns = Netns::new();
    let mut d = Daemon::start(&ns, &["--iface", "lo"], QUIET);
    let before = protect(&d);
    let (api, pid) = (d.api, d.pid());
    let baseline = memory_kib(pid, "VmRSS").expect("daemon VmRSS");

    let report = Mutex::new(Report::default());
    let (stop, peak) = (AtomicBool::new(false), AtomicU64::new(baseline));
    let start = Instant::now();
    let mut died = None;
    thread::scope(|s| {
        s.spawn(|| watch_memory(pid, &stop, &peak));
        let workers: Vec<_> = (0..ABUSE_THREADS as u64)
            .map(|i| {
                let (ns, report) = (&ns, &report);
                s.spawn(move || abuse_thread(ns, api, seed + i, per_thread, report))
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            if died.is_none() {
                died = d.try_wait();
            }
            thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let r = report.into_inner().expect("report lock");
    println!(
        "sent {} requests in {:.1} s: {:?}; statuses {:?}; {} closed without an answer; \
         bad answers by class {:?}; daemon memory {} KiB before, {} KiB at most",
        r.sent,
        start.elapsed().as_secs_f64(),
        r.by_class,
        r.statuses,
        r.closed_without_answer,
        r.failures_by_class,
        baseline,
        peak.load(Ordering::Relaxed)
    );

    assert_eq!(died, None, "the daemon died during the abuse; first failures: {:?}", r.failures);
    assert_eq!(d.try_wait(), None, "the daemon died during the abuse");
    assert!(
        r.failures.is_empty(),
        "bad answers (the abuse stops after {ENOUGH_FAILURES}): {:#?}",
        r.failures
    );
    assert!(r.sent >= per_thread * ABUSE_THREADS);
    {
        let _in_ns = ns.enter_current_thread();
        metrics_latency(api, Duration::from_secs(5)).expect("metrics after the abuse");
    }
    views::assert_consistent(&d, "after the abuse");
    assert_eq!(protected_state(&d), before, "the protected tenant changed");
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak < RSS_LIMIT_KIB, "daemon memory reached {peak} KiB");
}

/// A connection that sends `script` one byte per tick.
struct Dribbler {
    stream: TcpStream,
    script: Vec<u8>,
    next: usize,
}

#[test]
fn slow_and_idle_clients_do_not_stop_metrics_from_answering() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let mut d = Daemon::start(&ns, &["--iface", "lo"], QUIET);
    let (api, pid) = (d.api, d.pid());

    // 100 connections: idle ones, ones that dribble a request line and headers, and ones that
    // send a PUT's headers at once and then dribble its 4 KiB body.
    let mut idle = Vec::new();
    let mut dribblers = Vec::new();
    {
        let _in_ns = ns.enter_current_thread();
        let connect = || TcpStream::connect_timeout(&api, Duration::from_secs(5)).expect("connect");
        for i in 0..100 {
            let stream = connect();
            match i % 10 {
                0..=3 => idle.push(stream),
                4..=6 => {
                    let script = b"GET /debug/snapshot HTTP/1.1\r\nHost: vantage\r\n\r\n".to_vec();
                    dribblers.push(Dribbler { stream, script, next: 0 });
                }
                _ => {
                    let mut stream = stream;
                    let head = format!(
                        "PUT /policy/cg:{} HTTP/1.1\r\nHost: vantage\r\nContent-Length: 4096\r\n\r\n",
                        100 + i
                    );
                    stream.write_all(head.as_bytes()).expect("send headers");
                    let script = vec![b' '; 4096];
                    dribblers.push(Dribbler { stream, script, next: 0 });
                }
            }
        }
    }
    for dr in &dribblers {
        dr.stream.set_nonblocking(true).expect("nonblocking");
    }

    let stop = AtomicBool::new(false);
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for dr in dribblers.iter_mut().filter(|dr| dr.next < dr.script.len()) {
                    if let Ok(1) = dr.stream.write(&dr.script[dr.next..dr.next + 1]) {
                        dr.next += 1;
                    }
                }
                thread::sleep(Duration::from_millis(250));
            }
        });
        let _in_ns = ns.enter_current_thread();
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            match metrics_latency(api, Duration::from_secs(5)) {
                Ok(t) => latencies.push(t),
                Err(e) => failures.push(e),
            }
            thread::sleep(Duration::from_millis(500));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "with {} idle and {} dribbling connections: {} GET /metrics answered (slowest {:?}), {} not",
        idle.len(),
        dribblers.len(),
        latencies.len(),
        slowest,
        failures.len()
    );
    let rss = memory_kib(pid, "VmRSS").expect("daemon VmRSS");
    drop((idle, dribblers));

    assert_eq!(d.try_wait(), None, "the daemon died");
    assert!(
        failures.is_empty(),
        "GET /metrics must answer within 5 s while slow clients are connected; {} of {} probes \
         did not, first: {}",
        failures.len(),
        failures.len() + latencies.len(),
        failures[0]
    );
    assert!(rss < RSS_LIMIT_KIB, "daemon memory reached {rss} KiB");
    views::assert_consistent(&d, "after the slow clients");
}

#[test]
fn the_api_still_answers_after_a_long_idle_spell() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let mut d = Daemon::start(&ns, &["--iface", "lo"], QUIET);
    let _in_ns = ns.enter_current_thread();
    metrics_latency(d.api, Duration::from_secs(5)).expect("metrics right after start-up");
    // Nobody connects for a while: a socket timeout on the listening socket
    // once made accept() fail after 10 s, which stopped tiny_http's accept
    // loop for good.
    let idle = Duration::from_secs(12);
    thread::sleep(idle);
    assert_eq!(d.try_wait(), None, "the daemon died while idle");
    metrics_latency(d.api, Duration::from_secs(5)).unwrap_or_else(|e| {
        panic!("after {idle:?} without connections the API no longer answers: {e}")
    });
}

#[test]
fn a_request_claiming_an_absurd_body_length_is_refused_and_the_daemon_stays_up() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let mut d = Daemon::start(&ns, &["--iface", "lo"], QUIET);
    let _in_ns = ns.enter_current_thread();
    for (path, length) in [
        ("/policy/cg:5", "99999999999999"),
        ("/metrics", "18446744073709551615"),
        ("/no/such/endpoint", "4294967296"),
    ] {
        let req = format!(
            "PUT {path} HTTP/1.1\r\nHost: vantage\r\nContent-Length: {length}\r\n\r\n{{\"a\":1}}"
        );
        let raw = exchange(d.api, req.as_bytes(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("Content-Length {length}: {e}"));
        let codes = statuses(&raw);
        assert!(
            codes.iter().all(|c| (400..500).contains(c)),
            "Content-Length {length} on {path}: answered {codes:?}"
        );
        thread::sleep(Duration::from_millis(300));
        assert_eq!(
            d.try_wait(),
            None,
            "the daemon died after a request to {path} with Content-Length: {length}"
        );
        metrics_latency(d.api, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("after Content-Length {length}: {e}"));
    }
}

#[test]
fn an_endless_request_line_does_not_grow_the_daemon_without_bound() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let mut d = Daemon::start(&ns, &["--iface", "lo"], QUIET);
    let pid = d.pid();
    let baseline = memory_kib(pid, "VmRSS").expect("daemon VmRSS");
    let _in_ns = ns.enter_current_thread();
    let mut s = TcpStream::connect_timeout(&d.api, Duration::from_secs(5)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(15))).expect("write timeout");

    // Up to 256 MiB of request line with no line break; the daemon may refuse it, close the
    // connection or stop reading, but must not keep it all.
    let chunk = vec![b'a'; 1 << 20];
    let mut sent_mib = 0;
    let mut grown = None;
    let mut refused = None;
    s.write_all(b"GET /").expect("send");
    for mib in 1..=256 {
        if let Err(e) = s.write_all(&chunk) {
            refused = Some(e);
            break;
        }
        sent_mib = mib;
        if mib % 4 == 0 {
            thread::sleep(Duration::from_millis(20));
            let rss = memory_kib(pid, "VmRSS").unwrap_or(0);
            if rss >= RSS_LIMIT_KIB {
                grown = Some(rss);
                break;
            }
        }
    }
    println!(
        "sent {sent_mib} MiB of request line; daemon memory {baseline} KiB before, {} KiB \
         after; connection {}",
        memory_kib(pid, "VmRSS").unwrap_or(0),
        refused.as_ref().map_or("still open".to_string(), |e| format!("ended: {e}"))
    );
    drop(s);
    assert_eq!(d.try_wait(), None, "the daemon died");
    assert_eq!(
        grown, None,
        "daemon memory grew from {baseline} KiB to over {RSS_LIMIT_KIB} KiB while a client sent \
         {sent_mib} MiB of request line without a line break"
    );
    metrics_latency(d.api, Duration::from_secs(5)).expect("metrics after the long line");
}
