//! Which interfaces the TC probe attaches to, and noticing when they come and go.
//!
//! Without an explicit list the agent watches, in its network namespace (the node's):
//! - the host ends of veth pairs, which is where CNIs connect pods;
//! - the node's uplinks, the interfaces that carry a default route (IPv4 or IPv6);
//! - the common bridges: `cni0`, `docker0`, `cbr0` and `br-*`.
//!
//! Only Ethernet-framed links are taken (the probe parses an Ethernet header first).
//! See `docs/flows.md` for what is counted on which of these interfaces.

use std::collections::BTreeSet;

use futures::TryStreamExt as _;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType};

/// One network link as the discovery sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Kernel interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `rtnl_link_ops` kind (`veth`, `bridge`, ...); empty for physical devices.
    pub kind: String,
    /// True when frames on it carry an Ethernet header.
    pub ethernet: bool,
    /// For a veth, the network namespace id (in this namespace) of its peer, when the peer lives
    /// in another namespace: the pod the interface leads to.
    pub peer_netnsid: Option<i32>,
    /// For a veth, its peer's interface index (in the peer's namespace).
    pub peer_ifindex: Option<u32>,
}

/// Why an interface was selected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Named with `--interface`.
    Explicit,
    /// Host end of a veth pair (a pod's interface).
    Veth,
    /// Carries a default route.
    Uplink,
    /// A container bridge (`cni0`, `docker0`, `cbr0`, `br-*`).
    Bridge,
}

impl Role {
    /// Lower-case name used in logs and the API.
    pub fn as_str(self) -> &'static str {
        self.shared().name()
    }

    /// The role as `orb8-flowspec` defines it for both ends (names, whose direction).
    pub fn shared(self) -> orb8_flowspec::InterfaceRole {
        use orb8_flowspec::InterfaceRole as R;
        match self {
            Role::Explicit => R::Explicit,
            Role::Veth => R::Veth,
            Role::Uplink => R::Uplink,
            Role::Bridge => R::Bridge,
        }
    }
}

/// An interface chosen for the probe.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selected {
    /// Kernel interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Why it was chosen.
    pub role: Role,
    /// For a veth whose peer is in another namespace: that namespace's id here.
    pub peer_netnsid: Option<i32>,
}

/// True for the bridge names container runtimes and CNIs create.
pub fn is_container_bridge(name: &str) -> bool {
    matches!(name, "cni0" | "docker0" | "cbr0") || name.starts_with("br-")
}

/// Chooses the interfaces to attach to. `explicit`, when not empty, overrides discovery: the
/// named interfaces that exist are returned, whatever their kind.
pub fn select(
    links: &[Link],
    default_route_ifaces: &BTreeSet<String>,
    explicit: &[String],
) -> Vec<Selected> {
    let mut out: Vec<Selected> = links
        .iter()
        .filter_map(|l| {
            let role = if !explicit.is_empty() {
                explicit.contains(&l.name).then_some(Role::Explicit)?
            } else if !l.ethernet || l.name == "lo" {
                return None;
            } else if l.kind == "veth" {
                Role::Veth
            } else if default_route_ifaces.contains(&l.name) {
                Role::Uplink
            } else if is_container_bridge(&l.name) {
                Role::Bridge
            } else {
                return None;
            };
            Some(Selected {
                index: l.index,
                name: l.name.clone(),
                role,
                peer_netnsid: l.peer_netnsid,
            })
        })
        .collect();
    out.sort();
    out
}

/// Interfaces carrying a default route, from the text of `/proc/net/route` and
/// `/proc/net/ipv6_route`.
pub fn default_route_interfaces(route_v4: &str, route_v6: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    for line in route_v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
            out.insert(f[0].to_string());
        }
    }
    // dest prefixlen src srcprefixlen nexthop metric refcnt use flags iface
    for line in route_v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
            out.insert(f[9].to_string());
        }
    }
    out
}

/// Reads the default-route interfaces of this process's network namespace.
pub fn read_default_route_interfaces() -> BTreeSet<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_route_interfaces(&v4, &v6)
}

/// Lists the links of this process's network namespace over rtnetlink.
pub async fn list_links(handle: &rtnetlink::Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    let mut stream = handle.link().get().execute();
    let mut links = Vec::new();
    while let Some(msg) = stream.try_next().await? {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: String::new(),
            ethernet: msg.header.link_layer_type == LinkLayerType::Ether,
            peer_netnsid: None,
            peer_ifindex: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(id),
                LinkAttribute::Link(i) => link.peer_ifindex = Some(i),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = kind_name(&kind);
                        }
                    }
                }
                _ => {}
            }
        }
        links.push(link);
    }
    Ok(links)
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.into(),
            ethernet: true,
            peer_netnsid: None,
            peer_ifindex: None,
        }
    }

    const ROUTE_V4: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
cni0\t0001F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    const ROUTE_V6: &str = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1\n\
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";

    #[test]
    fn default_routes_from_proc() {
        let got = default_route_interfaces(ROUTE_V4, ROUTE_V6);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec!["eth0", "eth1"]);
    }

    #[test]
    fn discovery_takes_veths_uplinks_and_bridges_only() {
        let mut tun = link(9, "wg0", "wireguard");
        tun.ethernet = false;
        let links = vec![
            link(1, "lo", ""),
            link(2, "eth0", ""),
            link(3, "eth1", ""),
            link(4, "cni0", "bridge"),
            link(5, "veth1a2b", "veth"),
            link(6, "br-42", "bridge"),
            link(7, "virbr0", "bridge"),
            link(8, "docker0", "bridge"),
            tun,
            link(10, "cbr0", "bridge"),
        ];
        let uplinks = default_route_interfaces(ROUTE_V4, "");
        let got: Vec<(u32, Role)> = select(&links, &uplinks, &[])
            .into_iter()
            .map(|s| (s.index, s.role))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, Role::Uplink),
                (4, Role::Bridge),
                (5, Role::Veth),
                (6, Role::Bridge),
                (8, Role::Bridge),
                (10, Role::Bridge)
            ]
        );
    }

    #[test]
    fn explicit_list_overrides_discovery() {
        let links = vec![
            link(1, "lo", ""),
            link(2, "eth0", ""),
            link(5, "veth1a2b", "veth"),
            link(7, "virbr0", "bridge"),
        ];
        let explicit = vec![
            "virbr0".to_string(),
            "lo".to_string(),
            "missing0".to_string(),
        ];
        let got: Vec<(String, Role)> = select(&links, &BTreeSet::new(), &explicit)
            .into_iter()
            .map(|s| (s.name, s.role))
            .collect();
        assert_eq!(
            got,
            vec![
                ("lo".to_string(), Role::Explicit),
                ("virbr0".to_string(), Role::Explicit)
            ]
        );
    }
}
