//! Flows as the client works with them: a wire [`Flow`] tagged with its node and decoded
//! (addresses, protocol, direction), plus the formatting shared by every output format.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orb8_proto::{Direction, Flow};

use crate::filter::Protocol;

/// One flow from one node, decoded from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// The node (or agent address) the flow was seen on.
    pub node: String,
    /// Interface name on that node.
    pub interface: String,
    /// Direction relative to the interface.
    pub direction: Direction,
    /// IP protocol.
    pub protocol: Protocol,
    /// Source address; `None` when the agent sent a malformed one.
    pub src: Option<IpAddr>,
    /// Source port (0 for fragments and ICMP).
    pub src_port: u32,
    /// Destination address; `None` when the agent sent a malformed one.
    pub dst: Option<IpAddr>,
    /// Destination port; for ICMP `type << 8 | code`.
    pub dst_port: u32,
    /// Built from non-first IP fragments: ports are unknown.
    pub fragment: bool,
    /// Packets counted.
    pub packets: u64,
    /// IP-layer bytes counted.
    pub bytes: u64,
    /// OR of the TCP flags of every packet.
    pub tcp_flags: u32,
    /// First packet, nanoseconds since the Unix epoch (0: unknown).
    pub first_seen_nanos: i64,
    /// Latest packet, nanoseconds since the Unix epoch (0: unknown).
    pub last_seen_nanos: i64,
    /// What the source address is (cluster mode; see [`crate::enrich`]).
    pub src_name: Option<crate::enrich::Endpoint>,
    /// What the destination address is.
    pub dst_name: Option<crate::enrich::Endpoint>,
    /// For a flow on a host-side veth: the process (and container) in the namespace it leads
    /// to, as the agent found it.
    pub netns_owner: Option<Box<orb8_proto::NetnsOwner>>,
}

impl FlowRecord {
    /// Decodes a wire flow seen on `node`. An empty `node` falls back to the flow's own.
    pub fn from_proto(node: &str, flow: Flow) -> Self {
        let direction = flow.direction();
        let node = if node.is_empty() {
            flow.node
        } else {
            node.to_string()
        };
        FlowRecord {
            node,
            interface: flow.interface,
            direction,
            protocol: Protocol::from_wire(flow.protocol),
            src: addr_from_bytes(&flow.src_addr),
            src_port: flow.src_port,
            dst: addr_from_bytes(&flow.dst_addr),
            dst_port: flow.dst_port,
            fragment: flow.fragment,
            packets: flow.packets,
            bytes: flow.bytes,
            tcp_flags: flow.tcp_flags,
            first_seen_nanos: flow.first_seen_unix_nanos,
            last_seen_nanos: flow.last_seen_unix_nanos,
            src_name: None,
            dst_name: None,
            netns_owner: flow.netns_owner,
        }
    }

    /// Source as `addr:port`, `[v6]:port`, or the bare address when there is no port to show.
    pub fn src_endpoint(&self) -> String {
        endpoint(self.src, self.src_port, self.shows_ports())
    }

    /// Destination as `addr:port`, `[v6]:port`, or the bare address when there is no port.
    pub fn dst_endpoint(&self) -> String {
        endpoint(self.dst, self.dst_port, self.shows_ports())
    }

    /// Source address as text (`?` when malformed).
    pub fn src_text(&self) -> String {
        addr_text(self.src)
    }

    /// Destination address as text (`?` when malformed).
    pub fn dst_text(&self) -> String {
        addr_text(self.dst)
    }

    fn shows_ports(&self) -> bool {
        self.protocol.has_ports() && !self.fragment
    }

    /// TCP flags as tcpdump letters; empty for other protocols.
    pub fn tcp_flag_letters(&self) -> String {
        if self.protocol == Protocol::TCP {
            tcp_flag_letters(self.tcp_flags)
        } else {
            String::new()
        }
    }

    /// The protocol as shown to people: its name, or its number as text.
    pub fn protocol_text(&self) -> String {
        self.protocol.to_string()
    }

    /// A flow used by unit tests across the crate.
    #[cfg(test)]
    pub(crate) fn test_flow() -> Self {
        FlowRecord {
            node: "node-a".into(),
            interface: "eth0".into(),
            direction: Direction::Egress,
            protocol: Protocol(17),
            src: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            src_port: 40000,
            dst: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            dst_port: 53,
            fragment: false,
            packets: 2,
            bytes: 150,
            tcp_flags: 0,
            first_seen_nanos: 1_700_000_000_123_456_789,
            last_seen_nanos: 1_700_000_001_000_000_000,
            src_name: None,
            dst_name: None,
            netns_owner: None,
        }
    }
}

/// Decodes 4 or 16 address bytes; anything else is malformed.
pub fn addr_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    } else if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        None
    }
}

fn addr_text(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "?".to_string(), |a| a.to_string())
}

