//! The client's model, at the bottom of its stack: flows as the client works with them (a wire
//! [`Flow`] tagged with its node and decoded into `orb8-flowspec`'s protocol, direction and
//! addresses), what an address is ([`Endpoint`], filled in by `enrich`), the wire form of
//! filters and sort orders, and the formatting shared by every output format.
//!
//! A record's `direction` is the direction of its *observed end* (docs/flows.md): the pod
//! behind a host-side veth (`egress` = the pod sent), the node on an uplink or bridge. The
//! interface's own direction, as the kernel counted it, stays in `interface_direction`. Flows
//! from agents that do not say their interface's role keep the interface's direction.
//!
//! What filters, CIDRs, protocols, directions and sort keys mean is `orb8-flowspec`'s, shared
//! with the agent; this module only maps the wire's types onto it.

use std::collections::HashMap;
use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orb8_flowspec::{Direction, FlowFilterSpec, FlowKey, InterfaceRole, Protocol, SortKey, Totals};
use orb8_proto::{Flow, FlowFilter, SortBy};

/// What an address is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod: `namespace/name`.
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A Service's cluster IP.
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A node's own address (the node, or a pod on its host network).
    Host {
        /// The node.
        node: String,
    },
    /// A public address outside the cluster.
    World,
    /// A private address the cluster does not name.
    Unknown,
    /// An address nobody in the cluster owns that a DNS answer the agent saw gave for `name`
    /// (`api.stripe.com`); a pod, service or node name always wins over it.
    Dns {
        /// The name queried.
        name: String,
    },
}

impl Endpoint {
    /// As shown: `ns/pod`, `svc:ns/name`, `host:node`, `world`, `unknown`.
    pub fn label(&self) -> String {
        match self {
            Endpoint::Pod { namespace, name } => format!("{namespace}/{name}"),
            Endpoint::Service { namespace, name } => format!("svc:{namespace}/{name}"),
            Endpoint::Host { node } => format!("host:{node}"),
            Endpoint::World => "world".into(),
            Endpoint::Unknown => "unknown".into(),
            Endpoint::Dns { name } => name.clone(),
        }
    }

    /// As a live line shows the end at `addr`: its label, with the address inside
    /// `world(...)`/`unknown(...)` when nobody in the cluster owns it.
    pub fn label_at(&self, addr: Option<IpAddr>) -> String {
        match self {
            Endpoint::World | Endpoint::Unknown => format!("{}({})", self.label(), addr_text(addr)),
            _ => self.label(),
        }
    }
}

/// Netns owners already seen, by PID, so that equal ones are stored once.
#[derive(Debug, Default)]
pub struct Owners(HashMap<u32, Vec<Arc<orb8_proto::NetnsOwner>>>);

impl Owners {
    /// The stored owner equal to `owner`, stored now if there is none.
    pub fn share(&mut self, owner: orb8_proto::NetnsOwner) -> Arc<orb8_proto::NetnsOwner> {
        let same_pid = self.0.entry(owner.pid).or_default();
        if let Some(o) = same_pid.iter().find(|o| ***o == owner) {
            return o.clone();
        }
        let o = Arc::new(owner);
        same_pid.push(o.clone());
        o
    }
}

/// One flow from one node, decoded from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// The node (or agent address) the flow was seen on.
    pub node: String,
    /// Interface name on that node.
    pub interface: String,
    /// Direction of the observed end (the pod behind a veth, the node on an uplink); the
    /// interface's when its role is unknown; `None` when the agent left it unspecified.
    pub direction: Option<Direction>,
    /// Direction relative to the interface, as the kernel counted it.
    pub interface_direction: Option<Direction>,
    /// Why the agent watches the interface; `None` from agents that do not say.
    pub interface_role: Option<InterfaceRole>,
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
    /// What the source address is (cluster mode; filled in by `enrich`).
    pub src_name: Option<Endpoint>,
    /// What the destination address is.
    pub dst_name: Option<Endpoint>,
    /// For a flow on a host-side veth: the process (and container) in the namespace it leads
    /// to, as the agent found it; shared by the flows of a table with the same owner.
    pub netns_owner: Option<Arc<orb8_proto::NetnsOwner>>,
    /// The DNS name the agent saw answered for the source address, if any.
    pub src_dns: Option<String>,
    /// The DNS name the agent saw answered for the destination address, if any.
    pub dst_dns: Option<String>,
}

