//! Header parsing: Ethernet, up to two VLAN tags, IPv4, IPv6 with a bounded
//! extension-header walk, TCP and UDP ports, and HTTP request lines.
//!
//! Headers are read through direct packet access, each read checked against
//! `data_end`. The HTTP request line is copied with `bpf_skb_load_bytes`,
//! which also reaches payload held in page fragments.

use core::mem::size_of;

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use vantage_common::{
    http::{Method, PathHasher, METHOD_PEEK_BYTES, PATH_HASH_MAX_BYTES},
    PROTO_TCP, PROTO_UDP,
};

const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;
const IPV6_HDR_LEN: usize = 40;
const UDP_HDR_LEN: usize = 8;
const TCP_MIN_HDR_LEN: usize = 20;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers walked over, at most this many.
const IPV6_MAX_EXT_HEADERS: usize = 8;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// What the classifier needs to know about one packet.
pub struct Packet {
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// Addresses in network byte order; IPv4 uses the first word.
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    /// Ports in network byte order, 0 when the packet carries none.
    pub sport_be: u16,
    pub dport_be: u16,
    /// Destination port in host order, 0 when absent.
    pub dst_port: u16,
    /// A TCP SYN without ACK: a new connection, never served from cache.
    pub tcp_syn: bool,
    /// HTTP method code and path hash, 0 when not a request line.
    pub http_method: u8,
    pub http_path_hash: u32,
}

/// The packet could not be parsed; it is admitted and counted.
pub struct Malformed;

/// A bounds-checked pointer to a `T` at byte `off` of the linear data.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*const T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Malformed> {
    // SAFETY: ptr_at checked that the bytes lie inside the packet; packet
    // data has no alignment guarantee, hence the unaligned read.
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<T>(ctx, off)?) })
}

/// Parses the headers of the packet in `ctx`.
///
/// `raw_ip` is set for interfaces whose packets start at the IP header.
/// Protocols other than TCP and UDP keep their number with port 0; a
/// non-first fragment has no ports.
#[inline(always)]
pub fn parse(ctx: &TcContext, raw_ip: bool) -> Result<Packet, Malformed> {
    let mut pkt = Packet {
        family: 0,
        proto: 0,
        saddr: [0; 4],
        daddr: [0; 4],
        sport_be: 0,
        dport_be: 0,
        dst_port: 0,
        tcp_syn: false,
        http_method: 0,
        http_path_hash: 0,
    };

    // Link layer: Ethernet and at most two VLAN tags (802.1ad outer, 802.1Q).
    let (mut ethertype, mut off) = if raw_ip {
        // SAFETY: reading a field of the context the verifier handed us.
        (u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16), 0usize)
    } else {
        (u16::from_be(read::<u16>(ctx, 12)?), ETH_HDR_LEN)
    };
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be(read::<u16>(ctx, off + 2)?);
        off += VLAN_HDR_LEN;
    }

    // Network layer. `l4_end` bounds the transport payload by the IP length.
    let mut has_ports = true;
    let l4_end;
    match ethertype {
        ETH_P_IP => {
            let vihl: u8 = read(ctx, off)?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(Malformed);
            }
            let tot_len = u16::from_be(read::<u16>(ctx, off + 2)?) as usize;
            let frag = u16::from_be(read::<u16>(ctx, off + 6)?);
            pkt.proto = read(ctx, off + 9)?;
            pkt.saddr[0] = read(ctx, off + 12)?;
            pkt.daddr[0] = read(ctx, off + 16)?;
            // The options must be present too, even though they are skipped.
            read::<u8>(ctx, off + ihl - 1)?;
            // A total length of 0 is what big TCP (GSO over 64 KiB) sends.
            if tot_len != 0 && tot_len < ihl {
                return Err(Malformed);
            }
            l4_end = if tot_len == 0 { ctx.len() as usize } else { off + tot_len };
            if l4_end > ctx.len() as usize {
                return Err(Malformed);
            }
            if frag & 0x1fff != 0 {
                has_ports = false;
            }
            pkt.family = 4;
            off += ihl;
        }
        ETH_P_IPV6 => {
            let v: u8 = read(ctx, off)?;
            if v >> 4 != 6 {
                return Err(Malformed);
            }
            let payload_len = u16::from_be(read::<u16>(ctx, off + 4)?) as usize;
            let mut next: u8 = read(ctx, off + 6)?;
            pkt.saddr = read(ctx, off + 8)?;
            pkt.daddr = read(ctx, off + 24)?;
            l4_end = if payload_len == 0 {
                ctx.len() as usize
            } else {
                off + IPV6_HDR_LEN + payload_len
            };
            if l4_end > ctx.len() as usize {
                return Err(Malformed);
            }
            off += IPV6_HDR_LEN;
            for _ in 0..IPV6_MAX_EXT_HEADERS {
                match next {
                    NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                        let len: u8 = read(ctx, off + 1)?;
                        next = read(ctx, off)?;
                        off += (len as usize + 1) * 8;
                    }
                    NEXTHDR_AUTH => {
                        let len: u8 = read(ctx, off + 1)?;
                        next = read(ctx, off)?;
                        off += (len as usize + 2) * 4;
                    }
                    NEXTHDR_FRAGMENT => {
                        let frag = u16::from_be(read::<u16>(ctx, off + 2)?);
                        next = read(ctx, off)?;
                        off += 8;
                        if frag & 0xfff8 != 0 {
                            has_ports = false;
                        }
                    }
                    _ => break,
                }
            }
            if off > l4_end {
                return Err(Malformed);
            }
            pkt.proto = next;
            pkt.family = 6;
        }
        _ => return Err(Malformed),
    }

    if !has_ports || (pkt.proto != PROTO_TCP && pkt.proto != PROTO_UDP) {
        return Ok(pkt);
    }

    // Transport layer.
    pkt.sport_be = read(ctx, off)?;
    pkt.dport_be = read(ctx, off + 2)?;
    pkt.dst_port = u16::from_be(pkt.dport_be);
    if pkt.proto == PROTO_UDP {
        if off + UDP_HDR_LEN > l4_end {
            return Err(Malformed);
        }
        return Ok(pkt);
    }
    let doff_byte: u8 = read(ctx, off + 12)?;
    let flags: u8 = read(ctx, off + 13)?;
    let doff = ((doff_byte >> 4) as usize) * 4;
    if doff < TCP_MIN_HDR_LEN || off + doff > l4_end {
        return Err(Malformed);
    }
    pkt.tcp_syn = flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;

    // Application layer: an HTTP request line at the start of the payload.
    http_request(ctx, off + doff, l4_end, &mut pkt);
    Ok(pkt)
}

