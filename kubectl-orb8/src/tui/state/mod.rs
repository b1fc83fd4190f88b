//! Everything `top` shows, as plain data fed by events: flow-table snapshots (rates), the
//! merged event stream (new flows per second, losses, lost agents) and keys (sort, filter,
//! pause, drill-down, help). No terminal here; the view renders a [`TopState`] and tests drive
//! one directly.

pub mod talkers;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::flow::FlowRecord;
use talkers::{Connection, Owner, Talker, TalkerKey, Talkers};

/// Refreshes kept per talker: the sparkline's span (two minutes at the default refresh).
pub const WINDOW: usize = 120;

/// What the talker table is ordered by (largest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopSort {
    /// Bytes per second.
    Bytes,
    /// Packets per second.
    Packets,
    /// New connections in the latest refresh.
    NewConnections,
    /// Connections that carried a RST.
    Resets,
}

impl TopSort {
    /// The next key (`s` cycles).
    pub fn next(self) -> TopSort {
        match self {
            TopSort::Bytes => TopSort::Packets,
            TopSort::Packets => TopSort::NewConnections,
            TopSort::NewConnections => TopSort::Resets,
            TopSort::Resets => TopSort::Bytes,
        }
    }

    /// As shown in the title.
    pub fn name(self) -> &'static str {
        match self {
            TopSort::Bytes => "bytes/s",
            TopSort::Packets => "packets/s",
            TopSort::NewConnections => "new connections",
            TopSort::Resets => "resets",
        }
    }
}

/// How an agent is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentHealth {
    /// Answering.
    Running,
    /// Its stream ended or a query failed: why.
    Lost(String),
}

/// A key press, as `top` understands it (the command maps terminal keys onto these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Backspace.
    Backspace,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Ctrl-C.
    CtrlC,
}

/// What the command must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Leave `top`.
    Quit,
    /// Run a syscall summary of this pod (or process) and show it.
    SyscallSummary(Owner),
}

/// The syscall-summary pane of the drilled-in pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyscallPane {
    /// Running for the pod named.
    Running(String),
    /// Its output lines.
    Done(Vec<String>),
    /// Why it failed (one line).
    Failed(String),
}

/// One row of the talker table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Who.
    pub key: TalkerKey,
    /// Bytes per second (latest refresh).
    pub bytes_per_sec: f64,
    /// Packets per second.
    pub packets_per_sec: f64,
    /// Connections in the latest snapshot.
    pub connections: u64,
    /// New connections in the latest refresh.
    pub new_connections: u64,
    /// Connections that carried a RST.
    pub resets: u64,
    /// Bytes per refresh, oldest first.
    pub history: Vec<u64>,
    /// What the pod end is.
    pub owner: Owner,
}

impl Row {
    fn of(t: &Talker) -> Row {
        Row {
            key: t.key.clone(),
            bytes_per_sec: t.bytes_per_sec(),
            packets_per_sec: t.packets_per_sec(),
            connections: t.connections,
            new_connections: t.latest().new_connections,
            resets: t.reset_connections,
            history: t.byte_history(),
            owner: t.owner.clone(),
        }
    }
}

/// Everything on the screen.
#[derive(Debug, Clone)]
pub struct TopState {
    /// Where the flows come from (`local`, or the namespaces asked for).
    pub scope: String,
    talkers: Talkers,
    /// A copy taken when paused; shown instead of the live talkers until resumed.
    frozen: Option<Talkers>,
    /// Agents by name.
    pub agents: BTreeMap<String, AgentHealth>,
    /// New flows per refresh (oldest first), from the event stream.
    new_flows: VecDeque<(u64, f64)>,
    new_flows_now: u64,
    /// Events lost, by (stage, reason).
    pub losses: BTreeMap<(String, String), u64>,
    /// Table order.
    pub sort: TopSort,
    /// Filter text (matches pod, peer or service, case-insensitive).
    pub filter: String,
    /// Typing into the filter.
    pub editing_filter: bool,
    /// Selected row of the table shown.
    pub selected: usize,
    /// The pod drilled into (its peers and connections).
    pub drill: Option<String>,
    /// The help overlay is open.
    pub help: bool,
    /// The drilled-in pod's syscall summary.
    pub syscalls: Option<SyscallPane>,
    /// One line about the last refresh that failed, if the latest did.
    pub refresh_error: Option<String>,
}

