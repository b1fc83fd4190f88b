//! One sequenced, loss-counting stream to one gRPC client, generic over the message kind: the
//! flow stream (`StreamEvents`, [`pb::Event`]), the syscall trace stream (`TraceSyscalls`,
//! [`pb::SyscallTraceEvent`]), the drop trace stream (`TraceDrops`, [`pb::DropTraceEvent`]) and
//! the TCP trace stream (`TraceTcp`, [`pb::TcpTraceEvent`]) are all this stream.
//!
//! The rule, the same for both kinds (the client's merge relies on it, see `agent.proto`):
//! - Every message carries the stream's `node` and a `seq`: 1 for the first message, +1 for
//!   each message put into the client's buffer, events and `Gap`s alike. A message that does
//!   not fit takes no number, so the sequence never has holes; a hole means a bug, and the
//!   client reports it as `seq_jump`.
//! - Every lost event is reported in-band, in exactly one `Gap { lost, stage, reason }`:
//!   stage `agent`/`queue_overflow` when this stream fell behind the agent's fan-out queue,
//!   stage `client`/`slow_client` when the client's buffer was full. Client losses are also
//!   added to a shared counter (`GetStatus`, `GetSyscallSummary`); agent losses are counted by
//!   the [`Feed`]. The flow feed also reports, on its tick, new-flow events the kernel dropped
//!   because the ring buffer was full (stage `kernel`/`ringbuf_full`, counted by the kernel).
//! - While a loss is unreported no event is sent (it is counted as lost as well), so a `Gap`
//!   always comes before the events that followed the loss. Pending `Gap`s go out before the
//!   next event, or on the feed's periodic tick when no event comes.
//! - Messages that must not be dropped (a trace's `started` and `target_exited`) are offered
//!   with [`Sequenced::offer`], which counts nothing: the caller tries again later.
//! - A stream may open with a finite list ([`Feed::opening`]: the flows already active), read
//!   after it subscribed to the fan-out and before the RPC answers (so what happens after the
//!   client has its answer is never in the opening); only this opening waits for room in the
//!   client's buffer. Items fanned out meanwhile wait in the fan-out queue (falling behind it is an
//!   `agent` gap, as always).
//! - Past its opening, the stream never waits for the client; a full buffer is a counted loss,
//!   not back-pressure.
//!   It ends when the client goes away or the fan-out closes.

use std::{
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use orb8_proto as pb;
use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::defaults;

/// A message type of a sequenced stream.
pub trait Message: Send + 'static {
    /// What one message carries (the proto `oneof kind`).
    type Kind: Send;
    /// The message with its stream's node, sequence number and time.
    fn new(node: &str, seq: u64, time_unix_nanos: i64, kind: Self::Kind) -> Self;
    /// The payload reporting a loss.
    fn gap(gap: pb::Gap) -> Self::Kind;
}

impl Message for pb::Event {
    type Kind = pb::event::Kind;
    fn new(node: &str, seq: u64, time_unix_nanos: i64, kind: Self::Kind) -> Self {
        pb::Event {
            node: node.to_string(),
            seq,
            time_unix_nanos,
            kind: Some(kind),
        }
    }
    fn gap(gap: pb::Gap) -> Self::Kind {
        pb::event::Kind::Gap(gap)
    }
}

impl Message for pb::SyscallTraceEvent {
    type Kind = pb::syscall_trace_event::Kind;
    fn new(node: &str, seq: u64, time_unix_nanos: i64, kind: Self::Kind) -> Self {
        pb::SyscallTraceEvent {
            node: node.to_string(),
            seq,
            time_unix_nanos,
            kind: Some(kind),
        }
    }
    fn gap(gap: pb::Gap) -> Self::Kind {
        pb::syscall_trace_event::Kind::Gap(gap)
    }
}

impl Message for pb::DropTraceEvent {
    type Kind = pb::drop_trace_event::Kind;
    fn new(node: &str, seq: u64, time_unix_nanos: i64, kind: Self::Kind) -> Self {
        pb::DropTraceEvent {
            node: node.to_string(),
            seq,
            time_unix_nanos,
            kind: Some(kind),
        }
    }
    fn gap(gap: pb::Gap) -> Self::Kind {
        pb::drop_trace_event::Kind::Gap(gap)
    }
}