fn endpoint(addr: Option<IpAddr>, port: u32, with_port: bool) -> String {
    match (addr, with_port) {
        (Some(IpAddr::V6(a)), true) => format!("[{a}]:{port}"),
        (Some(a), true) => format!("{a}:{port}"),
        (a, _) => addr_text(a),
    }
}

/// TCP flags as tcpdump prints them, in bit order: `F S R P . U E W`.
pub fn tcp_flag_letters(flags: u32) -> String {
    const LETTERS: [(u32, char); 8] = [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
    ];
    LETTERS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// The wall-clock time of a Unix-nanosecond timestamp; `None` for 0 (unset) or earlier.
pub fn system_time(unix_nanos: i64) -> Option<SystemTime> {
    let nanos = u64::try_from(unix_nanos).ok().filter(|n| *n > 0)?;
    UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

/// RFC 3339 in UTC with nanoseconds (`2023-11-14T22:13:20.123456789Z`); `None` when unset.
pub fn rfc3339_nanos(unix_nanos: i64) -> Option<String> {
    system_time(unix_nanos).map(|t| humantime::format_rfc3339_nanos(t).to_string())
}

/// Time of day in UTC with milliseconds (`22:13:20.123Z`), for live lines; `-` when unset.
pub fn time_of_day(unix_nanos: i64) -> String {
    match system_time(unix_nanos) {
        Some(t) => {
            let full = humantime::format_rfc3339_millis(t).to_string();
            full.get(11..).unwrap_or(&full).to_string()
        }
        None => "-".to_string(),
    }
}

/// How long before `now` a timestamp was, compactly (`0.4s`, `12s`, `3m12s`), like kubectl's AGE.
pub fn age(unix_nanos: i64, now: SystemTime) -> String {
    let Some(t) = system_time(unix_nanos) else {
        return "-".to_string();
    };
    let Ok(d) = now.duration_since(t) else {
        return "now".to_string();
    };
    let secs = d.as_secs();
    if secs < 10 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else if secs < 86400 {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    } else {
        format!("{}d{}h", secs / 86400, (secs % 86400) / 3600)
    }
}

/// Bytes in binary units (`512 B`, `1.5 KiB`, `3.0 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A count in SI units (`999`, `1.2k`, `3.4M`).
pub fn human_count(count: u64) -> String {
    const UNITS: [&str; 6] = ["k", "M", "G", "T", "P", "E"];
    if count < 1000 {
        return count.to_string();
    }
    let mut value = count as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// The name of a direction as printed and as accepted by `--direction`.
pub fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
        Direction::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_wire_flow() {
        let wire = Flow {
            node: "ignored".into(),
            interface: "veth1".into(),
            ifindex: 7,
            direction: Direction::Ingress as i32,
            protocol: 6,
            src_addr: vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst_addr: vec![192, 0, 2, 1],
            src_port: 443,
            dst_port: 5555,
            fragment: false,
            packets: 3,
            bytes: 180,
            tcp_flags: 0x12,
            first_seen_unix_nanos: 1,
            last_seen_unix_nanos: 2,
            netns_owner: None,
        };
        let f = FlowRecord::from_proto("node-b", wire);
        assert_eq!(f.node, "node-b");
        assert_eq!(f.src_endpoint(), "[fd00::1]:443");
        assert_eq!(f.dst_endpoint(), "192.0.2.1:5555");
        assert_eq!(f.tcp_flag_letters(), "S.");
        assert_eq!(f.direction, Direction::Ingress);
    }

    #[test]
    fn malformed_addresses_and_portless_protocols() {
        let mut f = FlowRecord::test_flow();
        f.src = addr_from_bytes(&[1, 2, 3]);
        assert_eq!(f.src_endpoint(), "?");
        f.protocol = Protocol::ICMP;
        assert_eq!(f.dst_endpoint(), "10.0.0.2");
        f.protocol = Protocol(17);
        f.fragment = true;
        assert_eq!(f.dst_endpoint(), "10.0.0.2");
    }

    #[test]
    fn tcp_flags_use_tcpdump_letters_in_bit_order() {
        assert_eq!(tcp_flag_letters(0), "");
        assert_eq!(tcp_flag_letters(0x02), "S");
        assert_eq!(tcp_flag_letters(0x1b), "FSP.");
        assert_eq!(tcp_flag_letters(0xff), "FSRP.UEW");
    }

    #[test]
    fn timestamps_and_units() {
        assert_eq!(
            rfc3339_nanos(1_700_000_000_123_456_789).as_deref(),
            Some("2023-11-14T22:13:20.123456789Z")
        );
        assert_eq!(rfc3339_nanos(0), None);
        assert_eq!(rfc3339_nanos(-5), None);
        assert_eq!(time_of_day(1_700_000_000_123_456_789), "22:13:20.123Z");
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        assert_eq!(age(1_700_000_099_600_000_000, now), "0.4s");
        assert_eq!(age(1_700_000_000_000_000_000, now), "1m40s");
        assert_eq!(age(0, now), "-");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(1234), "1.2k");
        assert_eq!(human_count(3_400_000), "3.4M");
    }
}
