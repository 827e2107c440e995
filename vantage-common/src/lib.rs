//! The contract between the vantage classifier and its daemon.
//!
//! Everything both sides must agree on lives here, once: the map keys and
//! values ([`FlowKey`], [`PolicyValue`], [`IdentityKey`], [`IdentityEntry`]),
//! the per-CPU counter block ([`Counters`]), the drop event record
//! ([`DropEvent`]), the load-time configuration ([`Config`]), the precedence
//! rule ([`probe_key`], [`Level`]), the HTTP request-line rule ([`http`]) and
//! the token bucket arithmetic ([`bucket`]).
//!
//! The crate is `no_std` so the eBPF crate can use it. Every type shared
//! with the kernel is `#[repr(C)]` with explicit padding, and its size and
//! field offsets are asserted at compile time at the bottom of this file, so
//! a layout change that one side would read differently fails the build.
//! With the `user` feature the types also implement `aya::Pod`.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod bucket;
pub mod http;

/// Name of the ingress classifier program in the eBPF object.
pub const PROG_INGRESS: &str = "vantage_ingress";
/// Name of the egress classifier program in the eBPF object.
pub const PROG_EGRESS: &str = "vantage_egress";

/// Name of the do-nothing classifier benchmarks compare against.
pub const PROG_EMPTY: &str = "vantage_empty";

/// Name of the base policy map (levels 6 to 10).
pub const MAP_POLICIES: &str = "POLICIES";
/// Name of the runtime override map (levels 1 to 5).
pub const MAP_OVERRIDES: &str = "OVERRIDES";
/// Name of the per-tenant level mask map (`u64` cgroup id to `u32` mask).
pub const MAP_TENANT_LEVELS: &str = "TENANT_LEVELS";
/// Name of the per-flow identity cache (LRU).
pub const MAP_IDENTITY: &str = "IDENTITY";
/// Name of the per-CPU global counters.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the runtime array, see [`RUNTIME_LEVELS_GEN`] and
/// [`RUNTIME_CLOCK_OFFSET`].
pub const MAP_RUNTIME: &str = "RUNTIME";
/// Index in `RUNTIME` of the tenant-level generation, which the daemon
/// advances after every `TENANT_LEVELS` change so that what the identity
/// cache remembers about a tenant's levels is read again.
pub const RUNTIME_LEVELS_GEN: u32 = 0;
/// Index in `RUNTIME` of the offset from the tick clock (jiffies × tick) to
/// `CLOCK_MONOTONIC`, measured by the data plane itself on its first packet
/// metered with the tick clock (0 until then).
pub const RUNTIME_CLOCK_OFFSET: u32 = 1;
/// Entries in `RUNTIME`.
pub const RUNTIME_ENTRIES: u32 = 2;
/// Name of the drop event ring buffer.
pub const MAP_DROP_EVENTS: &str = "DROP_EVENTS";
/// Name of the load-time configuration global.
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Default capacity of each policy map.
pub const DEFAULT_POLICY_CAPACITY: u32 = 131_072;
/// Default capacity of the identity cache.
pub const DEFAULT_IDENTITY_CAPACITY: u32 = 65_536;
/// Size of the drop event ring buffer in bytes (a power of two, page multiple).
pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;

/// TC verdict that lets the packet continue to the next program or filter.
///
/// `TC_ACT_UNSPEC` (-1) is `TCX_NEXT` under tcx, so vantage never
/// short-circuits programs attached after it.
pub const TC_ACT_UNSPEC: i32 = -1;
/// TC verdict that drops the packet.
pub const TC_ACT_SHOT: i32 = 2;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// Traffic direction, as recorded in counters and events.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress = 0,
    /// Packets leaving through the interface.
    Egress = 1,
}

impl Direction {
    /// Both directions, in counter index order.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The lowercase name used in metrics labels and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The direction with index `i` (0 ingress, anything else egress).
    pub const fn from_index(i: u8) -> Direction {
        if i == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        }
    }
}

/// The policy key and the flow key: `(cgroup, proto, port, method, path)`.
///
/// A field of zero is a wildcard in a stored policy and "absent" in a
/// packet's flow (port 0 for protocols without ports, method and hash 0 for
/// packets that are not HTTP request lines).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    /// cgroup v2 id of the tenant (the inode number of its directory).
    pub cgroup_id: u64,
    /// FNV-1a 32 hash of the HTTP path ([`http::path_hash`]), or 0.
    pub http_path_hash: u32,
    /// Destination port in host byte order, or 0.
    pub dst_port: u16,
    /// IP protocol number, or 0.
    pub proto: u8,
    /// HTTP method code ([`http::Method`]), or 0.
    pub http_method: u8,
}

