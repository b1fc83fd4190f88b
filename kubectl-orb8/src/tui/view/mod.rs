//! Draws a [`TopState`]: a title line, the talker table (a pod's peers and connections when
//! drilled in), room on wide screens for the DNS-error and drop panes, a status bar (agents,
//! new flows per second, losses) and the key line; `?` opens the key list over it.
//!
//! Colours are used only to mark (resets and lost agents in red, the selection reversed), so
//! every text reads on a light or a dark terminal; nothing depends on the terminal's size
//! beyond dropping columns and panes that do not fit.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row as TableRow, Table, TableState, Wrap};

use crate::flow::{human_bytes, human_count};
use crate::tui::state::{AgentHealth, Row, SyscallPane, TopState};

/// Widths at and above this show the DNS-error and drop panes beside the table.
pub const SIDE_PANES_FROM: u16 = 120;

/// The keys, as the help overlay lists them.
pub const KEYS: &[(&str, &str)] = &[
    ("q, Ctrl-C", "quit (the agents are removed)"),
    ("?", "this help (any key closes it)"),
    ("/", "filter by pod, peer or port (Enter keeps, Esc clears)"),
    ("s", "next sort key"),
    (
        "b p n r",
        "sort by bytes/s, packets/s, new connections, resets",
    ),
    ("space", "pause / resume the display"),
    ("Up Down j k", "select a row"),
    (
        "Enter",
        "drill into the selected pod: its peers and connections",
    ),
    ("y", "in a pod: its syscall summary (trace syscall, 5 s)"),
    ("Esc", "back out of a pod; clear the filter"),
];

const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last `width` values as a text sparkline, scaled to their largest (blank when all zero).
pub fn sparkline(history: &[u64], width: usize) -> String {
    let recent = &history[history.len().saturating_sub(width)..];
    let max = recent.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return " ".repeat(recent.len());
    }
    recent
        .iter()
        .map(|&v| {
            if v == 0 {
                ' '
            } else {
                // 1..=max onto the 8 levels, so any traffic shows.
                let level = ((v as u128 * 8 - 1) / max as u128) as usize;
                SPARKS[level.min(7)]
            }
        })
        .collect()
}

/// Bytes per second as shown (`512 B/s`, `1.5 KiB/s`).
pub fn byte_rate(per_sec: f64) -> String {
    format!("{}/s", human_bytes(per_sec.round() as u64))
}

/// Packets per second as shown (`12`, `1.2k`).
pub fn packet_rate(per_sec: f64) -> String {
    human_count(per_sec.round() as u64)
}

/// Draws the whole screen.
pub fn render(frame: &mut Frame, state: &TopState) {
    let area = frame.area();
    let [title, body, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(title_line(state)), title);

    let (main, side) = if area.width >= SIDE_PANES_FROM {
        let [m, s] = Layout::horizontal([Constraint::Min(80), Constraint::Length(36)]).areas(body);
        (m, Some(s))
    } else {
        (body, None)
    };
    render_main(frame, state, main);
    if let Some(side) = side {
        render_side(frame, side);
    }
    frame.render_widget(Paragraph::new(status_line(state)), status);
    frame.render_widget(Paragraph::new(key_line(state)), keys);
    if state.help {
        render_help(frame, area);
    }
}

fn title_line(state: &TopState) -> Line<'static> {
    let mut spans = vec![
        Span::styled("orb8 top", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!("  {}", state.scope)),
        Span::raw(format!("  sort: {}", state.sort.name())),
    ];
    if let Some(pod) = &state.drill {
        spans.push(Span::raw(format!("  pod: {pod}")));
    }
    if state.editing_filter || !state.filter.is_empty() {
        let cursor = if state.editing_filter { "_" } else { "" };
        spans.push(Span::raw(format!("  filter: {}{cursor}", state.filter)));
    }
    if state.paused() {
        spans.push(Span::styled(
            "  PAUSED",
            Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        ));
    }
    Line::from(spans)
}

fn render_main(frame: &mut Frame, state: &TopState, area: Rect) {
    if state.drill.is_none() {
        render_talkers(frame, state, area, "top talkers");
        return;
    }
    let syscall_rows = match &state.syscalls {
        None => 0,
        Some(SyscallPane::Done(lines)) => (lines.len() as u16 + 2).min(area.height / 2),
        Some(_) => 3,
    };
    let [peers, conns, sys] = Layout::vertical([
        Constraint::Percentage(50),
        Constraint::Min(3),
        Constraint::Length(syscall_rows),
    ])
    .areas(area);
    render_talkers(frame, state, peers, "peers");
    render_connections(frame, state, conns);
    if let Some(pane) = &state.syscalls {
        render_syscalls(frame, pane, sys);
    }
}

