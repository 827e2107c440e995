//! Control-plane speed: how soon a policy change is enforced, how fast
//! policies load in bulk, what a large `/metrics` costs, how much memory
//! the daemon holds, and how big the static binary is.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use crate::{
    common::{self, traffic::metric, Cgroup, Daemon, Netns},
    daemon::{self, Running},
    procs::{pin_current_thread, rss_mib},
    report::Report,
    stats::{median, percentile},
};

/// Policy updates timed for the PUT-to-enforced latency.
const UPDATES: usize = 400;
/// `PUT /policies` takes at most this many per request.
const BATCH: usize = 10_000;
/// `/metrics` scrapes timed.
const SCRAPES: usize = 9;
const LO: [u8; 4] = [127, 0, 0, 1];

/// Runs every control-plane measurement.
pub fn run(report: &mut Report) {
    let bin = daemon::binary().display().to_string();
    report.row("control", "daemon binary measured", bin.clone());
    report.set_value("daemon_binary", serde_json::Value::String(bin));
    update_latency(report);
    loads_and_memory(report);
    metrics_scrape(report);
    static_binary(report);
}

/// Latency from a `PUT /policy` returning to the kernel enforcing it.
///
/// The policy on a UDP port of a tenant is toggled between dropping
/// everything (burst 0) and admitting everything. After each PUT returns,
/// probes are sent until one shows the new verdict. Whether a probe was
/// dropped is known without a timeout: right after it, a witness datagram
/// goes to a socket of a tenant without a policy; loopback hands both to
/// the classifier in order on this (pinned) CPU, so once the witness has
/// arrived the probe either has too or never will. The latency runs from
/// the PUT's return to the return of the `sendto` that carried the first
/// probe with the new verdict, by which time the classifier has judged it.
fn update_latency(report: &mut Report) {
    let ns = Netns::new();
    let (tenant, bystander) = (Cgroup::new(), Cgroup::new());
    let daemon = Running::start(&ns, &["--iface", "lo"], false);
    let d = &daemon.d;
    let _in_ns = ns.enter_current_thread();
    let _pinned = pin_current_thread(&[0]);
    let (target_addr, witness_addr) = (SocketAddr::from((LO, 7901)), SocketAddr::from((LO, 7902)));
    let target = common::udp_bound_in(&tenant, target_addr);
    target.set_nonblocking(true).expect("non-blocking target");
    let witness = common::udp_bound_in(&bystander, witness_addr);
    witness.set_read_timeout(Some(Duration::from_secs(1))).expect("witness timeout");
    let prober = UdpSocket::bind(SocketAddr::from((LO, 0))).expect("probe socket");

    let path = format!("/policy/cg:{}", tenant.id);
    let body = |drop_all: bool| {
        let (rate, burst) = if drop_all { (1, 0) } else { (1_000_000, 1_000_000) };
        format!(
            r#"{{"rate_tokens_per_sec":{rate},"burst_tokens":{burst},"enabled":true,"proto":"udp","dst_port":7901}}"#
        )
    };
    let (status, reply) = d.http("PUT", &path, Some(&body(false)));
    assert!(status == 200 || status == 201, "PUT policy: {status} {reply}");

    let (mut enforced_us, mut put_us) = (Vec::new(), Vec::new());
    let (mut seq, mut most_probes) = (0u64, 0);
    for i in 0..UPDATES {
        let drop_all = i % 2 == 0;
        let sent = Instant::now();
        let (status, reply) = d.http("PUT", &path, Some(&body(drop_all)));
        let returned = Instant::now();
        assert_eq!(status, 200, "PUT policy update {i}: {reply}");
        for probes in 1.. {
            assert!(probes <= 10_000, "update {i} not enforced after 10,000 probes");
            seq += 1;
            prober.send_to(&seq.to_le_bytes(), target_addr).expect("send probe");
            let judged = Instant::now();
            prober.send_to(&seq.to_le_bytes(), witness_addr).expect("send witness");
            wait_for(&witness, seq);
            if received(&target, seq) != drop_all {
                enforced_us.push((judged - returned).as_secs_f64() * 1e6);
                put_us.push((returned - sent).as_secs_f64() * 1e6);
                most_probes = most_probes.max(probes);
                break;
            }
        }
    }

    let (p50, p99) = (percentile(&enforced_us, 50.0), percentile(&enforced_us, 99.0));
    let (max, rtt50, rtt99) =
        (percentile(&enforced_us, 100.0), percentile(&put_us, 50.0), percentile(&put_us, 99.0));
    report.set("policy_update_p50_us", p50);
    report.set("policy_update_p99_us", p99);
    report.set("policy_update_max_us", max);
    report.set("policy_update_probes_max", most_probes as f64);
    report.set("policy_put_rtt_p50_us", rtt50);
    report.set("policy_put_rtt_p99_us", rtt99);
    report.row(
        "control",
        format!("PUT returned -> enforced ({UPDATES} updates)"),
        format!(
            "p50 {p50:.1} us, p99 {p99:.1} us, max {max:.1} us; at most {most_probes} probe(s)"
        ),
    );
    report.row(
        "control",
        "PUT /policy round trip",
        format!("p50 {rtt50:.0} us, p99 {rtt99:.0} us (includes the state file rewrite)"),
    );
}

