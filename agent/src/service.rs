//! The `orb8.agent.v1` gRPC service over a running [`Agent`], and the server around it: loopback
//! or unix-socket listener, per-session token, idle exit, graceful shutdown.

use std::{
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use orb8_common::counter;
use orb8_proto::{self as pb, agent_service_server::AgentServiceServer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{broadcast::error::RecvError, mpsc},
};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, transport::server::Connected};

use crate::{
    convert::{self, Matcher},
    runtime::{Agent, AgentEvent},
};

/// Events buffered per client stream; a client further behind loses events, counted as
/// `slow_client` and reported to it in a `Gap`.
pub const CLIENT_BUFFER: usize = 4096;

/// Connection bookkeeping shared by the listener and the idle watchdog.
#[derive(Debug)]
pub struct Activity {
    connections: AtomicUsize,
    last_change: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            connections: AtomicUsize::new(0),
            last_change: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How long no client has been connected; zero while one is.
    pub fn idle_for(&self) -> Duration {
        if self.connections() > 0 {
            return Duration::ZERO;
        }
        self.last_change.lock().expect("activity lock").elapsed()
    }

    fn open(&self) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        *self.last_change.lock().expect("activity lock") = Instant::now();
    }

    fn close(&self) {
        self.connections.fetch_sub(1, Ordering::SeqCst);
        *self.last_change.lock().expect("activity lock") = Instant::now();
    }
}

/// A client connection that counts itself in [`Activity`] while open.
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        activity.open();
        Tracked { inner, activity }
    }
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        self.activity.close();
    }
}

impl<T: Connected> Connected for Tracked<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The gRPC service.
pub struct Service {
    agent: Arc<Agent>,
    node: String,
    slow_client_drops: Arc<AtomicU64>,
    /// Syscall events each open trace's client was too slow to take, by trace id.
    trace_slow: Arc<Mutex<std::collections::HashMap<u64, Arc<AtomicU64>>>>,
}

impl Service {
    /// A service answering for `agent` as node `node`.
    pub fn new(agent: Arc<Agent>, node: String) -> Self {
        Service {
            agent,
            node,
            slow_client_drops: Arc::default(),
            trace_slow: Arc::default(),
        }
    }

