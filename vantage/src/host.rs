//! Host CPU and memory use, read from procfs.
//!
//! CPU use is the busy share of all CPUs between two readings of
//! `/proc/stat`; memory use is `1 - MemAvailable / MemTotal`.

use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use procfs::{Current, CurrentSI};

/// Cumulative CPU time counters (all CPUs), in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent doing anything but idling or waiting for I/O.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// One reading of host load, in percent (0–100).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostSample {
    /// Busy share of all CPUs over the sampling window.
    pub cpu_percent: f64,
    /// Memory in use.
    pub memory_percent: f64,
}

/// Reads the aggregate CPU line of `/proc/stat`.
///
/// # Errors
///
/// procfs could not be read.
pub fn read_cpu_times() -> io::Result<CpuTimes> {
    let stat = procfs::KernelStats::current().map_err(io::Error::other)?;
    let c = stat.total;
    let idle = c.idle + c.iowait.unwrap_or(0);
    let busy = c.user
        + c.nice
        + c.system
        + c.irq.unwrap_or(0)
        + c.softirq.unwrap_or(0)
        + c.steal.unwrap_or(0);
    Ok(CpuTimes { busy, total: busy + idle })
}

/// Busy percentage between two readings; 0 when no time passed.
pub fn cpu_percent(before: CpuTimes, after: CpuTimes) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let busy = after.busy.saturating_sub(before.busy);
    (busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
}

/// Memory in use, in percent, from `/proc/meminfo`.
///
/// # Errors
///
/// procfs could not be read.
pub fn memory_percent() -> io::Result<f64> {
    let m = procfs::Meminfo::current().map_err(io::Error::other)?;
    let available = m.mem_available.unwrap_or(m.mem_free + m.cached);
    if m.mem_total == 0 {
        return Ok(0.0);
    }
    Ok((m.mem_total.saturating_sub(available) as f64 * 100.0 / m.mem_total as f64)
        .clamp(0.0, 100.0))
}

/// CPU use over a sliding window, refreshed by a background thread.
///
/// The snapshot reads the latest figure without waiting a window.
#[derive(Clone)]
pub struct CpuWindow {
    percent_milli: Arc<AtomicU64>,
    window: Duration,
}

impl CpuWindow {
    /// Starts a thread that measures CPU use every `window` until `stop`.
    ///
    /// # Errors
    ///
    /// The thread could not be spawned.
    pub fn spawn(window: Duration, stop: Arc<AtomicBool>) -> io::Result<CpuWindow> {
        let percent_milli = Arc::new(AtomicU64::new(0));
        let out = percent_milli.clone();
        thread::Builder::new().name("cpu-window".into()).spawn(move || {
            let mut before = read_cpu_times().unwrap_or_default();
            let step = Duration::from_millis(100).min(window);
            let mut waited = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(step);
                waited += step;
                if waited < window {
                    continue;
                }
                waited = Duration::ZERO;
                let after = read_cpu_times().unwrap_or(before);
                out.store((cpu_percent(before, after) * 1000.0) as u64, Ordering::Relaxed);
                before = after;
            }
        })?;
        Ok(CpuWindow { percent_milli, window })
    }

    /// CPU use over the last complete window, in percent.
    pub fn percent(&self) -> f64 {
        self.percent_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_the_busy_share_of_the_delta() {
        let a = CpuTimes { busy: 100, total: 1000 };
        assert_eq!(cpu_percent(a, CpuTimes { busy: 150, total: 1100 }), 50.0);
        assert_eq!(cpu_percent(a, a), 0.0);
        assert_eq!(cpu_percent(a, CpuTimes { busy: 200, total: 1100 }), 100.0);
    }

    #[test]
    fn reads_this_host() {
        let t = read_cpu_times().expect("/proc/stat");
        assert!(t.total >= t.busy && t.total > 0);
        let m = memory_percent().expect("/proc/meminfo");
        assert!((0.0..=100.0).contains(&m));
    }
}
