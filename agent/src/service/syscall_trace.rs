//! The syscall RPCs: `TraceSyscalls` (resolve the target, start the kernel trace, stream its
//! messages as one sequenced stream, see [`super::stream`]) and `GetSyscallSummary` (an open
//! trace's counts, with what its client was too slow to take).

use std::{
    collections::HashMap,
    ops::ControlFlow,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use orb8_common::sys::SysEvent;
use orb8_proto as pb;
use tokio_stream::Stream;
use tonic::Status;

use super::stream::{self, Feed, Offer, Sequenced, now_nanos};
use crate::{
    cgroups::{self, Resolved, Target, TargetError},
    convert, defaults,
    runtime::Agent,
    syscalls::{ExitWatch, Probes, Summary, SyscallError, TraceHandle},
};

/// A client's syscall trace stream.
pub type SyscallStream = Pin<Box<dyn Stream<Item = Result<pb::SyscallTraceEvent, Status>> + Send>>;

/// Syscall events each open trace's client was too slow to take, by trace id.
type Registry = Arc<Mutex<HashMap<u64, Arc<AtomicU64>>>>;

/// The syscall side of the service.
pub struct Traces {
    agent: Arc<Agent>,
    node: String,
    slow_client: Registry,
}

impl Traces {
    /// Syscall traces on `agent`, reported as node `node`.
    pub fn new(agent: Arc<Agent>, node: String) -> Self {
        Traces {
            agent,
            node,
            slow_client: Registry::default(),
        }
    }

    /// Starts a trace and its stream, whose first message is `started`.
    pub fn trace(&self, req: &pb::TraceSyscallsRequest) -> Result<SyscallStream, Status> {
        // Subscribed before the trace starts, so no event of it is missed.
        let rx = req.stream.then(|| self.agent.syscalls.subscribe());
        let (handle, target, watch, arch) = self.start(req)?;
        let started = pb::syscall_trace_event::Kind::Started(started(&handle, &target, arch));
        let slow = Arc::new(AtomicU64::new(0));
        self.slow_client
            .lock()
            .expect("trace registry lock")
            .insert(handle.id, slow.clone());
        let feed = SyscallFeed {
            agent: self.agent.clone(),
            handle,
            arch,
            watch,
            streaming: rx.is_some(),
            seen: 0,
            exit: None,
            exit_sent: false,
            registry: self.slow_client.clone(),
        };
        let out = stream::start_trace(self.node.clone(), slow, started, feed, rx);
        Ok(Box::pin(out))
    }

    /// The counts of open trace `id` since it started.
    pub fn summary(&self, id: u64) -> Result<pb::SyscallSummary, Status> {
        let arch = crate::syscalls::arch().map_err(|e| Status::unimplemented(e.to_string()))?;
        let summary = self.agent.syscalls.summary(id).ok_or_else(|| {
            Status::not_found(format!("no syscall trace {id} is running on this agent"))
        })?;
        let slow = self
            .slow_client
            .lock()
            .expect("trace registry lock")
            .get(&id)
            .map(|s| s.load(Ordering::Relaxed))
            .unwrap_or(0);
        Ok(convert::syscall_summary(&self.node, arch, &summary, slow))
    }

    /// Resolves a trace request and starts the trace: the target, the syscall numbers on this
    /// agent's architecture, and the kernel programs (loaded now if no trace runs).
    fn start(
        &self,
        req: &pb::TraceSyscallsRequest,
    ) -> Result<(TraceHandle, Target, ExitWatch, orb8_syscalls::Arch), Status> {
        let arch = crate::syscalls::arch().map_err(|e| Status::unimplemented(e.to_string()))?;
        let numbers = orb8_syscalls::resolve(arch, &req.syscalls)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let kind = req
            .target
            .as_ref()
            .and_then(|t| t.kind.clone())
            .ok_or_else(|| Status::invalid_argument("no target: give a pid or a cgroup path"))?;
        let (target, watch) = resolve(kind)?;
        let handle = self
            .agent
            .syscalls
            .start(&target, numbers, req.stream, watch.clone())
            .map_err(|e| match e {
                SyscallError::Busy { .. } => Status::failed_precondition(e.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        Ok((handle, target, watch, arch))
    }
}

/// The target of a request and how its end is noticed.
fn resolve(kind: pb::syscall_target::Kind) -> Result<(Target, ExitWatch), Status> {
    let not_found = |e: TargetError| match e {
        TargetError::NoProcess { .. } | TargetError::NotCgroup { .. } => {
            Status::not_found(e.to_string())
        }
        other => Status::failed_precondition(other.to_string()),
    };
    Ok(match kind {
        pb::syscall_target::Kind::Pid(pid) => (
            cgroups::resolve_pid(pid).map_err(not_found)?,
            ExitWatch::Pid(pid),
        ),
        pb::syscall_target::Kind::Pod(pod) => {
            let t =
                cgroups::resolve_pod(&pod.name, &pod.pod_uid, &pod.container_ids).map_err(|e| {
                    match e {
                        TargetError::NoContainer { .. } => Status::not_found(e.to_string()),
                        other => not_found(other),
                    }
                })?;
            let watch = match &t.resolved {
                Resolved::Cgroups { groups } => {
                    ExitWatch::Dirs(groups.iter().map(|(p, _)| p.clone()).collect())
                }
                Resolved::PidNs { pid, .. } | Resolved::Process { pid } => ExitWatch::Pid(*pid),
                Resolved::Cgroup { path, .. } => ExitWatch::Dir(path.clone()),
            };
            (t, watch)
        }
        pb::syscall_target::Kind::CgroupPath(path) => {
            let t = cgroups::resolve_cgroup(&path).map_err(not_found)?;
            let Resolved::Cgroup { path, .. } = &t.resolved else {
                unreachable!("a cgroup path resolves to a cgroup");
            };
            let watch = ExitWatch::Dir(path.clone());
            (t, watch)
        }
    })
}

/// The `started` message of a trace.
fn started(
    handle: &TraceHandle,
    target: &Target,
    arch: orb8_syscalls::Arch,
) -> pb::SyscallTraceStarted {
    let filter = match target.resolved {
        Resolved::Cgroup { .. } | Resolved::Cgroups { .. } => pb::SyscallFilterKind::Cgroup,
        Resolved::PidNs { .. } => pb::SyscallFilterKind::Pidns,
        Resolved::Process { .. } => pb::SyscallFilterKind::Process,
    };
    pb::SyscallTraceStarted {
        trace_id: handle.id,
        filter: filter as i32,
        description: handle.description.clone(),
        note: target.note.clone().unwrap_or_default(),
        arch: arch.as_str().to_string(),
        cgroup_ids: match &target.resolved {
            Resolved::Cgroup { id, .. } => vec![*id],
            Resolved::Cgroups { groups } => groups.iter().map(|(_, id)| *id).collect(),
            _ => Vec::new(),
        },
        probes: handle.probes.kind().to_string(),
        probes_note: handle.probes.note(),
        fentry_functions: match &handle.probes {
            Probes::Fentry { functions } => functions.clone(),
            Probes::RawTracepoints { .. } => Vec::new(),
        },
    }
}

/// Events the stream of a trace should have carried so far (every traced syscall that
/// returned, less those the kernel could not send), from its summary.
fn expected_events(s: &Summary, arch: orb8_syscalls::Arch) -> u64 {
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

/// One trace's stream: its syscall events, and `target_exited` once the target is gone and
/// the events it made have been read (or [`defaults::TRACE_DRAIN_TIMEOUT`] passed).
struct SyscallFeed {
    agent: Arc<Agent>,
    /// Keeps the kernel trace running; dropped with the stream.
    handle: TraceHandle,
    arch: orb8_syscalls::Arch,
    watch: ExitWatch,
    /// Whether syscall events are streamed (not only counted).
    streaming: bool,
    /// Events read or lost so far.
    seen: u64,
    /// Why the target ended, and until when its last events are waited for.
    exit: Option<(String, Instant)>,
    exit_sent: bool,
    registry: Registry,
}

impl Feed for SyscallFeed {
    type In = SysEvent;
    type Out = pb::SyscallTraceEvent;

    fn tick_every(&self) -> Duration {
        defaults::TRACE_EXIT_CHECK
    }

    fn convert(
        &mut self,
        ev: SysEvent,
        _out: &Sequenced<Self::Out>,
    ) -> Option<(pb::syscall_trace_event::Kind, i64)> {
        self.seen += 1;
        let time = convert::unix_nanos(&self.agent.clock, ev.ts_ns);
        let kind = pb::syscall_trace_event::Kind::Syscall(convert::syscall_event(&ev, self.arch));
        Some((kind, time))
    }

    fn count_lagged(&mut self, n: u64) {
        self.agent
            .syscalls
            .lost_agent
            .fetch_add(n, Ordering::Relaxed);
        self.seen += n;
    }

    fn tick(&mut self, out: &mut Sequenced<Self::Out>) -> ControlFlow<()> {
        if self.exit.is_none()
            && let Some(reason) = self.watch.check()
        {
            self.exit = Some((reason, Instant::now() + defaults::TRACE_DRAIN_TIMEOUT));
        }
        let Some((reason, deadline)) = &self.exit else {
            return ControlFlow::Continue(());
        };
        if self.exit_sent {
            return ControlFlow::Continue(());
        }
        let drained = !self.streaming
            || self
                .agent
                .syscalls
                .summary(self.handle.id)
                .is_none_or(|s| self.seen >= expected_events(&s, self.arch))
            || Instant::now() >= *deadline;
        // Every loss is reported before the end.
        if drained && !out.pending() {
            let kind = pb::syscall_trace_event::Kind::TargetExited(pb::SyscallTargetExited {
                reason: reason.clone(),
            });
            match out.offer(kind, now_nanos()) {
                Offer::Sent => self.exit_sent = true,
                Offer::Full => {}
                Offer::Closed => return ControlFlow::Break(()),
            }
        }
        ControlFlow::Continue(())
    }
}

impl Drop for SyscallFeed {
    fn drop(&mut self) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(&self.handle.id);
        }
    }
}
