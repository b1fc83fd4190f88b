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

/// Key of the IPv4 flow table (`FLOWS4`): the [`FlowKey`] of an IPv4 flow with its addresses in
/// 4 bytes, 20 bytes in all instead of 44, so the kernel hashes and compares less on every
/// packet. Every other flow (IPv6) stays in `FLOWS`. Conversions both ways are exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey4 {
    /// Interface index the probe saw the packet on.
    pub ifindex: u32,
    /// Source address.
    pub src_addr: [u8; 4],
    /// Destination address.
    pub dst_addr: [u8; 4],
    /// Source port (host order), 0 when the protocol has none.
    pub src_port: u16,
    /// Destination port (host order), ICMP type/code, or 0.
    pub dst_port: u16,
    /// [`direction::INGRESS`] or [`direction::EGRESS`].
    pub direction: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// Bit set of [`key_flags`].
    pub flags: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}

impl FlowKey4 {
    /// The short key of an IPv4 flow; `None` for any other family.
    #[inline(always)]
    pub fn of(k: &FlowKey) -> Option<FlowKey4> {
        if k.family != family::IPV4 {
            return None;
        }
        Some(FlowKey4 {
            ifindex: k.ifindex,
            src_addr: [
                k.src_addr[12],
                k.src_addr[13],
                k.src_addr[14],
                k.src_addr[15],
            ],
            dst_addr: [
                k.dst_addr[12],
                k.dst_addr[13],
                k.dst_addr[14],
                k.dst_addr[15],
            ],
            src_port: k.src_port,
            dst_port: k.dst_port,
            direction: k.direction,
            protocol: k.protocol,
            flags: k.flags,
            _pad: 0,
        })
    }

    /// The full key of the same flow (addresses IPv4-mapped).
    pub fn key(&self) -> FlowKey {
        let mapped = |a: [u8; 4]| {
            let mut m = [0u8; 16];
            m[10] = 0xff;
            m[11] = 0xff;
            m[12..].copy_from_slice(&a);
            m
        };
        FlowKey {
            ifindex: self.ifindex,
            direction: self.direction,
            protocol: self.protocol,
            family: family::IPV4,
            flags: self.flags,
            src_addr: mapped(self.src_addr),
            dst_addr: mapped(self.dst_addr),
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
    }
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
    /// Packets accounted to a flow on an interface's ingress hook (GSO segments counted).
    pub const PACKETS_INGRESS: u32 = 11;
    /// Packets accounted to a flow on an interface's egress hook; always `PACKETS_INGRESS + 1`.
    pub const PACKETS_EGRESS: u32 = 12;
    /// IP-layer bytes accounted to a flow on an ingress hook.
    pub const BYTES_INGRESS: u32 = 13;
    /// IP-layer bytes accounted to a flow on an egress hook; always `BYTES_INGRESS + 1`.
    pub const BYTES_EGRESS: u32 = 14;
    /// DNS messages (UDP/TCP packets with a payload on a DNS port) sent through `DNS_EVENTS`.
    pub const DNS_MESSAGES: u32 = 15;
    /// Of [`DNS_MESSAGES`], those longer than [`crate::dns::MAX_PAYLOAD`]: sent cut.
    pub const DNS_TRUNCATED: u32 = 16;
    /// DNS messages lost because `DNS_EVENTS` was full.
    pub const DNS_RINGBUF_FULL: u32 = 17;
    /// DNS messages lost because their payload could not be copied (`bpf_skb_load_bytes`).
    pub const DNS_LOAD_FAILED: u32 = 18;
    /// Number of counters.
    pub const COUNT: u32 = 19;

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
        "packets_ingress",
        "packets_egress",
        "bytes_ingress",
        "bytes_egress",
        "dns_messages",
        "dns_truncated",
        "dns_ringbuf_full",
        "dns_load_failed",
    ];
}

/// DNS messages the TC programs hand to the agent: UDP and TCP packets with a payload whose
/// source or destination port is one of [`dns::DnsPorts`], their transport payload copied (at
/// most [`dns::MAX_PAYLOAD`] bytes) into the ring buffer `DNS_EVENTS`.
pub mod dns {
    use super::FlowKey;

