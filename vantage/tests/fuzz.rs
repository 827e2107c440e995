//! The classifier under generated and mutated packets, through `BPF_PROG_TEST_RUN`.
//!
//! Policies with buckets that never run dry cover every tenant that owns a socket here, so every
//! packet must be admitted; what is checked is that it is admitted for the right reason. A model
//! of the parsing rules (`common::gen::model`) says for each packet whether it parses;
//! where the generator itself knows (a truncation, a broken length field), the model must agree
//! with it. For packets to loopback the test also predicts the tenant from the sockets it
//! opened and the policy from the daemon's own resolver, and checks that exactly that policy
//! counted the packet.
//!
//! `make test` runs a fixed-seed 20,000 packets; `make fuzz` runs more
//! (`VANTAGE_FUZZ_PACKETS`, seed from `VANTAGE_FUZZ_SEED`).

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Instant;

use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use common::gen::{
    self,
    model::{self, Parsed},
    packets::{self, Frame, Mutant, Targets, LO4, LO6},
    Rng,
};
use common::{Cgroup, Netns};
use vantage::{
    loader::{self},
    maps::{Dataplane, KernelMaps},
    policy::{MapKind, PolicySpec},
    store::PolicyStore,
};
use vantage_common::{
    bucket::{MAX_BURST, MAX_RATE},
    http::{path_hash, Method},
    Counter, FlowKey, PROG_INGRESS, PROTO_TCP, PROTO_UDP, TC_ACT_UNSPEC,
};

const PORT_A: u16 = 7001;
const PORT_B: u16 = 7002;
const PORT_C: u16 = 7003;
/// A second TCP port of A, which only A's tenant-wide policy covers.
const PORT_A2: u16 = 7004;
const PORT_NOBODY: u16 = 7009;
const PORTS: &[u16] = &[PORT_A, PORT_A, PORT_A2, PORT_B, PORT_B, PORT_C, PORT_C, PORT_NOBODY];

/// What the classifier must have done with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Malformed,
    NoTenant,
    NoPolicy,
    Policy(MapKind, FlowKey),
}

/// The loaded classifier, the sockets that give tenants an identity, and their policies.
struct Fixture {
    ebpf: Ebpf,
    store: PolicyStore<KernelMaps>,
    tenants: [Cgroup; 3],
    _sockets: (Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>),
}

impl Fixture {
    /// Must run on a thread inside the test's namespace (lookups use the caller's).
    fn new() -> Fixture {
        let tenants = [Cgroup::new(), Cgroup::new(), Cgroup::new()];
        let [a, b, c] = &tenants;
        let sock = |ip: std::net::IpAddr, port| SocketAddr::new(ip, port);
        let (v4, v6, any6) = (LO4.into(), Ipv6Addr::LOCALHOST.into(), Ipv6Addr::UNSPECIFIED.into());
        let udp = vec![
            common::udp_bound_in(a, sock(v4, PORT_A)),
            common::udp_bound_in(a, sock(v6, PORT_A)),
            common::udp_bound_in(b, sock(v6, PORT_B)),
            common::udp_bound_in(c, sock(v4, PORT_C)),
        ];
        let tcp = vec![
            common::tcp_listener_in(a, sock(v4, PORT_A)),
            common::tcp_listener_in(a, sock(v6, PORT_A)),
            common::tcp_listener_in(a, sock(v4, PORT_A2)),
            // Dual-stack: IPv4 packets find it too.
            common::tcp_listener_in(b, sock(any6, PORT_B)),
            common::tcp_listener_in(c, sock(v6, PORT_C)),
        ];

        let mut ebpf = loader::load(&common::load_options(false, 4096)).expect("load classifier");
        let maps = KernelMaps::take(&mut ebpf, 4096).expect("maps");
        let mut f =
            Fixture { ebpf, store: PolicyStore::new(maps, None), tenants, _sockets: (udp, tcp) };
        f.install_policies();
        f
    }

