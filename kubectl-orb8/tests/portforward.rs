//! Kubernetes without a cluster: kube's real `Client` and `Portforwarder` against a loopback
//! fake API server speaking the pod port-forward protocol, carrying real gRPC to test-double
//! agents (and, as root, to a real `orb8-agent serve`).

mod every_rpc;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use every_rpc::check_every_rpc;
use futures::StreamExt;
use kubectl_orb8::k8s::portforward::{channel, connect_agent};
use kubectl_orb8::merge::{Merged, merge_events, merge_flow_tables};
use kubectl_orb8::transport::{Agent, AgentAddr, AgentError, PodPort, PortForwardError};
use orb8_flowspec::{FlowFilterSpec, SortKey};
use orb8_proto::{FlowFilter, PROTOCOL_VERSION, QueryFlowsRequest, StreamEventsRequest};
use orb8_testkit::fake_agent::{Running, StreamEnd, TOKEN, agent_with_data, serve_tcp};
use orb8_testkit::fake_apiserver::FakeApiServer;

const NS: &str = "orb8-system";
const TIMEOUT: Duration = Duration::from_secs(5);

fn port_of(running: &Running) -> u16 {
    running
        .addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("fake agent listens on TCP")
}

/// A fake agent behind pod `NS/orb8-agent-<node>` of `api`.
fn agent_pod(api: &FakeApiServer, node: &str, events: u64, end: StreamEnd) -> (Running, PodPort) {
    let running = serve_tcp(agent_with_data(node, events, end));
    let pod = format!("orb8-agent-{node}");
    api.add_pod(NS, &pod);
    let target = PodPort::new(NS, pod, port_of(&running));
    (running, target)
}

#[tokio::test]
async fn every_rpc_through_a_port_forward_with_the_token() {
    let api = FakeApiServer::start().await;
    let (running, target) = agent_pod(&api, "node-a", 4, StreamEnd::Close);

    let agent = connect_agent(api.client(), target.clone(), Some(TOKEN), TIMEOUT)
        .await
        .expect("connects through the port-forward");
    assert_eq!(agent.node(), "node-a");
    assert_eq!(agent.status.protocol_version, PROTOCOL_VERSION);
    assert_eq!(
        agent.addr,
        AgentAddr::PortForward {
            namespace: NS.into(),
            pod: "orb8-agent-node-a".into(),
            port: target.port,
        }
    );
    assert_eq!(
        agent.addr.to_string(),
        format!("pod/{NS}/orb8-agent-node-a:{}", target.port)
    );

    check_every_rpc(&agent, &running).await;
    // One HTTP/2 connection, so one port-forward, for all four calls.
    assert_eq!(
        api.requests(),
        vec![FakeApiServer::port_forward_request(
            NS,
            "orb8-agent-node-a",
            target.port
        )]
    );
}

