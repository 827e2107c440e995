//! nftables, the kernel-native peer: an input-hook table in a namespace of
//! the bench's own, matching a cgroup with `socket cgroupv2`.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use crate::{
    common::{self, traffic::Counter, Cgroup, Netns},
    procs,
};

/// Where nft resolves `socket cgroupv2` paths (nftables' SYSFS_CGROUPSV2_PATH).
const NFT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// An `inet` table with one input-hook chain, deleted on drop.
pub struct Table {
    ns: String,
    ns_path: std::path::PathBuf,
    name: String,
}

impl Table {
    /// Creates table `name` in `ns` whose input chain holds `rules`.
    pub fn add(ns: &Netns, name: &str, rules: &[String]) -> Table {
        let script = format!(
            "table inet {name} {{\n  chain input {{\n    type filter hook input priority 0;\n{}\n  }}\n}}\n",
            rules.iter().map(|r| format!("    {r}\n")).collect::<String>()
        );
        let dir = common::TempDir::new();
        let file = dir.join("rules.nft");
        std::fs::write(&file, &script).expect("write nft script");
        let path = file.to_str().expect("utf-8 temp path");
        // Constructed first so that a half-applied table is still deleted.
        let table = Table { ns: ns.name.clone(), ns_path: ns.path(), name: name.to_string() };
        procs::run_in(ns, &["nft", "-f", path], Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("nft rules in {}: {e}\n{script}", ns.name));
        table
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .args(["--", "nft", "delete", "table", "inet", &self.name])
            .output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("nft cleanup: cannot delete table {} in {}", self.name, self.ns);
        }
    }
}

/// `socket cgroupv2 level N "PATH"` matching sockets of `cg`.
///
/// nft takes the path relative to /sys/fs/cgroup (so on a hybrid host it
/// starts with `unified/`), while the level is the cgroup's depth in the
/// cgroup2 hierarchy (the kernel compares the socket's ancestor at that
/// level, `nft_sock_get_eval_cgroupv2`), i.e. counted below the cgroup2
/// mount. [`verify_match`] checks both on this host.
pub fn cgroup_match(cg: &Cgroup) -> String {
    let mount = common::cgroup2_mount().expect("cgroup2 mount");
    let rel = cg.path.strip_prefix(NFT_CGROUP_ROOT).unwrap_or_else(|_| {
        panic!("nft resolves cgroup paths under {NFT_CGROUP_ROOT}; {} is not", cg.path.display())
    });
    let level = cg.path.strip_prefix(&mount).map_or(0, |p| p.components().count());
    format!("socket cgroupv2 level {level} \"{}\"", rel.display())
}

/// Panics unless [`cgroup_match`] matches a socket of a fresh cgroup: with
/// a limit of one packet, 50 datagrams to it must deliver at most two.
pub fn verify_match() {
    let ns = Netns::new();
    let cg = Cgroup::new();
    let port = 7990;
    let rule = format!(
        "{} udp dport {port} limit rate over 1/second burst 1 packets drop",
        cgroup_match(&cg)
    );
    let _table = Table::add(&ns, "vtcheck", std::slice::from_ref(&rule));
    let _in_ns = ns.enter_current_thread();
    let receiver = common::udp_bound_in(&cg, SocketAddr::from(([127, 0, 0, 1], port)));
    let count = Counter::start(receiver);
    let client = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("client socket");
    for _ in 0..50 {
        client.send_to(b"probe", SocketAddr::from(([127, 0, 0, 1], port))).expect("send");
    }
    let got = count.finish();
    assert!(got <= 2, "nft rule `{rule}` does not match the cgroup's socket: {got} of 50 arrived");
    progress!("nft: `{}` matches ({got} of 50 passed a 1/s limit)", cgroup_match(&cg));
}
