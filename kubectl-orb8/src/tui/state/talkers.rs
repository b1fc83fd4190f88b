//! Top talkers: who talks to whom, and how fast, from successive snapshots of the agents' flow
//! tables.
//!
//! Each refresh hands in every agent's flow table (cumulative counts per flow). A flow is
//! identified by where it was seen and its five-tuple and first packet, so a flow that ended
//! and came back with the same ports is a new connection. What a flow added since the previous
//! snapshot is its count now minus its count then (all of it for a flow not seen before); the
//! additions are summed per talker, a (pod, peer, protocol, peer port) pair, into one sample
//! per refresh. The first snapshot is the baseline: counts from before `top` started are not
//! rates.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use orb8_flowspec::{Direction, Protocol};

use crate::flow::{Endpoint, FlowRecord, addr_text};

/// The TCP RST flag bit.
const RST: u32 = 0x04;

/// What the "pod" end of a talker is, for drilling in (`s`: its syscall summary).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A pod the cluster named.
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A process behind a host-side veth, as the agent found it (local mode).
    Process {
        /// Its host PID.
        pid: u32,
    },
    /// Nothing traceable (an address only).
    None,
}

/// One talker: a pod (or local end) and a peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TalkerKey {
    /// The selected end: `ns/pod` in cluster mode, `comm[pid]` behind a local veth, else an
    /// address.
    pub pod: String,
    /// The other end: `ns/pod`, `svc:ns/name`, `host:node`, `world(addr)`, or an address.
    pub peer: String,
    /// IP protocol.
    pub protocol: Protocol,
    /// The peer's port (`None` for protocols without ports and for fragments).
    pub peer_port: Option<u32>,
}

impl TalkerKey {
    /// `tcp/8080`, `udp/53`, `icmp`.
    pub fn service(&self) -> String {
        match self.peer_port {
            Some(p) => format!("{}/{p}", self.protocol),
            None => self.protocol.to_string(),
        }
    }
}

/// Where a flow was seen plus its five-tuple and first packet: one connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlowId {
    node: String,
    interface: String,
    direction: Option<Direction>,
    protocol: Protocol,
    src: Option<IpAddr>,
    src_port: u32,
    dst: Option<IpAddr>,
    dst_port: u32,
    fragment: bool,
    first_seen: i64,
}

impl FlowId {
    fn of(f: &FlowRecord) -> FlowId {
        FlowId {
            node: f.node.clone(),
            interface: f.interface.clone(),
            direction: f.direction,
            protocol: f.protocol,
            src: f.src,
            src_port: f.src_port,
            dst: f.dst,
            dst_port: f.dst_port,
            fragment: f.fragment,
            first_seen: f.first_seen_nanos,
        }
    }
}

/// What one refresh added to a talker.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Bytes added.
    pub bytes: u64,
    /// Packets added.
    pub packets: u64,
    /// Connections first seen.
    pub new_connections: u64,
    /// Connections whose first RST was seen.
    pub resets: u64,
    /// Seconds the refresh covered.
    pub secs: f64,
}

/// A talker's recent history and its state in the latest snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Talker {
    /// Who.
    pub key: TalkerKey,
    /// What the pod end is (for drilling in).
    pub owner: Owner,
    /// One sample per refresh, oldest first, at most the window's length.
    pub window: VecDeque<Sample>,
    /// Connections in the latest snapshot.
    pub connections: u64,
    /// Connections in the latest snapshot that carried a RST.
    pub reset_connections: u64,
    /// Bytes and packets added since `top` started.
    pub total_bytes: u64,
    /// Packets added since `top` started.
    pub total_packets: u64,
}

impl Talker {
    /// The latest sample (zero before the second snapshot).
    pub fn latest(&self) -> Sample {
        self.window.back().copied().unwrap_or_default()
    }

    /// Bytes per second in the latest refresh.
    pub fn bytes_per_sec(&self) -> f64 {
        rate(self.latest().bytes, self.latest().secs)
    }

    /// Packets per second in the latest refresh.
    pub fn packets_per_sec(&self) -> f64 {
        rate(self.latest().packets, self.latest().secs)
    }