impl TopState {
    /// An empty state for agents `names`.
    pub fn new(scope: impl Into<String>, names: &[String]) -> TopState {
        TopState {
            scope: scope.into(),
            talkers: Talkers::new(WINDOW),
            frozen: None,
            agents: names
                .iter()
                .map(|n| (n.clone(), AgentHealth::Running))
                .collect(),
            new_flows: VecDeque::new(),
            new_flows_now: 0,
            losses: BTreeMap::new(),
            sort: TopSort::Bytes,
            filter: String::new(),
            editing_filter: false,
            selected: 0,
            drill: None,
            help: false,
            syscalls: None,
            refresh_error: None,
        }
    }

    /// Takes in a refresh: the merged flow tables and the time since the previous one.
    pub fn refresh(&mut self, flows: Vec<FlowRecord>, elapsed: Duration) {
        self.talkers.ingest(flows, elapsed);
        self.new_flows.push_back((
            std::mem::take(&mut self.new_flows_now),
            elapsed.as_secs_f64(),
        ));
        while self.new_flows.len() > WINDOW {
            self.new_flows.pop_front();
        }
        self.refresh_error = None;
        self.clamp_selection();
    }

    /// One new flow arrived on the event stream.
    pub fn new_flow(&mut self) {
        self.new_flows_now += 1;
    }

    /// Events were lost (`stage`, `reason`).
    pub fn lost(&mut self, stage: &str, reason: &str, count: u64) {
        *self
            .losses
            .entry((stage.to_string(), reason.to_string()))
            .or_default() += count;
    }

    /// An agent went away.
    pub fn agent_lost(&mut self, name: &str, why: &str) {
        self.agents
            .insert(name.to_string(), AgentHealth::Lost(why.to_string()));
    }

    /// New flows per second over the latest refresh.
    pub fn new_flows_per_sec(&self) -> f64 {
        match self.new_flows.back() {
            Some(&(n, secs)) if secs > 0.0 => n as f64 / secs,
            _ => 0.0,
        }
    }

    /// Whether the display is frozen.
    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    fn shown(&self) -> &Talkers {
        self.frozen.as_ref().unwrap_or(&self.talkers)
    }

    fn matches(&self, key: &TalkerKey) -> bool {
        if let Some(pod) = &self.drill
            && &key.pod != pod
        {
            return false;
        }
        if self.filter.is_empty() {
            return true;
        }
        let needle = self.filter.to_lowercase();
        [&key.pod, &key.peer, &key.service()]
            .iter()
            .any(|s| s.to_lowercase().contains(&needle))
    }