impl Message for pb::TcpTraceEvent {
    type Kind = pb::tcp_trace_event::Kind;
    fn new(node: &str, seq: u64, time_unix_nanos: i64, kind: Self::Kind) -> Self {
        pb::TcpTraceEvent {
            node: node.to_string(),
            seq,
            time_unix_nanos,
            kind: Some(kind),
        }
    }
    fn gap(gap: pb::Gap) -> Self::Kind {
        pb::tcp_trace_event::Kind::Gap(gap)
    }
}

/// The sending half of a client's buffer.
pub type Tx<M> = mpsc::Sender<Result<M, Status>>;

/// The client is gone; the stream is over.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientGone;

/// What [`Sequenced::offer`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// In the client's buffer, numbered.
    Sent,
    /// The buffer is full; nothing was numbered or counted.
    Full,
    /// The client is gone.
    Closed,
}

/// One client stream: numbers messages and keeps the losses not yet reported.
pub struct Sequenced<M: Message> {
    node: String,
    /// The last sequence number used.
    seq: u64,
    tx: Tx<M>,
    lost_agent: u64,
    lost_client: u64,
    slow_client: Arc<AtomicU64>,
}

impl<M: Message> Sequenced<M> {
    /// A stream for `node` into `tx`; client losses are also added to `slow_client`.
    pub fn new(node: String, tx: Tx<M>, slow_client: Arc<AtomicU64>) -> Self {
        Sequenced {
            node,
            seq: 0,
            tx,
            lost_agent: 0,
            lost_client: 0,
            slow_client,
        }
    }

