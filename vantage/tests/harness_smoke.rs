//! Checks that the shared test harness in `tests/common` does what the other tests rely on.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{tcp_flags, Cgroup, Netns, Pkt};

fn netns_listed(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
}

fn thread_netns() -> std::path::PathBuf {
    fs::read_link("/proc/thread-self/ns/net").expect("read own netns link")
}

#[test]
fn unique_names_are_distinct_and_short() {
    let names: Vec<String> = (0..200).map(|_| common::unique("vte")).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicate names: {names:?}");
    assert!(names.iter().all(|n| n.len() <= 15), "too long for an interface: {names:?}");
}

#[test]
fn netns_is_created_with_lo_up_and_removed_on_drop() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let name = ns.name.clone();
    assert!(netns_listed(&name), "{name} not in `ip netns list`");
    assert!(ns.ip(&["link", "show", "lo"]).contains("UP"), "lo is not up in {name}");
    drop(ns);
    assert!(!netns_listed(&name), "{name} still listed after drop");
}

#[test]
fn netns_is_removed_when_a_test_panics() {
    if !common::prerequisites() {
        return;
    }
    let name = std::thread::spawn(|| {
        let ns = Netns::new();
        let name = ns.name.clone();
        std::panic::panic_any(name);
    })
    .join()
    .expect_err("thread should have panicked");
    let name = name.downcast::<String>().expect("panic payload is the name");
    assert!(!netns_listed(&name), "{name} survived a panic");
}

#[test]
fn enter_current_thread_switches_and_restores() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let before = thread_netns();
    let target_ino = fs::metadata(ns.path()).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    {
        let _guard = ns.enter_current_thread();
        let inside = thread_netns();
        assert_ne!(inside, before);
        assert_eq!(
            Some(format!("net:[{}]", target_ino.expect("stat netns file"))),
            inside.to_str().map(str::to_string)
        );
    }
    assert_eq!(thread_netns(), before, "netns not restored");
}

#[test]
fn veth_pair_carries_udp_between_namespaces() {
    if !common::prerequisites() {
        return;
    }
    let (a, b) = (Netns::new(), Netns::new());
    let (dev_a, dev_b) = a.veth_pair(&b, "10.201.0.1/24", "10.201.0.2/24");
    assert!(a.ip(&["addr", "show", "dev", &dev_a]).contains("10.201.0.1/24"));
    assert!(b.ip(&["addr", "show", "dev", &dev_b]).contains("10.201.0.2/24"));
    let receiver = {
        let _in_b = b.enter_current_thread();
        UdpSocket::bind("10.201.0.2:0").expect("bind in b")
    };
    receiver.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let to = receiver.local_addr().expect("local addr");
    {
        let _in_a = a.enter_current_thread();
        let sender = UdpSocket::bind("10.201.0.1:0").expect("bind in a");
        sender.send_to(b"over veth", to).expect("send over veth");
    }
    let mut buf = [0u8; 32];
    let (n, from) = receiver.recv_from(&mut buf).expect("receive over veth");
    assert_eq!(&buf[..n], b"over veth");
    assert_eq!(from.ip().to_string(), "10.201.0.1");
}

#[test]
fn cgroup_is_created_and_removed_with_its_processes() {
    if !common::prerequisites() {
        return;
    }
    let cg = Cgroup::new();
    let path = cg.path.clone();
    assert!(path.join("cgroup.procs").exists(), "{} is not a cgroup", path.display());
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).expect("stat cgroup"));
    assert_eq!(cg.id, ino);
    let nested = cg.child();
    assert!(nested.path.starts_with(&path));

    let mut sleeper =
        Command::new("sleep").arg("300").stdin(Stdio::null()).spawn().expect("spawn sleep");
    fs::write(nested.path.join("cgroup.procs"), sleeper.id().to_string()).expect("move sleep");
    assert_eq!(nested.pids(), vec![sleeper.id() as libc::pid_t]);
    drop(nested);
    drop(cg);
    assert!(!path.exists(), "{} still exists after drop", path.display());
    let status = sleeper.wait().expect("wait for sleep");
    assert!(!status.success(), "sleep should have been killed");
}

