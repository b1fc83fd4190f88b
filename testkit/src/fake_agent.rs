//! A test double for orb8-agent: a real tonic server speaking orb8.agent.v1 with fixed data,
//! run on its own runtime thread so that a test can kill it like a crashed agent.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures::{Stream, StreamExt, stream};
use orb8_proto::agent_service_server::{AgentService, AgentServiceServer};
use orb8_proto::{
    Counters, Direction, DropCounter, DropStage, Event, Flow, Gap, GetStatusRequest,
    GetStatusResponse, Interface, PROTOCOL_VERSION, QueryFlowsRequest, QueryFlowsResponse,
    StreamEventsRequest, TOKEN_METADATA_KEY, TraceSyscallsRequest, event,
};
use tonic::{Code, Request, Response, Status};

/// How a fake agent's event stream ends after its scripted events.
#[derive(Debug, Clone)]
pub enum StreamEnd {
    /// Stays open, sending nothing more.
    Hold,
    /// Ends cleanly.
    Close,
    /// Ends with this error.
    Fail(Code, String),
}

/// The calls a fake agent received, for assertions: the session token each call carried and
/// the request of each call that has one, in arrival order.
#[derive(Debug, Default)]
pub struct AgentCalls {
    /// The `authorization` value of every call (None when absent).
    pub tokens: Mutex<Vec<Option<String>>>,
    /// Every QueryFlows and ListFlows request.
    pub queries: Mutex<Vec<QueryFlowsRequest>>,
    /// Every StreamEvents request.
    pub streams: Mutex<Vec<StreamEventsRequest>>,
    /// Every TraceSyscalls request.
    pub traces: Mutex<Vec<TraceSyscallsRequest>>,
    /// The trace id of every GetSyscallSummary request.
    pub summaries: Mutex<Vec<u64>>,
    /// Every GetGpus request.
    pub gpus: Mutex<Vec<orb8_proto::GetGpusRequest>>,
}

/// The fixed data and behaviour of one fake agent.
#[derive(Debug, Clone)]
pub struct FakeAgent {
    /// The GetStatus answer (its `node` also names the node of every flow and event).
    pub status: GetStatusResponse,
    /// The QueryFlows answer, whatever the filter (ListFlows: the same, in pages).
    pub flows: Vec<Flow>,
    /// Whether it answers ListFlows; false: Unimplemented, like an agent that predates it.
    pub list_flows: bool,
    /// What StreamEvents plays before `end`.
    pub events: Vec<Event>,
    /// How StreamEvents ends.
    pub end: StreamEnd,
    /// When set, calls without `authorization: Bearer <token>` are refused.
    pub token: Option<String>,
    /// The GetGpus answer (by default: no NVIDIA driver on the node).
    pub gpus: orb8_proto::GetGpusResponse,
    /// The calls it received, shared with the [`Running`] server.
    pub calls: Arc<AgentCalls>,
}

impl FakeAgent {
    /// An agent on `node` with one interface, no flows and no events.
    pub fn new(node: &str) -> Self {
        FakeAgent {
            status: status(node),
            flows: Vec::new(),
            list_flows: true,
            events: Vec::new(),
            end: StreamEnd::Hold,
            token: None,
            gpus: orb8_proto::GetGpusResponse {
                node: node.to_string(),
                unavailable: NO_DRIVER.into(),
                ..Default::default()
            },
            calls: Arc::default(),
        }
    }

    fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let got = metadata
            .get(TOKEN_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Ok(mut t) = self.calls.tokens.lock() {
            t.push(got.clone());
        }
        match &self.token {
            Some(want) if got.as_deref() != Some(orb8_proto::bearer(want).as_str()) => {
                Err(Status::unauthenticated("missing or wrong session token"))
            }
            _ => Ok(()),
        }
    }
}

/// What orb8-agent says on a node without NVML.
pub const NO_DRIVER: &str = "no NVIDIA driver on this node";

