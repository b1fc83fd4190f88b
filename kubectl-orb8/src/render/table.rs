//! kubectl-style tables: upper-case headers, no borders, columns fitted to the terminal.

use std::time::SystemTime;

use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement, Table, Width, presets};

use super::view::StatusView;
use crate::flow::{FlowRecord, age, direction_name, human_bytes, human_count};
use crate::group::FlowGroup;

/// A borderless table. `width: None` fits the terminal when stdout is one (and does not wrap
/// otherwise); `Some(w)` fixes the width, for tests.
pub(super) fn new_table(header: &[&str], width: Option<u16>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    if let Some(w) = width {
        table.force_no_tty().set_width(w);
    }
    if let Some(first) = table.column_mut(0) {
        first.set_padding((0, 1));
    }
    table
}

fn right_align(table: &mut Table, columns: &[usize]) {
    for i in columns {
        if let Some(c) = table.column_mut(*i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Gives each column a minimum width: its widest cell, capped at `caps[i]`. Narrow terminals
/// then shrink columns only down to readable widths (an IPv4 `address:port` never breaks) and
/// overflow past that rather than squeezing columns to a letter, as kubectl does.
fn set_minimums(table: &mut Table, rows: &[Vec<String>], header: &[&str], caps: &[u16]) {
    for (i, cap) in caps.iter().enumerate() {
        let widest = rows
            .iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain(
                header
                    .get(i)
                    .map(|h| h.split(' ').map(str::len).max().unwrap_or(0)),
            )
            .max()
            .unwrap_or(0);
        // Fixed widths include the cell padding: one space on each side, none left of column 0.
        let padding = if i == 0 { 1 } else { 2 };
        let min = u16::try_from(widest).unwrap_or(u16::MAX).min(*cap) + padding;
        if let Some(c) = table.column_mut(i) {
            c.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(min)));
        }
    }
}

pub(super) fn finish(table: &Table) -> String {
    table
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The flow table (one row per flow, `--by connection`); `wide` adds the interface, its role
/// and the interface's direction, and shows exact counts.
pub fn flows(flows: &[FlowRecord], wide: bool, now: SystemTime, width: Option<u16>) -> String {
    flows_with_tcp(flows, wide, now, width, None)
}

/// [`flows`], with STATE, RTT, RETRANS and RESETS columns from `tcp` (wide only) when given.
pub fn flows_with_tcp(
    flows: &[FlowRecord],
    wide: bool,
    now: SystemTime,
    width: Option<u16>,
    tcp: Option<&crate::tcpconn::TcpConnTable>,
) -> String {
    let tcp = tcp.filter(|_| wide);
    let mut header = vec!["NODE"];
    let mut caps: Vec<u16> = vec![12];
    if wide {
        header.extend(["INTERFACE", "ROLE", "IF-DIRECTION"]);
        caps.extend([9, 6, 7]);
    }
    // Cluster mode names the ends: the pod, and the peer it talks to.
    let named = flows
        .iter()
        .any(|f| f.src_name.is_some() || f.dst_name.is_some());
    if named {
        header.extend(["POD", "PEER"]);
        caps.extend([16, 16]);
    }
    header.extend([
        "DIRECTION",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "PACKETS",
        "BYTES",
        "FLAGS",
        "FIRST SEEN",
        "LAST SEEN",
    ]);
    caps.extend([9, 6, 21, 21, 7, 10, 8, 6, 6]);
    if tcp.is_some() {
        header.extend(["STATE", "RTT", "RETRANS", "RESETS"]);
        caps.extend([11, 7, 7, 6]);
    }
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            let mut row = vec![f.node.clone()];
            if wide {
                row.extend([
                    f.interface.clone(),
                    f.interface_role
                        .map_or("-", orb8_flowspec::InterfaceRole::name)
                        .to_string(),
                    direction_name(f.interface_direction).to_string(),
                ]);
            }
            if named {
                let (pod, peer) = crate::enrich::pod_and_peer(f);
                let label = |e: Option<&crate::flow::Endpoint>| {
                    e.map_or_else(|| "-".to_string(), |e| e.label())
                };
                row.extend([label(pod), label(peer)]);
            }
            let proto = if f.fragment {
                format!("{} (frag)", f.protocol_text())
            } else {
                f.protocol_text()
            };
            let flags = f.tcp_flag_letters();
            let (packets, bytes) = if wide {
                (f.packets.to_string(), f.bytes.to_string())
            } else {
                (human_count(f.packets), human_bytes(f.bytes))
            };
            row.extend([
                direction_name(f.direction).to_string(),
                proto,
                f.src_endpoint(),
                f.dst_endpoint(),
                packets,
                bytes,
                if flags.is_empty() { "-".into() } else { flags },
                age(f.first_seen_nanos, now),
                age(f.last_seen_nanos, now),
            ]);
            if let Some(t) = tcp {
                match t
                    .find(f)
                    .filter(|_| f.protocol == orb8_flowspec::Protocol::TCP)
                {
                    Some(c) => row.extend([
                        c.state.clone(),
                        if c.srtt_us == 0 {
                            "-".into()
                        } else {
                            format!("{:.3}ms", f64::from(c.srtt_us) / 1000.0)
                        },
                        c.retransmits.to_string(),
                        c.resets.to_string(),
                    ]),
                    None => row.extend(["-", "-", "-", "-"].map(String::from)),
                }
            }
            row
        })
        .collect();
    let mut table = new_table(&header, width);
    table.add_rows(rows.iter().cloned());
    let offset = if wide { 3 } else { 0 } + if named { 2 } else { 0 };
    right_align(&mut table, &[5 + offset, 6 + offset]);
    set_minimums(&mut table, &rows, &header, &caps);
    finish(&table)
}