    /// Policies at every level, one parked, none of which can ever run dry.
    fn install_policies(&mut self) {
        let [a, b, c] = [self.tenants[0].id, self.tenants[1].id, self.tenants[2].id];
        let (get, post, delete) = (Method::Get as u8, Method::Post as u8, Method::Delete as u8);
        let long = path_hash(&packets::long_path_prefix());
        let fuzz_a = path_hash(b"/fuzz/a");
        let policies = [
            // A: base levels 6-10, one override at level 1, one parked policy.
            (MapKind::Base, key(a, 0, 0, 0, 0), true),
            (MapKind::Base, key(a, PROTO_UDP, 0, 0, 0), true),
            (MapKind::Base, key(a, PROTO_TCP, PORT_A, 0, 0), true),
            (MapKind::Base, key(a, PROTO_TCP, PORT_A, get, 0), true),
            (MapKind::Base, key(a, PROTO_TCP, PORT_A, get, fuzz_a), true),
            (MapKind::Base, key(a, PROTO_TCP, PORT_A, post, long), true),
            (MapKind::Base, key(a, PROTO_TCP, PORT_A, Method::Put as u8, 0), false),
            (MapKind::Override, key(a, PROTO_TCP, PORT_A, get, path_hash(b"/fuzz/b")), true),
            // B: overrides only, at levels 2, 4 and 5.
            (MapKind::Override, key(b, PROTO_TCP, PORT_B, delete, 0), true),
            (MapKind::Override, key(b, PROTO_UDP, 0, 0, 0), true),
            (MapKind::Override, key(b, 0, 0, 0, 0), true),
            // C: nothing tenant-wide, so most of its TCP traffic has no policy.
            (MapKind::Override, key(c, PROTO_UDP, PORT_C, 0, 0), true),
            (MapKind::Base, key(c, PROTO_TCP, PORT_C, get, 0), true),
            (MapKind::Base, key(c, PROTO_TCP, PORT_C, get, fuzz_a), true),
        ];
        for (kind, k, enabled) in policies {
            let spec =
                PolicySpec { rate_tokens_per_sec: MAX_RATE, burst_tokens: MAX_BURST, enabled };
            self.store.upsert(kind, k, spec).expect("install policy");
        }
    }

    /// The tenant owning a packet to loopback, from the sockets opened in [`Fixture::new`].
    fn owner(&self, p: &Parsed) -> Option<u64> {
        let (_, dport) = p.ports?;
        let t = match (p.proto, p.family, dport) {
            (PROTO_UDP | PROTO_TCP, _, PORT_A) | (PROTO_TCP, 4, PORT_A2) => 0,
            (PROTO_UDP, 6, PORT_B) | (PROTO_TCP, 4, PORT_B) | (PROTO_TCP, 6, PORT_B) => 1,
            (PROTO_TCP, 6, PORT_C) | (PROTO_UDP, 4, PORT_C) => 2,
            _ => return None,
        };
        Some(self.tenants[t].id)
    }

    /// What must happen to `frame`; `None` for the tenant and policy when the destination is
    /// not loopback, where only the kernel's socket tables could say.
    fn predict(&self, frame: &[u8]) -> (Result<Parsed, &'static str>, Option<Outcome>) {
        let parsed = model::parse(frame);
        let Ok(p) = parsed else {
            return (parsed, Some(Outcome::Malformed));
        };
        let loopback = match p.family {
            4 => p.daddr[..4] == LO4,
            _ => p.daddr == LO6,
        };
        if !loopback {
            return (parsed, None);
        }
        let Some(cg) = self.owner(&p) else {
            return (parsed, Some(Outcome::NoTenant));
        };
        let (method, hash) = p.http.unwrap_or((0, 0));
        let dport = p.ports.map_or(0, |(_, d)| d);
        let flow = key(cg, p.proto, dport, method, hash);
        let outcome = match self.store.resolve(&flow) {
            None => Outcome::NoPolicy,
            Some(r) => {
                let kind = if r.level.is_override() { MapKind::Override } else { MapKind::Base };
                Outcome::Policy(kind, r.key)
            }
        };
        (parsed, Some(outcome))
    }

    fn counters(&self) -> [u64; Counter::COUNT] {
        self.store.dataplane().counters().expect("read counters")[0]
    }

    fn policy_admitted(&self, kind: MapKind, k: &FlowKey) -> u64 {
        let v = self.store.dataplane().read(kind, k).expect("read policy");
        v.map_or(0, |v| v.admitted)
    }

    fn all_policies_admitted(&self) -> u64 {
        let dp = self.store.dataplane();
        [MapKind::Override, MapKind::Base]
            .into_iter()
            .flat_map(|kind| dp.entries(kind).expect("list policies"))
            .map(|(_, v)| v.admitted)
            .sum()
    }

    /// Runs one packet; `None` when the kernel refuses the input itself.
    fn run(&mut self, pkt: &[u8]) -> Option<i32> {
        let prog = loader::classifier(&mut self.ebpf, PROG_INGRESS).expect("program");
        let opts = TestRunOptions { data_in: Some(pkt), ..TestRunOptions::default() };
        match prog.test_run(opts) {
            Ok(r) => Some(r.return_value as i32),
            Err(_) if kernel_may_refuse(pkt) => None,
            Err(e) => panic!("BPF_PROG_TEST_RUN refused a {}-byte packet: {e}", pkt.len()),
        }
    }
}

