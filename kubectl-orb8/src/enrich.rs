//! Names for flow endpoints: the pods, services and nodes the client knows from the API
//! server, joined with the addresses agents report. Pure: a [`Directory`] is data, filled by
//! `k8s::directory` from watches, and [`Directory::name_of`] answers for an address at a time
//! with an [`Endpoint`] (defined with the flow model, which carries it).
//!
//! - A pod address names the pod that had it at that time: a pod IP reused by a new pod is
//!   attributed by time (creation and deletion), not to whichever pod was seen last.
//! - Pods on the host network share their node's address: such an address names the node as
//!   `host:<node>`, never one of those pods.
//! - A Service's cluster IP names the service (`svc:<ns>/<name>`).
//! - Anything else is `world` (a public address) or `unknown` (a private one nobody owns).
//!
//! [`Directory::apply`] also makes the output pod-centric (docs/flows.md): each flow of a pod is
//! kept once per pod end, from the observation at that pod's own veth; an uplink or bridge
//! observation of traffic with a pod at either end is left out (the pod's veth reports it), so
//! uplinks and bridges answer only for the node and host-network pods.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::SystemTime;

use orb8_flowspec::InterfaceRole;

use crate::flow::{Endpoint, FlowRecord};

/// A pod as the directory keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its addresses (empty until it has one).
    pub ips: Vec<IpAddr>,
    /// On the host network (shares the node's address).
    pub host_network: bool,
    /// When it was created (`metadata.creationTimestamp`), if known.
    pub created: Option<SystemTime>,
    /// When the client saw it deleted, if it was.
    pub deleted: Option<SystemTime>,
}

/// Pods, services and nodes by address.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// Every pod seen, deleted ones included (for flows from before their deletion).
    pub pods: HashMap<(String, String), PodEntry>,
    /// Cluster IP → (namespace, name).
    pub services: HashMap<IpAddr, (String, String)>,
    /// Node address → node name.
    pub nodes: HashMap<IpAddr, String>,
    /// The pods the command selected (`-n`, `-l`, a pod name), as (namespace, name).
    pub selected: Option<BTreeSet<(String, String)>>,
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT (and many clusters' pod ranges)
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80)
        }
    }
}

impl Directory {
    /// Adds or updates a pod (a watch's Added/Modified).
    pub fn upsert_pod(&mut self, pod: PodEntry) {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.pods.insert(key, pod);
    }

    /// Marks a pod deleted at `at` (a watch's Deleted); it keeps naming its address for flows
    /// from before.
    pub fn delete_pod(&mut self, namespace: &str, name: &str, at: SystemTime) {
        if let Some(p) = self
            .pods
            .get_mut(&(namespace.to_string(), name.to_string()))
        {
            p.deleted = Some(at);
        }
    }

    /// What `ip` was at time `at`.
    pub fn name_of(&self, ip: IpAddr, at: SystemTime) -> Endpoint {
        if let Some(node) = self.nodes.get(&ip) {
            return Endpoint::Host { node: node.clone() };
        }
        let alive_at =
            |p: &&PodEntry| p.created.is_none_or(|c| c <= at) && p.deleted.is_none_or(|d| at < d);
        let owner = self
            .pods
            .values()
            .filter(|p| !p.host_network && p.ips.contains(&ip))
            .filter(alive_at)
            .max_by_key(|p| p.created);
        if let Some(p) = owner {
            return Endpoint::Pod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            };
        }
        if let Some((namespace, name)) = self.services.get(&ip) {
            return Endpoint::Service {
                namespace: namespace.clone(),
                name: name.clone(),
            };
        }
        if is_public(ip) {
            Endpoint::World
        } else {
            Endpoint::Unknown
        }
    }

    /// Whether `e` is a pod the command selected (any pod when it selected none).
    fn is_selected(&self, e: Option<&Endpoint>) -> bool {
        match (e, &self.selected) {
            (Some(Endpoint::Pod { .. }), None) => true,
            (Some(Endpoint::Pod { namespace, name }), Some(sel)) => {
                sel.contains(&(namespace.clone(), name.clone()))
            }
            _ => false,
        }
    }

    /// Whether a named flow is reported (the module's rule): a veth observation when its pod
    /// end is selected (any end, when the command selected no pods); an uplink or bridge
    /// observation when neither end is a pod and the command selected no pods; a flow from an
    /// agent that does not say its interface's role when a selected pod is at either end.
    fn reports(&self, f: &FlowRecord) -> bool {
        let is_pod = |e: &Option<Endpoint>| matches!(e, Some(Endpoint::Pod { .. }));
        match (f.interface_role, f.observed_is_src()) {
            (Some(InterfaceRole::Veth), Some(src)) => {
                let end = if src { &f.src_name } else { &f.dst_name };
                self.selected.is_none() || self.is_selected(end.as_ref())
            }
            (Some(_), _) => !is_pod(&f.src_name) && !is_pod(&f.dst_name) && self.selected.is_none(),
            (None, _) => {
                self.selected.is_none()
                    || self.is_selected(f.src_name.as_ref())
                    || self.is_selected(f.dst_name.as_ref())
            }
        }
    }

    /// Names both ends of each flow (at the flow's first packet) and keeps the observations
    /// the module's rule reports: each flow once per (selected) pod end.
    pub fn apply(&self, flows: Vec<FlowRecord>) -> Vec<FlowRecord> {
        flows
            .into_iter()
            .filter_map(|mut f| {
                let at =
                    crate::flow::system_time(f.first_seen_nanos).unwrap_or_else(SystemTime::now);
                f.src_name = f.src.map(|ip| with_dns(self.name_of(ip, at), &f.src_dns));
                f.dst_name = f.dst.map(|ip| with_dns(self.name_of(ip, at), &f.dst_dns));
                self.reports(&f).then_some(f)
            })
            .collect()
    }
}