#[test]
fn socket_in_cgroup_binds_and_receives_udp() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let cg = Cgroup::new();
    let _in_ns = ns.enter_current_thread();
    let sock = common::udp_bound_in(&cg, "127.0.0.1:0".parse().expect("addr"));
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let addr = sock.local_addr().expect("local addr");
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    sender.send_to(b"hello cgroup", addr).expect("send");
    let mut buf = [0u8; 32];
    let n = sock.recv(&mut buf).expect("receive");
    assert_eq!(&buf[..n], b"hello cgroup");
    // The helper process has left the cgroup (it exited), so it can still be removed.
    assert!(cg.pids().is_empty());

    // `ss --cgroup` reports the socket's cgroup as the kernel recorded it at creation.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["--", "ss", "-uanH", "--cgroup"])
        .output()
        .expect("run ss");
    let ss = String::from_utf8_lossy(&out.stdout);
    let cg_name = cg.path.file_name().and_then(|n| n.to_str()).expect("cgroup dir name");
    let line = ss
        .lines()
        .find(|l| l.contains(&addr.to_string()))
        .unwrap_or_else(|| panic!("socket {addr} not in ss output:\n{ss}"));
    assert!(line.contains(cg_name), "socket not in cgroup {cg_name}: {line}");
}

#[test]
fn tcp_in_cgroup_connects_and_exchanges_data() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let (server_cg, client_cg) = (Cgroup::new(), Cgroup::new());
    let _in_ns = ns.enter_current_thread();
    let listener = common::tcp_listener_in(&server_cg, "[::1]:0".parse().expect("addr"));
    let addr = listener.local_addr().expect("local addr");
    let mut client = common::tcp_stream_in(&client_cg, addr);
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"ping").expect("client write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).expect("server read");
    assert_eq!(&buf, b"ping");

    // Nothing listens on port 1: the connection is refused, not hung.
    let closed: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let err = common::try_tcp_stream_in(&client_cg, closed, Duration::from_secs(5))
        .expect_err("port 1 should refuse");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn tc_inspection_sees_netlink_filters_and_empty_tcx() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    assert_eq!(common::tc_filter_count(&ns, "lo", true), 0);
    assert!(common::tcx_program_names(&ns, "lo", true).is_empty());
    assert!(common::tcx_program_names(&ns, "lo", false).is_empty());
    ns.run(&["tc", "qdisc", "add", "dev", "lo", "clsact"]);
    // A classic-BPF "accept" filter: enough for the count without an eBPF object.
    for pref in ["1", "2"] {
        let bytecode = "1,6 0 0 4294967295,";
        ns.run(&[
            "tc", "filter", "add", "dev", "lo", "ingress", "pref", pref, "bpf", "bytecode",
            bytecode,
        ]);
    }
    assert_eq!(common::tc_filter_count(&ns, "lo", true), 2);
    assert_eq!(common::tc_filter_count(&ns, "lo", false), 0);
}

