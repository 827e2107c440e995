//! Frames for `BPF_PROG_TEST_RUN`: valid ones that know their own layout, and mutations that
//! say, where the mutation alone decides it, whether the frame still parses under the rules
//! [`super::model`] states.

use vantage_common::http::{Method, PATH_HASH_MAX_BYTES};

use super::Rng;
use crate::common::{checksum, DST_MAC, SRC_MAC};

/// IPv4 loopback, the source and destination of every generated frame.
pub const LO4: [u8; 4] = [127, 0, 0, 1];
/// IPv6 loopback.
pub const LO6: [u8; 16] = std::net::Ipv6Addr::LOCALHOST.octets();

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// Frames stay below this, so an extension header length of 255 always runs past the end.
const MAX_FRAME: usize = 1900;

/// An IPv6 extension header; lengths are the header's own length field.
#[derive(Debug, Clone, Copy)]
pub enum Ext {
    /// Hop-by-hop options (0), 8-octet units beyond the first 8.
    Hop(u8),
    /// Routing (43).
    Routing(u8),
    /// Destination options (60).
    Dest(u8),
    /// Authentication header (51), 4-octet units minus 2.
    Auth(u8),
    /// Fragment (44) at `offset` 8-octet units, with the M flag.
    Fragment { offset: u16, more: bool },
}

impl Ext {
    fn kind(self) -> u8 {
        match self {
            Ext::Hop(_) => 0,
            Ext::Routing(_) => 43,
            Ext::Dest(_) => 60,
            Ext::Auth(_) => 51,
            Ext::Fragment { .. } => 44,
        }
    }

    fn size(self) -> usize {
        match self {
            Ext::Hop(n) | Ext::Routing(n) | Ext::Dest(n) => (usize::from(n) + 1) * 8,
            Ext::Auth(n) => (usize::from(n) + 2) * 4,
            Ext::Fragment { .. } => 8,
        }
    }
}

/// The network layer of a [`FrameSpec`].
#[derive(Debug, Clone)]
pub enum L3 {
    /// IPv4 with `option_words` words of options and a fragment offset.
    V4 { option_words: u8, frag_offset: u16, more_fragments: bool },
    /// IPv6 with an extension header chain.
    V6 { exts: Vec<Ext> },
}

/// The transport layer of a [`FrameSpec`].
#[derive(Debug, Clone, Copy)]
pub enum L4 {
    /// TCP with `option_words` words of options (data offset 5 + that).
    Tcp { sport: u16, dport: u16, flags: u8, option_words: u8 },
    /// UDP.
    Udp { sport: u16, dport: u16 },
    /// ICMP or ICMPv6 echo request.
    Icmp,
    /// Another protocol number, no header.
    Other(u8),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    /// TPIDs of the VLAN tags, outer first.
    pub vlans: Vec<u16>,
    /// Network layer.
    pub l3: L3,
    /// Transport layer.
    pub l4: L4,
    /// Transport payload.
    pub payload: Vec<u8>,
    /// Ethernet padding after the IP datagram.
    pub trailer: Vec<u8>,
    /// IPv4 total length or IPv6 payload length 0 (what big TCP sends).
    pub zero_length: bool,
}

/// A built frame and where its parts are.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Offsets where a header (Ethernet, a VLAN tag, IP, an extension, L4) or the datagram ends.
    pub boundaries: Vec<usize>,
    /// Offset of the final ethertype field.
    pub ethertype_at: usize,
    /// Number of VLAN tags.
    pub vlans: usize,
    /// Start of the IP header.
    pub l3: usize,
    /// Start of each IPv6 extension header.
    pub exts: Vec<(usize, Ext)>,
    /// Start of the transport header.
    pub l4: usize,
    /// TCP header length, when TCP.
    pub tcp_len: Option<usize>,
    /// End of the IP datagram (the trailer follows).
    pub datagram_end: usize,
    /// End of the last byte the parser must see for this frame to parse.
    pub headers_end: usize,
    /// Whether the IP length field is 0.
    pub zero_length: bool,
    /// IPv6 rather than IPv4.
    pub v6: bool,
}

