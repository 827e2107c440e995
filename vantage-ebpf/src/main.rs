//! The vantage data plane: a tc classifier that admits or drops each packet
//! by its tenant's most specific rate-limit policy.
//!
//! Per packet, in order: [`parse`] the headers into a [`parse::Packet`],
//! [`identity`] finds the tenant (the cgroup v2 of the owning local socket),
//! [`policy::resolve`] walks the ten precedence levels, and [`policy::meter`]
//! takes a token from the matched policy's bucket, at a time from
//! [`clock`]. Anything that cannot be parsed, and every internal failure, is
//! admitted and counted (fail-open).
//! The program never modifies a packet; an admitted packet continues with
//! `TC_ACT_UNSPEC`, which lets programs attached after it run.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic intrinsics; see policy::meter")]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys passed by reference stay in one stack slot; passing them by value changes \
              the code enough to push the verifier past its complexity limit"
)]

mod clock;
mod identity;
mod maps;
mod parse;
mod policy;

use aya_ebpf::{macros::classifier, programs::TcContext};
use vantage_common::{Config, Counter, Direction, FlowKey, TC_ACT_SHOT, TC_ACT_UNSPEC};

use crate::{
    maps::{bump, counters, emit_drop_event},
    policy::Meter,
};

/// Load-time settings, rewritten by the daemon before the program loads.
///
/// The defaults only matter to a loader that does not set it: offsets of 0
/// make every cgroup read fail, which fails open, and every bucket uses the
/// precise clock.
#[no_mangle]
static CONFIG: Config = Config {
    sock_cgroup_off: 0,
    cgroup_kn_off: 0,
    kn_id_off: 0,
    legacy_flow_keys: 0,
    drop_event_sample_n: 1,
    raw_ip: 0,
    identity_ttl_ticks: 1,
    tick_ns: 0,
    tick_clock_min_ns: u64::MAX,
};

/// Reads the configuration; volatile so the compiler does not fold the
/// placeholder values above into the code.
#[inline(always)]
fn config() -> Config {
    // SAFETY: CONFIG is a plain static of integers.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

#[classifier]
pub fn vantage_ingress(ctx: TcContext) -> i32 {
    classify(&ctx, Direction::Ingress)
}

#[classifier]
pub fn vantage_egress(ctx: TcContext) -> i32 {
    classify(&ctx, Direction::Egress)
}

/// Does nothing and lets every packet through: the baseline benchmarks
/// measure the real programs against, loaded only by them, never attached.
#[classifier]
pub fn vantage_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn classify(ctx: &TcContext, dir: Direction) -> i32 {
    let Some(c) = counters(dir) else {
        return TC_ACT_UNSPEC;
    };
    bump(c, Counter::Seen);

    if admit(ctx, dir, c) {
        bump(c, Counter::Admitted);
        TC_ACT_UNSPEC
    } else {
        bump(c, Counter::Dropped);
        TC_ACT_SHOT
    }
}

/// Decides one packet; `false` only when a token bucket says drop.
#[inline(always)]
fn admit(ctx: &TcContext, dir: Direction, c: *mut vantage_common::Counters) -> bool {
    let cfg = config();

    // Parse: whatever the parser cannot make sense of passes.
    let Ok(pkt) = parse::parse(ctx, cfg.raw_ip != 0) else {
        bump(c, Counter::FailOpenParse);
        return true;
    };

    // Identify the tenant.
    let (cgroup_id, may_have_policy) = match identity::tenant(ctx, dir, &pkt, &cfg, c) {
        Ok((0, _)) => {
            bump(c, Counter::NoTenant);
            return true;
        }
        Ok(t) => t,
        Err(()) => {
            bump(c, Counter::FailOpenInternal);
            return true;
        }
    };
    if !may_have_policy {
        bump(c, Counter::NoPolicy);
        return true;
    }

    // Resolve the effective policy.
    let flow = if cfg.legacy_flow_keys != 0 {
        FlowKey::tenant(cgroup_id)
    } else {
        FlowKey {
            cgroup_id,
            http_path_hash: pkt.http_path_hash,
            dst_port: pkt.dst_port,
            proto: pkt.proto,
            http_method: pkt.http_method,
        }
    };
    let Some((level, value)) = policy::resolve(&flow) else {
        bump(c, Counter::NoPolicy);
        return true;
    };

    // Meter it.
    match policy::meter(value, &cfg) {
        (Meter::Conform, _) => true,
        (Meter::Exceed, now) => {
            emit_drop_event(c, &cfg, now, &flow, level, dir, ctx.len());
            false
        }
        (Meter::Contended, _) => {
            bump(c, Counter::FailOpenInternal);
            true
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that
    // could get here, so this loop is never executed.
    loop {}
}

/// The kernel checks this string before allowing GPL-only helpers such as
/// `bpf_probe_read_kernel`; "Dual MIT/GPL" is GPL compatible.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