/// The grouped flow table, one row per observed end, peer, port, protocol and direction;
/// `wide` adds the node and shows exact counts. The first column is `POD` when the ends have
/// names (cluster mode), `LOCAL` (an address) otherwise.
pub fn groups(groups: &[FlowGroup], wide: bool, now: SystemTime, width: Option<u16>) -> String {
    let named = groups.iter().any(|g| g.named);
    let mut header = Vec::new();
    let mut caps: Vec<u16> = Vec::new();
    if wide {
        header.push("NODE");
        caps.push(12);
    }
    header.extend([
        if named { "POD" } else { "LOCAL" },
        "PEER",
        "PORT",
        "PROTO",
        "DIRECTION",
        "CONNS",
        "PACKETS",
        "BYTES",
        "FLAGS",
        "RESETS",
        "FAILED",
        "FIRST SEEN",
        "LAST SEEN",
    ]);
    caps.extend([24, 24, 5, 6, 9, 5, 7, 10, 8, 6, 6, 6, 6]);
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let mut row = Vec::new();
            if wide {
                row.push(g.key.node.clone());
            }
            let (packets, bytes) = if wide {
                (g.packets.to_string(), g.bytes.to_string())
            } else {
                (human_count(g.packets), human_bytes(g.bytes))
            };
            let flags = g.tcp_flag_letters();
            row.extend([
                g.key.pod.clone(),
                g.key.peer.clone(),
                g.key
                    .port
                    .map_or_else(|| "-".to_string(), |p| p.to_string()),
                g.key.protocol.to_string(),
                direction_name(g.key.direction).to_string(),
                g.connections.to_string(),
                packets,
                bytes,
                if flags.is_empty() { "-".into() } else { flags },
                if g.key.protocol == orb8_flowspec::Protocol::TCP {
                    g.resets.to_string()
                } else {
                    "-".into()
                },
                if g.key.protocol == orb8_flowspec::Protocol::TCP {
                    g.failed.to_string()
                } else {
                    "-".into()
                },
                age(g.first_seen_nanos, now),
                age(g.last_seen_nanos, now),
            ]);
            row
        })
        .collect();
    let mut table = new_table(&header, width);
    table.add_rows(rows.iter().cloned());
    let offset = usize::from(wide);
    right_align(
        &mut table,
        &[
            2 + offset,
            5 + offset,
            6 + offset,
            7 + offset,
            9 + offset,
            10 + offset,
        ],
    );
    set_minimums(&mut table, &rows, &header, &caps);
    finish(&table)
}

