//! Header parsing for the TC programs: from a frame to a [`FlowKey`] and its accounting.
//!
//! The headers are read with direct packet access. When the linear part of the skb is shorter
//! than the headers may need, it is pulled once with `bpf_skb_pull_data`. A frame that does not
//! hold a complete IP and transport header fails with the counter index saying why.

use aya_ebpf::programs::TcContext;
use orb8_common::{FlowKey, counter, family, key_flags};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

const IPV6_HLEN: usize = 40;
/// Extension headers walked before giving up (`IPV6_EXT_TOO_DEEP`).
const IPV6_MAX_EXT: usize = 6;
/// Bytes made linear when the skb's linear part is shorter: enough for a VLAN tag, IPv6 with
/// several extension headers and a TCP header with options.
const PULL_LEN: u32 = 256;
/// Transport headers beyond this offset are not looked for (bounds packet offsets for the verifier).
const MAX_L4_OFF: usize = 512;

/// What one packet adds to its flow.
pub struct Packet {
    pub key: FlowKey,
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u8,
    /// Where the transport payload starts in the frame (TCP/UDP; 0 otherwise).
    pub payload_off: usize,
    /// Transport payload bytes (TCP/UDP; 0 otherwise).
    pub payload_len: usize,
}

/// Copies `N` bytes at `off` out of the packet, or `None` when they are not all inside it.
/// One bounds check per header keeps the verifier's view of packet pointers simple.
#[inline(always)]
fn read<const N: usize>(ctx: &TcContext, off: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + N > end {
        return None;
    }
    // SAFETY: the check above proves `[start + off, start + off + N)` is inside the packet.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

#[inline(always)]
fn mapped_v4(b: &[u8], i: usize) -> [u8; 16] {
    [
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0xff,
        0xff,
        b[i],
        b[i + 1],
        b[i + 2],
        b[i + 3],
    ]
}

#[inline(always)]
fn addr16(b: &[u8; 40], i: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[i..i + 16]);
    a
}

