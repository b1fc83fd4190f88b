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

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::SystemTime;

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

    /// Names both ends of each flow (at the flow's first packet) and, when the command
    /// selected pods, keeps only flows with a selected pod at one end.
    pub fn apply(&self, flows: Vec<FlowRecord>) -> Vec<FlowRecord> {
        flows
            .into_iter()
            .filter_map(|mut f| {
                let at =
                    crate::flow::system_time(f.first_seen_nanos).unwrap_or_else(SystemTime::now);
                f.src_name = f.src.map(|ip| self.name_of(ip, at));
                f.dst_name = f.dst.map(|ip| self.name_of(ip, at));
                let keep = match &self.selected {
                    None => true,
                    Some(sel) => [&f.src_name, &f.dst_name].iter().any(|e| match e {
                        Some(Endpoint::Pod { namespace, name }) => {
                            sel.contains(&(namespace.clone(), name.clone()))
                        }
                        _ => false,
                    }),
                };
                keep.then_some(f)
            })
            .collect()
    }
}

/// Whether [`pod_and_peer`]'s pod end is the flow's source.
pub fn pod_is_src(f: &FlowRecord) -> bool {
    let is_pod = |e: &Option<Endpoint>| matches!(e, Some(Endpoint::Pod { .. }));
    is_pod(&f.src_name) || !is_pod(&f.dst_name)
}

/// The flow's pod (the end that is a pod; the source when both are) and its peer, for the
/// `pod` and `peer` columns.
pub fn pod_and_peer(f: &FlowRecord) -> (Option<&Endpoint>, Option<&Endpoint>) {
    if pod_is_src(f) {
        (f.src_name.as_ref(), f.dst_name.as_ref())
    } else {
        (f.dst_name.as_ref(), f.src_name.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