    /// Payload bytes copied per message; longer ones are cut (`DNS_TRUNCATED`).
    pub const MAX_PAYLOAD: usize = 1024;
    /// Ports watched, the first slot always 53; unused slots are 0.
    pub const MAX_PORTS: usize = 8;

    /// The ports carrying DNS: the read-only global `DNS_PORTS`, set by the agent at load time
    /// (the verifier then knows them).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DnsPorts {
        /// Ports in host order; the list ends at the first 0.
        pub ports: [u16; MAX_PORTS],
    }

    impl DnsPorts {
        /// Port 53 only.
        pub const DEFAULT: DnsPorts = DnsPorts {
            ports: [53, 0, 0, 0, 0, 0, 0, 0],
        };
    }

    /// One DNS message as seen on one interface in one direction.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DnsEvent {
        /// `bpf_ktime_get_boot_ns` when the packet was seen.
        pub ts_ns: u64,
        /// The packet's interface, direction and 5-tuple.
        pub key: FlowKey,
        /// Transport payload length in the packet.
        pub payload_len: u32,
        /// Bytes of it in [`DnsEvent::payload`]: `min(payload_len, MAX_PAYLOAD)`.
        pub captured: u32,
        /// Explicit padding, always zero.
        pub _pad: u32,
        /// The start of the transport payload (UDP: the DNS message; TCP: length-prefixed
        /// messages).
        pub payload: [u8; MAX_PAYLOAD],
    }
}

/// Map and program names, shared so the agent and the eBPF object cannot disagree.
pub mod names {
    /// The per-CPU LRU hash of [`super::FlowKey`] to [`super::FlowStats`]: every flow but IPv4.
    pub const FLOWS: &str = "FLOWS";
    /// The per-CPU LRU hash of [`super::FlowKey4`] to [`super::FlowStats`]: IPv4 flows.
    pub const FLOWS4: &str = "FLOWS4";
    /// The ring buffer of [`super::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// The per-CPU array of counters, indexed by [`super::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// The ring buffer of [`super::dns::DnsEvent`].
    pub const DNS_EVENTS: &str = "DNS_EVENTS";
    /// The read-only global [`super::dns::DnsPorts`].
    pub const DNS_PORTS: &str = "DNS_PORTS";
    /// TC program for the ingress hook.
    pub const TC_INGRESS: &str = "orb8_tc_ingress";
    /// TC program for the egress hook.
    pub const TC_EGRESS: &str = "orb8_tc_egress";
    /// A TC program that does nothing, loaded only by benchmarks as their baseline.
    pub const BENCH_NOOP: &str = "orb8_bench_noop";
    /// A TC program never attached: run by the agent with `BPF_PROG_TEST_RUN`, it returns how
    /// many flows both tables hold (the kernel walks them; no value is copied out).
    pub const COUNT_FLOWS: &str = "orb8_count_flows";
}

/// The syscall tracer's ABI (`orb8-syscalls` object: raw tracepoints `sys_enter`/`sys_exit`,
/// or fentry/fexit programs on the kernel functions of an allow-list's syscalls).
pub mod sys {
    /// Syscall numbers are below this; the per-syscall maps have this many entries.
    pub const MAX_SYSCALLS: u32 = 512;
    /// Latency histogram buckets per syscall: bucket 0 holds 0 ns, bucket `b` holds
    /// `[2^(b-1), 2^b)` ns, the last one everything above.
    pub const HIST_BUCKETS: usize = 40;
    /// fentry/fexit program pairs in the object: an allow-list of at most this many syscalls
    /// can be traced on the syscalls' own kernel functions instead of the raw tracepoints.
    pub const FENTRY_SLOTS: usize = 8;

    /// How [`SysConfig::filter`] selects the traced threads.
    pub mod filter {
        /// Nothing is traced.
        pub const OFF: u32 = 0;
        /// Threads whose cgroup v2 id is a key of `SYS_CGROUPS` (several cgroups: a pod's
        /// containers).
        pub const CGROUP: u32 = 1;
        /// Threads in the PID namespace [`super::SysConfig::pidns_dev`]/`pidns_ino`.
        pub const PIDNS: u32 = 2;
        /// Threads of the process (tgid) [`super::SysConfig::target`]: one compare, no lookup.
        pub const TGID: u32 = 3;
        /// Threads whose cgroup v2 id is [`super::SysConfig::target`]: one compare, no lookup.
        pub const CGROUP_ONE: u32 = 4;
    }

