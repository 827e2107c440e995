//! Tenant identity: the cgroup v2 id of the local socket that owns a packet.
//!
//! Egress packets carry their socket, and `bpf_skb_cgroup_id` reads its
//! cgroup. Ingress packets have no socket yet at tc, so the receiving socket
//! is looked up (`bpf_sk_lookup_tcp`/`_udp`, which find established and
//! listening sockets, including dual-stack IPv6 listeners for IPv4 packets)
//! and its `sk_cgrp_data.cgroup->kn->id` is read with
//! `bpf_probe_read_kernel`, at offsets the daemon took from kernel BTF.
//!
//! The answer is cached per ingress flow in an LRU map. The cache stays
//! correct because:
//! - a socket's cgroup never changes after creation (the kernel sets
//!   `sk_cgrp_data` in `cgroup_sk_alloc` and moving the process does not
//!   touch it), so a cached answer is wrong only once the 4-tuple belongs
//!   to a different socket;
//! - a new TCP connection on a reused 4-tuple starts with a SYN, and a SYN
//!   is always looked up afresh;
//! - every entry, negative ones included, expires after the configured TTL
//!   (1 s by default, counted in kernel ticks, which cost nothing to read),
//!   which bounds how long a UDP 4-tuple taken over by a
//!   new socket, or a socket bound after a miss, can be misattributed;
//! - an entry evicted by the LRU is simply looked up again.
//!
//! An entry also remembers whether its tenant had any enabled policy, so a
//! warm flow of an unlimited tenant costs one map lookup in all. The answer
//! is read again whenever the daemon has changed any tenant's levels since
//! (`RUNTIME_LEVELS_GEN` moved on).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    helpers::generated::{
        bpf_probe_read_kernel, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release,
        bpf_skb_cgroup_id,
    },
    programs::TcContext,
};
use vantage_common::{
    Config, Counter, Counters, Direction, IdentityEntry, IdentityKey, PROTO_TCP, PROTO_UDP,
};

use crate::{
    clock,
    maps::{bump, levels_gen, tenant_levels, IDENTITY},
    parse::Packet,
};

/// The tenant owning `pkt` (0 when no local socket owns it), and whether it
/// may have an enabled policy: `false` only when the identity cache knows,
/// as of the current tenant-level generation, that it has none, which lets
/// a packet of an unlimited tenant skip policy resolution altogether.
///
/// Errors are internal failures (a failed kernel read), which fail open.
#[inline(always)]
pub fn tenant(
    ctx: &TcContext,
    dir: Direction,
    pkt: &Packet,
    cfg: &Config,
    c: *mut Counters,
) -> Result<(u64, bool), ()> {
    if let Direction::Egress = dir {
        // SAFETY: the helper only reads the skb's socket.
        return Ok((unsafe { bpf_skb_cgroup_id(ctx.skb.skb) }, true));
    }
    if pkt.proto != PROTO_TCP && pkt.proto != PROTO_UDP || pkt.dport_be == 0 {
        return Ok((0, false));
    }

    let key = IdentityKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport_be,
        dport: pkt.dport_be,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let now = clock::tick();
    if !pkt.tcp_syn {
        if let Some(entry) = IDENTITY.get_ptr_mut(&key) {
            // SAFETY: a map value pointer, valid for this program run; CPUs
            // refreshing one entry at once write the same values.
            unsafe {
                if (*entry).expires_tick > now {
                    let cgroup_id = (*entry).cgroup_id;
                    if cgroup_id == 0 {
                        return Ok((0, false));
                    }
                    let gen = levels_gen();
                    if (*entry).levels_gen != gen {
                        (*entry).levels = tenant_levels(cgroup_id);
                        (*entry).levels_gen = gen;
                    }
                    return Ok((cgroup_id, (*entry).levels != 0));
                }
            }
        }
    }

    bump(c, Counter::IdentityLookups);
    let cgroup_id = lookup(ctx, pkt, cfg)?;
    // The generation is read before the mask: a change racing with this
    // leaves an old generation behind, and the next packet reads again.
    let levels_gen = levels_gen();
    let levels = if cgroup_id == 0 { 0 } else { tenant_levels(cgroup_id) };
    let entry = IdentityEntry {
        cgroup_id,
        expires_tick: now + cfg.identity_ttl_ticks,
        levels_gen,
        levels,
        _pad: 0,
    };
    // A full or failing cache only costs a lookup next time.
    let _ = IDENTITY.insert(&key, &entry, 0);
    Ok((cgroup_id, true))
}

/// Looks up the receiving socket of `pkt` in the current network namespace
/// and reads its cgroup id.
#[inline(always)]
fn lookup(ctx: &TcContext, pkt: &Packet, cfg: &Config) -> Result<u64, ()> {
    // SAFETY: bpf_sock_tuple is plain data; all-zero is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let tuple_len = if pkt.family == 4 {
        // SAFETY: writing plain integers into a union field.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = pkt.saddr[0];
            t.daddr = pkt.daddr[0];
            t.sport = pkt.sport_be;
            t.dport = pkt.dport_be;
        }
        4 + 4 + 2 + 2
    } else {
        // SAFETY: as above.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            t.saddr = pkt.saddr;
            t.daddr = pkt.daddr;
            t.sport = pkt.sport_be;
            t.dport = pkt.dport_be;
        }
        size_of::<bpf_sock_tuple>() as u32
    };

    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the tuple lives on the stack for the duration of the call.
    let sk = unsafe {
        if pkt.proto == PROTO_TCP {
            bpf_sk_lookup_tcp(ctx.skb.skb as *mut _, &mut tuple, tuple_len, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.skb.skb as *mut _, &mut tuple, tuple_len, netns, 0)
        }
    };
    if sk.is_null() {
        return Ok(0);
    }

    let id = socket_cgroup_id(sk as *const u8, cfg);
    // SAFETY: `sk` came from a successful lookup and is released once.
    unsafe { bpf_sk_release(sk as *mut _) };
    id
}

/// Reads `sk->sk_cgrp_data.cgroup->kn->id`.
///
/// Verifier: pointer arithmetic on the referenced socket pointer is
/// rejected, so its value is copied through a stack slot with
/// `bpf_probe_read_kernel`, which yields a plain address the rest of the
/// chain can be probe-read from.
#[inline(always)]
fn socket_cgroup_id(sk: *const u8, cfg: &Config) -> Result<u64, ()> {
    let slot = sk;
    let addr: u64 = probe_read(&slot as *const *const u8 as u64)?;
    let cgroup: u64 = probe_read(addr + cfg.sock_cgroup_off as u64)?;
    if cgroup == 0 {
        return Err(());
    }
    let kn: u64 = probe_read(cgroup + cfg.cgroup_kn_off as u64)?;
    if kn == 0 {
        return Err(());
    }
    probe_read(kn + cfg.kn_id_off as u64)
}

#[inline(always)]
fn probe_read(addr: u64) -> Result<u64, ()> {
    let mut out: u64 = 0;
    // SAFETY: bpf_probe_read_kernel tolerates any address; it fails instead
    // of faulting.
    let ret = unsafe { bpf_probe_read_kernel(&mut out as *mut u64 as *mut _, 8, addr as *const _) };
    if ret == 0 {
        Ok(out)
    } else {
        Err(())
    }
}