/// An end nobody in the cluster owns takes the DNS name the agent saw answered for it; a pod,
/// service or node name always wins.
fn with_dns(name: Endpoint, dns: &Option<String>) -> Endpoint {
    match (name, dns) {
        (Endpoint::World | Endpoint::Unknown, Some(n)) => Endpoint::Dns { name: n.clone() },
        (name, _) => name,
    }
}

/// The flow's observed end and its peer, for the `pod` and `peer` columns:
/// [`FlowRecord::observed_and_peer`].
pub fn pod_and_peer(f: &FlowRecord) -> (Option<&Endpoint>, Option<&Endpoint>) {
    f.observed_and_peer()
}

#[cfg(test)]
mod tests {
    use super::*;
    use orb8_flowspec::Direction;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn pod(ns: &str, name: &str, ip: &str, created: u64, host: bool) -> PodEntry {
        PodEntry {
            namespace: ns.into(),
            name: name.into(),
            ips: vec![ip.parse().unwrap()],
            host_network: host,
            created: Some(t(created)),
            deleted: None,
        }
    }

    fn dir() -> Directory {
        let mut d = Directory::default();
        d.upsert_pod(pod("shop", "checkout-1", "10.1.0.5", 100, false));
        d.delete_pod("shop", "checkout-1", t(200));
        // The same IP, reused by a new pod after the first one died.
        d.upsert_pod(pod("pay", "ledger-0", "10.1.0.5", 250, false));
        d.upsert_pod(pod("kube-system", "kube-proxy-x", "192.168.5.10", 10, true));
        d.nodes
            .insert("192.168.5.10".parse().unwrap(), "node-a".into());
        d.services.insert(
            "10.96.0.1".parse().unwrap(),
            ("default".into(), "kubernetes".into()),
        );
        d
    }

    #[test]
    fn reused_ips_are_attributed_by_time() {
        let d = dir();
        let ip: IpAddr = "10.1.0.5".parse().unwrap();
        assert_eq!(d.name_of(ip, t(150)).label(), "shop/checkout-1");
        assert_eq!(d.name_of(ip, t(300)).label(), "pay/ledger-0");
        // Between the two lives nobody owned it.
        assert_eq!(d.name_of(ip, t(220)), Endpoint::Unknown);
    }

    /// A flow `src -> dst` seen on `iface` (`role`) in interface direction `dir`, first seen at
    /// t(300).
    fn seen(role: &str, iface_dir: orb8_proto::Direction, src: &str, dst: &str) -> FlowRecord {
        let wire = orb8_proto::Flow {
            interface: format!("{role}0"),
            interface_role: role.into(),
            direction: iface_dir as i32,
            protocol: 17,
            src_addr: orb8_flowspec::ip_to_bytes(src.parse().unwrap()),
            dst_addr: orb8_flowspec::ip_to_bytes(dst.parse().unwrap()),
            src_port: 40000,
            dst_port: 53,
            packets: 1,
            bytes: 60,
            first_seen_unix_nanos: 300_000_000_000,
            ..Default::default()
        };
        FlowRecord::from_proto("node-a", wire)
    }

    #[test]
    fn a_dns_answer_names_world_but_never_a_pod() {
        let mut d = dir();
        d.upsert_pod(pod("shop", "web", "10.1.0.9", 100, false));
        let mut f = seen(
            "veth",
            orb8_proto::Direction::Ingress,
            "10.1.0.9",
            "203.0.113.9",
        );
        f.dst_dns = Some("api.stripe.com".into());
        f.src_dns = Some("spoofed.example".into());
        let got = d.apply(vec![f]).pop().expect("web's flow is reported");
        assert_eq!(
            got.dst_name.as_ref().map(Endpoint::label).as_deref(),
            Some("api.stripe.com")
        );
        assert_eq!(got.dst_name.unwrap().label_at(got.dst), "api.stripe.com");
        assert_eq!(got.src_name.unwrap().label(), "shop/web", "a pod name wins");
        // No answer seen: still world.
        let plain = seen(
            "veth",
            orb8_proto::Direction::Ingress,
            "10.1.0.9",
            "203.0.113.9",
        );
        assert_eq!(
            d.apply(vec![plain]).pop().unwrap().dst_name,
            Some(Endpoint::World)
        );
    }

