//! The one place where kernel ABI types (`orb8-common`) become wire types (`orb8-proto`), and
//! where the wire's flow filters and sort orders become the shared model's (`orb8-flowspec`),
//! which decides what they mean.

use orb8_flowspec::{
    Direction, FlowFilterSpec, FlowKey, Protocol, SortKey, Totals, ip_from_bytes, ip_to_bytes,
};
use orb8_proto as pb;

use crate::flows::{BootClock, Flow, addr};

/// Converts a kernel flow to the wire type.
pub fn flow(node: &str, interface: String, f: &Flow, clock: &BootClock) -> pb::Flow {
    let mut out = flow_key(node, interface, &f.key);
    out.packets = f.stats.packets;
    out.bytes = f.stats.bytes;
    out.tcp_flags = f.stats.tcp_flags as u32;
    out.first_seen_unix_nanos = unix_nanos(clock, f.stats.first_seen_ns);
    out.last_seen_unix_nanos = unix_nanos(clock, f.stats.last_seen_ns);
    out
}

/// The process and container at the far end of a veth, for the wire.
pub fn netns_owner(p: &crate::peers::Peer) -> pb::NetnsOwner {
    let (pod_uid, container_id) = match &p.container {
        Some(c) => (
            c.pod_uid.clone(),
            c.container_id.clone().unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    };
    pb::NetnsOwner {
        pid: p.pid,
        comm: p.comm.clone(),
        cgroup: p.cgroup.clone(),
        pod_uid,
        container_id,
    }
}

/// Converts a new-flow event (its first packet) to the wire type.
pub fn new_flow(
    node: &str,
    interface: String,
    e: &orb8_common::Event,
    clock: &BootClock,
) -> pb::Flow {
    let mut out = flow_key(node, interface, &e.key);
    out.packets = 1;
    out.bytes = e.bytes as u64;
    out.tcp_flags = e.tcp_flags as u32;
    out.first_seen_unix_nanos = unix_nanos(clock, e.ts_ns);
    out.last_seen_unix_nanos = out.first_seen_unix_nanos;
    out
}

fn flow_key(node: &str, interface: String, k: &orb8_common::FlowKey) -> pb::Flow {
    pb::Flow {
        node: node.to_string(),
        interface,
        ifindex: k.ifindex,
        direction: match crate::flows::direction(k.direction) {
            Direction::Ingress => pb::Direction::Ingress,
            Direction::Egress => pb::Direction::Egress,
        } as i32,
        protocol: k.protocol as u32,
        src_addr: ip_to_bytes(addr(k.family, &k.src_addr)),
        dst_addr: ip_to_bytes(addr(k.family, &k.dst_addr)),
        src_port: k.src_port as u32,
        dst_port: k.dst_port as u32,
        fragment: k.flags & orb8_common::key_flags::FRAGMENT != 0,
        ..Default::default()
    }
}

/// The DNS messages of one probe event as sightings, and why the rest of its payload (if any)
/// was not read.
pub fn dns_sightings(
    ev: &orb8_common::dns::DnsEvent,
) -> (Vec<crate::dns::Sighting>, Option<crate::dns::Unparsed>) {
    let k = &ev.key;
    let captured = (ev.captured as usize).min(ev.payload.len());
    let (messages, unparsed) =
        crate::dns::parse(k.protocol, &ev.payload[..captured], ev.payload_len as usize);
    let src = std::net::SocketAddr::new(addr(k.family, &k.src_addr), k.src_port);
    let dst = std::net::SocketAddr::new(addr(k.family, &k.dst_addr), k.dst_port);
    let sightings = messages
        .into_iter()
        .map(|message| crate::dns::Sighting {
            ts_ns: ev.ts_ns,
            ifindex: k.ifindex,
            protocol: k.protocol,
            src,
            dst,
            message,
        })
        .collect();
    (sightings, unparsed)
}

/// Converts a DNS exchange to the wire type; `interface` names the interface of its query.
pub fn dns_exchange(
    e: &crate::dns::Exchange,
    interface: String,
    clock: &BootClock,
) -> pb::DnsExchange {
    pb::DnsExchange {
        protocol: e.protocol as u32,
        client_addr: ip_to_bytes(e.client.ip()),
        client_port: e.client.port() as u32,
        server_addr: ip_to_bytes(e.server.ip()),
        server_port: e.server.port() as u32,
        id: e.id as u32,
        name: e.qname.clone(),
        qtype: e.qtype.clone(),
        rcode: e.rcode.clone().unwrap_or_default(),
        timeout: e.rcode.is_none(),
        latency_ns: e.latency_ns.unwrap_or(0),
        answers: e
            .answers
            .iter()
            .map(|a| pb::DnsAnswer {
                name: a.name.clone(),
                r#type: a.rtype.clone(),
                ttl: a.ttl,
                data: a.data.clone(),
                addr: a.addr.map(ip_to_bytes).unwrap_or_default(),
            })
            .collect(),
        interface,
        interface_role: String::new(),
        query_unix_nanos: unix_nanos(clock, e.query_ns),
        netns_owner: None,
    }
}

/// Converts a finished syscall (stream mode) to the wire type.
pub fn syscall_event(
    e: &orb8_common::sys::SysEvent,
    arch: orb8_syscalls::Arch,
) -> pb::SyscallEvent {
    let comm_len = e.comm.iter().position(|b| *b == 0).unwrap_or(e.comm.len());
    pb::SyscallEvent {
        pid: (e.pid_tgid >> 32) as u32,
        tid: e.pid_tgid as u32,
        comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
        nr: e.nr,
        name: orb8_syscalls::display_name(arch, e.nr),
        ret: e.ret,
        errno: orb8_syscalls::errno_of(e.ret)
            .map(orb8_syscalls::errno_name)
            .unwrap_or_default(),
        duration_ns: e.duration_ns,
    }
}

/// Converts a trace's counts to the wire summary (syscalls by number).
pub fn syscall_summary(
    node: &str,
    arch: orb8_syscalls::Arch,
    s: &crate::syscalls::Summary,
    slow_client: u64,
) -> pb::SyscallSummary {
    use orb8_common::sys::counter;
    let t = &s.totals;
    let syscalls = t
        .stats
        .iter()
        .map(|(nr, st)| pb::SyscallStats {
            nr: *nr,
            name: orb8_syscalls::display_name(arch, *nr),
            calls: st.calls,
            errors: st.errors,
            total_ns: st.total_ns,
            errnos: t
                .errnos
                .range((*nr, 0)..=(*nr, u32::MAX))
                .map(|((_, e), n)| (orb8_syscalls::errno_name(*e), *n))
                .collect(),
            histogram: st.hist.to_vec(),
        })
        .collect();
    let c = |i: u32| t.counters[i as usize];
    let drop = |stage: pb::DropStage, reason: &str, count: u64| pb::DropCounter {
        stage: stage as i32,
        reason: reason.to_string(),
        count,
    };
    pb::SyscallSummary {
        node: node.to_string(),
        arch: arch.as_str().to_string(),
        elapsed_ns: s.elapsed.as_nanos() as u64,
        syscalls,
        drops: vec![
            drop(
                pb::DropStage::Kernel,
                "inflight_full",
                c(counter::INFLIGHT_FULL),
            ),
            drop(
                pb::DropStage::Kernel,
                "ringbuf_full",
                c(counter::RINGBUF_FULL),
            ),
            drop(
                pb::DropStage::Kernel,
                "errno_map_full",
                c(counter::ERRNO_MAP_FULL),
            ),
            drop(
                pb::DropStage::Kernel,
                "nr_out_of_range",
                c(counter::NR_OUT_OF_RANGE),
            ),
            drop(pb::DropStage::Agent, "queue_overflow", s.lost_agent),
            drop(pb::DropStage::Client, "slow_client", slow_client),
        ],
        target_exited: s.exited.is_some(),
    }
}

/// Converts a key of the drop table and its counts to the wire type (reason named; the
/// interface name and namespace owner are the caller's to add).
pub fn packet_drop(
    k: &orb8_common::drops::DropKey,
    s: &orb8_common::drops::DropStats,
    reasons: &crate::drops::Reasons,
    clock: &BootClock,
) -> pb::PacketDrop {
    pb::PacketDrop {
        reason: reasons.name(k.reason),
        reason_code: k.reason,
        protocol: k.protocol as u32,
        src_addr: ip_to_bytes(addr(k.family, &k.src_addr)),
        dst_addr: ip_to_bytes(addr(k.family, &k.dst_addr)),
        src_port: k.src_port as u32,
        dst_port: k.dst_port as u32,
        fragment: k.flags & orb8_common::key_flags::FRAGMENT != 0,
        ifindex: k.ifindex,
        netns: k.netns as u64,
        packets: s.packets,
        bytes: s.bytes,
        first_seen_unix_nanos: unix_nanos(clock, s.first_seen_ns),
        last_seen_unix_nanos: unix_nanos(clock, s.last_seen_ns),
        ..Default::default()
    }
}

/// A TCP state's kernel name without `TCP_` (`SYN_SENT`), or its number.
pub fn tcp_state_name(s: u8) -> String {
    const NAMES: [&str; 13] = [
        "",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    match NAMES.get(s as usize) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("state {s}"),
    }
}

/// Converts a TCP tracer event to the wire type (the namespace owner is the caller's to add).
pub fn tcp_event(e: &orb8_common::tcp::TcpEvent, clock: &BootClock) -> pb::TcpConnEvent {
    use orb8_common::tcp::{fin, kind, role};
    let c = &e.conn;
    let kind = match e.kind {
        kind::CONNECT => pb::TcpEventKind::Connect,
        kind::ACCEPT => pb::TcpEventKind::Accept,
        kind::CLOSE => pb::TcpEventKind::Close,
        kind::RESET_SENT => pb::TcpEventKind::ResetSent,
        kind::RESET_RECEIVED => pb::TcpEventKind::ResetReceived,
        kind::RETRANSMIT => pb::TcpEventKind::Retransmit,
        kind::STATE => pb::TcpEventKind::State,
        _ => pb::TcpEventKind::Unspecified,
    };
    let at = |ns: u64| if ns == 0 { 0 } else { unix_nanos(clock, ns) };
    pb::TcpConnEvent {
        kind: kind as i32,
        old_state: tcp_state_name(e.old_state),
        new_state: tcp_state_name(e.new_state),
        local_addr: ip_to_bytes(addr(c.family, &c.saddr)),
        local_port: c.sport as u32,
        remote_addr: ip_to_bytes(addr(c.family, &c.daddr)),
        remote_port: c.dport as u32,
        netns: c.netns as u64,
        netns_owner: None,
        role: match c.role {
            role::CONNECT => "connect",
            role::ACCEPT => "accept",
            _ => "",
        }
        .to_string(),
        start_unix_nanos: at(c.start_ns),
        established_unix_nanos: at(c.established_ns),
        handshake_ns: if c.established_ns != 0 && c.role != role::UNKNOWN {
            c.established_ns.saturating_sub(c.start_ns)
        } else {
            0
        },
        srtt_us: c.srtt_us,
        retransmits: c.retransmits,
        fin_first: match c.fin {
            fin::LOCAL => "local",
            fin::PEER => "peer",
            _ => "",
        }
        .to_string(),
        resets_sent: c.rst_sent as u32,
        resets_received: c.rst_received as u32,
        duration_ns: e.ts_ns.saturating_sub(c.start_ns),
    }
}

/// Nanoseconds since the Unix epoch of a kernel boot-time timestamp.
pub fn unix_nanos(clock: &BootClock, boot_ns: u64) -> i64 {
    clock
        .to_system_time(boot_ns)
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A parsed [`pb::FlowFilter`]: the wire's filter as the shared [`FlowFilterSpec`], whose
/// semantics the client applies too.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    spec: FlowFilterSpec,
}

/// The shared model's direction of a wire direction; `None` for unspecified or unknown values.
fn direction(wire: i32) -> Option<Direction> {
    match pb::Direction::try_from(wire).ok()? {
        pb::Direction::Ingress => Some(Direction::Ingress),
        pb::Direction::Egress => Some(Direction::Egress),
        pb::Direction::Unspecified => None,
    }
}

impl Matcher {
    /// Parses a wire filter; a bad CIDR, port or protocol is an error naming it.
    pub fn new(f: Option<&pb::FlowFilter>) -> Result<Matcher, String> {
        let Some(f) = f else {
            return Ok(Matcher::default());
        };
        let spec = FlowFilterSpec::from_parts(
            &f.cidrs,
            &f.ports,
            &f.protocols,
            direction(f.direction),
            &f.interfaces,
        )
        .map_err(|e| e.to_string())?;
        Ok(Matcher { spec })
    }

    /// True when the flow passes every field of the filter.
    pub fn matches(&self, f: &pb::Flow) -> bool {
        self.spec.matches(&FlowKey {
            interface: &f.interface,
            direction: direction(f.direction),
            protocol: Protocol::try_from(f.protocol).ok(),
            src: ip_from_bytes(&f.src_addr),
            src_port: f.src_port,
            dst: ip_from_bytes(&f.dst_addr),
            dst_port: f.dst_port,
        })
    }
}

/// Sorts flows for a query by the shared [`SortKey`]s: bytes (the default), packets, or most
/// recent first.
pub fn sort(flows: &mut [pb::Flow], by: pb::SortBy) {
    let key = match by {
        pb::SortBy::Packets => SortKey::Packets,
        pb::SortBy::Time => SortKey::Time,
        pb::SortBy::Bytes | pb::SortBy::Unspecified => SortKey::Bytes,
    };
    let totals = |f: &pb::Flow| Totals {
        bytes: f.bytes,
        packets: f.packets,
        last_seen: f.last_seen_unix_nanos,
    };
    flows.sort_by(|a, b| key.order(&totals(a), &totals(b)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, sp: u32, dst: &str, dp: u32, proto: u32, bytes: u64) -> pb::Flow {
        pb::Flow {
            src_addr: ip_to_bytes(src.parse().unwrap()),
            dst_addr: ip_to_bytes(dst.parse().unwrap()),
            src_port: sp,
            dst_port: dp,
            protocol: proto,
            bytes,
            packets: bytes / 100,
            interface: "veth0".into(),
            direction: pb::Direction::Ingress as i32,
            ..Default::default()
        }
    }

    fn matching(filter: pb::FlowFilter, flows: &[pb::Flow]) -> Vec<u64> {
        let m = Matcher::new(Some(&filter)).expect("valid filter");
        flows
            .iter()
            .filter(|f| m.matches(f))
            .map(|f| f.bytes)
            .collect()
    }

    #[test]
    fn every_wire_filter_field_is_applied() {
        let mut egress_tcp = flow("10.0.0.1", 40001, "10.0.1.2", 443, 6, 900);
        egress_tcp.direction = pb::Direction::Egress as i32;
        egress_tcp.interface = "eth0".into();
        let flows = [
            flow("10.0.0.1", 40000, "10.0.1.2", 53, 17, 500),
            egress_tcp,
            flow("fd00::1", 5000, "fd00::2", 53, 17, 300),
        ];
        let all = matching(pb::FlowFilter::default(), &flows);
        assert_eq!(all, vec![500, 900, 300]);
        assert_eq!(
            Matcher::new(None).map(|m| flows.iter().filter(|f| m.matches(f)).count()),
            Ok(3)
        );
        let cidr_and_port = pb::FlowFilter {
            cidrs: vec!["10.0.1.0/24".into()],
            ports: vec![53],
            ..Default::default()
        };
        assert_eq!(matching(cidr_and_port, &flows), vec![500]);
        let v6 = pb::FlowFilter {
            cidrs: vec!["fd00::2".into()],
            ..Default::default()
        };
        assert_eq!(matching(v6, &flows), vec![300]);
        let tcp = pb::FlowFilter {
            protocols: vec![6],
            ..Default::default()
        };
        assert_eq!(matching(tcp, &flows), vec![900]);
        let egress = pb::FlowFilter {
            direction: pb::Direction::Egress as i32,
            ..Default::default()
        };
        assert_eq!(matching(egress, &flows), vec![900]);
        let ingress = pb::FlowFilter {
            direction: pb::Direction::Ingress as i32,
            ..Default::default()
        };
        assert_eq!(matching(ingress, &flows), vec![500, 300]);
        let iface = pb::FlowFilter {
            interfaces: vec!["eth0".into()],
            ..Default::default()
        };
        assert_eq!(matching(iface, &flows), vec![900]);
        let udp_egress = pb::FlowFilter {
            protocols: vec![17],
            direction: pb::Direction::Egress as i32,
            ..Default::default()
        };
        assert_eq!(matching(udp_egress, &flows), Vec::<u64>::new());
    }

    #[test]
    fn bad_wire_filters_are_one_line_naming_the_value() {
        let err = |f: pb::FlowFilter| Matcher::new(Some(&f)).expect_err("bad filter");
        assert_eq!(
            err(pb::FlowFilter {
                cidrs: vec!["10.0.0.0/99".into()],
                ..Default::default()
            }),
            "bad CIDR '10.0.0.0/99': prefix length must be a number from 0 to 32"
        );
        assert_eq!(
            err(pb::FlowFilter {
                ports: vec![70000],
                ..Default::default()
            }),
            "bad port 70000: ports are 0 to 65535"
        );
        assert_eq!(
            err(pb::FlowFilter {
                protocols: vec![256],
                ..Default::default()
            }),
            "bad protocol number 256: protocols are 0 to 255"
        );
    }

    #[test]
    fn sorting_follows_the_requested_key() {
        let mut a = flow("10.0.0.1", 1, "10.0.0.2", 2, 6, 100);
        a.packets = 50;
        a.last_seen_unix_nanos = 2;
        let mut b = flow("10.0.0.1", 1, "10.0.0.2", 3, 6, 900);
        b.packets = 9;
        b.last_seen_unix_nanos = 3;
        let mut c = flow("10.0.0.1", 1, "10.0.0.2", 4, 6, 500);
        c.packets = 20;
        c.last_seen_unix_nanos = 1;
        let order = |by: pb::SortBy| {
            let mut flows = vec![a.clone(), b.clone(), c.clone()];
            sort(&mut flows, by);
            flows.iter().map(|f| f.bytes).collect::<Vec<_>>()
        };
        assert_eq!(order(pb::SortBy::Unspecified), vec![900, 500, 100]);
        assert_eq!(order(pb::SortBy::Bytes), vec![900, 500, 100]);
        assert_eq!(order(pb::SortBy::Packets), vec![100, 500, 900]);
        assert_eq!(order(pb::SortBy::Time), vec![900, 100, 500]);
    }
}
