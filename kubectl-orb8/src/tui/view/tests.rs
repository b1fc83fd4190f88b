//! The view drawn into ratatui's `TestBackend` at 80x24 and 200x50, read back as text.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use orb8_flowspec::Protocol;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::*;
use crate::flow::{Endpoint, FlowRecord};
use crate::tui::state::{Key, SyscallPane, TopState};

fn pod(s: &str) -> Endpoint {
    let (ns, name) = s.split_once('/').unwrap();
    Endpoint::Pod {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn flow(src: &str, dst: &str, sport: u32, port: u32, bytes: u64, packets: u64) -> FlowRecord {
    let mut f = FlowRecord::test_flow();
    f.src = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    f.dst = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
    f.protocol = Protocol::TCP;
    f.src_port = sport;
    f.dst_port = port;
    f.bytes = bytes;
    f.packets = packets;
    f.src_name = Some(pod(src));
    f.dst_name = Some(pod(dst));
    f
}

/// checkout → ledger at 2048 B/s over 4 packets/s; checkout → cache 100 B/s with a reset.
fn state() -> TopState {
    let mut s = TopState::new("-n shop", &["node-a".into(), "node-b".into()]);
    s.refresh(
        vec![
            flow("shop/checkout", "pay/ledger", 40000, 8080, 0, 0),
            flow("shop/checkout", "shop/cache", 40001, 6379, 0, 0),
        ],
        Duration::from_secs(1),
    );
    let mut cache = flow("shop/checkout", "shop/cache", 40001, 6379, 100, 2);
    cache.tcp_flags = 0x14;
    s.refresh(
        vec![
            flow("shop/checkout", "pay/ledger", 40000, 8080, 2048, 4),
            cache,
        ],
        Duration::from_secs(1),
    );
    s
}

fn screen(state: &TopState, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| render(f, state)).unwrap();
    let buf = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect()
}

fn line_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{}", lines.join("\n")))
}

#[test]
fn at_80x24_the_talkers_status_and_keys_fit() {
    let lines = screen(&state(), 80, 24);
    assert!(
        lines[0].starts_with("orb8 top  -n shop  sort: bytes/s"),
        "{}",
        lines[0]
    );
    let header = line_with(&lines, "POD");
    for col in ["PEER", "SERVICE", "BYTES/S", "PKTS/S", "RSTS", "HISTORY"] {
        assert!(header.contains(col), "{header}");
    }
    // Largest first: the ledger row, then the cache row with its reset.
    let ledger = lines.iter().position(|l| l.contains("pay/ledger")).unwrap();
    let cache = lines.iter().position(|l| l.contains("shop/cache")).unwrap();
    assert!(ledger < cache);
    let row = &lines[ledger];
    assert!(
        row.contains("shop/checkout") && row.contains("tcp/8080"),
        "{row}"
    );
    assert!(row.contains("2.0 KiB/s") && row.contains(" 4 "), "{row}");
    assert!(row.contains('█'), "sparkline: {row}");
    let row = &lines[cache];
    assert!(row.contains("100 B/s") && row.contains("tcp/6379"), "{row}");
    assert_eq!(
        lines[22], "agents 2/2 | 0 new flows/s | no losses",
        "status bar"
    );
    assert!(lines[23].starts_with("q quit  ? help"), "{}", lines[23]);
    // No side panes at this width.
    assert!(!lines.iter().any(|l| l.contains("DNS errors")));
}

#[test]
fn at_200x50_the_wide_columns_and_side_panes_show() {
    let mut s = state();
    s.lost("kernel", "ringbuf_full", 7);
    s.agent_lost("node-b", "stream ended");
    let lines = screen(&s, 200, 50);
    let header = line_with(&lines, "POD");
    assert!(
        header.contains("CONNS") && header.contains("NEW"),
        "{header}"
    );
    line_with(&lines, " DNS errors ");
    line_with(&lines, " drops ");
    assert_eq!(
        lines[48],
        "agents 1/2 node-b:lost | 0 new flows/s | lost: kernel/ringbuf_full 7"
    );
}

#[test]
fn drilled_in_shows_peers_connections_and_the_syscall_pane() {
    let mut s = state();
    s.on_key(Key::Enter);
    s.syscalls = Some(SyscallPane::Done(vec![
        "SYSCALL  CALLS  ERRORS".into(),
        "kill        37       0".into(),
    ]));
    let lines = screen(&s, 80, 24);
    assert!(lines[0].contains("pod: shop/checkout"), "{}", lines[0]);
    assert!(line_with(&lines, " peers (2) ").contains("peers"));
    let conn = line_with(&lines, "10.0.0.2:8080");
    assert!(
        conn.contains("node-a tcp 10.0.0.1:40000 -> 10.0.0.2:8080  4 pkts 2.0 KiB"),
        "{conn}"
    );
    assert!(line_with(&lines, "kill").contains("37"));
    assert!(lines[23].contains("y syscalls"), "{}", lines[23]);
}

#[test]
fn help_filter_and_pause_are_visible() {
    let mut s = state();
    s.on_key(Key::Char('?'));
    let lines = screen(&s, 80, 24);
    for (k, what) in KEYS {
        let l = line_with(&lines, what);
        assert!(l.contains(k), "{l}");
    }
    s.on_key(Key::Char('x'));
    s.on_key(Key::Char('/'));
    for c in "zzz".chars() {
        s.on_key(Key::Char(c));
    }
    let lines = screen(&s, 80, 24);
    assert!(lines[0].contains("filter: zzz_"), "{}", lines[0]);
    line_with(&lines, "nothing matches the filter");
    s.on_key(Key::Esc);
    s.on_key(Key::Char(' '));
    assert!(screen(&s, 80, 24)[0].contains("PAUSED"));
}

#[test]
fn tiny_terminals_do_not_panic() {
    let mut s = state();
    s.on_key(Key::Char('?'));
    for (w, h) in [(1, 1), (10, 4), (20, 5), (80, 6)] {
        screen(&s, w, h);
    }
}

#[test]
fn sparklines_scale_to_their_largest_value() {
    assert_eq!(sparkline(&[0, 1, 4, 8], 4), " ▁▄█");
    assert_eq!(sparkline(&[5, 0, 0], 2), "  ");
    assert_eq!(sparkline(&[1, 2, 3], 8), "▃▆█");
    assert_eq!(byte_rate(1536.0), "1.5 KiB/s");
    assert_eq!(packet_rate(1234.4), "1.2k");
}
