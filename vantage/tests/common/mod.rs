//! Shared harness for vantage's integration tests.
//!
//! Every test isolates itself: it creates its own network namespace ([`Netns`]), its own cgroup
//! v2 directories ([`Cgroup`]) and its own temporary files ([`TempDir`]), all with unique names
//! ([`unique`]), and each of those is removed by a `Drop` guard, so cleanup also happens when a
//! test panics. Nothing here creates, changes or sends traffic over a host interface: veth pairs
//! are created directly inside test namespaces, and daemons run inside them via `nsenter`.
//!
//! Tests that need root and kernel support start with
//! `if !common::prerequisites() { return; }`, which skips them on a developer machine that lacks
//! something and fails them under CI (`CI=true`), where a silent skip would hide a broken setup.
//!
//! Also here: [`socket_in`] and friends create sockets owned by a given cgroup, [`Pkt`] builds
//! packets for `BPF_PROG_TEST_RUN`, [`Daemon`] runs the vantage binary in a namespace, [`http`]
//! talks to its API, and [`tcx_program_names`] / [`tc_filter_count`] inspect what is attached.

#![allow(dead_code, reason = "each integration test binary uses a different subset of the harness")]

pub mod gen;
pub mod traffic;

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::mem;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Prerequisites and names
// ---------------------------------------------------------------------------------------------