/// Sets the packet's HTTP method and path hash if its payload, which spans
/// `start..end`, begins with a request line. Anything else leaves them 0.
#[inline(always)]
fn http_request(ctx: &TcContext, start: usize, end: usize, pkt: &mut Packet) {
    if start + METHOD_PEEK_BYTES > end {
        return;
    }
    let mut head = [0u8; METHOD_PEEK_BYTES];
    if load_bytes(ctx, start, &mut head, METHOD_PEEK_BYTES).is_err() {
        return;
    }
    let Some((method, path_off)) = Method::recognise(head) else {
        return;
    };

    // Copy up to PATH_HASH_MAX_BYTES + 1 bytes of path: one more than is
    // hashed, so a path of exactly the limit still meets its terminator.
    let path_start = start + path_off;
    let mut avail = end - path_start;
    if avail > PATH_BUF_LEN {
        avail = PATH_BUF_LEN;
    }
    if avail == 0 {
        return;
    }
    let mut buf = [0u8; PATH_BUF_LEN];
    if load_bytes(ctx, path_start, &mut buf, avail).is_err() {
        return;
    }

    let mut h = PathHasher::new();
    #[expect(
        clippy::needless_range_loop,
        reason = "an index with a constant bound is what the verifier proves in bounds most simply"
    )]
    for i in 0..PATH_BUF_LEN {
        if i >= avail || !h.push(buf[i]) {
            break;
        }
    }
    if h.is_empty() {
        return;
    }
    pkt.http_method = method as u8;
    pkt.http_path_hash = h.finish();
}

const PATH_BUF_LEN: usize = PATH_HASH_MAX_BYTES + 1;

/// Copies `len` (1..=dst.len()) packet bytes at `off` into `dst`.
#[inline(always)]
fn load_bytes<const N: usize>(
    ctx: &TcContext,
    off: usize,
    dst: &mut [u8; N],
    len: usize,
) -> Result<(), ()> {
    // Verifier: the helper needs a length it can prove is within `dst`.
    if len == 0 || len > N {
        return Err(());
    }
    // SAFETY: `dst` is a stack buffer of N >= len bytes.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            dst.as_mut_ptr() as *mut _,
            len as u32,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(())
    }
}
