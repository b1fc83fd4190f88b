//! Flow filters: what a user asked to see, and whether a flow is part of it. The agent applies
//! a filter before it answers and the client applies the same one after merging agents'
//! answers, so both must agree; this is the one definition.
//!
//! Empty lists match everything; the values within a list are alternatives (OR); the fields
//! combine with AND. A flow matches a list of blocks when either of its ends is inside one, and
//! a list of ports when either of its ports is one.

use std::fmt;
use std::net::IpAddr;

use crate::cidr::{Cidr, CidrError};
use crate::direction::Direction;
use crate::protocol::{Protocol, ProtocolError};

/// What a filter looks at in a flow, borrowed from whatever the caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey<'a> {
    /// Name of the interface the flow was seen on.
    pub interface: &'a str,
    /// Its direction; `None` when unknown (matches no direction filter).
    pub direction: Option<Direction>,
    /// Its IP protocol; `None` when not a valid protocol number (matches no protocol filter).
    pub protocol: Option<Protocol>,
    /// Source address; `None` when malformed (matches no block).
    pub src: Option<IpAddr>,
    /// Source port (0 where there is none).
    pub src_port: u32,
    /// Destination address; `None` when malformed (matches no block).
    pub dst: Option<IpAddr>,
    /// Destination port (for ICMP, `type << 8 | code`).
    pub dst_port: u32,
}

/// A filter given as text and numbers that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    /// A block that is not `ADDRESS` or `ADDRESS/PREFIX`.
    Cidr(CidrError),
    /// A protocol number above 255.
    Protocol(ProtocolError),
    /// A port number above 65535.
    PortOutOfRange {
        /// The number given.
        value: u32,
    },
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::Cidr(e) => e.fmt(f),
            FilterError::Protocol(e) => e.fmt(f),
            FilterError::PortOutOfRange { value } => {
                write!(f, "bad port {value}: ports are 0 to 65535")
            }
        }
    }
}

impl std::error::Error for FilterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FilterError::Cidr(e) => Some(e),
            FilterError::Protocol(e) => Some(e),
            FilterError::PortOutOfRange { .. } => None,
        }
    }
}

