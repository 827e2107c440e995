//! End to end: the real daemon in a namespace of the test's own, real
//! sockets in cgroups of the test's own, real traffic over that namespace's
//! loopback, policies set through the HTTP API.

mod common;

use std::{
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use common::{
    traffic::{assert_near, expected, metric, udp_flood, Counter, RawTcp},
    Cgroup, Daemon, Netns,
};

const LO: [u8; 4] = [127, 0, 0, 1];
const RATE: u64 = 200;
const BURST: u64 = 50;
const OFFERED_PPS: u64 = 2000;
const SECS: Duration = Duration::from_secs(3);

fn put_policy(d: &Daemon, tenant: u64, body: &str) {
    let (status, v) = d.http_json("PUT", &format!("/policy/cg:{tenant}"), Some(body));
    assert!(status == 200 || status == 201, "PUT policy: {status} {v}");
}

fn limited(proto: &str, port: u16) -> String {
    format!(
        r#"{{"rate_tokens_per_sec":{RATE},"burst_tokens":{BURST},"enabled":true,"proto":"{proto}","dst_port":{port}}}"#
    )
}

/// Admitted and dropped packets of one policy, from dimensional metrics.
fn policy_counts(d: &Daemon, tenant: u64, proto: &str, port: u16) -> (f64, f64) {
    let (status, text) = d.http("GET", "/metrics", None);
    assert_eq!(status, 200);
    let tenant = format!("cg:{tenant}");
    let port = port.to_string();
    let get = |outcome| {
        let labels = [
            ("tenant", tenant.as_str()),
            ("proto", proto),
            ("port", port.as_str()),
            ("outcome", outcome),
        ];
        metric(&text, "vantage_policy_packets_total", &labels).unwrap_or(0.0)
    };
    (get("admitted"), get("dropped"))
}

#[test]
fn limited_tenant_is_held_to_its_rate_while_another_is_untouched() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let (a, b) = (Cgroup::new(), Cgroup::new());
    // Sockets exist before the daemon starts: identity must not depend on
    // having seen them being created.
    let a_udp = common::udp_bound_in(&a, SocketAddr::from((LO, 7001)));
    let b_udp = common::udp_bound_in(&b, SocketAddr::from((LO, 7002)));
    let _a_tcp = common::tcp_listener_in(&a, SocketAddr::from((LO, 7003)));
    let d = Daemon::start(&ns, &["--iface", "lo", "--metrics-dimensional-enabled"], &[]);
    put_policy(&d, a.id, &limited("udp", 7001));
    put_policy(&d, a.id, &limited("tcp", 7003));

    // UDP: count what each server receives.
    let client = UdpSocket::bind(SocketAddr::from((LO, 0))).expect("client socket");
    let (a_count, b_count) = (Counter::start(a_udp), Counter::start(b_udp));
    let to_a = udp_flood(&client, SocketAddr::from((LO, 7001)), OFFERED_PPS, SECS);
    let to_b = udp_flood(&client, SocketAddr::from((LO, 7002)), OFFERED_PPS / 2, SECS);
    let (got_a, got_b) = (a_count.finish(), b_count.finish());
    assert_near("udp, tenant A", got_a as f64, expected(RATE, BURST, to_a.elapsed), 10.0);
    assert_eq!(got_b, to_b.packets, "tenant B has no policy: everything arrives");

    // TCP: bare segments to A's listener, counted by the policy.
    let raw = RawTcp::new();
    let src = SocketAddrV4::new(LO.into(), 45000);
    let dst = SocketAddrV4::new(LO.into(), 7003);
    let sent = common::traffic::paced(OFFERED_PPS, SECS, || raw.send_ack(src, dst));
    std::thread::sleep(Duration::from_millis(200));
    let (admitted, dropped) = policy_counts(&d, a.id, "tcp", 7003);
    assert_near("tcp, tenant A", admitted, expected(RATE, BURST, sent.elapsed), 10.0);
    assert!(dropped > 0.0, "the TCP overload must be dropped in part");
}