#[test]
fn http_parser_handles_plain_and_chunked_bodies() {
    let plain = b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
    assert_eq!(common::parse_http_response(plain), Ok((201, "{\"a\":1}".to_string())));
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        4\r\n{\"ok\r\n6;ext=1\r\n\":true\r\n1\r\n}\r\n0\r\n\r\n";
    assert_eq!(common::parse_http_response(chunked), Ok((200, "{\"ok\":true}".to_string())));
    assert!(common::parse_http_response(b"garbage").is_err());
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[test]
fn ipv4_udp_lengths_and_checksums() {
    let p = Pkt::ipv4([10, 201, 0, 1], [10, 201, 0, 2]).udp(1234, 53).payload(b"abcde").build();
    assert_eq!(p.len(), 14 + 20 + 8 + 5);
    assert_eq!(be16(&p, 12), 0x0800);
    assert_eq!(p[14], 0x45);
    assert_eq!(be16(&p, 16), 20 + 8 + 5, "IPv4 total length");
    assert_eq!(p[23], 17);
    assert_eq!(common::checksum(&[&p[14..34]]), 0, "IPv4 header checksum must verify");
    assert_ne!(be16(&p, 24), 0);
    assert_eq!(be16(&p, 34), 1234);
    assert_eq!(be16(&p, 36), 53);
    assert_eq!(be16(&p, 38), 8 + 5, "UDP length");
    let pseudo = [&p[26..34], &[0, 17], &(8u16 + 5).to_be_bytes()[..]].concat();
    assert_eq!(common::checksum(&[&pseudo, &p[34..]]), 0, "UDP checksum must verify");
}

#[test]
fn ipv4_options_and_fragments() {
    let p = Pkt::ipv4([10, 0, 0, 1], [10, 0, 0, 2])
        .ipv4_options(3)
        .ipv4_fragment(100, true)
        .tcp(1, 80, tcp_flags::SYN)
        .build();
    assert_eq!(p[14], 0x48, "IHL 8");
    assert_eq!(be16(&p, 16), 32 + 20);
    assert_eq!(be16(&p, 20), 0x2000 | 100, "MF + offset");
    assert_eq!(common::checksum(&[&p[14..46]]), 0);
    assert_eq!(p[46 + 12], 0x50, "TCP data offset 5");
    assert_eq!(p[46 + 13], tcp_flags::SYN);
    let last = Pkt::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).ipv4_fragment(7, false).build();
    assert_eq!(be16(&last, 20), 7);
    let whole = Pkt::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).icmp().build();
    assert_eq!(be16(&whole, 20), 0x4000, "DF only");
    assert_eq!(whole[23], 1);
    assert_eq!(common::checksum(&[&whole[34..]]), 0, "ICMP checksum must verify");
}

#[test]
fn ipv6_extension_chain_and_payload_length() {
    let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let p = Pkt::ipv6(src, dst)
        .ipv6_ext(0, 0)
        .ipv6_ext(43, 1)
        .ipv6_ext(60, 0)
        .ipv6_fragment(0, true)
        .tcp(40000, 443, tcp_flags::ACK)
        .payload(b"xy")
        .build();
    assert_eq!(be16(&p, 12), 0x86dd);
    assert_eq!(p[14] >> 4, 6);
    let exts = 8 + 16 + 8 + 8;
    assert_eq!(usize::from(be16(&p, 18)), exts + 20 + 2, "IPv6 payload length");
    assert_eq!(p.len(), 14 + 40 + exts + 22);
    assert_eq!(p[20], 0, "first next header: hop-by-hop");
    let mut at = 54;
    for (expect_next, size) in [(43, 8), (60, 16), (44, 8), (6, 8)] {
        assert_eq!(p[at], expect_next, "next header at offset {at}");
        at += size;
    }
    assert_eq!(be16(&p, 54 + 24 + 8 + 2), 1, "fragment offset 0, M set");
    assert_eq!(be16(&p, at + 2), 443);
    let icmp6 = Pkt::ipv6(src, dst).icmp().build();
    assert_eq!(icmp6[20], 58);
    assert_eq!(icmp6[54], 128, "echo request");
}

#[test]
fn vlan_tags_chain_ethertypes() {
    let one = Pkt::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).vlan(100).udp(1, 2).build();
    assert_eq!(be16(&one, 12), 0x8100);
    assert_eq!(be16(&one, 14), 100);
    assert_eq!(be16(&one, 16), 0x0800);
    assert_eq!(one[18], 0x45);
    let two = Pkt::ipv6([0; 16], [0; 16]).vlan_tpid(0x88a8, 10).vlan(20).build();
    assert_eq!(
        [be16(&two, 12), be16(&two, 14), be16(&two, 16), be16(&two, 18), be16(&two, 20)],
        [0x88a8, 10, 0x8100, 20, 0x86dd]
    );
    assert_eq!(two[22] >> 4, 6);
}

#[test]
fn truncations_are_every_strict_prefix() {
    let p = Pkt::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).tcp(1, 2, 0).build();
    let t = common::truncations(&p);
    assert_eq!(t.len(), p.len());
    for (n, prefix) in t.iter().enumerate() {
        assert_eq!(prefix.as_slice(), &p[..n]);
    }
}