impl FlowKey {
    /// The full-wildcard key of a tenant, `(cg, 0, 0, 0, 0)`.
    pub const fn tenant(cgroup_id: u64) -> FlowKey {
        FlowKey { cgroup_id, http_path_hash: 0, dst_port: 0, proto: 0, http_method: 0 }
    }

    /// The step (0 exact .. 4 full wildcard) this key occupies when stored.
    ///
    /// It is the deepest step whose probe key equals this key, which is the
    /// step reported when a packet matches it: a stored `(cg, tcp, 80, 0, 0)`
    /// is a method+path wildcard (step 2), whatever packet finds it.
    pub const fn step(&self) -> u8 {
        if self.http_path_hash != 0 {
            0
        } else if self.http_method != 0 {
            1
        } else if self.dst_port != 0 {
            2
        } else if self.proto != 0 {
            3
        } else {
            4
        }
    }
}

/// Number of wildcard steps probed in each of the two policy maps.
pub const STEPS: u8 = 5;

/// The key probed at wildcard `step` (0..5) for a packet with flow `flow`.
///
/// Returns `None` when the probe would repeat the next step's key (for
/// example the exact probe of a packet whose path hash is 0): skipping it
/// makes the level reported for a match the level of the stored key's shape.
/// The kernel and the daemon both resolve through this function.
#[inline(always)]
pub const fn probe_key(flow: &FlowKey, step: u8) -> Option<FlowKey> {
    let mut key = *flow;
    match step {
        0 => {
            if flow.http_path_hash == 0 {
                return None;
            }
        }
        1 => {
            if flow.http_method == 0 {
                return None;
            }
            key.http_path_hash = 0;
        }
        2 => {
            if flow.dst_port == 0 {
                return None;
            }
            key.http_path_hash = 0;
            key.http_method = 0;
        }
        3 => {
            if flow.proto == 0 {
                return None;
            }
            key.http_path_hash = 0;
            key.http_method = 0;
            key.dst_port = 0;
        }
        4 => {
            key = FlowKey::tenant(flow.cgroup_id);
        }
        _ => return None,
    }
    Some(key)
}

/// A precedence level, 1 (most specific override) to 10 (base wildcard).
///
/// Levels 1–5 live in the runtime override map, 6–10 in the base policy map;
/// within each map the five steps go from exact to full wildcard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(u8);

impl Level {
    /// The level of `step` (0..5) in the override map (`true`) or base map.
    pub const fn new(is_override: bool, step: u8) -> Level {
        Level(if is_override { step + 1 } else { step + 1 + STEPS })
    }

    /// The level with number `n`, if `n` is in 1..=10.
    pub const fn from_number(n: u8) -> Option<Level> {
        if n >= 1 && n <= 2 * STEPS {
            Some(Level(n))
        } else {
            None
        }
    }

    /// The number, 1..=10.
    pub const fn number(self) -> u8 {
        self.0
    }

    /// Whether the level belongs to the runtime override map.
    pub const fn is_override(self) -> bool {
        self.0 <= STEPS
    }

    /// The wildcard step within its map, 0..5.
    pub const fn step(self) -> u8 {
        (self.0 - 1) % STEPS
    }

    /// This level's bit in a tenant's level mask.
    pub const fn mask_bit(self) -> u32 {
        1 << self.0
    }

    /// A stable name, used in API responses and metrics labels.
    pub const fn name(self) -> &'static str {
        match self.0 {
            1 => "override_exact",
            2 => "override_path_wildcard",
            3 => "override_method_path_wildcard",
            4 => "override_port_method_path_wildcard",
            5 => "override_full_wildcard",
            6 => "base_exact",
            7 => "base_path_wildcard",
            8 => "base_method_path_wildcard",
            9 => "base_port_method_path_wildcard",
            _ => "base_full_wildcard",
        }
    }
}

