//! `kubectl orb8 trace network`: from every agent, the flows already active when the trace
//! starts (each once, marked), then new flows as they arrive.
//!
//! A text line names both ends when the client knows the cluster (`shop/checkout:40312 ->
//! pay/server:8080`, `svc:`/`host:` as in `flows`, `world(addr)`/`unknown(addr)` for addresses
//! nobody in the cluster owns); without a cluster (`--local`, `--agent`) it shows addresses, and
//! the process behind a veth when the agent found one. A line of an already-active flow starts
//! with `~`; its time is the flow's first packet and its counts are those so far.

use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, Stream, StreamExt as _};
use orb8_proto::{Event, StreamEventsRequest, event};

use orb8_flowspec::FlowFilterSpec;

use crate::cli::TraceNetworkArgs;
use crate::flow::{
    Endpoint, FlowRecord, direction_name, filter_to_wire, rfc3339_nanos, time_of_day,
};
use crate::interrupt::Interrupt;
use crate::k8s::directory::LiveDirectory;
use crate::merge::{GapCause, Merged, merge_events};
use crate::output::LiveOutput;
use crate::progress::warn;
use crate::render::{
    AgentLostLine, FlowView, GapLine, LineFormat, NewFlowLine, OutputFormat, record, serialise,
    value_record,
};
use crate::session::Session;
use crate::timing::Step;

/// Whether a flow was already active when the trace started or is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// In the agent's table when the stream opened (`active_flow`).
    Active,
    /// Created during the trace (`new_flow`).
    New,
}

impl Seen {
    /// The `event` value of its JSON line.
    fn event_name(self) -> &'static str {
        match self {
            Seen::Active => "active_flow",
            Seen::New => "new_flow",
        }
    }
}

/// One end of a flow as a text line shows it: its name when known (`ns/pod:port`), the address
/// inside `world(...)`/`unknown(...)` when nobody in the cluster owns it, the bare address
/// without a cluster.
fn end_text(
    name: Option<&Endpoint>,
    addr: Option<IpAddr>,
    port: u32,
    bare: String,
    ports: bool,
) -> String {
    let Some(name) = name else {
        return bare;
    };
    let shown = name.label_at(addr);
    if ports {
        format!("{shown}:{port}")
    } else {
        shown
    }
}

/// One flow as a line of text:
/// `22:13:20.123Z node-a eth0 egress udp 10.0.0.1:40000 -> 10.0.0.2:53 75 B`; a new flow's
/// time and bytes are its first packet's. An already-active flow's line starts with `~ ` and
/// shows its first packet's time and its bytes so far. Named ends replace addresses in cluster
/// mode.
pub fn text_line(seen: Seen, time_nanos: i64, flow: &FlowRecord) -> String {
    let ports = flow.protocol.has_ports() && !flow.fragment;
    let src = end_text(
        flow.src_name.as_ref(),
        flow.src,
        flow.src_port,
        flow.src_endpoint(),
        ports,
    );
    let dst = end_text(
        flow.dst_name.as_ref(),
        flow.dst,
        flow.dst_port,
        flow.dst_endpoint(),
        ports,
    );
    let mut line = format!(
        "{}{} {} {} {} {} {src} -> {dst} {} B",
        if seen == Seen::Active { "~ " } else { "" },
        time_of_day(time_nanos),
        flow.node,
        flow.interface,
        direction_name(flow.direction),
        flow.protocol_text(),
        flow.bytes,
    );
    let flags = flow.tcp_flag_letters();
    if !flags.is_empty() {
        line.push_str(&format!(" [{flags}]"));
    }
    if flow.fragment {
        line.push_str(" (fragment)");
    }
    let named = flow.src_name.is_some() || flow.dst_name.is_some();
    if let Some(o) = flow.netns_owner.as_ref().filter(|_| !named) {
        line.push_str(&format!(" ({}[{}])", o.comm, o.pid));
    }
    line
}

/// The longest a reported loss waits for its stderr line while more of the same kind come.
const LOSS_LINE_EVERY: Duration = Duration::from_secs(1);

