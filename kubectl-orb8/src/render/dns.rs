//! DNS exchanges (`trace dns`): one text line or JSON object per exchange, and the summary per
//! (client, name, response code) with latency percentiles. Plain data in, text out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use orb8_flowspec::ip_from_bytes;
use orb8_proto::DnsExchange;
use serde::Serialize;

use crate::flow::{Endpoint, endpoint, rfc3339_nanos, time_of_day};

/// What a timed-out exchange shows where a response code would be.
pub const TIMEOUT: &str = "TIMEOUT";

/// One exchange from one node, with its ends named when the client knows the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsRecord {
    /// The node whose agent reported it.
    pub node: String,
    /// The exchange as the agent sent it.
    pub exchange: DnsExchange,
    /// The client end's name (cluster mode).
    pub client_name: Option<Endpoint>,
    /// The server end's name (cluster mode).
    pub server_name: Option<Endpoint>,
}

impl DnsRecord {
    /// The client's address.
    pub fn client(&self) -> Option<IpAddr> {
        ip_from_bytes(&self.exchange.client_addr)
    }

    /// The server's address.
    pub fn server(&self) -> Option<IpAddr> {
        ip_from_bytes(&self.exchange.server_addr)
    }

    /// The response code, or [`TIMEOUT`].
    pub fn outcome(&self) -> &str {
        if self.exchange.timeout {
            TIMEOUT
        } else {
            &self.exchange.rcode
        }
    }

    /// The client as the summary groups it: its name, else its address (without the port).
    pub fn client_label(&self) -> String {
        match &self.client_name {
            Some(n) => n.label_at(self.client()),
            None => crate::flow::addr_text(self.client()),
        }
    }
}

/// The protocol's name (`udp`, `tcp`) as flows show it.
fn protocol_name(p: u32) -> String {
    orb8_flowspec::Protocol::try_from(p)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| p.to_string())
}

fn end(name: Option<&Endpoint>, addr: Option<IpAddr>, port: u32) -> String {
    match name {
        Some(n) => format!("{}:{port}", n.label_at(addr)),
        None => endpoint(addr, port, true),
    }
}

/// Milliseconds with microsecond precision: `2.000ms`.
pub fn millis(ns: u64) -> String {
    format!("{}.{:03}ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}

/// One exchange as a line of text:
/// `22:13:20.001Z node-a udp 10.0.0.5:40000 -> 10.0.0.53:53 A api.example.com NOERROR 2.000ms 203.0.113.9`;
/// a query nobody answered ends in `TIMEOUT`. Named ends replace addresses in cluster mode;
/// without a cluster, the process behind the query's veth is added when the agent knows it.
pub fn text_line(r: &DnsRecord) -> String {
    let x = &r.exchange;
    let mut line = format!(
        "{} {} {} {} -> {} {} {}",
        time_of_day(x.query_unix_nanos),
        r.node,
        protocol_name(x.protocol),
        end(r.client_name.as_ref(), r.client(), x.client_port),
        end(r.server_name.as_ref(), r.server(), x.server_port),
        x.qtype,
        x.name,
    );
    if x.timeout {
        line.push(' ');
        line.push_str(TIMEOUT);
    } else {
        line.push_str(&format!(" {} {}", x.rcode, millis(x.latency_ns)));
        let answers: Vec<&str> = x.answers.iter().map(|a| a.data.as_str()).collect();
        if !answers.is_empty() {
            line.push(' ');
            line.push_str(&answers.join(","));
        }
    }
    if let Some(o) = x.netns_owner.as_ref().filter(|_| r.client_name.is_none()) {
        line.push_str(&format!(" ({}[{}])", o.comm, o.pid));
    }
    line
}

/// One end of an exchange in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndView {
    /// Its address.
    pub addr: String,
    /// Its port.
    pub port: u32,
    /// Its name in the cluster (`ns/pod`, `svc:ns/name`, ...), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One answer record in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerView {
    /// Owner name.
    pub name: String,
    /// Record type.
    #[serde(rename = "type")]
    pub rtype: String,
    /// Time to live, seconds.
    pub ttl: u32,
    /// Data as text.
    pub data: String,
}

/// One exchange as a JSON line (`-o json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsLine {
    /// Always `dns`.
    pub event: &'static str,
    /// When the query was seen (RFC 3339).
    pub time: Option<String>,
    /// The node whose agent saw it.
    pub node: String,
    /// The interface it was seen on.
    pub interface: String,
    /// `udp` or `tcp`.
    pub protocol: String,
    /// Who asked.
    pub client: EndView,
    /// Who was asked.
    pub server: EndView,
    /// Query id.
    pub id: u32,
    /// Question name.
    pub name: String,
    /// Question type.
    pub qtype: String,
    /// Response code by name; absent on a timeout.
    pub rcode: Option<String>,
    /// No response in time.
    pub timeout: bool,
    /// Query to response, milliseconds; absent on a timeout.
    pub latency_ms: Option<f64>,
    /// The answer section.
    pub answers: Vec<AnswerView>,
}

