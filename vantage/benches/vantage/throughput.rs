//! Throughput across a veth pair between two namespaces, with iperf3.
//!
//! The iperf3 server runs in the server namespace inside a cgroup of the
//! bench's own, pinned to CPU 1; the client runs in the client namespace,
//! pinned to CPU 0. Four set-ups, each measured with TCP and with UDP
//! (unlimited offered rate, received rate reported):
//!
//! - no classifier;
//! - nftables: an input rule matching the server's cgroup with a limit far
//!   above the offered load (so it runs on every packet but never drops);
//! - the vantage daemon attached to the server's veth ingress, no policy;
//! - the same daemon with a tenant-wide policy of the same generous limit.
//!
//! Each run is `SECS` seconds after one omitted warm-up second. A
//! repetition runs the baseline, nftables, vantage without and with the
//! policy, and the baseline again, `REPS` times. Other work on the machine
//! only ever slows a run down, so each set-up's figure is its best run and
//! the ratio is best against best; the median of the per-repetition ratios
//! (against the mean of that repetition's two baselines) is kept as well.
//!
//! Short iperf3 runs on this kind of machine vary by tens of percent from
//! one to the next, far more than a classifier costs, so the last
//! repetition also measures the attached classifier directly: BPF run-time
//! statistics give its nanoseconds per packet and its share of a CPU.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use serde_json::Value;
use vantage_common::PROG_INGRESS;

use crate::{
    common::{traffic::metric, Cgroup, Netns},
    daemon::Running,
    nft,
    procs::{self, Background},
    report::Report,
    stats::median,
};

const SERVER: &str = "10.250.0.2";
const PORT: &str = "5201";
const REPS: usize = 5;
const SECS: &str = "1";
/// Seconds of the extra runs that measure the classifier in situ.
const IN_SITU_SECS: &str = "3";
/// The generous limit, for vantage and nftables alike: packets per second
/// and burst, far above what iperf3 offers here.
const GENEROUS_RATE: u64 = 10_000_000;
const GENEROUS_BURST: u64 = 1_000_000;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Setup {
    Baseline,
    Nftables,
    VantageNoPolicy,
    VantageGenerousPolicy,
}

impl Setup {
    fn key(self) -> &'static str {
        match self {
            Setup::Baseline => "baseline",
            Setup::Nftables => "nftables",
            Setup::VantageNoPolicy => "vantage_no_policy",
            Setup::VantageGenerousPolicy => "vantage_generous_policy",
        }
    }
}

