//! The flow RPCs: `QueryFlows` (the kernel flow table, filtered, sorted, limited) and
//! `StreamEvents` (the agent's flow fan-out, one sequenced stream per client, see
//! [`super::stream`]).

use std::{
    pin::Pin,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use orb8_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

use super::stream::{self, Feed, Sequenced, now_nanos};
use crate::{
    convert::{self, Matcher},
    defaults,
    interfaces::{Role, Selected},
    runtime::{Agent, AgentEvent},
};

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

    /// The flow table, filtered, sorted and limited.
    pub fn query(&self, req: &pb::QueryFlowsRequest) -> Result<pb::QueryFlowsResponse, String> {
        let matcher = Matcher::new(req.filter.as_ref())?;
        let snap = self.agent.snapshot();
        let mut flows: Vec<pb::Flow> = snap
            .flows
            .iter()
            .map(|f| {
                let mut w = convert::flow(
                    &self.node,
                    self.agent.interface_name(f.key.ifindex),
                    f,
                    &self.agent.clock,
                );
                w.netns_owner = self
                    .agent
                    .peer(f.key.ifindex)
                    .map(|p| Box::new(convert::netns_owner(&p)));
                w
            })
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

    /// Starts a client's event stream: events from now on matching the request's filter.
    pub fn stream(&self, req: &pb::StreamEventsRequest) -> Result<EventStream, Status> {
        let matcher = Matcher::new(req.filter.as_ref()).map_err(Status::invalid_argument)?;
        let rx = self.agent.subscribe();
        let (tx, out) = mpsc::channel(defaults::CLIENT_BUFFER);
        let feed = FlowFeed {
            agent: self.agent.clone(),
            matcher,
        };
        let sequenced = Sequenced::new(self.node.clone(), tx, self.slow_client.clone());
        tokio::spawn(stream::run(feed, Some(rx), sequenced));
        Ok(Box::pin(ReceiverStream::new(out)))
    }
}

/// Turns the agent's events into one client's flow stream.
struct FlowFeed {
    agent: Arc<Agent>,
    matcher: Matcher,
}

impl Feed for FlowFeed {
    type In = AgentEvent;
    type Out = pb::Event;

    fn tick_every(&self) -> Duration {
        defaults::GAP_FLUSH
    }

    fn convert(
        &mut self,
        ev: AgentEvent,
        out: &Sequenced<pb::Event>,
    ) -> Option<(pb::event::Kind, i64)> {
        Some(match ev {
            AgentEvent::NewFlow(e) => {
                let mut f = convert::new_flow(
                    out.node(),
                    self.agent.interface_name(e.key.ifindex),
                    &e,
                    &self.agent.clock,
                );
                f.netns_owner = self
                    .agent
                    .peer(e.key.ifindex)
                    .map(|p| Box::new(convert::netns_owner(&p)));
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
