//! The model of `trace drops`: a dropped-packet record from the wire, its text line, which
//! addresses cluster mode asks the kernel to watch, and the summary rows by (pod, reason,
//! peer). Pure functions over data; the command (`commands::drops`) does the I/O.
//!
//! A drop's "pod" is the end that the command watches: in cluster mode a selected pod at either
//! end (the destination when both are), its peer the other end (with its port when the peer is
//! the destination); without a cluster the process living in the namespace where the packet
//! was dropped (`comm[pid]`), else the interface, else the namespace (`netns:INODE`), else
//! `host`, and the peer is `src -> dst:port`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use orb8_flowspec::{Protocol, ip_from_bytes};
use orb8_proto::PacketDrop;
use serde::Serialize;

use crate::enrich::Directory;
use crate::flow::{Endpoint, addr_text, rfc3339_nanos, system_time, time_of_day};

/// One drop key from one node, decoded from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropRecord {
    /// The node the drop happened on.
    pub node: String,
    /// The kernel's reason (`NO_SOCKET`).
    pub reason: String,
    /// IP protocol.
    pub protocol: Protocol,
    /// Source address.
    pub src: Option<IpAddr>,
    /// Source port.
    pub src_port: u32,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Destination port (ICMP type/code).
    pub dst_port: u32,
    /// Non-first fragments (no ports).
    pub fragment: bool,
    /// The device's name when the agent knows it.
    pub interface: String,
    /// Inode of the network namespace of the drop.
    pub netns: u64,
    /// The process living in that namespace, as `comm[pid]`, when the agent found one.
    pub owner: Option<String>,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// First drop, Unix nanoseconds.
    pub first_seen_nanos: i64,
    /// Name of the source in cluster mode.
    pub src_name: Option<Endpoint>,
    /// Name of the destination in cluster mode.
    pub dst_name: Option<Endpoint>,
}

impl DropRecord {
    /// From the wire.
    pub fn from_proto(node: &str, d: PacketDrop) -> DropRecord {
        DropRecord {
            node: node.to_string(),
            reason: d.reason,
            protocol: Protocol(d.protocol.min(255) as u8),
            src: ip_from_bytes(&d.src_addr),
            src_port: d.src_port,
            dst: ip_from_bytes(&d.dst_addr),
            dst_port: d.dst_port,
            fragment: d.fragment,
            interface: d.interface,
            netns: d.netns,
            owner: d
                .netns_owner
                .filter(|o| o.pid != 0)
                .map(|o| format!("{}[{}]", o.comm, o.pid)),
            packets: d.packets,
            bytes: d.bytes,
            first_seen_nanos: d.first_seen_unix_nanos,
            src_name: None,
            dst_name: None,
        }
    }

    fn ports(&self) -> bool {
        self.protocol.has_ports() && !self.fragment
    }

    fn end(&self, name: Option<&Endpoint>, addr: Option<IpAddr>, port: u32) -> String {
        let shown = match name {
            Some(n) => n.label_at(addr),
            None => match addr {
                Some(IpAddr::V6(a)) if self.ports() => format!("[{a}]"),
                a => addr_text(a),
            },
        };
        if self.ports() {
            format!("{shown}:{port}")
        } else {
            shown
        }
    }

    /// Where the packet was dropped, when known: the namespace's process, else the interface
    /// (in the agent's namespace), else the namespace's inode (`netns:N`).
    fn place(&self) -> String {
        match (&self.owner, self.interface.is_empty(), self.netns) {
            (Some(o), _, _) => o.clone(),
            (None, false, _) => self.interface.clone(),
            (None, true, 0) => String::new(),
            (None, true, n) => format!("netns:{n}"),
        }
    }

    /// Names both ends from the directory (at the first drop).
    pub fn name_ends(&mut self, dir: &Directory) {
        let at = system_time(self.first_seen_nanos).unwrap_or_else(SystemTime::now);
        self.src_name = self.src.map(|ip| dir.name_of(ip, at));
        self.dst_name = self.dst.map(|ip| dir.name_of(ip, at));
    }

