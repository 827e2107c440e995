//! The seam between policy logic and the kernel's maps.
//!
//! [`Dataplane`] is everything the policy store needs from the kernel;
//! [`KernelMaps`] implements it over the classifier's maps and
//! [`MemoryMaps`] in memory, so the store's ordering and rollback logic is
//! testable without root.

use std::collections::HashMap as StdHashMap;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use vantage_common::{
    bucket, Counter, Counters, Direction, FlowKey, PolicyValue, MAP_COUNTERS, MAP_OVERRIDES,
    MAP_POLICIES, MAP_RUNTIME, MAP_TENANT_LEVELS, RUNTIME_CLOCK_OFFSET, RUNTIME_LEVELS_GEN,
};

use crate::policy::MapKind;

/// A failed map operation, naming the map and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The map has no room for another entry.
    #[error(
        "{map} is full ({capacity} entries); raise --policy-capacity \
         (VANTAGE_POLICY_CAPACITY), which sizes POLICIES, OVERRIDES and TENANT_LEVELS"
    )]
    Full {
        /// Map name.
        map: &'static str,
        /// Its capacity.
        capacity: u32,
    },
    /// Any other failure.
    #[error("{op} in map {map}")]
    Map {
        /// What was being done.
        op: &'static str,
        /// Map name.
        map: &'static str,
        /// The kernel's answer.
        #[source]
        source: MapError,
    },
    /// A map is missing from the object or has the wrong type.
    #[error("map {map} missing from the eBPF object or of the wrong type")]
    Missing {
        /// Map name.
        map: &'static str,
    },
}

/// Global counters summed over CPUs, indexed `[direction][counter]`.
pub type CounterTotals = [[u64; Counter::COUNT]; 2];

/// What the policy store needs from the data plane.
pub trait Dataplane: Send {
    /// The entry at `key`, if present.
    fn read(&self, kind: MapKind, key: &FlowKey) -> Result<Option<PolicyValue>, DataplaneError>;
    /// Inserts or replaces the entry at `key`.
    fn write(
        &mut self,
        kind: MapKind,
        key: &FlowKey,
        v: &PolicyValue,
    ) -> Result<(), DataplaneError>;
    /// Removes the entry at `key`; absent is not an error.
    fn delete(&mut self, kind: MapKind, key: &FlowKey) -> Result<(), DataplaneError>;
    /// Sets a tenant's level mask; 0 removes it.
    fn set_mask(&mut self, tenant: u64, mask: u32) -> Result<(), DataplaneError>;
    /// Every entry of `kind`, in no particular order.
    fn entries(&self, kind: MapKind) -> Result<Vec<(FlowKey, PolicyValue)>, DataplaneError>;
    /// Every tenant mask.
    fn masks(&self) -> Result<Vec<(u64, u32)>, DataplaneError>;
    /// Global counters.
    fn counters(&self) -> Result<CounterTotals, DataplaneError>;
    /// The capacity of each policy map.
    fn capacity(&self) -> u32;
    /// The time to retune a bucket to `v` with: the clock the data plane
    /// meters such a bucket with.
    fn bucket_now(&self, v: &PolicyValue) -> u64 {
        let _ = v;
        ktime_now_ns()
    }
}

fn map_name(kind: MapKind) -> &'static str {
    match kind {
        MapKind::Base => MAP_POLICIES,
        MapKind::Override => MAP_OVERRIDES,
    }
}

/// The classifier's maps, taken out of the loaded object.
pub struct KernelMaps {
    policies: HashMap<MapData, FlowKey, PolicyValue>,
    overrides: HashMap<MapData, FlowKey, PolicyValue>,
    levels: HashMap<MapData, u64, u32>,
    counters: PerCpuArray<MapData, Counters>,
    runtime: Array<MapData, u64>,
    /// The last tenant-level generation written to `runtime`.
    levels_gen: u64,
    /// The kernel tick (`sys::tick_ns`, which the loader also hands the
    /// data plane).
    tick_ns: Option<u64>,
    capacity: u32,
}

