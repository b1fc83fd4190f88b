//! orb8's eBPF programs, loaded by `orb8-agent`.
//!
//! `orb8_tc_ingress` / `orb8_tc_egress` run on the TC hooks (TCX links, or clsact filters on
//! kernels before 6.6). They parse Ethernet (one 802.1Q/802.1ad tag), IPv4 (options) and IPv6
//! (extension headers), then TCP, UDP, SCTP, ICMP and ICMPv6, and aggregate packets and IP-layer
//! bytes per flow in a per-CPU LRU hash: `FLOWS4` for IPv4 (a 20-byte key), `FLOWS` for the rest. A flow's first packet also sends an [`Event`]
//! through the ring buffer `EVENTS`; a DNS message's payload goes through `DNS_EVENTS` (see
//! `dns`). Every packet not accounted to a flow, and every event not
//! sent, is counted in the per-CPU array `COUNTERS`. The programs only observe: they always return
//! `TC_ACT_UNSPEC`, which lets the next program (TCX) or filter (clsact) decide.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values are passed by reference to keep copies off the 512-byte BPF stack"
)]

mod dns;
mod parse;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::{classifier, map},
    maps::{LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use orb8_common::{Event, FlowKey, FlowKey4, FlowStats, counter, direction, event_kind};

/// Observe only: the next TCX program, or the next clsact filter, decides the packet's fate.
const TC_ACT_UNSPEC: i32 = -1;
const EEXIST: i64 = 17;

/// Flow table of every flow but IPv4 ones. The size is a default: the agent sets `max_entries`
/// before loading.
#[map(name = "FLOWS")]
static FLOWS: LruPerCpuHashMap<FlowKey, FlowStats> = LruPerCpuHashMap::with_max_entries(65536, 0);

/// Flow table of IPv4 flows, by their 20-byte key (most traffic: less to hash per packet).
#[map(name = "FLOWS4")]
static FLOWS4: LruPerCpuHashMap<FlowKey4, FlowStats> = LruPerCpuHashMap::with_max_entries(65536, 0);

/// New-flow events. The agent may resize it before loading (a power-of-two number of pages).
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU counters: one entry holding every counter, indexed by `orb8_common::counter`, so a
/// packet costs one lookup however many counters it moves.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

pub(crate) type Counters = [u64; counter::COUNT as usize];

#[classifier]
pub fn orb8_tc_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, direction::INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn orb8_tc_egress(ctx: TcContext) -> i32 {
    observe(&ctx, direction::EGRESS);
    TC_ACT_UNSPEC
}

/// Does nothing: the baseline the agent's benchmark subtracts to get the probe's own cost.
#[classifier]
pub fn orb8_bench_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Returns how many flows `FLOWS4` and `FLOWS` hold, or -1 where the kernel cannot walk them.
/// Never attached: the agent runs it with `BPF_PROG_TEST_RUN` to answer `GetStatus`, the kernel
/// walking its own buckets (`bpf_for_each_map_elem`) where reading the tables out would copy
/// every CPU's value of every flow.
#[classifier]
pub fn orb8_count_flows(_ctx: TcContext) -> i32 {
    use aya_ebpf::{cty::c_void, helpers::generated::bpf_for_each_map_elem};
    let visit = skip_flow as *mut c_void;
    // SAFETY: both maps are hash maps of this object (their `repr(transparent)` definitions are
    // what the loader relocates), `visit` is a callback of the signature the helper calls, and
    // it takes no context.
    let (v4, other) = unsafe {
        (
            bpf_for_each_map_elem(
                &FLOWS4 as *const _ as *mut c_void,
                visit,
                core::ptr::null_mut(),
                0,
            ),
            bpf_for_each_map_elem(
                &FLOWS as *const _ as *mut c_void,
                visit,
                core::ptr::null_mut(),
                0,
            ),
        )
    };
    if v4 < 0 || other < 0 {
        return -1;
    }
    (v4 + other) as i32
}

/// The walk's callback: every flow is only counted (0: go on to the next).
#[inline(never)]
extern "C" fn skip_flow(
    _map: *mut aya_ebpf::cty::c_void,
    _key: *mut aya_ebpf::cty::c_void,
    _value: *mut aya_ebpf::cty::c_void,
    _ctx: *mut aya_ebpf::cty::c_void,
) -> i64 {
    0
}

#[inline(always)]
pub(crate) fn count(c: &mut Counters, index: u32) {
    if let Some(v) = c.get_mut(index as usize) {
        *v += 1;
    }
}

#[inline(always)]
fn add_to(c: &mut Counters, index: u32, n: u64) {
    if let Some(v) = c.get_mut(index as usize) {
        *v += n;
    }
}

#[inline(always)]
fn observe(ctx: &TcContext, dir: u8) {
    let Some(c) = COUNTERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's copy; TC programs run with migration disabled, so no other writer.
    let c = unsafe { &mut *c };
    count(c, counter::PACKETS_SEEN);
    let pkt = match parse::parse(ctx, dir) {
        Ok(pkt) => pkt,
        Err(reason) => {
            count(c, reason);
            return;
        }
    };
    count(c, counter::PACKETS_ACCOUNTED);
    // The egress counters directly follow the ingress ones (orb8_common::counter).
    let d = (dir == direction::EGRESS) as u32;
    add_to(c, counter::PACKETS_INGRESS + d, pkt.packets);
    add_to(c, counter::BYTES_INGRESS + d, pkt.bytes);
    // A coarse clock (the kernel's tick; no clock source read) is enough for a flow's first and
    // last packet; DNS latencies read the precise clock themselves.
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    dns::observe(ctx, c, &pkt);
    let created = match FlowKey4::of(&pkt.key) {
        Some(k4) => account(c, &FLOWS4, &k4, &pkt, now),
        None => account(c, &FLOWS, &pkt.key, &pkt, now),
    };
    if created {
        emit_new_flow(c, &pkt, now);
    }
}

/// Adds the packet to its flow in `map`, creating the entry on the flow's first packet (then
/// true: the flow is new).
#[inline(always)]
fn account<K>(
    c: &mut Counters,
    map: &LruPerCpuHashMap<K, FlowStats>,
    key: &K,
    pkt: &parse::Packet,
    now: u64,
) -> bool {
    if add(map, key, pkt, now) {
        return false;
    }
    let stats = FlowStats {
        packets: pkt.packets,
        bytes: pkt.bytes,
        first_seen_ns: now,
        last_seen_ns: now,
        tcp_flags: pkt.tcp_flags,
        _pad: [0; 7],
    };
    match map.insert(key, &stats, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(c, counter::FLOWS_CREATED);
            true
        }
        // Another CPU inserted the flow between our lookup and insert: add to its entry.
        Err(e) if e as i64 == -EEXIST => {
            if !add(map, key, pkt, now) {
                count(c, counter::FLOW_INSERT_FAILED);
            }
            false
        }
        Err(_) => {
            count(c, counter::FLOW_INSERT_FAILED);
            false
        }
    }
}

/// Adds the packet to its flow's entry for this CPU; false when the flow is not in the table.
#[inline(always)]
fn add<K>(map: &LruPerCpuHashMap<K, FlowStats>, key: &K, pkt: &parse::Packet, now: u64) -> bool {
    let Some(v) = map.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: per-CPU value of this CPU; TC programs run with migration disabled.
    let v = unsafe { &mut *v };
    if v.first_seen_ns == 0 {
        // The flow was created on another CPU; this CPU's copy starts now.
        v.first_seen_ns = now;
    }
    v.packets += pkt.packets;
    v.bytes += pkt.bytes;
    v.last_seen_ns = now;
    v.tcp_flags |= pkt.tcp_flags;
    true
}

#[inline(always)]
fn emit_new_flow(c: &mut Counters, pkt: &parse::Packet, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(c, counter::RINGBUF_FULL);
        return;
    };
    entry.write(Event {
        kind: event_kind::NEW_FLOW,
        bytes: pkt.bytes as u32,
        ts_ns: now,
        key: pkt.key,
        tcp_flags: pkt.tcp_flags,
        _pad: [0; 3],
    });
    entry.submit(0);
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
