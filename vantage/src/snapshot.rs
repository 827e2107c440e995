//! `GET /debug/snapshot`: one JSON document with what an operator checks
//! first — counters, host load, the tenants dropping most, adaptive state.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use serde_json::{json, Value};
use vantage_common::{Counter, Direction, FlowKey, PolicyValue};

use crate::{
    adaptive,
    api::{ApiContext, ApiError},
    host::{self, CpuWindow},
    maps::{CounterTotals, Dataplane},
    policy::MapKind,
    tenant::TenantId,
};

/// Counters kept by the drop event consumer.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Events read from the ring buffer.
    pub received: AtomicU64,
}

/// Static settings shown in the snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    /// Interface.
    pub iface: String,
    /// Direction(s).
    pub direction: crate::cli::AttachDirection,
    /// Flow key mode.
    pub flow_keys_mode: crate::cli::FlowKeysMode,
    /// Validation mode.
    pub policy_validation_mode: crate::cli::ValidationMode,
    /// Capacity of each policy map.
    pub policy_capacity: u32,
    /// Capacity of the identity cache.
    pub identity_capacity: u32,
    /// Drop event sampling.
    pub drop_event_sample_n: u32,
    /// Whether the event consumer runs.
    pub drop_event_log_enabled: bool,
    /// Per-flow metrics.
    pub metrics_dimensional_enabled: bool,
    /// Top tenants listed.
    pub debug_top_tenants: usize,
}

/// What /metrics and /debug/snapshot read besides the maps.
pub struct Observed {
    /// Host CPU over `--cpu-window-ms`.
    pub cpu: CpuWindow,
    /// Drop event consumer counters.
    pub events: Arc<EventStats>,
    /// Adaptive controller state.
    pub adaptive: Arc<adaptive::Status>,
    /// Settings.
    pub settings: Settings,
    /// When the daemon started.
    pub started: Instant,
}

/// Everything read from the owner for one snapshot or scrape.
pub struct MapView {
    /// Global counters.
    pub counters: CounterTotals,
    /// Entries with their counters, per map.
    pub entries: Vec<(MapKind, FlowKey, PolicyValue)>,
    /// Tenants with a base policy.
    pub tenants: usize,
    /// Entries per map in the model.
    pub base: usize,
    /// Override entries in the model.
    pub overrides: usize,
}

/// Reads the maps through the owner.
pub fn read_maps<D: Dataplane + 'static>(
    ctx: &ApiContext<D>,
    with_entries: bool,
) -> Result<MapView, ApiError> {
    let view = ctx.owner.call(move |s| -> Result<MapView, crate::maps::DataplaneError> {
        let dp = s.dataplane();
        let mut entries = Vec::new();
        if with_entries {
            for kind in [MapKind::Override, MapKind::Base] {
                entries.extend(dp.entries(kind)?.into_iter().map(|(k, v)| (kind, k, v)));
            }
        }
        let set = s.policies();
        Ok(MapView {
            counters: dp.counters()?,
            entries,
            tenants: set.tenants(MapKind::Base).len(),
            base: set.len(MapKind::Base),
            overrides: set.len(MapKind::Override),
        })
    })?;
    view.map_err(|e| ApiError { status: 500, message: crate::error_chain(&e), allow: None })
}

/// Builds the snapshot document.
pub fn render<D: Dataplane + 'static>(ctx: &ApiContext<D>) -> Result<Value, ApiError> {
    let obs = &ctx.observe;
    let view = read_maps(ctx, true)?;

    let counters: BTreeMap<&str, BTreeMap<&str, u64>> = Direction::ALL
        .iter()
        .map(|d| {
            let c =
                Counter::ALL.iter().map(|c| (c.name(), view.counters[*d as usize][*c as usize]));
            (d.name(), c.collect())
        })
        .collect();

    let mut by_tenant: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (_, k, v) in &view.entries {
        let e = by_tenant.entry(k.cgroup_id).or_default();
        e.0 += v.dropped;
        e.1 += v.admitted;
    }
    let mut top: Vec<_> = by_tenant.into_iter().filter(|(_, (d, _))| *d > 0).collect();
    top.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    top.truncate(obs.settings.debug_top_tenants);
    let top: Vec<Value> = top
        .into_iter()
        .map(|(t, (d, a))| json!({ "tenant": TenantId(t), "dropped": d, "admitted": a }))
        .collect();

    let lost: u64 = Direction::ALL
        .iter()
        .map(|d| view.counters[*d as usize][Counter::EventsLost as usize])
        .sum();
    let emitted: u64 = Direction::ALL
        .iter()
        .map(|d| view.counters[*d as usize][Counter::EventsEmitted as usize])
        .sum();

    Ok(json!({
        "version": crate::VERSION,
        "uptime_seconds": obs.started.elapsed().as_secs(),
        "settings": obs.settings,
        "counters": counters,
        "policies": {
            "base": view.base,
            "override": view.overrides,
            "tenants_with_policies": view.tenants,
            "capacity": obs.settings.policy_capacity,
        },
        "host": {
            "cpu_percent": round2(obs.cpu.percent()),
            "cpu_window_ms": obs.cpu.window().as_millis() as u64,
            "memory_percent": round2(host::memory_percent().unwrap_or(0.0)),
        },
        "top_tenants_by_drops": top,
        "drop_events": {
            "emitted": emitted,
            "lost": lost,
            "received": obs.events.received.load(Ordering::Relaxed),
            "consumer_enabled": obs.settings.drop_event_log_enabled,
        },
        "adaptive": obs.adaptive.to_json(),
    }))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
