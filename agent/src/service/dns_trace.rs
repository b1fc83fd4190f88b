//! `TraceDns`: the agent's DNS exchanges (see [`crate::dns`]) from now on, one sequenced stream
//! per client (see [`super::stream`]). DNS messages the kernel could not hand over are reported
//! on the stream's tick as `kernel` Gaps, by reason (`dns_ringbuf_full`, `dns_load_failed`).

use std::{ops::ControlFlow, pin::Pin, sync::Arc, time::Duration};

use orb8_common::counter;
use orb8_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

use super::stream::{self, Feed, Offer, Sequenced, now_nanos};
use crate::{convert, defaults, dns::Exchange, runtime::Agent};

/// A client's DNS stream.
pub type DnsStream = Pin<Box<dyn Stream<Item = Result<pb::DnsTraceEvent, Status>> + Send>>;

impl stream::Message for pb::DnsTraceEvent {
    type Kind = pb::dns_trace_event::Kind;
    fn new(node: &str, seq: u64, time_unix_nanos: i64, kind: Self::Kind) -> Self {
        pb::DnsTraceEvent {
            node: node.to_string(),
            seq,
            time_unix_nanos,
            kind: Some(kind),
        }
    }
    fn gap(gap: pb::Gap) -> Self::Kind {
        pb::dns_trace_event::Kind::Gap(gap)
    }
}

/// The DNS side of the service. Exchanges clients were too slow to take are counted in the
/// agent's `dns_slow_client`.
pub struct DnsTraces {
    agent: Arc<Agent>,
    node: String,
}

impl DnsTraces {
    /// DNS of `agent`, reported as node `node`.
    pub fn new(agent: Arc<Agent>, node: String) -> Self {
        DnsTraces { agent, node }
    }

    /// Starts a client's DNS stream.
    pub fn trace(&self, _req: &pb::TraceDnsRequest) -> DnsStream {
        let rx = self.agent.subscribe_dns();
        let (tx, out) = mpsc::channel(defaults::CLIENT_BUFFER);
        let feed = DnsFeed {
            kernel_lost_seen: kernel_lost(&self.agent),
            agent: self.agent.clone(),
        };
        let sequenced = Sequenced::new(
            self.node.clone(),
            tx,
            self.agent.stats.dns_slow_client.clone(),
        );
        stream::spawn(feed, Some(rx), sequenced);
        Box::pin(ReceiverStream::new(out))
    }
}

/// The kernel counters of lost DNS messages, reported by their names.
const KERNEL_LOSSES: [u32; 2] = [counter::DNS_RINGBUF_FULL, counter::DNS_LOAD_FAILED];

/// DNS messages the kernel lost so far, per [`KERNEL_LOSSES`] entry.
fn kernel_lost(agent: &Agent) -> [u64; 2] {
    let c = agent.counters();
    KERNEL_LOSSES.map(|i| c[i as usize])
}

/// Turns the agent's DNS exchanges into one client's stream.
struct DnsFeed {
    agent: Arc<Agent>,
    /// The kernel's DNS losses as far as this stream has reported them.
    kernel_lost_seen: [u64; 2],
}

impl Feed for DnsFeed {
    type In = Exchange;
    type Out = pb::DnsTraceEvent;

    fn tick_every(&self) -> Duration {
        defaults::GAP_FLUSH
    }

    fn convert(
        &mut self,
        e: Exchange,
        _out: &Sequenced<pb::DnsTraceEvent>,
    ) -> Option<(pb::dns_trace_event::Kind, i64)> {
        let mut x =
            convert::dns_exchange(&e, self.agent.interface_name(e.ifindex), &self.agent.clock);
        x.interface_role = self
            .agent
            .interface_role(e.ifindex)
            .map(|r| r.as_str().to_string())
            .unwrap_or_default();
        x.netns_owner = self.agent.peer(e.ifindex).map(|p| convert::netns_owner(&p));
        let t = x.query_unix_nanos;
        Some((pb::dns_trace_event::Kind::Exchange(x), t))
    }

    fn count_lagged(&mut self, n: u64) {
        self.agent.count_dns_lost(n);
    }

    fn tick(&mut self, out: &mut Sequenced<pb::DnsTraceEvent>) -> ControlFlow<()> {
        let now = kernel_lost(&self.agent);
        for (k, index) in KERNEL_LOSSES.into_iter().enumerate() {
            let lost = now[k].saturating_sub(self.kernel_lost_seen[k]);
            if lost == 0 {
                continue;
            }
            let gap = pb::dns_trace_event::Kind::Gap(pb::Gap {
                lost,
                stage: pb::DropStage::Kernel as i32,
                reason: counter::NAMES[index as usize].into(),
            });
            match out.offer(gap, now_nanos()) {
                Offer::Sent => self.kernel_lost_seen[k] = now[k],
                Offer::Full => {}
                Offer::Closed => return ControlFlow::Break(()),
            }
        }
        ControlFlow::Continue(())
    }
}
