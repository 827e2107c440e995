//! Per-packet cost of the ingress classifier through `BPF_PROG_TEST_RUN`.
//!
//! Two copies of the object are loaded with the daemon's default capacities:
//! one holding 10 policies, the other 100,000 (the same three that the
//! packets hit, plus fillers for other tenants). The empty classifier from
//! the first copy is the baseline. Every round runs each case `REPEAT` times
//! in the kernel, which reports the mean time per run; the figure is the
//! median over `ROUNDS` rounds, the cases interleaved within each round so
//! that a burst of noise from other work on the machine hits all of them.
//!
//! Test runs look sockets up in the caller's network namespace, so this
//! thread enters a namespace of its own and opens sockets from cgroups of
//! its own; every flow is run once before timing, which fills the identity
//! cache as a flow's first packet would.

use std::net::SocketAddr;

use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use vantage::{
    btf::{CgroupIdOffsets, KernelBtf},
    loader::{self, LoadOptions},
    maps::{Dataplane, KernelMaps},
    policy::{MapKind, PolicySpec},
    store::PolicyStore,
};
use vantage_common::{
    http::path_hash, Counter, FlowKey, PROG_EMPTY, PROG_INGRESS, PROTO_TCP, PROTO_UDP, TC_ACT_SHOT,
    TC_ACT_UNSPEC,
};

use crate::{
    common::{self, tcp_flags, Cgroup, Netns, Pkt},
    report::Report,
    stats::median,
};

/// Runs per `BPF_PROG_TEST_RUN` call.
const REPEAT: u32 = 500_000;
/// Calls per case; the median is reported.
const ROUNDS: usize = 9;
/// The daemon's default `--policy-capacity` and `--identity-capacity`.
const POLICY_CAPACITY: u32 = 131_072;
const IDENTITY_CAPACITY: u32 = 65_536;
/// Policies installed in the large copy.
const MANY: usize = 100_000;
/// Policies installed in the small copy.
const FEW: usize = 10;

const LO: [u8; 4] = [127, 0, 0, 1];
const UNLIMITED_PORT: u16 = 6001;
const LIMITED_PORT: u16 = 6002;
const HTTP_PORT: u16 = 6003;
const DROP_PORT: u16 = 6004;
const SYN_PORT: u16 = 6005;
const HTTP_PATH: &[u8] = b"/predict";

/// A loaded copy of the classifier and the store writing its maps.
struct Copy {
    ebpf: Ebpf,
    store: PolicyStore<KernelMaps>,
}

impl Copy {
    fn load() -> Copy {
        let btf = KernelBtf::from_sys_fs().expect("kernel BTF");
        let opts = LoadOptions {
            offsets: CgroupIdOffsets::from_btf(&btf).expect("cgroup id offsets from BTF"),
            legacy_flow_keys: false,
            drop_event_sample_n: 1,
            raw_ip: false,
            identity_ttl_ns: 1_000_000_000,
            policy_capacity: POLICY_CAPACITY,
            identity_capacity: IDENTITY_CAPACITY,
        };
        let mut ebpf = loader::load(&opts).expect("load the classifier");
        let maps = KernelMaps::take(&mut ebpf, POLICY_CAPACITY).expect("take the maps");
        Copy { ebpf, store: PolicyStore::new(maps, None) }
    }

    fn put(&mut self, key: FlowKey, rate: u64, burst: u64) {
        let spec = PolicySpec { rate_tokens_per_sec: rate, burst_tokens: burst, enabled: true };
        self.store.upsert(MapKind::Base, key, spec).expect("install a policy");
    }

    /// Mean ns per run over `repeat` runs of `prog` on `pkt`, and the verdict.
    fn time(&mut self, prog: &'static str, pkt: &[u8], repeat: u32) -> (f64, i32) {
        let p = loader::classifier(&mut self.ebpf, prog).expect("program");
        let opts = TestRunOptions { data_in: Some(pkt), repeat, ..TestRunOptions::default() };
        let r = p.test_run(opts).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {prog}: {e}"));
        (r.duration.as_nanos() as f64, r.return_value as i32)
    }

    fn counters(&self) -> [u64; Counter::COUNT] {
        self.store.dataplane().counters().expect("read counters")[0]
    }
}