/// Gbit/s per set-up and protocol, in one repetition.
type Results = BTreeMap<(Setup, &'static str), Vec<f64>>;

/// Measures every set-up and records `throughput_ratio_vs_baseline`.
pub fn run(report: &mut Report) {
    nft::verify_match();
    let (client, server) = (Netns::new(), Netns::new());
    let (_client_if, server_if) = client.veth_pair(&server, "10.250.0.1/24", "10.250.0.2/24");
    let cg = Cgroup::new();
    let server_argv = ["iperf3", "-s", "-p", PORT, "-A", "1"];
    let mut iperf = Background::spawn(&server, Some(&cg), &server_argv);
    wait_listening(&server, &mut iperf);

    // Each repetition measures the baseline first and last and compares the
    // others with the mean of the two, which cancels slow drift in what the
    // rest of the machine is doing.
    let steal_before = procs::cpu_times();
    let mut reps: Vec<Results> = Vec::new();
    let mut in_situ = Vec::new();
    for rep in 0..REPS {
        let mut r = Results::new();
        measure(&client, Setup::Baseline, &mut r);
        {
            let rule = format!(
                "{} limit rate over {GENEROUS_RATE}/second burst {GENEROUS_BURST} packets drop",
                nft::cgroup_match(&cg)
            );
            let _table = nft::Table::add(&server, "vtbench", &[rule]);
            measure(&client, Setup::Nftables, &mut r);
        }
        let last = rep + 1 == REPS;
        let situ = vantage_runs(&client, &server, &server_if, &cg, &mut r, last);
        in_situ.extend(situ);
        measure(&client, Setup::Baseline, &mut r);
        progress!("throughput: repetition {} of {REPS} done", rep + 1);
        reps.push(r);
    }
    drop(iperf);
    let steal = procs::cpu_times().steal_share_since(&steal_before) * 100.0;
    report.set("throughput_hypervisor_steal_pct", steal);
    report.row(
        "throughput",
        "CPU time taken by the hypervisor",
        format!("{steal:.1} % of both CPUs while these ran (steal in /proc/stat)"),
    );

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    for proto in ["tcp", "udp"] {
        let runs =
            |s: Setup| -> Vec<f64> { reps.iter().flat_map(|r| r[&(s, proto)].clone()).collect() };
        let per_rep =
            |s: Setup| -> Vec<f64> { reps.iter().map(|r| mean(&r[&(s, proto)])).collect() };
        let (base_runs, base_reps) = (runs(Setup::Baseline), per_rep(Setup::Baseline));
        let base_best = best(&base_runs);
        report.set(&format!("throughput_gbps.{proto}_baseline"), base_best);
        report.row(
            "throughput",
            format!("{proto} no classifier"),
            format!("{base_best:6.2} Gbit/s best  (runs {})", list(&base_runs)),
        );
        for s in [Setup::VantageNoPolicy, Setup::VantageGenerousPolicy, Setup::Nftables] {
            let (g, ratio) = (best(&runs(s)), best(&runs(s)) / base_best);
            let paired: Vec<f64> = per_rep(s).iter().zip(&base_reps).map(|(x, b)| x / b).collect();
            // The issue's keys are TCP; UDP gets its own prefixed keys.
            let key = if proto == "tcp" { s.key().to_string() } else { format!("udp_{}", s.key()) };
            report.set(&format!("throughput_ratio_vs_baseline.{key}"), ratio);
            report.set(&format!("throughput_ratio_paired_median.{key}"), median(&paired));
            report.set(&format!("throughput_gbps.{proto}_{}", s.key()), g);
            report.row(
                "throughput",
                format!("{proto} {}", s.key()),
                format!(
                    "{g:6.2} Gbit/s best  {:6.2} %  (runs {}; paired median {:.1} %)",
                    ratio * 100.0,
                    list(&runs(s)),
                    median(&paired) * 100.0
                ),
            );
        }
    }

    for (proto, c) in in_situ {
        report.set(&format!("classifier_in_situ.{proto}_ns_per_packet"), c.ns_per_packet);
        report.set(&format!("classifier_in_situ.{proto}_packets_per_sec"), c.packets_per_sec);
        report.set(&format!("classifier_in_situ.{proto}_cpu_pct"), c.cpu_pct);
        report.row(
            "throughput",
            format!("{proto} classifier in situ"),
            format!(
                "{:.0} ns/packet x {:.0} packets/s = {:.2} % of one CPU (at {:.2} Gbit/s)",
                c.ns_per_packet, c.packets_per_sec, c.cpu_pct, c.gbps
            ),
        );
    }
}

/// The attached classifier's own cost during one iperf3 run, from the
/// kernel's BPF run-time statistics.
struct InSitu {
    ns_per_packet: f64,
    packets_per_sec: f64,
    /// Classifier time over the run's wall time, in percent of one CPU.
    cpu_pct: f64,
    gbps: f64,
}

/// Runs TCP and UDP once more with BPF run-time statistics on and reads
/// what the daemon's ingress program spent. The statistics cost every BPF
/// program two clock reads per run, so they stay off for the timed runs.
fn classifier_in_situ(client: &Netns, server: &Netns, iface: &str) -> Vec<(&'static str, InSitu)> {
    let _stats =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time stats");
    let read = || {
        let _in_ns = server.enter_current_thread();
        let (_, infos) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
            .unwrap_or_else(|e| panic!("query tcx on {iface}: {e}"));
        let info = infos
            .iter()
            .find(|i| i.name_as_str() == Some(PROG_INGRESS))
            .unwrap_or_else(|| panic!("no {PROG_INGRESS} attached to {iface}"));
        (info.run_time(), info.run_count())
    };
    ["tcp", "udp"]
        .into_iter()
        .map(|proto| {
            let (time0, count0) = read();
            let t = Instant::now();
            let gbps = iperf3(client, proto == "udp", IN_SITU_SECS);
            let wall = t.elapsed().as_secs_f64();
            let (time1, count1) = read();
            let (ns, packets) = ((time1 - time0).as_nanos() as f64, (count1 - count0) as f64);
            let c = InSitu {
                ns_per_packet: ns / packets.max(1.0),
                packets_per_sec: packets / wall,
                cpu_pct: ns / (wall * 1e9) * 100.0,
                gbps,
            };
            progress!("throughput: {proto} classifier in situ: {:.0} ns/packet", c.ns_per_packet);
            (proto, c)
        })
        .collect()
}

fn list(xs: &[f64]) -> String {
    xs.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
}

/// Runs the daemon on the server's veth ingress: measures with no policy,
/// then with the generous policy, and checks that the policy saw the
/// traffic; with `in_situ`, also measures the classifier's own cost.
fn vantage_runs(
    client: &Netns,
    server: &Netns,
    iface: &str,
    cg: &Cgroup,
    results: &mut Results,
    in_situ: bool,
) -> Vec<(&'static str, InSitu)> {
    let args = ["--iface", iface, "--direction", "ingress", "--metrics-dimensional-enabled"];
    let mut daemon = Running::start(server, &args, true);
    let d = &mut daemon.d;
    measure(client, Setup::VantageNoPolicy, results);

    let body = format!(
        r#"{{"rate_tokens_per_sec":{GENEROUS_RATE},"burst_tokens":{GENEROUS_BURST},"enabled":true}}"#
    );
    let (status, reply) = d.http("PUT", &format!("/policy/cg:{}", cg.id), Some(&body));
    assert!(status == 200 || status == 201, "PUT generous policy: {status} {reply}");
    measure(client, Setup::VantageGenerousPolicy, results);
    let situ = if in_situ { classifier_in_situ(client, server, iface) } else { Vec::new() };

    let (_, text) = d.http("GET", "/metrics", None);
    let tenant = format!("cg:{}", cg.id);
    let seen = |outcome| {
        let labels = [("tenant", tenant.as_str()), ("outcome", outcome)];
        metric(&text, "vantage_policy_packets_total", &labels).unwrap_or(0.0)
    };
    assert!(seen("admitted") > 0.0, "the generous policy saw no iperf3 packet: identity failed?");
    assert_eq!(seen("dropped"), 0.0, "the generous policy dropped packets");
    assert!(d.stop().success(), "daemon exit status");
    situ
}

/// One TCP and one UDP run of `setup`.
fn measure(client: &Netns, setup: Setup, results: &mut Results) {
    for proto in ["tcp", "udp"] {
        let before = procs::cpu_times();
        let g = iperf3(client, proto == "udp", SECS);
        let steal = procs::cpu_times().steal_share_since(&before) * 100.0;
        progress!("throughput: {proto} {} {g:.2} Gbit/s (steal {steal:.1} %)", setup.key());
        results.entry((setup, proto)).or_default().push(g);
    }
}

/// Received Gbit/s of one iperf3 run from `client`; retried when the
/// server is still busy with the previous run.
fn iperf3(client: &Netns, udp: bool, secs: &str) -> f64 {
    let mut argv = vec!["iperf3", "-c", SERVER, "-p", PORT, "-t", secs, "-O", "1", "-J"];
    argv.extend(["-A", "0"]);
    if udp {
        argv.extend(["-u", "-b", "0"]);
    }
    let mut last_err = String::new();
    for _ in 0..3 {
        match procs::run_in(client, &argv, Duration::from_secs(30)) {
            Ok(out) => {
                let v: Value = serde_json::from_str(&out)
                    .unwrap_or_else(|e| panic!("iperf3 JSON: {e}: {out}"));
                if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                    return bps / 1e9;
                }
                last_err = format!("no end.sum_received in {v}");
            }
            Err(e) => last_err = e,
        }
        thread::sleep(Duration::from_secs(1));
    }
    panic!("iperf3 {argv:?}: {last_err}");
}

/// Waits until the iperf3 server listens (up to 5 s).
fn wait_listening(server: &Netns, iperf: &mut Background) {
    let filter = format!("sport = :{PORT}");
    for _ in 0..100 {
        iperf.assert_running();
        let out = procs::run_in(server, &["ss", "-Hltn", &filter], Duration::from_secs(5));
        if out.is_ok_and(|o| !o.trim().is_empty()) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("iperf3 server not listening on {PORT} after 5 s");
}
