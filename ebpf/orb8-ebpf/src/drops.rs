//! orb8's packet drop tracer, a separate object (`orb8-drops`) that the agent loads only while a
//! client traces drops.
//!
//! `orb8_kfree_skb` runs on the `kfree_skb` raw tracepoint (`skb`, `location`, `reason`, ...):
//! every packet the kernel frees as dropped, with the kernel's reason. `SKB_CONSUMED` (a packet
//! freed after normal use) is skipped first. The program reads the packet's IPv4/IPv6 header
//! and ports at `head + network_header`, its IP-layer length from that header (IPv4 total
//! length, IPv6 40 + payload length, however much of it the kernel had already pulled), its
//! device's interface index and the device's (else the socket's) network namespace inode, at
//! member offsets the agent found in the running kernel's
//! BTF and set in the read-only global `DROP_FIXED`. With the address filter on, only packets
//! from or to an address in `DROP_ADDRS` go on. Drops are aggregated per [`DropKey`] in the
//! per-CPU LRU hash `DROPS`; a new key sends one [`DropEvent`] through `DROP_EVENTS`, never one
//! event per packet. Every packet is counted once in `DROP_COUNTERS` (see `drops::counter`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values are passed by reference to keep copies off the 512-byte BPF stack"
)]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_probe_read_kernel, generated::bpf_ktime_get_boot_ns},
    macros::{map, raw_tracepoint},
    maps::{HashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use orb8_common::{
    drops::{DropConfig, DropEvent, DropKey, DropStats, counter},
    family, key_flags,
};

const EEXIST: i64 = 17;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// The tracer's settings, set by the agent at load time in the read-only data section.
#[unsafe(no_mangle)]
static DROP_FIXED: DropConfig = DropConfig {
    skb_head: 0,
    skb_network_header: 0,
    skb_len: 0,
    skb_dev: 0,
    skb_protocol: 0,
    skb_sk: 0,
    dev_ifindex: 0,
    dev_net: 0,
    sk_net: 0,
    net_inum: 0,
    reason_consumed: 0,
    filter_addrs: 0,
};

/// Watched addresses (IPv4-mapped), when the address filter is on.
#[map(name = "DROP_ADDRS")]
static DROP_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(4096, 0);

/// Drop table. The agent may set `max_entries` before loading.
#[map(name = "DROPS")]
static DROPS: LruPerCpuHashMap<DropKey, DropStats> = LruPerCpuHashMap::with_max_entries(16384, 0);

/// New-key events. The agent may resize it before loading.
#[map(name = "DROP_EVENTS")]
static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

/// Per-CPU counters, one entry holding all of them, indexed by `drops::counter`.
#[map(name = "DROP_COUNTERS")]
static DROP_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

type Counters = [u64; counter::COUNT as usize];

#[inline(always)]
fn count(c: &mut Counters, index: u32) {
    if let Some(v) = c.get_mut(index as usize) {
        *v += 1;
    }
}

#[inline(always)]
fn fixed() -> DropConfig {
    // SAFETY: a plain read of a global; volatile so the compiler does not assume the zero value
    // it was compiled with (the agent sets it at load time).
    unsafe { core::ptr::read_volatile(&DROP_FIXED) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// Why a packet was not accounted: the counter to move.
type Skip = u32;

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn orb8_kfree_skb(ctx: RawTracePointContext) -> i32 {
    let Some(c) = DROP_COUNTERS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's copy; raw tracepoint programs run with migration disabled.
    let c = unsafe { &mut *c };
    count(c, counter::SEEN);
    let cfg = fixed();
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    if reason == cfg.reason_consumed {
        count(c, counter::CONSUMED);
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    match observe(c, &cfg, skb, reason) {
        Ok(()) => {}
        Err(skip) => count(c, skip),
    }
    0
}

#[inline(always)]
fn observe(c: &mut Counters, cfg: &DropConfig, skb: u64, reason: u32) -> Result<(), Skip> {
    let mut key = DropKey {
        reason,
        ..DropKey::default()
    };
    let proto: u16 = read(skb, cfg.skb_protocol).ok_or(counter::READ_FAILED)?;
    let proto = u16::from_be(proto);
    let head: u64 = read(skb, cfg.skb_head).ok_or(counter::READ_FAILED)?;
    let nh: u16 = read(skb, cfg.skb_network_header).ok_or(counter::READ_FAILED)?;
    if (proto != ETH_P_IP && proto != ETH_P_IPV6) || nh == 0xffff || head == 0 {
        return Err(counter::NOT_IP);
    }
    let ip = head + nh as u64;
    let (l4, len) = if proto == ETH_P_IP {
        ipv4(&mut key, ip)?
    } else {
        ipv6(&mut key, ip)?
    };
    if let Some(l4) = l4 {
        ports(&mut key, l4);
    }
    if cfg.filter_addrs != 0 {
        // SAFETY: the values are only tested for presence.
        let listed = unsafe { DROP_ADDRS.get(&key.src_addr).is_some() }
            || unsafe { DROP_ADDRS.get(&key.dst_addr).is_some() };
        if !listed {
            return Err(counter::FILTERED);
        }
    }
    where_dropped(&mut key, cfg, skb);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if add(&key, len, now) {
        count(c, counter::ACCOUNTED);
        return Ok(());
    }
    let stats = DropStats {
        packets: 1,
        bytes: len as u64,
        first_seen_ns: now,
        last_seen_ns: now,
    };
    match DROPS.insert(&key, &stats, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(c, counter::ACCOUNTED);
            count(c, counter::KEYS_CREATED);
            emit(c, &key, len, now);
            Ok(())
        }
        // Another CPU created the key between our lookup and insert: add to this CPU's copy.
        Err(e) if e as i64 == -EEXIST && add(&key, len, now) => {
            count(c, counter::ACCOUNTED);
            Ok(())
        }
        Err(_) => Err(counter::INSERT_FAILED),
    }
}

/// Fills the IPv4 part of the key; returns the transport header's address when there are ports
/// to read, and the packet's IP-layer length (total length).
#[inline(always)]
fn ipv4(key: &mut DropKey, ip: u64) -> Result<(Option<u64>, u32), Skip> {
    let hdr: [u8; 20] = read(ip, 0).ok_or(counter::READ_FAILED)?;
    if hdr[0] >> 4 != 4 {
        return Err(counter::NOT_IP);
    }
    key.family = family::IPV4;
    key.protocol = hdr[9];
    key.src_addr[10] = 0xff;
    key.src_addr[11] = 0xff;
    key.dst_addr[10] = 0xff;
    key.dst_addr[11] = 0xff;
    key.src_addr[12..16].copy_from_slice(&hdr[12..16]);
    key.dst_addr[12..16].copy_from_slice(&hdr[16..20]);
    let len = u16::from_be_bytes([hdr[2], hdr[3]]) as u32;
    let frag_off = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    if frag_off != 0 {
        key.flags |= key_flags::FRAGMENT;
        return Ok((None, len));
    }
    let ihl = (hdr[0] & 0x0f) as u64 * 4;
    Ok((Some(ip + ihl), len))
}

/// Fills the IPv6 part of the key; ports only when the transport header follows directly. The
/// length is the fixed header plus the payload length.
#[inline(always)]
fn ipv6(key: &mut DropKey, ip: u64) -> Result<(Option<u64>, u32), Skip> {
    let hdr: [u8; 40] = read(ip, 0).ok_or(counter::READ_FAILED)?;
    if hdr[0] >> 4 != 6 {
        return Err(counter::NOT_IP);
    }
    key.family = family::IPV6;
    key.protocol = hdr[6];
    key.src_addr.copy_from_slice(&hdr[8..24]);
    key.dst_addr.copy_from_slice(&hdr[24..40]);
    let len = 40 + u16::from_be_bytes([hdr[4], hdr[5]]) as u32;
    Ok((Some(ip + 40), len))
}

/// Ports (or ICMP type and code) of the key's protocol, read at `l4`.
#[inline(always)]
fn ports(key: &mut DropKey, l4: u64) {
    match key.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE => {
            if let Some(p) = read::<[u8; 4]>(l4, 0) {
                key.src_port = u16::from_be_bytes([p[0], p[1]]);
                key.dst_port = u16::from_be_bytes([p[2], p[3]]);
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if let Some(p) = read::<[u8; 2]>(l4, 0) {
                key.dst_port = u16::from_be_bytes([p[0], p[1]]);
            }
        }
        _ => {}
    }
}

/// The packet's device and network namespace (the device's, else its socket's).
#[inline(always)]
fn where_dropped(key: &mut DropKey, cfg: &DropConfig, skb: u64) {
    let dev: u64 = read(skb, cfg.skb_dev).unwrap_or(0);
    let mut net: u64 = 0;
    if dev != 0 {
        key.ifindex = read::<i32>(dev, cfg.dev_ifindex).unwrap_or(0) as u32;
        net = read(dev, cfg.dev_net).unwrap_or(0);
    }
    if net == 0 {
        let sk: u64 = read(skb, cfg.skb_sk).unwrap_or(0);
        if sk != 0 {
            net = read(sk, cfg.sk_net).unwrap_or(0);
        }
    }
    if net != 0 {
        key.netns = read(net, cfg.net_inum).unwrap_or(0);
    }
}

/// Adds the packet to this CPU's copy of its key; false when the key is not in the table.
#[inline(always)]
fn add(key: &DropKey, len: u32, now: u64) -> bool {
    let Some(v) = DROPS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: this CPU's copy; migration is disabled while the program runs.
    let v = unsafe { &mut *v };
    if v.first_seen_ns == 0 {
        v.first_seen_ns = now;
    }
    v.packets += 1;
    v.bytes += len as u64;
    v.last_seen_ns = now;
    true
}

#[inline(always)]
fn emit(c: &mut Counters, key: &DropKey, len: u32, now: u64) {
    let Some(mut entry) = DROP_EVENTS.reserve::<DropEvent>(0) else {
        count(c, counter::RINGBUF_FULL);
        return;
    };
    entry.write(DropEvent {
        ts_ns: now,
        key: *key,
        len,
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