/// A status for `node`, with counters that tests can check.
pub fn status(node: &str) -> GetStatusResponse {
    GetStatusResponse {
        node: node.to_string(),
        agent_version: "0.1.0".into(),
        protocol_version: PROTOCOL_VERSION,
        kernel_release: "6.18.0-test".into(),
        arch: "x86_64".into(),
        btf_present: true,
        attach_mode: "tcx".into(),
        interfaces: vec![
            Interface {
                index: 2,
                name: "eth0".into(),
                role: "uplink".into(),
            },
            Interface {
                index: 9,
                name: "veth9".into(),
                role: "veth".into(),
            },
        ],
        programs: vec!["orb8_tc_ingress".into(), "orb8_tc_egress".into()],
        counters: Some(Counters {
            events_processed: 40,
            packets_seen: 1000,
            active_flows: 12,
            flow_map_evictions: 0,
            drops: vec![DropCounter {
                stage: DropStage::Kernel as i32,
                reason: "ringbuf_full".into(),
                count: 3,
            }],
            packets_not_parsed: [("not_ip".to_string(), 5)].into_iter().collect(),
            dns: Default::default(),
        }),
        uptime_ms: 61_000,
        gpu: Some(orb8_proto::GpuStatus {
            source: String::new(),
            summary: NO_DRIVER.into(),
            gpus: 0,
        }),
    }
}

/// A UDP flow 10.0.0.1:40000 -> 10.0.0.2:`dst_port` on eth0 (an uplink), egress.
pub fn flow(node: &str, bytes: u64, packets: u64, dst_port: u32) -> Flow {
    Flow {
        node: node.to_string(),
        interface: "eth0".into(),
        ifindex: 2,
        direction: Direction::Egress as i32,
        protocol: 17,
        src_addr: vec![10, 0, 0, 1],
        dst_addr: vec![10, 0, 0, 2],
        src_port: 40000,
        dst_port,
        fragment: false,
        packets,
        bytes,
        tcp_flags: 0,
        first_seen_unix_nanos: 1_700_000_000_123_456_789,
        last_seen_unix_nanos: 1_700_000_001_000_000_000,
        netns_owner: None,
        interface_role: "uplink".into(),
        src_dns_name: String::new(),
        dst_dns_name: String::new(),
    }
}

/// A new-flow event with sequence number `seq`.
pub fn new_flow_event(node: &str, seq: u64) -> Event {
    Event {
        node: node.to_string(),
        seq,
        time_unix_nanos: 1_700_000_000_000_000_000 + i64::try_from(seq).unwrap_or(0),
        kind: Some(event::Kind::NewFlow(flow(node, 60, 1, 53))),
    }
}

/// An already-active flow (a stream's opening) with sequence number `seq`: the flow of
/// [`new_flow_event`] with 7 packets, 420 bytes so far.
pub fn active_flow_event(node: &str, seq: u64) -> Event {
    Event {
        node: node.to_string(),
        seq,
        time_unix_nanos: 1_700_000_000_123_456_789,
        kind: Some(event::Kind::ActiveFlow(flow(node, 420, 7, 53))),
    }
}

/// A gap event with sequence number `seq` reporting `lost` events.
pub fn gap_event(node: &str, seq: u64, lost: u64) -> Event {
    Event {
        node: node.to_string(),
        seq,
        time_unix_nanos: 1_700_000_000_000_000_000,
        kind: Some(event::Kind::Gap(Gap {
            lost,
            stage: DropStage::Client as i32,
            reason: "slow_client".into(),
        })),
    }
}

/// `count` new-flow events numbered 1..=count.
pub fn new_flow_events(node: &str, count: u64) -> Vec<Event> {
    (1..=count).map(|seq| new_flow_event(node, seq)).collect()
}

#[derive(Debug, Clone)]
struct Service(Arc<FakeAgent>);

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;
type FlowPages = Pin<Box<dyn Stream<Item = Result<QueryFlowsResponse, Status>> + Send>>;
type SyscallStream =
    Pin<Box<dyn Stream<Item = Result<orb8_proto::SyscallTraceEvent, Status>> + Send>>;

/// The id of the trace every fake agent starts; GetSyscallSummary knows no other.
pub const SYSCALL_TRACE_ID: u64 = 5;