/// Returns whether the host can run the privileged tests; under `CI=true` a missing piece panics.
pub fn prerequisites() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (euid 0)".to_string());
    }
    if cgroup2_mount().is_none() {
        missing.push("a cgroup2 mount in /proc/mounts".to_string());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("/sys/kernel/btf/vmlinux (kernel BTF)".to_string());
    }
    for (tool, arg) in [("ip", "-V"), ("nsenter", "--version")] {
        let runs = Command::new(tool)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !runs {
            missing.push(format!("a runnable `{tool}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("missing {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("integration test prerequisites not met under CI: {reason}");
    }
    eprintln!("skipping: {reason}");
    false
}

/// Mount point of the cgroup v2 hierarchy, read from /proc/mounts (hybrid hosts mount it anywhere).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as 3-digit octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Returns `prefix` + 4 base-36 chars of the pid + 2 time-derived chars + a base-36 counter.
///
/// The pid and time parts have a fixed width, so names from different processes cannot collide
/// by concatenation; the time part guards against a recycled pid meeting a leftover from an
/// earlier run. With a prefix of at most 7 chars the result fits an interface name (15 chars)
/// for the first 36 names of a process, and with at most 6 chars for the first 1296.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    let mut name = prefix.to_string();
    push_base36(&mut name, std::process::id() % 36u32.pow(4), 4);
    push_base36(&mut name, (nanos >> 10) % (36 * 36), 2);
    push_base36(&mut name, n, 1);
    name
}

fn push_base36(out: &mut String, mut v: u32, min_width: usize) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = Vec::new();
    while v > 0 || buf.len() < min_width {
        buf.push(DIGITS[(v % 36) as usize]);
        v /= 36;
    }
    out.extend(buf.iter().rev().map(|&b| char::from(b)));
}

/// Runs a command, returning stdout on success and a message with its stderr on failure.
fn run_cmd(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------------------------

/// A named network namespace (`/run/netns/NAME`), deleted with everything in it on drop.
#[derive(Debug)]
pub struct Netns {
    /// Name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a fresh namespace with `lo` up.
    pub fn new() -> Netns {
        let mut last_err = String::new();
        // A name can only clash with a leftover of a crashed earlier run; a new name fixes that.
        for _ in 0..5 {
            let name = unique("vtns");
            match run_cmd("ip", &["netns", "add", &name]) {
                Ok(_) => {
                    // Constructed before the next step so that a failure still deletes it.
                    let ns = Netns { name };
                    ns.ip(&["link", "set", "lo", "up"]);
                    return ns;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("cannot create a network namespace: {last_err}");
    }

    /// Path of the namespace file, for `setns(2)` or `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME <args>` and returns stdout; panics with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_cmd("ip", &full).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `ip netns exec NAME <args>` and returns stdout or the failure message with stderr.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_cmd("ip", &full)
    }

    /// Runs `ip netns exec NAME <args>` and returns stdout; panics with stderr on failure.
    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Moves the calling thread into this namespace until the returned guard is dropped.
    ///
    /// Sockets keep the namespace they were created in, so a socket made under the guard stays
    /// usable after it. Forked children inherit the thread's namespace.
    pub fn enter_current_thread(&self) -> NetnsGuard {
        enter_netns(&self.name)
    }

    /// Links this namespace to `other` with a veth pair, addresses them (CIDR, e.g.
    /// "10.201.0.1/24") and brings both ends up; returns (name here, name in `other`).
    ///
    /// Only private (RFC 1918) IPv4 or unique-local (fc00::/7) IPv6 addresses are accepted, so a
    /// test can never address anything outside its own namespaces by mistake.
    pub fn veth_pair(&self, other: &Netns, addr_self: &str, addr_other: &str) -> (String, String) {
        assert_ne!(self.name, other.name, "veth_pair needs two different namespaces");
        let v6 = check_test_cidr(addr_self);
        assert_eq!(v6, check_test_cidr(addr_other), "veth ends need the same address family");
        let (a, b) = (unique("vte"), unique("vte"));
        // Created inside `self` with the peer placed directly in `other`: never on the host.
        let add = format!("link add {a} type veth peer name {b} netns {}", other.name);
        self.ip(&add.split(' ').collect::<Vec<_>>());
        for (ns, dev, addr) in [(self, &a, addr_self), (other, &b, addr_other)] {
            let mut args = vec!["addr", "add", addr, "dev", dev.as_str()];
            if v6 {
                // Skip duplicate address detection, which would hold the address back ~1-2 s.
                args.push("nodad");
            }
            ns.ip(&args);
            ns.ip(&["link", "set", dev, "up"]);
        }
        (a, b)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

/// Panics unless `cidr` is a private-range address with a prefix length; returns whether IPv6.
fn check_test_cidr(cidr: &str) -> bool {
    let (addr, len) =
        cidr.split_once('/').unwrap_or_else(|| panic!("{cidr:?}: expected ADDRESS/PREFIX_LEN"));
    len.parse::<u8>().unwrap_or_else(|e| panic!("{cidr:?}: bad prefix length: {e}"));
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) if v4.is_private() => false,
        Ok(IpAddr::V6(v6)) if (v6.segments()[0] & 0xfe00) == 0xfc00 => true,
        _ => panic!("{cidr:?}: test addresses must be RFC 1918 IPv4 or fc00::/7 IPv6"),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Stray processes (a daemon that outlived its guard) would keep the namespace alive.
        match run_cmd("ip", &["netns", "pids", &self.name]) {
            Ok(pids) => {
                for pid in pids.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            Err(e) => eprintln!("netns cleanup: {e}"),
        }
        if let Err(e) = run_cmd("ip", &["netns", "del", &self.name]) {
            eprintln!("netns cleanup: {e}");
        }
    }
}

/// Moves the calling thread into `/run/netns/<name>`; see [`Netns::enter_current_thread`].
fn enter_netns(name: &str) -> NetnsGuard {
    let previous: OwnedFd =
        File::open("/proc/thread-self/ns/net").expect("open /proc/thread-self/ns/net").into();
    let path = Path::new("/run/netns").join(name);
    let target = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: a valid namespace fd; setns only affects the calling thread.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns into {name}: {}", io::Error::last_os_error());
    }
    NetnsGuard { previous, _not_send: PhantomData }
}

/// Keeps the current thread in a namespace; restores the previous one on drop.
#[must_use = "the thread leaves the namespace when the guard is dropped"]
pub struct NetnsGuard {
    previous: OwnedFd,
    // setns is per thread, so the guard must be dropped on the thread that created it.
    _not_send: PhantomData<*const ()>,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: `previous` is an open namespace fd owned by the guard.
        if unsafe { libc::setns(self.previous.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // A thread stuck in a test namespace could make later code act on the wrong
            // interfaces; stopping here is safer than continuing (and drop may run mid-panic).
            eprintln!("cannot restore network namespace: {}", io::Error::last_os_error());
            std::process::abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cgroups
// ---------------------------------------------------------------------------------------------

/// A cgroup v2 directory made for one test; its processes are killed and it is removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    /// Directory in the cgroup2 hierarchy.
    pub path: PathBuf,
    /// Cgroup v2 id (the directory's inode number), as the kernel reports for sockets.
    pub id: u64,
}

impl Cgroup {
    /// Creates a cgroup directly below the cgroup2 mount.
    pub fn new() -> Cgroup {
        let root = cgroup2_mount().expect("no cgroup2 mount in /proc/mounts");
        Cgroup::create_in(&root)
    }

    /// Creates a child cgroup below this one (removed with its own guard, before the parent).
    pub fn child(&self) -> Cgroup {
        Cgroup::create_in(&self.path)
    }

    fn create_in(parent: &Path) -> Cgroup {
        let mut last_err = None;
        for _ in 0..5 {
            let path = parent.join(unique("vtcg"));
            match fs::create_dir(&path) {
                Ok(()) => {
                    let id = fs::metadata(&path)
                        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
                        .ino();
                    return Cgroup { path, id };
                }
                // Only a leftover of a crashed earlier run can clash; a new name fixes that.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => panic!("create cgroup {}: {e}", path.display()),
            }
        }
        panic!("cannot create a cgroup below {}: {last_err:?}", parent.display());
    }

    /// Pids currently in the cgroup (not its children).
    pub fn pids(&self) -> Vec<libc::pid_t> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Cgroup::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() {
            if let Err(e) = fs::write(&kill_file, "1") {
                eprintln!("cgroup cleanup: write {}: {e}", kill_file.display());
            }
        } else {
            for pid in self.pids() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Killed processes take a moment to leave, and rmdir fails with EBUSY until they have.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            remove_child_cgroups(&self.path);
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("cgroup cleanup: rmdir {}: {e}", self.path.display());
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Removes child cgroups bottom-up (a test may create some with plain mkdir).
fn remove_child_cgroups(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_child_cgroups(&entry.path());
            let _ = fs::remove_dir(entry.path());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets owned by a cgroup
// ---------------------------------------------------------------------------------------------

/// How long the parent waits for the forked helper in [`socket_in`].
const SOCKET_HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns a socket created by a process inside `cgroup`, in the calling thread's namespace.
///
/// The kernel records a socket's cgroup when the socket is created, so a forked child moves
/// itself into the cgroup, creates the socket and passes it back over a unix socket; the caller
/// can then bind, connect and send with it as usual. `ty` may include SOCK_NONBLOCK/CLOEXEC.
pub fn socket_in(cgroup: &Cgroup, domain: i32, ty: i32, protocol: i32) -> OwnedFd {
    // Everything the child needs is prepared here: after fork in a multi-threaded process the
    // child may only make async-signal-safe calls (no allocation, no locks, no panics).
    let procs =
        CString::new(cgroup.path.join("cgroup.procs").into_os_string().into_encoded_bytes())
            .expect("cgroup path contains a NUL byte");
    let (parent_end, child_end) = UnixStream::pair().expect("create unix socket pair");
    parent_end.set_read_timeout(Some(SOCKET_HELPER_TIMEOUT)).expect("set timeout on unix socket");
    let mut cmsg_space = CmsgBuf::new();

    // SAFETY: the child branch below only calls async-signal-safe functions and then _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        panic!("fork: {}", io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: child of fork; only async-signal-safe calls on data prepared before fork.
        unsafe { socket_helper_child(&procs, child_end.as_raw_fd(), domain, ty, protocol) };
    }
    // Closing our copy of the child's end lets recvmsg see EOF at once if the child dies early.
    drop(child_end);

    let received = recv_fd(parent_end.as_fd(), &mut cmsg_space);
    if received.is_err() {
        // The child may be stuck; it cannot be reaped otherwise. It is still our unreaped
        // child here, so its pid cannot have been reused.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            panic!("waitpid for socket helper: {e}");
        }
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if code != Some(0) {
        let what = match code {
            Some(2) => "open cgroup.procs".to_string(),
            Some(3) => "write to cgroup.procs (move into the cgroup)".to_string(),
            Some(4) => format!("socket({domain}, {ty}, {protocol})"),
            Some(5) => "sendmsg of the fd".to_string(),
            Some(c) => format!("unknown step (exit code {c})"),
            None => format!("nothing: it was killed (wait status {status:#x})"),
        };
        panic!(
            "socket helper for cgroup {} failed at: {what} (errno is not available across fork)",
            cgroup.path.display()
        );
    }
    received.unwrap_or_else(|e| panic!("receive socket from helper: {e}"))
}

/// Control-message buffer big enough for one fd, aligned for `cmsghdr`.
#[repr(C)]
struct CmsgBuf {
    _align: [libc::cmsghdr; 0],
    buf: [u8; 64],
}

impl CmsgBuf {
    fn new() -> CmsgBuf {
        CmsgBuf { _align: [], buf: [0; 64] }
    }
}

/// The forked child's side of [`socket_in`]; never returns.
///
/// # Safety
/// Must only be called in a freshly forked child.
unsafe fn socket_helper_child(
    procs: &CString,
    sock: RawFd,
    domain: i32,
    ty: i32,
    protocol: i32,
) -> ! {
    // SAFETY (whole block): only open/write/socket/sendmsg/_exit, all async-signal-safe, on
    // buffers that live on this stack or were allocated before fork.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            libc::_exit(2);
        }
        // "0" moves the writing process itself.
        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(3);
        }
        let s = libc::socket(domain, ty, protocol);
        if s < 0 {
            libc::_exit(4);
        }
        let mut cmsg = CmsgBuf::new();
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.buf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) as _;
        let hdr = libc::CMSG_FIRSTHDR(&msg);
        (*hdr).cmsg_level = libc::SOL_SOCKET;
        (*hdr).cmsg_type = libc::SCM_RIGHTS;
        (*hdr).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as _;
        libc::CMSG_DATA(hdr).cast::<RawFd>().write_unaligned(s);
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) != 1 {
            libc::_exit(5);
        }
        libc::_exit(0)
    }
}

/// Receives one fd sent with SCM_RIGHTS (the socket's read timeout bounds the wait).
fn recv_fd(sock: BorrowedFd<'_>, cmsg: &mut CmsgBuf) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.buf.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.buf.len() as _;
    let n = loop {
        // SAFETY: msg points to live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "helper exited without an fd"));
    }
    // SAFETY: the kernel filled msg_control; CMSG_FIRSTHDR checks msg_controllen.
    let hdr = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: hdr is null or points into cmsg.buf.
    if hdr.is_null()
        || unsafe { (*hdr).cmsg_level != libc::SOL_SOCKET || (*hdr).cmsg_type != libc::SCM_RIGHTS }
    {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no SCM_RIGHTS in helper reply"));
    }
    // SAFETY: an SCM_RIGHTS message carries at least one fd, now owned by this process.
    Ok(unsafe { OwnedFd::from_raw_fd(libc::CMSG_DATA(hdr).cast::<RawFd>().read_unaligned()) })
}

/// Converts a `SocketAddr` into a `sockaddr_storage` and its length.
fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>().write(sin)
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Binds a socket (created by [`socket_in`]) to `addr`.
pub fn bind_fd(fd: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<()> {
    let (sa, len) = to_sockaddr(addr);
    // SAFETY: sa is a valid sockaddr of length len.
    let rc =
        unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_storage).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn domain_of(addr: &SocketAddr) -> i32 {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// An unbound UDP socket owned by `cg` (send_to binds it to an ephemeral port).
pub fn udp_socket_in(cg: &Cgroup, v6: bool) -> UdpSocket {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    UdpSocket::from(socket_in(cg, domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0))
}

/// A UDP socket owned by `cg`, bound to `addr`.
pub fn udp_bound_in(cg: &Cgroup, addr: SocketAddr) -> UdpSocket {
    let sock = udp_socket_in(cg, addr.is_ipv6());
    bind_fd(sock.as_fd(), addr).unwrap_or_else(|e| panic!("bind UDP socket to {addr}: {e}"));
    sock
}

/// A TCP listener owned by `cg`, bound to `addr` (SO_REUSEADDR) and listening.
pub fn tcp_listener_in(cg: &Cgroup, addr: SocketAddr) -> TcpListener {
    let fd = socket_in(cg, domain_of(&addr), libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
    let one: libc::c_int = 1;
    // SAFETY: valid fd and option buffer of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_REUSEADDR: {}", io::Error::last_os_error());
    bind_fd(fd.as_fd(), addr).unwrap_or_else(|e| panic!("bind TCP listener to {addr}: {e}"));
    // SAFETY: valid, bound socket fd.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
        panic!("listen on {addr}: {}", io::Error::last_os_error());
    }
    TcpListener::from(fd)
}

/// A TCP connection to `addr` from a socket owned by `cg`; panics if it fails within 10 s.
pub fn tcp_stream_in(cg: &Cgroup, addr: SocketAddr) -> TcpStream {
    try_tcp_stream_in(cg, addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr} from cgroup {}: {e}", cg.id))
}

/// Like [`tcp_stream_in`] but returns the error, e.g. a timeout when a limit drops the SYNs.
pub fn try_tcp_stream_in(
    cg: &Cgroup,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    // Non-blocking connect + poll: a blocking connect whose SYNs are dropped waits ~2 minutes.
    let fd = socket_in(cg, domain_of(&addr), libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    let (sa, len) = to_sockaddr(addr);
    // SAFETY: sa is a valid sockaddr of length len.
    let rc = unsafe {
        libc::connect(stream.as_raw_fd(), (&sa as *const libc::sockaddr_storage).cast(), len)
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            let mut pfd =
                libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n > 0 {
                break;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

// ---------------------------------------------------------------------------------------------
// Packet builder for BPF_PROG_TEST_RUN
// ---------------------------------------------------------------------------------------------

/// Ethernet header length; `BPF_PROG_TEST_RUN` rejects tc input shorter than this (EINVAL).
pub const ETH_HLEN: usize = 14;
/// Source MAC of built frames (locally administered).
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Destination MAC of built frames (locally administered).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Debug, Clone)]
enum L3 {
    V4 { src: [u8; 4], dst: [u8; 4], option_words: u8, frag: Option<(u16, bool)> },
    V6 { src: [u8; 16], dst: [u8; 16], exts: Vec<V6Ext> },
}

#[derive(Debug, Clone, Copy)]
enum V6Ext {
    Generic { kind: u8, len_units: u8 },
    Fragment { offset: u16, more: bool },
}

#[derive(Debug, Clone, Copy)]
enum L4 {
    None,
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Icmp,
}

/// TCP flag bits for [`Pkt::tcp`].
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Builds Ethernet frames (what a tc program sees) with correct lengths and checksums.
///
/// Lengths (IPv4 total length and IHL, IPv6 payload length, UDP length) and checksums (IPv4
/// header, TCP/UDP/ICMP over this packet's bytes) are computed by [`Pkt::build`]. Headers are
/// laid out exactly as requested: e.g. a non-first fragment with `.tcp()` still gets a TCP
/// header, so leave L4 out for those. Without an L4 header the IP protocol is 59 (IPv6 "no
/// next header"; for IPv4 an unassigned value).
#[derive(Debug, Clone)]
pub struct Pkt {
    vlans: Vec<(u16, u16)>,
    l3: L3,
    l4: L4,
    payload: Vec<u8>,
}

impl Pkt {
    /// An IPv4 packet (DF set unless a fragment is requested, TTL 64).
    pub fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Pkt {
        Pkt::with_l3(L3::V4 { src, dst, option_words: 0, frag: None })
    }

    /// An IPv6 packet (hop limit 64).
    pub fn ipv6(src: [u8; 16], dst: [u8; 16]) -> Pkt {
        Pkt::with_l3(L3::V6 { src, dst, exts: Vec::new() })
    }

    fn with_l3(l3: L3) -> Pkt {
        Pkt { vlans: Vec::new(), l3, l4: L4::None, payload: Vec::new() }
    }

    /// Adds an 802.1Q tag (TPID 0x8100) with TCI `tag`; call twice for a double tag (outer
    /// first).
    pub fn vlan(self, tag: u16) -> Pkt {
        self.vlan_tpid(0x8100, tag)
    }

    /// Adds a VLAN tag with an explicit TPID (e.g. 0x88a8 for an 802.1ad outer tag).
    pub fn vlan_tpid(mut self, tpid: u16, tag: u16) -> Pkt {
        assert!(self.vlans.len() < 2, "at most two VLAN tags");
        self.vlans.push((tpid, tag));
        self
    }

    /// Adds `n_words` 32-bit words of IPv4 options (NOPs), 0..=10.
    pub fn ipv4_options(mut self, n_words: u8) -> Pkt {
        assert!(n_words <= 10, "IHL allows at most 10 option words");
        match &mut self.l3 {
            L3::V4 { option_words, .. } => *option_words = n_words,
            L3::V6 { .. } => panic!("ipv4_options on an IPv6 packet"),
        }
        self
    }

    /// Makes the IPv4 packet a fragment at `offset_8byte_units` (13 bits) with the MF flag.
    pub fn ipv4_fragment(mut self, offset_8byte_units: u16, more_fragments: bool) -> Pkt {
        assert!(offset_8byte_units < 1 << 13, "fragment offset has 13 bits");
        match &mut self.l3 {
            L3::V4 { frag, .. } => *frag = Some((offset_8byte_units, more_fragments)),
            L3::V6 { .. } => panic!("ipv4_fragment on an IPv6 packet"),
        }
        self
    }

    /// Appends an IPv6 extension header: hop-by-hop (0), routing (43) or destination options
    /// (60), `len_units` 8-octet units beyond the first 8 (AH, 51, uses 4-octet units per RFC).
    pub fn ipv6_ext(self, next_header_kind: u8, len_units: u8) -> Pkt {
        assert_ne!(next_header_kind, 44, "use ipv6_fragment for fragment headers");
        self.push_ext(V6Ext::Generic { kind: next_header_kind, len_units })
    }

    /// Appends an IPv6 fragment header at `offset` (8-octet units, 13 bits) with the M flag.
    pub fn ipv6_fragment(self, offset: u16, more: bool) -> Pkt {
        assert!(offset < 1 << 13, "fragment offset has 13 bits");
        self.push_ext(V6Ext::Fragment { offset, more })
    }

    fn push_ext(mut self, ext: V6Ext) -> Pkt {
        match &mut self.l3 {
            L3::V6 { exts, .. } => exts.push(ext),
            L3::V4 { .. } => panic!("IPv6 extension header on an IPv4 packet"),
        }
        self
    }

    /// Adds a 20-byte TCP header (data offset 5, window 65535) with `flags` ([`tcp_flags`]).
    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Pkt {
        self.l4 = L4::Tcp { sport, dport, flags };
        self
    }

    /// Adds a UDP header.
    pub fn udp(mut self, sport: u16, dport: u16) -> Pkt {
        self.l4 = L4::Udp { sport, dport };
        self
    }

    /// Adds an ICMP (IPv4) or ICMPv6 (IPv6) echo request header.
    pub fn icmp(mut self) -> Pkt {
        self.l4 = L4::Icmp;
        self
    }

    /// Appends L4 payload bytes (e.g. an HTTP request line).
    pub fn payload(mut self, data: &[u8]) -> Pkt {
        self.payload.extend_from_slice(data);
        self
    }

    /// Serializes the frame.
    pub fn build(&self) -> Vec<u8> {
        let v6 = matches!(self.l3, L3::V6 { .. });
        let l4_proto = match (self.l4, v6) {
            (L4::None, _) => 59,
            (L4::Tcp { .. }, _) => 6,
            (L4::Udp { .. }, _) => 17,
            (L4::Icmp, false) => 1,
            (L4::Icmp, true) => 58,
        };
        let mut l4 = self.l4_bytes();
        let pseudo_src_dst: Vec<u8> = match &self.l3 {
            L3::V4 { src, dst, .. } => [&src[..], &dst[..]].concat(),
            L3::V6 { src, dst, .. } => [&src[..], &dst[..]].concat(),
        };
        fill_l4_checksum(&mut l4, self.l4, l4_proto, &pseudo_src_dst, v6);

        let mut out = Vec::with_capacity(64 + l4.len());
        out.extend_from_slice(&DST_MAC);
        out.extend_from_slice(&SRC_MAC);
        for (tpid, tag) in &self.vlans {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&tag.to_be_bytes());
        }
        out.extend_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());

        match &self.l3 {
            L3::V4 { src, dst, option_words, frag } => {
                let ihl = 5 + usize::from(*option_words);
                let total = u16::try_from(ihl * 4 + l4.len()).expect("IPv4 packet too long");
                let frag_field = match frag {
                    None => 0x4000, // DF, as Linux sets on TCP and most UDP
                    Some((off, mf)) => off | if *mf { 0x2000 } else { 0 },
                };
                let mut h = Vec::with_capacity(ihl * 4);
                h.push(0x40 | ihl as u8);
                h.push(0); // DSCP/ECN
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
                h.extend_from_slice(&frag_field.to_be_bytes());
                h.push(64); // TTL
                h.push(l4_proto);
                h.extend_from_slice(&[0, 0]); // checksum, filled below
                h.extend_from_slice(src);
                h.extend_from_slice(dst);
                h.resize(ihl * 4, 1); // options: NOPs
                let csum = checksum(&[&h]);
                h[10..12].copy_from_slice(&csum.to_be_bytes());
                out.extend_from_slice(&h);
            }
            L3::V6 { src, dst, exts } => {
                let ext_bytes = v6_ext_bytes(exts, l4_proto);
                let plen = u16::try_from(ext_bytes.len() + l4.len()).expect("IPv6 packet too long");
                let first_nh = exts.first().map_or(l4_proto, v6_ext_kind);
                out.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no class, no flow label
                out.extend_from_slice(&plen.to_be_bytes());
                out.push(first_nh);
                out.push(64); // hop limit
                out.extend_from_slice(src);
                out.extend_from_slice(dst);
                out.extend_from_slice(&ext_bytes);
            }
        }
        out.extend_from_slice(&l4);
        out
    }

    /// L4 header plus payload, checksum zero.
    fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.l4 {
            L4::None => {}
            L4::Tcp { sport, dport, flags } => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&1u32.to_be_bytes()); // sequence number
                let ack = if flags & tcp_flags::ACK != 0 { 1u32 } else { 0 };
                l4.extend_from_slice(&ack.to_be_bytes());
                l4.push(5 << 4); // data offset 5 words, no options
                l4.push(flags);
                l4.extend_from_slice(&0xffffu16.to_be_bytes()); // window
                l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            }
            L4::Udp { sport, dport } => {
                let len = u16::try_from(8 + self.payload.len()).expect("UDP payload too long");
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            L4::Icmp => {
                let echo_request = if matches!(self.l3, L3::V6 { .. }) { 128 } else { 8 };
                l4.extend_from_slice(&[echo_request, 0, 0, 0, 0x12, 0x34, 0, 1]);
            }
        }
        l4.extend_from_slice(&self.payload);
        l4
    }
}

fn v6_ext_kind(ext: &V6Ext) -> u8 {
    match ext {
        V6Ext::Generic { kind, .. } => *kind,
        V6Ext::Fragment { .. } => 44,
    }
}

/// Serializes the extension header chain, each pointing at the next and the last at `l4_proto`.
fn v6_ext_bytes(exts: &[V6Ext], l4_proto: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(l4_proto, v6_ext_kind);
        match *ext {
            V6Ext::Generic { kind, len_units } => {
                let size = if kind == 51 {
                    (usize::from(len_units) + 2) * 4
                } else {
                    (usize::from(len_units) + 1) * 8
                };
                let mut h = vec![0u8; size];
                h[0] = next;
                h[1] = len_units;
                match kind {
                    // Options headers: one PadN option filling the rest keeps them valid.
                    0 | 60 => {
                        h[2] = 1;
                        h[3] = (size - 4) as u8;
                    }
                    // Routing: type 0 with 0 segments left, which receivers skip.
                    _ => {}
                }
                out.extend_from_slice(&h);
            }
            V6Ext::Fragment { offset, more } => {
                out.push(next);
                out.push(0);
                out.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                out.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // identification
            }
        }
    }
    out
}

/// Fills the TCP/UDP/ICMP checksum over the given L4 bytes (with pseudo-header where needed).
fn fill_l4_checksum(l4: &mut [u8], kind: L4, proto: u8, src_dst: &[u8], v6: bool) {
    let at = match kind {
        L4::None => return,
        L4::Tcp { .. } => 16,
        L4::Udp { .. } => 6,
        L4::Icmp => 2,
    };
    let len = l4.len() as u32;
    let pseudo: Vec<u8> = if v6 {
        [src_dst, &len.to_be_bytes(), &[0, 0, 0, proto]].concat()
    } else {
        [src_dst, &[0, proto], &(len as u16).to_be_bytes()].concat()
    };
    let csum =
        if matches!(kind, L4::Icmp) && !v6 { checksum(&[l4]) } else { checksum(&[&pseudo, l4]) };
    // UDP sends a computed 0 as 0xffff, since 0 means "no checksum".
    let csum = if matches!(kind, L4::Udp { .. }) && csum == 0 { 0xffff } else { csum };
    l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());
}

/// Internet checksum (RFC 1071) over the concatenation of `parts` (each even-length but the
/// last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for chunk in part.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Every strict prefix of `pkt` (lengths 0..len), for fail-open tests on truncated input.
///
/// `BPF_PROG_TEST_RUN` rejects tc input shorter than [`ETH_HLEN`] with EINVAL, so callers
/// that run each prefix usually skip those.
pub fn truncations(pkt: &[u8]) -> Vec<Vec<u8>> {
    (0..pkt.len()).map(|n| pkt[..n].to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A unique directory under the system temp dir, removed on drop unless the thread panics (so
/// a failing test leaves its files for inspection).
#[derive(Debug)]
pub struct TempDir {
    /// The directory.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates `<temp_dir>/vantage-test-<unique>`.
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique("vantage-test-"));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    /// `path/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("keeping {} for inspection", self.path.display());
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("temp dir cleanup: {}: {e}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------------------------

/// How long [`Daemon::start`] waits for the API to accept connections.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Daemon::stop`] waits after SIGTERM.
pub const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A vantage daemon running inside a test namespace; SIGKILLed on drop if still running.
#[derive(Debug)]
pub struct Daemon {
    /// The `nsenter` process, which execs the daemon, so this is the daemon's pid.
    pub child: Child,
    /// API address (inside the namespace).
    pub api: SocketAddr,
    /// File receiving the daemon's stdout and stderr.
    pub log_path: PathBuf,
    /// State file the daemon was started with.
    pub state_file: PathBuf,
    /// Name of the namespace it runs in.
    pub netns: String,
    /// Holds the log (and the default state file); kept when a test panics.
    dir: TempDir,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// Starts the daemon and waits until its API accepts connections; panics with the log if it
    /// exits first.
    ///
    /// Adds `--bind-addr 127.0.0.1:<port>`, `--state-file <tempdir>/state.json` and
    /// `VANTAGE_LOG=debug` unless given. Inherited `VANTAGE_*` variables are removed first so
    /// the caller's environment cannot change what a test runs.
    pub fn start(netns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::try_start(netns, args, env).unwrap_or_else(|(status, log)| {
            panic!("vantage exited during start-up ({status}); log:\n{log}")
        })
    }

    /// Like [`Daemon::start`] but returns the exit status and log if the daemon exits before
    /// its API is up (for tests of start-up failures). Still panics if it neither exits nor
    /// becomes ready in time.
    pub fn try_start(
        netns: &Netns,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, (ExitStatus, String)> {
        let dir = TempDir::new();
        let log_path = dir.join("daemon.log");
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));

        let mut extra: Vec<String> = Vec::new();
        let env_bind = env.iter().find(|(k, _)| *k == "VANTAGE_BIND_ADDR").map(|(_, v)| *v);
        let api = match flag_value(args, "--bind-addr").or(env_bind) {
            Some(v) => v.parse().unwrap_or_else(|e| panic!("bad --bind-addr {v:?}: {e}")),
            None => {
                // The namespace is private, so any port is free; distinct ports only make
                // logs easier to tell apart.
                let port = 20000 + (COUNTER.fetch_add(1, Ordering::Relaxed) % 40000) as u16;
                let api = SocketAddr::from(([127, 0, 0, 1], port));
                extra.extend(["--bind-addr".to_string(), api.to_string()]);
                api
            }
        };
        let env_state = env.iter().find(|(k, _)| *k == "VANTAGE_STATE_FILE").map(|(_, v)| *v);
        let state_file = match flag_value(args, "--state-file").or(env_state) {
            Some(v) => PathBuf::from(v),
            None => {
                let p = dir.join("state.json");
                extra.extend(["--state-file".to_string(), p.display().to_string()]);
                p
            }
        };

        let mut cmd = Command::new("nsenter");
        // Not `ip netns exec`: it remounts /sys, which hides the cgroup2 mount on hybrid hosts.
        // Without --fork, nsenter execs the daemon, so the child pid is the daemon's.
        // VANTAGE_TEST_WRAP (test-only) names a command to run the daemon under, such as
        // `setpriv ...` to drop privileges.
        let wrap = env.iter().find(|(k, _)| *k == "VANTAGE_TEST_WRAP").map(|(_, v)| *v);
        cmd.arg(format!("--net={}", netns.path().display()))
            .arg("--")
            .args(wrap.map(|w| w.split_whitespace().collect::<Vec<_>>()).unwrap_or_default())
            .arg(env!("CARGO_BIN_EXE_vantage"))
            .args(args)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file handle"))
            .stderr(log);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("VANTAGE_") {
                cmd.env_remove(&k);
            }
        }
        if !env.iter().any(|(k, _)| *k == "VANTAGE_LOG") {
            cmd.env("VANTAGE_LOG", "debug");
        }
        cmd.envs(env.iter().copied().filter(|(k, _)| *k != "VANTAGE_TEST_WRAP"));
        let child = cmd.spawn().expect("spawn nsenter for vantage");

        // Built before waiting so that any panic below still kills the daemon and shows the log.
        let mut daemon =
            Daemon { child, api, log_path, state_file, netns: netns.name.clone(), dir, exit: None };
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        loop {
            if let Some(status) = daemon.try_wait() {
                return Err((status, daemon.log()));
            }
            let connected = {
                let _in_ns = netns.enter_current_thread();
                TcpStream::connect_timeout(&api, Duration::from_millis(200)).is_ok()
            };
            if connected {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                panic!(
                    "vantage API at {api} not up after {DAEMON_START_TIMEOUT:?} (log: {})",
                    daemon.log_path.display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Exit status if the daemon has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("wait for vantage");
        }
        self.exit
    }

    fn signal(&mut self, sig: libc::c_int) {
        // Only while unreaped: after that the pid may belong to someone else.
        if self.try_wait().is_none() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// Sends SIGTERM and waits for exit; SIGKILLs and panics after [`DAEMON_STOP_TIMEOUT`].
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + DAEMON_STOP_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill9();
                panic!("vantage did not exit within {DAEMON_STOP_TIMEOUT:?} of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL and reaps the daemon (simulates a crash).
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        if let Some(status) = self.exit {
            return status;
        }
        let status = self.child.wait().expect("wait for vantage");
        self.exit = Some(status);
        status
    }

    /// Everything the daemon has written so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Sends a request to the API (see [`http`]).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http_in(&self.netns, self.api, method, path, body)
    }

    /// Sends a request to the API and parses the JSON reply (see [`http_json`]).
    pub fn http_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, text) = self.http(method, path, body);
        (status, parse_json(method, path, status, &text))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill9();
        }
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(50)..];
            eprintln!(
                "---- vantage log {} (last {} lines) ----\n{}\n---- end of vantage log ----",
                self.log_path.display(),
                tail.len(),
                tail.join("\n")
            );
        }
        // `dir` (a TempDir) is dropped after this and keeps the files on panic.
    }
}

