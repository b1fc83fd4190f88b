//! orb8's TCP lifecycle tracer, a separate object (`orb8-tcp`) that the agent loads only while
//! a client traces TCP connections.
//!
//! Raw tracepoints only (no kprobes): `inet_sock_set_state` (sk, old, new) follows each TCP
//! socket from its first state change to `TCP_CLOSE` in `TCP_CONNS` (keyed by the socket's
//! address): when it opened and by whom (SYN_SENT: connect, SYN_RECV: accept), when it became
//! ESTABLISHED and its smoothed RTT then, who sent the first FIN, and at close the final record
//! (the entry is deleted). `tcp_retransmit_skb`, `tcp_receive_reset` and `tcp_send_reset` count
//! retransmits and resets on tracked sockets (a reset sent for no socket, to a closed port, is
//! seen as received by the peer's socket). Every event re-reads the socket's ends: a connect's
//! local port is chosen after SYN_SENT, and is known when a reset or the SYN-ACK arrives. Socket fields are read at offsets the agent found in
//! the running kernel's BTF (`TCP_FIXED`); the local port is kept once known, because the kernel
//! has released it by the time the state becomes CLOSE. With the address filter on, sockets none
//! of whose addresses is in `TCP_ADDRS` are not tracked. Events go through `TCP_EVENTS`, built in
//! a per-CPU scratch entry (two records do not fit the 512-byte stack); every loss is counted.
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
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use orb8_common::{
    family,
    tcp::{TcpConfig, TcpConn, TcpEvent, counter, fin, kind, role, state},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// The tracer's settings, set by the agent at load time in the read-only data section.
#[unsafe(no_mangle)]
static TCP_FIXED: TcpConfig = TcpConfig {
    family: 0,
    daddr: 0,
    saddr: 0,
    dport: 0,
    num: 0,
    v6_daddr: 0,
    v6_saddr: 0,
    net: 0,
    net_inum: 0,
    protocol: 0,
    srtt_us: 0,
    filter_addrs: 0,
};

/// Entry 0 non-zero: every state change is sent (written by the agent while running).
#[map(name = "TCP_STATES")]
static TCP_STATES: Array<u32> = Array::with_max_entries(1, 0);

/// Watched addresses (IPv4-mapped), when the address filter is on.
#[map(name = "TCP_ADDRS")]
static TCP_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(4096, 0);

/// Traced sockets by kernel address.
#[map(name = "TCP_CONNS")]
static TCP_CONNS: HashMap<u64, TcpConn> = HashMap::with_max_entries(65536, 0);

/// Events. The agent may resize it before loading.
#[map(name = "TCP_EVENTS")]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU scratch space for the event being built.
#[map(name = "TCP_SCRATCH")]
static TCP_SCRATCH: PerCpuArray<TcpEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters, one entry holding all of them, indexed by `tcp::counter`.
#[map(name = "TCP_COUNTERS")]
static TCP_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

type Counters = [u64; counter::COUNT as usize];

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = TCP_COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of the entry.
        let c = unsafe { &mut *c };
        if let Some(v) = c.get_mut(index as usize) {
            *v += 1;
        }
    }
}