impl From<&DnsRecord> for DnsLine {
    fn from(r: &DnsRecord) -> Self {
        let x = &r.exchange;
        let end = |name: Option<&Endpoint>, addr: Option<IpAddr>, port: u32| EndView {
            addr: crate::flow::addr_text(addr),
            port,
            name: name.map(|n| n.label_at(addr)),
        };
        DnsLine {
            event: "dns",
            time: rfc3339_nanos(x.query_unix_nanos),
            node: r.node.clone(),
            interface: x.interface.clone(),
            protocol: protocol_name(x.protocol),
            client: end(r.client_name.as_ref(), r.client(), x.client_port),
            server: end(r.server_name.as_ref(), r.server(), x.server_port),
            id: x.id,
            name: x.name.clone(),
            qtype: x.qtype.clone(),
            rcode: (!x.timeout).then(|| x.rcode.clone()),
            timeout: x.timeout,
            latency_ms: (!x.timeout).then(|| x.latency_ns as f64 / 1e6),
            answers: x
                .answers
                .iter()
                .map(|a| AnswerView {
                    name: a.name.clone(),
                    rtype: a.r#type.clone(),
                    ttl: a.ttl,
                    data: a.data.clone(),
                })
                .collect(),
        }
    }
}

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    /// The client (its name, else its address).
    pub client: String,
    /// Question name.
    pub name: String,
    /// Response code, or `TIMEOUT`.
    pub rcode: String,
    /// Exchanges.
    pub count: u64,
    /// Latency percentiles (nearest rank) and maximum, milliseconds; absent for timeouts.
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Maximum.
    pub max_ms: Option<f64>,
}

/// Exchanges counted per (client, name, response code), latencies kept for percentiles.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    groups: BTreeMap<(String, String, String), (u64, Vec<u64>)>,
}

/// The nearest-rank `p`th percentile of sorted values.
fn percentile(sorted: &[u64], p: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as u64).div_ceil(100).max(1) as usize;
    sorted.get(rank - 1).copied()
}

impl Summary {
    /// Counts one exchange.
    pub fn add(&mut self, r: &DnsRecord) {
        let key = (
            r.client_label(),
            r.exchange.name.clone(),
            r.outcome().to_string(),
        );
        let g = self.groups.entry(key).or_default();
        g.0 += 1;
        if !r.exchange.timeout {
            g.1.push(r.exchange.latency_ns);
        }
    }

    /// The rows: most exchanges first, then by client, name and code.
    pub fn rows(&self) -> Vec<SummaryRow> {
        let ms = |v: Option<u64>| v.map(|ns| ns as f64 / 1e6);
        let mut rows: Vec<SummaryRow> = self
            .groups
            .iter()
            .map(|((client, name, rcode), (count, lat))| {
                let mut lat = lat.clone();
                lat.sort_unstable();
                SummaryRow {
                    client: client.clone(),
                    name: name.clone(),
                    rcode: rcode.clone(),
                    count: *count,
                    p50_ms: ms(percentile(&lat, 50)),
                    p90_ms: ms(percentile(&lat, 90)),
                    p99_ms: ms(percentile(&lat, 99)),
                    max_ms: ms(lat.last().copied()),
                }
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.count));
        rows
    }
}