    /// The talker table as shown: filtered (and, drilled in, only that pod's peers), sorted
    /// by the sort key, largest first, ties in key order.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .shown()
            .all()
            .filter(|t| self.matches(&t.key))
            .map(Row::of)
            .collect();
        let sort = self.sort;
        let mut keyed: Vec<(f64, Row)> = rows
            .drain(..)
            .map(|r| {
                let v = match sort {
                    TopSort::Bytes => r.bytes_per_sec,
                    TopSort::Packets => r.packets_per_sec,
                    TopSort::NewConnections => r.new_connections as f64,
                    TopSort::Resets => r.resets as f64,
                };
                (v, r)
            })
            .collect();
        keyed.sort_by(|(va, a), (vb, b)| vb.total_cmp(va).then_with(|| a.key.cmp(&b.key)));
        keyed.into_iter().map(|(_, r)| r).collect()
    }

    /// The drilled-in pod's connections in the latest snapshot, largest first.
    pub fn drill_connections(&self) -> Vec<&Connection> {
        let Some(pod) = &self.drill else {
            return Vec::new();
        };
        let mut c: Vec<&Connection> = self
            .shown()
            .connections()
            .iter()
            .filter(|c| &c.key.pod == pod && self.matches(&c.key))
            .collect();
        c.sort_by(|a, b| {
            b.flow
                .bytes
                .cmp(&a.flow.bytes)
                .then_with(|| a.key.cmp(&b.key))
        });
        c
    }

    fn clamp_selection(&mut self) {
        let n = self.rows().len();
        self.selected = self.selected.min(n.saturating_sub(1));
    }

    /// Handles a key; says what the command must do.
    pub fn on_key(&mut self, key: Key) -> Action {
        if key == Key::CtrlC {
            return Action::Quit;
        }
        if self.editing_filter {
            match key {
                Key::Char(c) => self.filter.push(c),
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing_filter = false,
                Key::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                _ => {}
            }
            self.selected = 0;
            return Action::None;
        }
        if self.help {
            // Any key closes the help; `q` still quits.
            self.help = false;
            return if key == Key::Char('q') {
                Action::Quit
            } else {
                Action::None
            };
        }
        match key {
            Key::Char('q') => return Action::Quit,
            Key::Char('?') | Key::Char('h') => self.help = true,
            Key::Char('/') => self.editing_filter = true,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('b') => self.sort = TopSort::Bytes,
            Key::Char('p') => self.sort = TopSort::Packets,
            Key::Char('n') => self.sort = TopSort::NewConnections,
            Key::Char('r') => self.sort = TopSort::Resets,
            Key::Char(' ') => {
                self.frozen = match self.frozen.take() {
                    Some(_) => None,
                    None => Some(self.talkers.clone()),
                }
            }
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => self.selected += 1,
            Key::PageUp => self.selected = self.selected.saturating_sub(10),
            Key::PageDown => self.selected += 10,
            Key::Enter => {
                if self.drill.is_none()
                    && let Some(row) = self.rows().get(self.selected)
                {
                    self.drill = Some(row.key.pod.clone());
                    self.selected = 0;
                    self.syscalls = None;
                }
            }
            Key::Esc | Key::Backspace => {
                if self.drill.take().is_some() {
                    self.selected = 0;
                    self.syscalls = None;
                } else if !self.filter.is_empty() {
                    self.filter.clear();
                }
            }
            Key::Char('y') => {
                // The drilled-in pod's syscall summary (`trace syscall`).
                let owner = self.drill.as_ref().and_then(|pod| {
                    self.shown()
                        .all()
                        .find(|t| &t.key.pod == pod)
                        .map(|t| t.owner.clone())
                });
                match owner {
                    Some(Owner::None) => {
                        self.syscalls = Some(SyscallPane::Failed(
                            "no pod or process is known for this end".into(),
                        ));
                    }
                    Some(owner) if !matches!(self.syscalls, Some(SyscallPane::Running(_))) => {
                        self.syscalls =
                            Some(SyscallPane::Running(self.drill.clone().unwrap_or_default()));
                        return Action::SyscallSummary(owner);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        self.clamp_selection();
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Endpoint;
    use orb8_flowspec::Protocol;
    use std::net::{IpAddr, Ipv4Addr};

    const SEC: Duration = Duration::from_secs(1);

    /// A named flow `src_pod -> dst` on port `port`, carrying `bytes` in `packets` so far.
    fn named(pod: &str, peer: &str, sport: u32, port: u32, bytes: u64, packets: u64) -> FlowRecord {
        let mut f = FlowRecord::test_flow();
        f.src = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        f.dst = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        f.protocol = Protocol::TCP;
        f.src_port = sport;
        f.dst_port = port;
        f.bytes = bytes;
        f.packets = packets;
        let (ns, name) = pod.split_once('/').unwrap();
        f.src_name = Some(Endpoint::Pod {
            namespace: ns.into(),
            name: name.into(),
        });
        let (ns, name) = peer.split_once('/').unwrap();
        f.dst_name = Some(Endpoint::Pod {
            namespace: ns.into(),
            name: name.into(),
        });
        f
    }

    /// Two talkers: checkout→ledger (fast, few packets) and checkout→cache (slow, many
    /// packets, one reset).
    fn state() -> TopState {
        let mut s = TopState::new("-n shop", &["node-a".to_string()]);
        s.refresh(
            vec![
                named("shop/checkout", "pay/ledger", 40000, 8080, 0, 0),
                named("shop/checkout", "shop/cache", 40001, 6379, 0, 0),
            ],
            SEC,
        );
        let mut cache = named("shop/checkout", "shop/cache", 40001, 6379, 500, 50);
        cache.tcp_flags = 0x14;
        s.refresh(
            vec![
                named("shop/checkout", "pay/ledger", 40000, 8080, 9000, 6),
                cache,
            ],
            SEC,
        );
        s
    }

    fn peers(s: &TopState) -> Vec<String> {
        s.rows().iter().map(|r| r.key.peer.clone()).collect()
    }

    #[test]
    fn each_sort_key_orders_largest_first() {
        let mut s = state();
        assert_eq!(peers(&s), ["pay/ledger", "shop/cache"]);
        s.on_key(Key::Char('p'));
        assert_eq!(peers(&s), ["shop/cache", "pay/ledger"]);
        s.on_key(Key::Char('r'));
        assert_eq!(s.sort, TopSort::Resets);
        assert_eq!(peers(&s), ["shop/cache", "pay/ledger"]);
        s.on_key(Key::Char('s'));
        assert_eq!(s.sort, TopSort::Bytes);
        assert_eq!(s.rows()[0].bytes_per_sec, 9000.0);
    }

    #[test]
    fn the_filter_is_typed_and_matches_pod_peer_or_service() {
        let mut s = state();
        s.on_key(Key::Char('/'));
        for c in "6379".chars() {
            s.on_key(Key::Char(c));
        }
        assert_eq!(peers(&s), ["shop/cache"]);
        s.on_key(Key::Backspace);
        s.on_key(Key::Enter);
        assert!(!s.editing_filter);
        assert_eq!(s.filter, "637");
        // Escape clears a filter that is no longer being typed.
        s.on_key(Key::Esc);
        assert_eq!(peers(&s).len(), 2);
        // `q` while typing is text, not quit.
        s.on_key(Key::Char('/'));
        assert_eq!(s.on_key(Key::Char('q')), Action::None);
        assert_eq!(s.filter, "q");
        assert!(s.rows().is_empty());
    }

    #[test]
    fn pause_freezes_the_rows_until_resumed() {
        let mut s = state();
        s.on_key(Key::Char(' '));
        assert!(s.paused());
        s.refresh(
            vec![named("shop/checkout", "pay/ledger", 40000, 8080, 9100, 7)],
            SEC,
        );
        assert_eq!(s.rows()[0].bytes_per_sec, 9000.0);
        s.on_key(Key::Char(' '));
        assert!(!s.paused());
        assert_eq!(s.rows()[0].bytes_per_sec, 100.0);
    }

    #[test]
    fn drilling_in_shows_one_pods_peers_and_connections_and_asks_for_its_syscalls() {
        let mut s = state();
        s.refresh(
            vec![
                named("shop/checkout", "pay/ledger", 40000, 8080, 18000, 12),
                named("pay/ledger", "shop/db", 40100, 5432, 10, 1),
            ],
            SEC,
        );
        s.on_key(Key::Down);
        s.on_key(Key::Up);
        s.on_key(Key::Enter);
        assert_eq!(s.drill.as_deref(), Some("shop/checkout"));
        assert!(s.rows().iter().all(|r| r.key.pod == "shop/checkout"));
        let conns = s.drill_connections();
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].flow.dst_port, 8080);
        assert_eq!(
            s.on_key(Key::Char('y')),
            Action::SyscallSummary(Owner::Pod {
                namespace: "shop".into(),
                name: "checkout".into()
            })
        );
        assert_eq!(
            s.syscalls,
            Some(SyscallPane::Running("shop/checkout".into()))
        );
        // While it runs, another `y` starts nothing.
        assert_eq!(s.on_key(Key::Char('y')), Action::None);
        s.on_key(Key::Esc);
        assert_eq!(s.drill, None);
        assert_eq!(s.syscalls, None);
        assert_eq!(s.rows().len(), 3);
    }

    #[test]
    fn help_quit_and_selection_bounds() {
        let mut s = state();
        for _ in 0..5 {
            s.on_key(Key::Down);
        }
        assert_eq!(s.selected, 1);
        s.on_key(Key::Char('?'));
        assert!(s.help);
        assert_eq!(s.on_key(Key::Char('x')), Action::None);
        assert!(!s.help);
        assert_eq!(s.on_key(Key::Char('q')), Action::Quit);
        assert_eq!(s.on_key(Key::CtrlC), Action::Quit);
    }

    #[test]
    fn losses_new_flows_and_agents() {
        let mut s = state();
        s.new_flow();
        s.new_flow();
        s.lost("kernel", "ringbuf_full", 3);
        s.lost("kernel", "ringbuf_full", 2);
        s.agent_lost("node-a", "stream ended");
        s.refresh(Vec::new(), Duration::from_millis(500));
        assert_eq!(s.new_flows_per_sec(), 4.0);
        assert_eq!(
            s.losses.get(&("kernel".into(), "ringbuf_full".into())),
            Some(&5)
        );
        assert_eq!(
            s.agents.get("node-a"),
            Some(&AgentHealth::Lost("stream ended".into()))
        );
    }
}