impl KernelMaps {
    /// Takes the maps out of `ebpf`.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Missing`] when the object lacks a map.
    pub fn take(ebpf: &mut aya::Ebpf, capacity: u32) -> Result<Self, DataplaneError> {
        fn take<T: TryFrom<aya::maps::Map>>(
            ebpf: &mut aya::Ebpf,
            map: &'static str,
        ) -> Result<T, DataplaneError> {
            ebpf.take_map(map)
                .and_then(|m| T::try_from(m).ok())
                .ok_or(DataplaneError::Missing { map })
        }
        Ok(KernelMaps {
            policies: take(ebpf, MAP_POLICIES)?,
            overrides: take(ebpf, MAP_OVERRIDES)?,
            levels: take(ebpf, MAP_TENANT_LEVELS)?,
            counters: take(ebpf, MAP_COUNTERS)?,
            runtime: take(ebpf, MAP_RUNTIME)?,
            levels_gen: 0,
            tick_ns: crate::sys::tick_ns(),
            capacity,
        })
    }

    fn map(&self, kind: MapKind) -> &HashMap<MapData, FlowKey, PolicyValue> {
        match kind {
            MapKind::Base => &self.policies,
            MapKind::Override => &self.overrides,
        }
    }

    fn map_mut(&mut self, kind: MapKind) -> &mut HashMap<MapData, FlowKey, PolicyValue> {
        match kind {
            MapKind::Base => &mut self.policies,
            MapKind::Override => &mut self.overrides,
        }
    }

    fn classify(&self, op: &'static str, map: &'static str, e: MapError) -> DataplaneError {
        if let MapError::SyscallError(s) = &e {
            // A hash map at capacity answers E2BIG to a new key (htab_map_update_elem).
            if s.io_error.raw_os_error() == Some(libc::E2BIG) {
                return DataplaneError::Full { map, capacity: self.capacity };
            }
        }
        DataplaneError::Map { op, map, source: e }
    }
}

impl Dataplane for KernelMaps {
    fn read(&self, kind: MapKind, key: &FlowKey) -> Result<Option<PolicyValue>, DataplaneError> {
        match self.map(kind).get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(self.classify("read policy", map_name(kind), e)),
        }
    }

    fn write(
        &mut self,
        kind: MapKind,
        key: &FlowKey,
        v: &PolicyValue,
    ) -> Result<(), DataplaneError> {
        let r = self.map_mut(kind).insert(key, v, 0);
        r.map_err(|e| self.classify("write policy", map_name(kind), e))
    }

    fn delete(&mut self, kind: MapKind, key: &FlowKey) -> Result<(), DataplaneError> {
        let r = absent_is_removed(self.map_mut(kind).remove(key));
        r.map_err(|e| self.classify("delete policy", map_name(kind), e))
    }

    /// Also advances the tenant-level generation, after the mask is in
    /// place, so the data plane reads it again for flows it has cached.
    fn set_mask(&mut self, tenant: u64, mask: u32) -> Result<(), DataplaneError> {
        let r = if mask == 0 {
            absent_is_removed(self.levels.remove(&tenant))
        } else {
            self.levels.insert(tenant, mask, 0)
        };
        r.map_err(|e| self.classify("set tenant levels", MAP_TENANT_LEVELS, e))?;
        let next = self.levels_gen.wrapping_add(1);
        self.runtime
            .set(RUNTIME_LEVELS_GEN, next, 0)
            .map_err(|e| self.classify("advance the level generation", MAP_RUNTIME, e))?;
        self.levels_gen = next;
        Ok(())
    }

    fn entries(&self, kind: MapKind) -> Result<Vec<(FlowKey, PolicyValue)>, DataplaneError> {
        self.map(kind)
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.classify("list policies", map_name(kind), e))
    }

    fn masks(&self) -> Result<Vec<(u64, u32)>, DataplaneError> {
        self.levels
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.classify("list tenant levels", MAP_TENANT_LEVELS, e))
    }

    fn counters(&self) -> Result<CounterTotals, DataplaneError> {
        let mut totals = [[0u64; Counter::COUNT]; 2];
        for dir in Direction::ALL {
            let per_cpu = self
                .counters
                .get(&(dir as u32), 0)
                .map_err(|e| self.classify("read counters", MAP_COUNTERS, e))?;
            for cpu in per_cpu.iter() {
                for (t, v) in totals[dir as usize].iter_mut().zip(cpu.values) {
                    *t = t.wrapping_add(v);
                }
            }
        }
        Ok(totals)
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }

    /// For a bucket on the tick clock, `CLOCK_MONOTONIC` half a tick ago,
    /// rounded down to the data plane's tick grid, so a retuned bucket does
    /// not wait for the tick clock to catch up (up to a tick of tokens
    /// short), even when a timer interrupt runs late and jiffies lag, and
    /// gets at most about a tick of tokens extra. Before the data plane has
    /// measured its offset, one tick earlier than now.
    fn bucket_now(&self, v: &PolicyValue) -> u64 {
        let now = ktime_now_ns();
        let Some(tick) = self.tick_ns else {
            return now;
        };
        if !bucket::on_tick_clock(v.interval_ns, v.tolerance_ns, bucket::tick_clock_min_ns(tick)) {
            return now;
        }
        match self.runtime.get(&RUNTIME_CLOCK_OFFSET, 0) {
            Ok(offset) if offset != 0 => {
                bucket::tick_floor(now.saturating_sub(tick / 2), offset, tick)
            }
            _ => now.saturating_sub(tick),
        }
    }
}

