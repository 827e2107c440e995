//! The few raw system interfaces aya does not wrap: removing a clsact
//! qdisc over rtnetlink, blocking and waiting for shutdown signals, and
//! reading effective capabilities.

use std::{io, mem::size_of};

/// Removes the clsact qdisc (and with it every netlink tc filter) from
/// `iface`, as `tc qdisc del dev IFACE clsact` would.
///
/// # Errors
///
/// The interface lookup, socket or kernel error.
pub fn delete_clsact(iface: &str) -> io::Result<()> {
    let c_iface = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }

    // nlmsghdr (16) + tcmsg (20) + TCA_KIND attribute ("clsact\0", padded).
    const KIND: &[u8] = b"clsact\0";
    let attr_len = 4 + KIND.len();
    let total = 16 + 20 + attr_len.next_multiple_of(4);
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_DELQDISC.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0xffff_0000u32.to_ne_bytes()); // handle ffff:
    msg.extend_from_slice(&0xffff_fff1u32.to_ne_bytes()); // parent TC_H_CLSACT
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&libc::TCA_KIND.to_ne_bytes());
    msg.extend_from_slice(KIND);
    msg.resize(total, 0);

    // SAFETY: plain socket syscalls on a descriptor owned by this function.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            if libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = [0u8; 4096];
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            // The ack is an NLMSG_ERROR whose error field is 0 on success.
            let n = n as usize;
            if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
                let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
                if err != 0 {
                    return Err(io::Error::from_raw_os_error(-err));
                }
            }
            Ok(())
        })();
        libc::close(fd);
        result
    }
}

/// A set holding SIGINT and SIGTERM.
fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it
/// spawns afterwards, so that [`wait_for_shutdown_signal`] receives them.
/// Call it before spawning any thread.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_signals();
    // SAFETY: a valid, initialised set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits until SIGINT or SIGTERM arrives; returns its name.
pub fn wait_for_shutdown_signal() -> io::Result<&'static str> {
    let set = shutdown_signals();
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: valid set and output pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        match rc {
            0 if sig == libc::SIGINT => return Ok("SIGINT"),
            0 => return Ok("SIGTERM"),
            libc::EINTR => continue,
            rc => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

/// Sends SIGTERM to this process, which ends [`wait_for_shutdown_signal`].
pub fn request_shutdown() {
    // SAFETY: signalling our own process.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}

/// The effective capability set of this process, as a bit mask.
pub fn effective_capabilities() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))
}

/// Capability numbers from `linux/capability.h`.
pub mod cap {
    /// CAP_NET_ADMIN: attach tc programs, manage qdiscs.
    pub const NET_ADMIN: u32 = 12;
    /// CAP_SYS_ADMIN: implies the two below on kernels before 5.8.
    pub const SYS_ADMIN: u32 = 21;
    /// CAP_PERFMON: pointer reads (`bpf_probe_read_kernel`) in programs.
    pub const PERFMON: u32 = 38;
    /// CAP_BPF: create maps and load programs.
    pub const BPF: u32 = 39;
}

const _: () = assert!(size_of::<libc::nlmsghdr>() == 16);

/// Length of a kernel tick (a jiffy) in nanoseconds.
///
/// The kernel reports one tick as the resolution of
/// `CLOCK_MONOTONIC_COARSE`, the clock its tick advances. `None` when the
/// answer is not a plausible tick (HZ between 24 and 10,000).
pub fn tick_ns() -> Option<u64> {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `res` is a valid timespec for the call to fill.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return None;
    }
    let ns = u64::try_from(res.tv_sec).ok()?.checked_mul(1_000_000_000)?
        + u64::try_from(res.tv_nsec).ok()?;
    (100_000..=41_666_667).contains(&ns).then_some(ns)
}
