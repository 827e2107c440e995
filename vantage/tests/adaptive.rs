//! Adaptive throttling end to end, under real CPU load made by the test.
//!
//! One test in its own binary: cargo runs test binaries one after another,
//! so no other test's traffic skews the host CPU figure it depends on.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    traffic::{assert_near, expected, udp_flood, Counter},
    Cgroup, Daemon, Netns,
};
use serde_json::Value;

const LO: [u8; 4] = [127, 0, 0, 1];
const TICK_MS: u64 = 500;
const THROTTLE_RATE: u64 = 100;
const THROTTLE_BURST: u64 = 20;

/// Spins every CPU until dropped.
struct Burner {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Burner {
    fn start() -> Burner {
        let stop = Arc::new(AtomicBool::new(false));
        let n = thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        Burner { stop, threads }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Host CPU busy percentage over `window`, from /proc/stat.
fn host_cpu(window: Duration) -> f64 {
    fn read() -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let v: Vec<u64> = stat
            .lines()
            .next()
            .expect("cpu line")
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v[3] + v.get(4).copied().unwrap_or(0);
        (v.iter().take(8).sum::<u64>() - idle, v.iter().take(8).sum())
    }
    let (b0, t0) = read();
    thread::sleep(window);
    let (b1, t1) = read();
    (b1 - b0) as f64 * 100.0 / (t1 - t0).max(1) as f64
}

/// Waits for the host to be quiet enough that "load stopped" can bring CPU
/// below the low mark; the test measures the host, not just itself.
fn wait_for_quiet_host(below: f64) {
    let start = Instant::now();
    loop {
        let cpu = host_cpu(Duration::from_secs(1));
        if cpu < below {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the host stayed {cpu:.0}% busy for 90 s: too busy to test CPU-driven throttling"
        );
    }
}

fn adaptive(d: &Daemon) -> Value {
    let (status, v) = d.http_json("GET", "/debug/snapshot", None);
    assert_eq!(status, 200);
    v["adaptive"].clone()
}

/// Polls until the throttling state is `want`; returns how long it took.
fn wait_throttling(d: &Daemon, want: bool, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if adaptive(d)["throttling"] == want {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("throttling did not become {want} within {limit:?}: {}\n{}", adaptive(d), d.log());
}

#[test]
fn hot_host_throttles_non_essential_tenants_and_releases_them_when_cool() {
    if !common::prerequisites() {
        return;
    }
    wait_for_quiet_host(30.0);
    let ns = Netns::new();
    let _in_ns = ns.enter_current_thread();
    let (busy, vip) = (Cgroup::new(), Cgroup::new());
    let busy_sock = common::udp_bound_in(&busy, SocketAddr::from((LO, 7401)));
    let vip_sock = common::udp_bound_in(&vip, SocketAddr::from((LO, 7402)));
    let vip_flag = format!("cg:{}", vip.id);
    let tick = TICK_MS.to_string();
    let (rate, burst) = (THROTTLE_RATE.to_string(), THROTTLE_BURST.to_string());
    let mut d = Daemon::start(
        &ns,
        &[
            "--iface",
            "lo",
            "--adaptive-enabled",
            "--adaptive-high-watermark-percent",
            "70",
            "--adaptive-low-watermark-percent",
            "45",
            "--adaptive-tick-ms",
            &tick,
            "--adaptive-throttle-rate-tokens-per-sec",
            &rate,
            "--adaptive-throttle-burst-tokens",
            &burst,
            "--essential-tenant",
            &vip_flag,
        ],
        &[],
    );
    let generous =
        r#"{"rate_tokens_per_sec":1000000,"burst_tokens":1000000,"enabled":true,"proto":"udp"}"#;
    for cg in [&busy, &vip] {
        let (status, _) = d.http_json("PUT", &format!("/policy/cg:{}", cg.id), Some(generous));
        assert_eq!(status, 201);
    }
    let a = adaptive(&d);
    assert_eq!(
        (a["high_watermark_percent"].clone(), a["low_watermark_percent"].clone()),
        (70.into(), 45.into())
    );
    assert_eq!(a["throttling"], false);

    // Hot: every CPU spinning.
    let burner = Burner::start();
    let entered = wait_throttling(&d, true, Duration::from_secs(10));
    eprintln!("entered throttling {entered:?} after the load started (tick {TICK_MS} ms)");
    // Give the controller a tick to write the override after its decision.
    thread::sleep(Duration::from_millis(TICK_MS));
    assert_eq!(adaptive(&d)["adaptive_managed_override_count"], 1, "only the non-essential tenant");
    let (_, v) = d.http_json("GET", &format!("/policy/cg:{}", busy.id), None);
    assert!(v["policies"].as_array().expect("list").iter().any(|p| p["level"] == 5), "{v}");

    let client = UdpSocket::bind(SocketAddr::from((LO, 0))).expect("client");
    let (busy_count, vip_count) = (
        Counter::start(busy_sock.try_clone().expect("clone")),
        Counter::start(vip_sock.try_clone().expect("clone")),
    );
    let to_busy = udp_flood(&client, SocketAddr::from((LO, 7401)), 1000, Duration::from_secs(2));
    let to_vip = udp_flood(&client, SocketAddr::from((LO, 7402)), 500, Duration::from_secs(1));
    let (got_busy, got_vip) = (busy_count.finish(), vip_count.finish());
    assert_near(
        "throttled tenant",
        got_busy as f64,
        expected(THROTTLE_RATE, THROTTLE_BURST, to_busy.elapsed),
        10.0,
    );
    assert_eq!(got_vip, to_vip.packets, "the essential tenant is not throttled");

    // Cool: the override goes and the base policy applies again.
    drop(burner);
    let left = wait_throttling(&d, false, Duration::from_secs(30));
    eprintln!("left throttling {left:?} after the load stopped (tick {TICK_MS} ms)");
    thread::sleep(Duration::from_millis(TICK_MS));
    assert_eq!(adaptive(&d)["adaptive_managed_override_count"], 0);
    let (_, v) = d.http_json("GET", &format!("/policy/cg:{}", busy.id), None);
    assert!(v["policies"].as_array().expect("list").iter().all(|p| p["level"] != 5), "{v}");
    let c = Counter::start(busy_sock.try_clone().expect("clone"));
    let sent = udp_flood(&client, SocketAddr::from((LO, 7401)), 1000, Duration::from_secs(1));
    assert_eq!(c.finish(), sent.packets, "base policy again: nothing dropped");
    assert!(d.log().contains("adaptive throttling entered: cpu"), "{}", d.log());
    assert!(d.log().contains("adaptive throttling left: cpu"), "{}", d.log());

    // SIGTERM while throttling: overrides removed, filter detached.
    let burner = Burner::start();
    wait_throttling(&d, true, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(TICK_MS));
    assert_eq!(adaptive(&d)["adaptive_managed_override_count"], 1);
    let status = d.stop();
    drop(burner);
    assert!(status.success(), "{status}");
    let log = d.log();
    assert!(
        log.contains(&format!("policy cg:{} level 5 (override_full_wildcard) removed", busy.id)),
        "{log}"
    );
    assert!(common::tcx_program_names(&ns, "lo", true).is_empty());
    let state = std::fs::read_to_string(&d.state_file).expect("state file");
    assert!(
        !state.contains(&format!("\"rate_tokens_per_sec\": {THROTTLE_RATE},")),
        "no override persisted: {state}"
    );
}
