//! How the bench runs the daemon: which binary, and with which view of /sys.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::common::{self, Daemon, Netns, TempDir};

/// Names the daemon binary to measure instead of the one cargo built for
/// the bench; `make bench` sets it to the static binary the packages ship.
pub const BINARY_ENV: &str = "VANTAGE_BENCH_BINARY";

/// The daemon binary under test.
pub fn binary() -> PathBuf {
    std::env::var_os(BINARY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vantage")))
}

/// Whether [`binary`] is statically linked (as `file` says).
pub fn binary_is_static() -> bool {
    let out = std::process::Command::new("file").arg(binary()).output();
    out.is_ok_and(|o| {
        let s = String::from_utf8_lossy(&o.stdout);
        s.contains("statically linked") || s.contains("static-pie linked")
    })
}

/// A daemon started through the test harness, running [`binary`].
pub struct Running {
    /// The daemon.
    pub d: Daemon,
    _wrap: Wrap,
}

impl Running {
    /// Starts the daemon in `ns` with `args` at log level info.
    ///
    /// `fresh_sysfs` gives it a sysfs of its own network namespace, which it
    /// needs to find an interface other than `lo` there (see [`Wrap`]).
    pub fn start(ns: &Netns, args: &[&str], fresh_sysfs: bool) -> Running {
        Running::start_binary(ns, args, fresh_sysfs, &binary())
    }

    /// Like [`Running::start`] with an explicit binary.
    pub fn start_binary(ns: &Netns, args: &[&str], fresh_sysfs: bool, bin: &Path) -> Running {
        let wrap = Wrap::new(fresh_sysfs, bin);
        let d = Daemon::start(
            ns,
            args,
            &[("VANTAGE_LOG", "info"), ("VANTAGE_TEST_WRAP", wrap.path.as_str())],
        );
        Running { d, _wrap: wrap }
    }
}

/// A script for `VANTAGE_TEST_WRAP`, which the harness puts in front of the
/// daemon's command line: it replaces the harness's binary with the one
/// under test and, when asked, gives it a fresh sysfs.
///
/// The daemon checks its interface under /sys/class/net, and sysfs shows
/// the network namespace of whoever mounted it; `nsenter --net` keeps the
/// host's /sys, where a veth inside a bench namespace does not exist. So
/// the script remounts sysfs in a private mount namespace, which hides the
/// cgroup2 mount below /sys/fs/cgroup, and mounts the (single, shared)
/// cgroup2 hierarchy again at the same place. Every step execs, so the
/// daemon keeps the pid the harness knows.
struct Wrap {
    _dir: TempDir,
    path: String,
}

impl Wrap {
    fn new(fresh_sysfs: bool, bin: &Path) -> Wrap {
        let bin = bin.display().to_string();
        assert!(!bin.contains(['\'', '"', ' ']), "daemon path {bin:?} needs quoting");
        let run = if fresh_sysfs {
            let mount = common::cgroup2_mount().expect("cgroup2 mount");
            let cg = mount.display().to_string();
            assert!(!cg.contains(['\'', ' ']), "cgroup2 mount path {cg:?} needs quoting");
            let parent = mount.parent().map_or("/".into(), |p| p.display().to_string());
            format!(
                "exec unshare --mount --propagation private /bin/sh -ec '\n\
                 mount -t sysfs sysfs /sys\n\
                 [ -d {cg} ] || {{ mount -t tmpfs tmpfs {parent}; mkdir {cg}; }}\n\
                 mount -t cgroup2 cgroup2 {cg}\n\
                 exec \"$@\"' sh {bin} \"$@\"\n"
            )
        } else {
            format!("exec {bin} \"$@\"\n")
        };
        // $1 is the harness's binary; the rest are the daemon's arguments.
        let script = format!("#!/bin/sh\nshift\n{run}");
        let dir = TempDir::new();
        let path = dir.join("daemon-wrap.sh");
        fs::write(&path, script).expect("write the wrapper script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
        let path = path.to_str().expect("utf-8 temp path").to_string();
        assert!(!path.contains(char::is_whitespace), "VANTAGE_TEST_WRAP is split on spaces");
        Wrap { _dir: dir, path }
    }
}