/// Reads the witness socket until datagram `seq` arrives.
fn wait_for(witness: &UdpSocket, seq: u64) {
    let mut buf = [0u8; 16];
    loop {
        let n = witness.recv(&mut buf).expect("witness datagram (it has no policy)");
        if n == 8 && u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) == seq {
            return;
        }
    }
}

/// Drains `target`; whether datagram `seq` was among what had arrived.
fn received(target: &UdpSocket, seq: u64) -> bool {
    let mut buf = [0u8; 16];
    let mut found = false;
    while let Ok(n) = target.recv(&mut buf) {
        found |= n == 8 && u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) == seq;
    }
    found
}

/// Idle RSS, then the time to load 10k and 100k policies through
/// `PUT /policies` into fresh daemons, and RSS at 100k.
fn loads_and_memory(report: &mut Report) {
    let ns = Netns::new();
    let args = ["--iface", "lo", "--policy-capacity", "131072"];

    let mut daemon = Running::start(&ns, &args, false);
    thread::sleep(Duration::from_secs(1));
    let idle = rss_mib(daemon.d.pid());
    report.set("rss_idle_mib", idle);
    report.row("control", "daemon RSS, idle", format!("{idle:.1} MiB"));
    match load(&ns, &daemon.d, 10_000) {
        Some(ms) => {
            report.set("load_10k_ms", ms);
            report.row("control", "load 10k policies (PUT /policies)", format!("{ms:.0} ms"));
        }
        None => {
            let ms = load_one_by_one(&daemon.d, 10_000);
            report.set("load_10k_single_puts_ms", ms);
            report.row("control", "load 10k policies (single PUTs)", format!("{ms:.0} ms"));
        }
    }
    assert!(daemon.d.stop().success(), "daemon exit status");

    // The glibc build the tests use, for comparison: its allocator keeps
    // what start-up freed, the static (musl) build's does not.
    if daemon::binary_is_static() {
        let harness = std::path::Path::new(env!("CARGO_BIN_EXE_vantage"));
        let mut glibc = Running::start_binary(&ns, &args, false, harness);
        thread::sleep(Duration::from_secs(1));
        let rss = rss_mib(glibc.d.pid());
        report.set("rss_idle_glibc_build_mib", rss);
        report.row("control", "daemon RSS, idle, glibc build", format!("{rss:.1} MiB"));
        assert!(glibc.d.stop().success(), "daemon exit status");
    }

    let mut daemon = Running::start(&ns, &args, false);
    let Some(ms) = load(&ns, &daemon.d, 100_000) else {
        report.row("control", "load 100k policies", "not measured: no PUT /policies");
        return;
    };
    thread::sleep(Duration::from_millis(500));
    let rss = rss_mib(daemon.d.pid());
    let (_, text) = daemon.d.http("GET", "/metrics", None);
    let stored = metric(&text, "vantage_policies", &[("map", "base")]);
    assert_eq!(stored, Some(100_000.0), "policies the daemon reports after the load");
    report.set("load_100k_ms", ms);
    report.set("rss_100k_policies_mib", rss);
    report.row("control", "load 100k policies (10 x PUT /policies)", format!("{ms:.0} ms"));
    report.row("control", "daemon RSS, 100k policies", format!("{rss:.1} MiB"));
    assert!(daemon.d.stop().success(), "daemon exit status");
}

/// The i-th bulk policy: four UDP ports per tenant, tenant ids no cgroup has.
fn bulk_policy(i: usize) -> (u64, u16) {
    (1_000_000_000 + (i / 4) as u64, 1000 + (i % 4) as u16)
}