    /// Whether cluster mode reports it: a selected pod at either end (any pod when the command
    /// selected none, every drop when it named no pods at all).
    pub fn concerns_selection(&self, dir: &Directory) -> bool {
        let selected = |e: &Option<Endpoint>| match (e, &dir.selected) {
            (Some(Endpoint::Pod { .. }), None) => true,
            (Some(Endpoint::Pod { namespace, name }), Some(sel)) => {
                sel.contains(&(namespace.clone(), name.clone()))
            }
            _ => false,
        };
        dir.selected.is_none() || selected(&self.src_name) || selected(&self.dst_name)
    }

    /// The record's (pod, peer) for the summary; see the module's rule.
    pub fn pod_and_peer(&self, dir: Option<&Directory>) -> (String, String) {
        let is_watched = |e: &Option<Endpoint>| match (e, dir.and_then(|d| d.selected.as_ref())) {
            (Some(Endpoint::Pod { .. }), None) => true,
            (Some(Endpoint::Pod { namespace, name }), Some(sel)) => {
                sel.contains(&(namespace.clone(), name.clone()))
            }
            _ => false,
        };
        if dir.is_some() {
            if is_watched(&self.dst_name) {
                let pod = self
                    .dst_name
                    .as_ref()
                    .map(|e| e.label())
                    .unwrap_or_default();
                let peer = self
                    .src_name
                    .as_ref()
                    .map_or_else(|| addr_text(self.src), |e| e.label_at(self.src));
                return (pod, peer);
            }
            if is_watched(&self.src_name) {
                let pod = self
                    .src_name
                    .as_ref()
                    .map(|e| e.label())
                    .unwrap_or_default();
                return (
                    pod,
                    self.end(self.dst_name.as_ref(), self.dst, self.dst_port),
                );
            }
        }
        let pod = match self.place() {
            p if p.is_empty() => "host".to_string(),
            p => p,
        };
        let src = match self.src_name.as_ref() {
            Some(n) => n.label_at(self.src),
            None => addr_text(self.src),
        };
        let dst = self.end(self.dst_name.as_ref(), self.dst, self.dst_port);
        (pod, format!("{src} -> {dst}"))
    }
}

/// One drop as a line of text:
/// `22:13:20.123Z node-a NO_SOCKET udp 10.0.0.1:40000 -> 10.0.0.2:53 (nc[42])`; named ends
/// replace addresses in cluster mode.
pub fn text_line(time_nanos: i64, d: &DropRecord) -> String {
    let src = d.end(d.src_name.as_ref(), d.src, d.src_port);
    let dst = d.end(d.dst_name.as_ref(), d.dst, d.dst_port);
    let mut line = format!(
        "{} {} {} {} {src} -> {dst}",
        time_of_day(time_nanos),
        d.node,
        d.reason,
        d.protocol
    );
    if d.fragment {
        line.push_str(" (fragment)");
    }
    let place = d.place();
    if !place.is_empty() {
        line.push_str(&format!(" ({place})"));
    }
    line
}

/// One line of `trace drops -o json`: a new dropped-packet key.
#[derive(Debug, Clone, Serialize)]
pub struct DropLine<'a> {
    /// Always `drop`.
    pub event: &'static str,
    /// RFC 3339 time of the drop.
    pub time: Option<String>,
    /// The node.
    pub node: &'a str,
    /// The stream's sequence number.
    pub seq: u64,
    /// The kernel's reason.
    pub reason: &'a str,
    /// Protocol name.
    pub protocol: String,
    /// Source address.
    pub src: String,
    /// Source port.
    pub src_port: u32,
    /// Destination address.
    pub dst: String,
    /// Destination port.
    pub dst_port: u32,
    /// Source name (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_name: Option<String>,
    /// Destination name (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_name: Option<String>,
    /// Interface, when the agent named it.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub interface: &'a str,
    /// Network namespace inode.
    pub netns: u64,
    /// The namespace's process, `comm[pid]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_owner: Option<&'a str>,
    /// Bytes of the packet.
    pub bytes: u64,
}