impl FlowRecord {
    /// Decodes a wire flow seen on `node`. An empty `node` falls back to the flow's own.
    pub fn from_proto(node: &str, flow: Flow) -> Self {
        Self::from_proto_sharing(node, flow, &mut Owners::default())
    }

    /// [`FlowRecord::from_proto`], taking the netns owner from `owners` when an equal one is
    /// there (a table's flows through one veth share it) and adding it otherwise.
    pub fn from_proto_sharing(node: &str, mut flow: Flow, owners: &mut Owners) -> Self {
        let netns_owner = flow.netns_owner.take().map(|o| owners.share(*o));
        let interface_direction = direction_from_wire(flow.direction());
        let interface_role = InterfaceRole::from_name(&flow.interface_role);
        let direction = match (interface_role, interface_direction) {
            (Some(role), Some(d)) => Some(role.end_direction(d)),
            _ => interface_direction,
        };
        let node = if node.is_empty() {
            flow.node
        } else {
            node.to_string()
        };
        FlowRecord {
            node,
            interface: flow.interface,
            direction,
            interface_direction,
            interface_role,
            // A number above 255 (never sent by a sane agent) shows as 255 (reserved).
            protocol: Protocol::try_from(flow.protocol).unwrap_or(Protocol(u8::MAX)),
            src: orb8_flowspec::ip_from_bytes(&flow.src_addr),
            src_port: flow.src_port,
            dst: orb8_flowspec::ip_from_bytes(&flow.dst_addr),
            dst_port: flow.dst_port,
            fragment: flow.fragment,
            packets: flow.packets,
            bytes: flow.bytes,
            tcp_flags: flow.tcp_flags,
            first_seen_nanos: flow.first_seen_unix_nanos,
            last_seen_nanos: flow.last_seen_unix_nanos,
            src_name: None,
            dst_name: None,
            netns_owner,
            src_dns: Some(flow.src_dns_name).filter(|n| !n.is_empty()),
            dst_dns: Some(flow.dst_dns_name).filter(|n| !n.is_empty()),
        }
    }

    /// Whether the observed end (see the module docs) is the source: it sent what this flow
    /// counts. `None` when the interface's role or the direction is unknown.
    pub fn observed_is_src(&self) -> Option<bool> {
        self.interface_role?;
        Some(self.direction? == Direction::Egress)
    }

    /// The observed end's name and its peer's (cluster mode): the pod behind the veth, the
    /// node on an uplink. For a flow whose interface role is unknown: the end that is a pod
    /// (the source when both are).
    pub fn observed_and_peer(&self) -> (Option<&Endpoint>, Option<&Endpoint>) {
        if self.src_is_observed_or_pod() {
            (self.src_name.as_ref(), self.dst_name.as_ref())
        } else {
            (self.dst_name.as_ref(), self.src_name.as_ref())
        }
    }

    fn src_is_observed_or_pod(&self) -> bool {
        let is_pod = |e: &Option<Endpoint>| matches!(e, Some(Endpoint::Pod { .. }));
        self.observed_is_src()
            .unwrap_or(is_pod(&self.src_name) || !is_pod(&self.dst_name))
    }

    /// The ends in [`Self::observed_and_peer`]'s order, as addresses with their ports.
    pub fn observed_and_peer_addrs(&self) -> ((Option<IpAddr>, u32), (Option<IpAddr>, u32)) {
        let src = (self.src, self.src_port);
        let dst = (self.dst, self.dst_port);
        if self.src_is_observed_or_pod() {
            (src, dst)
        } else {
            (dst, src)
        }
    }

    /// Whether the flow has ports to show (TCP, UDP, SCTP, ...; not a fragment).
    pub fn has_ports(&self) -> bool {
        self.shows_ports()
    }

    /// What a filter looks at in this flow (the observed end's direction).
    pub fn key(&self) -> FlowKey<'_> {
        FlowKey {
            interface: &self.interface,
            direction: self.direction,
            protocol: Some(self.protocol),
            src: self.src,
            src_port: self.src_port,
            dst: self.dst,
            dst_port: self.dst_port,
        }
    }

    /// The counts a sort key orders by.
    pub fn totals(&self) -> Totals {
        Totals {
            bytes: self.bytes,
            packets: self.packets,
            last_seen: self.last_seen_nanos,
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
            orb8_flowspec::tcp_flag_letters(self.tcp_flags)
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
            direction: Some(Direction::Egress),
            interface_direction: Some(Direction::Egress),
            interface_role: Some(InterfaceRole::Uplink),
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
            src_dns: None,
            dst_dns: None,
        }
    }
}

