//! The one place where kernel ABI types (`orb8-common`) become wire types (`orb8-proto`), and
//! where the wire's flow filters are applied.

use std::net::IpAddr;

use orb8_common::{FlowKey, direction};
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

fn flow_key(node: &str, interface: String, k: &FlowKey) -> pb::Flow {
    pb::Flow {
        node: node.to_string(),
        interface,
        ifindex: k.ifindex,
        direction: if k.direction == direction::EGRESS {
            pb::Direction::Egress
        } else {
            pb::Direction::Ingress
        } as i32,
        protocol: k.protocol as u32,
        src_addr: ip_bytes(addr(k.family, &k.src_addr)),
        dst_addr: ip_bytes(addr(k.family, &k.dst_addr)),
        src_port: k.src_port as u32,
        dst_port: k.dst_port as u32,
        fragment: k.flags & orb8_common::key_flags::FRAGMENT != 0,
        ..Default::default()
    }
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
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

/// Nanoseconds since the Unix epoch of a kernel boot-time timestamp.
pub fn unix_nanos(clock: &BootClock, boot_ns: u64) -> i64 {
    clock
        .to_system_time(boot_ns)
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// An address range: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("invalid address or CIDR {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// True when `a` lies inside the range.
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = (prefix / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rem = prefix % 8;
    rem == 0 || {
        let mask = 0xffu8 << (8 - rem);
        a[full] & mask == b[full] & mask
    }
}

/// A parsed [`pb::FlowFilter`].
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    cidrs: Vec<Cidr>,
    ports: std::collections::HashSet<u32>,
    protocols: Vec<u32>,
    direction: Option<i32>,
    interfaces: Vec<String>,
}

impl Matcher {
    /// Parses a wire filter; a bad CIDR is an error naming it.
    pub fn new(f: Option<&pb::FlowFilter>) -> Result<Matcher, String> {
        let Some(f) = f else {
            return Ok(Matcher::default());
        };
        Ok(Matcher {
            cidrs: f
                .cidrs
                .iter()
                .map(|c| Cidr::parse(c))
                .collect::<Result<_, _>>()?,
            ports: f.ports.iter().copied().collect(),
            protocols: f.protocols.clone(),
            direction: (f.direction != pb::Direction::Unspecified as i32).then_some(f.direction),
            interfaces: f.interfaces.clone(),
        })
    }

    /// True when the flow passes every field of the filter.
    pub fn matches(&self, f: &pb::Flow) -> bool {
        let ends = || {
            [to_ip(&f.src_addr), to_ip(&f.dst_addr)]
                .into_iter()
                .flatten()
        };
        (self.cidrs.is_empty() || self.cidrs.iter().any(|c| ends().any(|a| c.contains(a))))
            && (self.ports.is_empty()
                || self.ports.contains(&f.src_port)
                || self.ports.contains(&f.dst_port))
            && (self.protocols.is_empty() || self.protocols.contains(&f.protocol))
            && self.direction.is_none_or(|d| d == f.direction)
            && (self.interfaces.is_empty() || self.interfaces.contains(&f.interface))
    }
}

fn to_ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// Sorts flows for a query: bytes (default), packets, or most recent first; ties by bytes.
pub fn sort(flows: &mut [pb::Flow], by: pb::SortBy) {
    match by {
        pb::SortBy::Packets => {
            flows.sort_by(|a, b| b.packets.cmp(&a.packets).then(b.bytes.cmp(&a.bytes)))
        }
        pb::SortBy::Time => flows.sort_by_key(|f| std::cmp::Reverse(f.last_seen_unix_nanos)),
        pb::SortBy::Bytes | pb::SortBy::Unspecified => {
            flows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.packets.cmp(&a.packets)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, sp: u32, dst: &str, dp: u32, proto: u32, bytes: u64) -> pb::Flow {
        pb::Flow {
            src_addr: ip_bytes(src.parse().unwrap()),
            dst_addr: ip_bytes(dst.parse().unwrap()),
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

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let c = Cidr::parse("fd00::/15").unwrap();
        assert!(c.contains("fd01::1".parse().unwrap()));
        assert!(!c.contains("fd02::1".parse().unwrap()));
        assert_eq!(
            Cidr::parse("10.0.0.1").unwrap(),
            Cidr::parse("10.0.0.1/32").unwrap()
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn filter_fields_combine_with_and() {
        let flows = [
            flow("10.0.0.1", 40000, "10.0.1.2", 53, 17, 500),
            flow("10.0.0.1", 40001, "10.0.1.2", 443, 6, 900),
            flow("fd00::1", 5000, "fd00::2", 53, 17, 300),
        ];
        let m = Matcher::new(Some(&pb::FlowFilter {
            cidrs: vec!["10.0.1.0/24".into()],
            ports: vec![53],
            ..Default::default()
        }))
        .unwrap();
        let got: Vec<u64> = flows
            .iter()
            .filter(|f| m.matches(f))
            .map(|f| f.bytes)
            .collect();
        assert_eq!(got, vec![500]);
        let m = Matcher::new(Some(&pb::FlowFilter {
            protocols: vec![17],
            direction: pb::Direction::Egress as i32,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(flows.iter().filter(|f| m.matches(f)).count(), 0);
        assert!(
            Matcher::new(Some(&pb::FlowFilter {
                cidrs: vec!["10.0.0.0/99".into()],
                ..Default::default()
            }))
            .is_err()
        );
    }

    #[test]
    fn sorting() {
        let mut flows = vec![
            flow("10.0.0.1", 1, "10.0.0.2", 2, 6, 100),
            flow("10.0.0.1", 1, "10.0.0.2", 3, 6, 900),
        ];
        sort(&mut flows, pb::SortBy::Unspecified);
        assert_eq!(flows[0].bytes, 900);
    }
}
