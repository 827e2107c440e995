//! `GET /metrics`: Prometheus text exposition.
//!
//! Aggregate families only by default; with `--metrics-dimensional-enabled`
//! one series per policy entry and outcome, labelled by tenant, protocol,
//! port, method, path hash and level.

use std::fmt::Write;

use vantage_common::{Counter, Direction};

use crate::{
    api::{ApiContext, ApiError},
    maps::Dataplane,
    policy::{method_name, proto_name},
    snapshot::read_maps,
};

/// Writes one family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders the exposition.
pub fn render<D: Dataplane + 'static>(ctx: &ApiContext<D>) -> Result<String, ApiError> {
    let obs = &ctx.observe;
    let dimensional = obs.settings.metrics_dimensional_enabled;
    let view = read_maps(ctx, dimensional)?;
    let c = |d: Direction, k: Counter| view.counters[d as usize][k as usize];
    let mut out = String::with_capacity(4096 + view.entries.len() * 400);

    family(&mut out, "vantage_build_info", "gauge", "Version and git revision of the daemon.");
    let _ = writeln!(out, "vantage_build_info{{version=\"{}\"}} 1", crate::VERSION);

    family(&mut out, "vantage_packets_seen_total", "counter", "Packets the classifier ran on.");
    for d in Direction::ALL {
        let _ = writeln!(
            out,
            "vantage_packets_seen_total{{direction=\"{}\"}} {}",
            d.name(),
            c(d, Counter::Seen)
        );
    }
    family(&mut out, "vantage_packets_total", "counter", "Packets by verdict.");
    for d in Direction::ALL {
        for (outcome, k) in [("admitted", Counter::Admitted), ("dropped", Counter::Dropped)] {
            let _ = writeln!(
                out,
                "vantage_packets_total{{direction=\"{}\",outcome=\"{outcome}\"}} {}",
                d.name(),
                c(d, k)
            );
        }
    }
    family(
        &mut out,
        "vantage_fail_open_total",
        "counter",
        "Packets admitted because they could not be parsed or an internal step failed.",
    );
    for d in Direction::ALL {
        for (reason, k) in
            [("parse", Counter::FailOpenParse), ("internal", Counter::FailOpenInternal)]
        {
            let _ = writeln!(
                out,
                "vantage_fail_open_total{{direction=\"{}\",reason=\"{reason}\"}} {}",
                d.name(),
                c(d, k)
            );
        }
    }
    for (name, k, help) in [
        ("vantage_packets_no_tenant_total", Counter::NoTenant, "Packets no local socket owns."),
        (
            "vantage_packets_no_policy_total",
            Counter::NoPolicy,
            "Packets of tenants without an effective policy.",
        ),
        (
            "vantage_identity_lookups_total",
            Counter::IdentityLookups,
            "Socket lookups made on identity cache misses.",
        ),
    ] {
        family(&mut out, name, "counter", help);
        for d in Direction::ALL {
            let _ = writeln!(out, "{name}{{direction=\"{}\"}} {}", d.name(), c(d, k));
        }
    }

    family(
        &mut out,
        "vantage_drop_events_total",
        "counter",
        "Sampled drop events written to or lost from the ring buffer.",
    );
    for (outcome, k) in [("emitted", Counter::EventsEmitted), ("lost", Counter::EventsLost)] {
        let total: u64 = Direction::ALL.iter().map(|d| c(*d, k)).sum();
        let _ = writeln!(out, "vantage_drop_events_total{{outcome=\"{outcome}\"}} {total}");
    }
    family(
        &mut out,
        "vantage_drop_events_received_total",
        "counter",
        "Drop events read by the consumer.",
    );
    let _ = writeln!(
        out,
        "vantage_drop_events_received_total {}",
        obs.events.received.load(std::sync::atomic::Ordering::Relaxed)
    );

    family(&mut out, "vantage_policies", "gauge", "Policy entries by map.");
    let _ = writeln!(out, "vantage_policies{{map=\"base\"}} {}", view.base);
    let _ = writeln!(out, "vantage_policies{{map=\"override\"}} {}", view.overrides);
    family(&mut out, "vantage_policy_capacity", "gauge", "Capacity of each policy map.");
    let _ = writeln!(out, "vantage_policy_capacity {}", obs.settings.policy_capacity);
    family(&mut out, "vantage_tenants", "gauge", "Tenants with at least one base policy.");
    let _ = writeln!(out, "vantage_tenants {}", view.tenants);

    obs.adaptive.write_metrics(&mut out);

    family(&mut out, "vantage_host_cpu_percent", "gauge", "Host CPU use over --cpu-window-ms.");
    let _ = writeln!(out, "vantage_host_cpu_percent {}", obs.cpu.percent());

    if dimensional {
        family(
            &mut out,
            "vantage_policy_packets_total",
            "counter",
            "Packets admitted or dropped by each policy entry.",
        );
        for (kind, k, v) in &view.entries {
            let level = crate::policy::level_of(*kind, k);
            let labels = format!(
                "tenant=\"cg:{}\",proto=\"{}\",port=\"{}\",method=\"{}\",path_hash=\"{}\",level=\"{}\"",
                k.cgroup_id,
                proto_name(k.proto),
                k.dst_port,
                method_name(k.http_method).unwrap_or("any"),
                k.http_path_hash,
                level.number()
            );
            let _ = writeln!(
                out,
                "vantage_policy_packets_total{{{labels},outcome=\"admitted\"}} {}",
                v.admitted
            );
            let _ = writeln!(
                out,
                "vantage_policy_packets_total{{{labels},outcome=\"dropped\"}} {}",
                v.dropped
            );
        }
    }
    Ok(out)
}