    /// The node name the messages carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Puts one message into the client's buffer if it fits, numbering it; counts nothing.
    pub fn offer(&mut self, kind: M::Kind, time: i64) -> Offer {
        match self
            .tx
            .try_send(Ok(M::new(&self.node, self.seq + 1, time, kind)))
        {
            Ok(()) => {
                self.seq += 1;
                Offer::Sent
            }
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// Records `n` events this stream missed in the agent's fan-out queue.
    pub fn lost_upstream(&mut self, n: u64) {
        self.lost_agent += n;
    }

    /// Whether some loss is not reported yet.
    pub fn pending(&self) -> bool {
        self.lost_agent + self.lost_client > 0
    }

    /// Sends a `Gap` for each stage with unreported losses, as far as the buffer takes them.
    pub fn flush(&mut self) -> Result<(), ClientGone> {
        for stage in [pb::DropStage::Agent, pb::DropStage::Client] {
            let (lost, reason) = match stage {
                pb::DropStage::Agent => (self.lost_agent, "queue_overflow"),
                _ => (self.lost_client, "slow_client"),
            };
            if lost == 0 {
                continue;
            }
            let gap = M::gap(pb::Gap {
                lost,
                stage: stage as i32,
                reason: reason.to_string(),
            });
            match self.offer(gap, now_nanos()) {
                Offer::Sent => match stage {
                    pb::DropStage::Agent => self.lost_agent = 0,
                    _ => self.lost_client = 0,
                },
                Offer::Full => {}
                Offer::Closed => return Err(ClientGone),
            }
        }
        Ok(())
    }

    /// Sends one event after any pending `Gap`s; when it cannot go now, it is counted as lost
    /// to a slow client (and reported later).
    pub fn send(&mut self, kind: M::Kind, time: i64) -> Result<(), ClientGone> {
        self.flush()?;
        let offered = if self.pending() {
            Offer::Full
        } else {
            self.offer(kind, time)
        };
        match offered {
            Offer::Sent => Ok(()),
            Offer::Full => {
                self.lost_client += 1;
                self.slow_client.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Offer::Closed => Err(ClientGone),
        }
    }

    /// Sends one message of the stream's opening, waiting for room in the client's buffer
    /// (the opening is a finite list the client asked for, so it is not dropped); numbered like
    /// every other message.
    pub async fn send_waiting(&mut self, kind: M::Kind, time: i64) -> Result<(), ClientGone> {
        debug_assert!(!self.pending(), "the opening comes before any loss");
        let permit = self.tx.reserve().await.map_err(|_| ClientGone)?;
        self.seq += 1;
        permit.send(Ok(M::new(&self.node, self.seq, time, kind)));
        Ok(())
    }

    /// Completes when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// What feeds one stream: which fanned-out items become which messages, and what else the
/// stream does on its periodic tick.
pub trait Feed: Send + 'static {
    /// The items of the agent's fan-out queue.
    type In: Clone + Send + 'static;
    /// The messages sent to the client.
    type Out: Message;
    /// How often pending `Gap`s are flushed and [`Feed::tick`] runs.
    fn tick_every(&self) -> Duration;
    /// The message for one item and its time, or `None` when the client did not ask for it.
    fn convert(
        &mut self,
        item: Self::In,
        out: &Sequenced<Self::Out>,
    ) -> Option<(<Self::Out as Message>::Kind, i64)>;
    /// The messages the stream opens with, before any fanned-out item. Called once the stream
    /// has subscribed to the fan-out, so whatever happens after this reading is in the queue.
    fn opening(&mut self, _out: &Sequenced<Self::Out>) -> Vec<(<Self::Out as Message>::Kind, i64)> {
        Vec::new()
    }
    /// Counts `n` items this stream missed because it fell behind the fan-out queue.
    fn count_lagged(&mut self, n: u64);
    /// Runs after each tick's flush; `Break` ends the stream.
    fn tick(&mut self, _out: &mut Sequenced<Self::Out>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// Starts the stream: reads the feed's [`Feed::opening`] now, before the RPC answers, so that
/// whatever happens after the client has its answer comes as a fanned-out item, never in the
/// opening (a flow that starts after `StreamEvents` answered is a `NewFlow`), then feeds `out`
/// on a task of its own: first the opening, then from `rx` (none: the stream carries only what
/// [`Feed::tick`] sends) until the client goes away, the fan-out closes or the feed says stop.
/// `rx` must have been subscribed before this is called.
pub fn spawn<F: Feed>(
    mut feed: F,
    rx: Option<broadcast::Receiver<F::In>>,
    out: Sequenced<F::Out>,
) -> tokio::task::JoinHandle<()> {
    let opening = feed.opening(&out);
    tokio::spawn(run(feed, rx, out, opening))
}

async fn run<F: Feed>(
    mut feed: F,
    mut rx: Option<broadcast::Receiver<F::In>>,
    mut out: Sequenced<F::Out>,
    opening: Vec<(<F::Out as Message>::Kind, i64)>,
) {
    for (kind, time) in opening {
        if out.send_waiting(kind, time).await.is_err() {
            return;
        }
    }
    let mut tick = tokio::time::interval(feed.tick_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = async { rx.as_mut().expect("guarded").recv().await }, if rx.is_some() => {
                match item {
                    Ok(item) => {
                        if let Some((kind, time)) = feed.convert(item, &out)
                            && out.send(kind, time).is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        feed.count_lagged(n);
                        out.lost_upstream(n);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
            _ = tick.tick() => {
                if out.flush().is_err() || feed.tick(&mut out).is_break() {
                    return;
                }
            }
            _ = out.closed() => return,
        }
    }
}

/// Starts a trace's stream: its `started` message first (the client's buffer is empty, so it
/// always fits), then [`spawn`] of `feed`. Returns the client's end; client losses
/// are added to `slow_client`.
pub fn start_trace<F: Feed>(
    node: String,
    slow_client: Arc<AtomicU64>,
    started: <F::Out as Message>::Kind,
    feed: F,
    rx: Option<broadcast::Receiver<F::In>>,
) -> ReceiverStream<Result<F::Out, Status>> {
    let (tx, out) = mpsc::channel(defaults::CLIENT_BUFFER);
    let mut sequenced = Sequenced::new(node, tx, slow_client);
    let _ = sequenced.offer(started, now_nanos());
    spawn(feed, rx, sequenced);
    ReceiverStream::new(out)
}

/// A kernel counter of events its ring buffer had no room for (`ringbuf_full`), as far as one
/// stream has reported it. The kernel cannot tell which events they were, so every stream gets
/// the whole count, as `kernel`/`ringbuf_full` Gaps.
#[derive(Debug)]
pub struct RingLoss {
    reported: u64,
}

impl RingLoss {
    /// Counts from the counter's value `now` on: earlier losses are not this stream's.
    pub fn new(now: u64) -> Self {
        RingLoss { reported: now }
    }

    /// Offers a Gap for what the counter (`now`; `None` while its programs are not loaded)
    /// counted since the last report; a Gap that does not fit is offered again next time.
    /// `Break` when the client is gone.
    pub fn report<M: Message>(
        &mut self,
        now: Option<u64>,
        out: &mut Sequenced<M>,
    ) -> ControlFlow<()> {
        let Some(now) = now else {
            return ControlFlow::Continue(());
        };
        let lost = now.saturating_sub(self.reported);
        if lost == 0 {
            return ControlFlow::Continue(());
        }
        let gap = M::gap(pb::Gap {
            lost,
            stage: pb::DropStage::Kernel as i32,
            reason: "ringbuf_full".into(),
        });
        match out.offer(gap, now_nanos()) {
            Offer::Sent => self.reported = now,
            Offer::Full => {}
            Offer::Closed => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rx = mpsc::Receiver<Result<pb::Event, Status>>;

    fn flow(n: u64) -> pb::event::Kind {
        pb::event::Kind::NewFlow(pb::Flow {
            packets: n,
            ..Default::default()
        })
    }

    fn stream(buffer: usize) -> (Sequenced<pb::Event>, Rx, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::channel(buffer);
        let slow = Arc::new(AtomicU64::new(0));
        (Sequenced::new("n1".into(), tx, slow.clone()), rx, slow)
    }

    /// What a client read: `("flow", n)` per event, `("client"|"agent", lost)` per Gap, with
    /// the sequence checked to go 1, 2, 3... and the node to be set.
    fn read(rx: &mut Rx, next_seq: &mut u64) -> Vec<(&'static str, u64)> {
        let mut got = Vec::new();
        while let Ok(m) = rx.try_recv() {
            got.push(item(m.unwrap(), next_seq));
        }
        got
    }

    fn item(m: pb::Event, next_seq: &mut u64) -> (&'static str, u64) {
        assert_eq!(m.seq, *next_seq, "seq has no holes: {m:?}");
        assert_eq!(m.node, "n1");
        *next_seq += 1;
        match m.kind.unwrap() {
            pb::event::Kind::NewFlow(f) => ("flow", f.packets),
            pb::event::Kind::Gap(g) => match pb::DropStage::try_from(g.stage).unwrap() {
                pb::DropStage::Client => {
                    assert_eq!(g.reason, "slow_client");
                    ("client", g.lost)
                }
                pb::DropStage::Agent => {
                    assert_eq!(g.reason, "queue_overflow");
                    ("agent", g.lost)
                }
                other => panic!("unexpected stage {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn kernel_ring_losses_are_reported_once_each() {
        let (mut s, mut rx, _) = stream(1);
        let mut loss = RingLoss::new(5);
        assert!(loss.report(None, &mut s).is_continue(), "not loaded");
        assert!(loss.report(Some(5), &mut s).is_continue());
        assert!(
            rx.try_recv().is_err(),
            "nothing lost since the stream began"
        );
        s.send(flow(1), 0).unwrap();
        assert!(
            loss.report(Some(8), &mut s).is_continue(),
            "full: tried later"
        );
        let mut seq = 1;
        assert_eq!(read(&mut rx, &mut seq), vec![("flow", 1)]);
        assert!(loss.report(Some(9), &mut s).is_continue());
        let gap = rx.try_recv().unwrap().unwrap();
        assert_eq!(gap.seq, 2);
        let Some(pb::event::Kind::Gap(g)) = gap.kind else {
            panic!("{gap:?}");
        };
        assert_eq!(
            (g.lost, g.stage, g.reason.as_str()),
            (4, pb::DropStage::Kernel as i32, "ringbuf_full")
        );
        assert!(loss.report(Some(9), &mut s).is_continue());
        assert!(rx.try_recv().is_err(), "reported once");
        drop(rx);
        assert!(
            loss.report(Some(10), &mut s).is_break(),
            "the client is gone"
        );
    }

    #[test]
    fn numbers_every_message_from_one() {
        let (mut s, mut rx, slow) = stream(8);
        for n in 1..=3 {
            s.send(flow(n), 7).unwrap();
        }
        let mut seq = 1;
        assert_eq!(
            read(&mut rx, &mut seq),
            vec![("flow", 1), ("flow", 2), ("flow", 3)]
        );
        assert_eq!(slow.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_slow_clients_losses_come_as_one_gap_before_the_next_event() {
        let (mut s, mut rx, slow) = stream(2);
        for n in 1..=5 {
            s.send(flow(n), 0).unwrap();
        }
        assert_eq!(slow.load(Ordering::Relaxed), 3, "3 did not fit");
        let mut seq = 1;
        assert_eq!(read(&mut rx, &mut seq), vec![("flow", 1), ("flow", 2)]);
        s.send(flow(6), 0).unwrap();
        assert_eq!(
            read(&mut rx, &mut seq),
            vec![("client", 3), ("flow", 6)],
            "the gap takes a sequence number like an event"
        );
        assert!(!s.pending());
        assert_eq!(slow.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_gap_that_does_not_fit_holds_back_later_events() {
        let (mut s, mut rx, slow) = stream(1);
        s.send(flow(1), 0).unwrap();
        s.send(flow(2), 0).unwrap(); // lost: the buffer is full
        let mut seq = 1;
        assert_eq!(read(&mut rx, &mut seq), vec![("flow", 1)]);
        // Room for one: the gap goes, event 3 does not fit behind it.
        s.send(flow(3), 0).unwrap();
        assert_eq!(read(&mut rx, &mut seq), vec![("client", 1)]);
        assert!(s.pending());
        // Event 4 finds event 3's loss unreported and the buffer free: the gap goes first,
        // and event 4 is lost behind it (one slot), so it waits in the next gap.
        s.send(flow(4), 0).unwrap();
        assert_eq!(read(&mut rx, &mut seq), vec![("client", 1)]);
        s.flush().unwrap();
        assert_eq!(read(&mut rx, &mut seq), vec![("client", 1)]);
        s.send(flow(5), 0).unwrap();
        assert_eq!(read(&mut rx, &mut seq), vec![("flow", 5)]);
        assert_eq!(slow.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn offer_counts_no_loss_and_takes_no_number_when_full() {
        let (mut s, mut rx, slow) = stream(1);
        assert_eq!(s.offer(flow(1), 0), Offer::Sent);
        assert_eq!(s.offer(flow(2), 0), Offer::Full);
        assert!(!s.pending());
        assert_eq!(slow.load(Ordering::Relaxed), 0);
        let mut seq = 1;
        assert_eq!(read(&mut rx, &mut seq), vec![("flow", 1)]);
        assert_eq!(s.offer(flow(3), 0), Offer::Sent);
        assert_eq!(read(&mut rx, &mut seq), vec![("flow", 3)]);
        drop(rx);
        assert_eq!(s.offer(flow(4), 0), Offer::Closed);
        assert_eq!(s.send(flow(5), 0), Err(ClientGone));
    }

    #[test]
    fn every_event_is_delivered_or_in_exactly_one_gap() {
        // A client reading in bursts of varying size against a small buffer.
        let (mut s, mut rx, slow) = stream(3);
        let mut seq = 1;
        let (mut delivered, mut gapped) = (0u64, 0u64);
        let mut x: u32 = 12345;
        const EVENTS: u64 = 5000;
        for n in 1..=EVENTS {
            s.send(flow(n), 0).unwrap();
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if (x >> 16).is_multiple_of(4) {
                for (what, k) in read(&mut rx, &mut seq) {
                    match what {
                        "flow" => delivered += 1,
                        _ => gapped += k,
                    }
                }
            }
        }
        // Drain and flush until nothing is pending.
        for _ in 0..10 {
            s.flush().unwrap();
            for (what, k) in read(&mut rx, &mut seq) {
                match what {
                    "flow" => delivered += 1,
                    _ => gapped += k,
                }
            }
        }
        assert!(!s.pending());
        assert!(gapped > 0 && delivered > 0, "{delivered} {gapped}");
        assert_eq!(delivered + gapped, EVENTS);
        assert_eq!(slow.load(Ordering::Relaxed), gapped);
    }

    /// A feed of numbers: each becomes a flow whose packet count is the number; odd ones only
    /// when `odd_only`. The stream opens with `opening` (numbers too).
    struct Numbers {
        odd_only: bool,
        lagged: Arc<AtomicU64>,
        opening: Vec<u64>,
    }

    impl Feed for Numbers {
        type In = u64;
        type Out = pb::Event;
        fn tick_every(&self) -> Duration {
            Duration::from_millis(250)
        }
        fn convert(
            &mut self,
            n: u64,
            out: &Sequenced<pb::Event>,
        ) -> Option<(pb::event::Kind, i64)> {
            assert_eq!(out.node(), "n1");
            (!self.odd_only || n % 2 == 1).then(|| (flow(n), n as i64))
        }
        fn opening(&mut self, _out: &Sequenced<pb::Event>) -> Vec<(pb::event::Kind, i64)> {
            self.opening.iter().map(|n| (flow(*n), 0)).collect()
        }
        fn count_lagged(&mut self, n: u64) {
            self.lagged.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn numbers(odd_only: bool) -> (Numbers, Arc<AtomicU64>) {
        let lagged = Arc::new(AtomicU64::new(0));
        let feed = Numbers {
            odd_only,
            lagged: lagged.clone(),
            opening: Vec::new(),
        };
        (feed, lagged)
    }

    async fn next(rx: &mut Rx, seq: &mut u64) -> (&'static str, u64) {
        let m = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a message")
            .expect("the stream is open")
            .unwrap();
        item(m, seq)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_gap_goes_out_on_the_tick_without_a_next_event() {
        let (fan, sub) = broadcast::channel(16);
        let (s, mut rx, slow) = stream(1);
        let (feed, _) = numbers(false);
        let task = spawn(feed, Some(sub), s);
        for n in 1..=3 {
            fan.send(n).unwrap();
        }
        // Once the feeder has taken all three (event 1 buffered, 2 and 3 lost), read event 1.
        for _ in 0..1000 {
            if slow.load(Ordering::Relaxed) == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(slow.load(Ordering::Relaxed), 2);
        let mut seq = 1;
        assert_eq!(next(&mut rx, &mut seq).await, ("flow", 1));
        let before = tokio::time::Instant::now();
        // No further event: only the tick can send the gap.
        assert_eq!(next(&mut rx, &mut seq).await, ("client", 2));
        assert!(before.elapsed() <= Duration::from_millis(250));
        fan.send(4).unwrap();
        assert_eq!(next(&mut rx, &mut seq).await, ("flow", 4));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the feeder ends when the client goes")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn falling_behind_the_fan_out_is_an_agent_gap() {
        let (fan, sub) = broadcast::channel(2);
        for n in 1..=5 {
            fan.send(n).unwrap();
        }
        let (s, mut rx, slow) = stream(16);
        let (feed, lagged) = numbers(true);
        let task = spawn(feed, Some(sub), s);
        let mut seq = 1;
        assert_eq!(next(&mut rx, &mut seq).await, ("agent", 3));
        // 4 is filtered out; 5 passes.
        assert_eq!(next(&mut rx, &mut seq).await, ("flow", 5));
        assert_eq!(lagged.load(Ordering::Relaxed), 3);
        assert_eq!(slow.load(Ordering::Relaxed), 0);
        drop(fan);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the feeder ends when the fan-out closes")
            .unwrap();
        assert!(rx.recv().await.is_none(), "and the client's stream ends");
    }

    #[tokio::test(start_paused = true)]
    async fn the_opening_waits_for_the_client_and_comes_first() {
        let (fan, sub) = broadcast::channel(16);
        // Fanned out before the opening is sent: queued behind it.
        fan.send(101).unwrap();
        let (s, mut rx, slow) = stream(2);
        let (mut feed, lagged) = numbers(false);
        feed.opening = (1..=5).collect();
        let task = spawn(feed, Some(sub), s);
        let mut seq = 1;
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(next(&mut rx, &mut seq).await);
        }
        assert_eq!(
            got,
            vec![
                ("flow", 1),
                ("flow", 2),
                ("flow", 3),
                ("flow", 4),
                ("flow", 5),
                ("flow", 101)
            ],
            "an opening longer than the buffer is not lost"
        );
        assert_eq!(slow.load(Ordering::Relaxed), 0);
        assert_eq!(lagged.load(Ordering::Relaxed), 0);
        drop(fan);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the feeder ends when the fan-out closes")
            .unwrap();
    }
}