/// The value of `--flag VALUE` or `--flag=VALUE` in `args`.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == flag {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(flag).and_then(|rest| rest.strip_prefix('='))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// Timeout for connecting, sending and receiving in [`http`].
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one HTTP/1.1 request from inside `netns` and returns (status, body).
pub fn http(
    netns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    http_in(&netns.name, addr, method, path, body)
}

/// Like [`http`], but parses the body as JSON (an empty body is `Null`); panics otherwise.
pub fn http_json(
    netns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, text) = http(netns, addr, method, path, body);
    (status, parse_json(method, path, status, &text))
}

fn parse_json(method: &str, path: &str, status: u16, text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{method} {path} -> {status}: body is not JSON ({e}): {text}"))
}

fn http_in(
    netns: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let what = format!("{method} http://{addr}{path}");
    let mut stream = {
        // The socket keeps the namespace it was created in, so the guard can end here.
        let _in_ns = enter_netns(netns);
        TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"))
    };
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).expect("set read timeout");
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).expect("set write timeout");

    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    match body {
        Some(b) => {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            req.push_str(b);
        }
        None => req.push_str("Content-Length: 0\r\n\r\n"),
    }
    stream.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("{what}: receive: {e}"));
    parse_http_response(&raw).unwrap_or_else(|e| {
        panic!("{what}: bad response ({e}): {:?}", String::from_utf8_lossy(&raw))
    })
}

