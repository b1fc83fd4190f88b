//! The model of `trace tcp`: a TCP connection event from the wire and its text line. Pure
//! functions over data; the command (`commands::tcp`) does the I/O.
//!
//! Lines put the client first (`client -> server`): the local end of a connect, the remote end
//! of an accept; local first when the opening was not seen. A close says how the connection
//! ended: `refused` (reset before it was established), `failed` (never established),
//! `reset` (a reset sent or received), or which end sent the first FIN.

use std::net::IpAddr;
use std::time::SystemTime;

use orb8_flowspec::ip_from_bytes;
use orb8_proto::{TcpConnEvent, TcpEventKind};
use serde::Serialize;

use crate::enrich::Directory;
use crate::flow::{Endpoint, addr_text, rfc3339_nanos, system_time, time_of_day};

/// One TCP event from one node, decoded from the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpRecord {
    /// The node.
    pub node: String,
    /// The wire event.
    pub event: TcpConnEvent,
    /// Local address.
    pub local: Option<IpAddr>,
    /// Remote address.
    pub remote: Option<IpAddr>,
    /// Name of the local end in cluster mode.
    pub local_name: Option<Endpoint>,
    /// Name of the remote end in cluster mode.
    pub remote_name: Option<Endpoint>,
}

impl TcpRecord {
    /// From the wire.
    pub fn from_proto(node: &str, event: TcpConnEvent) -> TcpRecord {
        TcpRecord {
            node: node.to_string(),
            local: ip_from_bytes(&event.local_addr),
            remote: ip_from_bytes(&event.remote_addr),
            event,
            local_name: None,
            remote_name: None,
        }
    }

    /// The event's kind name (`CONNECT`, `CLOSE`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self.event.kind() {
            TcpEventKind::Connect => "CONNECT",
            TcpEventKind::Accept => "ACCEPT",
            TcpEventKind::Close => "CLOSE",
            TcpEventKind::ResetSent => "RESET_SENT",
            TcpEventKind::ResetReceived => "RESET_RECEIVED",
            TcpEventKind::Retransmit => "RETRANSMIT",
            TcpEventKind::State => "STATE",
            TcpEventKind::Unspecified => "UNKNOWN",
        }
    }

    /// Names both ends from the directory (now).
    pub fn name_ends(&mut self, dir: &Directory) {
        let at = system_time(self.event.start_unix_nanos).unwrap_or_else(SystemTime::now);
        self.local_name = self.local.map(|ip| dir.name_of(ip, at));
        self.remote_name = self.remote.map(|ip| dir.name_of(ip, at));
    }

    /// Whether cluster mode reports it: a selected pod at either end (any pod when the
    /// command selected none).
    pub fn concerns_selection(&self, dir: &Directory) -> bool {
        let selected = |e: &Option<Endpoint>| match (e, &dir.selected) {
            (Some(Endpoint::Pod { .. }), None) => true,
            (Some(Endpoint::Pod { namespace, name }), Some(sel)) => {
                sel.contains(&(namespace.clone(), name.clone()))
            }
            _ => false,
        };
        dir.selected.is_none() || selected(&self.local_name) || selected(&self.remote_name)
    }

    fn end(name: Option<&Endpoint>, addr: Option<IpAddr>, port: u32) -> String {
        match (name, addr) {
            (Some(n), _) => format!("{}:{port}", n.label_at(addr)),
            (None, Some(IpAddr::V6(a))) => format!("[{a}]:{port}"),
            (None, a) => format!("{}:{port}", addr_text(a)),
        }
    }

    /// Whether the remote end is the client (this side accepted).
    fn remote_is_client(&self) -> bool {
        self.event.role == "accept"
    }

    /// (client, server) as text.
    pub fn ends(&self) -> (String, String) {
        let local = Self::end(self.local_name.as_ref(), self.local, self.event.local_port);
        let remote = Self::end(
            self.remote_name.as_ref(),
            self.remote,
            self.event.remote_port,
        );
        if self.remote_is_client() {
            (remote, local)
        } else {
            (local, remote)
        }
    }

    /// How a closed connection ended, in words.
    pub fn outcome(&self) -> String {
        let e = &self.event;
        if e.established_unix_nanos == 0 {
            return if e.resets_received > 0 {
                "refused".into()
            } else {
                "failed".into()
            };
        }
        if e.resets_sent > 0 || e.resets_received > 0 {
            return "reset".into();
        }
        let local_first = match e.fin_first.as_str() {
            "local" => true,
            "peer" => false,
            _ => return "closed".into(),
        };
        let client_first = local_first != self.remote_is_client();
        format!(
            "closed by {} first",
            if client_first { "client" } else { "server" }
        )
    }
}