impl Frame {
    /// The shortest prefix that still parses: with a length field, the whole datagram; without
    /// one, the headers.
    pub fn min_parseable_len(&self) -> usize {
        if self.zero_length {
            self.headers_end
        } else {
            self.datagram_end
        }
    }

    /// End of the transport payload as the parser sees it.
    fn l4_end(&self) -> usize {
        if self.zero_length {
            self.bytes.len()
        } else {
            self.datagram_end
        }
    }
}

/// Serializes `spec`.
pub fn build(spec: &FrameSpec) -> Frame {
    let v6 = matches!(spec.l3, L3::V6 { .. });
    let l4_proto = match spec.l4 {
        L4::Tcp { .. } => PROTO_TCP,
        L4::Udp { .. } => PROTO_UDP,
        L4::Icmp => {
            if v6 {
                58
            } else {
                1
            }
        }
        L4::Other(p) => p,
    };
    let mut l4 = Vec::new();
    let mut tcp_len = None;
    match spec.l4 {
        L4::Tcp { sport, dport, flags, option_words } => {
            let len = 20 + 4 * usize::from(option_words);
            tcp_len = Some(len);
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&7u32.to_be_bytes());
            l4.extend_from_slice(&9u32.to_be_bytes());
            l4.push(((5 + option_words) << 4) & 0xf0);
            l4.push(flags);
            l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            l4.resize(len, 1); // NOP options
        }
        L4::Udp { sport, dport } => {
            let len = (8 + spec.payload.len()) as u16;
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&len.to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        L4::Icmp => l4.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1]),
        L4::Other(_) => {}
    }
    let l4_hdr_len = l4.len();
    l4.extend_from_slice(&spec.payload);

    let mut out = Vec::with_capacity(128 + l4.len());
    let mut boundaries = Vec::new();
    out.extend_from_slice(&DST_MAC);
    out.extend_from_slice(&SRC_MAC);
    for (i, tpid) in spec.vlans.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(100 + i as u16).to_be_bytes());
        boundaries.push(out.len() + 2);
    }
    let ethertype_at = out.len();
    out.extend_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
    let l3 = out.len();
    boundaries.insert(0, 14);

    let mut ext_at = Vec::new();
    let (headers_end, l4_off);
    match &spec.l3 {
        L3::V4 { option_words, frag_offset, more_fragments } => {
            let ihl = 20 + 4 * usize::from(*option_words);
            let total = if spec.zero_length { 0 } else { (ihl + l4.len()) as u16 };
            let frag = match (*frag_offset, *more_fragments) {
                (0, false) => 0x4000,
                (off, mf) => off | if mf { 0x2000 } else { 0 },
            };
            let mut h = Vec::with_capacity(ihl);
            h.extend_from_slice(&[0x40 | (ihl / 4) as u8, 0]);
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&0x4242u16.to_be_bytes());
            h.extend_from_slice(&frag.to_be_bytes());
            h.extend_from_slice(&[64, l4_proto, 0, 0]);
            h.extend_from_slice(&LO4);
            h.extend_from_slice(&LO4);
            h.resize(ihl, 1); // NOP options
            let csum = checksum(&[&h]);
            h[10..12].copy_from_slice(&csum.to_be_bytes());
            out.extend_from_slice(&h);
            l4_off = out.len();
            let ports = *frag_offset == 0 && (l4_proto == PROTO_TCP || l4_proto == PROTO_UDP);
            headers_end = if ports { l4_off + l4_hdr_len } else { l4_off };
        }
        L3::V6 { exts } => {
            let ext_len: usize = exts.iter().map(|e| e.size()).sum();
            let plen = if spec.zero_length { 0 } else { (ext_len + l4.len()) as u16 };
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&plen.to_be_bytes());
            out.push(exts.first().map_or(l4_proto, |e| e.kind()));
            out.push(64);
            out.extend_from_slice(&LO6);
            out.extend_from_slice(&LO6);
            boundaries.push(out.len());
            for (i, ext) in exts.iter().enumerate() {
                ext_at.push((out.len(), *ext));
                let next = exts.get(i + 1).map_or(l4_proto, |e| e.kind());
                let mut h = vec![0u8; ext.size()];
                h[0] = next;
                match *ext {
                    Ext::Hop(n) | Ext::Routing(n) | Ext::Dest(n) | Ext::Auth(n) => h[1] = n,
                    Ext::Fragment { offset, more } => {
                        h[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                        h[4..8].copy_from_slice(&0x0bad_f00du32.to_be_bytes());
                    }
                }
                out.extend_from_slice(&h);
                boundaries.push(out.len());
            }
            l4_off = out.len();
            // The parser walks at most 8 extension headers; the 9th's kind becomes the protocol.
            let walked = &exts[..exts.len().min(8)];
            let walk_end = l3 + 40 + walked.iter().map(|e| e.size()).sum::<usize>();
            let later_fragment =
                walked.iter().any(|e| matches!(e, Ext::Fragment { offset, .. } if *offset != 0));
            let transport = exts.len() <= 8 && (l4_proto == PROTO_TCP || l4_proto == PROTO_UDP);
            headers_end = if transport && !later_fragment { l4_off + l4_hdr_len } else { walk_end };
        }
    }
    if !v6 {
        boundaries.push(l4_off);
    }
    out.extend_from_slice(&l4);
    boundaries.push(l4_off + l4_hdr_len);
    let datagram_end = out.len();
    boundaries.push(datagram_end);
    out.extend_from_slice(&spec.trailer);
    boundaries.sort_unstable();
    boundaries.dedup();
    assert!(out.len() <= MAX_FRAME, "generated frame of {} bytes is too long", out.len());
    Frame {
        bytes: out,
        boundaries,
        ethertype_at,
        vlans: spec.vlans.len(),
        l3,
        exts: ext_at,
        l4: l4_off,
        tcp_len,
        datagram_end,
        headers_end,
        zero_length: spec.zero_length,
        v6,
    }
}