fn render_talkers(frame: &mut Frame, state: &TopState, area: Rect, title: &str) {
    let rows = state.rows();
    let wide = area.width >= 100;
    let spark_width = if wide { 20 } else { 8 };
    let header = if wide {
        vec![
            "POD", "PEER", "SERVICE", "BYTES/S", "PKTS/S", "CONNS", "NEW", "RSTS", "HISTORY",
        ]
    } else {
        vec![
            "POD", "PEER", "SERVICE", "BYTES/S", "PKTS/S", "RSTS", "HISTORY",
        ]
    };
    let widths: Vec<Constraint> = if wide {
        vec![
            Constraint::Fill(2),
            Constraint::Fill(2),
            Constraint::Length(10),
            Constraint::Length(11),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(spark_width as u16),
        ]
    } else {
        vec![
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(4),
            Constraint::Length(spark_width as u16),
        ]
    };
    let table_rows: Vec<TableRow> = rows
        .iter()
        .map(|r| talker_row(r, wide, spark_width))
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(table_rows, widths)
        .header(TableRow::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(Block::bordered().title(format!(" {title} ({}) ", rows.len())));
    let mut selection = TableState::default().with_selected((!empty).then_some(state.selected));
    frame.render_stateful_widget(table, area, &mut selection);
    if empty {
        let msg = if state.filter.is_empty() {
            "waiting for traffic (rates appear after the second refresh)"
        } else {
            "nothing matches the filter"
        };
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width.saturating_sub(4),
            height: 1.min(area.height.saturating_sub(3)),
        };
        frame.render_widget(Paragraph::new(msg), inner);
    }
}

fn talker_row(r: &Row, wide: bool, spark_width: usize) -> TableRow<'static> {
    let rst_style = if r.resets > 0 {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    let mut cells = vec![
        Cell::from(r.key.pod.clone()),
        Cell::from(r.key.peer.clone()),
        Cell::from(r.key.service()),
        Cell::from(byte_rate(r.bytes_per_sec)),
        Cell::from(packet_rate(r.packets_per_sec)),
    ];
    if wide {
        cells.push(Cell::from(r.connections.to_string()));
        cells.push(Cell::from(r.new_connections.to_string()));
    }
    cells.push(Cell::from(r.resets.to_string()).style(rst_style));
    cells.push(Cell::from(sparkline(&r.history, spark_width)));
    TableRow::new(cells)
}

fn render_connections(frame: &mut Frame, state: &TopState, area: Rect) {
    let conns = state.drill_connections();
    let lines: Vec<Line> = conns
        .iter()
        .map(|c| {
            let f = &c.flow;
            let flags = f.tcp_flag_letters();
            Line::from(format!(
                "{} {} {} -> {}  {} pkts {}{}",
                f.node,
                f.protocol_text(),
                f.src_endpoint(),
                f.dst_endpoint(),
                human_count(f.packets),
                human_bytes(f.bytes),
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" [{flags}]")
                }
            ))
        })
        .collect();
    let block = Block::bordered().title(format!(" connections ({}) ", conns.len()));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn render_syscalls(frame: &mut Frame, pane: &SyscallPane, area: Rect) {
    let (title, lines): (String, Vec<Line>) = match pane {
        SyscallPane::Running(pod) => (
            format!(" syscalls of {pod} "),
            vec![Line::from("tracing for 5 s...")],
        ),
        SyscallPane::Done(lines) => (
            " syscalls ".into(),
            lines.iter().map(|l| Line::from(l.clone())).collect(),
        ),
        SyscallPane::Failed(why) => (
            " syscalls ".into(),
            vec![Line::from(Span::styled(
                why.clone(),
                Style::default().fg(Color::Red),
            ))],
        ),
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

fn render_side(frame: &mut Frame, area: Rect) {
    let [dns, drops] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let pane = |title: &'static str, what: &'static str| {
        Paragraph::new(what)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(title))
    };
    frame.render_widget(
        pane(" DNS errors ", "not collected by this version's agents"),
        dns,
    );
    frame.render_widget(
        pane(" drops ", "not collected by this version's agents"),
        drops,
    );
}

fn status_line(state: &TopState) -> Line<'static> {
    let mut spans = Vec::new();
    let running = state
        .agents
        .values()
        .filter(|h| **h == AgentHealth::Running)
        .count();
    spans.push(Span::raw(format!(
        "agents {running}/{}",
        state.agents.len()
    )));
    for (name, health) in &state.agents {
        if let AgentHealth::Lost(_) = health {
            spans.push(Span::styled(
                format!(" {name}:lost"),
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            ));
        }
    }
    spans.push(Span::raw(format!(
        " | {:.0} new flows/s",
        state.new_flows_per_sec()
    )));
    if state.losses.is_empty() {
        spans.push(Span::raw(" | no losses"));
    } else {
        let lost: Vec<String> = state
            .losses
            .iter()
            .map(|((stage, reason), n)| format!("{stage}/{reason} {n}"))
            .collect();
        spans.push(Span::styled(
            format!(" | lost: {}", lost.join(", ")),
            Style::default().fg(Color::Red),
        ));
    }
    if let Some(e) = &state.refresh_error {
        spans.push(Span::styled(
            format!(" | {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    Line::from(spans)
}

fn key_line(state: &TopState) -> Line<'static> {
    let text = if state.editing_filter {
        "type to filter  Enter keep  Esc clear"
    } else if state.drill.is_some() {
        "q quit  ? help  y syscalls  Esc back  s sort  / filter  space pause"
    } else {
        "q quit  ? help  Enter drill in  s sort  / filter  space pause"
    };
    Line::from(Span::styled(
        text,
        Style::default().add_modifier(Modifier::DIM),
    ))
}

fn render_help(frame: &mut Frame, area: Rect) {
    let width = area.width.min(76);
    let height = (KEYS.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:>12}  "),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys ")),
        popup,
    );
}

#[cfg(test)]
mod tests;
