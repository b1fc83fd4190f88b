//! The flow RPCs: `QueryFlows` (the kernel flow table, filtered, sorted, limited), `ListFlows`
//! (the same answer in pages) and `StreamEvents` (the agent's flow fan-out, one sequenced stream per client, see
//! [`super::stream`]).
//!
//! A flow stream opens with the flows already in the table (`active_flow`, oldest first), then
//! carries new ones (`new_flow`). So that no flow falls between the two, the stream subscribes
//! to the fan-out *before* reading the table: a flow created before the read is in it (the kernel
//! inserts the entry before it emits the new-flow event), one created after has its event in the
//! queue. A flow can be in both (created just before the read, its event still queued): its
//! new-flow event is recognised by key and time (not later than the flow's last packet in the
//! table) and dropped, so each flow is shown once. A flow evicted and created again later is
//! new again, and shown again.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    pin::Pin,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use orb8_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

use super::stream::{self, Feed, RingLoss, Sequenced, now_nanos};
use crate::{
    convert::{self, Matcher},
    defaults,
    flows::Flow,
    interfaces::{Role, Selected},
    runtime::{Agent, AgentEvent},
};

/// A client's flow table in pages (`ListFlows`).
pub type FlowPages = Pin<Box<dyn Stream<Item = Result<pb::QueryFlowsResponse, Status>> + Send>>;

/// A client's flow event stream.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// The flow side of the service.
pub struct Flows {
    agent: Arc<Agent>,
    node: String,
    /// Events every client together was too slow to take.
    slow_client: Arc<AtomicU64>,
}

impl Flows {
    /// Flows of `agent`, reported as node `node`.
    pub fn new(agent: Arc<Agent>, node: String) -> Self {
        Flows {
            agent,
            node,
            slow_client: Arc::default(),
        }
    }