#[test]
fn egress_limits_the_sending_tenant() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let (a, b) = (Cgroup::new(), Cgroup::new());
    let a_sender = common::udp_socket_in(&a, false);
    let b_sender = common::udp_socket_in(&b, false);
    let sink_a = UdpSocket::bind(SocketAddr::from((LO, 7101))).expect("sink");
    let sink_b = UdpSocket::bind(SocketAddr::from((LO, 7102))).expect("sink");
    let d = Daemon::start(&ns, &["--iface", "lo", "--direction", "egress"], &[]);
    put_policy(&d, a.id, &limited("udp", 7101));
    // B's policy is on another port: its traffic to 7102 is unlimited.
    put_policy(&d, b.id, &limited("udp", 7999));

    let (ca, cb) = (Counter::start(sink_a), Counter::start(sink_b));
    let from_a = udp_flood(&a_sender, SocketAddr::from((LO, 7101)), OFFERED_PPS, SECS);
    let from_b = udp_flood(&b_sender, SocketAddr::from((LO, 7102)), OFFERED_PPS / 2, SECS);
    let (got_a, got_b) = (ca.finish(), cb.finish());
    // A dropped egress packet is reported to the sender as ENOBUFS; the
    // pacer counts only what the kernel accepted, which is what arrives.
    assert_near("egress udp, tenant A", got_a as f64, expected(RATE, BURST, from_a.elapsed), 10.0);
    assert_eq!(got_b, from_b.packets, "tenant B is untouched");
}

#[test]
fn a_full_wildcard_catches_ports_without_their_own_and_disabled_policies_do_not_limit() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let a = Cgroup::new();
    let own = common::udp_bound_in(&a, SocketAddr::from((LO, 7201)));
    let other = common::udp_bound_in(&a, SocketAddr::from((LO, 7202)));
    let parked = common::udp_bound_in(&a, SocketAddr::from((LO, 7203)));
    let d = Daemon::start(&ns, &["--iface", "lo"], &[]);
    put_policy(
        &d,
        a.id,
        &format!(r#"{{"rate_tokens_per_sec":{RATE},"burst_tokens":{BURST},"enabled":true}}"#),
    );
    put_policy(
        &d,
        a.id,
        r#"{"rate_tokens_per_sec":1000000,"burst_tokens":1000000,"enabled":true,"proto":"udp","dst_port":7201}"#,
    );
    put_policy(
        &d,
        a.id,
        r#"{"rate_tokens_per_sec":1,"burst_tokens":0,"enabled":false,"proto":"udp","dst_port":7203}"#,
    );

    let client = UdpSocket::bind(SocketAddr::from((LO, 0))).expect("client");
    let (c_own, c_other) = (Counter::start(own), Counter::start(other));
    let to_own = udp_flood(&client, SocketAddr::from((LO, 7201)), OFFERED_PPS / 2, SECS);
    let to_other = udp_flood(&client, SocketAddr::from((LO, 7202)), OFFERED_PPS, SECS);
    assert_eq!(c_own.finish(), to_own.packets, "the port's own generous policy wins");
    let got = c_other.finish() as f64;
    assert_near("wildcard, other port", got, expected(RATE, BURST, to_other.elapsed), 10.0);

    // The disabled burst-0 policy on 7203 is skipped: the wildcard applies.
    let (status, v) =
        d.http_json("GET", &format!("/policy/cg:{}/resolve?proto=udp&dst_port=7203", a.id), None);
    assert_eq!(status, 200);
    assert_eq!(v["effective"]["level"], 10, "disabled policy skipped: {v}");
    drop(parked);
}

#[test]
fn a_disabled_policy_does_not_limit() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let a = Cgroup::new();
    let sock = common::udp_bound_in(&a, SocketAddr::from((LO, 7301)));
    let d = Daemon::start(&ns, &["--iface", "lo"], &[]);
    put_policy(
        &d,
        a.id,
        r#"{"rate_tokens_per_sec":1,"burst_tokens":0,"enabled":false,"proto":"udp","dst_port":7301}"#,
    );
    let client = UdpSocket::bind(SocketAddr::from((LO, 0))).expect("client");
    let c = Counter::start(sock.try_clone().expect("clone socket"));
    let sent = udp_flood(&client, SocketAddr::from((LO, 7301)), 500, Duration::from_secs(1));
    assert_eq!(c.finish(), sent.packets);

    // Enabling it takes effect on live traffic at once.
    put_policy(
        &d,
        a.id,
        r#"{"rate_tokens_per_sec":1,"burst_tokens":0,"enabled":true,"proto":"udp","dst_port":7301}"#,
    );
    let (status, text) = d.http("GET", "/metrics", None);
    assert_eq!(status, 200);
    let before =
        metric(&text, "vantage_packets_total", &[("direction", "ingress"), ("outcome", "dropped")])
            .unwrap_or(0.0);
    udp_flood(&client, SocketAddr::from((LO, 7301)), 500, Duration::from_millis(500));
    let (_, text) = d.http("GET", "/metrics", None);
    let after =
        metric(&text, "vantage_packets_total", &[("direction", "ingress"), ("outcome", "dropped")])
            .unwrap_or(0.0);
    assert!(after - before >= 200.0, "enabled burst-0 policy drops: {before} -> {after}");
}