/// A rate-limit policy as stored in a policy map, with its token bucket.
///
/// The bucket is a GCRA ([`bucket`]): one 64-bit state word, `tat_ns`,
/// updated with compare-and-swap so both CPUs can meter one policy at once.
/// The daemon fills the parameter fields; the kernel only updates `tat_ns`
/// and the two counters, atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// Theoretical arrival time of the next conforming packet (ns, ktime).
    pub tat_ns: u64,
    /// Packets admitted by this policy.
    pub admitted: u64,
    /// Packets dropped by this policy.
    pub dropped: u64,
    /// Nanoseconds per token; 0 means unlimited.
    pub interval_ns: u64,
    /// `interval_ns * burst_tokens`: how far `tat_ns` may run ahead of now.
    pub tolerance_ns: u64,
    /// Configured refill rate, for the daemon's view.
    pub rate_tokens_per_sec: u64,
    /// Configured bucket capacity, for the daemon's view.
    pub burst_tokens: u64,
    /// 1 when enabled; a disabled policy is skipped as if absent.
    pub enabled: u32,
    /// Padding, always 0.
    pub _pad: u32,
}

/// Key of the identity cache: one transport flow as seen on ingress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    /// Source address (IPv4 in the first word), network byte order.
    pub saddr: [u32; 4],
    /// Destination address (IPv4 in the first word), network byte order.
    pub daddr: [u32; 4],
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Padding, always 0.
    pub _pad: [u8; 2],
}

/// Value of the identity cache: the owning tenant, when to look again, and
/// whether the tenant had any enabled policy as of a tenant-level generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityEntry {
    /// cgroup v2 id of the receiving socket, or 0 when no socket owns it.
    pub cgroup_id: u64,
    /// Kernel tick (jiffies) from which the entry is looked up again.
    pub expires_tick: u64,
    /// The `RUNTIME_LEVELS_GEN` value `levels` was read under; when the
    /// current value differs, `levels` is read again.
    pub levels_gen: u64,
    /// The tenant's `TENANT_LEVELS` mask (0: no enabled policy).
    pub levels: u32,
    /// Padding, always 0.
    pub _pad: u32,
}

/// Index of each counter in [`Counters::values`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the classifier ran on.
    Seen = 0,
    /// Packets admitted (including fail-open and unowned ones).
    Admitted = 1,
    /// Packets dropped by a token bucket.
    Dropped = 2,
    /// Packets admitted because they could not be parsed.
    FailOpenParse = 3,
    /// Packets admitted because of an internal failure (helper, map, contention).
    FailOpenInternal = 4,
    /// Packets with no local socket owner.
    NoTenant = 5,
    /// Packets of a tenant without an effective policy.
    NoPolicy = 6,
    /// Drop events written to the ring buffer.
    EventsEmitted = 7,
    /// Drop events lost because the ring buffer was full.
    EventsLost = 8,
    /// Packets identified through a socket lookup (identity cache misses).
    IdentityLookups = 9,
}

impl Counter {
    /// Number of counters.
    pub const COUNT: usize = 10;

    /// Every counter, in index order.
    pub const ALL: [Counter; Counter::COUNT] = [
        Counter::Seen,
        Counter::Admitted,
        Counter::Dropped,
        Counter::FailOpenParse,
        Counter::FailOpenInternal,
        Counter::NoTenant,
        Counter::NoPolicy,
        Counter::EventsEmitted,
        Counter::EventsLost,
        Counter::IdentityLookups,
    ];

    /// The snake_case name used in metrics and the snapshot.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Admitted => "admitted",
            Counter::Dropped => "dropped",
            Counter::FailOpenParse => "fail_open_parse",
            Counter::FailOpenInternal => "fail_open_internal",
            Counter::NoTenant => "no_tenant",
            Counter::NoPolicy => "no_policy",
            Counter::EventsEmitted => "events_emitted",
            Counter::EventsLost => "events_lost",
            Counter::IdentityLookups => "identity_lookups",
        }
    }
}

/// One direction's global counters on one CPU (a per-CPU array element).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by [`Counter`].
    pub values: [u64; Counter::COUNT],
}

/// A sampled drop, written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// ktime of the drop, in nanoseconds.
    pub timestamp_ns: u64,
    /// The packet's flow key (not the matched policy's key).
    pub flow: FlowKey,
    /// Length of the packet in bytes.
    pub packet_len: u32,
    /// Number of the precedence level that dropped it.
    pub level: u8,
    /// [`Direction`] as its index.
    pub direction: u8,
    /// Padding, always 0.
    pub _pad: [u8; 2],
}