#[inline(always)]
fn fixed() -> TcpConfig {
    // SAFETY: a plain read of a global; volatile so the compiler does not assume the zero value
    // it was compiled with (the agent sets it at load time).
    unsafe { core::ptr::read_volatile(&TCP_FIXED) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Whether `sk` is a TCP socket.
#[inline(always)]
fn is_tcp(cfg: &TcpConfig, sk: u64) -> bool {
    sk != 0 && read::<u16>(sk, cfg.protocol) == Some(IPPROTO_TCP)
}

/// Refreshes the addresses and ports of `conn` from `sk` (the local port only while known).
#[inline(always)]
fn read_ends(cfg: &TcpConfig, sk: u64, conn: &mut TcpConn) {
    let fam: u16 = read(sk, cfg.family).unwrap_or(0);
    if fam == AF_INET {
        conn.family = family::IPV4;
        if let Some(a) = read::<[u8; 4]>(sk, cfg.saddr)
            && a != [0; 4]
        {
            conn.saddr = [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ];
        }
        if let Some(a) = read::<[u8; 4]>(sk, cfg.daddr)
            && a != [0; 4]
        {
            conn.daddr = [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ];
        }
    } else if fam == AF_INET6 {
        conn.family = family::IPV6;
        if let Some(a) = read::<[u8; 16]>(sk, cfg.v6_saddr)
            && a != [0; 16]
        {
            conn.saddr = a;
        }
        if let Some(a) = read::<[u8; 16]>(sk, cfg.v6_daddr)
            && a != [0; 16]
        {
            conn.daddr = a;
        }
    }
    if let Some(p) = read::<u16>(sk, cfg.num)
        && p != 0
    {
        conn.sport = p;
    }
    if let Some(p) = read::<u16>(sk, cfg.dport)
        && p != 0
    {
        conn.dport = u16::from_be(p);
    }
    if conn.netns == 0
        && let Some(net) = read::<u64>(sk, cfg.net)
        && net != 0
    {
        conn.netns = read(net, cfg.net_inum).unwrap_or(0);
    }
}

/// Whether the connection passes the address filter.
#[inline(always)]
fn watched(cfg: &TcpConfig, conn: &TcpConn) -> bool {
    if cfg.filter_addrs == 0 {
        return true;
    }
    // SAFETY: the values are only tested for presence.
    unsafe { TCP_ADDRS.get(&conn.saddr).is_some() || TCP_ADDRS.get(&conn.daddr).is_some() }
}

/// The tracked record of `sk`, created (if it passes the filter) when `create`.
#[inline(always)]
fn conn_of(cfg: &TcpConfig, sk: u64, create: bool) -> Option<*mut TcpConn> {
    if let Some(c) = TCP_CONNS.get_ptr_mut(&sk) {
        return Some(c);
    }
    if !create {
        return None;
    }
    let scratch = TCP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch entry; programs do not migrate while they run.
    let ev = unsafe { &mut *scratch };
    ev.conn = TcpConn::default();
    ev.conn.start_ns = now();
    read_ends(cfg, sk, &mut ev.conn);
    if !watched(cfg, &ev.conn) {
        count(counter::FILTERED);
        return None;
    }
    if TCP_CONNS.insert(&sk, &ev.conn, BPF_NOEXIST as u64).is_err()
        && TCP_CONNS.get_ptr_mut(&sk).is_none()
    {
        count(counter::CONN_MAP_FULL);
        return None;
    }
    TCP_CONNS.get_ptr_mut(&sk)
}

/// Sends an event carrying `conn`.
#[inline(always)]
fn emit(k: u32, old: u8, new: u8, conn: &TcpConn) {
    let Some(scratch) = TCP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry.
    let ev = unsafe { &mut *scratch };
    ev.ts_ns = now();
    ev.kind = k;
    ev.old_state = old;
    ev.new_state = new;
    ev._pad = [0; 2];
    ev.conn = *conn;
    match TCP_EVENTS.output::<TcpEvent>(&*ev, 0) {
        Ok(()) => count(counter::EVENTS),
        Err(_) => count(counter::RINGBUF_FULL),
    }
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn orb8_tcp_set_state(ctx: RawTracePointContext) -> i32 {
    let cfg = fixed();
    let sk: u64 = ctx.arg(0);
    if !is_tcp(&cfg, sk) {
        return 0;
    }
    count(counter::SEEN);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    let (old, new) = (old as u8, new as u8);
    // Listening sockets are not connections (a child socket starts LISTEN -> SYN_RECV: its
    // listener's state was copied).
    if new == state::LISTEN || (old == state::LISTEN && new == state::CLOSE) {
        return 0;
    }
    let opening = new == state::SYN_SENT || new == state::SYN_RECV;
    let Some(c) = conn_of(&cfg, sk, opening || new != state::CLOSE) else {
        return 0;
    };
    // SAFETY: the map value of this socket; state changes of one socket are serialised by its
    // lock.
    let conn = unsafe { &mut *c };
    read_ends(&cfg, sk, conn);
    conn.state = new;
    let t = now();
    let mut k = kind::STATE;
    if new == state::SYN_SENT {
        conn.role = role::CONNECT;
        conn.start_ns = t;
    } else if new == state::SYN_RECV {
        conn.role = role::ACCEPT;
        conn.start_ns = t;
    } else if new == state::ESTABLISHED {
        conn.established_ns = t;
        conn.srtt_us = read::<u32>(sk, cfg.srtt_us).unwrap_or(0) >> 3;
        if old == state::SYN_SENT {
            k = kind::CONNECT;
            conn.role = role::CONNECT;
        } else if old == state::SYN_RECV {
            k = kind::ACCEPT;
            conn.role = role::ACCEPT;
        }
    } else if old == state::ESTABLISHED && new == state::FIN_WAIT1 && conn.fin == fin::NONE {
        conn.fin = fin::LOCAL;
    } else if old == state::ESTABLISHED && new == state::CLOSE_WAIT && conn.fin == fin::NONE {
        conn.fin = fin::PEER;
    } else if new == state::CLOSE {
        if conn.established_ns != 0 {
            conn.srtt_us = read::<u32>(sk, cfg.srtt_us).unwrap_or(0) >> 3;
        }
        emit(kind::CLOSE, old, new, conn);
        let _ = TCP_CONNS.remove(&sk);
        return 0;
    }
    if k != kind::STATE || TCP_STATES.get(0).is_some_and(|s| *s != 0) {
        emit(k, old, new, conn);
    }
    0
}

/// A retransmit or reset on the socket that is `ctx`'s first argument: when traced, refreshes
/// its ends, counts the event in it with `bump` and emits `k`.
#[inline(always)]
fn socket_event(ctx: &RawTracePointContext, k: u32, bump: impl FnOnce(&mut TcpConn)) -> i32 {
    let cfg = fixed();
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return 0;
    }
    let Some(c) = conn_of(&cfg, sk, false) else {
        return 0;
    };
    // SAFETY: this socket's map value.
    let conn = unsafe { &mut *c };
    read_ends(&cfg, sk, conn);
    bump(conn);
    emit(k, conn.state, conn.state, conn);
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn orb8_tcp_retransmit(ctx: RawTracePointContext) -> i32 {
    socket_event(&ctx, kind::RETRANSMIT, |c| c.retransmits += 1)
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn orb8_tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    socket_event(&ctx, kind::RESET_RECEIVED, |c| {
        c.rst_received = c.rst_received.saturating_add(1)
    })
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn orb8_tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    socket_event(&ctx, kind::RESET_SENT, |c| {
        c.rst_sent = c.rst_sent.saturating_add(1)
    })
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