#[tokio::test]
async fn a_wrong_token_is_rejected_through_the_port_forward() {
    let api = FakeApiServer::start().await;
    let (_running, target) = agent_pod(&api, "node-a", 0, StreamEnd::Close);
    let err = connect_agent(api.client(), target.clone(), Some("wrong"), TIMEOUT)
        .await
        .expect_err("refused");
    assert!(matches!(err, AgentError::Unauthenticated { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "the agent at pod/{NS}/orb8-agent-node-a:{} rejected the token (check --token or ORB8_TOKEN)",
            target.port
        )
    );
}

#[tokio::test]
async fn two_pods_merge_into_one_stream_tagged_by_node() {
    let api = FakeApiServer::start().await;
    let (_a, pod_a) = agent_pod(&api, "node-a", 50, StreamEnd::Close);
    let (_b, pod_b) = agent_pod(&api, "node-b", 30, StreamEnd::Close);

    let (a, b) = tokio::join!(
        connect_agent(api.client(), pod_a.clone(), Some(TOKEN), TIMEOUT),
        connect_agent(api.client(), pod_b.clone(), Some(TOKEN), TIMEOUT),
    );
    let agents: Vec<Agent> = vec![a.expect("node-a"), b.expect("node-b")];

    let mut streams = Vec::new();
    for agent in &agents {
        let events = agent
            .stream_events(StreamEventsRequest::default())
            .await
            .expect("StreamEvents");
        streams.push((agent.node(), events));
    }
    let merged: Vec<Merged> = tokio::time::timeout(TIMEOUT, merge_events(streams).collect())
        .await
        .expect("both streams end");

    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut lost = Vec::new();
    for item in merged {
        match item {
            Merged::Event { node, event } => {
                assert_eq!(event.node, node, "tagged with the node that sent it");
                seqs.entry(node).or_default().push(event.seq);
            }
            Merged::AgentLost { node, error } => lost.push((node, error)),
            Merged::Gap { node, lost, .. } => panic!("unexpected gap of {lost} from {node}"),
        }
    }
    assert_eq!(seqs["node-a"], (1..=50).collect::<Vec<_>>());
    assert_eq!(seqs["node-b"], (1..=30).collect::<Vec<_>>());
    lost.sort();
    assert_eq!(
        lost,
        vec![
            (
                "node-a".to_string(),
                "the agent ended the stream".to_string()
            ),
            (
                "node-b".to_string(),
                "the agent ended the stream".to_string()
            ),
        ]
    );

    let mut tables = Vec::new();
    for agent in &agents {
        let flows = agent
            .query_flows(QueryFlowsRequest::default())
            .await
            .expect("QueryFlows");
        tables.push((agent.node(), flows.flows));
    }
    let table = merge_flow_tables(tables, &FlowFilterSpec::default(), SortKey::Bytes, None);
    let rows: Vec<(String, u64)> = table.iter().map(|f| (f.node.clone(), f.bytes)).collect();
    assert_eq!(
        rows,
        vec![
            ("node-a".to_string(), 200),
            ("node-b".to_string(), 200),
            ("node-a".to_string(), 100),
            ("node-b".to_string(), 100),
        ]
    );

    let mut requests = api.requests();
    requests.sort();
    assert_eq!(
        requests,
        vec![
            FakeApiServer::port_forward_request(NS, &pod_a.pod, pod_a.port),
            FakeApiServer::port_forward_request(NS, &pod_b.pod, pod_b.port),
        ]
    );
}

#[tokio::test]
async fn a_missing_pod_is_one_clear_error() {
    let api = FakeApiServer::start().await;
    let target = PodPort::new(NS, "orb8-agent-gone", 7000);
    let started = Instant::now();
    let err = connect_agent(api.client(), target, Some(TOKEN), TIMEOUT)
        .await
        .expect_err("no such pod");
    assert!(started.elapsed() < TIMEOUT, "took {:?}", started.elapsed());
    assert!(
        matches!(
            &err,
            AgentError::PortForward(PortForwardError::PodNotFound { namespace, pod, port: 7000 })
                if namespace == NS && pod == "orb8-agent-gone"
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "cannot port-forward to pod orb8-system/orb8-agent-gone: the pod does not exist"
    );
    assert_eq!(
        api.requests(),
        vec![FakeApiServer::port_forward_request(
            NS,
            "orb8-agent-gone",
            7000
        )]
    );
}

#[tokio::test]
async fn a_pod_port_nobody_listens_on_reports_the_nodes_error() {
    let api = FakeApiServer::start().await;
    api.add_pod(NS, "orb8-agent-starting");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let target = PodPort::new(NS, "orb8-agent-starting", port);
    let err = connect_agent(api.client(), target, Some(TOKEN), TIMEOUT)
        .await
        .expect_err("nothing listens");
    let AgentError::PortForward(PortForwardError::Remote {
        namespace,
        pod,
        port: got_port,
        message,
    }) = &err
    else {
        panic!("expected the node's error, got {err:?}");
    };
    assert_eq!(
        (namespace.as_str(), pod.as_str(), *got_port),
        (NS, "orb8-agent-starting", port)
    );
    assert!(
        message.contains(&format!("error forwarding port {port}")),
        "{message}"
    );
    assert_eq!(
        err.to_string(),
        format!("port-forward to pod {NS}/orb8-agent-starting port {port} failed: {message}")
    );
}

#[tokio::test]
async fn an_agent_that_goes_away_mid_stream_is_reported_lost() {
    let api = FakeApiServer::start().await;
    let (mut running, target) = agent_pod(&api, "node-a", 3, StreamEnd::Hold);
    let agent = connect_agent(api.client(), target.clone(), Some(TOKEN), TIMEOUT)
        .await
        .expect("connects");
    let events = agent
        .stream_events(StreamEventsRequest::default())
        .await
        .expect("StreamEvents");
    let mut merged = merge_events(vec![(agent.node(), events)]);
    for seq in 1..=3 {
        match tokio::time::timeout(TIMEOUT, merged.next()).await {
            Ok(Some(Merged::Event { event, .. })) => assert_eq!(event.seq, seq),
            other => panic!("expected event {seq}, got {other:?}"),
        }
    }

    running.kill();
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), merged.next()).await {
        Ok(Some(Merged::AgentLost { node, error })) => {
            assert_eq!(node, "node-a");
            assert!(!error.is_empty());
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                started.elapsed()
            );
        }
        other => panic!("expected the agent to be reported lost, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(TIMEOUT, merged.next())
            .await
            .expect("the merged stream ends")
            .is_none()
    );

    // The next call opens a fresh port-forward, which fails with the node's error.
    let err = agent.get_status().await.expect_err("the agent is gone");
    assert!(
        matches!(&err, AgentError::PortForward(PortForwardError::Remote { pod, .. }) if *pod == target.pod),
        "{err:?}"
    );
    let requests = api.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| *r == FakeApiServer::port_forward_request(NS, &target.pod, target.port)),
        "{requests:?}"
    );
}

