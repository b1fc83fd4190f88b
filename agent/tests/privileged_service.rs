//! Privileged component tests of the gRPC service: a real agent (probes attached to this host's
//! loopback), a real tonic server on 127.0.0.1 and a real tonic client. Traffic is UDP on
//! 127.0.0.1 only, on ports unique to each test; traced syscalls come from a child process in a
//! cgroup v2 group the test creates and removes.

use std::{
    net::UdpSocket,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use orb8_agent::{
    cgroups::host_cgroup2_mount,
    probes::{AttachMode, ProbeConfig},
    runtime::{Agent, AgentConfig},
    service::{Listen, Listener, Service, Stopped, serve},
};
use orb8_proto::{self as pb, agent_service_client::AgentServiceClient};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_stream::StreamExt as _;
use tonic::{Code, Request, Status, service::interceptor::InterceptedService, transport::Channel};

const TOKEN: &str = "test-token-0123456789abcdef";

/// Held by each test for its whole run: every test attaches its own agent to the root
/// namespace's `lo`, and one test's traffic (80,000 datagrams in the slow-client test) must not
/// reach, or slow down, another's agent and stream.
static LOOPBACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Running {
    addr: String,
    agent: Arc<Agent>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Stopped>,
}

async fn start(idle: Duration) -> Running {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root"
    );
    let config = AgentConfig {
        interfaces: vec!["lo".into()],
        rescan: Duration::from_millis(250),
        probe: ProbeConfig {
            flow_map_entries: 65536,
            flow_map_entries_v6: 16384,
            ringbuf_bytes: 1 << 22,
            mode: AttachMode::detect(),
            dns_ports: orb8_common::dns::DnsPorts::DEFAULT,
        },
        event_queue: 16384,
        dns_timeout: std::time::Duration::from_secs(5),
    };
    let (agent, _tasks) = Agent::start(config).await.expect("starting the agent");
    let listener = Listener::bind(&"127.0.0.1:0".parse::<Listen>().unwrap())
        .await
        .unwrap();
    let addr = listener.address();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = Service::new(agent.clone(), "test-node".into());
    let server = tokio::spawn(async move {
        serve(service, TOKEN, listener, idle, async {
            let _ = stopped.await;
        })
        .await
        .expect("serving")
    });
    Running {
        addr,
        agent,
        stop: Some(stop),
        server,
    }
}

impl Running {
    async fn shutdown(mut self) -> Stopped {
        let _ = self.stop.take().map(|s| s.send(()));
        let stopped = self.server.await.unwrap();
        self.agent.shutdown();
        stopped
    }
}

type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type Client = AgentServiceClient<InterceptedService<Channel, AddToken>>;

async fn client(addr: &str, token: Option<&str>) -> Client {
    client_with_window(addr, token, None).await
}

/// A client whose HTTP/2 receive windows are `window` bytes (the protocol's default of 64 KiB
/// when given): a client that stops reading then quickly stops the server from sending.
async fn client_with_window(addr: &str, token: Option<&str>, window: Option<u32>) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .expect("connecting");
    let value: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        token.map(|t| pb::bearer(t).parse().unwrap());
    let f: AddToken = Box::new(move |mut r: Request<()>| {
        if let Some(v) = &value {
            r.metadata_mut().insert(pb::TOKEN_METADATA_KEY, v.clone());
        }
        Ok(r)
    });
    AgentServiceClient::with_interceptor(channel, f)
}

fn send_udp(dst_port: u16, count: usize, size: usize) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..count {
        s.send_to(&vec![1u8; size], ("127.0.0.1", dst_port))
            .unwrap();
    }
}

fn by_ports(ports: Vec<u32>) -> Option<pb::FlowFilter> {
    Some(pb::FlowFilter {
        ports,
        protocols: vec![17],
        ..Default::default()
    })
}

/// A child process in a cgroup v2 group of its own (created here, removed on drop) that makes
/// exactly `calls` `getppid` calls when told to, then exits.
struct Caller {
    pid: libc::pid_t,
    go: Option<OwnedFd>,
    reaped: bool,
    cgroup: PathBuf,
}