/// An address as text (`?` when malformed).
pub fn addr_text(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "?".to_string(), |a| a.to_string())
}

/// An address with its port (`10.0.0.1:53`, `[fd00::1]:53`), or alone when `with_port` is
/// false; `?` for an unknown address.
pub fn endpoint(addr: Option<IpAddr>, port: u32, with_port: bool) -> String {
    match (addr, with_port) {
        (Some(IpAddr::V6(a)), true) => format!("[{a}]:{port}"),
        (Some(a), true) => format!("{a}:{port}"),
        (a, _) => addr_text(a),
    }
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

/// The name of a direction as printed (`ingress`, `egress`; `unspecified` when unknown).
pub fn direction_name(direction: Option<Direction>) -> &'static str {
    direction.map_or("unspecified", Direction::name)
}

/// The model's direction of a wire direction; `None` for unspecified.
pub fn direction_from_wire(direction: orb8_proto::Direction) -> Option<Direction> {
    match direction {
        orb8_proto::Direction::Ingress => Some(Direction::Ingress),
        orb8_proto::Direction::Egress => Some(Direction::Egress),
        orb8_proto::Direction::Unspecified => None,
    }
}

/// The wire's direction of the model's.
pub fn direction_to_wire(direction: Direction) -> orb8_proto::Direction {
    match direction {
        Direction::Ingress => orb8_proto::Direction::Ingress,
        Direction::Egress => orb8_proto::Direction::Egress,
    }
}

/// The filter as sent to agents: everything but the direction, which agents apply to the
/// interface's direction while `--direction` means the observed end's; the client applies the
/// whole filter again to what comes back.
pub fn filter_to_wire(spec: &FlowFilterSpec) -> FlowFilter {
    FlowFilter {
        cidrs: spec.cidrs.iter().map(ToString::to_string).collect(),
        ports: spec.ports.iter().map(|p| u32::from(*p)).collect(),
        protocols: spec.protocols.iter().map(|p| u32::from(p.0)).collect(),
        direction: orb8_proto::Direction::Unspecified as i32,
        interfaces: spec.interfaces.clone(),
    }
}

