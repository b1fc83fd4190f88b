//! The grouped flow view, "who talks to whom": flows folded into one row per observed end,
//! peer, service port, protocol and direction, with how many connections that is and their
//! totals. `flows` shows it by default (`--by connection` shows the flows themselves), and it
//! is the state a live view keeps: [`Groups`] takes flows one at a time.
//!
//! Pure: records in, groups out. What a row's fields mean:
//! - `pod`: the observed end ([`FlowRecord::observed_and_peer`]): the pod behind the veth, the
//!   node on an uplink (`host:<node>`); without names (local mode), its address.
//! - `peer`: the other end, named as in `flows` (`ns/pod`, `svc:ns/name`, `host:node`), with the
//!   address kept for ends nobody in the cluster owns (`world(203.0.113.7)`,
//!   `unknown(10.9.9.9)`); without names, its address.
//! - `port`: the connection's service port, the lower of its two ports, which is the server's
//!   whenever the client uses an ephemeral port (both ends of a connection then agree on it);
//!   `None` for protocols without ports and for fragments.
//! - `direction`: the observed end's (`egress`: it sent).
//! - `connections`: the flows (five-tuples, one per direction) folded in; `resets`: how many of
//!   them carried a TCP RST; `failed`: how many were failed connects (a TCP flow with a SYN and
//!   never an ACK: the opening side's packets of a connection that was never established; the
//!   answering side's SYN-ACK always carries an ACK); `tcp_flags`: every flag any of them
//!   carried.

use std::collections::BTreeMap;
use std::net::IpAddr;

use orb8_flowspec::{Direction, Protocol, SortKey, Totals};

use crate::flow::{Endpoint, FlowRecord};

/// The TCP RST bit of a flow's flags.
const TCP_RST: u32 = 0x04;
/// The TCP SYN bit.
const TCP_SYN: u32 = 0x02;
/// The TCP ACK bit.
const TCP_ACK: u32 = 0x10;

/// What rows are made of: the module's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// The node the flows were seen on.
    pub node: String,
    /// The observed end, as shown.
    pub pod: String,
    /// The other end, as shown.
    pub peer: String,
    /// The service port; `None` without ports.
    pub port: Option<u32>,
    /// The protocol.
    pub protocol: Protocol,
    /// The observed end's direction; `None` when the agent did not say.
    pub direction: Option<Direction>,
}

/// One row of the grouped view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowGroup {
    /// What the row is about.
    pub key: GroupKey,
    /// Whether its ends are names (cluster mode) rather than addresses.
    pub named: bool,
    /// Flows (five-tuples) folded in.
    pub connections: u64,
    /// Flows among them with a TCP RST.
    pub resets: u64,
    /// Flows among them that were failed connects (SYN, never ACK).
    pub failed: u64,
    /// Packets, summed.
    pub packets: u64,
    /// IP-layer bytes, summed.
    pub bytes: u64,
    /// OR of every flow's TCP flags.
    pub tcp_flags: u32,
    /// The earliest first packet, Unix nanoseconds (0: unknown).
    pub first_seen_nanos: i64,
    /// The latest packet, Unix nanoseconds (0: unknown).
    pub last_seen_nanos: i64,
}

impl FlowGroup {
    /// The counts a sort key orders by.
    pub fn totals(&self) -> Totals {
        Totals {
            bytes: self.bytes,
            packets: self.packets,
            last_seen: self.last_seen_nanos,
        }
    }

    /// TCP flags as tcpdump letters; empty for other protocols.
    pub fn tcp_flag_letters(&self) -> String {
        if self.key.protocol == Protocol::TCP {
            orb8_flowspec::tcp_flag_letters(self.tcp_flags)
        } else {
            String::new()
        }
    }
}

/// An end as a row shows it: its name ([`Endpoint::label_at`]: with the address for ends
/// nobody owns); the address when there are no names.
fn end_label(name: Option<&Endpoint>, addr: Option<IpAddr>) -> String {
    name.map_or_else(|| crate::flow::addr_text(addr), |e| e.label_at(addr))
}

/// The row a flow belongs to.
pub fn key_of(f: &FlowRecord) -> GroupKey {
    let (pod_name, peer_name) = f.observed_and_peer();
    let ((pod_addr, pod_port), (peer_addr, peer_port)) = f.observed_and_peer_addrs();
    GroupKey {
        node: f.node.clone(),
        pod: end_label(pod_name, pod_addr),
        peer: end_label(peer_name, peer_addr),
        port: f.has_ports().then(|| pod_port.min(peer_port)),
        protocol: f.protocol,
        direction: f.direction,
    }
}

/// A row's counts while it is being built (its key is the map's).
#[derive(Clone, Debug, Default)]
struct Sums {
    named: bool,
    connections: u64,
    resets: u64,
    failed: u64,
    packets: u64,
    bytes: u64,
    tcp_flags: u32,
    first_seen_nanos: i64,
    last_seen_nanos: i64,
}