impl Caller {
    fn start(calls: u32) -> Caller {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into a valid array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only makes async-signal-safe syscalls (read, getppid, _exit).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: reads one byte into a valid buffer, then makes argument-free syscalls.
            unsafe {
                if libc::read(fds[0], (&raw mut byte).cast(), 1) != 1 {
                    libc::_exit(2);
                }
                for _ in 0..calls {
                    libc::syscall(libc::SYS_getppid);
                }
                libc::_exit(0);
            }
        }
        // SAFETY: both fds are ours; the read end is only the child's.
        let go = unsafe {
            libc::close(fds[0]);
            OwnedFd::from_raw_fd(fds[1])
        };
        let cgroup = host_cgroup2_mount()
            .expect("privileged test: needs a cgroup2 mount")
            .join(format!("orb8-service-test-{}", std::process::id()));
        let caller = Caller {
            pid,
            go: Some(go),
            reaped: false,
            cgroup,
        };
        std::fs::create_dir(&caller.cgroup)
            .unwrap_or_else(|e| panic!("creating {}: {e}", caller.cgroup.display()));
        std::fs::write(caller.cgroup.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", caller.cgroup.display()));
        caller
    }

    /// Lets it make its calls and waits for it to exit.
    fn go_and_wait(&mut self) {
        let go = self.go.take().expect("told once");
        // SAFETY: writes one byte from a valid buffer to our pipe.
        assert_eq!(
            unsafe { libc::write(go.as_raw_fd(), b"g".as_ptr().cast(), 1) },
            1
        );
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(self.pid, &mut status, 0) }, self.pid);
        self.reaped = true;
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the caller failed: {status:#x}"
        );
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.cgroup.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_service_answers_every_rpc() {
    let _loopback = LOOPBACK.lock().await;
    let r = start(Duration::from_secs(60)).await;
    let mut c = client(&r.addr, Some(TOKEN)).await;

    let st = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.node, "test-node");
    assert_eq!(st.protocol_version, pb::PROTOCOL_VERSION);
    assert_eq!(st.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        st.interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        vec!["lo"]
    );
    assert_eq!(st.programs, vec!["orb8_tc_ingress", "orb8_tc_egress"]);
    assert_eq!(
        st.kernel_release,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );
    let reasons: Vec<&str> = st
        .counters
        .as_ref()
        .unwrap()
        .drops
        .iter()
        .map(|d| d.reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        vec![
            "ringbuf_full",
            "flow_insert_failed",
            "queue_overflow",
            "slow_client",
            "dns_ringbuf_full",
            "dns_load_failed",
            "dns_queue_overflow",
            "dns_pending_full",
            "dns_slow_client"
        ]
    );

    // Loopback: each datagram leaves lo (egress) and arrives on it (ingress).
    let mut stream = c
        .stream_events(pb::StreamEventsRequest {
            filter: by_ports(vec![47301]),
        })
        .await
        .unwrap()
        .into_inner();
    send_udp(47300, 10, 100);
    send_udp(47301, 3, 50);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(ev);
    }
    for (i, ev) in seen.iter().enumerate() {
        assert_eq!(ev.seq, i as u64 + 1);
        assert_eq!(ev.node, "test-node");
        let Some(pb::event::Kind::NewFlow(f)) = &ev.kind else {
            panic!("not a new flow: {ev:?}")
        };
        assert_eq!((f.dst_port, f.packets, f.bytes), (47301, 1, 50 + 28));
    }
    let dirs: Vec<i32> = seen
        .iter()
        .map(|e| match &e.kind {
            Some(pb::event::Kind::NewFlow(f)) => f.direction,
            _ => 0,
        })
        .collect();
    assert_eq!(
        dirs,
        vec![pb::Direction::Egress as i32, pb::Direction::Ingress as i32]
    );

    let q = c
        .query_flows(pb::QueryFlowsRequest {
            filter: by_ports(vec![47300]),
            limit: 0,
            sort: 0,
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.node, "test-node");
    assert_eq!(q.total_matched, 2, "{:?}", q.flows);
    for f in &q.flows {
        assert_eq!(
            (f.interface.as_str(), f.protocol, f.packets, f.bytes),
            ("lo", 17, 10, 10 * 128)
        );
        assert_eq!(f.dst_addr, vec![127, 0, 0, 1]);
        assert!(f.first_seen_unix_nanos > 0 && f.first_seen_unix_nanos <= f.last_seen_unix_nanos);
    }
    let q = c
        .query_flows(pb::QueryFlowsRequest {
            filter: by_ports(vec![47300, 47301]),
            limit: 1,
            sort: pb::SortBy::Bytes as i32,
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (q.total_matched, q.flows.len(), q.flows[0].bytes),
        (4, 1, 1280)
    );
    // ListFlows: the same sorted, limited table in pages of at most 2 flows (port 47300's
    // two flows carry 100-byte datagrams, port 47301's two 50-byte ones).
    let sorted = pb::QueryFlowsRequest {
        filter: by_ports(vec![47300, 47301]),
        limit: 3,
        sort: pb::SortBy::Bytes as i32,
        page_size: 2,
    };
    let whole = c.query_flows(sorted.clone()).await.unwrap().into_inner();
    let pages: Vec<pb::QueryFlowsResponse> = c
        .list_flows(sorted)
        .await
        .unwrap()
        .into_inner()
        .map(|p| p.unwrap())
        .collect()
        .await;
    assert_eq!(
        pages
            .iter()
            .map(|p| (p.flows.len(), p.total_matched, p.node.as_str()))
            .collect::<Vec<_>>(),
        vec![(2, 4, "test-node"), (1, 4, "test-node")],
        "the limit applies before the paging"
    );
    let paged: Vec<pb::Flow> = pages.into_iter().flat_map(|p| p.flows).collect();
    assert_eq!(paged, whole.flows);
    assert_eq!(
        paged.iter().map(|f| f.bytes).collect::<Vec<_>>(),
        vec![1280, 1280, 3 * 78]
    );
    let bad = c
        .query_flows(pb::QueryFlowsRequest {
            filter: Some(pb::FlowFilter {
                cidrs: vec!["10.0.0.0/40".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    drop(stream);

    // A process of our own, in a group of its own, makes exactly CALLS getppid calls.
    const CALLS: u32 = 777;
    let mut caller = Caller::start(CALLS);
    let mut trace = c
        .trace_syscalls(pb::TraceSyscallsRequest {
            target: Some(pb::SyscallTarget {
                kind: Some(pb::syscall_target::Kind::Pid(caller.pid as u32)),
            }),
            syscalls: vec!["getppid".into()],
            stream: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = trace.message().await.unwrap().unwrap();
    assert_eq!((first.seq, first.node.as_str()), (1, "test-node"));
    let Some(pb::syscall_trace_event::Kind::Started(started)) = first.kind else {
        panic!("the trace began with {first:?}")
    };
    assert_eq!(started.filter, pb::SyscallFilterKind::Cgroup as i32);
    {
        use std::os::unix::fs::MetadataExt as _;
        let id = std::fs::metadata(&caller.cgroup).unwrap().ino();
        assert_eq!(started.cgroup_ids, vec![id]);
    }
    caller.go_and_wait();
    let mut getppid = 0u32;
    let mut next_seq = 2;
    let exited = loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), trace.message())
            .await
            .unwrap_or_else(|_| panic!("no target_exited after {getppid} calls"))
            .unwrap()
            .expect("the stream stays open");
        assert_eq!((ev.seq, ev.node.as_str()), (next_seq, "test-node"));
        next_seq += 1;
        match ev.kind {
            Some(pb::syscall_trace_event::Kind::Syscall(e)) => {
                assert_eq!(
                    (e.name.as_str(), e.pid, e.ret),
                    ("getppid", caller.pid as u32, std::process::id() as i64)
                );
                getppid += 1;
            }
            Some(pb::syscall_trace_event::Kind::TargetExited(x)) => break x,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(getppid, CALLS);
    assert_eq!(exited.reason, format!("process {} exited", caller.pid));
    let summary = c
        .get_syscall_summary(pb::GetSyscallSummaryRequest {
            trace_id: started.trace_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.node, "test-node");
    assert_eq!(summary.arch, started.arch);
    assert!(summary.target_exited);
    let calls: Vec<(&str, u64, u64)> = summary
        .syscalls
        .iter()
        .map(|s| (s.name.as_str(), s.calls, s.errors))
        .collect();
    assert_eq!(calls, vec![("getppid", CALLS as u64, 0)]);
    assert_eq!(
        summary.syscalls[0].histogram.iter().sum::<u64>(),
        CALLS as u64
    );
    for d in &summary.drops {
        assert_eq!(d.count, 0, "lost: {d:?}");
    }
    let unknown = c
        .get_syscall_summary(pb::GetSyscallSummaryRequest {
            trace_id: started.trace_id + 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    drop(trace);
    drop(caller);
    drop(c);
    assert_eq!(r.shutdown().await, Stopped::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_service_rejects_missing_or_wrong_token() {
    let _loopback = LOOPBACK.lock().await;
    let r = start(Duration::from_secs(60)).await;
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        let mut c = client(&r.addr, token).await;
        let e = c.get_status(pb::GetStatusRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}");
        let e = c
            .query_flows(pb::QueryFlowsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = c
            .stream_events(pb::StreamEventsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        // A request that would start a trace of this very process, were it let in.
        let e = c
            .trace_syscalls(pb::TraceSyscallsRequest {
                target: Some(pb::SyscallTarget {
                    kind: Some(pb::syscall_target::Kind::Pid(std::process::id())),
                }),
                syscalls: vec!["getppid".into()],
                stream: true,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = c
            .get_syscall_summary(pb::GetSyscallSummaryRequest { trace_id: 1 })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    assert!(
        r.agent
            .probe_info()
            .1
            .iter()
            .all(|p| !p.starts_with("orb8_sys")),
        "no trace was started"
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_service_exits_when_no_client_is_connected() {
    let _loopback = LOOPBACK.lock().await;
    let r = start(Duration::from_millis(500)).await;
    let c = client(&r.addr, Some(TOKEN)).await;
    // A connected client, even an idle one, keeps the agent alive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !r.server.is_finished(),
        "exited while a client was connected"
    );
    drop(c);
    let stopped = tokio::time::timeout(Duration::from_secs(10), r.server)
        .await
        .expect("idle exit")
        .unwrap();
    assert_eq!(stopped, Stopped::Idle);
    r.agent.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_slow_client_gets_every_loss_reported_in_a_gap() {
    let _loopback = LOOPBACK.lock().await;
    let r = start(Duration::from_secs(60)).await;
    let mut c = client_with_window(&r.addr, Some(TOKEN), Some(65535)).await;
    // An address of its own on loopback, so no other test's traffic matches the filter.
    let filter = Some(pb::FlowFilter {
        cidrs: vec!["127.0.0.77/32".into()],
        protocols: vec![17],
        ..Default::default()
    });
    let mut stream = c
        .stream_events(pb::StreamEventsRequest { filter })
        .await
        .unwrap()
        .into_inner();
    // New destination ports, 2 flows each (lo egress and ingress), not read meanwhile: more
    // than the per-client buffer, HTTP/2's buffers and the socket's together hold.
    const PORTS: u16 = 40000;
    let s = UdpSocket::bind("127.0.0.77:0").unwrap();
    for port in 20000..20000 + PORTS {
        s.send_to(b"x", ("127.0.0.77", port)).unwrap();
    }
    let expected = 2 * PORTS as u64;
    let mut delivered = 0u64;
    let mut lost = 0u64;
    let mut last_seq = 0;
    let mut lost_by_stage = [0u64; 4];
    while delivered + lost < expected {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap_or_else(|_| panic!("stalled at {delivered} delivered + {lost} lost"))
            .unwrap()
            .unwrap();
        assert_eq!(ev.seq, last_seq + 1, "seq has no holes");
        last_seq = ev.seq;
        match ev.kind {
            Some(pb::event::Kind::NewFlow(_)) => delivered += 1,
            Some(pb::event::Kind::Gap(g)) => {
                let stage = pb::DropStage::try_from(g.stage).unwrap();
                match stage {
                    pb::DropStage::Client => assert_eq!(g.reason, "slow_client"),
                    pb::DropStage::Agent => assert_eq!(g.reason, "queue_overflow"),
                    other => panic!("unexpected loss stage {other:?}"),
                }
                lost += g.lost;
                lost_by_stage[stage as usize] += g.lost;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(delivered + lost, expected);
    assert!(
        lost > 0,
        "a client that does not read must lose events: {delivered} delivered"
    );
    let st = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let drops = st.counters.unwrap().drops;
    let count = |reason: &str| drops.iter().find(|d| d.reason == reason).unwrap().count;
    assert_eq!(
        count("slow_client"),
        lost_by_stage[pb::DropStage::Client as usize]
    );
    assert_eq!(
        count("queue_overflow"),
        lost_by_stage[pb::DropStage::Agent as usize]
    );
    drop(stream);
    drop(c);
    r.shutdown().await;
}
