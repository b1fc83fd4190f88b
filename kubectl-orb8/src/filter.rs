//! Flow filters: parsing `--cidr`, `--ip`, `--port`, `--protocol`, `--direction` and
//! `--interface`, turning them into the wire [`FlowFilter`], and applying the same filter on
//! the client after the merge.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use orb8_proto::{Direction, FlowFilter};

use crate::flow::FlowRecord;

/// A value given to a filter flag that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// `--cidr`/`--ip` got something that is not `ADDRESS` or `ADDRESS/PREFIX`.
    #[error("bad CIDR '{input}': {reason}")]
    InvalidCidr {
        /// What the user typed.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// `--protocol` got neither a known name nor a number from 0 to 255.
    #[error("bad protocol '{input}': use tcp, udp, icmp, icmpv6, sctp or a number from 0 to 255")]
    InvalidProtocol {
        /// What the user typed.
        input: String,
    },
}

/// An address block such as `10.0.0.0/8` or `fd00::/64`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block holding exactly one address.
    pub fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr {
            network: addr,
            prefix,
        }
    }

    /// The first address of the block (host bits cleared).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` lies inside the block. IPv4 blocks only hold IPv4 addresses.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = mask_u32(self.prefix);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = mask_u128(self.prefix);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask_u128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl FromStr for Cidr {
    type Err = FilterError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| FilterError::InvalidCidr {
            input: input.to_string(),
            reason,
        };
        let (addr_part, prefix_part) = match input.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (input, None),
        };
        let addr: IpAddr = addr_part
            .trim()
            .parse()
            .map_err(|_| bad(format!("'{addr_part}' is not an IP address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_part {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(format!("prefix length must be a number from 0 to {max}")))?,
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask_u32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask_u128(prefix)).into()),
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An IP protocol number, parsed from a name (`tcp`) or a number (`132`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protocol(pub u8);

const PROTOCOL_NAMES: [(u8, &str); 5] = [
    (1, "icmp"),
    (6, "tcp"),
    (17, "udp"),
    (58, "icmpv6"),
    (132, "sctp"),
];

impl Protocol {
    /// TCP (6).
    pub const TCP: Protocol = Protocol(6);
    /// ICMP (1).
    pub const ICMP: Protocol = Protocol(1);
    /// ICMPv6 (58).
    pub const ICMPV6: Protocol = Protocol(58);

    /// The well-known name, when orb8 knows one.
    pub fn name(self) -> Option<&'static str> {
        PROTOCOL_NAMES
            .iter()
            .find(|(n, _)| *n == self.0)
            .map(|(_, name)| *name)
    }

    /// Whether the protocol's flows have ports (as opposed to ICMP's type and code).
    pub fn has_ports(self) -> bool {
        !matches!(self, Protocol::ICMP | Protocol::ICMPV6)
    }

    /// The protocol of a wire flow; numbers above 255 (never sent by a sane agent) are kept
    /// out of the u8 range by mapping them to 255 (reserved).
    pub fn from_wire(number: u32) -> Self {
        Protocol(u8::try_from(number).unwrap_or(u8::MAX))
    }
}

impl FromStr for Protocol {
    type Err = FilterError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let lower = input.trim().to_ascii_lowercase();
        if let Some((n, _)) = PROTOCOL_NAMES.iter().find(|(_, name)| *name == lower) {
            return Ok(Protocol(*n));
        }
        if lower == "icmp6" || lower == "ipv6-icmp" {
            return Ok(Protocol::ICMPV6);
        }
        lower
            .parse::<u8>()
            .map(Protocol)
            .map_err(|_| FilterError::InvalidProtocol {
                input: input.to_string(),
            })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// What flows a command is about, as the user asked for them. Empty lists match everything;
/// values within a list are alternatives, and the lists combine with AND (like [`FlowFilter`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilterSpec {
    /// A flow matches when either end is inside one of these.
    pub cidrs: Vec<Cidr>,
    /// A flow matches when either port is one of these.
    pub ports: Vec<u16>,
    /// IP protocols.
    pub protocols: Vec<Protocol>,
    /// Only this direction, when set.
    pub direction: Option<Direction>,
    /// Interface names.
    pub interfaces: Vec<String>,
}

impl FlowFilterSpec {
    /// The filter as sent to agents.
    pub fn to_proto(&self) -> FlowFilter {
        FlowFilter {
            cidrs: self.cidrs.iter().map(Cidr::to_string).collect(),
            ports: self.ports.iter().map(|p| u32::from(*p)).collect(),
            protocols: self.protocols.iter().map(|p| u32::from(p.0)).collect(),
            direction: self.direction.unwrap_or(Direction::Unspecified) as i32,
            interfaces: self.interfaces.clone(),
        }
    }

    /// Whether a flow passes the filter, with the semantics [`FlowFilter`] documents.
    pub fn matches(&self, flow: &FlowRecord) -> bool {
        let cidr_ok = self.cidrs.is_empty()
            || self.cidrs.iter().any(|c| {
                flow.src.is_some_and(|a| c.contains(a)) || flow.dst.is_some_and(|a| c.contains(a))
            });
        let port_ok = self.ports.is_empty()
            || self.ports.iter().any(|p| {
                let p = u32::from(*p);
                flow.src_port == p || flow.dst_port == p
            });
        let proto_ok = self.protocols.is_empty() || self.protocols.contains(&flow.protocol);
        let dir_ok = match self.direction {
            None | Some(Direction::Unspecified) => true,
            Some(d) => flow.direction == d,
        };
        let iface_ok = self.interfaces.is_empty() || self.interfaces.contains(&flow.interface);
        cidr_ok && port_ok && proto_ok && dir_ok && iface_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("valid CIDR in test")
    }

    #[test]
    fn parses_and_normalises_cidrs() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("fd00::1/64").to_string(), "fd00::/64");
        assert_eq!(cidr("fd00::1").to_string(), "fd00::1/128");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn refuses_bad_cidrs_with_the_reason() {
        let err = "10.0.0.0/33".parse::<Cidr>().expect_err("prefix too long");
        assert_eq!(
            err.to_string(),
            "bad CIDR '10.0.0.0/33': prefix length must be a number from 0 to 32"
        );
        let err = "10.0.0/8".parse::<Cidr>().expect_err("short address");
        assert_eq!(
            err.to_string(),
            "bad CIDR '10.0.0/8': '10.0.0' is not an IP address"
        );
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        assert!("".parse::<Cidr>().is_err());
    }

    #[test]
    fn containment_respects_family_and_prefix() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains("10.255.0.1".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        assert!(!net.contains("::ffff:10.0.0.1".parse().expect("ip")));
        assert!(cidr("0.0.0.0/0").contains("192.0.2.1".parse().expect("ip")));
        assert!(cidr("fd00::/8").contains("fd12::1".parse().expect("ip")));
        assert!(!cidr("fd00::/8").contains("fe80::1".parse().expect("ip")));
    }

    #[test]
    fn parses_protocols_by_name_and_number() {
        assert_eq!("tcp".parse::<Protocol>(), Ok(Protocol(6)));
        assert_eq!("UDP".parse::<Protocol>(), Ok(Protocol(17)));
        assert_eq!("icmp".parse::<Protocol>(), Ok(Protocol(1)));
        assert_eq!("icmpv6".parse::<Protocol>(), Ok(Protocol(58)));
        assert_eq!("sctp".parse::<Protocol>(), Ok(Protocol(132)));
        assert_eq!("47".parse::<Protocol>(), Ok(Protocol(47)));
        assert!("256".parse::<Protocol>().is_err());
        assert!("tcpp".parse::<Protocol>().is_err());
        assert_eq!(Protocol(47).to_string(), "47");
        assert_eq!(Protocol(17).to_string(), "udp");
    }

    #[test]
    fn builds_the_wire_filter() {
        let spec = FlowFilterSpec {
            cidrs: vec![cidr("10.0.0.0/8"), cidr("fd00::1")],
            ports: vec![53, 443],
            protocols: vec![Protocol(17)],
            direction: Some(Direction::Egress),
            interfaces: vec!["eth0".into()],
        };
        let proto = spec.to_proto();
        assert_eq!(proto.cidrs, vec!["10.0.0.0/8", "fd00::1/128"]);
        assert_eq!(proto.ports, vec![53, 443]);
        assert_eq!(proto.protocols, vec![17]);
        assert_eq!(proto.direction, Direction::Egress as i32);
        assert_eq!(proto.interfaces, vec!["eth0"]);
        assert_eq!(
            FlowFilterSpec::default().to_proto(),
            FlowFilter::default(),
            "an empty spec matches everything on the agent too"
        );
    }

    #[test]
    fn client_side_matching_follows_the_wire_semantics() {
        let flow = FlowRecord::test_flow();
        assert!(FlowFilterSpec::default().matches(&flow));

        let by_dst = FlowFilterSpec {
            cidrs: vec![cidr("10.0.0.2")],
            ..Default::default()
        };
        assert!(by_dst.matches(&flow), "either end may match");
        let elsewhere = FlowFilterSpec {
            cidrs: vec![cidr("192.168.0.0/16")],
            ..Default::default()
        };
        assert!(!elsewhere.matches(&flow));

        let port = FlowFilterSpec {
            ports: vec![53],
            ..Default::default()
        };
        assert!(port.matches(&flow));
        let other_port = FlowFilterSpec {
            ports: vec![80, 8080],
            ..Default::default()
        };
        assert!(!other_port.matches(&flow));

        let tcp = FlowFilterSpec {
            protocols: vec![Protocol::TCP],
            ..Default::default()
        };
        assert!(!tcp.matches(&flow));

        let ingress = FlowFilterSpec {
            direction: Some(Direction::Ingress),
            ..Default::default()
        };
        assert!(!ingress.matches(&flow));

        let iface = FlowFilterSpec {
            interfaces: vec!["eth1".into(), "eth0".into()],
            ..Default::default()
        };
        assert!(iface.matches(&flow));

        let and = FlowFilterSpec {
            ports: vec![53],
            protocols: vec![Protocol::TCP],
            ..Default::default()
        };
        assert!(!and.matches(&flow), "fields combine with AND");
    }
}