    /// Two pods of one node, `shop/a` (10.1.0.7) sending to `pay/b` (10.1.0.8): every place the
    /// packets are counted (a's veth, b's veth, the bridge, and, as a wrongly routed copy, the
    /// uplink), plus the node talking to the world on its uplink.
    fn one_node_traffic() -> Vec<FlowRecord> {
        use orb8_proto::Direction::{Egress, Ingress};
        vec![
            seen("veth", Ingress, "10.1.0.7", "10.1.0.8"),
            seen("veth", Egress, "10.1.0.7", "10.1.0.8"),
            seen("bridge", Ingress, "10.1.0.7", "10.1.0.8"),
            seen("uplink", Egress, "10.1.0.7", "10.1.0.8"),
            seen("uplink", Egress, "192.168.5.10", "203.0.113.7"),
        ]
    }

    fn two_pods(selected: Option<&[(&str, &str)]>) -> Directory {
        let mut d = dir();
        d.upsert_pod(pod("shop", "a", "10.1.0.7", 10, false));
        d.upsert_pod(pod("pay", "b", "10.1.0.8", 10, false));
        d.selected = selected.map(|s| {
            s.iter()
                .map(|(n, p)| (n.to_string(), p.to_string()))
                .collect()
        });
        d
    }

    /// (pod column, peer column, direction) of each flow kept.
    fn rows(flows: &[FlowRecord]) -> Vec<(String, String, &'static str)> {
        flows
            .iter()
            .map(|f| {
                let (pod, peer) = pod_and_peer(f);
                (
                    pod.map(Endpoint::label).unwrap_or_default(),
                    peer.map(Endpoint::label).unwrap_or_default(),
                    crate::flow::direction_name(f.direction),
                )
            })
            .collect()
    }

    #[test]
    fn a_selected_pod_sees_its_flow_once_from_its_own_veth() {
        let d = two_pods(Some(&[("shop", "a")]));
        let kept = d.apply(one_node_traffic());
        assert_eq!(
            rows(&kept),
            vec![("shop/a".into(), "pay/b".into(), "egress")],
            "{kept:#?}"
        );
        assert_eq!(kept[0].interface_direction, Some(Direction::Ingress));
        let d = two_pods(Some(&[("pay", "b")]));
        assert_eq!(
            rows(&d.apply(one_node_traffic())),
            vec![("pay/b".into(), "shop/a".into(), "ingress")]
        );
    }

    #[test]
    fn both_ends_selected_or_no_selection_count_once_per_pod_end() {
        let want = vec![
            ("shop/a".to_string(), "pay/b".to_string(), "egress"),
            ("pay/b".to_string(), "shop/a".to_string(), "ingress"),
        ];
        let both = two_pods(Some(&[("shop", "a"), ("pay", "b")]));
        assert_eq!(rows(&both.apply(one_node_traffic())), want);
        // No pod selection (-A, --node): the node's own traffic stays too, from the uplink.
        let mut all = want.clone();
        all.push(("host:node-a".into(), "world".into(), "egress"));
        assert_eq!(rows(&two_pods(None).apply(one_node_traffic())), all);
        // Nobody selected: nothing.
        assert!(two_pods(Some(&[])).apply(one_node_traffic()).is_empty());
    }

    #[test]
    fn flows_of_agents_that_do_not_say_the_role_keep_the_old_rule() {
        let mut f = seen(
            "veth",
            orb8_proto::Direction::Ingress,
            "10.1.0.7",
            "10.1.0.8",
        );
        f.interface_role = None;
        f.direction = f.interface_direction;
        let d = two_pods(Some(&[("pay", "b")]));
        assert_eq!(
            rows(&d.apply(vec![f])),
            vec![("shop/a".into(), "pay/b".into(), "ingress")]
        );
    }

    #[test]
    fn host_network_services_world_and_unknown() {
        let d = dir();
        let at = t(300);
        assert_eq!(
            d.name_of("192.168.5.10".parse().unwrap(), at).label(),
            "host:node-a"
        );
        assert_eq!(
            d.name_of("10.96.0.1".parse().unwrap(), at).label(),
            "svc:default/kubernetes"
        );
        assert_eq!(
            d.name_of("203.0.113.7".parse().unwrap(), at),
            Endpoint::World
        );
        assert_eq!(
            d.name_of("10.9.9.9".parse().unwrap(), at),
            Endpoint::Unknown
        );
        assert_eq!(d.name_of("fd00::1".parse().unwrap(), at), Endpoint::Unknown);
        assert_eq!(
            d.name_of("2001:db8::1".parse().unwrap(), at),
            Endpoint::World
        );
    }
}
