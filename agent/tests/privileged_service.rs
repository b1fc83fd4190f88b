//! Privileged component tests of the gRPC service: a real agent (probes attached to this host's
//! loopback), a real tonic server on 127.0.0.1 and a real tonic client. Traffic is UDP on
//! 127.0.0.1 only, on ports unique to each test.

use std::{net::UdpSocket, sync::Arc, time::Duration};

use orb8_agent::{
    probes::{AttachMode, ProbeConfig},
    runtime::{Agent, AgentConfig},
    service::{Listen, Listener, Service, Stopped, serve},
};
use orb8_proto::{self as pb, agent_service_client::AgentServiceClient};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Request, Status, service::interceptor::InterceptedService, transport::Channel};

const TOKEN: &str = "test-token-0123456789abcdef";

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
            ringbuf_bytes: 1 << 22,
            mode: AttachMode::detect(),
        },
        event_queue: 16384,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_service_answers_every_rpc() {
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
            "slow_client"
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
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (q.total_matched, q.flows.len(), q.flows[0].bytes),
        (4, 1, 1280)
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
    drop(c);
    assert_eq!(r.shutdown().await, Stopped::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_service_rejects_missing_or_wrong_token() {
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
    }
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_service_exits_when_no_client_is_connected() {
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
