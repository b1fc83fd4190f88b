//! DNS messages for the agent: a TCP or UDP packet with a payload whose source or destination
//! port is one of `DNS_PORTS` gets the start of its transport payload (at most
//! [`MAX_PAYLOAD`] bytes) copied into the ring buffer `DNS_EVENTS`. Every other packet costs a
//! protocol test and the port compares. Messages sent, cut and lost are counted in `COUNTERS`.

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_load_bytes},
    macros::map,
    maps::RingBuf,
    programs::TcContext,
};
use orb8_common::{
    counter,
    dns::{DnsEvent, DnsPorts, MAX_PAYLOAD},
};

use crate::{Counters, count, parse::Packet};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The watched ports, set by the agent before load (read-only: the verifier knows them).
#[unsafe(no_mangle)]
static DNS_PORTS: DnsPorts = DnsPorts::DEFAULT;

/// DNS messages. The size is a default the agent may change before loading.
#[map(name = "DNS_EVENTS")]
static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[inline(always)]
fn is_dns(pkt: &Packet) -> bool {
    // SAFETY: a read of a global the kernel keeps; volatile so the value set at load is used.
    let ports = unsafe { core::ptr::read_volatile(&DNS_PORTS) };
    for p in ports.ports {
        if p == 0 {
            return false;
        }
        if pkt.key.src_port == p || pkt.key.dst_port == p {
            return true;
        }
    }
    false
}

/// Hands the packet's payload to the agent when it is a DNS message.
#[inline(always)]
pub fn observe(ctx: &TcContext, c: &mut Counters, pkt: &Packet) {
    if (pkt.key.protocol != IPPROTO_UDP && pkt.key.protocol != IPPROTO_TCP)
        || pkt.payload_len == 0
        || !is_dns(pkt)
    {
        return;
    }
    let Some(mut entry) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
        count(c, counter::DNS_RINGBUF_FULL);
        return;
    };
    let want = if pkt.payload_len > MAX_PAYLOAD {
        MAX_PAYLOAD
    } else {
        pkt.payload_len
    };
    // Through a volatile stack slot and a mask, so the verifier sees a length of 1..=1024
    // (LLVM would otherwise fold the bounds above and the verifier would refuse a possibly
    // zero-sized read).
    let mut slot = want as u32;
    // SAFETY: reads and writes a local.
    let len = unsafe {
        core::ptr::write_volatile(&mut slot, slot);
        core::ptr::read_volatile(&slot)
    };
    let len = ((len.wrapping_sub(1)) & (MAX_PAYLOAD as u32 - 1)) + 1;
    // The precise clock: a DNS answer's latency is the difference of two of these.
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at the reserved entry, `len` bytes fit in its payload; the helper
    // checks the packet range itself.
    let loaded = unsafe {
        (*ev).ts_ns = now;
        (*ev).key = pkt.key;
        (*ev).payload_len = pkt.payload_len as u32;
        (*ev).captured = len;
        (*ev)._pad = 0;
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            pkt.payload_off as u32,
            (*ev).payload.as_mut_ptr() as *mut _,
            len,
        )
    };
    if loaded != 0 {
        entry.discard(0);
        count(c, counter::DNS_LOAD_FAILED);
        return;
    }
    entry.submit(0);
    count(c, counter::DNS_MESSAGES);
    if pkt.payload_len > MAX_PAYLOAD {
        count(c, counter::DNS_TRUNCATED);
    }
}