/// The canned syscall trace every fake agent plays: started (trace [`SYSCALL_TRACE_ID`]), two
/// syscalls (`getppid` returning 1, `openat` failing with ENOENT, 1.5 µs each; sent only to a
/// request that asks to stream), target exited.
pub fn syscall_trace(node: &str) -> Vec<orb8_proto::SyscallTraceEvent> {
    use orb8_proto::{SyscallEvent, SyscallTraceEvent, syscall_trace_event::Kind};
    let ev = |seq: u64, kind: Kind| SyscallTraceEvent {
        node: node.to_string(),
        seq,
        time_unix_nanos: 1_700_000_000_000_000_000,
        kind: Some(kind),
    };
    let call = |name: &str, nr: u32, ret: i64, errno: &str| SyscallEvent {
        pid: 7,
        tid: 7,
        comm: "app".into(),
        nr,
        name: name.into(),
        ret,
        errno: errno.into(),
        duration_ns: 1500,
    };
    vec![
        ev(
            1,
            Kind::Started(orb8_proto::SyscallTraceStarted {
                trace_id: SYSCALL_TRACE_ID,
                filter: orb8_proto::SyscallFilterKind::Cgroup as i32,
                description: "cgroup /sys/fs/cgroup/app (id 9)".into(),
                note: String::new(),
                arch: "x86_64".into(),
                cgroup_ids: vec![9],
                probes: "raw_tracepoint".into(),
                probes_note: String::new(),
                fentry_functions: Vec::new(),
            }),
        ),
        ev(2, Kind::Syscall(call("getppid", 110, 1, ""))),
        ev(3, Kind::Syscall(call("openat", 257, -2, "ENOENT"))),
        ev(
            4,
            Kind::TargetExited(orb8_proto::SyscallTargetExited {
                reason: "process 7 exited".into(),
            }),
        ),
    ]
}

type DnsStream = Pin<Box<dyn Stream<Item = Result<orb8_proto::DnsTraceEvent, Status>> + Send>>;

/// The canned DNS trace every fake agent plays, then holds the stream open: `10.0.0.5:40000`
/// asks `10.96.0.10:53` over UDP for `api.example.com` A (NOERROR, 2 ms, `203.0.113.9`),
/// `10.0.0.5:40001` for `nope.example.com` AAAA (NXDOMAIN, 1 ms), and `10.0.0.5:40002` for
/// `slow.example.com` A, which times out.
pub fn dns_trace(node: &str) -> Vec<orb8_proto::DnsTraceEvent> {
    use orb8_proto::{DnsAnswer, DnsExchange, DnsTraceEvent, dns_trace_event::Kind};
    let x = |port: u32, id: u32, name: &str, qtype: &str, rcode: &str, ms: u64| DnsExchange {
        protocol: 17,
        client_addr: vec![10, 0, 0, 5],
        client_port: port,
        server_addr: vec![10, 96, 0, 10],
        server_port: 53,
        id,
        name: name.into(),
        qtype: qtype.into(),
        rcode: rcode.into(),
        timeout: rcode.is_empty(),
        latency_ns: ms * 1_000_000,
        answers: Vec::new(),
        interface: "eth0".into(),
        interface_role: "uplink".into(),
        query_unix_nanos: 1_700_000_000_000_000_000,
        netns_owner: None,
    };
    let mut ok = x(40000, 1, "api.example.com", "A", "NOERROR", 2);
    ok.answers.push(DnsAnswer {
        name: "api.example.com".into(),
        r#type: "A".into(),
        ttl: 60,
        data: "203.0.113.9".into(),
        addr: vec![203, 0, 113, 9],
    });
    [
        ok,
        x(40001, 2, "nope.example.com", "AAAA", "NXDOMAIN", 1),
        x(40002, 3, "slow.example.com", "A", "", 0),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, e)| DnsTraceEvent {
        node: node.to_string(),
        seq: i as u64 + 1,
        time_unix_nanos: e.query_unix_nanos,
        kind: Some(Kind::Exchange(e)),
    })
    .collect()
}

/// The canned summary of [`syscall_trace`].
pub fn syscall_summary(node: &str) -> orb8_proto::SyscallSummary {
    orb8_proto::SyscallSummary {
        node: node.to_string(),
        arch: "x86_64".into(),
        elapsed_ns: 2_000_000_000,
        syscalls: vec![
            orb8_proto::SyscallStats {
                nr: 110,
                name: "getppid".into(),
                calls: 1,
                errors: 0,
                total_ns: 1500,
                errnos: Default::default(),
                histogram: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            },
            orb8_proto::SyscallStats {
                nr: 257,
                name: "openat".into(),
                calls: 1,
                errors: 1,
                total_ns: 1500,
                errnos: [("ENOENT".to_string(), 1)].into(),
                histogram: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            },
        ],
        drops: Vec::new(),
        target_exited: true,
    }
}

