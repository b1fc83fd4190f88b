//! Merging what several agents send: their live event streams (tagged by node, with gaps and
//! lost agents reported in-band) and their flow tables (filtered, sorted, limited as one).
//!
//! Everything here works on plain data and streams; no network.

use std::cmp::Ordering;

use futures::stream::{self, BoxStream, Stream, StreamExt};
use orb8_flowspec::{FlowFilterSpec, SortKey};
use orb8_proto::{
    DnsTraceEvent, DropStage, DropTraceEvent, DropTraceStarted, Event, Flow, Gap,
    SyscallTraceEvent, SyscallTraceStarted, TcpTraceEvent, TcpTraceStarted, dns_trace_event,
    drop_trace_event, event, syscall_trace_event, tcp_trace_event,
};
use tonic::Status;

use crate::flow::{FlowRecord, Owners};

/// A message of a sequenced agent stream (`seq` per stream, losses in-band as `Gap`s): the
/// flow stream's [`Event`], the DNS stream's [`DnsTraceEvent`], the drop and TCP traces'
/// [`DropTraceEvent`] and [`TcpTraceEvent`].
pub trait StreamMessage: Send + 'static {
    /// Its per-stream sequence number.
    fn seq(&self) -> u64;
    /// The message, or the loss it reports; `None` for a kind this client does not know.
    fn into_item(self) -> Option<Result<Self, Gap>>
    where
        Self: Sized;
}

/// `StreamMessage` for a sequenced stream's message type whose `kind` oneof (in module
/// `$kinds`) has a `Gap` variant.
macro_rules! stream_message {
    ($($message:ty => $kinds:ident),+ $(,)?) => {$(
        impl StreamMessage for $message {
            fn seq(&self) -> u64 {
                self.seq
            }
            fn into_item(self) -> Option<Result<Self, Gap>> {
                match self.kind {
                    Some($kinds::Kind::Gap(gap)) => Some(Err(gap)),
                    Some(_) => Some(Ok(self)),
                    None => None,
                }
            }
        }
    )+};
}

stream_message!(
    Event => event,
    DnsTraceEvent => dns_trace_event,
    DropTraceEvent => drop_trace_event,
    TcpTraceEvent => tcp_trace_event,
);

/// A message of a trace stream that opens with a `started` message (seq 1): drops, TCP and
/// syscall traces.
pub trait TraceMessage: std::fmt::Debug + Sized {
    /// What the `started` message carries.
    type Started;
    /// The `started` message's content, or the message itself when it is something else.
    fn into_started(self) -> Result<Self::Started, Self>;
}

/// `TraceMessage` for a trace's message type whose `kind` oneof (in module `$kinds`) has a
/// `Started($started)` variant.
macro_rules! trace_message {
    ($($message:ty => $kinds:ident, $started:ty);+ $(;)?) => {$(
        impl TraceMessage for $message {
            type Started = $started;
            fn into_started(self) -> Result<$started, Self> {
                match self.kind {
                    Some($kinds::Kind::Started(s)) => Ok(s),
                    _ => Err(self),
                }
            }
        }
    )+};
}

trace_message!(
    DropTraceEvent => drop_trace_event, DropTraceStarted;
    TcpTraceEvent => tcp_trace_event, TcpTraceStarted;
    SyscallTraceEvent => syscall_trace_event, SyscallTraceStarted;
);

/// One item of a merged stream (of flow events unless said otherwise).
#[derive(Debug, Clone, PartialEq)]
pub enum Merged<E = Event> {
    /// An event from `node` (a new flow, an interface change), in that node's order.
    Event {
        /// Which agent it came from.
        node: String,
        /// The event as sent.
        event: E,
    },
    /// Events from `node` were lost: the agent said so, or its sequence numbers jumped.
    Gap {
        /// Which agent lost them.
        node: String,
        /// How many.
        lost: u64,
        /// Where and why.
        cause: GapCause,
    },
    /// The stream of `node` ended (with an error or early); nothing more will come from it.
    AgentLost {
        /// Which agent.
        node: String,
        /// What happened, in words.
        error: String,
    },
}