#[tokio::test]
async fn the_channel_alone_carries_grpc() {
    let api = FakeApiServer::start().await;
    let (_running, target) = agent_pod(&api, "node-c", 0, StreamEnd::Close);
    let channel = channel(api.client(), target.clone(), TIMEOUT)
        .await
        .expect("channel");
    let agent = Agent::from_channel(target.agent_addr(), channel, Some(TOKEN), TIMEOUT)
        .await
        .expect("checked");
    assert_eq!(agent.node(), "node-c");
}

/// As root: a real `orb8-agent serve` on this host's loopback, reached only through the fake
/// API server's port-forward; UDP sent on 127.0.0.1 to a port nobody else uses is counted
/// exactly (each datagram twice on lo: egress and ingress; 100 B payload = 128 B at L3).
/// Not root, it says `SKIPPED` on stderr; without the agent binary, it fails.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_real_agent_through_the_port_forward() {
    use kubectl_orb8::local::LocalAgent;
    use orb8_proto::Direction;
    use orb8_testkit::preconditions::{require_root_or_skip, workspace_bin};

    if !require_root_or_skip("privileged_real_agent_through_the_port_forward") {
        return;
    }
    // Built by `cargo test --workspace`; missing, the test fails saying how to build it.
    let binary = workspace_bin("orb8-agent");
    let agent = LocalAgent::start(&binary, &["-i".into(), "lo".into()])
        .await
        .expect("orb8-agent serve starts");
    let listening: std::net::SocketAddr = agent.ready.listening.parse().expect("a TCP address");
    assert!(listening.ip().is_loopback(), "{listening}");

    let api = FakeApiServer::start().await;
    api.add_pod(NS, "orb8-agent-local");
    let target = PodPort::new(NS, "orb8-agent-local", listening.port());
    let remote = connect_agent(api.client(), target.clone(), Some(&agent.token), TIMEOUT)
        .await
        .expect("the real agent answers through the port-forward");
    assert_eq!(remote.node(), agent.ready.node);
    let status = remote.get_status().await.expect("GetStatus");
    assert_eq!(status.protocol_version, PROTOCOL_VERSION);
    assert_eq!(status.attach_mode, agent.ready.attach_mode);
    assert!(
        status.interfaces.iter().any(|i| i.name == "lo"),
        "{:?}",
        status.interfaces
    );

    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let port = receiver.local_addr().expect("addr").port();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let src_port = sender.local_addr().expect("addr").port();
    for _ in 0..10 {
        sender
            .send_to(&[0x5a; 100], ("127.0.0.1", port))
            .expect("send");
    }
    let mut buf = [0u8; 200];
    for i in 0..10 {
        let (n, _) = receiver
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i}: {e}"));
        assert_eq!(n, 100);
    }

    let request = QueryFlowsRequest {
        filter: Some(FlowFilter {
            ports: vec![u32::from(port)],
            protocols: vec![17],
            ..Default::default()
        }),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut flows = loop {
        let flows = remote
            .query_flows(request.clone())
            .await
            .expect("QueryFlows")
            .flows;
        if flows.len() == 2 && flows.iter().all(|f| f.packets == 10) || Instant::now() > deadline {
            break flows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    flows.sort_by_key(|f| f.direction);
    let seen: Vec<_> = flows
        .iter()
        .map(|f| {
            (
                f.interface.as_str(),
                f.direction(),
                f.src_port,
                f.dst_port,
                f.packets,
                f.bytes,
            )
        })
        .collect();
    let (sp, dp) = (u32::from(src_port), u32::from(port));
    let mut want = vec![
        ("lo", Direction::Ingress, sp, dp, 10, 1280),
        ("lo", Direction::Egress, sp, dp, 10, 1280),
    ];
    want.sort_by_key(|w| w.1 as i32);
    assert_eq!(seen, want);
    assert!(
        flows
            .iter()
            .all(|f| f.src_addr == [127, 0, 0, 1] && f.dst_addr == [127, 0, 0, 1]),
        "{flows:?}"
    );
    assert_eq!(
        api.requests(),
        vec![FakeApiServer::port_forward_request(
            NS,
            "orb8-agent-local",
            listening.port()
        )]
    );

    drop(remote);
    agent.stop().await;
}
