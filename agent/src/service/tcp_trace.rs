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
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

use super::stream::{self, Feed, Offer, Sequenced, now_nanos};
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
        let (tx, out) = mpsc::channel(defaults::CLIENT_BUFFER);
        let mut sequenced = Sequenced::new(self.node.clone(), tx, Arc::new(AtomicU64::new(0)));
        // The buffer is empty: the first message always fits.
        let _ = sequenced.offer(
            pb::tcp_trace_event::Kind::Started(pb::TcpTraceStarted {
                trace_id: handle.id,
            }),
            now_nanos(),
        );
        let ring_lost_seen = self
            .agent
            .tcp
            .counters()
            .map_or(0, |c| c[counter::RINGBUF_FULL as usize]);
        let feed = TcpFeed {
            agent: self.agent.clone(),
            _handle: handle,
            states: req.states,
            own_netns: crate::peers::own_netns(),
            owners: HashMap::new(),
            ring_lost_seen,
        };
        stream::spawn(feed, Some(rx), sequenced);
        Ok(Box::pin(ReceiverStream::new(out)))
    }
}

/// One trace's stream.
struct TcpFeed {
    agent: Arc<Agent>,
    /// Keeps the kernel trace running; dropped with the stream.
    _handle: TcpHandle,
    states: bool,
    own_netns: Option<u64>,
    owners: HashMap<u64, Option<pb::NetnsOwner>>,
    /// The kernel's `ringbuf_full` counter as far as this stream has reported it.
    ring_lost_seen: u64,
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
        let Some(c) = self.agent.tcp.counters() else {
            return ControlFlow::Continue(());
        };
        let now = c[counter::RINGBUF_FULL as usize];
        let lost = now.saturating_sub(self.ring_lost_seen);
        if lost == 0 {
            return ControlFlow::Continue(());
        }
        let gap = pb::tcp_trace_event::Kind::Gap(pb::Gap {
            lost,
            stage: pb::DropStage::Kernel as i32,
            reason: "ringbuf_full".into(),
        });
        match out.offer(gap, now_nanos()) {
            Offer::Sent => self.ring_lost_seen = now,
            Offer::Full => {}
            Offer::Closed => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }
}
