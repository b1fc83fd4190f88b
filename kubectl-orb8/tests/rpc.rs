//! Component tests: the real client transport against fake agents speaking orb8.agent.v1 over
//! loopback TCP and unix sockets.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kubectl_orb8::transport::{Agent, AgentAddr, AgentError};
use orb8_proto::{FlowFilter, PROTOCOL_VERSION, QueryFlowsRequest, SortBy, StreamEventsRequest};
use support::{FakeAgent, StreamEnd, flow, new_flow_events, serve_tcp};

const TIMEOUT: Duration = Duration::from_secs(5);

fn addr(s: &str) -> AgentAddr {
    s.parse().expect("fake agent address parses")
}

async fn every_rpc_through(running: &support::Running, node: &str) {
    let agent = Agent::connect(addr(&running.addr), Some("s3cret-token"), TIMEOUT)
        .await
        .expect("connects");
    assert_eq!(agent.node(), node);
    assert_eq!(agent.status.protocol_version, PROTOCOL_VERSION);

    let status = agent.get_status().await.expect("GetStatus");
    assert_eq!(status.kernel_release, "6.18.0-test");

    let request = QueryFlowsRequest {
        filter: Some(FlowFilter {
            ports: vec![53],
            ..Default::default()
        }),
        limit: 7,
        sort: SortBy::Packets as i32,
    };
    let flows = agent
        .query_flows(request.clone())
        .await
        .expect("QueryFlows");
    assert_eq!(flows.flows.len(), 2);
    assert_eq!(
        running.seen.queries.lock().expect("lock").as_slice(),
        &[request],
        "the filter, limit and sort arrive as sent"
    );

    let events: Vec<_> = agent
        .stream_events(StreamEventsRequest::default())
        .await
        .expect("StreamEvents")
        .collect()
        .await;
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(Result::is_ok));

    let tokens = running.tokens();
    assert_eq!(tokens.len(), 4, "connect's GetStatus plus three calls");
    assert!(
        tokens
            .iter()
            .all(|t| t.as_deref() == Some("Bearer s3cret-token")),
        "{tokens:?}"
    );
}

fn agent_with_data(node: &str) -> FakeAgent {
    let mut fake = FakeAgent::new(node);
    fake.token = Some("s3cret-token".into());
    fake.flows = vec![flow(node, 100, 1, 53), flow(node, 200, 2, 80)];
    fake.events = new_flow_events(node, 4);
    fake.end = StreamEnd::Close;
    fake
}

#[tokio::test]
async fn every_rpc_over_tcp_with_the_token() {
    let running = serve_tcp(agent_with_data("node-tcp"));
    every_rpc_through(&running, "node-tcp").await;
}

#[cfg(unix)]
#[tokio::test]
async fn every_rpc_over_a_unix_socket_with_the_token() {
    let running = support::serve_unix(agent_with_data("node-unix"));
    assert!(running.addr.starts_with("unix:/"));
    every_rpc_through(&running, "node-unix").await;
}

#[tokio::test]
async fn a_wrong_token_is_reported_as_rejected() {
    let running = serve_tcp(agent_with_data("node-a"));
    let err = Agent::connect(addr(&running.addr), Some("wrong-token"), TIMEOUT)
        .await
        .expect_err("refused");
    assert!(matches!(err, AgentError::Unauthenticated { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "the agent at {} rejected the token (check --token or ORB8_TOKEN)",
            running.addr
        )
    );
    let err = Agent::connect(addr(&running.addr), None, TIMEOUT)
        .await
        .expect_err("no token");
    assert!(matches!(err, AgentError::Unauthenticated { .. }), "{err:?}");
}

#[tokio::test]
async fn protocol_mismatches_say_which_side_to_upgrade() {
    let mut older = FakeAgent::new("old");
    older.status.protocol_version = PROTOCOL_VERSION - 1;
    older.status.agent_version = "0.0.1".into();
    let older = serve_tcp(older);
    let err = Agent::connect(addr(&older.addr), None, TIMEOUT)
        .await
        .expect_err("older agent refused");
    let text = err.to_string();
    assert!(text.ends_with(": upgrade the agent"), "{text}");
    assert!(text.contains("orb8-agent 0.0.1"), "{text}");

    let mut newer = FakeAgent::new("new");
    newer.status.protocol_version = PROTOCOL_VERSION + 1;
    let newer = serve_tcp(newer);
    let err = Agent::connect(addr(&newer.addr), None, TIMEOUT)
        .await
        .expect_err("newer agent refused");
    assert!(err.to_string().ends_with(": upgrade kubectl-orb8"), "{err}");
}

#[tokio::test]
async fn an_unreachable_agent_is_named() {
    // Bind and close a port so nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let target = format!("127.0.0.1:{port}");
    let err = Agent::connect(addr(&target), None, TIMEOUT)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, AgentError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach agent {target}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_agent_times_out() {
    // Accepts TCP connections but never speaks HTTP/2.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(2) {
            held.push(conn);
        }
        std::thread::sleep(Duration::from_secs(5));
    });
    let started = Instant::now();
    let err = Agent::connect(addr(&target), None, Duration::from_millis(500))
        .await
        .expect_err("no answer");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach agent {target}: ")),
        "{err}"
    );
}