#[tonic::async_trait]
impl AgentService for Service {
    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        self.0.check(request.metadata())?;
        Ok(Response::new(self.0.status.clone()))
    }

    async fn query_flows(
        &self,
        request: Request<QueryFlowsRequest>,
    ) -> Result<Response<QueryFlowsResponse>, Status> {
        self.0.check(request.metadata())?;
        if let Ok(mut q) = self.0.calls.queries.lock() {
            q.push(request.into_inner());
        }
        Ok(Response::new(QueryFlowsResponse {
            node: self.0.status.node.clone(),
            flows: self.0.flows.clone(),
            total_matched: self.0.flows.len() as u64,
            flow_map_evictions: 0,
        }))
    }

    type ListFlowsStream = FlowPages;

    async fn list_flows(
        &self,
        request: Request<QueryFlowsRequest>,
    ) -> Result<Response<FlowPages>, Status> {
        self.0.check(request.metadata())?;
        if !self.0.list_flows {
            return Err(Status::unimplemented("unknown method ListFlows"));
        }
        let page = match request.get_ref().page_size {
            0 => 4096,
            n => n as usize,
        };
        if let Ok(mut q) = self.0.calls.queries.lock() {
            q.push(request.into_inner());
        }
        let answer = |flows: Vec<Flow>| QueryFlowsResponse {
            node: self.0.status.node.clone(),
            flows,
            total_matched: self.0.flows.len() as u64,
            flow_map_evictions: 0,
        };
        let mut pages: Vec<_> = self
            .0
            .flows
            .chunks(page)
            .map(|c| answer(c.to_vec()))
            .collect();
        if pages.is_empty() {
            pages.push(answer(Vec::new()));
        }
        Ok(Response::new(
            stream::iter(pages.into_iter().map(Ok)).boxed(),
        ))
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.0.check(request.metadata())?;
        if let Ok(mut s) = self.0.calls.streams.lock() {
            s.push(request.into_inner());
        }
        let events = stream::iter(self.0.events.clone().into_iter().map(Ok));
        let stream: EventStream = match self.0.end.clone() {
            StreamEnd::Hold => events.chain(stream::pending()).boxed(),
            StreamEnd::Close => events.boxed(),
            StreamEnd::Fail(code, message) => events
                .chain(stream::once(async move { Err(Status::new(code, message)) }))
                .boxed(),
        };
        Ok(Response::new(stream))
    }

    type TraceSyscallsStream = SyscallStream;

    async fn trace_syscalls(
        &self,
        request: Request<orb8_proto::TraceSyscallsRequest>,
    ) -> Result<Response<SyscallStream>, Status> {
        self.0.check(request.metadata())?;
        let request = request.into_inner();
        let stream = request.stream;
        if let Ok(mut t) = self.0.calls.traces.lock() {
            t.push(request);
        }
        // As the agent does: syscalls are sent one by one only when asked to stream.
        let events: Vec<_> = syscall_trace(&self.0.status.node)
            .into_iter()
            .filter(|e| {
                stream
                    || !matches!(
                        e.kind,
                        Some(orb8_proto::syscall_trace_event::Kind::Syscall(_))
                    )
            })
            .collect();
        Ok(Response::new(
            stream::iter(events.into_iter().map(Ok))
                .chain(stream::pending())
                .boxed(),
        ))
    }

    async fn get_syscall_summary(
        &self,
        request: Request<orb8_proto::GetSyscallSummaryRequest>,
    ) -> Result<Response<orb8_proto::SyscallSummary>, Status> {
        self.0.check(request.metadata())?;
        if let Ok(mut s) = self.0.calls.summaries.lock() {
            s.push(request.get_ref().trace_id);
        }
        if request.get_ref().trace_id != SYSCALL_TRACE_ID {
            return Err(Status::not_found("no such trace"));
        }
        Ok(Response::new(syscall_summary(&self.0.status.node)))
    }

    type TraceDropsStream =
        futures::stream::BoxStream<'static, Result<orb8_proto::DropTraceEvent, Status>>;

    /// Not faked: drop traces are tested against the real agent.
    async fn trace_drops(
        &self,
        request: Request<orb8_proto::TraceDropsRequest>,
    ) -> Result<Response<Self::TraceDropsStream>, Status> {
        self.0.check(request.metadata())?;
        Err(Status::unimplemented("the fake agent does not trace drops"))
    }

    type TraceTcpStream =
        futures::stream::BoxStream<'static, Result<orb8_proto::TcpTraceEvent, Status>>;

    /// Not faked: TCP traces are tested against the real agent.
    async fn trace_tcp(
        &self,
        request: Request<orb8_proto::TraceTcpRequest>,
    ) -> Result<Response<Self::TraceTcpStream>, Status> {
        self.0.check(request.metadata())?;
        Err(Status::unimplemented("the fake agent does not trace TCP"))
    }

    /// Not faked: see `trace_drops`.
    async fn get_drop_summary(
        &self,
        request: Request<orb8_proto::GetDropSummaryRequest>,
    ) -> Result<Response<orb8_proto::DropSummary>, Status> {
        self.0.check(request.metadata())?;
        Err(Status::unimplemented("the fake agent does not trace drops"))
    }

    type TraceDnsStream = DnsStream;

    async fn trace_dns(
        &self,
        request: Request<orb8_proto::TraceDnsRequest>,
    ) -> Result<Response<DnsStream>, Status> {
        self.0.check(request.metadata())?;
        let events = dns_trace(&self.0.status.node);
        Ok(Response::new(
            stream::iter(events.into_iter().map(Ok))
                .chain(stream::pending())
                .boxed(),
        ))
    }

    async fn get_gpus(
        &self,
        request: Request<orb8_proto::GetGpusRequest>,
    ) -> Result<Response<orb8_proto::GetGpusResponse>, Status> {
        self.0.check(request.metadata())?;
        if let Ok(mut g) = self.0.calls.gpus.lock() {
            g.push(request.into_inner());
        }
        Ok(Response::new(self.0.gpus.clone()))
    }
}