/// Parses the frame into the flow it belongs to, or the `counter` index of why it cannot be.
#[inline(always)]
pub fn parse(ctx: &TcContext, dir: u8) -> Result<Packet, u32> {
    let len = ctx.len();
    let want = if len < PULL_LEN { len } else { PULL_LEN };
    if ((ctx.data_end() - ctx.data()) as u32) < want && ctx.pull_data(want).is_err() {
        return Err(counter::PULL_FAILED);
    }

    let mut l3 = ETH_HLEN;
    let eth: [u8; ETH_HLEN] = read(ctx, 0).ok_or(counter::TRUNCATED_L2)?;
    let mut proto = be16(&eth, 12);
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let tag: [u8; VLAN_HLEN] = read(ctx, ETH_HLEN).ok_or(counter::TRUNCATED_L2)?;
        proto = be16(&tag, 2);
        l3 += VLAN_HLEN;
    }

    // SAFETY: reading a field of the context the kernel passed to the program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut key = FlowKey {
        ifindex,
        direction: dir,
        ..FlowKey::default()
    };
    let avail = (len as usize).saturating_sub(l3);

    let (l4, ip_bytes, fragment) = match proto {
        ETH_P_IP => {
            let ip: [u8; 20] = read(ctx, l3).ok_or(counter::BAD_L3)?;
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return Err(counter::BAD_L3);
            }
            let tot_len = be16(&ip, 2) as usize;
            let frag = be16(&ip, 6);
            key.protocol = ip[9];
            key.src_addr = mapped_v4(&ip, 12);
            key.dst_addr = mapped_v4(&ip, 16);
            key.family = family::IPV4;
            // The IP packet must fit in the frame. GSO super-packets may carry tot_len 0.
            let ip_bytes = if tot_len == 0 { avail } else { tot_len };
            if ip_bytes < ihl || ip_bytes > avail {
                return Err(counter::BAD_L3);
            }
            (l3 + ihl, ip_bytes, frag & 0x1fff != 0)
        }
        ETH_P_IPV6 => {
            let ip: [u8; IPV6_HLEN] = read(ctx, l3).ok_or(counter::BAD_L3)?;
            if ip[0] >> 4 != 6 {
                return Err(counter::BAD_L3);
            }
            let payload = be16(&ip, 4) as usize;
            let mut next = ip[6];
            key.src_addr = addr16(&ip, 8);
            key.dst_addr = addr16(&ip, 24);
            key.family = family::IPV6;
            // A zero payload length is a jumbogram or a BIG TCP super-packet: the frame says.
            let ip_bytes = if payload == 0 {
                avail
            } else {
                IPV6_HLEN + payload
            };
            if ip_bytes > avail {
                return Err(counter::BAD_L3);
            }
            let mut off = l3 + IPV6_HLEN;
            let mut fragment = false;
            let mut done = false;
            for _ in 0..IPV6_MAX_EXT {
                let hlen = match next {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH
                    | IPPROTO_FRAGMENT => {
                        let ext: [u8; 8] = read(ctx, off).ok_or(counter::BAD_L3)?;
                        let hlen = match next {
                            IPPROTO_FRAGMENT => {
                                if be16(&ext, 2) & 0xfff8 != 0 {
                                    fragment = true;
                                }
                                8
                            }
                            IPPROTO_AH => (ext[1] as usize + 2) * 4,
                            _ => (ext[1] as usize + 1) * 8,
                        };
                        next = ext[0];
                        hlen
                    }
                    _ => {
                        done = true;
                        break;
                    }
                };
                off += hlen;
                if off > l3 + ip_bytes || off > MAX_L4_OFF {
                    return Err(counter::BAD_L3);
                }
            }
            if !done && is_ipv6_ext(next) {
                return Err(counter::IPV6_EXT_TOO_DEEP);
            }
            key.protocol = next;
            (off, ip_bytes, fragment)
        }
        _ => return Err(counter::NOT_IP),
    };

    let mut pkt = Packet {
        key,
        packets: 1,
        bytes: ip_bytes as u64,
        tcp_flags: 0,
        payload_off: 0,
        payload_len: 0,
    };
    if fragment {
        // Not the first fragment: no transport header. Counted against the addresses and
        // protocol, with ports left at zero.
        pkt.key.flags = key_flags::FRAGMENT;
        return Ok(pkt);
    }

    let l4_hlen = match pkt.key.protocol {
        IPPROTO_TCP => {
            let th: [u8; 20] = read(ctx, l4).ok_or(counter::BAD_L4)?;
            let thlen = ((th[12] >> 4) as usize) * 4;
            if thlen < 20 {
                return Err(counter::BAD_L4);
            }
            pkt.tcp_flags = th[13];
            pkt.key.src_port = be16(&th, 0);
            pkt.key.dst_port = be16(&th, 2);
            thlen
        }
        IPPROTO_UDP | IPPROTO_UDPLITE => {
            let uh: [u8; 8] = read(ctx, l4).ok_or(counter::BAD_L4)?;
            pkt.key.src_port = be16(&uh, 0);
            pkt.key.dst_port = be16(&uh, 2);
            8
        }
        IPPROTO_SCTP => {
            let sh: [u8; 12] = read(ctx, l4).ok_or(counter::BAD_L4)?;
            pkt.key.src_port = be16(&sh, 0);
            pkt.key.dst_port = be16(&sh, 2);
            12
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let ih: [u8; 8] = read(ctx, l4).ok_or(counter::BAD_L4)?;
            pkt.key.dst_port = be16(&ih, 0);
            8
        }
        _ => 0,
    };
    if l4 + l4_hlen > l3 + ip_bytes {
        return Err(counter::BAD_L4);
    }
    pkt.payload_off = l4 + l4_hlen;
    pkt.payload_len = l3 + ip_bytes - pkt.payload_off;

    // SAFETY: reading a field of the context the kernel passed to the program.
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    if segs > 1 {
        // A GSO super-packet stands for `segs` packets on the wire, each with its own headers.
        let hdrs = (l4 - l3 + l4_hlen) as u64;
        pkt.packets = segs as u64;
        pkt.bytes += (segs as u64 - 1) * hdrs;
    }
    Ok(pkt)
}

#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    )
}