/// Whether `BPF_PROG_TEST_RUN` may refuse `pkt` (EINVAL) before the program runs: the kernel
/// (6.18) wants more than an Ethernet header, and for an IPv4 or IPv6 ethertype the whole
/// fixed IP header. Such packets never reach tc from a real device either.
fn kernel_may_refuse(pkt: &[u8]) -> bool {
    match pkt.get(12..14) {
        _ if pkt.len() <= 14 => true,
        Some([0x08, 0x00]) => pkt.len() < 14 + 20,
        Some([0x86, 0xdd]) => pkt.len() < 14 + 40,
        _ => false,
    }
}

fn key(cg: u64, proto: u8, port: u16, method: u8, hash: u32) -> FlowKey {
    FlowKey { cgroup_id: cg, proto, dst_port: port, http_method: method, http_path_hash: hash }
}

/// Tallies for one phase.
#[derive(Debug, Default)]
struct Tally {
    packets: usize,
    refused: usize,
    malformed: usize,
    outcomes: BTreeMap<String, usize>,
    seen_before: u64,
    admitted_by_policies_before: u64,
}

/// Runs one packet and checks its verdict and every counter it moved.
fn check_one(f: &mut Fixture, seed: u64, phase: &str, m: &Mutant, tally: &mut Tally) {
    let (parsed, outcome) = f.predict(&m.bytes);
    let what = || {
        format!(
            "seed {seed:#x}, phase {phase}, {} ({} bytes): {:02x?}; model: {parsed:?}",
            m.what,
            m.bytes.len(),
            m.bytes
        )
    };
    if let Some(parses) = m.parses {
        assert_eq!(parsed.is_ok(), parses, "the model disagrees with the generator: {}", what());
    }

    let before = f.counters();
    let policy_before = match outcome {
        Some(Outcome::Policy(kind, k)) => f.policy_admitted(kind, &k),
        _ => 0,
    };
    let Some(verdict) = f.run(&m.bytes) else {
        tally.refused += 1;
        return;
    };
    let after = f.counters();
    let delta = |c: Counter| after[c as usize] - before[c as usize];

    assert_eq!(verdict, TC_ACT_UNSPEC, "verdict: {}", what());
    assert_eq!(
        (delta(Counter::Seen), delta(Counter::Admitted)),
        (1, 1),
        "seen/admitted: {}",
        what()
    );
    assert_eq!(delta(Counter::Dropped), 0, "dropped: {}", what());
    assert_eq!(delta(Counter::FailOpenInternal), 0, "internal fail-open: {}", what());
    let malformed = parsed.is_err();
    assert_eq!(delta(Counter::FailOpenParse), u64::from(malformed), "parse fail-open: {}", what());
    tally.packets += 1;
    tally.malformed += usize::from(malformed);

    let Some(outcome) = outcome else {
        *tally.outcomes.entry("unpredicted".into()).or_default() += 1;
        return;
    };
    let (no_tenant, no_policy) = (delta(Counter::NoTenant), delta(Counter::NoPolicy));
    let label = match outcome {
        Outcome::Malformed => {
            assert_eq!((no_tenant, no_policy), (0, 0), "malformed packet went on: {}", what());
            "malformed".to_string()
        }
        Outcome::NoTenant => {
            assert_eq!((no_tenant, no_policy), (1, 0), "expected no tenant: {}", what());
            "no tenant".to_string()
        }
        Outcome::NoPolicy => {
            assert_eq!((no_tenant, no_policy), (0, 1), "expected no policy: {}", what());
            "no policy".to_string()
        }
        Outcome::Policy(kind, k) => {
            assert_eq!((no_tenant, no_policy), (0, 0), "expected policy {k:?}: {}", what());
            let got = f.policy_admitted(kind, &k) - policy_before;
            assert_eq!(got, 1, "policy {kind:?} {k:?} did not count the packet: {}", what());
            format!("level {}", vantage::policy::level_of(kind, &k).number())
        }
    };
    *tally.outcomes.entry(label).or_default() += 1;
}