/// Parses a full HTTP/1.x response into (status, body), decoding chunked bodies.
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String), String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length =
                Some(value.parse::<usize>().map_err(|e| format!("content-length: {e}"))?);
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(n) = content_length {
        rest.get(..n).ok_or_else(|| format!("body shorter than content-length {n}"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol =
            data.windows(2).position(|w| w == b"\r\n").ok_or("chunk size line not terminated")?;
        let line = String::from_utf8_lossy(&data[..eol]);
        // Chunk extensions (";name=value") follow the size.
        let size_str = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|e| format!("bad chunk size {size_str:?}: {e}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(body); // trailers, if any, are ignored
        }
        let chunk = data.get(..size).ok_or("chunk shorter than its size")?;
        body.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("chunk not followed by CRLF")?;
    }
}

// ---------------------------------------------------------------------------------------------
// Attachment inspection
// ---------------------------------------------------------------------------------------------

/// Names of the programs attached with tcx on `iface` in `netns`, in run order.
///
/// The kernel keeps at most 15 chars of a program name.
pub fn tcx_program_names(netns: &Netns, iface: &str, ingress: bool) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let attach = if ingress { TcAttachType::Ingress } else { TcAttachType::Egress };
    // The ifindex lookup and the query both use the calling thread's namespace.
    let _in_ns = netns.enter_current_thread();
    let (_revision, infos) = SchedClassifier::query_tcx(iface, attach)
        .unwrap_or_else(|e| panic!("query tcx {attach:?} on {iface} in {}: {e}", netns.name));
    infos.iter().map(|info| String::from_utf8_lossy(info.name()).into_owned()).collect()
}

