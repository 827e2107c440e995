//! The classifier in the kernel, driven through `BPF_PROG_TEST_RUN`.
//!
//! Each test loads the real object, enters a network namespace of its own
//! (test runs look sockets up in the caller's namespace), opens sockets from
//! cgroups of its own, installs policies through the daemon's
//! `PolicyStore`, and feeds crafted packets to the ingress program.

mod common;

use std::net::{Ipv6Addr, SocketAddr};

use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use common::{tcp_flags, Cgroup, Netns, Pkt};
use vantage::{
    loader::{self},
    maps::{ktime_now_ns, Dataplane, KernelMaps},
    policy::{MapKind, PolicySpec},
    store::PolicyStore,
};
use vantage_common::{
    http::path_hash, Counter, FlowKey, Level, PolicyValue, PROG_INGRESS, PROTO_TCP, PROTO_UDP,
    TC_ACT_SHOT, TC_ACT_UNSPEC,
};

const LO4: [u8; 4] = [127, 0, 0, 1];
const LO6: [u8; 16] = Ipv6Addr::LOCALHOST.octets();

/// A loaded classifier plus the store that writes its maps.
struct Classifier {
    ebpf: Ebpf,
    store: PolicyStore<KernelMaps>,
}

impl Classifier {
    fn load(legacy: bool) -> Classifier {
        Classifier::load_with(&common::load_options(legacy, 1024))
    }

    fn load_with(opts: &loader::LoadOptions) -> Classifier {
        let mut ebpf = loader::load(opts).expect("load classifier");
        let maps = KernelMaps::take(&mut ebpf, opts.policy_capacity).expect("maps");
        Classifier { ebpf, store: PolicyStore::new(maps, None) }
    }

    fn run(&mut self, pkt: &[u8]) -> i32 {
        self.try_run(pkt).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {pkt:02x?}: {e}"))
    }

    fn try_run(&mut self, pkt: &[u8]) -> Result<i32, aya::programs::ProgramError> {
        let prog = loader::classifier(&mut self.ebpf, PROG_INGRESS).expect("program");
        let opts = TestRunOptions { data_in: Some(pkt), ..TestRunOptions::default() };
        prog.test_run(opts).map(|r| r.return_value as i32)
    }

    fn counters(&self) -> [u64; Counter::COUNT] {
        self.store.dataplane().counters().expect("counters")[0]
    }

    fn put(&mut self, kind: MapKind, key: FlowKey, rate: u64, burst: u64, enabled: bool) {
        let spec = PolicySpec { rate_tokens_per_sec: rate, burst_tokens: burst, enabled };
        self.store.upsert(kind, key, spec).expect("upsert");
    }

    fn entries(&self) -> Vec<(MapKind, FlowKey, PolicyValue)> {
        let dp = self.store.dataplane();
        [MapKind::Override, MapKind::Base]
            .into_iter()
            .flat_map(|k| dp.entries(k).expect("entries").into_iter().map(move |(f, v)| (k, f, v)))
            .collect()
    }
}

fn key(cg: &Cgroup, proto: u8, port: u16, method: u8, path: &[u8]) -> FlowKey {
    let hash = if path.is_empty() { 0 } else { path_hash(path) };
    FlowKey { cgroup_id: cg.id, proto, dst_port: port, http_method: method, http_path_hash: hash }
}

/// What a packet is expected to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Dropped by a policy.
    Drop,
    /// Admitted, counted under this counter.
    Admit(Counter),
}

fn check(c: &mut Classifier, name: &str, pkt: &[u8], want: Expect) {
    let before = c.counters();
    let verdict = c.run(pkt);
    let after = c.counters();
    let delta = |k: Counter| after[k as usize] - before[k as usize];

    assert_eq!(delta(Counter::Seen), 1, "{name}: seen");
    match want {
        Expect::Drop => {
            assert_eq!(verdict, TC_ACT_SHOT, "{name}: verdict");
            assert_eq!(delta(Counter::Dropped), 1, "{name}: dropped");
        }
        Expect::Admit(reason) => {
            assert_eq!(verdict, TC_ACT_UNSPEC, "{name}: verdict");
            assert_eq!(delta(Counter::Admitted), 1, "{name}: admitted");
            assert_eq!(delta(reason), 1, "{name}: {reason:?} counted");
        }
    }
    for other in
        [Counter::FailOpenParse, Counter::FailOpenInternal, Counter::NoTenant, Counter::NoPolicy]
    {
        if want != Expect::Admit(other) {
            assert_eq!(delta(other), 0, "{name}: {other:?} must not move");
        }
    }
}

