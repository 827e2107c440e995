//! Map definitions and the small helpers that touch them.
//!
//! Capacities here are defaults; the daemon resizes the policy maps and the
//! identity cache at load time from its flags.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use vantage_common::{
    Config, Counter, Counters, Direction, DropEvent, FlowKey, IdentityEntry, IdentityKey,
    PolicyValue, DEFAULT_IDENTITY_CAPACITY, DEFAULT_POLICY_CAPACITY, DROP_EVENTS_BYTES,
    RUNTIME_ENTRIES, RUNTIME_LEVELS_GEN,
};

/// Base policies, levels 6 to 10.
///
/// Not preallocated: elements are freed after an RCU grace period, so a
/// bucket pointer the program holds never aliases another policy's element
/// while the daemon deletes or replaces entries.
#[map(name = "POLICIES")]
pub static POLICIES: HashMap<FlowKey, PolicyValue> =
    HashMap::with_max_entries(DEFAULT_POLICY_CAPACITY, BPF_F_NO_PREALLOC);

/// Runtime overrides, levels 1 to 5 (written by the adaptive controller).
#[map(name = "OVERRIDES")]
pub static OVERRIDES: HashMap<FlowKey, PolicyValue> =
    HashMap::with_max_entries(DEFAULT_POLICY_CAPACITY, BPF_F_NO_PREALLOC);

/// For each tenant with an enabled policy, a bit per level that has one.
///
/// Lets a packet of a tenant without policies cost one lookup, and a
/// packet of a limited tenant probe only the levels that can match.
#[map(name = "TENANT_LEVELS")]
pub static TENANT_LEVELS: HashMap<u64, u32> =
    HashMap::with_max_entries(DEFAULT_POLICY_CAPACITY, BPF_F_NO_PREALLOC);

/// Ingress flow to owning tenant, see [`crate::identity`].
#[map(name = "IDENTITY")]
pub static IDENTITY: LruHashMap<IdentityKey, IdentityEntry> =
    LruHashMap::with_max_entries(DEFAULT_IDENTITY_CAPACITY, 0);

/// The tenant-level generation and the clock offset
/// (`vantage_common::RUNTIME_LEVELS_GEN`, `RUNTIME_CLOCK_OFFSET`). The
/// verifier inlines array lookups, so reading them costs a few instructions.
#[map(name = "RUNTIME")]
pub static RUNTIME: Array<u64> = Array::with_max_entries(RUNTIME_ENTRIES, 0);

/// Global counters, one element per direction, per CPU.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(2, 0);

/// Sampled drop events for the daemon.
#[map(name = "DROP_EVENTS")]
pub static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(DROP_EVENTS_BYTES, 0);

/// The enabled-level mask of `tenant` (0 when it has no enabled policy).
#[inline(always)]
pub fn tenant_levels(tenant: u64) -> u32 {
    // SAFETY: a plain read of a u32 map value.
    unsafe { TENANT_LEVELS.get(&tenant).copied().unwrap_or(0) }
}

/// The current tenant-level generation; read it before the masks it guards.
#[inline(always)]
pub fn levels_gen() -> u64 {
    RUNTIME.get(RUNTIME_LEVELS_GEN).copied().unwrap_or(0)
}

/// This CPU's counter block for `dir`.
#[inline(always)]
pub fn counters(dir: Direction) -> Option<*mut Counters> {
    COUNTERS.get_ptr_mut(dir as u32)
}

/// Adds one to counter `which`. Per-CPU, so a plain increment is exact.
#[inline(always)]
pub fn bump(c: *mut Counters, which: Counter) {
    // SAFETY: `c` comes from a per-CPU array lookup and the index is a
    // constant below Counter::COUNT.
    unsafe { (*c).values[which as usize] += 1 };
}

/// Writes a drop event for every `drop_event_sample_n`-th drop on this CPU.
///
/// Counts the drop's sampling position before the verdict counter is
/// bumped, so the first drop on each CPU is always reported.
#[inline(always)]
pub fn emit_drop_event(
    c: *mut Counters,
    cfg: &Config,
    now: u64,
    flow: &FlowKey,
    level: u8,
    dir: Direction,
    packet_len: u32,
) {
    // SAFETY: see `bump`.
    let drops = unsafe { (*c).values[Counter::Dropped as usize] };
    let n = cfg.drop_event_sample_n as u64;
    if n > 1 && drops % n != 0 {
        return;
    }
    match DROP_EVENTS.reserve::<DropEvent>(0) {
        Some(mut entry) => {
            entry.write(DropEvent {
                timestamp_ns: now,
                flow: *flow,
                packet_len,
                level,
                direction: dir as u8,
                _pad: [0; 2],
            });
            entry.submit(0);
            bump(c, Counter::EventsEmitted);
        }
        None => bump(c, Counter::EventsLost),
    }
}
