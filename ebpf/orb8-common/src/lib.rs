//! The ABI between orb8's eBPF programs (`orb8-ebpf`) and the agent that loads them.
//!
//! Everything here is `#[repr(C)]`, has no implicit padding, and is shared byte for byte with the
//! kernel side. The wire format (`orb8-proto`) is separate, so this ABI can change freely.
#![no_std]

/// Direction of a packet relative to the interface the probe is attached to.
pub mod direction {
    /// Packet arriving on the interface (TC ingress hook).
    pub const INGRESS: u8 = 0;
    /// Packet leaving through the interface (TC egress hook).
    pub const EGRESS: u8 = 1;
}

/// Address family of a flow.
pub mod family {
    /// IPv4: addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
    pub const IPV4: u8 = 4;
    /// IPv6.
    pub const IPV6: u8 = 6;
}

/// Flags carried by a [`FlowKey`].
pub mod key_flags {
    /// The flow was built from non-first IP fragments: ports are unknown and set to zero.
    pub const FRAGMENT: u8 = 1;
}

/// Key of the in-kernel flow table: one entry per interface, direction and 5-tuple.
///
/// For ICMP and ICMPv6, `src_port` is zero and `dst_port` is `type << 8 | code`, as IPFIX's
/// `icmpTypeCode` fields do. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Interface index the probe saw the packet on.
    pub ifindex: u32,
    /// [`direction::INGRESS`] or [`direction::EGRESS`].
    pub direction: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u8,
    /// [`family::IPV4`] or [`family::IPV6`].
    pub family: u8,
    /// Bit set of [`key_flags`].
    pub flags: u8,
    /// Source address, 16 bytes (IPv4-mapped for IPv4).
    pub src_addr: [u8; 16],
    /// Destination address, 16 bytes (IPv4-mapped for IPv4).
    pub dst_addr: [u8; 16],
    /// Source port (host order), 0 when the protocol has none.
    pub src_port: u16,
    /// Destination port (host order), ICMP type/code, or 0.
    pub dst_port: u16,
}

/// Per-CPU value of the flow table. The agent sums the CPUs' copies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// Packets (GSO super-packets count as their number of segments).
    pub packets: u64,
    /// IP-layer bytes: IP header plus payload, no link-layer header (NetFlow/IPFIX octets).
    pub bytes: u64,
    /// `bpf_ktime_get_boot_ns` of the first packet seen on this CPU.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_boot_ns` of the last packet seen on this CPU.
    pub last_seen_ns: u64,
    /// OR of the TCP flags byte of every packet (0 for other protocols).
    pub tcp_flags: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 7],
}

/// Kinds of [`Event`] sent through the ring buffer.
pub mod event_kind {
    /// A flow entered the flow table (first packet, or first packet after an eviction).
    pub const NEW_FLOW: u32 = 1;
}

/// A ring-buffer event. Only what userspace must see at once travels this way.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// One of [`event_kind`].
    pub kind: u32,
    /// IP-layer bytes of the packet that created the flow.
    pub bytes: u32,
    /// `bpf_ktime_get_boot_ns` when the event was produced.
    pub ts_ns: u64,
    /// The flow the event is about.
    pub key: FlowKey,
    /// TCP flags of the first packet (0 for other protocols).
    pub tcp_flags: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Packets the probe ran on (both directions, all interfaces).
    pub const PACKETS_SEEN: u32 = 0;
    /// Packets accounted to a flow.
    pub const PACKETS_ACCOUNTED: u32 = 1;
    /// Flows inserted into the flow table (new or re-inserted after eviction).
    pub const FLOWS_CREATED: u32 = 2;
    /// Ring-buffer reservations that failed (ring full): new-flow events lost in the kernel.
    pub const RINGBUF_FULL: u32 = 3;
    /// Flow-table inserts that failed for a reason other than a concurrent insert.
    pub const FLOW_INSERT_FAILED: u32 = 4;
    /// Not parsed: not IPv4/IPv6 (ARP, LLDP, ...). Not an error, but not a flow either.
    pub const NOT_IP: u32 = 5;
    /// Not parsed: frame shorter than its link-layer header.
    pub const TRUNCATED_L2: u32 = 6;
    /// Not parsed: IP header truncated or inconsistent (version, IHL, total length).
    pub const BAD_L3: u32 = 7;
    /// Not parsed: TCP/UDP/ICMP header truncated or inconsistent.
    pub const BAD_L4: u32 = 8;
    /// Not parsed: more IPv6 extension headers than the probe walks.
    pub const IPV6_EXT_TOO_DEEP: u32 = 9;
    /// Not parsed: the headers could not be made readable (`bpf_skb_pull_data` failed).
    pub const PULL_FAILED: u32 = 10;
    /// Number of counters.
    pub const COUNT: u32 = 11;

    /// Stable names, indexed by counter, as shown by the agent.
    pub const NAMES: [&str; COUNT as usize] = [
        "packets_seen",
        "packets_accounted",
        "flows_created",
        "ringbuf_full",
        "flow_insert_failed",
        "not_ip",
        "truncated_l2",
        "bad_l3",
        "bad_l4",
        "ipv6_ext_too_deep",
        "pull_failed",
    ];
}

/// Map and program names, shared so the agent and the eBPF object cannot disagree.
pub mod names {
    /// The per-CPU LRU hash of [`super::FlowKey`] to [`super::FlowStats`].
    pub const FLOWS: &str = "FLOWS";
    /// The ring buffer of [`super::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// The per-CPU array of counters, indexed by [`super::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// TC program for the ingress hook.
    pub const TC_INGRESS: &str = "orb8_tc_ingress";
    /// TC program for the egress hook.
    pub const TC_EGRESS: &str = "orb8_tc_egress";
    /// A TC program that does nothing, loaded only by benchmarks as their baseline.
    pub const BENCH_NOOP: &str = "orb8_bench_noop";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn abi_sizes_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 4 + 4 + 16 + 16 + 2 + 2);
        assert_eq!(size_of::<FlowStats>(), 8 * 4 + 8);
        assert_eq!(size_of::<Event>(), 4 + 4 + 8 + size_of::<FlowKey>() + 4);
        assert_eq!(size_of::<Event>() % 8, 0);
    }
}
