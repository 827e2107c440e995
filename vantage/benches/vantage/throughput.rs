//! Throughput across a veth pair between two namespaces, with iperf3.
//!
//! The iperf3 server runs in the server namespace inside a cgroup of the
//! bench's own, pinned to CPU 1; the client runs in the client namespace,
//! pinned to CPU 0. Both run at nice -20, so that other work on the machine
//! (builds, tests) takes less of their time and adds less noise. Four set-ups, each measured with TCP and with UDP
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
//! policy, and the baseline again; each set-up's ratio in a repetition is
//! against the mean of that repetition's two baselines, and the reported
//! ratio is the median over `REPS` repetitions.

use std::{collections::BTreeMap, thread, time::Duration};

use serde_json::Value;

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
const REPS: usize = 4;
const SECS: &str = "2";
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
    let server_argv = ["nice", "-n", "-20", "iperf3", "-s", "-p", PORT, "-A", "1"];
    let mut iperf = Background::spawn(&server, Some(&cg), &server_argv);
    wait_listening(&server, &mut iperf);

    // Each repetition measures the baseline first and last and compares the
    // others with the mean of the two, which cancels slow drift in what the
    // rest of the machine is doing.
    let mut reps: Vec<Results> = Vec::new();
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
        vantage_runs(&client, &server, &server_if, &cg, &mut r);
        measure(&client, Setup::Baseline, &mut r);
        progress!("throughput: repetition {} of {REPS} done", rep + 1);
        reps.push(r);
    }
    drop(iperf);

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for proto in ["tcp", "udp"] {
        let per_rep =
            |s: Setup| -> Vec<f64> { reps.iter().map(|r| mean(&r[&(s, proto)])).collect() };
        let base = per_rep(Setup::Baseline);
        let base_median = median(&base);
        report.set(&format!("throughput_gbps.{proto}_baseline"), base_median);
        report.row(
            "throughput",
            format!("{proto} no classifier"),
            format!("{base_median:6.2} Gbit/s  (repetitions {})", list(&base)),
        );
        for s in [Setup::VantageNoPolicy, Setup::VantageGenerousPolicy, Setup::Nftables] {
            let runs = per_rep(s);
            let ratios: Vec<f64> = runs.iter().zip(&base).map(|(x, b)| x / b).collect();
            let (g, ratio) = (median(&runs), median(&ratios));
            // The issue's keys are TCP; UDP gets its own prefixed keys.
            let key = if proto == "tcp" { s.key().to_string() } else { format!("udp_{}", s.key()) };
            report.set(&format!("throughput_ratio_vs_baseline.{key}"), ratio);
            report.set(&format!("throughput_gbps.{proto}_{}", s.key()), g);
            report.row(
                "throughput",
                format!("{proto} {}", s.key()),
                format!("{g:6.2} Gbit/s  {:5.1} %  (ratios {})", ratio * 100.0, list(&ratios)),
            );
        }
    }
}

fn list(xs: &[f64]) -> String {
    xs.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
}

/// Runs the daemon on the server's veth ingress: measures with no policy,
/// then with the generous policy, and checks that the policy saw the traffic.
fn vantage_runs(client: &Netns, server: &Netns, iface: &str, cg: &Cgroup, results: &mut Results) {
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

    let (_, text) = d.http("GET", "/metrics", None);
    let tenant = format!("cg:{}", cg.id);
    let seen = |outcome| {
        let labels = [("tenant", tenant.as_str()), ("outcome", outcome)];
        metric(&text, "vantage_policy_packets_total", &labels).unwrap_or(0.0)
    };
    assert!(seen("admitted") > 0.0, "the generous policy saw no iperf3 packet: identity failed?");
    assert_eq!(seen("dropped"), 0.0, "the generous policy dropped packets");
    assert!(d.stop().success(), "daemon exit status");
}

/// One TCP and one UDP run of `setup`.
fn measure(client: &Netns, setup: Setup, results: &mut Results) {
    for proto in ["tcp", "udp"] {
        let g = iperf3(client, proto == "udp");
        progress!("throughput: {proto} {} {g:.2} Gbit/s", setup.key());
        results.entry((setup, proto)).or_default().push(g);
    }
}

/// Received Gbit/s of one iperf3 run from `client`; retried when the
/// server is still busy with the previous run.
fn iperf3(client: &Netns, udp: bool) -> f64 {
    let mut argv =
        vec!["nice", "-n", "-20", "iperf3", "-c", SERVER, "-p", PORT, "-t", SECS, "-O", "1", "-J"];
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
