//! The drop RPCs: `TraceDrops` (start the kernel drop trace for the requested addresses and
//! stream its new keys as one sequenced stream, see [`super::stream`]) and `GetDropSummary` (an
//! open trace's drops since it started, every key with its counts).
//!
//! Each drop is named where it happened: the reason by the running kernel's name, the interface
//! by name when it is in the agent's network namespace, the namespace by the process living in
//! it (its container and pod UID, for the client to name the pod).

use std::{
    collections::HashMap,
    ops::ControlFlow,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use orb8_common::drops::{DropEvent, DropStats, counter};
use orb8_flowspec::ip_from_bytes;
use orb8_proto as pb;
use tokio_stream::Stream;
use tonic::Status;

use super::stream::{self, Feed, RingLoss, Sequenced};
use crate::{
    convert, defaults,
    drops::{DropError, DropHandle},
    runtime::Agent,
};

/// A client's drop trace stream.
pub type DropStream = Pin<Box<dyn Stream<Item = Result<pb::DropTraceEvent, Status>> + Send>>;

/// New-key events each open trace's client was too slow to take, by trace id.
type Registry = Arc<Mutex<HashMap<u64, Arc<AtomicU64>>>>;

/// The drop side of the service.
pub struct DropTraces {
    agent: Arc<Agent>,
    node: String,
    slow_client: Registry,
}

/// Names the places drops happened, remembering each namespace's owner.
#[derive(Default)]
struct Places {
    own_netns: Option<u64>,
    owners: HashMap<u64, Option<pb::NetnsOwner>>,
}

impl Places {
    fn new() -> Places {
        Places {
            own_netns: crate::peers::own_netns(),
            owners: HashMap::new(),
        }
    }

    fn name(&mut self, d: &mut pb::PacketDrop) {
        if d.netns == 0 {
            return;
        }
        if Some(d.netns) == self.own_netns {
            if d.ifindex != 0 {
                d.interface = interface_name(d.ifindex).unwrap_or_default();
            }
            return;
        }
        d.netns_owner = self
            .owners
            .entry(d.netns)
            .or_insert_with(|| crate::peers::owner_of(d.netns).map(|p| convert::netns_owner(&p)))
            .clone();
    }
}

fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

impl DropTraces {
    /// Drop traces on `agent`, reported as node `node`.
    pub fn new(agent: Arc<Agent>, node: String) -> Self {
        DropTraces {
            agent,
            node,
            slow_client: Registry::default(),
        }
    }

    /// Starts a trace and its stream, whose first message is `started`.
    pub fn trace(&self, req: &pb::TraceDropsRequest) -> Result<DropStream, Status> {
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
        let rx = self.agent.drops.subscribe();
        let handle = self.agent.drops.start(&addrs).map_err(|e| match e {
            DropError::Busy { .. } => Status::failed_precondition(e.to_string()),
            other => Status::internal(other.to_string()),
        })?;
        let started = pb::drop_trace_event::Kind::Started(pb::DropTraceStarted {
            trace_id: handle.id,
            reasons_known: handle.reasons.len() as u32,
        });
        let slow = Arc::new(AtomicU64::new(0));
        self.slow_client
            .lock()
            .expect("trace registry lock")
            .insert(handle.id, slow.clone());
        let feed = DropFeed {
            agent: self.agent.clone(),
            handle,
            places: Places::new(),
            ring_loss: RingLoss::new(kernel_lost(&self.agent).unwrap_or(0)),
            registry: self.slow_client.clone(),
        };
        let out = stream::start_trace(self.node.clone(), slow, started, feed, Some(rx));
        Ok(Box::pin(out))
    }

    /// The drops of open trace `id` since it started.
    pub fn summary(&self, id: u64) -> Result<pb::DropSummary, Status> {
        let summary = self.agent.drops.summary(id).ok_or_else(|| {
            Status::not_found(format!("no drop trace {id} is running on this agent"))
        })?;
        let reasons = self.agent.drops.reasons().unwrap_or_default();
        let slow = self
            .slow_client
            .lock()
            .expect("trace registry lock")
            .get(&id)
            .map(|s| s.load(Ordering::Relaxed))
            .unwrap_or(0);
        let mut places = Places::new();
        let mut drops: Vec<pb::PacketDrop> = summary
            .drops
            .iter()
            .map(|(k, s)| {
                let mut d = convert::packet_drop(k, s, &reasons, &self.agent.clock);
                places.name(&mut d);
                d
            })
            .collect();
        drops.sort_by(|a, b| {
            b.packets
                .cmp(&a.packets)
                .then_with(|| a.reason.cmp(&b.reason))
        });
        Ok(pb::DropSummary {
            node: self.node.clone(),
            drops,
            counters: counter::NAMES
                .iter()
                .zip(summary.counters)
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            elapsed_ms: summary.elapsed.as_millis() as u64,
            lost_agent: summary.lost_agent,
            lost_client: slow,
        })
    }
}

/// The kernel's `ringbuf_full` counter while the program is loaded.
fn kernel_lost(agent: &Agent) -> Option<u64> {
    agent
        .drops
        .counters()
        .map(|c| c[counter::RINGBUF_FULL as usize])
}

/// One trace's stream: new-key drops, and the kernel's lost events as `Gap`s.
struct DropFeed {
    agent: Arc<Agent>,
    /// Keeps the kernel trace running; dropped with the stream.
    handle: DropHandle,
    places: Places,
    /// The kernel's `ringbuf_full` losses as far as this stream has reported them.
    ring_loss: RingLoss,
    registry: Registry,
}

impl Feed for DropFeed {
    type In = DropEvent;
    type Out = pb::DropTraceEvent;

    fn tick_every(&self) -> Duration {
        defaults::DROP_TICK
    }

    fn convert(
        &mut self,
        ev: DropEvent,
        _out: &Sequenced<Self::Out>,
    ) -> Option<(pb::drop_trace_event::Kind, i64)> {
        let stats = DropStats {
            packets: 1,
            bytes: ev.len as u64,
            first_seen_ns: ev.ts_ns,
            last_seen_ns: ev.ts_ns,
        };
        let mut d = convert::packet_drop(&ev.key, &stats, &self.handle.reasons, &self.agent.clock);
        self.places.name(&mut d);
        let time = d.first_seen_unix_nanos;
        Some((pb::drop_trace_event::Kind::Drop(d), time))
    }

    fn count_lagged(&mut self, n: u64) {
        self.agent.drops.lost_agent.fetch_add(n, Ordering::Relaxed);
    }

    /// Reports new-key events the kernel could not send (ring buffer full) since the last
    /// report, as a `kernel`/`ringbuf_full` Gap: every stream gets the whole count.
    fn tick(&mut self, out: &mut Sequenced<Self::Out>) -> ControlFlow<()> {
        self.ring_loss.report(kernel_lost(&self.agent), out)
    }
}

impl Drop for DropFeed {
    fn drop(&mut self) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(&self.handle.id);
        }
    }
}