#[test]
fn shutdown_detaches_and_a_killed_daemon_is_replaced_by_exactly_one_filter() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let state = common::TempDir::new();
    let state_file = state.join("state.json");
    let state_arg = state_file.to_str().expect("utf-8 path");
    let args = ["--iface", "lo", "--direction", "both", "--state-file", state_arg];

    let mut d = Daemon::start(&ns, &args, &[]);
    assert_eq!(common::tcx_program_names(&ns, "lo", true), ["vantage_ingress"]);
    assert_eq!(common::tcx_program_names(&ns, "lo", false), ["vantage_egress"]);
    d.kill9();
    let mut d = Daemon::start(&ns, &args, &[]);
    assert_eq!(common::tcx_program_names(&ns, "lo", true), ["vantage_ingress"]);
    assert_eq!(common::tcx_program_names(&ns, "lo", false), ["vantage_egress"]);
    let status = d.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(common::tcx_program_names(&ns, "lo", true).is_empty(), "nothing left on ingress");
    assert!(common::tcx_program_names(&ns, "lo", false).is_empty(), "nothing left on egress");
    assert!(d.log().contains("detached vantage_ingress"), "{}", d.log());
}

#[test]
fn netlink_mode_replaces_a_crashed_runs_filter_and_removes_its_qdisc() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let args = ["--iface", "lo", "--attach-mode", "netlink"];
    let mut d = Daemon::start(&ns, &args, &[]);
    assert_eq!(common::tc_filter_count(&ns, "lo", true), 1);
    d.kill9();
    // A netlink filter outlives its process.
    assert_eq!(common::tc_filter_count(&ns, "lo", true), 1);
    let mut d = Daemon::start(&ns, &args, &[]);
    assert_eq!(common::tc_filter_count(&ns, "lo", true), 1, "old filter replaced, not doubled");
    assert!(d.log().contains("left on lo ingress by an earlier run"), "{}", d.log());
    assert!(d.stop().success());
    assert_eq!(common::tc_filter_count(&ns, "lo", true), 0);

    // A clean run that created the qdisc removes it again; one that found
    // it leaves it.
    let qdiscs = |ns: &Netns| ns.run(&["tc", "qdisc", "show", "dev", "lo"]);
    ns.run(&["tc", "qdisc", "del", "dev", "lo", "clsact"]);
    let mut d = Daemon::start(&ns, &args, &[]);
    assert!(qdiscs(&ns).contains("clsact"));
    assert!(d.stop().success());
    assert!(!qdiscs(&ns).contains("clsact"), "qdisc it created is gone: {}", qdiscs(&ns));
    ns.run(&["tc", "qdisc", "add", "dev", "lo", "clsact"]);
    let mut d = Daemon::start(&ns, &args, &[]);
    assert!(d.stop().success());
    assert!(qdiscs(&ns).contains("clsact"), "a qdisc it found stays");
}

#[test]
fn start_up_failures_are_one_clear_line() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let (status, log) = Daemon::try_start(&ns, &["--iface", "nosuch0"], &[])
        .expect_err("a missing interface must stop start-up");
    assert!(!status.success());
    assert!(log.contains("interface nosuch0 does not exist"), "{log}");

    let (status, log) = Daemon::try_start(&ns, &["--iface", "lo", "--direction", "up"], &[])
        .expect_err("a bad flag must stop start-up");
    assert!(!status.success());
    assert!(log.contains("--direction"), "{log}");

    // cgroup v2 and kernel BTF hidden in a private mount namespace.
    let dir = common::TempDir::new();
    let cg2 = common::cgroup2_mount().expect("cgroup2 mount");
    for (name, hide, want) in [
        ("nocg", format!("umount -l {}", cg2.display()), "cgroup v2 is not mounted"),
        ("nobtf", "mount -t tmpfs none /sys/kernel/btf".to_owned(), "kernel BTF is missing"),
    ] {
        let script = dir.join(name);
        std::fs::write(&script, format!("#!/bin/sh\nset -e\n{hide}\nexec \"$@\"\n"))
            .expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let wrap = format!("unshare --mount --propagation private {}", script.display());
        let (status, log) = common::expect_start_failure(
            Daemon::try_start(&ns, &["--iface", "lo"], &[("VANTAGE_TEST_WRAP", &wrap)]),
            "start-up must fail",
        );
        assert!(!status.success());
        assert!(log.contains(want), "{name}: {log}");
        if name == "nocg" {
            assert!(log.contains("mount | grep cgroup2"), "says how to check: {log}");
        }
        assert_eq!(log.trim().lines().count(), 1, "one line: {log}");
    }

    // Without capabilities (nobody, no ambient caps).
    let (status, log) = Daemon::try_start(
        &ns,
        &["--iface", "lo"],
        &[("VANTAGE_TEST_WRAP", "setpriv --reuid=65534 --regid=65534 --clear-groups")],
    )
    .expect_err("an unprivileged start must fail");
    assert!(!status.success());
    assert!(log.contains("not privileged enough"), "{log}");
}