/// The summary as an aligned table (empty when nothing was seen).
pub fn summary_table(rows: &[SummaryRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |m| format!("{m:.3}"));
    let mut cells = vec![
        [
            "CLIENT", "NAME", "RCODE", "COUNT", "P50_MS", "P90_MS", "P99_MS", "MAX_MS",
        ]
        .map(String::from),
    ];
    for r in rows {
        cells.push([
            r.client.clone(),
            r.name.clone(),
            r.rcode.clone(),
            r.count.to_string(),
            ms(r.p50_ms),
            ms(r.p90_ms),
            ms(r.p99_ms),
            ms(r.max_ms),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    cells
        .iter()
        .map(|row| {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            line.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use orb8_proto::DnsAnswer;

    fn record(port: u32, name: &str, rcode: &str, ms: u64) -> DnsRecord {
        DnsRecord {
            node: "node-a".into(),
            exchange: DnsExchange {
                protocol: 17,
                client_addr: vec![10, 0, 0, 5],
                client_port: port,
                server_addr: vec![10, 0, 0, 53],
                server_port: 53,
                id: 7,
                name: name.into(),
                qtype: "A".into(),
                rcode: rcode.into(),
                timeout: rcode.is_empty(),
                latency_ns: ms * 1_000_000 + 250_000,
                query_unix_nanos: 1_700_000_000_001_000_000,
                interface: "lo".into(),
                ..Default::default()
            },
            client_name: None,
            server_name: None,
        }
    }

    #[test]
    fn a_line_per_exchange() {
        let mut r = record(40000, "api.example.com", "NOERROR", 2);
        r.exchange.answers.push(DnsAnswer {
            name: "api.example.com".into(),
            r#type: "A".into(),
            ttl: 60,
            data: "203.0.113.9".into(),
            addr: vec![203, 0, 113, 9],
        });
        assert_eq!(
            text_line(&r),
            "22:13:20.001Z node-a udp 10.0.0.5:40000 -> 10.0.0.53:53 A api.example.com NOERROR 2.250ms 203.0.113.9"
        );
        let t = record(40001, "slow.example.com", "", 0);
        assert_eq!(
            text_line(&t),
            "22:13:20.001Z node-a udp 10.0.0.5:40001 -> 10.0.0.53:53 A slow.example.com TIMEOUT"
        );
        let mut named = record(40000, "nope.example.com", "NXDOMAIN", 1);
        named.exchange.server_addr = vec![0xfd; 16];
        named.client_name = Some(Endpoint::Pod {
            namespace: "shop".into(),
            name: "checkout".into(),
        });
        named.server_name = Some(Endpoint::Service {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
        });
        assert_eq!(
            text_line(&named),
            "22:13:20.001Z node-a udp shop/checkout:40000 -> svc:kube-system/kube-dns:53 A nope.example.com NXDOMAIN 1.250ms"
        );
        named.server_name = None;
        assert!(text_line(&named).contains(" -> [fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd]:53 "));
    }

    #[test]
    fn json_says_timeouts_without_a_code_or_latency() {
        let t = serde_json::to_value(DnsLine::from(&record(1, "x.test", "", 0))).unwrap();
        assert_eq!(t["timeout"], true);
        assert!(t["rcode"].is_null() && t["latency_ms"].is_null());
        assert_eq!(t["client"]["addr"], "10.0.0.5");
        let ok = serde_json::to_value(DnsLine::from(&record(1, "x.test", "NOERROR", 3))).unwrap();
        assert_eq!(
            (ok["rcode"].as_str(), ok["latency_ms"].as_f64()),
            (Some("NOERROR"), Some(3.25))
        );
        assert_eq!(ok["time"], "2023-11-14T22:13:20.001000000Z");
    }

    #[test]
    fn the_summary_counts_per_client_name_and_code_with_percentiles() {
        let mut s = Summary::default();
        for ms in 1..=10 {
            s.add(&record(40000 + ms as u32, "a.test", "NOERROR", ms));
        }
        s.add(&record(1, "a.test", "", 0));
        s.add(&record(1, "a.test", "", 0));
        s.add(&record(1, "b.test", "NXDOMAIN", 4));
        let rows = s.rows();
        assert_eq!(
            rows.iter()
                .map(|r| (r.name.as_str(), r.rcode.as_str(), r.count))
                .collect::<Vec<_>>(),
            vec![
                ("a.test", "NOERROR", 10),
                ("a.test", TIMEOUT, 2),
                ("b.test", "NXDOMAIN", 1)
            ]
        );
        let ok = &rows[0];
        assert_eq!(ok.client, "10.0.0.5");
        assert_eq!(
            (ok.p50_ms, ok.p90_ms, ok.p99_ms, ok.max_ms),
            (Some(5.25), Some(9.25), Some(10.25), Some(10.25))
        );
        assert_eq!(rows[1].p50_ms, None);
        let table = summary_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "CLIENT    NAME    RCODE     COUNT  P50_MS  P90_MS  P99_MS  MAX_MS"
        );
        assert_eq!(
            lines[1],
            "10.0.0.5  a.test  NOERROR   10     5.250   9.250   10.250  10.250"
        );
        assert_eq!(
            lines[2],
            "10.0.0.5  a.test  TIMEOUT   2      -       -       -       -"
        );
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 99), Some(7));
    }
}
