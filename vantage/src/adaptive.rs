//! Adaptive throttling: when the host runs hot, every non-essential tenant
//! with a policy gets a full-wildcard runtime override (level 5) at the
//! throttle rate; when it cools down, exactly those overrides go again.
//!
//! The controller thread samples CPU and memory each tick ([`Sampler`]),
//! applies the hysteresis of [`Watermarks::next`], and hands the wanted
//! state to the map owner as one job ([`reconcile`]), which compares it with
//! the overrides the controller owns. Ownership is tracked in the store: an
//! override the controller did not write is never touched, and an operator
//! writing or deleting an owned override through the API takes it over.

use std::{
    fmt::Write as _,
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crossbeam_channel::{bounded, select, tick, Receiver, Sender};
use log::{info, warn};
use serde_json::{json, Value};

use crate::{
    host::{self, CpuTimes, HostSample},
    maps::Dataplane,
    owner::Owner,
    policy::PolicySpec,
    store::{PolicyStore, StoreError},
};

/// Effective watermarks after clamping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// Enter at or above, 2..=100.
    pub high: u32,
    /// Leave at or below, always below `high`.
    pub low: u32,
}

impl Watermarks {
    /// Clamps `high` to 2..=100 and keeps `low` strictly below it.
    pub fn new(high: u32, low: u32) -> Self {
        let high = high.clamp(2, 100);
        Watermarks { high, low: low.min(high - 1) }
    }

    /// Whether to be throttling after `sample`, given whether we are now.
    ///
    /// Enter when CPU or memory is at or above `high`; leave only when both
    /// are at or below `low`; between the marks keep the current state.
    pub fn next(self, throttling: bool, s: HostSample) -> bool {
        let (high, low) = (f64::from(self.high), f64::from(self.low));
        if !throttling {
            s.cpu_percent >= high || s.memory_percent >= high
        } else {
            !(s.cpu_percent <= low && s.memory_percent <= low)
        }
    }
}

/// A source of host load readings, one per tick.
pub trait Sampler: Send {
    /// Load since the previous call (CPU) and now (memory).
    fn sample(&mut self) -> io::Result<HostSample>;
}

/// Reads `/proc/stat` and `/proc/meminfo`.
pub struct ProcSampler {
    last: CpuTimes,
}

impl ProcSampler {
    /// A sampler whose first reading covers the time since this call.
    pub fn new() -> io::Result<Self> {
        Ok(ProcSampler { last: host::read_cpu_times()? })
    }
}

impl Sampler for ProcSampler {
    fn sample(&mut self) -> io::Result<HostSample> {
        let now = host::read_cpu_times()?;
        let cpu_percent = host::cpu_percent(self.last, now);
        self.last = now;
        Ok(HostSample { cpu_percent, memory_percent: host::memory_percent()? })
    }
}

/// Controller state shared with /metrics and /debug/snapshot.
#[derive(Debug)]
pub struct Status {
    /// `--adaptive-enabled`.
    pub enabled: bool,
    /// Effective watermarks.
    pub watermarks: Watermarks,
    /// Tick.
    pub tick: Duration,
    /// The override written while throttling.
    pub throttle: PolicySpec,
    throttling: AtomicBool,
    owned: AtomicU64,
    transitions: AtomicU64,
    last_cpu_milli: AtomicU64,
    last_mem_milli: AtomicU64,
    nudge_tx: Sender<()>,
    nudge_rx: Receiver<()>,
}

impl Status {
    /// Status for the given settings, not throttling.
    pub fn new(
        enabled: bool,
        watermarks: Watermarks,
        tick: Duration,
        throttle: PolicySpec,
    ) -> Self {
        let (nudge_tx, nudge_rx) = bounded(1);
        Status {
            enabled,
            watermarks,
            tick,
            throttle,
            throttling: AtomicBool::new(false),
            owned: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            last_cpu_milli: AtomicU64::new(0),
            last_mem_milli: AtomicU64::new(0),
            nudge_tx,
            nudge_rx,
        }
    }

    /// Whether overrides are in force.
    pub fn throttling(&self) -> bool {
        self.throttling.load(Ordering::Relaxed)
    }