/// A removal of a key that was not there counts as done.
fn absent_is_removed(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// An in-memory data plane for tests of the store, with fault injection.
#[derive(Debug, Default)]
pub struct MemoryMaps {
    /// Entries per map.
    pub maps: StdHashMap<(MapKind, FlowKey), PolicyValue>,
    /// Tenant masks.
    pub levels: StdHashMap<u64, u32>,
    /// Capacity of each policy map.
    pub capacity: u32,
    /// When set, mask writes fail (to test rollback).
    pub fail_masks: bool,
}

impl MemoryMaps {
    /// An empty data plane with room for `capacity` entries per map.
    pub fn new(capacity: u32) -> Self {
        MemoryMaps { capacity, ..Default::default() }
    }
}

impl Dataplane for MemoryMaps {
    fn read(&self, kind: MapKind, key: &FlowKey) -> Result<Option<PolicyValue>, DataplaneError> {
        Ok(self.maps.get(&(kind, *key)).copied())
    }

    fn write(
        &mut self,
        kind: MapKind,
        key: &FlowKey,
        v: &PolicyValue,
    ) -> Result<(), DataplaneError> {
        let used = self.maps.keys().filter(|(k, _)| *k == kind).count();
        if !self.maps.contains_key(&(kind, *key)) && used >= self.capacity as usize {
            return Err(DataplaneError::Full { map: map_name(kind), capacity: self.capacity });
        }
        self.maps.insert((kind, *key), *v);
        Ok(())
    }

    fn delete(&mut self, kind: MapKind, key: &FlowKey) -> Result<(), DataplaneError> {
        self.maps.remove(&(kind, *key));
        Ok(())
    }

    fn set_mask(&mut self, tenant: u64, mask: u32) -> Result<(), DataplaneError> {
        if self.fail_masks {
            return Err(DataplaneError::Missing { map: MAP_TENANT_LEVELS });
        }
        if mask == 0 {
            self.levels.remove(&tenant);
        } else {
            self.levels.insert(tenant, mask);
        }
        Ok(())
    }

    fn entries(&self, kind: MapKind) -> Result<Vec<(FlowKey, PolicyValue)>, DataplaneError> {
        Ok(self.maps.iter().filter(|((k, _), _)| *k == kind).map(|((_, f), v)| (*f, *v)).collect())
    }

    fn masks(&self) -> Result<Vec<(u64, u32)>, DataplaneError> {
        Ok(self.levels.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn counters(&self) -> Result<CounterTotals, DataplaneError> {
        Ok([[0; Counter::COUNT]; 2])
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// The current `CLOCK_MONOTONIC` time in nanoseconds: the clock behind
/// `bpf_ktime_get_ns`, so bucket arithmetic in user space lines up with the
/// kernel's.
pub fn ktime_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and output pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}