    /// Events lost to slow clients so far, over every stream.
    pub fn slow_client_drops(&self) -> u64 {
        self.slow_client.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The shared count behind [`Flows::slow_client_drops`], for readers outside the service
    /// (the metrics endpoint).
    pub fn slow_client_counter(&self) -> Arc<AtomicU64> {
        self.slow_client.clone()
    }

    /// The flow table, filtered, sorted and limited.
    pub fn query(&self, req: &pb::QueryFlowsRequest) -> Result<pb::QueryFlowsResponse, String> {
        let matcher = Matcher::new(req.filter.as_ref())?;
        let snap = self.agent.snapshot();
        let mut flows: Vec<pb::Flow> = snap
            .flows
            .iter()
            .map(|f| wire_flow(&self.agent, &self.node, f))
            .filter(|f| matcher.matches(f))
            .collect();
        let total = flows.len() as u64;
        convert::sort(&mut flows, req.sort());
        if req.limit > 0 {
            flows.truncate(req.limit as usize);
        }
        Ok(pb::QueryFlowsResponse {
            node: self.node.clone(),
            flows,
            total_matched: total,
            flow_map_evictions: snap.flows_evicted,
        })
    }

    /// The answer of [`Flows::query`] in pages of at most `page_size` flows (`ListFlows`),
    /// sent by a task of its own at the client's pace: at most two encoded pages wait, never the
    /// whole table as one message.
    pub fn list(&self, req: &pb::QueryFlowsRequest) -> Result<FlowPages, Status> {
        let answer = self.query(req).map_err(Status::invalid_argument)?;
        let page = match req.page_size as usize {
            0 => defaults::FLOW_PAGE,
            n => n.min(defaults::FLOW_PAGE_MAX),
        };
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let pb::QueryFlowsResponse {
                node,
                flows,
                total_matched,
                flow_map_evictions,
            } = answer;
            let page_of = |flows| pb::QueryFlowsResponse {
                node: node.clone(),
                flows,
                total_matched,
                flow_map_evictions,
            };
            let mut rest = flows.into_iter();
            let mut first = true;
            loop {
                let flows: Vec<pb::Flow> = rest.by_ref().take(page).collect();
                if flows.is_empty() && !first {
                    return;
                }
                first = false;
                if tx.send(Ok(page_of(flows))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Starts a client's event stream: the active flows matching the request's filter, then
    /// events from now on matching it.
    pub fn stream(&self, req: &pb::StreamEventsRequest) -> Result<EventStream, Status> {
        let matcher = Matcher::new(req.filter.as_ref()).map_err(Status::invalid_argument)?;
        // Subscribed before the table is read (in the feed's opening): see the module docs.
        let rx = self.agent.subscribe();
        let (tx, out) = mpsc::channel(defaults::CLIENT_BUFFER);
        // Read before the table (in the opening): a flow whose event the kernel drops after this
        // is reported lost even when the opening then shows it (never the other way round).
        let ring_loss =
            RingLoss::new(self.agent.counters()[orb8_common::counter::RINGBUF_FULL as usize]);
        let feed = FlowFeed {
            agent: self.agent.clone(),
            matcher,
            shown: HashMap::new(),
            ring_loss,
        };
        let sequenced = Sequenced::new(self.node.clone(), tx, self.slow_client.clone());
        stream::spawn(feed, Some(rx), sequenced);
        Ok(Box::pin(ReceiverStream::new(out)))
    }
}

/// A kernel flow as the wire carries it, with the role of its interface and the process
/// behind its veth when known.
fn wire_flow(agent: &Agent, node: &str, f: &Flow) -> pb::Flow {
    let mut w = convert::flow(
        node,
        agent.interface_name(f.key.ifindex),
        f,
        &agent.flow_clock,
    );
    describe_interface(agent, f.key.ifindex, &mut w);
    w
}

/// Tags a wire flow with what the agent knows of its interface (why it is watched, who lives
/// behind it when it is a veth) and of its ends (the DNS name an address was an answer for).
fn describe_interface(agent: &Agent, ifindex: u32, w: &mut pb::Flow) {
    let dns_name = |bytes: &[u8]| {
        orb8_flowspec::ip_from_bytes(bytes)
            .and_then(|a| agent.dns_name(&a))
            .unwrap_or_default()
    };
    w.src_dns_name = dns_name(&w.src_addr);
    w.dst_dns_name = dns_name(&w.dst_addr);
    w.interface_role = agent
        .interface_role(ifindex)
        .map(|r| r.as_str().to_string())
        .unwrap_or_default();
    w.netns_owner = agent
        .peer(ifindex)
        .map(|p| Box::new(convert::netns_owner(&p)));
}

/// The flows of a table read to open a stream with, oldest first, and what to remember of each:
/// its key and last packet (kernel boot time), to recognise its new-flow event if that comes too.
fn opening(
    flows: Vec<Flow>,
    wire: impl Fn(&Flow) -> pb::Flow,
    matcher: &Matcher,
) -> (Vec<pb::Flow>, HashMap<orb8_common::FlowKey, u64>) {
    let mut shown = HashMap::new();
    let mut out: Vec<(u64, pb::Flow)> = flows
        .into_iter()
        .filter_map(|f| {
            let w = wire(&f);
            matcher.matches(&w).then(|| {
                shown.insert(f.key, f.stats.last_seen_ns);
                (f.stats.first_seen_ns, w)
            })
        })
        .collect();
    out.sort_by_key(|(first, _)| *first);
    (out.into_iter().map(|(_, w)| w).collect(), shown)
}

/// Whether a new-flow event is of a flow the stream opened with (it was created before the
/// table was read, and its event was still queued): `shown` forgets it then.
fn already_shown(shown: &mut HashMap<orb8_common::FlowKey, u64>, e: &orb8_common::Event) -> bool {
    match shown.get(&e.key) {
        Some(last_seen) if e.ts_ns <= *last_seen => {
            shown.remove(&e.key);
            true
        }
        _ => false,
    }
}

/// Turns the agent's events into one client's flow stream.
struct FlowFeed {
    agent: Arc<Agent>,
    matcher: Matcher,
    /// The flows sent in the opening, by key, with their last packet then.
    shown: HashMap<orb8_common::FlowKey, u64>,
    /// The kernel's `ringbuf_full` losses as far as this stream has reported them.
    ring_loss: RingLoss,
}

impl Feed for FlowFeed {
    type In = AgentEvent;
    type Out = pb::Event;

    fn tick_every(&self) -> Duration {
        defaults::GAP_FLUSH
    }

    fn opening(&mut self, out: &Sequenced<pb::Event>) -> Vec<(pb::event::Kind, i64)> {
        let snap = self.agent.snapshot();
        let agent = &self.agent;
        let (flows, shown) = opening(
            snap.flows,
            |f| wire_flow(agent, out.node(), f),
            &self.matcher,
        );
        self.shown = shown;
        flows
            .into_iter()
            .map(|f| {
                let t = f.first_seen_unix_nanos;
                (pb::event::Kind::ActiveFlow(f), t)
            })
            .collect()
    }

    fn convert(
        &mut self,
        ev: AgentEvent,
        out: &Sequenced<pb::Event>,
    ) -> Option<(pb::event::Kind, i64)> {
        Some(match ev {
            AgentEvent::NewFlow(e) => {
                if already_shown(&mut self.shown, &e) {
                    return None;
                }
                let mut f = convert::new_flow(
                    out.node(),
                    self.agent.interface_name(e.key.ifindex),
                    &e,
                    &self.agent.flow_clock,
                );
                describe_interface(&self.agent, e.key.ifindex, &mut f);
                if !self.matcher.matches(&f) {
                    return None;
                }
                let t = f.first_seen_unix_nanos;
                (pb::event::Kind::NewFlow(f), t)
            }
            AgentEvent::Attached(s) => (interface_change(&s, true, String::new()), now_nanos()),
            AgentEvent::Detached { index, name } => {
                let s = Selected {
                    index,
                    name,
                    role: Role::Explicit,
                    peer_netnsid: None,
                };
                (interface_change(&s, false, String::new()), now_nanos())
            }
            AgentEvent::AttachFailed { iface, reason } => {
                (interface_change(&iface, false, reason), now_nanos())
            }
        })
    }

    fn count_lagged(&mut self, n: u64) {
        self.agent.count_lost(n);
    }

    /// Reports new-flow events the kernel dropped (ring buffer full) since the last report, as a
    /// `kernel`/`ringbuf_full` Gap. The kernel cannot tell which flows they were, so every
    /// stream gets the whole count, whatever its filter.
    fn tick(&mut self, out: &mut Sequenced<pb::Event>) -> ControlFlow<()> {
        let now = self.agent.counters()[orb8_common::counter::RINGBUF_FULL as usize];
        self.ring_loss.report(Some(now), out)
    }
}

/// An interface the probes watch, as the wire names it.
pub fn iface(s: &Selected) -> pb::Interface {
    pb::Interface {
        index: s.index,
        name: s.name.clone(),
        role: s.role.as_str().to_string(),
    }
}

fn interface_change(s: &Selected, attached: bool, error: String) -> pb::event::Kind {
    pb::event::Kind::Interface(pb::InterfaceChange {
        interface: Some(iface(s)),
        attached,
        error,
    })
}

#[cfg(test)]
mod tests {
    use orb8_common::{FlowKey, FlowStats, direction, family};

    use super::*;
    use crate::flows::BootClock;

    fn key(dst_port: u16) -> FlowKey {
        let mut src_addr = [0u8; 16];
        src_addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        let mut dst_addr = src_addr;
        dst_addr[15] = 2;
        FlowKey {
            ifindex: 3,
            direction: direction::EGRESS,
            protocol: 17,
            family: family::IPV4,
            flags: 0,
            src_addr,
            dst_addr,
            src_port: 40000,
            dst_port,
        }
    }

    fn table_flow(dst_port: u16, first: u64, last: u64) -> Flow {
        Flow {
            key: key(dst_port),
            stats: FlowStats {
                packets: 4,
                bytes: 400,
                first_seen_ns: first,
                last_seen_ns: last,
                tcp_flags: 0,
                _pad: [0; 7],
            },
        }
    }

    fn event(dst_port: u16, ts_ns: u64) -> orb8_common::Event {
        orb8_common::Event {
            key: key(dst_port),
            ts_ns,
            ..Default::default()
        }
    }

    fn wire(f: &Flow) -> pb::Flow {
        convert::flow("n1", "veth0".into(), f, &BootClock::from_boot_epoch_ns(0))
    }

    #[test]
    fn the_opening_is_the_matching_flows_oldest_first() {
        let filter = pb::FlowFilter {
            ports: vec![53, 80],
            ..Default::default()
        };
        let matcher = Matcher::new(Some(&filter)).unwrap();
        let table = vec![
            table_flow(80, 300, 900),
            table_flow(443, 100, 200),
            table_flow(53, 200, 250),
        ];
        let (flows, shown) = opening(table, wire, &matcher);
        let got: Vec<(u32, u64, i64)> = flows
            .iter()
            .map(|f| (f.dst_port, f.packets, f.first_seen_unix_nanos))
            .collect();
        assert_eq!(got, vec![(53, 4, 200), (80, 4, 300)]);
        assert_eq!(
            shown,
            HashMap::from([(key(53), 250), (key(80), 900)]),
            "only what was sent is remembered, with its last packet"
        );
    }

    #[test]
    fn a_queued_new_flow_event_of_an_opening_flow_is_dropped_once() {
        let mut shown = HashMap::from([(key(53), 250)]);
        // Its creation, queued before the table was read: already shown.
        assert!(already_shown(&mut shown, &event(53, 200)));
        assert!(shown.is_empty(), "forgotten once matched");
        // Evicted and created again later: new again.
        assert!(!already_shown(&mut shown, &event(53, 260)));
        let mut shown = HashMap::from([(key(53), 250)]);
        assert!(
            !already_shown(&mut shown, &event(53, 251)),
            "after its last packet: new"
        );
        assert!(!already_shown(&mut shown, &event(80, 100)), "another flow");
        assert!(
            already_shown(&mut shown, &event(53, 250)),
            "at its last packet"
        );
    }
}