    /// The tracer's settings. The agent sets them as the read-only global `SYS_FIXED` when it
    /// loads the programs (the verifier then knows them, and drops the code of the other
    /// filters); `stream`, which changes while the programs run, is read from entry 0 of the
    /// array `SYS_CONFIG`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct SysConfig {
        /// One of [`filter`].
        pub filter: u32,
        /// Non-zero: only syscalls whose bit is set in `SYS_ALLOW` are traced.
        pub allow_list: u32,
        /// Non-zero: every traced syscall is also sent through `SYS_EVENTS`.
        pub stream: u32,
        /// `exit` on this architecture: it never returns, so it is counted at entry.
        pub nr_exit: u32,
        /// `exit_group`, counted at entry for the same reason.
        pub nr_exit_group: u32,
        /// Explicit padding, always zero.
        pub _pad: u32,
        /// Device of the nsfs inode of the target PID namespace (`stat(/proc/PID/ns/pid).st_dev`).
        pub pidns_dev: u64,
        /// Inode of the target PID namespace.
        pub pidns_ino: u64,
        /// The traced cgroup id ([`filter::CGROUP_ONE`]) or process ([`filter::TGID`]).
        pub target: u64,
    }

    impl SysConfig {
        /// All zero: nothing traced.
        pub const OFF: SysConfig = SysConfig {
            filter: filter::OFF,
            allow_list: 0,
            stream: 0,
            nr_exit: 0,
            nr_exit_group: 0,
            _pad: 0,
            pidns_dev: 0,
            pidns_ino: 0,
            target: 0,
        };
    }

    /// Per-CPU statistics of one syscall: entry `nr` of the per-CPU array `SYS_STATS`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SysStats {
        /// Calls that returned (plus `exit`/`exit_group` calls, counted at entry).
        pub calls: u64,
        /// Calls that returned -4095..=-1.
        pub errors: u64,
        /// Sum of the calls' durations, nanoseconds.
        pub total_ns: u64,
        /// Latency histogram, see [`HIST_BUCKETS`].
        pub hist: [u64; HIST_BUCKETS],
    }

    impl Default for SysStats {
        fn default() -> Self {
            SysStats {
                calls: 0,
                errors: 0,
                total_ns: 0,
                hist: [0; HIST_BUCKETS],
            }
        }
    }

    /// Key of the per-CPU hash `SYS_ERRNOS`: failed calls by syscall and errno.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct ErrnoKey {
        /// Syscall number.
        pub nr: u32,
        /// Positive errno.
        pub errno: u32,
    }

    /// A thread's syscall slot: value of `SYS_INFLIGHT`, keyed by `pid_tgid`, written in place
    /// at each entry and cleared (`enter_ns` = 0) at its exit, so a traced call costs two
    /// lookups and no allocation; removed when the thread calls `exit`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct Inflight {
        /// `bpf_ktime_get_boot_ns` at entry; 0 when no call is in flight.
        pub enter_ns: u64,
        /// Syscall number.
        pub nr: u64,
    }

    /// One finished syscall, sent through the ring buffer `SYS_EVENTS` in stream mode.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct SysEvent {
        /// `bpf_ktime_get_boot_ns` when the syscall returned.
        pub ts_ns: u64,
        /// `tgid << 32 | pid` as the host's PID namespace sees it.
        pub pid_tgid: u64,
        /// Duration, nanoseconds.
        pub duration_ns: u64,
        /// Return value (negative errno on failure).
        pub ret: i64,
        /// Syscall number.
        pub nr: u32,
        /// Explicit padding, always zero.
        pub _pad: u32,
        /// The thread's command name, NUL-padded.
        pub comm: [u8; 16],
    }

    /// Indexes into the per-CPU `SYS_COUNTERS` array entry.
    pub mod counter {
        /// Syscall entries of traced threads that passed the syscall filter.
        pub const ENTERED: u32 = 0;
        /// Entries not paired with their exit: the in-flight table was full (a loss).
        pub const INFLIGHT_FULL: u32 = 1;
        /// Stream events lost because the ring buffer was full.
        pub const RINGBUF_FULL: u32 = 2;
        /// Failed calls whose errno could not be recorded: the errno table was full.
        pub const ERRNO_MAP_FULL: u32 = 3;
        /// Syscalls with a number of [`super::MAX_SYSCALLS`] or more, not counted.
        pub const NR_OUT_OF_RANGE: u32 = 4;
        /// Number of counters.
        pub const COUNT: u32 = 5;
        /// Stable names, indexed by counter.
        pub const NAMES: [&str; COUNT as usize] = [
            "entered",
            "inflight_full",
            "ringbuf_full",
            "errno_map_full",
            "nr_out_of_range",
        ];
    }

    /// Map and program names of the syscall object.
    pub mod names {
        /// [`super::SysConfig`] array (one entry).
        pub const CONFIG: &str = "SYS_CONFIG";
        /// Hash of traced cgroup v2 ids.
        pub const CGROUPS: &str = "SYS_CGROUPS";
        /// The read-only global [`super::SysConfig`] the agent sets at load time.
        pub const FIXED: &str = "SYS_FIXED";
        /// Bitmap of allowed syscall numbers: [`super::MAX_SYSCALLS`] / 64 `u64` words.
        pub const ALLOW: &str = "SYS_ALLOW";
        /// Per-thread syscall slots ([`super::Inflight`]).
        pub const INFLIGHT: &str = "SYS_INFLIGHT";
        /// Per-CPU [`super::SysStats`] by syscall number.
        pub const STATS: &str = "SYS_STATS";
        /// Per-CPU failed-call counts by [`super::ErrnoKey`].
        pub const ERRNOS: &str = "SYS_ERRNOS";
        /// Ring buffer of [`super::SysEvent`].
        pub const EVENTS: &str = "SYS_EVENTS";
        /// Per-CPU counters, indexed by [`super::counter`].
        pub const COUNTERS: &str = "SYS_COUNTERS";
        /// Raw tracepoint program on `sys_enter`.
        pub const ENTER: &str = "orb8_sys_enter";
        /// Raw tracepoint program on `sys_exit`.
        pub const EXIT: &str = "orb8_sys_exit";
        /// The read-only global `[u32; FENTRY_SLOTS]`: the syscall number each fentry/fexit
        /// slot counts, set by the agent at load time.
        pub const SLOTS: &str = "SYS_SLOTS";
        /// fentry programs, one per slot (attached to a syscall's kernel function at load).
        pub const FENTRY: [&str; super::FENTRY_SLOTS] = [
            "orb8_sys_fentry_0",
            "orb8_sys_fentry_1",
            "orb8_sys_fentry_2",
            "orb8_sys_fentry_3",
            "orb8_sys_fentry_4",
            "orb8_sys_fentry_5",
            "orb8_sys_fentry_6",
            "orb8_sys_fentry_7",
        ];
        /// fexit programs, one per slot, on the same function as the slot's fentry program.
        pub const FEXIT: [&str; super::FENTRY_SLOTS] = [
            "orb8_sys_fexit_0",
            "orb8_sys_fexit_1",
            "orb8_sys_fexit_2",
            "orb8_sys_fexit_3",
            "orb8_sys_fexit_4",
            "orb8_sys_fexit_5",
            "orb8_sys_fexit_6",
            "orb8_sys_fexit_7",
        ];
    }
}