/// Number of netlink (clsact) bpf filters on `iface` in `netns`; 0 when there is no clsact.
///
/// `tc filter show` prints each bpf filter as two lines that both say "bpf" (the priority line
/// and the one with its handle), so only lines with a handle are counted.
pub fn tc_filter_count(netns: &Netns, iface: &str, ingress: bool) -> usize {
    let dir = if ingress { "ingress" } else { "egress" };
    let out = netns.run(&["tc", "filter", "show", "dev", iface, dir]);
    out.lines().filter(|l| l.contains(" bpf ") && l.contains(" handle ")).count()
}

/// The exit status and log of a start-up that was expected to fail.
pub fn expect_start_failure(
    started: Result<Daemon, (ExitStatus, String)>,
    why: &str,
) -> (ExitStatus, String) {
    match started {
        Ok(d) => panic!("{why}, but vantage started; log:\n{}", d.log()),
        Err(failure) => failure,
    }
}

/// Load options for the real classifier on this kernel (offsets from its
/// BTF, live or legacy flow keys, one drop event per drop, a 1 s identity
/// TTL) with `capacity` entries per policy map and in the identity cache.
pub fn load_options(legacy: bool, capacity: u32) -> vantage::loader::LoadOptions {
    let btf = vantage::btf::KernelBtf::from_sys_fs().expect("kernel BTF");
    vantage::loader::LoadOptions {
        offsets: vantage::btf::CgroupIdOffsets::from_btf(&btf).expect("cgroup offsets"),
        legacy_flow_keys: legacy,
        drop_event_sample_n: 1,
        raw_ip: false,
        identity_ttl_ns: 1_000_000_000,
        policy_capacity: capacity,
        identity_capacity: capacity,
    }
}
