//! The drop event consumer: a thread that drains the ring buffer and logs
//! each sampled drop on one line.

use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
};

use aya::maps::{MapData, RingBuf};
use log::{info, warn};
use vantage_common::{Direction, DropEvent, Level};

use crate::{
    policy::{method_name, proto_name},
    snapshot::EventStats,
    tenant::TenantId,
};

/// One readable line for an event.
pub fn describe(e: &DropEvent) -> String {
    let f = &e.flow;
    let level = Level::from_number(e.level).map_or("unknown", Level::name);
    let mut s = format!(
        "drop: tenant {} {} {} port {}",
        TenantId(f.cgroup_id),
        Direction::from_index(e.direction).name(),
        proto_name(f.proto),
        f.dst_port
    );
    if let Some(m) = method_name(f.http_method) {
        s += &format!(" {m} path_hash {}", f.http_path_hash);
    }
    s += &format!(" len {} by level {} ({level})", e.packet_len, e.level);
    s
}

/// Starts the consumer; it stops within 200 ms of `stop` being set.
///
/// # Errors
///
/// The thread could not be spawned.
pub fn spawn(
    mut ring: RingBuf<MapData>,
    stats: Arc<EventStats>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name("drop-events".into()).spawn(move || {
        let fd = ring.as_raw_fd();
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, 200) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    warn!("drop events: poll: {e}");
                    return;
                }
            }
            while let Some(item) = ring.next() {
                if item.len() < size_of::<DropEvent>() {
                    continue;
                }
                // SAFETY: the kernel wrote a whole DropEvent (checked size);
                // read_unaligned copes with any alignment.
                let e: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                stats.received.fetch_add(1, Ordering::Relaxed);
                info!("{}", describe(&e));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_common::FlowKey;

    #[test]
    fn event_lines_name_tenant_flow_level_and_direction() {
        let e = DropEvent {
            timestamp_ns: 1,
            flow: FlowKey {
                cgroup_id: 42,
                proto: 6,
                dst_port: 8080,
                http_method: 1,
                http_path_hash: 7,
            },
            packet_len: 60,
            level: 6,
            direction: 0,
            _pad: [0; 2],
        };
        assert_eq!(
            describe(&e),
            "drop: tenant cg:42 ingress tcp port 8080 GET path_hash 7 len 60 by level 6 (base_exact)"
        );
    }
}