/// The sort order as asked of agents.
pub fn sort_to_wire(key: SortKey) -> SortBy {
    match key {
        SortKey::Bytes => SortBy::Bytes,
        SortKey::Packets => SortBy::Packets,
        SortKey::Time => SortBy::Time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> Flow {
        Flow {
            node: "ignored".into(),
            interface: "veth1".into(),
            ifindex: 7,
            direction: orb8_proto::Direction::Ingress as i32,
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
            interface_role: "veth".into(),
            src_dns_name: String::new(),
            dst_dns_name: String::new(),
        }
    }

    #[test]
    fn decodes_a_wire_flow() {
        let f = FlowRecord::from_proto("node-b", wire());
        assert_eq!(f.node, "node-b");
        assert_eq!(f.src_endpoint(), "[fd00::1]:443");
        assert_eq!(f.dst_endpoint(), "192.0.2.1:5555");
        assert_eq!(f.tcp_flag_letters(), "S.");
        // Ingress on a veth: the pod behind it sent the flow.
        assert_eq!(f.interface_direction, Some(Direction::Ingress));
        assert_eq!(f.interface_role, Some(InterfaceRole::Veth));
        assert_eq!(f.direction, Some(Direction::Egress));
        assert_eq!(direction_name(f.direction), "egress");
        assert_eq!(f.observed_is_src(), Some(true));
        let mut egress = wire();
        egress.direction = orb8_proto::Direction::Egress as i32;
        let f = FlowRecord::from_proto("n", egress.clone());
        assert_eq!(f.direction, Some(Direction::Ingress));
        assert_eq!(f.observed_is_src(), Some(false));
        egress.interface_role = "uplink".into();
        let f = FlowRecord::from_proto("n", egress.clone());
        assert_eq!(
            f.direction,
            Some(Direction::Egress),
            "an uplink keeps its words"
        );
        assert_eq!(f.observed_is_src(), Some(true));
        egress.interface_role = String::new();
        let f = FlowRecord::from_proto("n", egress);
        assert_eq!(
            (f.direction, f.interface_role, f.observed_is_src()),
            (Some(Direction::Egress), None, None),
            "an agent that does not say the role: the interface's direction"
        );
        assert_eq!(FlowRecord::from_proto("", wire()).node, "ignored");

        let mut odd = wire();
        odd.direction = orb8_proto::Direction::Unspecified as i32;
        odd.protocol = 300;
        let f = FlowRecord::from_proto("n", odd);
        assert_eq!(f.direction, None);
        assert_eq!(direction_name(f.direction), "unspecified");
        assert_eq!(f.protocol, Protocol(255));
        assert_eq!(f.tcp_flag_letters(), "", "flags only show for TCP");
    }

    #[test]
    fn malformed_addresses_and_portless_protocols() {
        let mut f = FlowRecord::test_flow();
        f.src = orb8_flowspec::ip_from_bytes(&[1, 2, 3]);
        assert_eq!(f.src_endpoint(), "?");
        f.protocol = Protocol::ICMP;
        assert_eq!(f.dst_endpoint(), "10.0.0.2");
        f.protocol = Protocol(17);
        f.fragment = true;
        assert_eq!(f.dst_endpoint(), "10.0.0.2");
    }

    #[test]
    fn builds_the_wire_filter_and_sort_order() {
        let spec = FlowFilterSpec {
            cidrs: vec![
                "10.0.0.0/8".parse().expect("cidr"),
                "fd00::1".parse().expect("cidr"),
            ],
            ports: vec![53, 443],
            protocols: vec![Protocol(17)],
            direction: Some(Direction::Egress),
            interfaces: vec!["eth0".into()],
        };
        let wire = filter_to_wire(&spec);
        assert_eq!(wire.cidrs, vec!["10.0.0.0/8", "fd00::1/128"]);
        assert_eq!(wire.ports, vec![53, 443]);
        assert_eq!(wire.protocols, vec![17]);
        assert_eq!(
            wire.direction,
            orb8_proto::Direction::Unspecified as i32,
            "the client applies --direction (the observed end's) itself"
        );
        assert_eq!(wire.interfaces, vec!["eth0"]);
        assert_eq!(
            filter_to_wire(&FlowFilterSpec::default()),
            FlowFilter::default(),
            "an empty spec matches everything on the agent too"
        );
        for d in Direction::ALL {
            assert_eq!(direction_from_wire(direction_to_wire(d)), Some(d));
        }
        assert_eq!(sort_to_wire(SortKey::Bytes), SortBy::Bytes);
        assert_eq!(sort_to_wire(SortKey::Packets), SortBy::Packets);
        assert_eq!(sort_to_wire(SortKey::Time), SortBy::Time);
    }

    #[test]
    fn filters_see_every_field_of_a_record() {
        let flow = FlowRecord::test_flow();
        let key = flow.key();
        assert_eq!(key.interface, "eth0");
        assert_eq!(key.direction, Some(Direction::Egress));
        assert_eq!(key.protocol, Some(Protocol(17)));
        assert_eq!(key.src, flow.src);
        assert_eq!((key.src_port, key.dst_port), (40000, 53));
        assert_eq!(key.dst, flow.dst);
        let spec = FlowFilterSpec {
            cidrs: vec!["10.0.0.2".parse().expect("cidr")],
            ports: vec![53],
            protocols: vec![Protocol::UDP],
            direction: Some(Direction::Egress),
            interfaces: vec!["eth0".into()],
        };
        assert!(spec.matches(&flow.key()));
        let ingress = FlowFilterSpec {
            direction: Some(Direction::Ingress),
            ..Default::default()
        };
        assert!(!ingress.matches(&flow.key()));
        assert_eq!(
            flow.totals(),
            Totals {
                bytes: 150,
                packets: 2,
                last_seen: 1_700_000_001_000_000_000
            }
        );
    }

    #[test]
    fn endpoints_are_labelled() {
        let pod = Endpoint::Pod {
            namespace: "shop".into(),
            name: "checkout-1".into(),
        };
        assert_eq!(pod.label(), "shop/checkout-1");
        let svc = Endpoint::Service {
            namespace: "default".into(),
            name: "kubernetes".into(),
        };
        assert_eq!(svc.label(), "svc:default/kubernetes");
        let host = Endpoint::Host {
            node: "node-a".into(),
        };
        assert_eq!(host.label(), "host:node-a");
        assert_eq!(Endpoint::World.label(), "world");
        assert_eq!(Endpoint::Unknown.label(), "unknown");
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