/// The drop tracer's ABI (`orb8-drops` object: raw tracepoint `kfree_skb`).
///
/// The kernel side aggregates dropped packets per [`DropKey`] (network namespace, interface,
/// drop reason, 5-tuple) in a per-CPU LRU hash and sends one [`DropEvent`] per new key; reason
/// numbers are the running kernel's `enum skb_drop_reason`, named by the agent from BTF.
pub mod drops {
    /// The tracer's settings: member offsets of the kernel structs it reads (from the running
    /// kernel's BTF), the reason to skip, and whether the address filter is on. Set by the agent
    /// as the read-only global `DROP_FIXED` when it loads the program.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct DropConfig {
        /// `sk_buff.head` (pointer).
        pub skb_head: u32,
        /// `sk_buff.network_header` (u16, offset from `head`; `0xffff` when unset).
        pub skb_network_header: u32,
        /// `sk_buff.len` (u32); not read by the program (lengths come from the IP header),
        /// kept so the agent checks the layout it expects.
        pub skb_len: u32,
        /// `sk_buff.dev` (pointer).
        pub skb_dev: u32,
        /// `sk_buff.protocol` (big-endian u16 EtherType).
        pub skb_protocol: u32,
        /// `sk_buff.sk` (pointer).
        pub skb_sk: u32,
        /// `net_device.ifindex` (i32).
        pub dev_ifindex: u32,
        /// `net_device.nd_net.net` (pointer).
        pub dev_net: u32,
        /// `sock.__sk_common.skc_net.net` (pointer).
        pub sk_net: u32,
        /// `net.ns.inum` (u32): the namespace's inode number.
        pub net_inum: u32,
        /// `SKB_CONSUMED` in this kernel's `enum skb_drop_reason`: not a drop, skipped.
        pub reason_consumed: u32,
        /// Non-zero: only packets whose source or destination is a key of `DROP_ADDRS`.
        pub filter_addrs: u32,
    }

    /// Key of the drop table: one entry per namespace, interface, reason and 5-tuple.
    /// Addresses and ports as in [`super::FlowKey`] (IPv4-mapped, host order, ICMP type/code).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct DropKey {
        /// Inode of the network namespace of the packet's device (else of its socket), 0 if
        /// neither is known.
        pub netns: u32,
        /// The device's interface index in that namespace, 0 when the packet had none.
        pub ifindex: u32,
        /// The kernel's drop reason number.
        pub reason: u32,
        /// IP protocol number.
        pub protocol: u8,
        /// [`super::family::IPV4`] or [`super::family::IPV6`].
        pub family: u8,
        /// Bit set of [`super::key_flags`].
        pub flags: u8,
        /// Explicit padding, always zero.
        pub _pad: u8,
        /// Source address (IPv4-mapped for IPv4).
        pub src_addr: [u8; 16],
        /// Destination address.
        pub dst_addr: [u8; 16],
        /// Source port (host order), 0 when none.
        pub src_port: u16,
        /// Destination port, ICMP `type << 8 | code`, or 0.
        pub dst_port: u16,
    }

    /// Per-CPU value of the drop table.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct DropStats {
        /// Packets dropped.
        pub packets: u64,
        /// Their IP-layer bytes (IPv4 total length; IPv6 40 + payload length).
        pub bytes: u64,
        /// `bpf_ktime_get_boot_ns` of the first drop on this CPU.
        pub first_seen_ns: u64,
        /// `bpf_ktime_get_boot_ns` of the last drop on this CPU.
        pub last_seen_ns: u64,
    }

    /// A new key in the drop table (its first packet), sent through `DROP_EVENTS`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct DropEvent {
        /// `bpf_ktime_get_boot_ns` of the drop.
        pub ts_ns: u64,
        /// The key.
        pub key: DropKey,
        /// IP-layer bytes of the dropped packet.
        pub len: u32,
    }

    /// Indexes into the per-CPU `DROP_COUNTERS` entry. Conservation:
    /// `seen = consumed + not_ip + read_failed + filtered + accounted + insert_failed`.
    pub mod counter {
        /// Calls of the tracepoint.
        pub const SEEN: u32 = 0;
        /// Skipped: reason `SKB_CONSUMED` (not a drop).
        pub const CONSUMED: u32 = 1;
        /// Dropped packets that are not IPv4/IPv6, or whose network header is not set.
        pub const NOT_IP: u32 = 2;
        /// The packet's headers or device could not be read.
        pub const READ_FAILED: u32 = 3;
        /// Left out by the address filter.
        pub const FILTERED: u32 = 4;
        /// Added to the drop table.
        pub const ACCOUNTED: u32 = 5;
        /// Not added: the table insert failed (a loss).
        pub const INSERT_FAILED: u32 = 6;
        /// Keys created (each sends one event).
        pub const KEYS_CREATED: u32 = 7;
        /// New-key events lost because the ring buffer was full.
        pub const RINGBUF_FULL: u32 = 8;
        /// Number of counters.
        pub const COUNT: u32 = 9;
        /// Stable names, indexed by counter.
        pub const NAMES: [&str; COUNT as usize] = [
            "seen",
            "consumed",
            "not_ip",
            "read_failed",
            "filtered",
            "accounted",
            "insert_failed",
            "keys_created",
            "ringbuf_full",
        ];
    }

    /// Map, global and program names of the drop object.
    pub mod names {
        /// The read-only global [`super::DropConfig`].
        pub const FIXED: &str = "DROP_FIXED";
        /// Hash of watched addresses (16 bytes, IPv4-mapped).
        pub const ADDRS: &str = "DROP_ADDRS";
        /// Per-CPU LRU hash of [`super::DropKey`] to [`super::DropStats`].
        pub const DROPS: &str = "DROPS";
        /// Ring buffer of [`super::DropEvent`].
        pub const EVENTS: &str = "DROP_EVENTS";
        /// Per-CPU counters, indexed by [`super::counter`].
        pub const COUNTERS: &str = "DROP_COUNTERS";
        /// Raw tracepoint program on `kfree_skb`.
        pub const KFREE_SKB: &str = "orb8_kfree_skb";
    }
}