/// Packets of one phase, from frames made by `frames`, until `budget` packets have run.
fn phase(
    f: &mut Fixture,
    rng: &mut Rng,
    seed: u64,
    name: &str,
    budget: usize,
    mut mutants: impl FnMut(&mut Rng, &Frame) -> Vec<Mutant>,
) -> Tally {
    let paths: Vec<Vec<u8>> = vec![
        b"/fuzz/a".to_vec(),
        b"/fuzz/b".to_vec(),
        b"/".to_vec(),
        b"/fuzz/a/deeper".to_vec(),
        packets::long_path(b'x'),
    ];
    let paths: Vec<&[u8]> = paths.iter().map(Vec::as_slice).collect();
    let to = Targets { ports: PORTS, paths: &paths };
    let mut tally = Tally {
        seen_before: f.counters()[Counter::Seen as usize],
        admitted_by_policies_before: f.all_policies_admitted(),
        ..Tally::default()
    };
    let before = f.counters();
    while tally.packets + tally.refused < budget {
        let frame = packets::random_frame(rng, to);
        for m in mutants(rng, &frame) {
            check_one(f, seed, name, &m, &mut tally);
        }
    }

    // Every packet that ran is accounted for exactly once.
    let after = f.counters();
    let delta = |c: Counter| after[c as usize] - before[c as usize];
    let by_policies = f.all_policies_admitted() - tally.admitted_by_policies_before;
    let seen = after[Counter::Seen as usize] - tally.seen_before;
    assert_eq!(seen, tally.packets as u64, "{name}: seen");
    assert_eq!(delta(Counter::Admitted), seen, "{name}: admitted");
    assert_eq!(delta(Counter::Dropped), 0, "{name}: dropped");
    assert_eq!(delta(Counter::FailOpenParse), tally.malformed as u64, "{name}: parse fail-open");
    assert_eq!(
        delta(Counter::FailOpenParse)
            + delta(Counter::NoTenant)
            + delta(Counter::NoPolicy)
            + by_policies,
        seen,
        "{name}: every packet is a parse failure, has no tenant, has no policy, or is counted by \
         exactly one policy"
    );
    println!(
        "{name}: {} packets run, {} refused by the kernel (too short), {} malformed; {:?}",
        tally.packets, tally.refused, tally.malformed, tally.outcomes
    );
    tally
}

#[test]
fn fuzzed_packets_are_all_admitted_and_every_parse_failure_is_counted() {
    if !common::prerequisites() {
        return;
    }
    let total = gen::count_from_env("VANTAGE_FUZZ_PACKETS", 20_000);
    let seed = gen::seed_from_env(0x7a11_5eed_0000_0001);
    println!("fuzzing {total} packets with seed {seed:#x} (VANTAGE_FUZZ_SEED to repeat)");
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let mut f = Fixture::new();
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let quarter = total.div_ceil(4);

    let tallies = [
        phase(&mut f, &mut rng, seed, "valid", quarter, |_, frame| {
            vec![Mutant { what: "valid".into(), bytes: frame.bytes.clone(), parses: Some(true) }]
        }),
        phase(&mut f, &mut rng, seed, "truncated", quarter, packets::truncations),
        phase(&mut f, &mut rng, seed, "bad fields", quarter, |rng, frame| {
            vec![packets::field_mutation(rng, frame)]
        }),
        phase(&mut f, &mut rng, seed, "byte flips", quarter, |rng, frame| {
            vec![packets::byte_flips(rng, frame)]
        }),
    ];

    let run: usize = tallies.iter().map(|t| t.packets).sum();
    let refused: usize = tallies.iter().map(|t| t.refused).sum();
    let malformed: usize = tallies.iter().map(|t| t.malformed).sum();
    println!(
        "fuzzed {run} packets ({malformed} malformed, all admitted) and {refused} too short to run, \
         in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // Every enabled policy was picked at least once (so every level was exercised), and the
    // parked one never.
    let dp = f.store.dataplane();
    for kind in [MapKind::Override, MapKind::Base] {
        for (k, v) in dp.entries(kind).expect("list policies") {
            let level = vantage::policy::level_of(kind, &k).number();
            if v.enabled != 0 {
                assert!(v.admitted > 0, "no packet reached the level {level} policy {k:?}");
            } else {
                assert_eq!(v.admitted, 0, "a parked policy counted packets: {k:?}");
            }
        }
    }
    assert!(run >= total * 95 / 100, "only {run} of {total} packets ran");
    assert!(refused * 20 <= run, "{refused} packets refused by the kernel is too many");
    assert!(
        malformed * 10 >= run,
        "only {malformed} malformed packets: the mutations are too tame"
    );
    assert!(
        malformed * 10 <= run * 8,
        "{malformed} of {run} packets malformed: too few reach the later stages"
    );
}
