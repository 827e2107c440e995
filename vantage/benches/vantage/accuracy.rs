//! Rate accuracy under 10x overload, vantage against nftables.
//!
//! A policy of `RATE` packets/s with a bucket of `BURST` meets `OFFERED`
//! packets/s of UDP for `DURATION`, over a namespace's loopback, to a socket
//! in a cgroup of the bench's own. At most `BURST + RATE * elapsed` can be
//! admitted, where elapsed runs from the first packet sent to the last; the
//! error is (admitted - expected) / expected. The load comes from one flow,
//! then from two flows on threads pinned to different CPUs, which makes both
//! CPUs update the same bucket at once (loopback delivers on the sending
//! CPU). nftables gets the same two runs with `socket cgroupv2 ... udp dport
//! P limit rate over RATE/second burst BURST packets drop`, each at the same
//! time as vantage's, in a namespace of its own.

use std::{
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use crate::{
    common::{
        self,
        traffic::{expected, udp_flood, Counter},
        Cgroup, Netns,
    },
    daemon::Running,
    nft,
    procs::pin_current_thread,
    report::Report,
};

const RATE: u64 = 200;
const BURST: u64 = 100;
const OFFERED: u64 = 2_000;
const DURATION: Duration = Duration::from_secs(10);
const LO: [u8; 4] = [127, 0, 0, 1];

/// What one run delivered.
struct Outcome {
    sent: u64,
    admitted: u64,
    elapsed: Duration,
}

/// Runs the four floods and records `rate_error_pct` and `rate_packets`.
pub fn run(report: &mut Report) {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let spread: Vec<Option<usize>> = (0..cpus).map(Some).collect();

    // vantage: the daemon on its namespace's loopback, ingress, one policy
    // per run (each bucket starts full, as the expected count assumes).
    let v_ns = Netns::new();
    let v_cg = Cgroup::new();
    let daemon = Running::start(&v_ns, &["--iface", "lo"], false);
    for port in [7701, 7702] {
        let body = format!(
            r#"{{"rate_tokens_per_sec":{RATE},"burst_tokens":{BURST},"enabled":true,"proto":"udp","dst_port":{port}}}"#
        );
        let (status, reply) = daemon.d.http("PUT", &format!("/policy/cg:{}", v_cg.id), Some(&body));
        assert!(status == 200 || status == 201, "PUT policy: {status} {reply}");
    }

    // nftables: equivalent input rules in a namespace of their own.
    let n_ns = Netns::new();
    let n_cg = Cgroup::new();
    let rule = |port: u16| {
        format!(
            "{} udp dport {port} limit rate over {RATE}/second burst {BURST} packets drop",
            nft::cgroup_match(&n_cg)
        )
    };
    let _table = nft::Table::add(&n_ns, "vtbench", &[rule(7801), rule(7802)]);

    // Each pair of runs goes at the same time, so both meet the same
    // machine; together they offer 4,000 packets/s, a light load.
    let both = |v_port, n_port, cpus: &[Option<usize>]| {
        thread::scope(|s| {
            let v = s.spawn(|| flood(&v_ns, &v_cg, v_port, cpus));
            let n = s.spawn(|| flood(&n_ns, &n_cg, n_port, cpus));
            (v.join().expect("vantage flood"), n.join().expect("nftables flood"))
        })
    };
    let (v, n) = both(7701, 7801, &[None]);
    record(report, "single_flow", "vantage, one flow", &v);
    record(report, "nftables_single_flow", "nftables, one flow", &n);
    let (v, n) = both(7702, 7802, &spread);
    record(report, "multi_cpu", &format!("vantage, {cpus} CPUs"), &v);
    record(report, "nftables_multi_cpu", &format!("nftables, {cpus} CPUs"), &n);

    let (_, snap) = daemon.d.http_json("GET", "/debug/snapshot", None);
    let give_ups = snap["counters"]["ingress"]["fail_open_internal"].as_f64().unwrap_or(0.0);
    report.set("rate_packets.multi_cpu.cas_give_ups", give_ups);
}

/// Floods `port` (a socket of `cg` in `ns`) at `OFFERED` packets/s in all,
/// split over one sender thread per entry of `cpus` (pinned where given).
fn flood(ns: &Netns, cg: &Cgroup, port: u16, cpus: &[Option<usize>]) -> Outcome {
    let dst = SocketAddr::from((LO, port));
    let receiver = {
        let _in_ns = ns.enter_current_thread();
        common::udp_bound_in(cg, dst)
    };
    let count = Counter::start(receiver);
    let per_sender = OFFERED / cpus.len() as u64;
    let runs: Vec<(Instant, Instant, u64)> = thread::scope(|scope| {
        let senders: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                scope.spawn(move || {
                    let _in_ns = ns.enter_current_thread();
                    let _pinned = cpu.map(|c| pin_current_thread(&[c]));
                    let client = UdpSocket::bind(SocketAddr::from((LO, 0))).expect("client socket");
                    let start = Instant::now();
                    let sent = udp_flood(&client, dst, per_sender, DURATION);
                    (start, start + sent.elapsed, sent.packets)
                })
            })
            .collect();
        senders.into_iter().map(|t| t.join().expect("sender thread")).collect()
    });
    let admitted = count.finish();
    let first = runs.iter().map(|r| r.0).min().expect("a sender");
    let last = runs.iter().map(|r| r.1).max().expect("a sender");
    Outcome { sent: runs.iter().map(|r| r.2).sum(), admitted, elapsed: last - first }
}

fn record(report: &mut Report, key: &str, label: &str, o: &Outcome) {
    let want = expected(RATE, BURST, o.elapsed);
    let err = (o.admitted as f64 - want) / want * 100.0;
    report.set(&format!("rate_error_pct.{key}"), err);
    report.set(&format!("rate_packets.{key}.admitted"), o.admitted as f64);
    report.set(&format!("rate_packets.{key}.expected"), want);
    report.set(&format!("rate_packets.{key}.sent"), o.sent as f64);
    report.set(&format!("rate_packets.{key}.elapsed_s"), o.elapsed.as_secs_f64());
    report.row(
        "accuracy",
        label,
        format!(
            "{} admitted for {want:.1} expected ({err:+.3} %), {} offered over {:.2} s",
            o.admitted,
            o.sent,
            o.elapsed.as_secs_f64()
        ),
    );
    progress!("accuracy: {label}: {} admitted for {want:.1} expected", o.admitted);
}