impl<'a> DropLine<'a> {
    /// The line of a drop event.
    pub fn new(seq: u64, time_nanos: i64, d: &'a DropRecord) -> Self {
        DropLine {
            event: "drop",
            time: rfc3339_nanos(time_nanos),
            node: &d.node,
            seq,
            reason: &d.reason,
            protocol: d.protocol.to_string(),
            src: addr_text(d.src),
            src_port: d.src_port,
            dst: addr_text(d.dst),
            dst_port: d.dst_port,
            src_name: d.src_name.as_ref().map(|e| e.label_at(d.src)),
            dst_name: d.dst_name.as_ref().map(|e| e.label_at(d.dst)),
            interface: &d.interface,
            netns: d.netns,
            netns_owner: d.owner.as_deref(),
            bytes: d.bytes,
        }
    }
}

/// One row of the summary: drops of one (pod, reason, peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    /// Always `drop_summary` in JSON.
    pub event: &'static str,
    /// The watched end (see the module's rule).
    pub pod: String,
    /// The kernel's reason.
    pub reason: String,
    /// The other end.
    pub peer: String,
    /// Packets dropped.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Sums records into rows by (pod, reason, peer), most packets first.
pub fn summarise(records: &[DropRecord], dir: Option<&Directory>) -> Vec<SummaryRow> {
    let mut by: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
    for r in records {
        let (pod, peer) = r.pod_and_peer(dir);
        let e = by.entry((pod, r.reason.clone(), peer)).or_default();
        e.0 += r.packets;
        e.1 += r.bytes;
    }
    let mut rows: Vec<SummaryRow> = by
        .into_iter()
        .map(|((pod, reason, peer), (packets, bytes))| SummaryRow {
            event: "drop_summary",
            pod,
            reason,
            peer,
            packets,
            bytes,
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.packets));
    rows
}