    /// Overrides the controller owns.
    pub fn owned(&self) -> u64 {
        self.owned.load(Ordering::Relaxed)
    }

    /// Asks the controller to reconcile now instead of at its next tick.
    pub fn nudge(&self) {
        let _ = self.nudge_tx.try_send(());
    }

    /// The snapshot block.
    pub fn to_json(&self) -> Value {
        json!({
            "enabled": self.enabled,
            "throttling": self.throttling(),
            "high_watermark_percent": self.watermarks.high,
            "low_watermark_percent": self.watermarks.low,
            "tick_ms": self.tick.as_millis() as u64,
            "throttle_rate_tokens_per_sec": self.throttle.rate_tokens_per_sec,
            "throttle_burst_tokens": self.throttle.burst_tokens,
            "adaptive_managed_override_count": self.owned(),
            "transitions": self.transitions.load(Ordering::Relaxed),
            "last_cpu_percent": self.last_cpu_milli.load(Ordering::Relaxed) as f64 / 1000.0,
            "last_memory_percent": self.last_mem_milli.load(Ordering::Relaxed) as f64 / 1000.0,
        })
    }

    /// The adaptive metric families.
    pub fn write_metrics(&self, out: &mut String) {
        let fams: [(&str, &str, &str, u64); 5] = [
            (
                "vantage_adaptive_enabled",
                "gauge",
                "1 when adaptive throttling is enabled.",
                u64::from(self.enabled),
            ),
            (
                "vantage_adaptive_throttling",
                "gauge",
                "1 while non-essential tenants are throttled.",
                u64::from(self.throttling()),
            ),
            (
                "vantage_adaptive_transitions_total",
                "counter",
                "Times throttling was entered or left.",
                self.transitions.load(Ordering::Relaxed),
            ),
            (
                "vantage_adaptive_managed_overrides",
                "gauge",
                "Runtime overrides owned by the adaptive controller.",
                self.owned(),
            ),
            (
                "vantage_adaptive_high_watermark_percent",
                "gauge",
                "Effective high watermark.",
                u64::from(self.watermarks.high),
            ),
        ];
        for (name, kind, help, v) in fams {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
}

/// Makes the controller's overrides match `throttle` (write them for every
/// non-essential tenant with a base policy) or `None` (remove all it owns).
/// Returns how many it owns afterwards.
///
/// # Errors
///
/// The first failed map write; what was done before it stays done and is
/// owned, so the next reconcile continues from there.
pub fn reconcile<D: Dataplane>(
    store: &mut PolicyStore<D>,
    throttle: Option<PolicySpec>,
) -> Result<usize, StoreError> {
    store.adaptive_reconcile(throttle)
}

/// Runs the controller until `stop` is set; then removes what it owns.
///
/// # Errors
///
/// The thread could not be spawned.
pub fn spawn<D: Dataplane + 'static>(
    owner: Owner<D>,
    status: Arc<Status>,
    mut sampler: Box<dyn Sampler>,
    stop: Receiver<()>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name("adaptive".into()).spawn(move || {
        let ticker = tick(status.tick);
        let wm = status.watermarks;
        info!(
            "adaptive throttling on: enter at {}%, leave at {}%, tick {} ms, throttle {}/s burst {}",
            wm.high,
            wm.low,
            status.tick.as_millis(),
            status.throttle.rate_tokens_per_sec,
            status.throttle.burst_tokens
        );
        loop {
            select! {
                recv(stop) -> _ => break,
                recv(ticker) -> _ => {
                    match sampler.sample() {
                        Ok(s) => step(&owner, &status, s),
                        Err(e) => warn!("adaptive: sample host load: {e}"),
                    }
                }
                recv(status.nudge_rx) -> _ => sync(&owner, &status),
            }
        }
        let throttle = None;
        match owner.call(move |s| reconcile(s, throttle)) {
            Ok(Ok(_)) => status.owned.store(0, Ordering::Relaxed),
            Ok(Err(e)) => warn!("adaptive: remove overrides on shutdown: {}", crate::error_chain(&e)),
            Err(e) => warn!("adaptive: remove overrides on shutdown: {e}"),
        }
    })
}

/// One tick: decide, log a transition, reconcile.
fn step<D: Dataplane + 'static>(owner: &Owner<D>, status: &Status, s: HostSample) {
    status.last_cpu_milli.store((s.cpu_percent * 1000.0) as u64, Ordering::Relaxed);
    status.last_mem_milli.store((s.memory_percent * 1000.0) as u64, Ordering::Relaxed);
    let was = status.throttling();
    let now = status.watermarks.next(was, s);
    if now != was {
        status.throttling.store(now, Ordering::Relaxed);
        status.transitions.fetch_add(1, Ordering::Relaxed);
        let verb = if now { "entered" } else { "left" };
        info!(
            "adaptive throttling {verb}: cpu {:.1}%, memory {:.1}% (enter at {}%, leave at {}%)",
            s.cpu_percent, s.memory_percent, status.watermarks.high, status.watermarks.low
        );
    }
    sync(owner, status);
}