/// Why a [`Merged::Gap`] was reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapCause {
    /// The agent sent a Gap event.
    Reported {
        /// Where the events were lost.
        stage: DropStage,
        /// The agent's reason (`ringbuf_full`, `slow_client`, ...).
        reason: String,
    },
    /// The per-stream sequence number skipped values.
    SeqJump {
        /// The sequence number that was due.
        expected: u64,
        /// The one that arrived.
        got: u64,
    },
}

impl GapCause {
    /// Where the loss happened, as a lower-case word (`kernel`, `agent`, `client`, `unknown`).
    pub fn stage_name(&self) -> &'static str {
        match self {
            GapCause::Reported { stage, .. } => match stage {
                DropStage::Kernel => "kernel",
                DropStage::Agent => "agent",
                DropStage::Client => "client",
                DropStage::Unspecified => "unknown",
            },
            GapCause::SeqJump { .. } => "unknown",
        }
    }

    /// Why, as a short word (`ringbuf_full`, `seq_jump`, ...).
    pub fn reason(&self) -> &str {
        match self {
            GapCause::Reported { reason, .. } => reason,
            GapCause::SeqJump { .. } => "seq_jump",
        }
    }

    /// The loss in one line, `what` naming the lost items (`events`, `drop events`):
    /// `node-a: 4 events lost (kernel stage, ringbuf_full)` or
    /// `node-a: 2 events missing (sequence jumped from 3 to 5)`.
    pub fn line(&self, node: &str, lost: u64, what: &str) -> String {
        match self {
            GapCause::Reported { reason, .. } => format!(
                "{node}: {lost} {what} lost ({} stage, {reason})",
                self.stage_name()
            ),
            GapCause::SeqJump { expected, got } => {
                format!("{node}: {lost} {what} missing (sequence jumped from {expected} to {got})")
            }
        }
    }
}

/// Follows one stream's sequence numbers (starting at 1, +1 per event) and counts holes.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    next: u64,
}

impl Default for SeqTracker {
    fn default() -> Self {
        SeqTracker { next: 1 }
    }
}

impl SeqTracker {
    /// A tracker for a stream whose first message, the trace's `started` (seq 1), was read
    /// before the stream was merged.
    pub fn after_started() -> Self {
        SeqTracker { next: 2 }
    }

    /// Records `seq`; returns the number of events skipped before it, when some were.
    /// A sequence number that goes backwards resynchronises without reporting a loss.
    pub fn observe(&mut self, seq: u64) -> Option<(u64, u64)> {
        let expected = self.next;
        self.next = seq.saturating_add(1);
        if seq > expected {
            Some((expected, seq - expected))
        } else {
            None
        }
    }
}

/// Turns one event into merged items for `node`, keeping track of its sequence numbers.
pub fn classify<E: StreamMessage>(
    node: &str,
    tracker: &mut SeqTracker,
    event: E,
) -> Vec<Merged<E>> {
    let mut out = Vec::with_capacity(2);
    let seq = event.seq();
    if let Some((expected, lost)) = tracker.observe(seq) {
        out.push(Merged::Gap {
            node: node.to_string(),
            lost,
            cause: GapCause::SeqJump { expected, got: seq },
        });
    }
    match event.into_item() {
        Some(Err(gap)) => out.push(Merged::Gap {
            node: node.to_string(),
            lost: gap.lost,
            cause: GapCause::Reported {
                stage: gap.stage(),
                reason: gap.reason,
            },
        }),
        Some(Ok(event)) => out.push(Merged::Event {
            node: node.to_string(),
            event,
        }),
        // A kind this client does not know (a newer agent): nothing to show.
        None => {}
    }
    out
}