#[test]
fn crafted_packets_get_the_expected_verdicts_and_counters() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let (a, b) = (Cgroup::new(), Cgroup::new());
    let (udp_port, tcp_port, dual_port, udp6_port) = (4001, 4002, 4003, 4004);
    let _udp = common::udp_bound_in(&a, SocketAddr::from((LO4, udp_port)));
    let _tcp = common::tcp_listener_in(&a, SocketAddr::from((LO4, tcp_port)));
    let _udp6 = common::udp_bound_in(&a, SocketAddr::from((LO6, udp6_port)));
    // A dual-stack listener (IPV6_V6ONLY is off by default) owned by B.
    let _dual = common::tcp_listener_in(&b, SocketAddr::from((Ipv6Addr::UNSPECIFIED, dual_port)));

    let mut c = Classifier::load(false);
    // Burst 0: every matching packet is dropped, which proves identification.
    c.put(MapKind::Base, key(&a, PROTO_UDP, udp_port, 0, b""), 1, 0, true);
    c.put(MapKind::Base, key(&a, PROTO_UDP, udp6_port, 0, b""), 1, 0, true);
    c.put(MapKind::Base, key(&a, PROTO_TCP, tcp_port, 1, b"/predict"), 1, 0, true);
    c.put(MapKind::Base, key(&b, PROTO_TCP, dual_port, 0, b""), 1, 0, true);

    let udp4 = || Pkt::ipv4(LO4, LO4).udp(50000, udp_port).payload(b"hello");
    let tcp4 = |payload: &[u8]| {
        Pkt::ipv4(LO4, LO4).tcp(50001, tcp_port, tcp_flags::ACK | tcp_flags::PSH).payload(payload)
    };
    let udp6 = || Pkt::ipv6(LO6, LO6).udp(50002, udp6_port).payload(b"x");
    let mut cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("udp4 to limited port", udp4().build(), Expect::Drop),
        ("udp4 one vlan", udp4().vlan(10).build(), Expect::Drop),
        ("udp4 two vlans", udp4().vlan_tpid(0x88a8, 10).vlan(20).build(), Expect::Drop),
        ("udp4 with options", udp4().ipv4_options(3).build(), Expect::Drop),
        ("udp4 first fragment", udp4().ipv4_fragment(0, true).build(), Expect::Drop),
        (
            "ipv4 later fragment has no ports",
            Pkt::ipv4(LO4, LO4).ipv4_fragment(100, false).payload(&[0; 16]).build(),
            Expect::Admit(Counter::NoTenant),
        ),
        ("udp6 to limited port", udp6().build(), Expect::Drop),
        (
            "udp6 hop-by-hop + dest opts",
            udp6().ipv6_ext(0, 0).ipv6_ext(60, 1).build(),
            Expect::Drop,
        ),
        ("udp6 routing header", udp6().ipv6_ext(43, 0).build(), Expect::Drop),
        ("udp6 first fragment", udp6().ipv6_fragment(0, true).build(), Expect::Drop),
        (
            "ipv6 later fragment has no ports",
            Pkt::ipv6(LO6, LO6).ipv6_fragment(64, false).payload(&[0; 16]).build(),
            Expect::Admit(Counter::NoTenant),
        ),
        (
            "udp to a port nobody owns",
            Pkt::ipv4(LO4, LO4).udp(1, 9).build(),
            Expect::Admit(Counter::NoTenant),
        ),
        ("icmp has no owner", Pkt::ipv4(LO4, LO4).icmp().build(), Expect::Admit(Counter::NoTenant)),
        (
            "http GET /predict",
            tcp4(b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n").build(),
            Expect::Drop,
        ),
        ("http GET /predict?q", tcp4(b"GET /predict?x=1 HTTP/1.1\r\n\r\n").build(), Expect::Drop),
        ("http path ends with payload", tcp4(b"GET /predict").build(), Expect::Drop),
        ("http over a vlan", tcp4(b"GET /predict HTTP/1.0\r\n\r\n").vlan(7).build(), Expect::Drop),
        (
            "http other path",
            tcp4(b"GET /other HTTP/1.1\r\n\r\n").build(),
            Expect::Admit(Counter::NoPolicy),
        ),
        (
            "http other method",
            tcp4(b"POST /predict HTTP/1.1\r\n\r\n").build(),
            Expect::Admit(Counter::NoPolicy),
        ),
        ("http cut mid path", tcp4(b"GET /pre").build(), Expect::Admit(Counter::NoPolicy)),
        ("http cut mid method", tcp4(b"GE").build(), Expect::Admit(Counter::NoPolicy)),
        (
            "not http",
            tcp4(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc").build(),
            Expect::Admit(Counter::NoPolicy),
        ),
        (
            "tcp syn, no payload",
            Pkt::ipv4(LO4, LO4).tcp(50003, tcp_port, tcp_flags::SYN).build(),
            Expect::Admit(Counter::NoPolicy),
        ),
        (
            "dual-stack listener gets ipv4",
            Pkt::ipv4(LO4, LO4).tcp(50004, dual_port, tcp_flags::SYN).build(),
            Expect::Drop,
        ),
        (
            "dual-stack listener gets ipv6",
            Pkt::ipv6(LO6, LO6).tcp(50005, dual_port, tcp_flags::SYN).build(),
            Expect::Drop,
        ),
    ];

    // Malformed at every layer: always admitted and counted as parse failures.
    let fail = Expect::Admit(Counter::FailOpenParse);
    let mut bad_ihl = udp4().build();
    bad_ihl[14] = 0x44;
    let mut bad_version = udp4().build();
    bad_version[14] = 0x55;
    let mut short_total = udp4().build();
    short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
    let mut long_total = udp4().build();
    long_total[16..18].copy_from_slice(&1500u16.to_be_bytes());
    let mut bad_doff = tcp4(b"GET /predict HTTP/1.1\r\n\r\n").build();
    bad_doff[14 + 20 + 12] = 0x40;
    let mut huge_doff = tcp4(b"").build();
    huge_doff[14 + 20 + 12] = 0xf0;
    let mut ext_past_end = udp6().build();
    ext_past_end[14 + 6] = 0; // next header: hop-by-hop, whose length runs past the packet
    ext_past_end[14 + 40 + 1] = 200;
    let mut arp = udp4().build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    cases.extend([
        ("ipv4 ihl below 5", bad_ihl, fail),
        ("ipv4 wrong version", bad_version, fail),
        ("ipv4 total length below header", short_total, fail),
        ("ipv4 total length beyond packet", long_total, fail),
        ("tcp data offset below 5", bad_doff, fail),
        ("tcp data offset beyond packet", huge_doff, fail),
        ("ipv6 extension header beyond packet", ext_past_end, fail),
        ("unknown ethertype", arp, fail),
    ]);
    for (name, pkt, want) in &cases {
        check(&mut c, name, pkt, *want);
    }

    // Every truncation of packets that would be dropped is admitted instead.
    // The kernel refuses some test packets that end inside the first header
    // after Ethernet (bpf_prog_test_run_skb); those never reach tc anyway.
    for (name, full) in [
        ("udp4", udp4().vlan(3).ipv4_options(1).build()),
        ("udp6", udp6().ipv6_ext(0, 0).build()),
        ("http", tcp4(b"GET /predict HTTP/1.1\r\n\r\n").build()),
    ] {
        let mut ran = 0;
        for cut in common::truncations(&full).into_iter().filter(|p| p.len() >= 14) {
            let label = format!("{name} truncated to {} bytes", cut.len());
            match c.try_run(&cut) {
                Ok(verdict) => {
                    assert_eq!(verdict, TC_ACT_UNSPEC, "{label}: must be admitted");
                    ran += 1;
                }
                Err(e) => assert!(cut.len() < 14 + 40, "{label}: refused by the kernel: {e}"),
            }
        }
        assert!(ran >= full.len() - 14 - 40, "{name}: only {ran} truncations ran");
    }
    let counters = c.counters();
    assert_eq!(
        counters[Counter::Seen as usize],
        counters[Counter::Admitted as usize] + counters[Counter::Dropped as usize],
        "every packet has exactly one verdict"
    );
}

