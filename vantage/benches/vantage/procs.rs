//! Child processes in a namespace (and optionally a cgroup), CPU pinning
//! and memory readings.

use std::{
    ffi::CString,
    fs::{self, File},
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::common::{Cgroup, Netns, TempDir};

/// Returns whether every tool runs (`TOOL --version`); under `CI=true` a
/// missing one panics, as in the tests' prerequisites.
pub fn tools_present(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new(t)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("missing {} (make deps installs them)", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("benchmark prerequisites not met under CI: {reason}");
    }
    eprintln!("skipping the benchmarks: {reason}");
    false
}

/// A command run in `ns` through `nsenter` (not `ip netns exec`, which
/// remounts /sys and hides the cgroup2 mount on hybrid hosts), moved into
/// `cg` before it execs when one is given.
fn command_in(ns: &Netns, cg: Option<&Cgroup>, argv: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display())).arg("--").args(argv).stdin(Stdio::null());
    if let Some(cg) = cg {
        let procs = CString::new(cg.path.join("cgroup.procs").as_os_str().as_bytes())
            .expect("cgroup path has no NUL byte");
        // SAFETY: the hook runs between fork and exec and only makes
        // async-signal-safe calls (open, write, close) on a prepared path.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself; exec keeps the cgroup.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    cmd
}

/// A long-running child, SIGKILLed and reaped on drop.
pub struct Background {
    child: Child,
    what: String,
}

impl Background {
    /// Starts `argv` in `ns` (and `cg`), output discarded.
    pub fn spawn(ns: &Netns, cg: Option<&Cgroup>, argv: &[&str]) -> Background {
        let child = command_in(ns, cg, argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {argv:?}: {e}"));
        Background { child, what: argv.join(" ") }
    }

    /// Panics if the child has already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("`{}` exited early: {status}", self.what);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // kill on an unreaped child cannot hit a recycled pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `argv` in `ns` to completion and returns its stdout, or why it
/// failed (exit status with stderr, or a timeout, after which it is killed).
pub fn run_in(ns: &Netns, argv: &[&str], timeout: Duration) -> Result<String, String> {
    // Output goes to files: a pipe could fill while we wait for the exit.
    let dir = TempDir::new();
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let file = |p: &Path| File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut child = command_in(ns, None, argv)
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .map_err(|e| format!("start {argv:?}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{argv:?} still running after {timeout:?}; killed"));
            }
            Err(e) => return Err(format!("wait for {argv:?}: {e}")),
        }
    };
    let stdout = fs::read_to_string(&out).unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        let stderr = fs::read_to_string(&err).unwrap_or_default();
        Err(format!("{argv:?} failed ({status}): {} {}", stderr.trim(), stdout.trim()))
    }
}

/// Resident memory of `pid` in MiB (VmRSS from /proc/PID/status).
pub fn rss_mib(pid: libc::pid_t) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib / 1024.0
}

/// Restricts the calling thread to `cpus` until the guard is dropped.
pub fn pin_current_thread(cpus: &[usize]) -> PinGuard {
    let previous = affinity();
    set_affinity(&cpus.iter().map(|&c| c as libc::c_int).collect::<Vec<_>>());
    PinGuard { previous }
}

/// Restores the thread's previous CPU set on drop.
#[must_use = "the thread is unpinned when the guard is dropped"]
pub struct PinGuard {
    previous: Vec<libc::c_int>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        set_affinity(&self.previous);
    }
}

fn affinity() -> Vec<libc::c_int> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(rc, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
        (0..libc::CPU_SETSIZE).filter(|&c| libc::CPU_ISSET(c as usize, &set)).collect()
    }
}

fn set_affinity(cpus: &[libc::c_int]) {
    // SAFETY: CPU_SET writes within the zeroed set; the call affects only
    // the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c as usize, &mut set);
        }
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity {cpus:?}: {}", std::io::Error::last_os_error());
    }
}

/// The machine's CPU time so far, from the first line of /proc/stat.
pub struct CpuTimes {
    steal: u64,
    total: u64,
}

/// Reads [`CpuTimes`] now.
pub fn cpu_times() -> CpuTimes {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest
    // time is already counted in user and nice.
    CpuTimes { steal: fields.get(7).copied().unwrap_or(0), total: fields.iter().take(8).sum() }
}

impl CpuTimes {
    /// Share of all CPU time since `earlier` that the hypervisor took (steal).
    pub fn steal_share_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        self.steal.saturating_sub(earlier.steal) as f64 / total.max(1) as f64
    }
}