/// Settings fixed when the classifier is loaded (a read-only global).
///
/// The verifier sees read-only globals as constants, which keeps the
/// per-packet code free of lookups for them and lets the cgroup offsets
/// below fold into the loads that use them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Byte offset of `sk_cgrp_data.cgroup` in `struct sock`, from kernel BTF.
    pub sock_cgroup_off: u32,
    /// Byte offset of `kn` in `struct cgroup`, from kernel BTF.
    pub cgroup_kn_off: u32,
    /// Byte offset of `id` in `struct kernfs_node`, from kernel BTF.
    pub kn_id_off: u32,
    /// 1 for `--flow-keys-mode legacy`, 0 for live.
    pub legacy_flow_keys: u32,
    /// Emit one drop event per this many drops per CPU (1 = every drop).
    pub drop_event_sample_n: u32,
    /// 1 when the interface carries bare IP packets (no Ethernet header).
    pub raw_ip: u32,
    /// How long an identity cache entry is trusted, in kernel ticks.
    pub identity_ttl_ticks: u64,
    /// Length of a kernel tick (a jiffy) in nanoseconds.
    pub tick_ns: u64,
    /// Buckets whose tolerance plus interval is at least this many
    /// nanoseconds are metered with the tick clock (jiffies, free to read)
    /// instead of `bpf_ktime_get_ns`; `u64::MAX` meters every bucket with
    /// the precise clock. See `bucket::tick_clock_is_exact`.
    pub tick_clock_min_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `repr(C)`, `Copy`, made only of integers, and
    // has its padding spelled out as fields, so any bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::IdentityKey {}
    unsafe impl aya::Pod for super::IdentityEntry {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::Config {}
}

/// Compile-time layout checks: both sides compile this crate, so a size or
/// offset that changes fails here instead of silently misreading a map.
mod layout {
    use super::*;
    use core::mem::{offset_of, size_of};

    const _: () = assert!(size_of::<FlowKey>() == 16);
    const _: () = assert!(offset_of!(FlowKey, cgroup_id) == 0);
    const _: () = assert!(offset_of!(FlowKey, http_path_hash) == 8);
    const _: () = assert!(offset_of!(FlowKey, dst_port) == 12);
    const _: () = assert!(offset_of!(FlowKey, proto) == 14);
    const _: () = assert!(offset_of!(FlowKey, http_method) == 15);

    const _: () = assert!(size_of::<PolicyValue>() == 64);
    const _: () = assert!(offset_of!(PolicyValue, tat_ns) == 0);
    const _: () = assert!(offset_of!(PolicyValue, admitted) == 8);
    const _: () = assert!(offset_of!(PolicyValue, dropped) == 16);
    const _: () = assert!(offset_of!(PolicyValue, interval_ns) == 24);
    const _: () = assert!(offset_of!(PolicyValue, tolerance_ns) == 32);
    const _: () = assert!(offset_of!(PolicyValue, rate_tokens_per_sec) == 40);
    const _: () = assert!(offset_of!(PolicyValue, burst_tokens) == 48);
    const _: () = assert!(offset_of!(PolicyValue, enabled) == 56);

    const _: () = assert!(size_of::<IdentityKey>() == 40);
    const _: () = assert!(offset_of!(IdentityKey, daddr) == 16);
    const _: () = assert!(offset_of!(IdentityKey, sport) == 32);
    const _: () = assert!(offset_of!(IdentityKey, dport) == 34);
    const _: () = assert!(offset_of!(IdentityKey, proto) == 36);
    const _: () = assert!(offset_of!(IdentityKey, family) == 37);

    const _: () = assert!(size_of::<IdentityEntry>() == 32);
    const _: () = assert!(offset_of!(IdentityEntry, expires_tick) == 8);
    const _: () = assert!(offset_of!(IdentityEntry, levels_gen) == 16);
    const _: () = assert!(offset_of!(IdentityEntry, levels) == 24);

    const _: () = assert!(size_of::<Counters>() == 8 * Counter::COUNT);

    const _: () = assert!(size_of::<DropEvent>() == 32);
    const _: () = assert!(offset_of!(DropEvent, flow) == 8);
    const _: () = assert!(offset_of!(DropEvent, packet_len) == 24);
    const _: () = assert!(offset_of!(DropEvent, level) == 28);
    const _: () = assert!(offset_of!(DropEvent, direction) == 29);

    const _: () = assert!(size_of::<Config>() == 48);
    const _: () = assert!(offset_of!(Config, legacy_flow_keys) == 12);
    const _: () = assert!(offset_of!(Config, drop_event_sample_n) == 16);
    const _: () = assert!(offset_of!(Config, raw_ip) == 20);
    const _: () = assert!(offset_of!(Config, identity_ttl_ticks) == 24);
    const _: () = assert!(offset_of!(Config, tick_ns) == 32);
    const _: () = assert!(offset_of!(Config, tick_clock_min_ns) == 40);
}
