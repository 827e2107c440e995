//! A model of the classifier's parsing rules (SPEC §4.2, `vantage-ebpf/src/parse.rs`), written
//! from the rules rather than from the code, to predict what the kernel makes of any frame.
//!
//! The rules: Ethernet with at most two VLAN tags; IPv4 with version 4, IHL of at least 5, the
//! header and options present, and a total length of 0 (big TCP) or between the header length
//! and the end of the frame; IPv6 with version 6, a payload length of 0 or within the frame,
//! and at most 8 extension headers walked, which must end inside the payload; then for TCP and
//! UDP (unless a later fragment) the ports, for UDP its 8-byte header and for TCP a data offset
//! of at least 5 words ending inside the payload. Anything else is malformed. A TCP payload of
//! at least 8 bytes that starts with a method token, one space and `/` carries the method and
//! the hash of the path.

use vantage_common::http::{path_hash, Method};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// What the parsing rules extract from a frame that parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// 4 or 6.
    pub family: u8,
    /// IP protocol after extension headers.
    pub proto: u8,
    /// Destination address (IPv4 in the first 4 bytes).
    pub daddr: [u8; 16],
    /// Source and destination port, when the packet carries ports.
    pub ports: Option<(u16, u16)>,
    /// A TCP SYN without ACK.
    pub syn: bool,
    /// HTTP method code and path hash, when the payload is a request line.
    pub http: Option<(u8, u32)>,
}

fn bytes_at<'a>(
    f: &'a [u8],
    at: usize,
    n: usize,
    what: &'static str,
) -> Result<&'a [u8], &'static str> {
    at.checked_add(n).and_then(|end| f.get(at..end)).ok_or(what)
}

fn u8_at(f: &[u8], at: usize, what: &'static str) -> Result<u8, &'static str> {
    Ok(bytes_at(f, at, 1, what)?[0])
}

fn u16_at(f: &[u8], at: usize, what: &'static str) -> Result<u16, &'static str> {
    let b = bytes_at(f, at, 2, what)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// Applies the parsing rules to `f`; `Err` names why the frame is malformed.
pub fn parse(f: &[u8]) -> Result<Parsed, &'static str> {
    let mut ethertype = u16_at(f, 12, "truncated ethernet header")?;
    let mut off = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = u16_at(f, off + 2, "truncated vlan tag")?;
        off += 4;
    }

    let mut p = Parsed { family: 0, proto: 0, daddr: [0; 16], ports: None, syn: false, http: None };
    let mut has_ports = true;
    let l4_end;
    match ethertype {
        0x0800 => {
            let vihl = u8_at(f, off, "truncated ipv4 header")?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 {
                return Err("ipv4 version is not 4");
            }
            if ihl < 20 {
                return Err("ipv4 ihl below 5");
            }
            let h = bytes_at(f, off, ihl, "truncated ipv4 header or options")?;
            let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if tot != 0 && tot < ihl {
                return Err("ipv4 total length below the header length");
            }
            l4_end = if tot == 0 { f.len() } else { off + tot };
            if l4_end > f.len() {
                return Err("ipv4 total length beyond the frame");
            }
            has_ports = u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0;
            p.family = 4;
            p.proto = h[9];
            p.daddr[..4].copy_from_slice(&h[16..20]);
            off += ihl;
        }
        0x86dd => {
            if u8_at(f, off, "truncated ipv6 header")? >> 4 != 6 {
                return Err("ipv6 version is not 6");
            }
            let h = bytes_at(f, off, 40, "truncated ipv6 header")?;
            let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let mut next = h[6];
            p.daddr.copy_from_slice(&h[24..40]);
            l4_end = if plen == 0 { f.len() } else { off + 40 + plen };
            if l4_end > f.len() {
                return Err("ipv6 payload length beyond the frame");
            }
            off += 40;
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let e = bytes_at(f, off, 2, "truncated extension header")?;
                        next = e[0];
                        off += (usize::from(e[1]) + 1) * 8;
                    }
                    51 => {
                        let e = bytes_at(f, off, 2, "truncated authentication header")?;
                        next = e[0];
                        off += (usize::from(e[1]) + 2) * 4;
                    }
                    44 => {
                        let e = bytes_at(f, off, 4, "truncated fragment header")?;
                        next = e[0];
                        if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                            has_ports = false;
                        }
                        off += 8;
                    }
                    _ => break,
                }
            }
            if off > l4_end {
                return Err("ipv6 extension headers run past the payload");
            }
            p.family = 6;
            p.proto = next;
        }
        _ => return Err("unknown ethertype"),
    }

    if !has_ports || (p.proto != PROTO_TCP && p.proto != PROTO_UDP) {
        return Ok(p);
    }
    let ports = bytes_at(f, off, 4, "truncated transport ports")?;
    p.ports =
        Some((u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]])));
    if p.proto == PROTO_UDP {
        if off + 8 > l4_end {
            return Err("udp header beyond the payload");
        }
        return Ok(p);
    }
    let t = bytes_at(f, off + 12, 2, "truncated tcp header")?;
    let doff = usize::from(t[0] >> 4) * 4;
    if doff < 20 {
        return Err("tcp data offset below 5");
    }
    if off + doff > l4_end {
        return Err("tcp header beyond the payload");
    }
    p.syn = t[1] & 0x12 == 0x02;
    p.http = request_line(&f[off + doff..l4_end]);
    Ok(p)
}

/// The method code and path hash of an HTTP request line at the start of `payload`.
pub fn request_line(payload: &[u8]) -> Option<(u8, u32)> {
    // Fewer bytes than the classifier peeks at are never a request line.
    if payload.len() < 8 {
        return None;
    }
    let m = Method::ALL.into_iter().find(|m| {
        let t = m.token();
        payload.starts_with(t) && payload.get(t.len()) == Some(&b' ')
    })?;
    let path = &payload[m.token().len() + 1..];
    if path.first() != Some(&b'/') {
        return None;
    }
    Some((m as u8, path_hash(path)))
}