/// A small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn differential(legacy: bool, seed: u64) {
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let tenants = [Cgroup::new(), Cgroup::new(), Cgroup::new()];
    let ports: [u16; 3] = [5001, 5002, 5003];
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    for (cg, port) in tenants.iter().zip(ports) {
        udp.push(common::udp_bound_in(cg, SocketAddr::from((LO4, port))));
        udp.push(common::udp_bound_in(cg, SocketAddr::from((LO4, port + 100))));
        tcp.push(common::tcp_listener_in(cg, SocketAddr::from((LO4, port))));
    }

    let mut c = Classifier::load(legacy);
    let mut rng = Rng(seed);
    let paths: [&[u8]; 3] = [b"", b"/a", b"/b"];
    let mut checked = 0;
    for _round in 0..12 {
        // A random policy set, including unreachable and disabled entries.
        for kind in [MapKind::Override, MapKind::Base] {
            for (flow, _) in
                c.store.policies().iter(kind).map(|(k, s)| (*k, *s)).collect::<Vec<_>>()
            {
                c.store.remove(kind, flow).expect("clear");
            }
        }
        for _ in 0..rng.pick(&[2usize, 6, 12, 20]) {
            let cg = &tenants[(rng.next() % 3) as usize];
            let port_choices = [0, ports[0], ports[1], ports[2], ports[0] + 100];
            let k = key(
                cg,
                rng.pick(&[0, PROTO_TCP, PROTO_UDP]),
                rng.pick(&port_choices),
                rng.pick(&[0u8, 1, 2]),
                rng.pick(&paths),
            );
            let kind = rng.pick(&[MapKind::Override, MapKind::Base]);
            c.put(kind, k, 1_000_000, 1_000_000_000, !rng.next().is_multiple_of(5));
        }

        for _ in 0..25 {
            let t = (rng.next() % 3) as usize;
            let proto = rng.pick(&[PROTO_TCP, PROTO_UDP]);
            let port = rng.pick(&[ports[t], ports[t] + 100]);
            let sport = 40000 + (rng.next() % 1000) as u16;
            let method = rng.pick(&[0u8, 1, 2]);
            let path = rng.pick(&paths);
            let payload: Vec<u8> = match (proto, method, path.is_empty()) {
                (PROTO_TCP, 1, false) => [b"GET ", path, b" HTTP/1.1\r\n\r\n"].concat(),
                (PROTO_TCP, 2, false) => [b"POST ", path, b" HTTP/1.1\r\n\r\n"].concat(),
                _ => b"payload!".to_vec(),
            };
            let pkt = if proto == PROTO_TCP {
                Pkt::ipv4(LO4, LO4).tcp(sport, port, tcp_flags::ACK).payload(&payload)
            } else {
                Pkt::ipv4(LO4, LO4).udp(sport, port).payload(&payload)
            };
            let is_http = proto == PROTO_TCP && method != 0 && !path.is_empty();
            let tcp_owned = proto == PROTO_TCP && port == ports[t];
            // A TCP packet to port+100 has no listener: no tenant at all.
            let owned = proto == PROTO_UDP || tcp_owned;
            let flow = if legacy {
                FlowKey::tenant(tenants[t].id)
            } else {
                FlowKey {
                    cgroup_id: tenants[t].id,
                    proto,
                    dst_port: port,
                    http_method: if is_http { method } else { 0 },
                    http_path_hash: if is_http { path_hash(path) } else { 0 },
                }
            };

            let before = c.entries();
            c.run(&pkt.build());
            let after = c.entries();
            let kernel: Option<Level> = after.iter().find_map(|(kind, k, v)| {
                let was = before.iter().find(|(bk, bf, _)| bk == kind && bf == k)?;
                (v.admitted != was.2.admitted).then(|| vantage::policy::level_of(*kind, k))
            });
            let user = if owned { c.store.resolve(&flow).map(|r| r.level) } else { None };
            assert_eq!(kernel, user, "seed {seed} legacy {legacy}: flow {flow:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 12 * 25);
}

#[test]
fn kernel_and_user_space_pick_the_same_level_in_live_mode() {
    if !common::prerequisites() {
        return;
    }
    for seed in [0x9e37_79b9_7f4a_7c15, 42, 7] {
        differential(false, seed);
    }
}

#[test]
fn kernel_and_user_space_pick_the_same_level_in_legacy_mode() {
    if !common::prerequisites() {
        return;
    }
    differential(true, 0x1234_5678_9abc_def1);
}

#[test]
fn a_policy_update_keeps_its_bucket_and_counters() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let a = Cgroup::new();
    let _udp = common::udp_bound_in(&a, SocketAddr::from((LO4, 6001)));
    let mut c = Classifier::load(false);
    let k = key(&a, PROTO_UDP, 6001, 0, b"");
    // One token per hour: only the burst is ever available in this test.
    c.put(MapKind::Base, k, 1, 3, true);
    let pkt = Pkt::ipv4(LO4, LO4).udp(1234, 6001).build();
    let verdicts: Vec<i32> = (0..5).map(|_| c.run(&pkt)).collect();
    assert_eq!(verdicts, [TC_ACT_UNSPEC, TC_ACT_UNSPEC, TC_ACT_UNSPEC, TC_ACT_SHOT, TC_ACT_SHOT]);

    // A larger burst does not refill an empty bucket; counters survive.
    c.put(MapKind::Base, k, 1, 100, true);
    assert_eq!(c.run(&pkt), TC_ACT_SHOT);
    let v = c.entries().into_iter().find(|(_, f, _)| *f == k).expect("entry").2;
    assert_eq!((v.admitted, v.dropped), (3, 3));

    // Disabling parks it: traffic passes, unlimited.
    c.put(MapKind::Base, k, 1, 100, false);
    assert_eq!(c.run(&pkt), TC_ACT_UNSPEC);
}

#[test]
fn a_cached_flow_follows_its_tenants_policies_as_they_change() {
    // The identity cache remembers that the tenant had no policy; a policy
    // added later must still limit the cached flow from its next packet.
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let a = Cgroup::new();
    let _udp = common::udp_bound_in(&a, SocketAddr::from((LO4, 6002)));
    let _tcp = common::tcp_listener_in(&a, SocketAddr::from((LO4, 6003)));
    // An hour-long identity TTL: every packet after the first of each flow
    // is served from the identity cache.
    let mut c = Classifier::load_with(&loader::LoadOptions {
        identity_ttl_ns: 3_600_000_000_000,
        ..common::load_options(false, 1024)
    });

    let udp = Pkt::ipv4(LO4, LO4).udp(1235, 6002).build();
    let get = Pkt::ipv4(LO4, LO4)
        .tcp(40000, 6003, tcp_flags::ACK | tcp_flags::PSH)
        .payload(b"GET /slow HTTP/1.1\r\n\r\n")
        .build();
    check(&mut c, "udp, no policy yet", &udp, Expect::Admit(Counter::NoPolicy));
    check(&mut c, "http, no policy yet", &get, Expect::Admit(Counter::NoPolicy));
    let lookups = c.counters()[Counter::IdentityLookups as usize];

    // An L4 policy arrives: the cached flow is limited from its next packet.
    let l4 = key(&a, PROTO_UDP, 6002, 0, b"");
    c.put(MapKind::Base, l4, 1, 1, true);
    check(&mut c, "udp, burst of one", &udp, Expect::Admit(Counter::Admitted));
    check(&mut c, "udp, burst spent", &udp, Expect::Drop);
    // A path policy on the other flow: its request line is read from now on.
    c.put(MapKind::Base, key(&a, PROTO_TCP, 6003, 1, b"/slow"), 1, 0, true);
    check(&mut c, "http, path policy", &get, Expect::Drop);
    // Disabled, then removed: the flows run free again.
    c.put(MapKind::Base, l4, 1, 1, false);
    check(&mut c, "udp, policy disabled", &udp, Expect::Admit(Counter::NoPolicy));
    c.put(MapKind::Base, l4, 1, 1, true);
    check(&mut c, "udp, enabled again", &udp, Expect::Drop);
    c.store.remove(MapKind::Base, l4).expect("remove");
    check(&mut c, "udp, policy removed", &udp, Expect::Admit(Counter::NoPolicy));

    assert_eq!(
        c.counters()[Counter::IdentityLookups as usize],
        lookups,
        "every packet after the first of each flow came from the identity cache"
    );
}

#[test]
fn wide_buckets_run_on_the_tick_clock_and_narrow_ones_on_the_precise_clock() {
    if !common::prerequisites() {
        return;
    }
    let tick = vantage::sys::tick_ns().expect("the kernel tick length");
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let a = Cgroup::new();
    let _wide = common::udp_bound_in(&a, SocketAddr::from((LO4, 6004)));
    let _narrow = common::udp_bound_in(&a, SocketAddr::from((LO4, 6005)));
    let mut c = Classifier::load(false);

    // 1/s with a burst of 3 spans 4 s: metered on the tick clock, whose
    // time must agree with CLOCK_MONOTONIC (a bucket's tat is now + 1 s
    // after one packet from a full bucket) to within a couple of ticks.
    let wide = key(&a, PROTO_UDP, 6004, 0, b"");
    c.put(MapKind::Base, wide, 1, 3, true);
    let before = ktime_now_ns();
    assert_eq!(c.run(&Pkt::ipv4(LO4, LO4).udp(1, 6004).build()), TC_ACT_UNSPEC);
    let after = ktime_now_ns();
    let tat = c.entries().into_iter().find(|(_, f, _)| *f == wide).expect("entry").2.tat_ns;
    let seen = tat - 1_000_000_000;
    let slack = 3 * tick;
    assert!(
        seen + slack >= before && seen <= after + slack,
        "tick clock read {seen}, CLOCK_MONOTONIC was {before}..{after} (tick {tick} ns)"
    );
    let pkt = Pkt::ipv4(LO4, LO4).udp(1, 6004).build();
    let verdicts: Vec<i32> = (0..3).map(|_| c.run(&pkt)).collect();
    assert_eq!(verdicts, [TC_ACT_UNSPEC, TC_ACT_UNSPEC, TC_ACT_SHOT], "burst of 3, then nothing");

    // 100k/s with a burst of 1 spans 20 us, far below a tick: the precise
    // clock. Times read from the tick clock all share one phase within a
    // tick (that of the wide bucket's); a precise reading almost never does.
    let narrow = key(&a, PROTO_UDP, 6005, 0, b"");
    c.put(MapKind::Base, narrow, 100_000, 1, true);
    assert_eq!(c.run(&Pkt::ipv4(LO4, LO4).udp(1, 6005).build()), TC_ACT_UNSPEC);
    let tat = c.entries().into_iter().find(|(_, f, _)| *f == narrow).expect("entry").2.tat_ns;
    let narrow_seen = tat - 10_000;
    assert_ne!(
        narrow_seen % tick,
        seen % tick,
        "the 100k/s bucket was metered at a tick-clock time ({narrow_seen})"
    );
    assert!(narrow_seen >= before, "precise time {narrow_seen} before the test began ({before})");
}

#[test]
fn kernel_maps_have_the_layout_of_the_shared_types() {
    if !common::prerequisites() {
        return;
    }
    use std::mem::size_of;

    use aya::maps::Map;
    use vantage_common::{Config, Counters, IdentityEntry, IdentityKey};

    let ebpf = loader::load(&common::load_options(false, 64)).expect("load classifier");
    let mut checked = Vec::new();
    for (name, map) in ebpf.maps() {
        let data = match map {
            Map::HashMap(m) | Map::LruHashMap(m) | Map::PerCpuArray(m) | Map::Array(m) => m,
            Map::RingBuf(_) => continue,
            _ => panic!("unexpected map type for {name}"),
        };
        let info = data.info().expect("map info");
        let want = match name {
            "POLICIES" | "OVERRIDES" => (size_of::<FlowKey>(), size_of::<PolicyValue>()),
            "TENANT_LEVELS" => (size_of::<u64>(), size_of::<u32>()),
            "IDENTITY" => (size_of::<IdentityKey>(), size_of::<IdentityEntry>()),
            "COUNTERS" => (size_of::<u32>(), size_of::<Counters>()),
            "RUNTIME" => (size_of::<u32>(), size_of::<u64>()),
            // The read-only globals: one array element holding CONFIG.
            ".rodata" => (size_of::<u32>(), size_of::<Config>()),
            other => panic!("unexpected map {other}"),
        };
        assert_eq!((info.key_size() as usize, info.value_size() as usize), want, "{name}");
        checked.push(name.to_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        [".rodata", "COUNTERS", "IDENTITY", "OVERRIDES", "POLICIES", "RUNTIME", "TENANT_LEVELS"]
    );
}