/// Says losses of one trace's `what` (`events`, `drop events`) on stderr without flooding it:
/// the first loss of a kind (node, stage and reason) at once, then at most one line a second
/// per kind, summing what was lost since; a burst that loses events in many small gaps is a
/// few lines, not hundreds. Sequence jumps (a bug somewhere) are said each time. What is still
/// pending is said once due ([`LossLines::tick`], a branch of the trace's select loop, so a
/// quiet stream still has its last loss said within a second or so), and always when this is
/// dropped (the trace's end, an error included): nothing reported is left unsaid.
pub struct LossLines {
    what: &'static str,
    pending: Vec<PendingLoss>,
    tick: tokio::time::Interval,
}

struct PendingLoss {
    node: String,
    cause: GapCause,
    lost: u64,
    said_at: Instant,
}

impl LossLines {
    /// Loss lines for a trace of `what`.
    pub fn new(what: &'static str) -> Self {
        let mut tick = tokio::time::interval(LOSS_LINE_EVERY / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        LossLines {
            what,
            pending: Vec::new(),
            tick,
        }
    }

    /// The lines to say now for a loss of `lost` at `now` (none while its kind waits).
    fn report_at(&mut self, node: &str, lost: u64, cause: &GapCause, now: Instant) -> Vec<String> {
        if matches!(cause, GapCause::SeqJump { .. }) {
            return vec![cause.line(node, lost, self.what)];
        }
        match self
            .pending
            .iter_mut()
            .find(|p| p.node == node && p.cause == *cause)
        {
            Some(p) if now.duration_since(p.said_at) < LOSS_LINE_EVERY => {
                p.lost += lost;
                Vec::new()
            }
            Some(p) => {
                let line = cause.line(node, p.lost + lost, self.what);
                p.lost = 0;
                p.said_at = now;
                vec![line]
            }
            None => {
                self.pending.push(PendingLoss {
                    node: node.to_string(),
                    cause: cause.clone(),
                    lost: 0,
                    said_at: now,
                });
                vec![cause.line(node, lost, self.what)]
            }
        }
    }

    /// The lines of pending losses whose second is up at `now` (all of them with `all`).
    fn due_at(&mut self, now: Instant, all: bool) -> Vec<String> {
        let what = self.what;
        self.pending
            .iter_mut()
            .filter(|p| p.lost > 0 && (all || now.duration_since(p.said_at) >= LOSS_LINE_EVERY))
            .map(|p| {
                let line = p.cause.line(&p.node, p.lost, what);
                p.lost = 0;
                p.said_at = now;
                line
            })
            .collect()
    }

    /// Says a loss on stderr (now, or summed into its kind's next line).
    pub fn report(&mut self, node: &str, lost: u64, cause: &GapCause) {
        for line in self.report_at(node, lost, cause, Instant::now()) {
            warn(&line);
        }
    }

    /// Waits for the next check (four a second), then says the pending losses whose second
    /// is up.
    pub async fn tick(&mut self) {
        self.tick.tick().await;
        for line in self.due_at(Instant::now(), false) {
            warn(&line);
        }
    }
}

impl Drop for LossLines {
    fn drop(&mut self) {
        for line in self.due_at(Instant::now(), true) {
            warn(&line);
        }
    }
}

/// Reports a loss of a trace's events: on stderr through `losses` and, in JSON and YAML, as a
/// gap record in the output too, one per gap (the `trace network`, `trace drops` and `trace
/// tcp` streams).
pub fn report_gap(
    out: &LiveOutput,
    format: LineFormat,
    losses: &mut LossLines,
    node: &str,
    lost: u64,
    cause: &GapCause,
) -> std::io::Result<()> {
    losses.report(node, lost, cause);
    if format == LineFormat::Text {
        return Ok(());
    }
    out.print(value_record(format, &GapLine::new(node, lost, cause))?)
}

/// The record printed for one event (a flow passing `filter`, active or new), if any; other
/// kinds go to stderr.
fn event_record(
    format: LineFormat,
    filter: &FlowFilterSpec,
    names: Option<&LiveDirectory>,
    node: &str,
    event: Event,
) -> std::io::Result<Option<String>> {
    let (seen, flow) = match event.kind {
        Some(event::Kind::NewFlow(flow)) => (Seen::New, flow),
        Some(event::Kind::ActiveFlow(flow)) => (Seen::Active, flow),
        Some(event::Kind::Interface(change)) => {
            let name = change.interface.map(|i| i.name).unwrap_or_default();
            let what = if !change.error.is_empty() {
                format!("cannot attach to {name}: {}", change.error)
            } else if change.attached {
                format!("watching {name}")
            } else {
                format!("stopped watching {name}")
            };
            let _ = writeln!(std::io::stderr(), "orb8: {node}: {what}");
            return Ok(None);
        }
        Some(event::Kind::Gap(_)) | None => return Ok(None),
    };
    let flow = FlowRecord::from_proto(node, flow);
    if !filter.matches(&flow.key()) {
        return Ok(None);
    }
    // Cluster mode: name both ends; flows of no selected pod are left out.
    let flow = match names {
        Some(d) => match d.apply(vec![flow]).pop() {
            Some(f) => f,
            None => return Ok(None),
        },
        None => flow,
    };
    let line = match format {
        LineFormat::Text => text_line(seen, event.time_unix_nanos, &flow),
        _ => serialise(
            format,
            &NewFlowLine {
                event: seen.event_name(),
                time: rfc3339_nanos(event.time_unix_nanos),
                seq: event.seq,
                flow: FlowView::from(&flow),
            },
        )?,
    };
    Ok(Some(record(format, &line)))
}

/// At most this many already-received items are counted when a trace stops.
const UNPRINTED_SCAN: usize = 1 << 20;

/// Flow events (and events the agents reported lost) already received but not printed when a
/// trace stops, taken from `merged` without waiting: what the merge had not reached yet.
fn unprinted<S: Stream<Item = Merged> + Unpin>(merged: &mut S) -> u64 {
    let mut n = 0u64;
    for _ in 0..UNPRINTED_SCAN {
        match merged.next().now_or_never() {
            Some(Some(Merged::Event { event, .. })) => {
                if matches!(
                    event.kind,
                    Some(event::Kind::NewFlow(_) | event::Kind::ActiveFlow(_))
                ) {
                    n += 1;
                }
            }
            Some(Some(Merged::Gap { lost, .. })) => n = n.saturating_add(lost),
            Some(Some(Merged::AgentLost { .. })) => {}
            Some(None) | None => break,
        }
    }
    n
}

/// Says on stderr how many received events the stopping trace leaves unprinted, if any.
fn report_unprinted<S: Stream<Item = Merged> + Unpin>(merged: &mut S) {
    let n = unprinted(merged);
    if n > 0 {
        warn(&format!(
            "{n} flow events received but not printed: still in the merge when the trace stopped"
        ));
    }
}

/// Runs `trace network` until `--duration`, Ctrl-C, or every agent is gone (an error).
pub async fn network(
    session: &Session,
    args: &TraceNetworkArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
    out: &LiveOutput,
) -> anyhow::Result<()> {
    let format = LineFormat::from(format);
    let filter = args.filter.spec();
    let request = StreamEventsRequest {
        filter: Some(filter_to_wire(&filter)),
    };
    let opened = futures::future::join_all(
        session
            .agents
            .iter()
            .map(|a| a.stream_events(request.clone())),
    )
    .await;
    let mut streams = Vec::with_capacity(opened.len());
    for (name, stream) in session.names.iter().zip(opened) {
        streams.push((name.clone(), stream?));
    }
    let agents = streams.len();
    let mut merged = merge_events(streams);
    let stop = interrupt.wait_or_after(args.duration);
    tokio::pin!(stop);

    let mut lost_agents = 0;
    let mut losses = LossLines::new("events");
    loop {
        let item = tokio::select! {
            item = merged.next() => item,
            () = losses.tick() => continue,
            () = &mut stop => {
                report_unprinted(&mut merged);
                break;
            }
        };
        match item {
            Some(Merged::Event { node, event }) => {
                session.timing.mark(&node, Step::FirstAnswer);
                if let Some(r) =
                    event_record(format, &filter, session.directory.as_ref(), &node, event)?
                {
                    out.print(r)?;
                }
            }
            Some(Merged::Gap { node, lost, cause }) => {
                report_gap(out, format, &mut losses, &node, lost, &cause)?;
            }
            Some(Merged::AgentLost { node, mut error }) => {
                lost_agents += 1;
                if let Some(last) = session.local_stderr_line() {
                    error = format!("{error} (agent said: {last})");
                }
                warn(&format!("lost agent {node}: {error}"));
                if format != LineFormat::Text {
                    out.print(value_record(
                        format,
                        &AgentLostLine {
                            event: "agent_lost",
                            node: &node,
                            error: &error,
                        },
                    )?)?;
                }
            }
            None => break,
        }
    }
    if lost_agents == agents {
        anyhow::bail!(
            "every agent's event stream ended ({agents} agent{})",
            if agents == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn losses_of_a_kind_are_said_at_once_then_summed_a_second_at_a_time() {
        let slow = GapCause::Reported {
            stage: orb8_proto::DropStage::Client,
            reason: "slow_client".into(),
        };
        let ring = GapCause::Reported {
            stage: orb8_proto::DropStage::Kernel,
            reason: "ringbuf_full".into(),
        };
        let jump = GapCause::SeqJump {
            expected: 4,
            got: 9,
        };
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut l = LossLines::new("events");
        assert_eq!(
            l.report_at("a", 3, &slow, at(0)),
            vec!["a: 3 events lost (client stage, slow_client)"],
            "the first of a kind at once"
        );
        assert!(l.report_at("a", 5, &slow, at(100)).is_empty());
        assert!(l.report_at("a", 7, &slow, at(900)).is_empty());
        assert_eq!(
            l.report_at("b", 2, &slow, at(950)),
            vec!["b: 2 events lost (client stage, slow_client)"],
            "another node is another kind"
        );
        assert_eq!(
            l.report_at("a", 1, &ring, at(960)),
            vec!["a: 1 events lost (kernel stage, ringbuf_full)"],
            "another reason is another kind"
        );
        assert_eq!(
            l.report_at("a", 5, &jump, at(970)),
            vec!["a: 5 events missing (sequence jumped from 4 to 9)"],
            "sequence jumps are said each time"
        );
        assert!(l.due_at(at(990), false).is_empty(), "a's second is not up");
        assert_eq!(
            l.report_at("a", 1, &slow, at(1000)),
            vec!["a: 13 events lost (client stage, slow_client)"],
            "a second on, the loss and what waited: 5 + 7 + 1"
        );
        assert!(l.report_at("a", 4, &slow, at(1500)).is_empty());
        assert_eq!(
            l.due_at(at(2000), false),
            vec!["a: 4 events lost (client stage, slow_client)"],
            "pending losses are said when due, without a new loss"
        );
        assert!(l.report_at("b", 6, &slow, at(1900)).is_empty());
        assert_eq!(
            l.due_at(at(2200), true),
            vec!["b: 6 events lost (client stage, slow_client)"],
            "the end says everything pending"
        );
        assert!(l.due_at(at(5000), true).is_empty(), "and nothing twice");
    }

    #[test]
    fn what_a_stopping_trace_leaves_unprinted_is_counted() {
        let flow = |seq| Merged::Event {
            node: "a".into(),
            event: Event {
                seq,
                kind: Some(event::Kind::NewFlow(Default::default())),
                ..Default::default()
            },
        };
        let items = vec![
            flow(1),
            Merged::Gap {
                node: "a".into(),
                lost: 5,
                cause: GapCause::SeqJump {
                    expected: 2,
                    got: 7,
                },
            },
            flow(7),
            Merged::Event {
                node: "a".into(),
                event: Event::default(),
            },
        ];
        let mut ready = futures::stream::iter(items);
        assert_eq!(unprinted(&mut ready), 7);
        // Nothing ready: nothing counted, and no waiting.
        let mut idle = futures::stream::pending::<Merged>();
        assert_eq!(unprinted(&mut idle), 0);
    }

    #[test]
    fn text_lines_show_the_flow() {
        let flow = FlowRecord::test_flow();
        assert_eq!(
            text_line(Seen::New, 1_700_000_000_123_456_789, &flow),
            "22:13:20.123Z node-a eth0 egress udp 10.0.0.1:40000 -> 10.0.0.2:53 150 B"
        );
        assert_eq!(
            text_line(Seen::Active, 1_700_000_000_123_456_789, &flow),
            "~ 22:13:20.123Z node-a eth0 egress udp 10.0.0.1:40000 -> 10.0.0.2:53 150 B"
        );
        let mut tcp = FlowRecord::test_flow();
        tcp.protocol = orb8_flowspec::Protocol::TCP;
        tcp.tcp_flags = 0x02;
        assert!(text_line(Seen::New, 0, &tcp).ends_with("150 B [S]"));
    }

    fn pod(namespace: &str, name: &str) -> Option<Endpoint> {
        Some(Endpoint::Pod {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    #[test]
    fn cluster_text_lines_name_both_ends() {
        let mut f = FlowRecord::test_flow();
        f.protocol = orb8_flowspec::Protocol::TCP;
        f.src_port = 40312;
        f.dst_port = 8080;
        f.src_name = pod("shop", "checkout");
        f.dst_name = pod("pay", "server");
        // A process behind the veth is left out when the ends have names.
        f.netns_owner = Some(std::sync::Arc::new(orb8_proto::NetnsOwner {
            pid: 42,
            comm: "pause".into(),
            ..Default::default()
        }));
        assert_eq!(
            text_line(Seen::New, 1_700_000_000_123_456_789, &f),
            "22:13:20.123Z node-a eth0 egress tcp shop/checkout:40312 -> pay/server:8080 150 B"
        );
        f.dst_name = Some(Endpoint::Service {
            namespace: "pay".into(),
            name: "api".into(),
        });
        assert!(
            text_line(Seen::New, 0, &f).contains(" shop/checkout:40312 -> svc:pay/api:8080 "),
            "{}",
            text_line(Seen::New, 0, &f)
        );
        f.src_name = Some(Endpoint::Host {
            node: "node-a".into(),
        });
        f.dst_name = Some(Endpoint::World);
        f.dst = Some("203.0.113.9".parse().unwrap());
        assert!(
            text_line(Seen::Active, 0, &f)
                .contains(" host:node-a:40312 -> world(203.0.113.9):8080 150 B"),
            "{}",
            text_line(Seen::Active, 0, &f)
        );
        // No ports (ICMP): names alone; a private address nobody owns keeps its address.
        let mut icmp = FlowRecord::test_flow();
        icmp.protocol = orb8_flowspec::Protocol::ICMP;
        icmp.src_name = pod("shop", "checkout");
        icmp.dst_name = Some(Endpoint::Unknown);
        icmp.dst = Some("fd00::9".parse().unwrap());
        assert!(
            text_line(Seen::New, 0, &icmp).contains(" icmp shop/checkout -> unknown(fd00::9) "),
            "{}",
            text_line(Seen::New, 0, &icmp)
        );
    }

    #[test]
    fn local_text_lines_keep_addresses_and_name_the_process_behind_a_veth() {
        let mut f = FlowRecord::test_flow();
        f.netns_owner = Some(std::sync::Arc::new(orb8_proto::NetnsOwner {
            pid: 1234,
            comm: "curl".into(),
            ..Default::default()
        }));
        assert_eq!(
            text_line(Seen::New, 1_700_000_000_123_456_789, &f),
            "22:13:20.123Z node-a eth0 egress udp 10.0.0.1:40000 -> 10.0.0.2:53 150 B (curl[1234])"
        );
    }

    #[test]
    fn active_and_new_flows_are_told_apart_in_json() {
        let event = |seq: u64, kind: event::Kind| Event {
            node: "node-a".into(),
            seq,
            time_unix_nanos: 1_700_000_000_123_456_789,
            kind: Some(kind),
        };
        let wire = orb8_proto::Flow {
            protocol: 17,
            src_addr: vec![10, 0, 0, 1],
            dst_addr: vec![10, 0, 0, 2],
            src_port: 40000,
            dst_port: 53,
            packets: 9,
            bytes: 900,
            ..Default::default()
        };
        let mut text = String::new();
        let all = FlowFilterSpec::default();
        for e in [
            event(1, event::Kind::ActiveFlow(wire.clone())),
            event(2, event::Kind::NewFlow(wire.clone())),
        ] {
            text.push_str(
                &event_record(LineFormat::Json, &all, None, "node-a", e)
                    .unwrap()
                    .unwrap(),
            );
        }
        let got: Vec<(String, u64, u64)> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["event"].as_str().unwrap().to_string(),
                    v["seq"].as_u64().unwrap(),
                    v["packets"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("active_flow".into(), 1, 9), ("new_flow".into(), 2, 9)]
        );
    }
}
