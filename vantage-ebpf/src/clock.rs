//! Time in the data plane.
//!
//! Two clocks, both in `CLOCK_MONOTONIC` nanoseconds as far as the buckets
//! are concerned (the daemon retunes buckets with that clock):
//! - the precise clock, `bpf_ktime_get_ns`, which costs a helper call (about
//!   as much as the rest of a warm packet's work on a mitigated CPU);
//! - the tick clock, jiffies times the tick length plus an offset, which the
//!   verifier inlines into one load. It advances a tick at a time, so it
//!   meters only buckets wide enough not to notice
//!   (`vantage_common::bucket::on_tick_clock`), and it times the
//!   identity cache.
//!
//! The offset from ticks to `CLOCK_MONOTONIC` is measured on the first
//! packet metered with the tick clock and kept in `RUNTIME`; it is right to
//! within a tick, and ticks and the monotonic clock advance together.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_ns};
use vantage_common::{bucket, Config, RUNTIME_CLOCK_OFFSET};

use crate::maps::RUNTIME;

/// The current kernel tick (jiffies).
#[inline(always)]
pub fn tick() -> u64 {
    // SAFETY: no preconditions; the verifier replaces the call with a load.
    unsafe { bpf_jiffies64() }
}

/// The precise clock.
#[inline(always)]
pub fn precise() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The time to meter a bucket of `interval` and `tolerance` with.
#[inline(always)]
pub fn for_bucket(interval: u64, tolerance: u64, cfg: &Config) -> u64 {
    if !bucket::on_tick_clock(interval, tolerance, cfg.tick_clock_min_ns) {
        return precise();
    }
    let Some(offset) = RUNTIME.get_ptr_mut(RUNTIME_CLOCK_OFFSET) else {
        return precise();
    };
    let ticks_ns = tick().wrapping_mul(cfg.tick_ns);
    // SAFETY: an array element, valid for the whole program run; a racing
    // first measurement on another CPU writes an equally good value.
    unsafe {
        if *offset != 0 {
            return ticks_ns.wrapping_add(*offset);
        }
        let now = precise();
        let measured = now.wrapping_sub(ticks_ns);
        // 0 means "not measured yet"; 1 ns off is as good.
        *offset = if measured == 0 { 1 } else { measured };
        now
    }
}