fn sync<D: Dataplane + 'static>(owner: &Owner<D>, status: &Status) {
    let throttle = status.throttling().then_some(status.throttle);
    match owner.call(move |s| reconcile(s, throttle)) {
        Ok(Ok(n)) => status.owned.store(n as u64, Ordering::Relaxed),
        Ok(Err(e)) => warn!("adaptive: update overrides: {}", crate::error_chain(&e)),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{maps::MemoryMaps, policy::MapKind};
    use vantage_common::FlowKey;

    fn s(cpu: f64, mem: f64) -> HostSample {
        HostSample { cpu_percent: cpu, memory_percent: mem }
    }

    #[test]
    fn clamping_and_normalisation() {
        let cases = [
            ((0, 0), (2, 0)),
            ((1, 80), (2, 1)),
            ((2, 1), (2, 1)),
            ((2, 5), (2, 1)),
            ((100, 80), (100, 80)),
            ((150, 80), (100, 80)),
            ((90, 90), (90, 89)),
            ((90, 95), (90, 89)),
            ((50, 0), (50, 0)),
        ];
        for ((h, l), (wh, wl)) in cases {
            assert_eq!(Watermarks::new(h, l), Watermarks { high: wh, low: wl }, "({h}, {l})");
        }
    }

    #[test]
    fn enter_stay_leave_table() {
        let wm = Watermarks::new(90, 80);
        // (throttling before, cpu, mem, throttling after)
        let table = [
            (false, 10.0, 10.0, false),
            (false, 89.9, 89.9, false),
            (false, 90.0, 10.0, true),
            (false, 10.0, 90.0, true),
            (false, 100.0, 100.0, true),
            (true, 85.0, 10.0, true),
            (true, 10.0, 85.0, true),
            (true, 80.0, 80.0, false),
            (true, 80.1, 10.0, true),
            (true, 10.0, 10.0, false),
            (true, 95.0, 95.0, true),
        ];
        for (before, cpu, mem, after) in table {
            assert_eq!(wm.next(before, s(cpu, mem)), after, "{before} {cpu} {mem}");
        }
    }

    fn spec(rate: u64) -> PolicySpec {
        PolicySpec { rate_tokens_per_sec: rate, burst_tokens: 10, enabled: true }
    }

    fn store_with(tenants: &[u64]) -> PolicyStore<MemoryMaps> {
        let mut st = PolicyStore::new(MemoryMaps::new(100), None);
        for t in tenants {
            let key = FlowKey { cgroup_id: *t, proto: 17, dst_port: 53, ..FlowKey::default() };
            st.upsert(MapKind::Base, key, spec(1000)).expect("base policy");
        }
        st
    }

    #[test]
    fn throttles_non_essential_tenants_and_releases_exactly_its_own() {
        let mut st = store_with(&[1, 2, 3]);
        st.set_essential(2, true).expect("essential");
        // Someone else's override on tenant 3 must survive everything.
        st.upsert(MapKind::Override, FlowKey::tenant(3), spec(7)).expect("foreign override");

        assert_eq!(reconcile(&mut st, Some(spec(100))).expect("enter"), 1);
        assert_eq!(st.policies().get(MapKind::Override, &FlowKey::tenant(1)), Some(spec(100)));
        assert_eq!(st.policies().get(MapKind::Override, &FlowKey::tenant(2)), None);
        assert_eq!(st.policies().get(MapKind::Override, &FlowKey::tenant(3)), Some(spec(7)));

        // A tenant added while throttling is throttled at the next tick.
        let key = FlowKey { cgroup_id: 4, proto: 6, ..FlowKey::default() };
        st.upsert(MapKind::Base, key, spec(5)).expect("new tenant");
        assert_eq!(reconcile(&mut st, Some(spec(100))).expect("tick"), 2);

        // Made essential while throttled: released at once.
        st.set_essential(1, true).expect("essential");
        assert_eq!(st.policies().get(MapKind::Override, &FlowKey::tenant(1)), None);
        assert_eq!(st.adaptive_owned_count(), 1);
        // Made non-essential while throttling: throttled at the next tick.
        st.set_essential(2, false).expect("not essential");
        assert_eq!(reconcile(&mut st, Some(spec(100))).expect("tick"), 2);

        assert_eq!(reconcile(&mut st, None).expect("leave"), 0);
        assert_eq!(st.policies().len(MapKind::Override), 1);
        assert_eq!(st.policies().get(MapKind::Override, &FlowKey::tenant(3)), Some(spec(7)));
        assert!(st.audit().expect("audit").is_empty());
        // Overrides never reach the state file.
        assert!(st.state().policies.iter().all(|p| p.spec != spec(100)));
    }

    /// A sampler the test feeds one reading at a time.
    struct Fed(Receiver<HostSample>);

    impl Sampler for Fed {
        fn sample(&mut self) -> io::Result<HostSample> {
            self.0.recv().map_err(|_| io::Error::other("test over"))
        }
    }

    #[test]
    fn the_controller_thread_enters_holds_and_leaves_on_the_samplers_word() {
        let (owner, store_thread) = Owner::spawn(store_with(&[1, 2])).expect("owner");
        let throttle = spec(100);
        let status = Arc::new(Status::new(
            true,
            Watermarks::new(90, 80),
            Duration::from_millis(5),
            throttle,
        ));
        // Rendezvous: a send returns once the controller has taken the reading.
        let (feed, fed) = bounded(0);
        let (stop, stop_rx) = bounded::<()>(1);
        let thread =
            spawn(owner.clone(), status.clone(), Box::new(Fed(fed)), stop_rx).expect("controller");

        let owned = |owner: &Owner<MemoryMaps>| {
            owner.call(|s| s.adaptive_owned_count()).expect("owner alive")
        };
        // (reading, throttling after it, overrides owned after it)
        let script = [
            (s(50.0, 50.0), false, 0),
            (s(95.0, 10.0), true, 2),
            (s(85.0, 10.0), true, 2),
            (s(10.0, 85.0), true, 2),
            (s(80.0, 80.0), false, 0),
            (s(10.0, 91.0), true, 2),
        ];
        for (i, (reading, throttling, n)) in script.into_iter().enumerate() {
            feed.send(reading).expect("feed");
            // The next reading is only taken after this one was acted on.
            feed.send(reading).expect("feed");
            assert_eq!(status.throttling(), throttling, "step {i}: {reading:?}");
            assert_eq!(owned(&owner), n, "step {i}");
        }
        assert_eq!(status.to_json()["transitions"], 3);

        // Stopping while throttling removes every override it owns.
        drop(stop);
        drop(feed);
        thread.join().expect("controller exits");
        assert_eq!(owned(&owner), 0);
        drop(owner);
        let store = store_thread.join().expect("owner exits");
        assert_eq!(store.policies().len(MapKind::Override), 0);
    }

    #[test]
    fn an_operator_write_takes_an_override_over() {
        let mut st = store_with(&[1]);
        reconcile(&mut st, Some(spec(100))).expect("enter");
        st.upsert(MapKind::Override, FlowKey::tenant(1), spec(9)).expect("operator");
        assert_eq!(st.adaptive_owned_count(), 0);
        reconcile(&mut st, None).expect("leave");
        assert_eq!(st.policies().get(MapKind::Override, &FlowKey::tenant(1)), Some(spec(9)));
    }
}