/// The summary as an aligned text table with a header.
pub fn summary_table(rows: &[SummaryRow]) -> String {
    let header = ["POD", "REASON", "PEER", "PACKETS", "BYTES"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.pod.clone(),
                r.reason.clone(),
                r.peer.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let line = |c: [&str; 5]| {
        let mut s = String::new();
        for (i, (v, w)) in c.iter().zip(width).enumerate() {
            if i + 1 == c.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}   "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header);
    out.push('\n');
    for c in &cells {
        out.push_str(&line([&c[0], &c[1], &c[2], &c[3], &c[4]]));
        out.push('\n');
    }
    out
}

/// The addresses cluster mode asks the kernel to watch: every address of a selected pod (not
/// on the host network, not deleted). `None` when the command selected no pods (`-A`: every
/// drop); an empty list when the selected pods have no address yet.
pub fn selected_addrs(dir: &Directory) -> Option<Vec<IpAddr>> {
    let sel = dir.selected.as_ref()?;
    let mut out: Vec<IpAddr> = dir
        .pods
        .values()
        .filter(|p| !p.host_network && p.deleted.is_none())
        .filter(|p| sel.contains(&(p.namespace.clone(), p.name.clone())))
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    out.sort();
    out.dedup();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::PodEntry;

    fn record() -> DropRecord {
        DropRecord::from_proto(
            "node-a",
            PacketDrop {
                reason: "NO_SOCKET".into(),
                reason_code: 3,
                protocol: 17,
                src_addr: vec![10, 0, 0, 1],
                dst_addr: vec![10, 0, 0, 2],
                src_port: 40000,
                dst_port: 9999,
                netns: 4026532000,
                packets: 3,
                bytes: 300,
                first_seen_unix_nanos: 1_700_000_000_123_456_789,
                ..Default::default()
            },
        )
    }

    fn pod(ns: &str, name: &str, ip: &str) -> PodEntry {
        PodEntry {
            namespace: ns.into(),
            name: name.into(),
            ips: vec![ip.parse().unwrap()],
            host_network: false,
            created: None,
            deleted: None,
        }
    }

    fn directory(selected: &[(&str, &str)]) -> Directory {
        let mut d = Directory {
            selected: Some(
                selected
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        d.upsert_pod(pod("shop", "client", "10.0.0.1"));
        d.upsert_pod(pod("pay", "server", "10.0.0.2"));
        d.upsert_pod(PodEntry {
            host_network: true,
            ..pod("kube-system", "proxy", "10.0.0.9")
        });
        d
    }

    #[test]
    fn local_lines_show_addresses_and_where() {
        let mut d = record();
        assert_eq!(
            text_line(d.first_seen_nanos, &d),
            "22:13:20.123Z node-a NO_SOCKET udp 10.0.0.1:40000 -> 10.0.0.2:9999 (netns:4026532000)"
        );
        d.owner = Some("nc[42]".into());
        d.src = Some("fd00::1".parse().unwrap());
        d.dst = Some("fd00::2".parse().unwrap());
        assert_eq!(
            text_line(d.first_seen_nanos, &d),
            "22:13:20.123Z node-a NO_SOCKET udp [fd00::1]:40000 -> [fd00::2]:9999 (nc[42])"
        );
        d.protocol = Protocol::ICMP;
        d.owner = None;
        d.interface = "eth0".into();
        assert!(text_line(0, &d).ends_with(" icmp fd00::1 -> fd00::2 (eth0)"));
    }

    #[test]
    fn cluster_lines_name_both_ends() {
        let mut d = record();
        let dir = directory(&[("pay", "server")]);
        d.name_ends(&dir);
        assert!(d.concerns_selection(&dir));
        d.netns = 0;
        assert!(
            text_line(0, &d).ends_with(" NO_SOCKET udp shop/client:40000 -> pay/server:9999"),
            "{}",
            text_line(0, &d)
        );
        let other = directory(&[("x", "y")]);
        d.name_ends(&other);
        assert!(!d.concerns_selection(&other));
    }

    #[test]
    fn summary_rows_count_by_pod_reason_and_peer() {
        let dir = directory(&[("pay", "server")]);
        let mut a = record();
        a.name_ends(&dir);
        let mut b = a.clone();
        b.src_port = 40001;
        b.packets = 2;
        b.bytes = 200;
        let mut c = a.clone();
        c.reason = "NETFILTER_DROP".into();
        c.packets = 1;
        c.bytes = 100;
        let rows = summarise(&[a.clone(), b, c], Some(&dir));
        let got: Vec<(&str, &str, &str, u64, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.pod.as_str(),
                    r.reason.as_str(),
                    r.peer.as_str(),
                    r.packets,
                    r.bytes,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("pay/server", "NO_SOCKET", "shop/client", 5, 500),
                ("pay/server", "NETFILTER_DROP", "shop/client", 1, 100),
            ]
        );
        // The selected pod sent: the peer is the destination, with its port.
        let dir = directory(&[("shop", "client")]);
        a.name_ends(&dir);
        assert_eq!(
            a.pod_and_peer(Some(&dir)),
            ("shop/client".into(), "pay/server:9999".into())
        );
        // No cluster: where it was dropped, and the five-tuple without the source port.
        let mut local = record();
        assert_eq!(
            local.pod_and_peer(None),
            (
                "netns:4026532000".into(),
                "10.0.0.1 -> 10.0.0.2:9999".into()
            )
        );
        local.netns = 0;
        assert_eq!(local.pod_and_peer(None).0, "host");
        local.owner = Some("nc[42]".into());
        assert_eq!(local.pod_and_peer(None).0, "nc[42]");
        let table = summary_table(&rows);
        assert_eq!(
            table.lines().next().unwrap(),
            "POD          REASON           PEER          PACKETS   BYTES"
        );
        assert_eq!(
            table.lines().nth(1).unwrap(),
            "pay/server   NO_SOCKET        shop/client   5         500"
        );
    }

    #[test]
    fn the_kernel_watches_the_selected_pods_addresses() {
        let dir = directory(&[("pay", "server"), ("kube-system", "proxy")]);
        assert_eq!(
            selected_addrs(&dir),
            Some(vec!["10.0.0.2".parse().unwrap()])
        );
        let all = Directory::default();
        assert_eq!(selected_addrs(&all), None);
        assert_eq!(selected_addrs(&directory(&[])), Some(vec![]));
    }
}