/// A fake agent being served; dropping it (or [`Running::kill`]) closes every connection.
#[derive(Debug)]
pub struct Running {
    /// `127.0.0.1:PORT` or `unix:/path`.
    pub addr: String,
    /// The calls it received.
    pub calls: Arc<AgentCalls>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops the server and drops every connection, like a crashed agent.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The `authorization` values seen so far.
    pub fn tokens(&self) -> Vec<Option<String>> {
        self.calls
            .tokens
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Bound {
    Tcp(std::net::TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
}

fn run(agent: FakeAgent, bound: Bound, addr: String) -> Running {
    let calls = agent.calls.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        rt.block_on(async move {
            let router = tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(Service(Arc::new(agent))));
            let stopped = async {
                let _ = stopped.await;
            };
            match bound {
                Bound::Tcp(l) => {
                    let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                    tokio::select! {
                        r = router.serve_with_incoming(incoming) => r.expect("fake agent serves"),
                        () = stopped => {}
                    }
                }
                #[cfg(unix)]
                Bound::Unix(l) => {
                    let l = tokio::net::UnixListener::from_std(l).expect("tokio listener");
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                    tokio::select! {
                        r = router.serve_with_incoming(incoming) => r.expect("fake agent serves"),
                        () = stopped => {}
                    }
                }
            }
        });
        // Dropping the runtime cancels every connection task: the sockets close.
        drop(rt);
    });
    Running {
        addr,
        calls,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// Serves `agent` on 127.0.0.1 on a free port.
pub fn serve_tcp(agent: FakeAgent) -> Running {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.set_nonblocking(true).expect("nonblocking");
    let addr: SocketAddr = l.local_addr().expect("local addr");
    run(agent, Bound::Tcp(l), addr.to_string())
}

/// Serves `agent` on a fresh unix socket in the temp dir.
#[cfg(unix)]
pub fn serve_unix(agent: FakeAgent) -> Running {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path: std::path::PathBuf =
        std::env::temp_dir().join(format!("orb8-fake-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).expect("bind unix socket");
    l.set_nonblocking(true).expect("nonblocking");
    run(agent, Bound::Unix(l), format!("unix:{}", path.display()))
}

/// The token the agents of [`agent_with_data`] require.
pub const TOKEN: &str = "s3cret-token";

/// A fake agent requiring [`TOKEN`], with two flows (to ports 53 and 80) and `events` new-flow
/// events, its stream ending as `end`.
pub fn agent_with_data(node: &str, events: u64, end: StreamEnd) -> FakeAgent {
    let mut fake = FakeAgent::new(node);
    fake.token = Some(TOKEN.into());
    fake.flows = vec![flow(node, 100, 1, 53), flow(node, 200, 2, 80)];
    fake.events = new_flow_events(node, events);
    fake.end = end;
    fake
}
