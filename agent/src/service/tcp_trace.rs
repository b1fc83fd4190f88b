//! The `TraceTcp` RPC: starts the kernel TCP trace for the requested addresses and streams its
//! events (connects, accepts, closes, resets, retransmits; every state change when asked) as
//! one sequenced stream, see [`super::stream`]. Sockets in other network namespaces are named by
//! the process living there.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use orb8_common::tcp::{TcpEvent, counter, kind};
use orb8_flowspec::ip_from_bytes;
use orb8_proto as pb;
use tokio_stream::Stream;
use tonic::Status;

use super::stream::{self, Feed, RingLoss, Sequenced};
use crate::{
    convert, defaults,
    runtime::Agent,
    tcp::{TcpError, TcpHandle},
};

/// A client's TCP trace stream.
pub type TcpStream = Pin<Box<dyn Stream<Item = Result<pb::TcpTraceEvent, Status>> + Send>>;

/// The TCP side of the service.
pub struct TcpTraces {
    agent: Arc<Agent>,
    node: String,
}

impl TcpTraces {
    /// TCP traces on `agent`, reported as node `node`.
    pub fn new(agent: Arc<Agent>, node: String) -> Self {
        TcpTraces { agent, node }
    }

    /// Starts a trace and its stream, whose first message is `started`.
    pub fn trace(&self, req: &pb::TraceTcpRequest) -> Result<TcpStream, Status> {
        let mut addrs = Vec::with_capacity(req.addrs.len());
        for a in &req.addrs {
            addrs.push(ip_from_bytes(a).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "an address is {} bytes; give 4 (IPv4) or 16 (IPv6)",
                    a.len()
                ))
            })?);
        }
        // Subscribed before the trace starts, so no event of it is missed.
        let rx = self.agent.tcp.subscribe();
        let handle = self
            .agent
            .tcp
            .start(&addrs, req.states)
            .map_err(|e| match e {
                TcpError::Busy { .. } => Status::failed_precondition(e.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        let started = pb::tcp_trace_event::Kind::Started(pb::TcpTraceStarted {
            trace_id: handle.id,
        });
        let feed = TcpFeed {
            agent: self.agent.clone(),
            _handle: handle,
            states: req.states,
            own_netns: crate::peers::own_netns(),
            owners: HashMap::new(),
            ring_loss: RingLoss::new(kernel_lost(&self.agent).unwrap_or(0)),
        };
        let slow = Arc::new(AtomicU64::new(0));
        let out = stream::start_trace(self.node.clone(), slow, started, feed, Some(rx));
        Ok(Box::pin(out))
    }
}

/// The kernel's `ringbuf_full` counter while the programs are loaded.
fn kernel_lost(agent: &Agent) -> Option<u64> {
    agent
        .tcp
        .counters()
        .map(|c| c[counter::RINGBUF_FULL as usize])
}

/// One trace's stream.
struct TcpFeed {
    agent: Arc<Agent>,
    /// Keeps the kernel trace running; dropped with the stream.
    _handle: TcpHandle,
    states: bool,
    own_netns: Option<u64>,
    owners: HashMap<u64, Option<pb::NetnsOwner>>,
    /// The kernel's `ringbuf_full` losses as far as this stream has reported them.
    ring_loss: RingLoss,
}

impl Feed for TcpFeed {
    type In = TcpEvent;
    type Out = pb::TcpTraceEvent;

    fn tick_every(&self) -> Duration {
        defaults::DROP_TICK
    }

    fn convert(
        &mut self,
        ev: TcpEvent,
        _out: &Sequenced<Self::Out>,
    ) -> Option<(pb::tcp_trace_event::Kind, i64)> {
        if ev.kind == kind::STATE && !self.states {
            return None;
        }
        let mut e = convert::tcp_event(&ev, &self.agent.clock);
        if e.netns != 0 && Some(e.netns) != self.own_netns {
            e.netns_owner = self
                .owners
                .entry(e.netns)
                .or_insert_with(|| {
                    crate::peers::owner_of(e.netns).map(|p| convert::netns_owner(&p))
                })
                .clone();
        }
        let time = convert::unix_nanos(&self.agent.clock, ev.ts_ns);
        Some((pb::tcp_trace_event::Kind::Tcp(e), time))
    }

    fn count_lagged(&mut self, n: u64) {
        self.agent.tcp.lost_agent.fetch_add(n, Ordering::Relaxed);
    }

    /// Reports events the kernel could not send (ring buffer full) as a `kernel`/`ringbuf_full`
    /// Gap: every stream gets the whole count.
    fn tick(&mut self, out: &mut Sequenced<Self::Out>) -> ControlFlow<()> {
        self.ring_loss.report(kernel_lost(&self.agent), out)
    }
}