impl Sums {
    fn row(&self, key: GroupKey) -> FlowGroup {
        FlowGroup {
            key,
            named: self.named,
            connections: self.connections,
            resets: self.resets,
            failed: self.failed,
            packets: self.packets,
            bytes: self.bytes,
            tcp_flags: self.tcp_flags,
            first_seen_nanos: self.first_seen_nanos,
            last_seen_nanos: self.last_seen_nanos,
        }
    }
}

/// Rows being built, one flow at a time.
#[derive(Clone, Debug, Default)]
pub struct Groups {
    rows: BTreeMap<GroupKey, Sums>,
}

impl Groups {
    /// Folds one flow into its row.
    pub fn add(&mut self, f: &FlowRecord) {
        let row = self.rows.entry(key_of(f)).or_insert_with(|| Sums {
            named: f.observed_and_peer().0.is_some(),
            ..Sums::default()
        });
        row.connections += 1;
        if f.protocol == Protocol::TCP && f.tcp_flags & TCP_RST != 0 {
            row.resets += 1;
        }
        if f.protocol == Protocol::TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            row.failed += 1;
        }
        row.packets = row.packets.saturating_add(f.packets);
        row.bytes = row.bytes.saturating_add(f.bytes);
        row.tcp_flags |= f.tcp_flags;
        if f.first_seen_nanos > 0
            && (row.first_seen_nanos == 0 || f.first_seen_nanos < row.first_seen_nanos)
        {
            row.first_seen_nanos = f.first_seen_nanos;
        }
        row.last_seen_nanos = row.last_seen_nanos.max(f.last_seen_nanos);
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows, sorted by `sort` (ties in key order), at most `limit` of them (0 or `None`:
    /// all).
    pub fn rows(&self, sort: SortKey, limit: Option<usize>) -> Vec<FlowGroup> {
        sorted(
            self.rows.iter().map(|(k, s)| s.row(k.clone())).collect(),
            sort,
            limit,
        )
    }

    /// [`Groups::rows`], taking the keys instead of copying them.
    pub fn into_rows(self, sort: SortKey, limit: Option<usize>) -> Vec<FlowGroup> {
        sorted(
            self.rows.into_iter().map(|(k, s)| s.row(k)).collect(),
            sort,
            limit,
        )
    }
}

fn sorted(mut rows: Vec<FlowGroup>, sort: SortKey, limit: Option<usize>) -> Vec<FlowGroup> {
    rows.sort_by(|a, b| {
        sort.order(&a.totals(), &b.totals())
            .then_with(|| a.key.cmp(&b.key))
    });
    if let Some(limit) = limit.filter(|l| *l > 0) {
        rows.truncate(limit);
    }
    rows
}

/// The grouped view of `flows`: [`Groups`] over all of them, sorted and limited.
pub fn group(flows: &[FlowRecord], sort: SortKey, limit: Option<usize>) -> Vec<FlowGroup> {
    let mut groups = Groups::default();
    flows.iter().for_each(|f| groups.add(f));
    groups.into_rows(sort, limit)
}

/// [`group`] of a table it consumes: each flow is freed once folded in, the table shrinking
/// as it goes, so the flows and the rows are never both whole (100k flows are tens of MiB).
pub fn group_owned(
    mut flows: Vec<FlowRecord>,
    sort: SortKey,
    limit: Option<usize>,
) -> Vec<FlowGroup> {
    let mut groups = Groups::default();
    while let Some(f) = flows.pop() {
        groups.add(&f);
        if flows.capacity() > 1024 && flows.len() < flows.capacity() / 2 {
            flows.shrink_to_fit();
        }
    }
    groups.into_rows(sort, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orb8_flowspec::InterfaceRole;

    fn pod(ns: &str, name: &str) -> Option<Endpoint> {
        Some(Endpoint::Pod {
            namespace: ns.into(),
            name: name.into(),
        })
    }

    /// shop/client (10.1.0.7) to pay/server (10.1.0.8) port 8080 over TCP, as seen on the
    /// client's veth: the request flow (client sends, source port `sport`) or the reply.
    fn conn(
        sport: u32,
        reply: bool,
        packets: u64,
        flags: u32,
        first: i64,
        last: i64,
    ) -> FlowRecord {
        let mut f = FlowRecord::test_flow();
        f.protocol = Protocol::TCP;
        f.interface = "vethc".into();
        f.interface_role = Some(InterfaceRole::Veth);
        let (client, server) = (f.src, f.dst);
        if reply {
            (f.src, f.src_port, f.dst, f.dst_port) = (server, 8080, client, sport);
            f.src_name = pod("pay", "server");
            f.dst_name = pod("shop", "client");
            f.interface_direction = Some(Direction::Egress);
            f.direction = Some(Direction::Ingress);
        } else {
            (f.src_port, f.dst_port) = (sport, 8080);
            f.src_name = pod("shop", "client");
            f.dst_name = pod("pay", "server");
            f.interface_direction = Some(Direction::Ingress);
            f.direction = Some(Direction::Egress);
        }
        f.packets = packets;
        f.bytes = packets * 100;
        f.tcp_flags = flags;
        f.first_seen_nanos = first;
        f.last_seen_nanos = last;
        f
    }

    #[test]
    fn a_consumed_table_groups_as_a_borrowed_one() {
        let flows: Vec<FlowRecord> = (0..3000)
            .map(|i| {
                conn(
                    40000 + i % 7,
                    i % 2 == 0,
                    1 + u64::from(i % 5),
                    0x10,
                    100,
                    200,
                )
            })
            .collect();
        assert_eq!(
            group_owned(flows.clone(), SortKey::Bytes, None),
            group(&flows, SortKey::Bytes, None)
        );
    }

    #[test]
    fn connections_to_one_service_port_fold_into_one_row_per_direction() {
        let flows = vec![
            conn(40001, false, 5, 0x12, 100, 200),
            conn(40001, true, 4, 0x12, 101, 201),
            conn(40002, false, 3, 0x14, 300, 400),
            conn(40002, true, 1, 0x04, 301, 350),
            conn(40003, false, 2, 0x02, 50, 500),
        ];
        let rows = group(&flows, SortKey::Bytes, None);
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let out = &rows[0];
        assert_eq!(
            out.key,
            GroupKey {
                node: "node-a".into(),
                pod: "shop/client".into(),
                peer: "pay/server".into(),
                port: Some(8080),
                protocol: Protocol::TCP,
                direction: Some(Direction::Egress),
            }
        );
        assert_eq!(
            (out.connections, out.resets, out.packets, out.bytes),
            (3, 1, 10, 1000)
        );
        assert_eq!((out.first_seen_nanos, out.last_seen_nanos), (50, 500));
        assert_eq!(out.tcp_flag_letters(), "SR.");
        let back = &rows[1];
        assert_eq!(back.key.direction, Some(Direction::Ingress));
        assert_eq!(back.key.port, Some(8080), "the reply agrees on the port");
        assert_eq!(
            (back.key.pod.as_str(), back.key.peer.as_str()),
            ("shop/client", "pay/server")
        );
        assert_eq!((back.connections, back.resets, back.packets), (2, 1, 5));
        assert_eq!((back.first_seen_nanos, back.last_seen_nanos), (101, 350));
        // 40003 only ever sent its SYN: a failed connect, on the opening side only (a reply
        // with RST alone, or a SYN-ACK, is not one).
        assert_eq!((out.failed, back.failed), (1, 0));
    }

    #[test]
    fn sort_and_limit_apply_to_rows() {
        let mut flows = vec![conn(40001, false, 1, 0x10, 1, 900)];
        flows.extend((0..3).map(|i| conn(40010 + i, true, 10, 0x10, 1, 100)));
        let by_bytes = group(&flows, SortKey::Bytes, Some(1));
        assert_eq!(by_bytes.len(), 1);
        assert_eq!(by_bytes[0].bytes, 3000);
        let by_time = group(&flows, SortKey::Time, None);
        assert_eq!(by_time[0].last_seen_nanos, 900);
        assert_eq!(group(&flows, SortKey::Packets, Some(0)).len(), 2);
    }

    #[test]
    fn unnamed_ends_keep_their_addresses_and_portless_flows_have_no_port() {
        let mut world = conn(40001, false, 1, 0, 1, 2);
        world.dst_name = Some(Endpoint::World);
        world.dst = Some("203.0.113.7".parse().unwrap());
        let mut other = world.clone();
        other.dst = Some("203.0.113.8".parse().unwrap());
        let rows = group(&[world, other], SortKey::Bytes, None);
        let peers: Vec<&str> = rows.iter().map(|r| r.key.peer.as_str()).collect();
        assert_eq!(peers, vec!["world(203.0.113.7)", "world(203.0.113.8)"]);

        let mut local = FlowRecord::test_flow();
        local.protocol = Protocol::ICMP;
        let rows = group(&[local], SortKey::Bytes, None);
        assert_eq!(
            (
                rows[0].key.pod.as_str(),
                rows[0].key.peer.as_str(),
                rows[0].key.port
            ),
            ("10.0.0.1", "10.0.0.2", None),
            "local mode: addresses, and no port for ICMP"
        );
        assert_eq!(rows[0].tcp_flag_letters(), "");
    }

    #[test]
    fn rows_grow_one_flow_at_a_time() {
        let mut g = Groups::default();
        assert!(g.is_empty());
        g.add(&conn(40001, false, 1, 0, 1, 2));
        g.add(&conn(40002, false, 1, 0, 3, 4));
        assert_eq!(g.len(), 1);
        assert_eq!(g.rows(SortKey::Bytes, None)[0].connections, 2);
    }
}