// ---------------------------------------------------------------------------------------------
// Random frames
// ---------------------------------------------------------------------------------------------

/// A path of 160 bytes whose first 128 bytes are [`long_path_prefix`].
pub fn long_path(tail: u8) -> Vec<u8> {
    let mut p = long_path_prefix();
    p.extend(std::iter::repeat_n(tail, 32));
    p
}

/// The 128 bytes of a long path that are hashed.
pub fn long_path_prefix() -> Vec<u8> {
    let mut p = b"/fuzz/long/".to_vec();
    p.extend((0..PATH_HASH_MAX_BYTES - p.len()).map(|i| b'a' + (i % 26) as u8));
    p
}

/// HTTP-looking TCP payload: request lines with every method, near-miss methods, known and
/// random paths, paths over the hashed length, query strings, and lines cut anywhere.
pub fn http_payload(rng: &mut Rng, known_paths: &[&[u8]]) -> Vec<u8> {
    const NEAR_MISSES: &[&[u8]] =
        &[b"get", b"GETX", b"POS", b"DELET", b"OPTION", b"PATC", b"Get", b"CONNEC", b""];
    const PATH_BYTES: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._~%/=&+";
    let mut out = match rng.below(20) {
        // The methods policies select, more often than the rest.
        0..=7 => Method::Get.token().to_vec(),
        8..=10 => Method::Post.token().to_vec(),
        11 | 12 => Method::Delete.token().to_vec(),
        13..=16 => Method::ALL[rng.below(Method::ALL.len())].token().to_vec(),
        _ => rng.pick(NEAR_MISSES).to_vec(),
    };
    out.extend_from_slice(rng.pick(&[&b" "[..], b" ", b" ", b" ", b"\t", b"", b"  "]));
    match rng.below(12) {
        0..=5 => out.extend_from_slice(rng.pick(known_paths)),
        6 | 7 => {
            out.push(b'/');
            let n = rng.range(0, 60);
            out.extend(rng.bytes_from(PATH_BYTES, n));
        }
        8 => out.extend(long_path(rng.pick(b"xyz"))),
        9 => {
            out.push(b'/');
            let n = rng.range(PATH_HASH_MAX_BYTES - 2, 300);
            out.extend(rng.bytes_from(PATH_BYTES, n));
        }
        10 => out.extend_from_slice(rng.pick(&[&b"*"[..], b"http://x/", b"", b"?q", b" /"])),
        _ => {
            out.extend_from_slice(rng.pick(known_paths));
            out.extend_from_slice(b"?q=1&r=/x");
        }
    }
    out.extend_from_slice(rng.pick(&[
        &b" HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b" HTTP/1.0\r\n\r\n",
        b"\r\n",
        b"",
        b" HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    ]));
    if rng.chance(1, 4) {
        let cut = rng.below(out.len() + 1);
        out.truncate(cut);
    }
    out
}

/// Where generated traffic goes: destination ports and the paths policies know.
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    /// Destination ports (owned or not).
    pub ports: &'a [u16],
    /// Paths some policies select.
    pub paths: &'a [&'a [u8]],
}

/// A random valid frame: 0-2 VLAN tags, IPv4 (options, fragments) or IPv6 (extension chains,
/// fragments), TCP (options, HTTP payloads), UDP, ICMP or another protocol, and sometimes
/// Ethernet padding or a zero IP length.
pub fn random_frame(rng: &mut Rng, to: Targets<'_>) -> Frame {
    let vlans = (0..rng.pick(&[0, 0, 0, 1, 2])).map(|_| rng.pick(&[0x8100, 0x88a8])).collect();
    let v6 = rng.chance(1, 2);
    let l3 = if v6 {
        let n = rng.pick(&[0, 0, 0, 1, 1, 2, 3, 9]);
        let exts = (0..n)
            .map(|_| match rng.below(6) {
                0 => Ext::Hop(rng.range(0, 3) as u8),
                1 => Ext::Routing(rng.range(0, 3) as u8),
                2 => Ext::Dest(rng.range(0, 3) as u8),
                3 => Ext::Auth(rng.range(1, 6) as u8),
                4 => Ext::Fragment { offset: 0, more: true },
                _ => Ext::Fragment {
                    offset: if rng.chance(1, 2) { 0 } else { rng.range(1, 8000) as u16 },
                    more: rng.chance(1, 2),
                },
            })
            .collect();
        L3::V6 { exts }
    } else {
        let frag_offset = if rng.chance(1, 8) { rng.range(1, 8000) as u16 } else { 0 };
        L3::V4 {
            option_words: rng.pick(&[0, 0, 0, 1, 3, 10]),
            frag_offset,
            more_fragments: rng.chance(1, 4),
        }
    };
    let sport = rng.range(1024, 65535) as u16;
    let dport = rng.pick(to.ports);
    let (l4, payload) = match rng.below(20) {
        0..=8 => {
            let flags = rng.pick(&[0x10, 0x18, 0x18, 0x02, 0x12, 0x11, 0x04]);
            let option_words = rng.pick(&[0, 0, 0, 1, 3, 10]);
            let payload = match rng.below(10) {
                0..=6 => http_payload(rng, to.paths),
                7 => Vec::new(),
                _ => {
                    let n = rng.range(1, 200);
                    rng.bytes(n)
                }
            };
            (L4::Tcp { sport, dport, flags, option_words }, payload)
        }
        9..=15 => {
            let payload = if rng.chance(1, 3) {
                http_payload(rng, to.paths)
            } else {
                let n = rng.range(0, 200);
                rng.bytes(n)
            };
            (L4::Udp { sport, dport }, payload)
        }
        16 | 17 => (L4::Icmp, rng.bytes(16)),
        _ => (L4::Other(rng.pick(&[2, 47, 50, 59, 132, 255])), rng.bytes(12)),
    };
    let trailer = if rng.chance(1, 5) {
        let n = rng.range(1, 30);
        rng.bytes(n)
    } else {
        Vec::new()
    };
    let zero_length = rng.chance(1, 12);
    build(&FrameSpec { vlans, l3, l4, payload, trailer, zero_length })
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

/// A mutated frame and, where the mutation decides it, whether it must still parse.
#[derive(Debug, Clone)]
pub struct Mutant {
    /// What was done, for failure messages.
    pub what: String,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// `Some(parses)` when the mutation alone decides it; `None` when only the model can tell.
    pub parses: Option<bool>,
}

fn mutant(what: impl Into<String>, bytes: Vec<u8>, parses: Option<bool>) -> Mutant {
    Mutant { what: what.into(), bytes, parses }
}

/// Every truncation at a header boundary (and one byte before each), plus one random cut.
///
/// Cuts inside the Ethernet header are kept for one frame in 8 only: the kernel refuses to
/// run those at all, so they mostly cost time.
pub fn truncations(rng: &mut Rng, f: &Frame) -> Vec<Mutant> {
    let keep_short = rng.chance(1, 8);
    let mut cuts: Vec<usize> = f
        .boundaries
        .iter()
        .flat_map(|&b| [b, b.saturating_sub(1)])
        .filter(|&c| keep_short || c > 14)
        .collect();
    cuts.push(rng.below(f.bytes.len()));
    cuts.sort_unstable();
    cuts.dedup();
    cuts.into_iter()
        .filter(|&c| c < f.bytes.len())
        .map(|c| {
            let parses = c >= f.min_parseable_len();
            mutant(format!("truncated to {c} bytes"), f.bytes[..c].to_vec(), Some(parses))
        })
        .collect()
}

/// One random header-field mutation of `f` (bad IHL, version, lengths, ethertype, data offset,
/// extension length, next header, protocol, fragment offset).
pub fn field_mutation(rng: &mut Rng, f: &Frame) -> Mutant {
    let mut b = f.bytes.clone();
    let l3 = f.l3;
    let set16 =
        |b: &mut Vec<u8>, at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_be_bytes());
    let datagram = f.datagram_end - l3;
    loop {
        match rng.below(14) {
            0 if !f.v6 => {
                let ihl = rng.range(0, 4) as u8;
                b[l3] = 0x40 | ihl;
                return mutant(format!("ipv4 ihl {ihl}"), b, Some(false));
            }
            1 => {
                let want = if f.v6 { 6 } else { 4 };
                let v = loop {
                    let v = rng.below(16) as u8;
                    if v != want {
                        break v;
                    }
                };
                b[l3] = (v << 4) | (b[l3] & 0x0f);
                return mutant(format!("ip version {v}"), b, Some(false));
            }
            2 if !f.v6 => {
                let ihl = usize::from(b[l3] & 0x0f) * 4;
                let tot = rng.range(1, ihl - 1) as u16;
                set16(&mut b, l3 + 2, tot);
                return mutant(format!("ipv4 total length {tot} below ihl"), b, Some(false));
            }
            3 => {
                // Beyond the frame, trailer included.
                let room = f.bytes.len() - l3 - if f.v6 { 40 } else { 0 };
                let len = (room + rng.range(1, 300)) as u16;
                set16(&mut b, l3 + if f.v6 { 4 } else { 2 }, len);
                return mutant(format!("ip length {len} beyond the frame"), b, Some(false));
            }
            4 => {
                // Shorter than the datagram: parses while the headers still fit.
                let (lo, fixed) = if f.v6 { (1, 40) } else { (usize::from(b[l3] & 0x0f) * 4, 0) };
                if datagram - fixed <= lo {
                    continue;
                }
                let len = rng.range(lo, datagram - fixed - 1);
                set16(&mut b, l3 + if f.v6 { 4 } else { 2 }, len as u16);
                let parses = l3 + fixed + len >= f.headers_end;
                return mutant(format!("ip length shrunk to {len}"), b, Some(parses));
            }
            5 => {
                set16(&mut b, l3 + if f.v6 { 4 } else { 2 }, 0);
                return mutant("ip length 0", b, Some(true));
            }
            6 => {
                let t = loop {
                    let t = rng.next_u64() as u16;
                    if ![0x0800, 0x86dd, 0x8100, 0x88a8].contains(&t) {
                        break t;
                    }
                };
                set16(&mut b, f.ethertype_at, t);
                return mutant(format!("ethertype {t:#06x}"), b, Some(false));
            }
            7 => {
                // A third VLAN tag is one too many; fewer tags make IP bytes a tag.
                set16(&mut b, f.ethertype_at, 0x8100);
                let parses = if f.vlans == 2 { Some(false) } else { None };
                return mutant("vlan tag instead of the ethertype", b, parses);
            }
            8 if f.tcp_len.is_some() && f.headers_end > f.l4 => {
                let doff = rng.range(0, 4) as u8;
                b[f.l4 + 12] = (doff << 4) | (b[f.l4 + 12] & 0x0f);
                return mutant(format!("tcp data offset {doff}"), b, Some(false));
            }
            9 if f.tcp_len.is_some() && f.headers_end > f.l4 => {
                let doff = rng.range(5, 15);
                b[f.l4 + 12] = ((doff as u8) << 4) | (b[f.l4 + 12] & 0x0f);
                let parses = f.l4 + doff * 4 <= f.l4_end();
                return mutant(format!("tcp data offset {doff}"), b, Some(parses));
            }
            10 => {
                // 255 8-octet units run past any generated frame, wherever the walk is.
                let options: Vec<usize> = f
                    .exts
                    .iter()
                    .take(8)
                    .filter(|(_, e)| matches!(e, Ext::Hop(_) | Ext::Routing(_) | Ext::Dest(_)))
                    .map(|(at, _)| *at)
                    .collect();
                if options.is_empty() {
                    continue;
                }
                let at = rng.pick(&options);
                b[at + 1] = 255;
                return mutant(format!("extension header at {at} length 255"), b, Some(false));
            }
            11 if f.v6 => {
                let at = if f.exts.is_empty() || rng.chance(1, 2) {
                    l3 + 6
                } else {
                    f.exts[rng.below(f.exts.len())].0
                };
                let nh = rng.next_u64() as u8;
                b[at] = nh;
                return mutant(format!("next header {nh} at {at}"), b, None);
            }
            12 if !f.v6 => {
                let p = rng.next_u64() as u8;
                b[l3 + 9] = p;
                return mutant(format!("ipv4 protocol {p}"), b, None);
            }
            13 if !f.v6 => {
                let off = rng.range(1, 0x1fff) as u16;
                set16(&mut b, l3 + 6, off | 0x2000);
                return mutant(format!("ipv4 fragment offset {off}"), b, Some(true));
            }
            _ => continue,
        }
    }
}

/// `f` with 1 to 4 random bytes replaced; only the model can tell whether it parses.
pub fn byte_flips(rng: &mut Rng, f: &Frame) -> Mutant {
    let mut b = f.bytes.clone();
    let mut what = String::from("bytes flipped at");
    for _ in 0..rng.range(1, 4) {
        // Mostly in the headers, where flips change the parse.
        let end = if rng.chance(3, 4) { (f.headers_end + 1).min(b.len()) } else { b.len() };
        let at = rng.below(end);
        b[at] ^= (rng.next_u64() as u8) | 1;
        what.push_str(&format!(" {at}"));
    }
    mutant(what, b, None)
}
