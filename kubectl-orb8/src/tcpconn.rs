//! TCP connection records joined to flow rows, for the STATE, RTT, RETRANS and RESETS columns
//! of `flows -o wide --by connection`: the agents' TCP traces (`trace tcp`) during collection
//! give each socket's latest state, and a flow row finds its socket by node and both ends,
//! looked up in either order (the row's source may be the socket's remote end), through an
//! index, never a scan per row. Only sockets that changed state, retransmitted or were reset
//! during collection have a record.

use std::collections::HashMap;
use std::net::IpAddr;

use orb8_proto::TcpEventKind;

use crate::flow::FlowRecord;
use crate::tcp::TcpRecord;

/// One socket as the columns show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// `ESTABLISHED`, a kernel state name, or how it ended (`closed by client first`,
    /// `refused`, `reset`, `failed`).
    pub state: String,
    /// Smoothed RTT, µs (0: not measured).
    pub srtt_us: u32,
    /// Retransmitted segments.
    pub retransmits: u32,
    /// Resets sent and received.
    pub resets: u32,
}

type End = (IpAddr, u32);

/// The records by (node, local end, remote end).
#[derive(Clone, Debug, Default)]
pub struct TcpConnTable {
    by_ends: HashMap<(String, End, End), ConnInfo>,
}

impl TcpConnTable {
    /// Takes one event: the socket's record becomes what the event says.
    pub fn add(&mut self, r: &TcpRecord) {
        let (Some(local), Some(remote)) = (r.local, r.remote) else {
            return;
        };
        let e = &r.event;
        let key = (
            r.node.clone(),
            (local, e.local_port),
            (remote, e.remote_port),
        );
        let previous = self.by_ends.get(&key).map(|c| c.state.clone());
        let state = match e.kind() {
            TcpEventKind::Connect | TcpEventKind::Accept => "ESTABLISHED".to_string(),
            TcpEventKind::Close => r.outcome(),
            TcpEventKind::State => e.new_state.clone(),
            _ => previous.unwrap_or_else(|| {
                if e.established_unix_nanos != 0 {
                    "ESTABLISHED".into()
                } else {
                    "-".into()
                }
            }),
        };
        self.by_ends.insert(
            key,
            ConnInfo {
                state,
                srtt_us: e.srtt_us,
                retransmits: e.retransmits,
                resets: e.resets_sent + e.resets_received,
            },
        );
    }

    /// The socket of a flow row: the one whose local end is the row's source, else the one
    /// whose local end is its destination.
    pub fn find(&self, f: &FlowRecord) -> Option<&ConnInfo> {
        let (src, dst) = (f.src?, f.dst?);
        let a = (src, f.src_port);
        let b = (dst, f.dst_port);
        self.by_ends
            .get(&(f.node.clone(), a, b))
            .or_else(|| self.by_ends.get(&(f.node.clone(), b, a)))
    }

    /// How many sockets have a record.
    pub fn len(&self) -> usize {
        self.by_ends.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.by_ends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orb8_proto::TcpConnEvent;

    fn record(
        kind: TcpEventKind,
        local: [u8; 4],
        lport: u32,
        remote: [u8; 4],
        rport: u32,
    ) -> TcpRecord {
        TcpRecord::from_proto(
            "node-a",
            TcpConnEvent {
                kind: kind as i32,
                local_addr: local.to_vec(),
                local_port: lport,
                remote_addr: remote.to_vec(),
                remote_port: rport,
                role: "connect".into(),
                established_unix_nanos: 5,
                srtt_us: 90,
                retransmits: 2,
                fin_first: "local".into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn both_directions_find_the_socket_and_the_last_event_wins() {
        let mut t = TcpConnTable::default();
        t.add(&record(
            TcpEventKind::Connect,
            [10, 0, 0, 1],
            40000,
            [10, 0, 0, 2],
            80,
        ));
        let mut out = FlowRecord::test_flow();
        out.protocol = orb8_flowspec::Protocol::TCP;
        (out.src_port, out.dst_port) = (40000, 80);
        let mut back = out.clone();
        std::mem::swap(&mut back.src, &mut back.dst);
        (back.src_port, back.dst_port) = (80, 40000);
        let want = ConnInfo {
            state: "ESTABLISHED".into(),
            srtt_us: 90,
            retransmits: 2,
            resets: 0,
        };
        assert_eq!(t.find(&out), Some(&want));
        assert_eq!(
            t.find(&back),
            Some(&want),
            "the reply finds the same socket"
        );
        t.add(&record(
            TcpEventKind::Close,
            [10, 0, 0, 1],
            40000,
            [10, 0, 0, 2],
            80,
        ));
        assert_eq!(t.find(&out).unwrap().state, "closed by client first");
        let mut other = out.clone();
        other.node = "node-b".into();
        assert_eq!(t.find(&other), None, "another node's flow");
        other = out.clone();
        other.src_port = 40001;
        assert_eq!(t.find(&other), None, "another connection");
        assert_eq!(t.len(), 1);
    }
}