/// Loads `n` policies in batches; milliseconds from the first request to
/// the last answer, or `None` when the daemon has no `PUT /policies`.
fn load(ns: &Netns, d: &Daemon, n: usize) -> Option<f64> {
    let bodies: Vec<String> = (0..n)
        .step_by(BATCH)
        .map(|start| {
            let items: Vec<String> = (start..(start + BATCH).min(n))
                .map(|i| {
                    let (tenant, port) = bulk_policy(i);
                    format!(
                        r#"{{"tenant":"cg:{tenant}","rate_tokens_per_sec":1000,"burst_tokens":100,"enabled":true,"proto":"udp","dst_port":{port}}}"#
                    )
                })
                .collect();
            format!(r#"{{"policies":[{}]}}"#, items.join(","))
        })
        .collect();
    let t = Instant::now();
    for body in &bodies {
        let (status, reply) = put_slow(ns, d, "/policies", body);
        if status == 404 || status == 405 {
            return None;
        }
        assert_eq!(status, 200, "PUT /policies: {reply}");
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    progress!("control: {n} policies loaded in {ms:.0} ms");
    Some(ms)
}

/// `PUT path` with a body, waiting as long as the daemon takes: the test
/// harness's client gives up after 10 s, which a bulk load may exceed.
fn put_slow(ns: &Netns, d: &Daemon, path: &str, body: &str) -> (u16, String) {
    let timeout = Some(Duration::from_secs(300));
    let mut stream = {
        let _in_ns = ns.enter_current_thread();
        TcpStream::connect_timeout(&d.api, Duration::from_secs(10)).expect("connect to the API")
    };
    stream.set_read_timeout(timeout).expect("read timeout");
    stream.set_write_timeout(timeout).expect("write timeout");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        d.api,
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("receive the answer");
    common::parse_http_response(&raw).unwrap_or_else(|e| panic!("PUT {path}: bad answer: {e}"))
}

/// Loads `n` policies with one `PUT /policy` each; milliseconds.
fn load_one_by_one(d: &Daemon, n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        let (tenant, port) = bulk_policy(i);
        let body = format!(
            r#"{{"rate_tokens_per_sec":1000,"burst_tokens":100,"enabled":true,"proto":"udp","dst_port":{port}}}"#
        );
        let (status, reply) = d.http("PUT", &format!("/policy/cg:{tenant}"), Some(&body));
        assert!(status == 201, "PUT policy {i}: {status} {reply}");
    }
    t.elapsed().as_secs_f64() * 1e3
}

/// `GET /metrics` with 5,000 policies, two dimensional series each.
fn metrics_scrape(report: &mut Report) {
    let ns = Netns::new();
    let daemon = Running::start(&ns, &["--iface", "lo", "--metrics-dimensional-enabled"], false);
    let d = &daemon.d;
    if load(&ns, d, 5_000).is_none() {
        load_one_by_one(d, 5_000);
    }
    let mut ms = Vec::new();
    let mut text = String::new();
    for _ in 0..SCRAPES {
        let t = Instant::now();
        let (status, body) = d.http("GET", "/metrics", None);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200, "GET /metrics");
        text = body;
    }
    let series = text.lines().filter(|l| l.starts_with("vantage_policy_packets_total{")).count();
    assert_eq!(series, 10_000, "dimensional series for 5,000 policies");
    let m = median(&ms);
    report.set("metrics_scrape_10k_ms", m);
    report.set("metrics_scrape_10k_bytes", text.len() as f64);
    report.row(
        "control",
        "GET /metrics, 10k series",
        format!("{m:.1} ms median of {SCRAPES} ({:.1} MiB)", text.len() as f64 / 1048576.0),
    );
}

/// Size of the daemon binary under test, which `make bench` points at the
/// static build (see [`daemon::BINARY_ENV`]).
fn static_binary(report: &mut Report) {
    let path = daemon::binary();
    let is_static = daemon::binary_is_static();
    let bytes =
        std::fs::metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).len();
    let mib = bytes as f64 / 1048576.0;
    report.set("static_binary_mib", mib);
    report.set("static_binary_is_static", if is_static { 1.0 } else { 0.0 });
    let what = if is_static { "static binary" } else { "binary (not static: run make bench)" };
    report.row("control", what, format!("{mib:.2} MiB  ({})", path.display()));
}