    /// Bytes of each sample, oldest first (for the sparkline).
    pub fn byte_history(&self) -> Vec<u64> {
        self.window.iter().map(|s| s.bytes).collect()
    }

    fn idle(&self) -> bool {
        self.connections == 0 && self.window.iter().all(|s| s.bytes == 0 && s.packets == 0)
    }
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// One connection of the latest snapshot, with its talker (for the drill-down view).
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// Its talker.
    pub key: TalkerKey,
    /// The flow as the agent reported it (named in cluster mode).
    pub flow: FlowRecord,
}

/// The talkers of every agent, fed one snapshot per refresh.
#[derive(Debug, Clone)]
pub struct Talkers {
    window_len: usize,
    /// Counts (bytes, packets, RST seen) of every flow in the previous snapshot.
    previous: HashMap<FlowId, (u64, u64, bool)>,
    talkers: BTreeMap<TalkerKey, Talker>,
    connections: Vec<Connection>,
    refreshes: u64,
}

/// The talker a flow belongs to: its pod end and peer. In cluster mode the ends are the names
/// the directory gave (the selected pod's end first); behind a host-side veth with a known
/// process (local mode) that process's end (the source of what the interface received, the
/// destination of what it sent); otherwise source and destination as they are.
pub fn talker_of(f: &FlowRecord) -> (TalkerKey, Owner) {
    let ports = f.protocol.has_ports() && !f.fragment;
    // The observed end first: the pod behind a veth, else the end that is a pod.
    let ((pod_addr, _), (peer_addr, peer_port)) = f.observed_and_peer_addrs();
    if f.src_name.is_some() || f.dst_name.is_some() {
        let (pod, peer) = f.observed_and_peer();
        let owner = match pod {
            Some(Endpoint::Pod { namespace, name }) => Owner::Pod {
                namespace: namespace.clone(),
                name: name.clone(),
            },
            _ => Owner::None,
        };
        let key = TalkerKey {
            pod: pod.map_or_else(|| addr_text(pod_addr), |e| e.label_at(pod_addr)),
            peer: peer.map_or_else(|| addr_text(peer_addr), |e| e.label_at(peer_addr)),
            protocol: f.protocol,
            peer_port: ports.then_some(peer_port),
        };
        return (key, owner);
    }
    if let Some(o) = f
        .netns_owner
        .as_ref()
        .filter(|_| f.observed_is_src().is_some())
    {
        let key = TalkerKey {
            pod: format!("{}[{}]", o.comm, o.pid),
            peer: addr_text(peer_addr),
            protocol: f.protocol,
            peer_port: ports.then_some(peer_port),
        };
        return (key, Owner::Process { pid: o.pid });
    }
    let key = TalkerKey {
        pod: addr_text(f.src),
        peer: addr_text(f.dst),
        protocol: f.protocol,
        peer_port: ports.then_some(f.dst_port),
    };
    (key, Owner::None)
}

impl Talkers {
    /// Keeps `window_len` samples per talker (the sparkline's history).
    pub fn new(window_len: usize) -> Talkers {
        Talkers {
            window_len: window_len.max(1),
            previous: HashMap::new(),
            talkers: BTreeMap::new(),
            connections: Vec::new(),
            refreshes: 0,
        }
    }