/// Names a case to run over and over for `SPIN_SECS` instead of timing
/// anything, for a profiler to watch (see BENCHMARKS.md).
const SPIN_ENV: &str = "VANTAGE_BENCH_SPIN";
const SPIN_SECS: u64 = 20;

/// Which loaded program a case runs.
#[derive(Clone, Copy, PartialEq)]
enum Prog {
    Empty,
    Few,
    Many,
}

/// One kind of packet and what it must do, so a broken setup cannot pass
/// for a fast one.
struct Case {
    name: &'static str,
    prog: Prog,
    pkt: Vec<u8>,
    verdict: i32,
    /// The counter this packet must move (`Seen` only for the empty program).
    counter: Counter,
}

/// Filler policies: other tenants (ids no cgroup has), four keys each.
fn filler(i: usize) -> FlowKey {
    FlowKey {
        cgroup_id: 0x7e57_0000_0000 + (i / 4) as u64,
        proto: if i.is_multiple_of(2) { PROTO_UDP } else { PROTO_TCP },
        dst_port: 10_000 + (i % 4) as u16,
        http_method: 0,
        http_path_hash: 0,
    }
}

fn l4_key(cg: &Cgroup, proto: u8, port: u16) -> FlowKey {
    FlowKey { cgroup_id: cg.id, proto, dst_port: port, http_method: 0, http_path_hash: 0 }
}