/// Describes how a stream ended with an error, in one line.
pub fn status_text(status: &Status) -> String {
    let message = status.message().replace('\n', " ");
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

fn tag_stream<E, S>(node: String, tracker: SeqTracker, events: S) -> BoxStream<'static, Merged<E>>
where
    E: StreamMessage,
    S: Stream<Item = Result<E, Status>> + Send + 'static,
{
    let state = Some((events.boxed(), tracker));
    stream::unfold(state, move |state| {
        let node = node.clone();
        async move {
            let (mut events, mut tracker) = state?;
            match events.next().await {
                Some(Ok(event)) => {
                    let items = classify(&node, &mut tracker, event);
                    Some((items, Some((events, tracker))))
                }
                Some(Err(status)) => {
                    let error = status_text(&status);
                    Some((vec![Merged::AgentLost { node, error }], None))
                }
                None => {
                    let error = "the agent ended the stream".to_string();
                    Some((vec![Merged::AgentLost { node, error }], None))
                }
            }
        }
    })
    .flat_map(stream::iter)
    .boxed()
}

/// Merges the event streams of several agents, each tagged with its node name. Items from
/// one node keep their order; a slow or dead agent never holds back the others. The merged
/// stream ends when every agent's stream has ended (each one reported as [`Merged::AgentLost`]).
pub fn merge_events<S>(streams: Vec<(String, S)>) -> impl Stream<Item = Merged> + Send + Unpin
where
    S: Stream<Item = Result<Event, Status>> + Send + 'static,
{
    merge_streams(streams)
}

/// [`merge_events`] for any sequenced agent stream (the DNS stream's too).
pub fn merge_streams<E, S>(
    streams: Vec<(String, S)>,
) -> impl Stream<Item = Merged<E>> + Send + Unpin
where
    E: StreamMessage,
    S: Stream<Item = Result<E, Status>> + Send + 'static,
{
    stream::select_all(
        streams
            .into_iter()
            .map(|(node, events)| tag_stream(node, SeqTracker::default(), events)),
    )
}

/// [`merge_streams`] for traces whose `started` message (seq 1) each stream's reader took
/// before (drops, TCP). A stream that ends is reported as [`Merged::AgentLost`] in the same
/// words as every other stream's end: `the agent ended the stream`.
pub fn merge_traces<E, S>(streams: Vec<(String, S)>) -> impl Stream<Item = Merged<E>> + Send + Unpin
where
    E: StreamMessage,
    S: Stream<Item = Result<E, Status>> + Send + 'static,
{
    stream::select_all(
        streams
            .into_iter()
            .map(|(node, events)| tag_stream(node, SeqTracker::after_started(), events)),
    )
}

fn compare(a: &FlowRecord, b: &FlowRecord, key: SortKey) -> Ordering {
    key.order(&a.totals(), &b.totals())
        .then_with(|| a.node.cmp(&b.node))
        .then_with(|| a.first_seen_nanos.cmp(&b.first_seen_nanos))
        .then_with(|| a.interface.cmp(&b.interface))
        .then_with(|| a.src.cmp(&b.src))
        .then_with(|| a.src_port.cmp(&b.src_port))
        .then_with(|| a.dst.cmp(&b.dst))
        .then_with(|| a.dst_port.cmp(&b.dst_port))
        .then_with(|| a.protocol.cmp(&b.protocol))
        .then_with(|| a.interface_direction.cmp(&b.interface_direction))
        .then_with(|| a.fragment.cmp(&b.fragment))
        .then_with(|| a.last_seen_nanos.cmp(&b.last_seen_nanos))
        .then_with(|| a.tcp_flags.cmp(&b.tcp_flags))
}

/// Sorts flows by `key` (the agent's order too), with a fixed tie-break so equal flows always
/// print in one order.
///
/// The tie-break takes in every field of a flow's identity, so rows that compare equal print
/// alike and an unstable sort gives the order a stable one would: it needs no scratch copy,
/// where a stable sort of 100k records borrows half their size again (15 MiB).
pub fn sort_flows(flows: &mut [FlowRecord], key: SortKey) {
    flows.sort_unstable_by(|a, b| compare(a, b, key));
}

/// Merges the flow tables of several agents (`(node, flows)`): tags, filters, sorts and limits
/// them as one table. `limit` 0 or `None` keeps everything.
pub fn merge_flow_tables(
    tables: Vec<(String, Vec<Flow>)>,
    filter: &FlowFilterSpec,
    sort: SortKey,
    limit: Option<usize>,
) -> Vec<FlowRecord> {
    let mut read = Vec::with_capacity(tables.len());
    for (node, table) in tables {
        let mut reader = TableReader::new(&node, filter.clone());
        reader.add(table);
        read.push(reader);
    }
    merge_read_tables(read, sort, limit)
}

/// One agent's flow table read page by page (`ListFlows`): each page's flows are tagged,
/// filtered and turned into records as the page arrives, so that the wire's copy of a large
/// table is never whole in memory, only the records kept.
#[derive(Debug)]
pub struct TableReader {
    node: String,
    filter: FlowFilterSpec,
    owners: Owners,
    flows: Vec<FlowRecord>,
}

impl TableReader {
    /// A reader for the table of `node`, keeping the flows `filter` matches.
    pub fn new(node: &str, filter: FlowFilterSpec) -> Self {
        TableReader {
            node: node.to_string(),
            filter,
            owners: Owners::default(),
            flows: Vec::new(),
        }
    }

    /// Adds one page of the table (the next flows in the agent's order).
    pub fn add(&mut self, mut page: Vec<Flow>) {
        // Taken from the back, the wire page shrinking as it goes: the two copies of a large
        // page (a whole table from an agent without ListFlows) are never whole at once.
        let from = self.flows.len();
        self.flows.reserve(page.len());
        while let Some(f) = page.pop() {
            let f = FlowRecord::from_proto_sharing(&self.node, f, &mut self.owners);
            if self.filter.matches(&f.key()) {
                self.flows.push(f);
            }
            if page.capacity() > 1024 && page.len() < page.capacity() / 2 {
                page.shrink_to_fit();
            }
        }
        self.flows[from..].reverse();
    }

    /// The flows kept so far.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow was kept.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// Merges tables read by [`TableReader`]s into one, sorted and limited (`limit` 0 or `None`
/// keeps everything).
pub fn merge_read_tables(
    tables: Vec<TableReader>,
    sort: SortKey,
    limit: Option<usize>,
) -> Vec<FlowRecord> {
    let total: usize = tables.iter().map(TableReader::len).sum();
    let mut tables = tables.into_iter().map(|t| t.flows);
    // The first table's records are the merged table's start: one table (local mode, one
    // node) is never copied.
    let mut flows = tables.next().unwrap_or_default();
    flows.reserve(total - flows.len());
    for t in tables {
        flows.extend(t);
    }
    sort_flows(&mut flows, sort);
    if let Some(limit) = limit.filter(|l| *l > 0) {
        flows.truncate(limit);
    }
    flows
}

#[cfg(test)]
mod tests {
    use super::*;
    use orb8_flowspec::Protocol;
    use orb8_proto::{Direction, Gap};

    fn wire_flow(bytes: u64, packets: u64, last: i64, port: u32) -> Flow {
        Flow {
            node: String::new(),
            interface: "eth0".into(),
            ifindex: 2,
            direction: Direction::Egress as i32,
            protocol: 17,
            src_addr: vec![10, 0, 0, 1],
            dst_addr: vec![10, 0, 0, 2],
            src_port: 40000,
            dst_port: port,
            fragment: false,
            packets,
            bytes,
            tcp_flags: 0,
            first_seen_unix_nanos: 1,
            last_seen_unix_nanos: last,
            netns_owner: None,
            interface_role: "uplink".into(),
            src_dns_name: String::new(),
            dst_dns_name: String::new(),
        }
    }

    fn new_flow(seq: u64) -> Event {
        Event {
            node: "n".into(),
            seq,
            time_unix_nanos: 1,
            kind: Some(event::Kind::NewFlow(wire_flow(60, 1, 1, 53))),
        }
    }

    #[test]
    fn flow_tables_merge_sorted_filtered_and_limited() {
        let tables = vec![
            (
                "a".to_string(),
                vec![wire_flow(100, 9, 5, 53), wire_flow(300, 1, 1, 80)],
            ),
            (
                "b".to_string(),
                vec![wire_flow(200, 5, 9, 53), wire_flow(50, 2, 3, 53)],
            ),
        ];
        let all = merge_flow_tables(
            tables.clone(),
            &FlowFilterSpec::default(),
            SortKey::Bytes,
            None,
        );
        let got: Vec<(&str, u64)> = all.iter().map(|f| (f.node.as_str(), f.bytes)).collect();
        assert_eq!(got, vec![("a", 300), ("b", 200), ("a", 100), ("b", 50)]);

        let by_packets = merge_flow_tables(
            tables.clone(),
            &FlowFilterSpec::default(),
            SortKey::Packets,
            Some(2),
        );
        let got: Vec<u64> = by_packets.iter().map(|f| f.packets).collect();
        assert_eq!(got, vec![9, 5], "the limit applies to the merged table");

        let by_time = merge_flow_tables(
            tables.clone(),
            &FlowFilterSpec::default(),
            SortKey::Time,
            None,
        );
        let got: Vec<i64> = by_time.iter().map(|f| f.last_seen_nanos).collect();
        assert_eq!(got, vec![9, 5, 3, 1]);

        let dns_only = FlowFilterSpec {
            ports: vec![53],
            protocols: vec![Protocol(17)],
            ..Default::default()
        };
        let dns = merge_flow_tables(tables, &dns_only, SortKey::Bytes, Some(0));
        assert_eq!(dns.len(), 3, "client-side filter drops the port 80 flow");
    }

    #[test]
    fn gaps_in_words() {
        let seq = GapCause::SeqJump {
            expected: 3,
            got: 5,
        };
        assert_eq!(
            seq.line("a", 2, "events"),
            "a: 2 events missing (sequence jumped from 3 to 5)"
        );
        let reported = GapCause::Reported {
            stage: orb8_proto::DropStage::Kernel,
            reason: "ringbuf_full".into(),
        };
        assert_eq!(
            reported.line("a", 7, "drop events"),
            "a: 7 drop events lost (kernel stage, ringbuf_full)"
        );
    }

    #[test]
    fn a_table_read_in_pages_is_the_table_read_whole() {
        let table: Vec<Flow> = (0..10)
            .map(|i| wire_flow(100 + i, i, i as i64, 50 + (i % 4) as u32))
            .collect();
        let dns = FlowFilterSpec {
            ports: vec![53],
            ..Default::default()
        };
        let whole = merge_flow_tables(
            vec![("a".into(), table.clone())],
            &dns,
            SortKey::Bytes,
            None,
        );
        let mut paged = TableReader::new("a", dns);
        for page in table.chunks(3) {
            paged.add(page.to_vec());
        }
        assert_eq!(
            paged.len(),
            2,
            "ports 53 of 50..=53 four times: indices 3 and 7"
        );
        assert_eq!(merge_read_tables(vec![paged], SortKey::Bytes, None), whole);
        assert_eq!(
            whole.iter().map(|f| f.bytes).collect::<Vec<_>>(),
            vec![107, 103]
        );
    }

    #[test]
    fn seq_tracker_counts_holes_only() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(1), None);
        assert_eq!(t.observe(2), None);
        assert_eq!(t.observe(5), Some((3, 2)));
        assert_eq!(t.observe(6), None);
        assert_eq!(t.observe(2), None, "going backwards resyncs");
        assert_eq!(t.observe(3), None);
        let mut late = SeqTracker::default();
        assert_eq!(late.observe(4), Some((1, 3)), "the first event is seq 1");
    }

    #[tokio::test]
    async fn merges_in_memory_streams_with_gaps_and_losses() {
        let a = stream::iter(vec![
            Ok(new_flow(1)),
            Ok(Event {
                node: "a".into(),
                seq: 2,
                time_unix_nanos: 2,
                kind: Some(event::Kind::Gap(Gap {
                    lost: 7,
                    stage: DropStage::Kernel as i32,
                    reason: "ringbuf_full".into(),
                })),
            }),
            Ok(new_flow(5)),
        ])
        .chain(stream::pending());
        let b = stream::iter(vec![Ok(new_flow(1)), Err(Status::unavailable("gone"))]);
        let merged = merge_events(vec![
            ("a".to_string(), a.boxed()),
            ("b".to_string(), b.boxed()),
        ]);
        let items: Vec<Merged> = merged.take(6).collect().await;
        let a_items: Vec<&Merged> = items
            .iter()
            .filter(|m| matches!(m, Merged::Event { node, .. } | Merged::Gap { node, .. } | Merged::AgentLost { node, .. } if node == "a"))
            .collect();
        assert_eq!(a_items.len(), 4);
        assert!(matches!(
            a_items[1],
            Merged::Gap {
                lost: 7,
                cause: GapCause::Reported { .. },
                ..
            }
        ));
        assert!(matches!(
            a_items[2],
            Merged::Gap {
                lost: 2,
                cause: GapCause::SeqJump {
                    expected: 3,
                    got: 5
                },
                ..
            }
        ));
        assert!(items.iter().any(|m| matches!(m, Merged::AgentLost { node, error } if node == "b" && error == "Unavailable: gone")));
    }

    fn drop_event(seq: u64, kind: drop_trace_event::Kind) -> DropTraceEvent {
        DropTraceEvent {
            node: "n".into(),
            seq,
            time_unix_nanos: 1,
            kind: Some(kind),
        }
    }

    #[tokio::test]
    async fn traces_merge_after_their_started_message() {
        let drop = || drop_trace_event::Kind::Drop(Default::default());
        let begun = DropTraceStarted {
            trace_id: 4,
            reasons_known: 9,
        };
        let started = drop_event(1, drop_trace_event::Kind::Started(begun));
        assert_eq!(started.into_started(), Ok(begun));
        assert_eq!(
            drop_event(1, drop()).into_started(),
            Err(drop_event(1, drop())),
            "anything else is handed back"
        );
        let a = stream::iter(vec![
            Ok(drop_event(2, drop())),
            Ok(drop_event(
                3,
                drop_trace_event::Kind::Gap(Gap {
                    lost: 7,
                    stage: DropStage::Kernel as i32,
                    reason: "ringbuf_full".into(),
                }),
            )),
            Ok(drop_event(6, drop())),
        ]);
        let items: Vec<Merged<DropTraceEvent>> =
            merge_traces(vec![("a".to_string(), a)]).collect().await;
        let gaps: Vec<(u64, &GapCause)> = items
            .iter()
            .filter_map(|m| match m {
                Merged::Gap { lost, cause, .. } => Some((*lost, cause)),
                _ => None,
            })
            .collect();
        assert_eq!(
            gaps,
            vec![
                (
                    7,
                    &GapCause::Reported {
                        stage: DropStage::Kernel,
                        reason: "ringbuf_full".into()
                    }
                ),
                (
                    2,
                    &GapCause::SeqJump {
                        expected: 4,
                        got: 6
                    }
                ),
            ],
            "seq 2 follows the started message: no gap before it"
        );
        assert_eq!(
            items
                .iter()
                .filter(|m| matches!(m, Merged::Event { .. }))
                .count(),
            2
        );
        assert_eq!(
            items.last(),
            Some(&Merged::AgentLost {
                node: "a".into(),
                error: "the agent ended the stream".into()
            })
        );
    }
}
