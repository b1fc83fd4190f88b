//! Per-pod traffic for `orb8_pod_bytes_total{namespace,pod,direction}`: byte counters per pod
//! of this node, built from the kernel flow table and bounded in cardinality.
//!
//! Input, each time metrics are collected: the flow table and which pod is behind each host
//! veth (by interface index). A flow on a pod's veth adds what it grew since the last
//! collection (a flow no longer in the table is forgotten; one whose totals shrank was evicted
//! and re-created, so all of it is new). Directions are the pod's: what enters the node on the
//! pod's veth (`ingress` there) is what the pod sent (`egress`).
//!
//! Cardinality: at most `cap` pods get their own series, in the order their traffic was first
//! seen; the traffic of every further pod is added to one series labelled
//! `namespace="_other",pod="_other"`, and how many pods are folded into it is reported. Pods
//! that left the node (their veth is gone) lose their series and free their slot.
//!
//! Known limit: what a flow sent after the last collection and before the kernel evicted it
//! from a full table is not attributed to any pod (the eviction itself is counted in
//! `orb8_flows_evicted_total`; the node-wide byte counters include those bytes).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use orb8_common::{FlowKey, direction};

use crate::flows::Flow;

/// Which pod: namespace and name (or, when the runtime's metadata is not readable, an empty
/// namespace and the pod UID as the name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodId {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
}

/// Label value of the series that collects the pods beyond the cap.
pub const OTHER: &str = "_other";

/// Bytes by the pod's direction: `[received (ingress), sent (egress)]`.
pub type Bytes = [u64; 2];

/// Per-pod byte counters with a cardinality cap.
#[derive(Debug)]
pub struct PodTraffic {
    cap: usize,
    /// Each tracked flow's byte total at the last collection.
    seen: HashMap<FlowKey, u64>,
    series: BTreeMap<PodId, Bytes>,
    other: Bytes,
    over_cap: BTreeSet<PodId>,
    tracked: usize,
}

impl PodTraffic {
    /// Counters giving at most `cap` pods their own series.
    pub fn new(cap: usize) -> Self {
        PodTraffic {
            cap,
            seen: HashMap::new(),
            series: BTreeMap::new(),
            other: [0; 2],
            over_cap: BTreeSet::new(),
            tracked: 0,
        }
    }

    /// Adds what the flows of pod veths grew since the last call. `pods` names the pod behind
    /// each host veth the agent knows one for; every other interface's flows are ignored.
    pub fn update(&mut self, flows: &[Flow], pods: &HashMap<u32, PodId>) {
        let live: HashSet<&PodId> = pods.values().collect();
        self.tracked = live.len();
        self.series.retain(|p, _| live.contains(p));
        self.over_cap.retain(|p| live.contains(p));
        let mut seen = HashMap::with_capacity(self.seen.len());
        for f in flows {
            let Some(pod) = pods.get(&f.key.ifindex) else {
                continue;
            };
            let before = self.seen.get(&f.key).copied().unwrap_or(0);
            let grew = if f.stats.bytes >= before {
                f.stats.bytes - before
            } else {
                f.stats.bytes
            };
            seen.insert(f.key, f.stats.bytes);
            // The host veth's ingress is the pod's egress.
            let pod_dir = usize::from(f.key.direction != direction::EGRESS);
            if grew == 0 && !self.series.contains_key(pod) {
                continue;
            }
            let slot = if self.series.contains_key(pod) || self.series.len() < self.cap {
                self.over_cap.remove(pod);
                self.series.entry(pod.clone()).or_default()
            } else {
                self.over_cap.insert(pod.clone());
                &mut self.other
            };
            slot[pod_dir] += grew;
        }
        self.seen = seen;
    }

    /// Pods with their own series and their bytes, sorted by pod.
    pub fn series(&self) -> impl Iterator<Item = (&PodId, &Bytes)> {
        self.series.iter()
    }

    /// Bytes of the pods beyond the cap (monotonic over the agent's life).
    pub fn other(&self) -> Bytes {
        self.other
    }

    /// How many pods on the node now have their traffic in the `_other` series.
    pub fn over_cap(&self) -> usize {
        self.over_cap.len()
    }

    /// Pods behind the veths at the last update.
    pub fn tracked(&self) -> usize {
        self.tracked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orb8_common::FlowStats;

    fn flow(ifindex: u32, dir: u8, port: u16, bytes: u64) -> Flow {
        Flow {
            key: FlowKey {
                ifindex,
                direction: dir,
                src_port: port,
                ..Default::default()
            },
            stats: FlowStats {
                packets: 1,
                bytes,
                ..Default::default()
            },
        }
    }

    fn pod(name: &str) -> PodId {
        PodId {
            namespace: "ns".into(),
            pod: name.into(),
        }
    }

    #[test]
    fn deltas_add_up_with_the_pods_direction() {
        let mut t = PodTraffic::new(10);
        let pods = HashMap::from([(5, pod("a"))]);
        t.update(
            &[
                flow(5, direction::INGRESS, 1, 100),
                flow(5, direction::EGRESS, 1, 40),
                flow(9, direction::INGRESS, 1, 7),
            ],
            &pods,
        );
        t.update(
            &[
                flow(5, direction::INGRESS, 1, 150),
                flow(5, direction::EGRESS, 1, 40),
            ],
            &pods,
        );
        // Host ingress 150 = the pod sent 150; host egress 40 = the pod received 40.
        assert_eq!(
            t.series().collect::<Vec<_>>(),
            vec![(&pod("a"), &[40, 150])]
        );
        assert_eq!(t.tracked(), 1);
    }

    #[test]
    fn a_recreated_flow_counts_whole_and_a_gone_one_is_forgotten() {
        let mut t = PodTraffic::new(10);
        let pods = HashMap::from([(5, pod("a"))]);
        t.update(&[flow(5, direction::INGRESS, 1, 100)], &pods);
        // Evicted and re-created with 30 bytes so far.
        t.update(&[flow(5, direction::INGRESS, 1, 30)], &pods);
        assert_eq!(t.series().next().unwrap().1, &[0, 130]);
        t.update(&[], &pods);
        t.update(&[flow(5, direction::INGRESS, 1, 10)], &pods);
        assert_eq!(t.series().next().unwrap().1, &[0, 140]);
    }

    #[test]
    fn pods_beyond_the_cap_share_one_series_and_are_counted() {
        let mut t = PodTraffic::new(2);
        let pods = HashMap::from([(1, pod("a")), (2, pod("b")), (3, pod("c")), (4, pod("d"))]);
        t.update(
            &[
                flow(1, direction::INGRESS, 1, 1),
                flow(2, direction::INGRESS, 1, 2),
                flow(3, direction::INGRESS, 1, 4),
                flow(4, direction::EGRESS, 1, 8),
            ],
            &pods,
        );
        assert_eq!(t.series().count(), 2);
        assert_eq!(t.other(), [8, 4]);
        assert_eq!(t.over_cap(), 2);
        assert_eq!(t.tracked(), 4);
        // Pod a leaves: its slot goes to the next pod with new traffic.
        let pods = HashMap::from([(2, pod("b")), (3, pod("c")), (4, pod("d"))]);
        t.update(
            &[
                flow(2, direction::INGRESS, 1, 2),
                flow(3, direction::INGRESS, 1, 5),
                flow(4, direction::EGRESS, 1, 8),
            ],
            &pods,
        );
        let names: Vec<&str> = t.series().map(|(p, _)| p.pod.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(t.other(), [8, 4], "the _other series never goes down");
        assert_eq!(t.over_cap(), 1, "only d is folded now");
    }
}
