//! Precedence resolution and token bucket metering.

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use vantage_common::{bucket, probe_key, Config, FlowKey, Level, PolicyValue, STEPS};

use crate::{
    clock,
    maps::{OVERRIDES, POLICIES, TENANT_LEVELS},
};

/// How many times a bucket update is retried when another CPU changed the
/// bucket between our read and our compare-and-swap.
///
/// On a 2-CPU host a second failure needs both CPUs to hit the same bucket
/// within a few nanoseconds three times running; when it happens the packet
/// is admitted and counted as an internal fail-open, so the tolerance is one
/// extra admission per exhausted retry loop, visible in the counters.
const CAS_ATTEMPTS: usize = 4;

/// Finds the effective policy for `flow`: its level number and its entry.
///
/// Probes at most ten keys, overrides first, from exact to full wildcard
/// (`probe_key`), skipping levels the tenant has no enabled policy at.
/// A disabled entry is passed over as if absent.
#[inline(always)]
pub fn resolve(flow: &FlowKey) -> Option<(u8, *mut PolicyValue)> {
    // SAFETY: a plain read of a u32 map value.
    let mask = unsafe { *TENANT_LEVELS.get(&flow.cgroup_id)? };

    for is_override in [true, false] {
        for step in 0..STEPS {
            let level = Level::new(is_override, step);
            if mask & level.mask_bit() == 0 {
                continue;
            }
            let Some(key) = probe_key(flow, step) else {
                continue;
            };
            let map = if is_override { &OVERRIDES } else { &POLICIES };
            if let Some(value) = map.get_ptr_mut(&key) {
                // SAFETY: a map value pointer, valid for this program run.
                if unsafe { (*value).enabled } != 0 {
                    return Some((level.number(), value));
                }
            }
        }
    }
    None
}

/// What the bucket said.
pub enum Meter {
    /// A token was taken.
    Conform,
    /// The bucket is empty: drop.
    Exceed,
    /// Lost the compare-and-swap race `CAS_ATTEMPTS` times: fail open.
    Contended,
}

/// Takes one token from `value`'s bucket; also returns the time it used
/// (see [`clock::for_bucket`]).
#[inline(always)]
pub fn meter(value: *mut PolicyValue, cfg: &Config) -> (Meter, u64) {
    // SAFETY: `value` points into a map element that stays valid (RCU) for
    // the whole program run; the daemon writes whole elements only through
    // the map update syscall, which swaps in a new element. The bpfel target
    // exposes no `AtomicU64` read-modify-write methods, so the intrinsics
    // behind them are used directly; they lower to BPF atomic instructions.
    unsafe {
        let interval = (*value).interval_ns;
        let tolerance = (*value).tolerance_ns;
        let now = clock::for_bucket(interval, tolerance, cfg);
        let tat = &raw mut (*value).tat_ns;

        for _ in 0..CAS_ATTEMPTS {
            // A plain 8-byte load is atomic on BPF; LLVM cannot select an
            // atomic load instruction before ISA v4.
            let seen = core::ptr::read_volatile(tat);
            let Some(next) = bucket::conform(seen, now, interval, tolerance) else {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).dropped, 1);
                return (Meter::Exceed, now);
            };
            let (_, swapped) =
                atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    tat, seen, next,
                );
            if swapped {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).admitted, 1);
                return (Meter::Conform, now);
            }
        }
        (Meter::Contended, now)
    }
}