/// The status table, one row per agent; `wide` lists interface names and drop reasons.
pub fn statuses(agents: &[StatusView], wide: bool, width: Option<u16>) -> String {
    let header = [
        "NODE",
        "MODE",
        "VERSION",
        "PROTOCOL",
        "KERNEL",
        "BTF",
        "ATTACH",
        "INTERFACES",
        "FLOWS",
        "EVICTIONS",
        "DROPS",
        "UPTIME",
    ];
    let mut table = new_table(&header, width);
    for a in agents {
        let interfaces = if wide {
            let names: Vec<&str> = a.interfaces.iter().map(|i| i.name.as_str()).collect();
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(",")
            }
        } else {
            a.interfaces.len().to_string()
        };
        let detail: Vec<String> = a
            .drops
            .iter()
            .filter(|d| d.count > 0)
            .map(|d| format!("{}/{}={}", d.stage, d.reason, d.count))
            .collect();
        let drops = if wide && !detail.is_empty() {
            format!("{} ({})", a.drops_total, detail.join(", "))
        } else {
            a.drops_total.to_string()
        };
        table.add_row(vec![
            a.node.clone(),
            a.mode.clone(),
            a.agent_version.clone(),
            a.protocol_version.to_string(),
            a.kernel.clone(),
            if a.btf { "yes" } else { "no" }.to_string(),
            a.attach_mode.clone(),
            interfaces,
            a.active_flows.to_string(),
            a.flow_map_evictions.to_string(),
            drops,
            a.uptime.clone(),
        ]);
    }
    finish(&table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::view::AgentStatus;
    use orb8_proto::{Counters, DropCounter, DropStage, GetStatusResponse, Interface};
    use std::time::{Duration, UNIX_EPOCH};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_005)
    }

    #[test]
    fn flow_table_has_every_column() {
        let out = flows(&[FlowRecord::test_flow()], false, now(), Some(200));
        let mut lines = out.lines();
        let header = lines.next().expect("header");
        for col in [
            "NODE",
            "DIRECTION",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "PACKETS",
            "BYTES",
            "FLAGS",
            "FIRST SEEN",
            "LAST SEEN",
        ] {
            assert!(header.contains(col), "missing {col} in {header:?}");
        }
        assert!(!header.contains("INTERFACE"));
        assert!(header.starts_with("NODE"), "no leading border: {header:?}");
        let row = lines.next().expect("one row");
        for cell in [
            "node-a",
            "egress",
            "udp",
            "10.0.0.1:40000",
            "10.0.0.2:53",
            "150 B",
            "4.9s",
            "4.0s",
        ] {
            assert!(row.contains(cell), "missing {cell} in {row:?}");
        }
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn wide_flow_table_adds_the_interface_and_exact_counts() {
        let mut f = FlowRecord::test_flow();
        f.bytes = 123_456_789;
        let out = flows(&[f], true, now(), Some(200));
        let header = out.lines().next().expect("header");
        assert!(header.contains("INTERFACE"), "{header}");
        assert!(header.contains("ROLE"), "{header}");
        assert!(header.contains("IF-DIRECTION"), "{header}");
        assert!(out.contains("eth0"));
        assert!(out.contains("uplink"), "{out}");
        assert!(out.contains("123456789"));
        let narrow = flows(&[FlowRecord::test_flow()], false, now(), Some(200));
        assert!(!narrow.contains("eth0"));
    }

    #[test]
    fn tables_fit_the_width_without_breaking_addresses() {
        let mut f = FlowRecord::test_flow();
        f.node = "a-rather-long-node-name.example.internal".into();
        let out = flows(std::slice::from_ref(&f), false, now(), Some(100));
        for line in out.lines() {
            assert!(line.chars().count() <= 100, "{line:?} is wider than 100");
        }
        assert!(out.contains("10.0.0.1:40000"), "{out}");
        assert!(out.contains("10.0.0.2:53"), "{out}");

        let roomy = flows(std::slice::from_ref(&f), false, now(), Some(250));
        assert_eq!(roomy.lines().count(), 2, "no wrapping with room: {roomy}");

        let cramped = flows(&[f], true, now(), Some(40));
        assert!(cramped.contains("10.0.0.1:40000"), "{cramped}");
        assert!(cramped.contains("DIRECTION"), "{cramped}");
    }

    #[test]
    fn grouped_table_has_one_row_per_peer_and_port() {
        let mut a = FlowRecord::test_flow();
        a.src_name = Some(crate::flow::Endpoint::Pod {
            namespace: "shop".into(),
            name: "client".into(),
        });
        a.dst_name = Some(crate::flow::Endpoint::Service {
            namespace: "kube-system".into(),
            name: "dns".into(),
        });
        let mut b = a.clone();
        b.src_port = 40001;
        let rows = crate::group::group(&[a, b], orb8_flowspec::SortKey::Bytes, None);
        let out = groups(&rows, false, now(), Some(200));
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        assert_eq!(
            header,
            vec![
                "POD",
                "PEER",
                "PORT",
                "PROTO",
                "DIRECTION",
                "CONNS",
                "PACKETS",
                "BYTES",
                "FLAGS",
                "RESETS",
                "FAILED",
                "FIRST",
                "SEEN",
                "LAST",
                "SEEN"
            ]
        );
        let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
        assert_eq!(
            row,
            vec![
                "shop/client",
                "svc:kube-system/dns",
                "53",
                "udp",
                "egress",
                "2",
                "4",
                "300",
                "B",
                "-",
                "-",
                "-",
                "4.9s",
                "4.0s"
            ]
        );
        assert_eq!(lines.next(), None);
        let wide = groups(&rows, true, now(), Some(200));
        assert!(wide.starts_with("NODE"), "{wide}");
        let local = crate::group::group(
            &[FlowRecord::test_flow()],
            orb8_flowspec::SortKey::Bytes,
            None,
        );
        assert!(groups(&local, false, now(), Some(200)).starts_with("LOCAL"));
    }

    #[test]
    fn status_table_sums_drops_and_details_them_in_wide() {
        let agent = AgentStatus {
            address: "127.0.0.1:1".into(),
            mode: "direct".into(),
            status: GetStatusResponse {
                node: "node-a".into(),
                agent_version: "0.1.0".into(),
                protocol_version: 1,
                kernel_release: "6.18.0".into(),
                arch: "x86_64".into(),
                btf_present: true,
                attach_mode: "tcx".into(),
                interfaces: vec![
                    Interface {
                        index: 2,
                        name: "eth0".into(),
                        role: "uplink".into(),
                    },
                    Interface {
                        index: 7,
                        name: "veth1".into(),
                        role: "veth".into(),
                    },
                ],
                programs: vec!["tc_ingress".into()],
                counters: Some(Counters {
                    active_flows: 12,
                    flow_map_evictions: 3,
                    drops: vec![
                        DropCounter {
                            stage: DropStage::Kernel as i32,
                            reason: "ringbuf_full".into(),
                            count: 4,
                        },
                        DropCounter {
                            stage: DropStage::Client as i32,
                            reason: "slow_client".into(),
                            count: 1,
                        },
                        DropCounter {
                            stage: DropStage::Agent as i32,
                            reason: "queue_overflow".into(),
                            count: 0,
                        },
                    ],
                    ..Default::default()
                }),
                uptime_ms: 3_723_000,
                gpu: None,
            },
        };
        let view = StatusView::from(&agent);
        let out = statuses(std::slice::from_ref(&view), false, Some(200));
        let header = out.lines().next().expect("header");
        for col in [
            "NODE",
            "MODE",
            "VERSION",
            "PROTOCOL",
            "KERNEL",
            "BTF",
            "ATTACH",
            "INTERFACES",
            "FLOWS",
            "EVICTIONS",
            "DROPS",
            "UPTIME",
        ] {
            assert!(header.contains(col), "missing {col}");
        }
        let row = out.lines().nth(1).expect("row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            vec![
                "node-a", "direct", "0.1.0", "1", "6.18.0", "yes", "tcx", "2", "12", "3", "5",
                "1h", "2m", "3s"
            ]
        );
        let wide = statuses(&[view], true, Some(250));
        assert!(wide.contains("eth0,veth1"), "{wide}");
        assert!(
            wide.contains("5 (kernel/ringbuf_full=4, client/slow_client=1)"),
            "{wide}"
        );
    }
}