#[test]
fn sampled_drops_are_logged_and_counted() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let a = Cgroup::new();
    let sock = common::udp_bound_in(&a, SocketAddr::from((LO, 7501)));
    let d = Daemon::start(
        &ns,
        &["--iface", "lo", "--drop-event-log-enabled", "--drop-event-sample-n", "10"],
        &[("VANTAGE_LOG", "info")],
    );
    put_policy(
        &d,
        a.id,
        r#"{"rate_tokens_per_sec":1,"burst_tokens":0,"enabled":true,"proto":"udp","dst_port":7501}"#,
    );
    let client = UdpSocket::bind(SocketAddr::from((LO, 0))).expect("client");
    let c = Counter::start(sock);
    let sent = udp_flood(&client, SocketAddr::from((LO, 7501)), 1000, Duration::from_secs(1));
    assert_eq!(c.finish(), 0, "burst 0 drops everything");
    std::thread::sleep(Duration::from_millis(500));

    let (_, v) = d.http_json("GET", "/debug/snapshot", None);
    let ev = &v["drop_events"];
    let (emitted, received) =
        (ev["emitted"].as_u64().unwrap_or(0), ev["received"].as_u64().unwrap_or(0));
    // 1 in 10 per CPU: between sent/10 and sent/10 + one per CPU.
    assert!(emitted >= sent.packets / 10 && emitted <= sent.packets / 10 + 4, "{ev} for {sent:?}");
    assert_eq!(received, emitted, "{ev}");
    let line = format!("drop: tenant cg:{} ingress udp port 7501 len", a.id);
    let logged = d.log().lines().filter(|l| l.contains(&line)).count() as u64;
    assert_eq!(logged, received, "one readable line per event");
    assert!(d.log().contains("by level 8 (base_method_path_wildcard)"), "{}", d.log());
    let (_, text) = d.http("GET", "/metrics", None);
    assert_eq!(metric(&text, "vantage_drop_events_received_total", &[]), Some(received as f64));
}

/// Pins the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "pin to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn one_policy_hit_from_both_cpus_at_once_stays_exact() {
    if !common::prerequisites() {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let a = Cgroup::new();
    let sock = common::udp_bound_in(&a, SocketAddr::from((LO, 7601)));
    let d = Daemon::start(&ns, &["--iface", "lo"], &[]);
    put_policy(&d, a.id, &limited("udp", 7601));

    let count = Counter::start(sock);
    let senders: Vec<_> = (0..cpus)
        .map(|cpu| {
            let ns_path = ns.path();
            std::thread::spawn(move || {
                // Loopback delivers on the sending CPU, so each sender's
                // packets meet the classifier on its own CPU.
                let f = std::fs::File::open(&ns_path).expect("open netns");
                // SAFETY: setns on a valid namespace fd, for this thread only.
                let rc =
                    unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns");
                pin_to_cpu(cpu);
                let client = UdpSocket::bind(SocketAddr::from((LO, 0))).expect("client");
                udp_flood(&client, SocketAddr::from((LO, 7601)), OFFERED_PPS / cpus as u64, SECS)
            })
        })
        .collect();
    let sent: Vec<_> = senders.into_iter().map(|t| t.join().expect("sender")).collect();
    let got = count.finish() as f64;
    let elapsed = sent.iter().map(|s| s.elapsed).max().unwrap_or_default();
    assert_near(&format!("udp from {cpus} CPUs"), got, expected(RATE, BURST, elapsed), 10.0);

    let (_, v) = d.http_json("GET", "/debug/snapshot", None);
    eprintln!(
        "compare-and-swap give-ups (fail-open): {}",
        v["counters"]["ingress"]["fail_open_internal"]
    );
}