/// Which flows a command is about.
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
    /// A filter from the text and numbers it travels as (block texts, port and protocol
    /// numbers); the first value that cannot be understood is the error.
    pub fn from_parts(
        cidrs: &[String],
        ports: &[u32],
        protocols: &[u32],
        direction: Option<Direction>,
        interfaces: &[String],
    ) -> Result<FlowFilterSpec, FilterError> {
        Ok(FlowFilterSpec {
            cidrs: cidrs
                .iter()
                .map(|c| Cidr::parse(c))
                .collect::<Result<_, _>>()
                .map_err(FilterError::Cidr)?,
            ports: ports
                .iter()
                .map(|p| u16::try_from(*p).map_err(|_| FilterError::PortOutOfRange { value: *p }))
                .collect::<Result<_, _>>()?,
            protocols: protocols
                .iter()
                .map(|p| Protocol::try_from(*p))
                .collect::<Result<_, _>>()
                .map_err(FilterError::Protocol)?,
            direction,
            interfaces: interfaces.to_vec(),
        })
    }

    /// Whether the filter lets every flow through.
    pub fn is_empty(&self) -> bool {
        *self == FlowFilterSpec::default()
    }

    /// Whether `flow` passes every field of the filter.
    pub fn matches(&self, flow: &FlowKey<'_>) -> bool {
        let ends = [flow.src, flow.dst];
        let cidr_ok = self.cidrs.is_empty()
            || self
                .cidrs
                .iter()
                .any(|c| ends.iter().flatten().any(|a| c.contains(*a)));
        let port_ok = self.ports.is_empty()
            || self.ports.iter().any(|p| {
                let p = u32::from(*p);
                flow.src_port == p || flow.dst_port == p
            });
        let proto_ok =
            self.protocols.is_empty() || flow.protocol.is_some_and(|p| self.protocols.contains(&p));
        let dir_ok = self.direction.is_none_or(|d| flow.direction == Some(d));
        let iface_ok =
            self.interfaces.is_empty() || self.interfaces.iter().any(|i| i == flow.interface);
        cidr_ok && port_ok && proto_ok && dir_ok && iface_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("valid CIDR in test")
    }

    /// UDP 10.0.0.1:40000 -> 10.0.0.2:53, egress on eth0.
    fn dns() -> FlowKey<'static> {
        FlowKey {
            interface: "eth0",
            direction: Some(Direction::Egress),
            protocol: Some(Protocol::UDP),
            src: Some("10.0.0.1".parse().expect("ip")),
            src_port: 40000,
            dst: Some("10.0.0.2".parse().expect("ip")),
            dst_port: 53,
        }
    }

    fn spec(f: impl FnOnce(&mut FlowFilterSpec)) -> FlowFilterSpec {
        let mut s = FlowFilterSpec::default();
        f(&mut s);
        s
    }

    #[test]
    fn the_empty_filter_matches_everything() {
        let empty = FlowFilterSpec::default();
        assert!(empty.is_empty());
        assert!(empty.matches(&dns()));
        let odd = FlowKey {
            interface: "",
            direction: None,
            protocol: None,
            src: None,
            src_port: 0,
            dst: None,
            dst_port: 0,
        };
        assert!(empty.matches(&odd));
    }

    #[test]
    fn blocks_match_either_end() {
        assert!(
            spec(|s| s.cidrs = vec![cidr("10.0.0.2")]).matches(&dns()),
            "dst"
        );
        assert!(
            spec(|s| s.cidrs = vec![cidr("10.0.0.1/32")]).matches(&dns()),
            "src"
        );
        assert!(spec(|s| s.cidrs = vec![cidr("0.0.0.0/0")]).matches(&dns()));
        assert!(!spec(|s| s.cidrs = vec![cidr("10.0.0.3/32")]).matches(&dns()));
        assert!(
            !spec(|s| s.cidrs = vec![cidr("::/0")]).matches(&dns()),
            "family"
        );
        assert!(
            spec(|s| s.cidrs = vec![cidr("192.168.0.0/16"), cidr("10.0.0.0/30")]).matches(&dns()),
            "any block of the list"
        );
        let mut malformed = dns();
        malformed.src = None;
        malformed.dst = None;
        assert!(!spec(|s| s.cidrs = vec![cidr("0.0.0.0/0")]).matches(&malformed));
    }

    #[test]
    fn ports_match_either_end() {
        assert!(spec(|s| s.ports = vec![53]).matches(&dns()));
        assert!(spec(|s| s.ports = vec![40000]).matches(&dns()));
        assert!(spec(|s| s.ports = vec![80, 53]).matches(&dns()));
        assert!(!spec(|s| s.ports = vec![80, 8080]).matches(&dns()));
    }

    #[test]
    fn protocols_directions_and_interfaces() {
        assert!(spec(|s| s.protocols = vec![Protocol::UDP]).matches(&dns()));
        assert!(!spec(|s| s.protocols = vec![Protocol::TCP]).matches(&dns()));
        assert!(spec(|s| s.protocols = vec![Protocol::TCP, Protocol::UDP]).matches(&dns()));
        let mut unknown = dns();
        unknown.protocol = None;
        assert!(!spec(|s| s.protocols = vec![Protocol(255)]).matches(&unknown));

        assert!(spec(|s| s.direction = Some(Direction::Egress)).matches(&dns()));
        assert!(!spec(|s| s.direction = Some(Direction::Ingress)).matches(&dns()));
        let mut undirected = dns();
        undirected.direction = None;
        assert!(!spec(|s| s.direction = Some(Direction::Egress)).matches(&undirected));
        assert!(!spec(|s| s.direction = Some(Direction::Ingress)).matches(&undirected));

        assert!(spec(|s| s.interfaces = vec!["eth1".into(), "eth0".into()]).matches(&dns()));
        assert!(!spec(|s| s.interfaces = vec!["eth".into()]).matches(&dns()));
    }

    #[test]
    fn fields_combine_with_and() {
        let both = spec(|s| {
            s.ports = vec![53];
            s.protocols = vec![Protocol::TCP];
        });
        assert!(!both.matches(&dns()), "port matches, protocol does not");
        let all = spec(|s| {
            s.cidrs = vec![cidr("10.0.0.0/8")];
            s.ports = vec![53];
            s.protocols = vec![Protocol::UDP];
            s.direction = Some(Direction::Egress);
            s.interfaces = vec!["eth0".into()];
        });
        assert!(all.matches(&dns()));
        assert!(!all.is_empty());
    }

    #[test]
    fn builds_from_text_and_numbers() {
        let got = FlowFilterSpec::from_parts(
            &["10.1.2.3/8".into(), "fd00::1".into()],
            &[53, 65535],
            &[17, 0],
            Some(Direction::Ingress),
            &["eth0".into()],
        )
        .expect("valid");
        assert_eq!(
            got,
            FlowFilterSpec {
                cidrs: vec![cidr("10.0.0.0/8"), cidr("fd00::1/128")],
                ports: vec![53, 65535],
                protocols: vec![Protocol(17), Protocol(0)],
                direction: Some(Direction::Ingress),
                interfaces: vec!["eth0".into()],
            }
        );
        assert_eq!(
            FlowFilterSpec::from_parts(&[], &[], &[], None, &[]),
            Ok(FlowFilterSpec::default())
        );
    }

    #[test]
    fn refuses_bad_parts_with_one_line() {
        let err = |cidrs: &[&str], ports: &[u32], protocols: &[u32]| {
            let cidrs: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
            FlowFilterSpec::from_parts(&cidrs, ports, protocols, None, &[])
                .expect_err("bad part")
                .to_string()
        };
        assert_eq!(
            err(&["10.0.0.0/8", "10.0.0.0/99"], &[], &[]),
            "bad CIDR '10.0.0.0/99': prefix length must be a number from 0 to 32"
        );
        assert_eq!(
            err(&[], &[53, 65536], &[]),
            "bad port 65536: ports are 0 to 65535"
        );
        assert_eq!(
            err(&[], &[], &[6, 300]),
            "bad protocol number 300: protocols are 0 to 255"
        );
    }
}