    /// The status reply.
    pub fn status(&self) -> pb::GetStatusResponse {
        let snap = self.agent.snapshot();
        let c = &snap.counters;
        let (mode, programs) = self.agent.probe_info();
        let drops = vec![
            drop_counter(
                pb::DropStage::Kernel,
                "ringbuf_full",
                c[counter::RINGBUF_FULL as usize],
            ),
            drop_counter(
                pb::DropStage::Kernel,
                "flow_insert_failed",
                c[counter::FLOW_INSERT_FAILED as usize],
            ),
            drop_counter(
                pb::DropStage::Agent,
                "queue_overflow",
                self.agent
                    .stats
                    .events_lost_slow_consumer
                    .load(Ordering::Relaxed),
            ),
            drop_counter(
                pb::DropStage::Client,
                "slow_client",
                self.slow_client_drops.load(Ordering::Relaxed),
            ),
        ];
        let mut drops = drops;
        if let Some(sc) = self.agent.syscalls.counters() {
            use orb8_common::sys::counter as sys;
            for i in [sys::INFLIGHT_FULL, sys::RINGBUF_FULL, sys::ERRNO_MAP_FULL] {
                drops.push(drop_counter(
                    pb::DropStage::Kernel,
                    &format!("syscall_{}", sys::NAMES[i as usize]),
                    sc[i as usize],
                ));
            }
        }
        let not_parsed = [
            counter::NOT_IP,
            counter::TRUNCATED_L2,
            counter::BAD_L3,
            counter::BAD_L4,
            counter::IPV6_EXT_TOO_DEEP,
            counter::PULL_FAILED,
        ]
        .into_iter()
        .map(|i| (counter::NAMES[i as usize].to_string(), c[i as usize]))
        .collect();
        pb::GetStatusResponse {
            node: self.node.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: pb::PROTOCOL_VERSION,
            kernel_release: kernel_release(),
            btf_present: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
            attach_mode: mode.to_string(),
            interfaces: self.agent.interfaces().iter().map(iface).collect(),
            programs: programs.into_iter().map(String::from).collect(),
            counters: Some(pb::Counters {
                events_processed: self.agent.stats.events_received.load(Ordering::Relaxed),
                packets_seen: c[counter::PACKETS_SEEN as usize],
                active_flows: snap.flows.len() as u64,
                flow_map_evictions: snap.flows_evicted,
                drops,
                packets_not_parsed: not_parsed,
            }),
            uptime_ms: self.agent.uptime().as_millis() as u64,
            arch: orb8_syscalls::Arch::current()
                .map(|a| a.as_str())
                .unwrap_or(std::env::consts::ARCH)
                .to_string(),
        }
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
}

fn drop_counter(stage: pb::DropStage, reason: &str, count: u64) -> pb::DropCounter {
    pb::DropCounter {
        stage: stage as i32,
        reason: reason.to_string(),
        count,
    }
}

fn iface(s: &crate::interfaces::Selected) -> pb::Interface {
    pb::Interface {
        index: s.index,
        name: s.name.clone(),
        role: s.role.as_str().to_string(),
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Builds stream events with consecutive `seq` numbers for one client stream.
struct Sequencer {
    node: String,
    seq: u64,
}

impl Sequencer {
    fn next(&mut self, kind: pb::event::Kind, time: i64) -> pb::Event {
        self.seq += 1;
        pb::Event {
            node: self.node.clone(),
            seq: self.seq,
            time_unix_nanos: time,
            kind: Some(kind),
        }
    }
}

/// Lost events not yet reported to the client, by stage.
#[derive(Default)]
struct PendingGaps {
    agent: u64,
    client: u64,
}

type Tx = mpsc::Sender<Result<pb::Event, Status>>;

/// Result of offering an event to a client's buffer.
enum Sent {
    Yes,
    Full,
    Closed,
}

fn offer(tx: &Tx, seq: &mut Sequencer, kind: pb::event::Kind, time: i64) -> Sent {
    match tx.try_send(Ok(seq.next(kind, time))) {
        Ok(()) => Sent::Yes,
        Err(mpsc::error::TrySendError::Full(_)) => {
            seq.seq -= 1;
            Sent::Full
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
    }
}

impl PendingGaps {
    /// Sends a `Gap` for each stage with unreported losses; false when the client is gone.
    fn flush(&mut self, tx: &Tx, seq: &mut Sequencer) -> bool {
        for (stage, reason, lost) in [
            (pb::DropStage::Agent, "queue_overflow", &mut self.agent),
            (pb::DropStage::Client, "slow_client", &mut self.client),
        ] {
            if *lost == 0 {
                continue;
            }
            let gap = pb::event::Kind::Gap(pb::Gap {
                lost: *lost,
                stage: stage as i32,
                reason: reason.to_string(),
            });
            match offer(tx, seq, gap, now_nanos()) {
                Sent::Yes => *lost = 0,
                Sent::Full => {}
                Sent::Closed => return false,
            }
        }
        true
    }

    fn any(&self) -> bool {
        self.agent + self.client > 0
    }
}

/// Feeds one client stream from the agent's events: filters, numbers, and never waits for the
/// client. Events that do not fit its buffer are counted and reported in a `Gap` as soon as
/// there is room, before the next event, or at the latest a quarter second later.
async fn run_stream(
    agent: Arc<Agent>,
    matcher: Matcher,
    mut rx: tokio::sync::broadcast::Receiver<AgentEvent>,
    tx: Tx,
    slow: Arc<AtomicU64>,
    mut seq: Sequencer,
) {
    let mut pending = PendingGaps::default();
    let mut flush = tokio::time::interval(Duration::from_millis(250));
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = flush.tick(), if pending.any() => {
                if !pending.flush(&tx, &mut seq) {
                    return;
                }
                continue;
            }
            _ = tx.closed() => return,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                agent.count_lost(n);
                pending.agent += n;
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let (kind, time) = match &ev {
            AgentEvent::NewFlow(e) => {
                let mut f = convert::new_flow(
                    &seq.node,
                    agent.interface_name(e.key.ifindex),
                    e,
                    &agent.clock,
                );
                f.netns_owner = agent
                    .peer(e.key.ifindex)
                    .map(|p| Box::new(convert::netns_owner(&p)));
                if !matcher.matches(&f) {
                    continue;
                }
                let t = f.first_seen_unix_nanos;
                (pb::event::Kind::NewFlow(f), t)
            }
            AgentEvent::Attached(s) => (interface_change(s, true, String::new()), now_nanos()),
            AgentEvent::Detached { index, name } => {
                let s = crate::interfaces::Selected {
                    index: *index,
                    name: name.clone(),
                    role: crate::interfaces::Role::Explicit,
                    peer_netnsid: None,
                };
                (interface_change(&s, false, String::new()), now_nanos())
            }
            AgentEvent::AttachFailed { iface, reason } => {
                (interface_change(iface, false, reason.clone()), now_nanos())
            }
        };
        // Report losses first, so the client sees them where they happened.
        if !pending.flush(&tx, &mut seq) {
            return;
        }
        let sent = if pending.any() {
            Sent::Full
        } else {
            offer(&tx, &mut seq, kind, time)
        };
        match sent {
            Sent::Yes => {}
            Sent::Full => {
                pending.client += 1;
                slow.fetch_add(1, Ordering::Relaxed);
            }
            Sent::Closed => return,
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type SyscallStream = Pin<Box<dyn Stream<Item = Result<pb::SyscallTraceEvent, Status>> + Send>>;
type SysTx = mpsc::Sender<Result<pb::SyscallTraceEvent, Status>>;

/// Numbers one syscall trace stream's messages.
struct SysSequencer {
    node: String,
    seq: u64,
}

impl SysSequencer {
    fn offer(&mut self, tx: &SysTx, kind: pb::syscall_trace_event::Kind, time: i64) -> Sent {
        let ev = pb::SyscallTraceEvent {
            node: self.node.clone(),
            seq: self.seq + 1,
            time_unix_nanos: time,
            kind: Some(kind),
        };
        match tx.try_send(Ok(ev)) {
            Ok(()) => {
                self.seq += 1;
                Sent::Yes
            }
            Err(mpsc::error::TrySendError::Full(_)) => Sent::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
        }
    }
}

/// How often a syscall trace checks that its target is still there.
const EXIT_CHECK: Duration = Duration::from_millis(20);
/// How long a trace whose target exited waits for the target's last events to be read.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything one syscall trace stream needs.
struct SyscallTraceTask {
    agent: Arc<Agent>,
    handle: crate::syscalls::TraceHandle,
    arch: orb8_syscalls::Arch,
    watch: crate::syscalls::ExitWatch,
    rx: Option<tokio::sync::broadcast::Receiver<orb8_common::sys::SysEvent>>,
    tx: SysTx,
    seq: SysSequencer,
    slow: Arc<AtomicU64>,
    registry: Arc<Mutex<std::collections::HashMap<u64, Arc<AtomicU64>>>>,
}

/// Events the stream of a trace should have carried so far (every traced syscall that
/// returned, less those the kernel could not send), from its summary.
fn expected_events(s: &crate::syscalls::Summary, arch: orb8_syscalls::Arch) -> u64 {
    let never_return = [arch.number("exit"), arch.number("exit_group")];
    let calls: u64 = s
        .totals
        .stats
        .iter()
        .filter(|(nr, _)| !never_return.contains(&Some(**nr)))
        .map(|(_, st)| st.calls)
        .sum();
    calls.saturating_sub(s.totals.counters[orb8_common::sys::counter::RINGBUF_FULL as usize])
}

impl SyscallTraceTask {
    /// Feeds the stream until the client goes away; never waits for the client. When the
    /// target exits, the events it made are drained before `target_exited` is sent.
    async fn run(mut self) {
        let mut pending = PendingGaps::default();
        let mut tick = tokio::time::interval(EXIT_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen: u64 = 0;
        let mut exit: Option<(String, Instant)> = None;
        let mut exit_sent = false;
        loop {
            let ev = tokio::select! {
                ev = async { self.rx.as_mut().expect("guarded").recv().await }, if self.rx.is_some() => ev,
                _ = tick.tick() => {
                    if !self.flush(&mut pending) {
                        break;
                    }
                    if exit.is_none() && let Some(reason) = self.watch.check() {
                        exit = Some((reason, Instant::now() + DRAIN_TIMEOUT));
                    }
                    if let Some((reason, deadline)) = &exit && !exit_sent {
                        let drained = self.rx.is_none()
                            || self.agent.syscalls.summary(self.handle.id)
                                .is_none_or(|s| seen >= expected_events(&s, self.arch))
                            || Instant::now() >= *deadline;
                        if drained && !pending.any() {
                            let kind = pb::syscall_trace_event::Kind::TargetExited(
                                pb::SyscallTargetExited { reason: reason.clone() },
                            );
                            match self.seq.offer(&self.tx, kind, now_nanos()) {
                                Sent::Yes => exit_sent = true,
                                Sent::Full => {}
                                Sent::Closed => break,
                            }
                        }
                    }
                    continue;
                }
                _ = self.tx.closed() => break,
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    self.agent
                        .syscalls
                        .lost_agent
                        .fetch_add(n, Ordering::Relaxed);
                    pending.agent += n;
                    seen += n;
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            seen += 1;
            if !self.flush(&mut pending) {
                break;
            }
            let time = convert::unix_nanos(&self.agent.clock, ev.ts_ns);
            let kind =
                pb::syscall_trace_event::Kind::Syscall(convert::syscall_event(&ev, self.arch));
            let sent = if pending.any() {
                Sent::Full
            } else {
                self.seq.offer(&self.tx, kind, time)
            };
            match sent {
                Sent::Yes => {}
                Sent::Full => {
                    pending.client += 1;
                    self.slow.fetch_add(1, Ordering::Relaxed);
                }
                Sent::Closed => break,
            }
        }
        self.registry
            .lock()
            .expect("trace registry lock")
            .remove(&self.handle.id);
    }

    /// Sends a `Gap` per stage with unreported losses; false when the client is gone.
    fn flush(&mut self, pending: &mut PendingGaps) -> bool {
        for (stage, reason, lost) in [
            (pb::DropStage::Agent, "queue_overflow", &mut pending.agent),
            (pb::DropStage::Client, "slow_client", &mut pending.client),
        ] {
            if *lost == 0 {
                continue;
            }
            let gap = pb::syscall_trace_event::Kind::Gap(pb::Gap {
                lost: *lost,
                stage: stage as i32,
                reason: reason.to_string(),
            });
            match self.seq.offer(&self.tx, gap, now_nanos()) {
                Sent::Yes => *lost = 0,
                Sent::Full => {}
                Sent::Closed => return false,
            }
        }
        true
    }
}

impl Service {
    /// Resolves a trace request and starts the trace: the target, the syscall numbers on this
    /// agent's architecture, and the kernel programs (loaded now if no trace runs).
    fn start_trace(
        &self,
        req: &pb::TraceSyscallsRequest,
    ) -> Result<
        (
            crate::syscalls::TraceHandle,
            crate::cgroups::Target,
            crate::syscalls::ExitWatch,
            orb8_syscalls::Arch,
        ),
        Status,
    > {
        use crate::{cgroups, syscalls::ExitWatch};
        let arch = crate::syscalls::arch().map_err(|e| Status::unimplemented(e.to_string()))?;
        let numbers = orb8_syscalls::resolve(arch, &req.syscalls)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let kind = req
            .target
            .as_ref()
            .and_then(|t| t.kind.clone())
            .ok_or_else(|| Status::invalid_argument("no target: give a pid or a cgroup path"))?;
        let not_found = |e: cgroups::TargetError| match e {
            cgroups::TargetError::NoProcess { .. } | cgroups::TargetError::NotCgroup { .. } => {
                Status::not_found(e.to_string())
            }
            other => Status::failed_precondition(other.to_string()),
        };
        let (target, watch) =
            match kind {
                pb::syscall_target::Kind::Pid(pid) => (
                    cgroups::resolve_pid(pid).map_err(not_found)?,
                    ExitWatch::Pid(pid),
                ),
                pb::syscall_target::Kind::Pod(pod) => {
                    let t = cgroups::resolve_pod(&pod.name, &pod.pod_uid, &pod.container_ids)
                        .map_err(|e| match e {
                            cgroups::TargetError::NoContainer { .. } => {
                                Status::not_found(e.to_string())
                            }
                            other => not_found(other),
                        })?;
                    let watch = match &t.resolved {
                        cgroups::Resolved::Cgroups { groups } => {
                            ExitWatch::Dirs(groups.iter().map(|(p, _)| p.clone()).collect())
                        }
                        cgroups::Resolved::PidNs { pid, .. }
                        | cgroups::Resolved::Process { pid } => ExitWatch::Pid(*pid),
                        cgroups::Resolved::Cgroup { path, .. } => ExitWatch::Dir(path.clone()),
                    };
                    (t, watch)
                }
                pb::syscall_target::Kind::CgroupPath(path) => {
                    let t = cgroups::resolve_cgroup(&path).map_err(not_found)?;
                    let cgroups::Resolved::Cgroup { path, .. } = &t.resolved else {
                        unreachable!("a cgroup path resolves to a cgroup");
                    };
                    let watch = ExitWatch::Dir(path.clone());
                    (t, watch)
                }
            };
        let handle = self
            .agent
            .syscalls
            .start(&target, numbers, req.stream, watch.clone())
            .map_err(|e| match e {
                crate::syscalls::SyscallError::Busy { .. } => {
                    Status::failed_precondition(e.to_string())
                }
                other => Status::internal(other.to_string()),
            })?;
        Ok((handle, target, watch, arch))
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Service {
    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn query_flows(
        &self,
        req: Request<pb::QueryFlowsRequest>,
    ) -> Result<Response<pb::QueryFlowsResponse>, Status> {
        self.query(req.get_ref())
            .map(Response::new)
            .map_err(Status::invalid_argument)
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        req: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let matcher =
            Matcher::new(req.get_ref().filter.as_ref()).map_err(Status::invalid_argument)?;
        let rx = self.agent.subscribe();
        let (tx, out) = mpsc::channel(CLIENT_BUFFER);
        let agent = self.agent.clone();
        let slow = self.slow_client_drops.clone();
        let seq = Sequencer {
            node: self.node.clone(),
            seq: 0,
        };
        tokio::spawn(run_stream(agent, matcher, rx, tx, slow, seq));
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    type TraceSyscallsStream = SyscallStream;

    async fn trace_syscalls(
        &self,
        req: Request<pb::TraceSyscallsRequest>,
    ) -> Result<Response<Self::TraceSyscallsStream>, Status> {
        let req = req.into_inner();
        // Subscribed before the trace starts, so no event of it is missed.
        let rx = req.stream.then(|| self.agent.syscalls.subscribe());
        let (handle, target, watch, arch) = self.start_trace(&req)?;
        let (tx, out) = mpsc::channel(CLIENT_BUFFER);
        let mut seq = SysSequencer {
            node: self.node.clone(),
            seq: 0,
        };
        let filter = match target.resolved {
            crate::cgroups::Resolved::Cgroup { .. } | crate::cgroups::Resolved::Cgroups { .. } => {
                pb::SyscallFilterKind::Cgroup
            }
            crate::cgroups::Resolved::PidNs { .. } => pb::SyscallFilterKind::Pidns,
            crate::cgroups::Resolved::Process { .. } => pb::SyscallFilterKind::Process,
        };
        let started = pb::SyscallTraceStarted {
            trace_id: handle.id,
            filter: filter as i32,
            description: handle.description.clone(),
            note: target.note.clone().unwrap_or_default(),
            arch: arch.as_str().to_string(),
            cgroup_ids: match target.resolved {
                crate::cgroups::Resolved::Cgroup { id, .. } => vec![id],
                crate::cgroups::Resolved::Cgroups { ref groups } => {
                    groups.iter().map(|(_, id)| *id).collect()
                }
                _ => Vec::new(),
            },
        };
        let _ = seq.offer(
            &tx,
            pb::syscall_trace_event::Kind::Started(started),
            now_nanos(),
        );
        let slow = Arc::new(AtomicU64::new(0));
        self.trace_slow
            .lock()
            .expect("trace registry lock")
            .insert(handle.id, slow.clone());
        let task = SyscallTraceTask {
            agent: self.agent.clone(),
            handle,
            arch,
            watch,
            rx,
            tx,
            seq,
            slow,
            registry: self.trace_slow.clone(),
        };
        tokio::spawn(task.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn get_syscall_summary(
        &self,
        req: Request<pb::GetSyscallSummaryRequest>,
    ) -> Result<Response<pb::SyscallSummary>, Status> {
        let id = req.get_ref().trace_id;
        let arch = crate::syscalls::arch().map_err(|e| Status::unimplemented(e.to_string()))?;
        let summary = self.agent.syscalls.summary(id).ok_or_else(|| {
            Status::not_found(format!("no syscall trace {id} is running on this agent"))
        })?;
        let slow = self
            .trace_slow
            .lock()
            .expect("trace registry lock")
            .get(&id)
            .map(|s| s.load(Ordering::Relaxed))
            .unwrap_or(0);
        Ok(Response::new(convert::syscall_summary(
            &self.node, arch, &summary, slow,
        )))
    }
}

fn interface_change(
    s: &crate::interfaces::Selected,
    attached: bool,
    error: String,
) -> pb::event::Kind {
    pb::event::Kind::Interface(pb::InterfaceChange {
        interface: Some(iface(s)),
        attached,
        error,
    })
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A loopback TCP address (port 0 picks a free port).
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        let a: SocketAddr = s
            .parse()
            .map_err(|_| format!("invalid listen address {s:?}"))?;
        if !a.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {a}: the agent only binds loopback (127.0.0.1 or ::1) or a unix socket"
            ));
        }
        Ok(Listen::Tcp(a))
    }
}

/// Checks the per-session token on every request.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Arc<String>,
}

impl TokenCheck {
    /// Accepts requests carrying `authorization: Bearer <token>`.
    pub fn new(token: &str) -> Self {
        TokenCheck {
            expected: Arc::new(pb::bearer(token)),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let got = req
            .metadata()
            .get(pb::TOKEN_METADATA_KEY)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(got, self.expected.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong session token"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why [`serve`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown future completed (signal).
    Shutdown,
    /// No client was connected for the idle timeout.
    Idle,
}

/// Serves `service` on an already bound listener until `shutdown` completes or no client has
/// been connected for `idle`. Connections are counted so the idle clock only runs while none
/// is open.
pub async fn serve<S>(
    service: Service,
    token: &str,
    listener: Listener,
    idle: Duration,
    shutdown: S,
) -> Result<Stopped, tonic::transport::Error>
where
    S: std::future::Future<Output = ()> + Send,
{
    let activity = Arc::new(Activity::default());
    let svc = AgentServiceServer::with_interceptor(service, TokenCheck::new(token));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Stopped>();
    let watchdog_activity = activity.clone();
    let watchdog = async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100).min(idle));
        loop {
            tick.tick().await;
            if watchdog_activity.idle_for() >= idle {
                return Stopped::Idle;
            }
        }
    };
    let signal = async move {
        let why = tokio::select! {
            _ = shutdown => Stopped::Shutdown,
            why = watchdog => why,
        };
        let _ = stop_tx.send(why);
    };
    let router = tonic::transport::Server::builder().add_service(svc);
    match listener {
        Listener::Tcp(l) => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l)
                .map(move |c| c.map(|s| Tracked::new(s, activity.clone())));
            router
                .serve_with_incoming_shutdown(incoming, signal)
                .await?;
        }
        Listener::Unix(l, path) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l)
                .map(move |c| c.map(|s| Tracked::new(s, activity.clone())));
            let result = router.serve_with_incoming_shutdown(incoming, signal).await;
            let _ = std::fs::remove_file(&path);
            result?;
        }
    }
    Ok(stop_rx.await.unwrap_or(Stopped::Shutdown))
}

/// A bound listener.
pub enum Listener {
    /// TCP on loopback.
    Tcp(tokio::net::TcpListener),
    /// A unix socket and its path (removed when serving ends).
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds the address; a stale unix socket file is replaced.
    pub async fn bind(listen: &Listen) -> std::io::Result<Listener> {
        match listen {
            Listen::Tcp(a) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(a).await?)),
            Listen::Unix(p) => {
                let _ = std::fs::remove_file(p);
                Ok(Listener::Unix(
                    tokio::net::UnixListener::bind(p)?,
                    p.clone(),
                ))
            }
        }
    }

    /// The address clients connect to: `127.0.0.1:PORT` or `unix:/path`.
    pub fn address(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "127.0.0.1:0".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            "[::1]:7".parse::<Listen>().unwrap(),
            Listen::Tcp("[::1]:7".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/orb8.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/orb8.sock".into())
        );
        assert!(
            "0.0.0.0:9000"
                .parse::<Listen>()
                .unwrap_err()
                .contains("only binds loopback")
        );
        assert!("nope".parse::<Listen>().is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
    }

    #[test]
    fn idle_clock_runs_only_without_connections() {
        let a = Arc::new(Activity::default());
        let t = Tracked::new((), a.clone());
        assert_eq!(a.connections(), 1);
        assert_eq!(a.idle_for(), Duration::ZERO);
        drop(t);
        assert_eq!(a.connections(), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(a.idle_for() >= Duration::from_millis(5));
    }
}