fn micros(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

/// One event as a line of text, e.g.
/// `22:13:20.123Z node-a CONNECT 10.0.0.1:40000 -> 10.0.0.2:80 handshake 0.120ms srtt 95us`.
pub fn text_line(time_nanos: i64, r: &TcpRecord) -> String {
    let (client, server) = r.ends();
    let e = &r.event;
    let mut line = format!(
        "{} {} {} {client} -> {server}",
        time_of_day(time_nanos),
        r.node,
        r.kind_name()
    );
    match e.kind() {
        TcpEventKind::Connect | TcpEventKind::Accept => {
            line.push_str(&format!(
                " handshake {} srtt {}us",
                micros(e.handshake_ns),
                e.srtt_us
            ));
        }
        TcpEventKind::Close => {
            line.push_str(&format!(
                " {} retrans {} resets {}/{} srtt {}us after {}",
                r.outcome(),
                e.retransmits,
                e.resets_sent,
                e.resets_received,
                e.srtt_us,
                micros(e.duration_ns)
            ));
        }
        TcpEventKind::Retransmit => line.push_str(&format!(" #{}", e.retransmits)),
        TcpEventKind::State => line.push_str(&format!(" {} -> {}", e.old_state, e.new_state)),
        _ => {}
    }
    if let Some(o) = e.netns_owner.as_ref().filter(|_| r.local_name.is_none()) {
        line.push_str(&format!(" ({}[{}])", o.comm, o.pid));
    }
    line
}

/// One line of `trace tcp -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct TcpLine<'a> {
    /// Always `tcp`.
    pub event: &'static str,
    /// RFC 3339 time.
    pub time: Option<String>,
    /// The node.
    pub node: &'a str,
    /// The stream's sequence number.
    pub seq: u64,
    /// `CONNECT`, `ACCEPT`, `CLOSE`, `RESET_SENT`, `RESET_RECEIVED`, `RETRANSMIT`, `STATE`.
    pub kind: &'static str,
    /// `connect`, `accept` or empty.
    pub role: &'a str,
    /// Local address.
    pub local: String,
    /// Local port.
    pub local_port: u32,
    /// Remote address.
    pub remote: String,
    /// Remote port.
    pub remote_port: u32,
    /// Names in cluster mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_name: Option<String>,
    /// Names in cluster mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_name: Option<String>,
    /// State before (state changes).
    pub old_state: &'a str,
    /// State after.
    pub new_state: &'a str,
    /// Handshake time, ns.
    pub handshake_ns: u64,
    /// Smoothed RTT, µs.
    pub srtt_us: u32,
    /// Retransmitted segments.
    pub retransmits: u32,
    /// `local`, `peer` or empty.
    pub fin_first: &'a str,
    /// Resets sent.
    pub resets_sent: u32,
    /// Resets received.
    pub resets_received: u32,
    /// For a close: how it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Network namespace inode.
    pub netns: u64,
    /// Since the opening, ns.
    pub duration_ns: u64,
}

impl<'a> TcpLine<'a> {
    /// The line of one event.
    pub fn new(seq: u64, time_nanos: i64, r: &'a TcpRecord) -> Self {
        let e = &r.event;
        TcpLine {
            event: "tcp",
            time: rfc3339_nanos(time_nanos),
            node: &r.node,
            seq,
            kind: r.kind_name(),
            role: &e.role,
            local: addr_text(r.local),
            local_port: e.local_port,
            remote: addr_text(r.remote),
            remote_port: e.remote_port,
            local_name: r.local_name.as_ref().map(|n| n.label_at(r.local)),
            remote_name: r.remote_name.as_ref().map(|n| n.label_at(r.remote)),
            old_state: &e.old_state,
            new_state: &e.new_state,
            handshake_ns: e.handshake_ns,
            srtt_us: e.srtt_us,
            retransmits: e.retransmits,
            fin_first: &e.fin_first,
            resets_sent: e.resets_sent,
            resets_received: e.resets_received,
            outcome: (e.kind() == TcpEventKind::Close).then(|| r.outcome()),
            netns: e.netns,
            duration_ns: e.duration_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(role: &str, fin: &str) -> TcpRecord {
        TcpRecord::from_proto(
            "node-a",
            TcpConnEvent {
                kind: TcpEventKind::Close as i32,
                old_state: "LAST_ACK".into(),
                new_state: "CLOSE".into(),
                local_addr: vec![10, 0, 0, 2],
                local_port: 80,
                remote_addr: vec![10, 0, 0, 1],
                remote_port: 40000,
                role: role.into(),
                start_unix_nanos: 1,
                established_unix_nanos: 2,
                srtt_us: 95,
                fin_first: fin.into(),
                duration_ns: 2_500_000,
                ..Default::default()
            },
        )
    }

    #[test]
    fn lines_put_the_client_first_and_say_who_closed() {
        let r = close("accept", "peer");
        assert_eq!(
            text_line(1_700_000_000_123_456_789, &r),
            "22:13:20.123Z node-a CLOSE 10.0.0.1:40000 -> 10.0.0.2:80 closed by client first \
             retrans 0 resets 0/0 srtt 95us after 2.500ms"
        );
        assert_eq!(close("accept", "local").outcome(), "closed by server first");
        assert_eq!(
            close("connect", "local").outcome(),
            "closed by client first"
        );
        let mut refused = close("connect", "");
        refused.event.established_unix_nanos = 0;
        refused.event.resets_received = 1;
        assert_eq!(refused.outcome(), "refused");
        refused.event.resets_received = 0;
        assert_eq!(refused.outcome(), "failed");
        let mut reset = close("connect", "local");
        reset.event.resets_sent = 1;
        assert_eq!(reset.outcome(), "reset");
    }

    #[test]
    fn connects_show_the_handshake_and_v6_ends_in_brackets() {
        let mut r = close("connect", "");
        r.event.kind = TcpEventKind::Connect as i32;
        r.event.handshake_ns = 120_000;
        r.local = Some("fd00::1".parse().unwrap());
        r.remote = Some("fd00::2".parse().unwrap());
        assert!(
            text_line(0, &r)
                .ends_with(" CONNECT [fd00::1]:80 -> [fd00::2]:40000 handshake 0.120ms srtt 95us"),
            "{}",
            text_line(0, &r)
        );
    }
}