    /// Snapshots taken so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes
    }

    /// Takes in every agent's flow table as of now; `elapsed` is the time since the previous
    /// snapshot.
    pub fn ingest(&mut self, flows: Vec<FlowRecord>, elapsed: Duration) {
        let baseline = self.refreshes == 0;
        self.refreshes += 1;
        let secs = elapsed.as_secs_f64();
        let mut samples: HashMap<TalkerKey, Sample> = HashMap::new();
        let mut live: HashMap<TalkerKey, (u64, u64)> = HashMap::new();
        let mut owners: HashMap<TalkerKey, Owner> = HashMap::new();
        let mut seen = HashSet::with_capacity(flows.len());
        let mut current = HashMap::with_capacity(flows.len());
        let mut connections = Vec::with_capacity(flows.len());
        for f in flows {
            let id = FlowId::of(&f);
            if !seen.insert(id.clone()) {
                continue;
            }
            let (key, owner) = talker_of(&f);
            let rst = f.protocol == Protocol::TCP && f.tcp_flags & RST != 0;
            let before = self.previous.get(&id).copied();
            let s = samples.entry(key.clone()).or_default();
            s.secs = secs;
            if !baseline {
                let (b0, p0, r0) = before.unwrap_or((0, 0, false));
                // A count below the previous one (never from a sane agent) adds nothing.
                s.bytes += f.bytes.saturating_sub(b0);
                s.packets += f.packets.saturating_sub(p0);
                s.new_connections += u64::from(before.is_none());
                s.resets += u64::from(rst && !r0);
            }
            let l = live.entry(key.clone()).or_default();
            l.0 += 1;
            l.1 += u64::from(rst);
            owners.entry(key.clone()).or_insert(owner);
            current.insert(id, (f.bytes, f.packets, rst));
            connections.push(Connection { key, flow: f });
        }
        self.previous = current;
        self.connections = connections;

        for (key, owner) in owners {
            self.talkers.entry(key.clone()).or_insert_with(|| Talker {
                key,
                owner,
                window: VecDeque::new(),
                connections: 0,
                reset_connections: 0,
                total_bytes: 0,
                total_packets: 0,
            });
        }
        let window_len = self.window_len;
        for (key, t) in self.talkers.iter_mut() {
            let (conns, resets) = live.get(key).copied().unwrap_or((0, 0));
            t.connections = conns;
            t.reset_connections = resets;
            if baseline {
                continue;
            }
            let s = samples.get(key).copied().unwrap_or(Sample {
                secs,
                ..Sample::default()
            });
            t.total_bytes += s.bytes;
            t.total_packets += s.packets;
            t.window.push_back(s);
            while t.window.len() > window_len {
                t.window.pop_front();
            }
        }
        self.talkers.retain(|_, t| !t.idle());
    }

    /// Every talker, in key order.
    pub fn all(&self) -> impl Iterator<Item = &Talker> {
        self.talkers.values()
    }

    /// The connections of the latest snapshot.
    pub fn connections(&self) -> &[Connection] {
        &self.connections
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn flow(sport: u32, bytes: u64, packets: u64) -> FlowRecord {
        let mut f = FlowRecord::test_flow();
        f.src = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        f.dst = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        f.src_port = sport;
        f.dst_port = 53;
        f.bytes = bytes;
        f.packets = packets;
        f.first_seen_nanos = i64::from(sport);
        f
    }

    fn pod(ns: &str, name: &str) -> Endpoint {
        Endpoint::Pod {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn rates_are_the_growth_between_snapshots_summed_per_talker() {
        let mut t = Talkers::new(4);
        t.ingest(vec![flow(40000, 1000, 10)], SEC);
        // Baseline: a talker, no rate yet.
        let first = t.all().next().unwrap();
        assert_eq!(first.window.len(), 0);
        assert_eq!(first.connections, 1);

        // Half a second later the first connection grew by 500 B / 5 packets and a second one
        // (same talker: same peer and port) appeared with 300 B / 3 packets.
        t.ingest(
            vec![flow(40000, 1500, 15), flow(40001, 300, 3)],
            Duration::from_millis(500),
        );
        let talkers: Vec<&Talker> = t.all().collect();
        assert_eq!(talkers.len(), 1);
        let k = talkers[0];
        assert_eq!(k.key.pod, "10.0.0.1");
        assert_eq!(k.key.peer, "10.0.0.2");
        assert_eq!(k.key.service(), "udp/53");
        assert_eq!(
            k.latest(),
            Sample {
                bytes: 800,
                packets: 8,
                new_connections: 1,
                resets: 0,
                secs: 0.5
            }
        );
        assert_eq!(k.bytes_per_sec(), 1600.0);
        assert_eq!(k.packets_per_sec(), 16.0);
        assert_eq!(k.connections, 2);
        assert_eq!((k.total_bytes, k.total_packets), (800, 8));
    }

    #[test]
    fn a_flow_back_with_a_new_first_packet_is_a_new_connection() {
        let mut t = Talkers::new(4);
        t.ingest(vec![flow(40000, 1000, 10)], SEC);
        let mut again = flow(40000, 100, 1);
        again.first_seen_nanos = 99;
        t.ingest(vec![again], SEC);
        let k = t.all().next().unwrap();
        assert_eq!(k.latest().new_connections, 1);
        assert_eq!(k.latest().bytes, 100);
    }

    #[test]
    fn the_window_keeps_its_length_and_idle_talkers_leave() {
        let mut t = Talkers::new(3);
        t.ingest(vec![flow(1, 0, 0)], SEC);
        for i in 1..=5u64 {
            t.ingest(vec![flow(1, i * 10, i)], SEC);
        }
        let k = t.all().next().unwrap();
        assert_eq!(k.byte_history(), vec![10, 10, 10]);
        // The flow ends; its talker stays while its window shows traffic, then goes.
        for _ in 0..2 {
            t.ingest(Vec::new(), SEC);
            assert_eq!(t.all().count(), 1);
        }
        t.ingest(Vec::new(), SEC);
        assert_eq!(t.all().count(), 0);
    }

    #[test]
    fn resets_count_once_per_connection() {
        let mut t = Talkers::new(4);
        let tcp = |flags: u32, bytes: u64| {
            let mut f = flow(40000, bytes, 1);
            f.protocol = Protocol::TCP;
            f.tcp_flags = flags;
            f
        };
        t.ingest(vec![tcp(0x02, 60)], SEC);
        t.ingest(vec![tcp(0x02 | RST, 120)], SEC);
        t.ingest(vec![tcp(0x02 | RST, 120)], SEC);
        let k = t.all().next().unwrap();
        let resets: Vec<u64> = k.window.iter().map(|s| s.resets).collect();
        assert_eq!(resets, vec![1, 0]);
        assert_eq!(k.reset_connections, 1);
    }

    #[test]
    fn named_flows_put_the_selected_pod_first_and_the_peer_port() {
        // A reply from the server: the pod end is the destination, the peer port the source's.
        let mut f = flow(8080, 10, 1);
        f.interface_role = None;
        f.protocol = Protocol::TCP;
        f.dst_port = 40000;
        f.src_name = Some(Endpoint::Service {
            namespace: "pay".into(),
            name: "api".into(),
        });
        f.dst_name = Some(pod("shop", "checkout"));
        let (key, owner) = talker_of(&f);
        assert_eq!(key.pod, "shop/checkout");
        assert_eq!(key.peer, "svc:pay/api");
        assert_eq!(key.service(), "tcp/8080");
        assert_eq!(
            owner,
            Owner::Pod {
                namespace: "shop".into(),
                name: "checkout".into()
            }
        );
        // World ends keep their address.
        f.src_name = Some(Endpoint::World);
        assert_eq!(talker_of(&f).0.peer, "world(10.0.0.1)");
    }

    #[test]
    fn a_veth_process_is_the_pod_end_in_local_mode() {
        let mut f = flow(40000, 10, 1);
        f.netns_owner = Some(std::sync::Arc::new(orb8_proto::NetnsOwner {
            pid: 42,
            comm: "curl".into(),
            ..Default::default()
        }));
        // Seen on the host end of its veth: the pod's direction says who sent it.
        f.interface_role = Some(orb8_flowspec::InterfaceRole::Veth);
        f.direction = Some(Direction::Egress);
        let (key, owner) = talker_of(&f);
        assert_eq!(
            (key.pod.as_str(), key.peer.as_str(), key.peer_port),
            ("curl[42]", "10.0.0.2", Some(53))
        );
        assert_eq!(owner, Owner::Process { pid: 42 });
        // Received by the process: the peer is the source.
        f.direction = Some(Direction::Ingress);
        let (key, _) = talker_of(&f);
        assert_eq!(
            (key.peer.as_str(), key.peer_port),
            ("10.0.0.1", Some(40000))
        );
    }
}