/// Measures every case and records `dataplane_ns`, `dataplane_ratio` and
/// `scale_ratio_100k_vs_10`.
pub fn run(report: &mut Report) {
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let (unlimited, limited, http) = (Cgroup::new(), Cgroup::new(), Cgroup::new());
    let _sockets = (
        common::udp_bound_in(&unlimited, SocketAddr::from((LO, UNLIMITED_PORT))),
        common::tcp_listener_in(&unlimited, SocketAddr::from((LO, SYN_PORT))),
        common::udp_bound_in(&limited, SocketAddr::from((LO, LIMITED_PORT))),
        common::udp_bound_in(&limited, SocketAddr::from((LO, DROP_PORT))),
        common::tcp_listener_in(&http, SocketAddr::from((LO, HTTP_PORT))),
    );

    // The policies the packets hit; generous ones never run out of tokens.
    let (rate, burst) = (1_000_000_000, 1_000_000_000);
    let http_key = FlowKey {
        http_method: 1, // GET
        http_path_hash: path_hash(HTTP_PATH),
        ..l4_key(&http, PROTO_TCP, HTTP_PORT)
    };
    let install = |copy: &mut Copy, total: usize| {
        copy.put(l4_key(&limited, PROTO_UDP, LIMITED_PORT), rate, burst);
        copy.put(l4_key(&limited, PROTO_UDP, DROP_PORT), 1, 0);
        copy.put(http_key, rate, burst);
        for i in 0..total - 3 {
            copy.put(filler(i), rate, burst);
        }
        assert_eq!(copy.store.policies().len(MapKind::Base), total);
    };
    progress!("dataplane: loading two copies of the classifier");
    let mut few = Copy::load();
    loader::classifier(&mut few.ebpf, PROG_EMPTY)
        .expect("empty program in the object")
        .load()
        .expect("load the empty classifier");
    install(&mut few, FEW);
    let mut many = Copy::load();
    let t = std::time::Instant::now();
    install(&mut many, MANY);
    progress!(
        "dataplane: {MANY} policies installed through PolicyStore in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    record_program_sizes(report, &mut few);

    let cases = cases();
    for c in &cases {
        check(c, &mut few, &mut many);
    }
    if let Ok(name) = std::env::var(SPIN_ENV) {
        spin(&cases, &name, &mut few, &mut many);
        return;
    }

    progress!("dataplane: {ROUNDS} rounds x {} cases x {REPEAT} runs", cases.len());
    let lookups_before = few.counters()[Counter::IdentityLookups as usize];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..ROUNDS {
        // Rotate the order so no case always runs right after another.
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            let c = &cases[i];
            let (ns, verdict) = match c.prog {
                Prog::Empty => few.time(PROG_EMPTY, &c.pkt, REPEAT),
                Prog::Few => few.time(PROG_INGRESS, &c.pkt, REPEAT),
                Prog::Many => many.time(PROG_INGRESS, &c.pkt, REPEAT),
            };
            assert_eq!(verdict, c.verdict, "{}: verdict changed during timing", c.name);
            samples[i].push(ns);
        }
    }
    let lookups = few.counters()[Counter::IdentityLookups as usize] - lookups_before;
    // Each timed call of the SYN case is one lookup; cached flows re-look-up
    // once per TTL (1 s).
    report.set("dataplane_identity_lookups_while_timing", lookups as f64);

    let ns_of = |name: &str| {
        let i = cases.iter().position(|c| c.name == name).expect("case exists");
        median(&samples[i])
    };
    let empty = ns_of("empty");
    for c in &cases {
        let (ns, ratio) = (ns_of(c.name), ns_of(c.name) / empty);
        report.set(&format!("dataplane_ns.{}", c.name), ns);
        report.set(&format!("dataplane_ratio.{}", c.name), ratio);
        let spread = format!(
            "(rounds {:.0}..{:.0})",
            samples_min(&samples, &cases, c.name),
            samples_max(&samples, &cases, c.name)
        );
        report.row("dataplane", c.name, format!("{ns:6.0} ns  {ratio:5.2}x empty  {spread}"));
    }

    // The malformed figure is the worst of the malformed kinds.
    let (worst, worst_ns) = cases
        .iter()
        .filter(|c| c.name.starts_with("malformed_"))
        .map(|c| (c.name, ns_of(c.name)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("malformed cases");
    report.set("dataplane_ns.malformed", worst_ns);
    report.set("dataplane_ratio.malformed", worst_ns / empty);
    report.row(
        "dataplane",
        "malformed (worst kind)",
        format!("{worst_ns:6.0} ns  {:5.2}x empty  ({worst})", worst_ns / empty),
    );

    let scale = ns_of("limited_l4_100k") / ns_of("limited_l4");
    report.set("scale_ratio_100k_vs_10", scale);
    report.row("dataplane", "scale 100k / 10 policies", format!("{scale:.3}"));
}

/// Runs case `name` back to back for `SPIN_SECS`.
fn spin(cases: &[Case], name: &str, few: &mut Copy, many: &mut Copy) {
    let c = cases.iter().find(|c| c.name == name).unwrap_or_else(|| {
        let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
        panic!("{SPIN_ENV}={name}: no such case; cases are {}", names.join(", "))
    });
    progress!("dataplane: spinning {name} for {SPIN_SECS} s on CPU 1 (pid {})", std::process::id());
    let _pinned = crate::procs::pin_current_thread(&[1]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(SPIN_SECS);
    while std::time::Instant::now() < until {
        match c.prog {
            Prog::Empty => few.time(PROG_EMPTY, &c.pkt, REPEAT),
            Prog::Few => few.time(PROG_INGRESS, &c.pkt, REPEAT),
            Prog::Many => many.time(PROG_INGRESS, &c.pkt, REPEAT),
        };
    }
}

fn samples_min(samples: &[Vec<f64>], cases: &[Case], name: &str) -> f64 {
    let i = cases.iter().position(|c| c.name == name).unwrap_or(0);
    samples[i].iter().copied().fold(f64::INFINITY, f64::min)
}

fn samples_max(samples: &[Vec<f64>], cases: &[Case], name: &str) -> f64 {
    let i = cases.iter().position(|c| c.name == name).unwrap_or(0);
    samples[i].iter().copied().fold(0.0, f64::max)
}

/// The packets: one per kind the issue names, plus a few that explain them.
fn cases() -> Vec<Case> {
    let udp = |sport, dport| Pkt::ipv4(LO, LO).udp(sport, dport).payload(&[0x5a; 64]).build();
    let request = b"GET /predict HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\n\r\n";
    let http = Pkt::ipv4(LO, LO)
        .tcp(40003, HTTP_PORT, tcp_flags::ACK | tcp_flags::PSH)
        .payload(request)
        .build();
    let syn = Pkt::ipv4(LO, LO).tcp(40005, SYN_PORT, tcp_flags::SYN).build();

    // Malformed at three depths: the IPv4 header, the TCP header, an IPv6
    // extension header.
    let mut bad_ihl = udp(40010, LIMITED_PORT);
    bad_ihl[14] = 0x44;
    let mut bad_doff = http.clone();
    bad_doff[14 + 20 + 12] = 0x40; // data offset 4 words, below the minimum 5
    let mut bad_ext =
        Pkt::ipv6(std::net::Ipv6Addr::LOCALHOST.octets(), std::net::Ipv6Addr::LOCALHOST.octets())
            .ipv6_ext(0, 0)
            .udp(40011, LIMITED_PORT)
            .payload(&[0; 16])
            .build();
    bad_ext[14 + 40 + 1] = 200; // hop-by-hop length runs past the packet

    let admit = TC_ACT_UNSPEC;
    let case = |name, prog, pkt, verdict, counter| Case { name, prog, pkt, verdict, counter };
    vec![
        case("empty", Prog::Empty, udp(40000, LIMITED_PORT), admit, Counter::Seen),
        case("no_tenant", Prog::Few, udp(40001, 9), admit, Counter::NoTenant),
        case("unlimited_tenant", Prog::Few, udp(40002, UNLIMITED_PORT), admit, Counter::NoPolicy),
        case("limited_l4", Prog::Few, udp(40000, LIMITED_PORT), admit, Counter::Admitted),
        case("http_request", Prog::Few, http, admit, Counter::Admitted),
        case("malformed_ipv4_header", Prog::Few, bad_ihl, admit, Counter::FailOpenParse),
        case("malformed_tcp_header", Prog::Few, bad_doff, admit, Counter::FailOpenParse),
        case("malformed_ipv6_ext", Prog::Few, bad_ext, admit, Counter::FailOpenParse),
        case("limited_l4_100k", Prog::Many, udp(40000, LIMITED_PORT), admit, Counter::Admitted),
        case("limited_l4_drop", Prog::Few, udp(40004, DROP_PORT), TC_ACT_SHOT, Counter::Dropped),
        case("identity_lookup_syn", Prog::Few, syn, admit, Counter::IdentityLookups),
    ]
}

/// Runs a case once (which also warms its flow) and checks its verdict and
/// the counter it must move; for admitted packets, that it was not for a
/// reason other than the expected one.
fn check(c: &Case, few: &mut Copy, many: &mut Copy) {
    let copy = if c.prog == Prog::Many { many } else { few };
    let prog = if c.prog == Prog::Empty { PROG_EMPTY } else { PROG_INGRESS };
    let before = copy.counters();
    let (_, verdict) = copy.time(prog, &c.pkt, 1);
    let after = copy.counters();
    let moved = |k: Counter| after[k as usize] - before[k as usize];
    assert_eq!(verdict, c.verdict, "{}: verdict", c.name);
    if c.prog == Prog::Empty {
        assert_eq!(moved(Counter::Seen), 0, "the empty program counts nothing");
        return;
    }
    assert_eq!(moved(c.counter), 1, "{}: {:?} must count this packet", c.name, c.counter);
    if c.counter == Counter::Admitted {
        for other in [Counter::NoTenant, Counter::NoPolicy, Counter::FailOpenParse] {
            assert_eq!(moved(other), 0, "{}: admitted as {other:?}, not by its policy", c.name);
        }
    }
}

/// Verifier and JIT figures for the ingress program, for profiling.
fn record_program_sizes(report: &mut Report, copy: &mut Copy) {
    let prog = loader::classifier(&mut copy.ebpf, PROG_INGRESS).expect("ingress program");
    let Ok(info) = prog.info() else {
        return;
    };
    let insns = info.verified_instruction_count().unwrap_or(0);
    let xlated = info.size_translated().unwrap_or(0);
    let jited = info.size_jitted();
    report.set("ingress_program.verified_instructions", f64::from(insns));
    report.set("ingress_program.translated_bytes", f64::from(xlated));
    report.set("ingress_program.jited_bytes", f64::from(jited));
    report.row(
        "dataplane",
        "ingress program",
        format!("{insns} insns verified, {} BPF insns, {jited} bytes JITed", xlated / 8),
    );
}