/// The TCP lifecycle tracer's ABI (`orb8-tcp` object: raw tracepoints `inet_sock_set_state`,
/// `tcp_retransmit_skb`, `tcp_receive_reset`, `tcp_send_reset`).
///
/// The kernel side keeps one [`TcpConn`] per traced socket (keyed by the socket's address) from
/// its first state change to `TCP_CLOSE`, and sends a [`TcpEvent`] for each connect, accept,
/// close, reset and retransmit (and, when asked, every state change).
pub mod tcp {
    /// The tracer's settings: member offsets of the kernel structs it reads (from the running
    /// kernel's BTF) and the filters. Set by the agent as the read-only global `TCP_FIXED`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct TcpConfig {
        /// `sock.__sk_common.skc_family` (u16).
        pub family: u32,
        /// `sock.__sk_common.skc_daddr` (IPv4, network order).
        pub daddr: u32,
        /// `sock.__sk_common.skc_rcv_saddr`.
        pub saddr: u32,
        /// `sock.__sk_common.skc_dport` (network order).
        pub dport: u32,
        /// `sock.__sk_common.skc_num` (host order; 0 once the port is released).
        pub num: u32,
        /// `sock.__sk_common.skc_v6_daddr` (16 bytes).
        pub v6_daddr: u32,
        /// `sock.__sk_common.skc_v6_rcv_saddr`.
        pub v6_saddr: u32,
        /// `sock.__sk_common.skc_net.net` (pointer).
        pub net: u32,
        /// `net.ns.inum`.
        pub net_inum: u32,
        /// `sock.sk_protocol` (u16).
        pub protocol: u32,
        /// `tcp_sock.srtt_us` (u32, smoothed RTT in 1/8 µs).
        pub srtt_us: u32,
        /// Non-zero: only sockets one of whose addresses is a key of `TCP_ADDRS`.
        pub filter_addrs: u32,
    }

    /// TCP states as the kernel numbers them.
    pub mod state {
        /// `TCP_ESTABLISHED`.
        pub const ESTABLISHED: u8 = 1;
        /// `TCP_SYN_SENT`.
        pub const SYN_SENT: u8 = 2;
        /// `TCP_SYN_RECV`.
        pub const SYN_RECV: u8 = 3;
        /// `TCP_FIN_WAIT1`: this side closed first.
        pub const FIN_WAIT1: u8 = 4;
        /// `TCP_CLOSE`.
        pub const CLOSE: u8 = 7;
        /// `TCP_CLOSE_WAIT`: the peer closed first.
        pub const CLOSE_WAIT: u8 = 8;
        /// `TCP_LISTEN`.
        pub const LISTEN: u8 = 10;
    }

    /// Who opened a connection.
    pub mod role {
        /// Not seen opening.
        pub const UNKNOWN: u8 = 0;
        /// This side connected (SYN_SENT).
        pub const CONNECT: u8 = 1;
        /// This side accepted (SYN_RECV).
        pub const ACCEPT: u8 = 2;
    }

    /// Which side sent the first FIN.
    pub mod fin {
        /// No FIN seen.
        pub const NONE: u8 = 0;
        /// This side (ESTABLISHED → FIN_WAIT1).
        pub const LOCAL: u8 = 1;
        /// The peer (ESTABLISHED → CLOSE_WAIT).
        pub const PEER: u8 = 2;
    }

    /// One traced socket (value of `TCP_CONNS`, keyed by the socket's kernel address).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct TcpConn {
        /// `bpf_ktime_get_boot_ns` of the first state change seen (SYN_SENT / SYN_RECV).
        pub start_ns: u64,
        /// When it became ESTABLISHED (0 if never).
        pub established_ns: u64,
        /// Local address (IPv4-mapped for IPv4).
        pub saddr: [u8; 16],
        /// Remote address.
        pub daddr: [u8; 16],
        /// Network namespace inode.
        pub netns: u32,
        /// Smoothed RTT, µs, when last read (at ESTABLISHED and at close).
        pub srtt_us: u32,
        /// Retransmitted segments.
        pub retransmits: u32,
        /// Local port (kept once known: the kernel clears it before `TCP_CLOSE`).
        pub sport: u16,
        /// Remote port.
        pub dport: u16,
        /// [`super::family::IPV4`] or [`super::family::IPV6`].
        pub family: u8,
        /// One of [`role`].
        pub role: u8,
        /// One of [`fin`].
        pub fin: u8,
        /// Resets this side sent.
        pub rst_sent: u8,
        /// Resets this side received.
        pub rst_received: u8,
        /// The last state.
        pub state: u8,
        /// Explicit padding, always zero.
        pub _pad: [u8; 2],
    }

    /// Kinds of [`TcpEvent`].
    pub mod kind {
        /// SYN_SENT → ESTABLISHED.
        pub const CONNECT: u32 = 1;
        /// SYN_RECV → ESTABLISHED.
        pub const ACCEPT: u32 = 2;
        /// → CLOSE: the connection's final record.
        pub const CLOSE: u32 = 3;
        /// This side sent a reset.
        pub const RESET_SENT: u32 = 4;
        /// This side received a reset.
        pub const RESET_RECEIVED: u32 = 5;
        /// A segment was retransmitted.
        pub const RETRANSMIT: u32 = 6;
        /// Any other state change (sent only when asked).
        pub const STATE: u32 = 7;
    }

    /// An event, sent through `TCP_EVENTS`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct TcpEvent {
        /// `bpf_ktime_get_boot_ns`.
        pub ts_ns: u64,
        /// One of [`kind`].
        pub kind: u32,
        /// State before (state changes).
        pub old_state: u8,
        /// State after.
        pub new_state: u8,
        /// Explicit padding, always zero.
        pub _pad: [u8; 2],
        /// The connection as it is now.
        pub conn: TcpConn,
    }

    /// Indexes into the per-CPU `TCP_COUNTERS` entry.
    pub mod counter {
        /// Tracepoint calls for TCP sockets.
        pub const SEEN: u32 = 0;
        /// Sockets left out by the address filter.
        pub const FILTERED: u32 = 1;
        /// Sockets not tracked: the table was full (a loss).
        pub const CONN_MAP_FULL: u32 = 2;
        /// Events lost because the ring buffer was full.
        pub const RINGBUF_FULL: u32 = 3;
        /// Events sent.
        pub const EVENTS: u32 = 4;
        /// Number of counters.
        pub const COUNT: u32 = 5;
        /// Stable names, indexed by counter.
        pub const NAMES: [&str; COUNT as usize] = [
            "seen",
            "filtered",
            "conn_map_full",
            "ringbuf_full",
            "events",
        ];
    }

    /// Map, global and program names of the TCP object.
    pub mod names {
        /// The read-only global [`super::TcpConfig`].
        pub const FIXED: &str = "TCP_FIXED";
        /// Array (one u32): non-zero to send every state change.
        pub const STATES: &str = "TCP_STATES";
        /// Hash of watched addresses.
        pub const ADDRS: &str = "TCP_ADDRS";
        /// Hash of socket address to [`super::TcpConn`].
        pub const CONNS: &str = "TCP_CONNS";
        /// Ring buffer of [`super::TcpEvent`].
        pub const EVENTS: &str = "TCP_EVENTS";
        /// Per-CPU scratch [`super::TcpEvent`].
        pub const SCRATCH: &str = "TCP_SCRATCH";
        /// Per-CPU counters.
        pub const COUNTERS: &str = "TCP_COUNTERS";
        /// On `inet_sock_set_state`.
        pub const SET_STATE: &str = "orb8_tcp_set_state";
        /// On `tcp_retransmit_skb`.
        pub const RETRANSMIT: &str = "orb8_tcp_retransmit";
        /// On `tcp_receive_reset`.
        pub const RECEIVE_RESET: &str = "orb8_tcp_receive_reset";
        /// On `tcp_send_reset`.
        pub const SEND_RESET: &str = "orb8_tcp_send_reset";
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::dns::DnsPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::dns::DnsEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::sys::SysConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::sys::SysStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::sys::ErrnoKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::sys::Inflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::sys::SysEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::drops::DropConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::drops::DropKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::drops::DropStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::drops::DropEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::tcp::TcpConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::tcp::TcpConn {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::tcp::TcpEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn abi_sizes_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 4 + 4 + 16 + 16 + 2 + 2);
        assert_eq!(size_of::<FlowKey4>(), 4 + 4 + 4 + 2 + 2 + 4);
        assert_eq!(size_of::<FlowStats>(), 8 * 4 + 8);
        assert_eq!(size_of::<Event>(), 4 + 4 + 8 + size_of::<FlowKey>() + 4);
        assert_eq!(size_of::<Event>() % 8, 0);
        assert_eq!(size_of::<dns::DnsPorts>(), 2 * dns::MAX_PORTS);
        assert_eq!(
            size_of::<dns::DnsEvent>(),
            8 + size_of::<FlowKey>() + 3 * 4 + dns::MAX_PAYLOAD
        );
        assert_eq!(size_of::<dns::DnsEvent>() % 8, 0);
        assert_eq!(counter::NAMES.len(), counter::COUNT as usize);
        assert_eq!(size_of::<sys::SysConfig>(), 6 * 4 + 3 * 8);
        assert_eq!(size_of::<sys::SysStats>(), 8 * (3 + sys::HIST_BUCKETS));
        assert_eq!(size_of::<sys::ErrnoKey>(), 8);
        assert_eq!(size_of::<sys::Inflight>(), 16);
        assert_eq!(size_of::<sys::SysEvent>(), 4 * 8 + 8 + 16);
        assert_eq!(size_of::<drops::DropConfig>(), 12 * 4);
        assert_eq!(size_of::<drops::DropKey>(), 3 * 4 + 4 + 32 + 4);
        assert_eq!(size_of::<drops::DropStats>(), 4 * 8);
        assert_eq!(
            size_of::<drops::DropEvent>(),
            8 + size_of::<drops::DropKey>() + 4
        );
        assert_eq!(size_of::<tcp::TcpConfig>(), 12 * 4);
        assert_eq!(size_of::<tcp::TcpConn>(), 2 * 8 + 32 + 3 * 4 + 2 * 2 + 8);
        assert_eq!(
            size_of::<tcp::TcpEvent>(),
            8 + 4 + 4 + size_of::<tcp::TcpConn>()
        );
    }

    #[test]
    fn ipv4_keys_convert_both_ways_and_ipv6_has_none() {
        let mut k = FlowKey {
            ifindex: 7,
            direction: direction::EGRESS,
            protocol: 17,
            family: family::IPV4,
            flags: key_flags::FRAGMENT,
            src_port: 40000,
            dst_port: 53,
            ..FlowKey::default()
        };
        k.src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        k.dst_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        let short = FlowKey4::of(&k).expect("an IPv4 key");
        assert_eq!(short.src_addr, [10, 0, 0, 1]);
        assert_eq!(short.dst_addr, [10, 0, 0, 2]);
        assert_eq!(short.key(), k);
        k.family = family::IPV6;
        assert_eq!(FlowKey4::of(&k), None);
    }
}
