//! Component tests: the real client transport against fake agents speaking orb8.agent.v1 over
//! loopback TCP and unix sockets.

mod every_rpc;

use std::time::Duration;

use every_rpc::check_every_rpc;
use kubectl_orb8::transport::{Agent, AgentAddr, AgentError};
use orb8_proto::PROTOCOL_VERSION;
use orb8_testkit::fake_agent::{self, FakeAgent, Running, StreamEnd, TOKEN, serve_tcp};

const TIMEOUT: Duration = Duration::from_secs(5);

fn addr(s: &str) -> AgentAddr {
    s.parse().expect("fake agent address parses")
}

async fn every_rpc_through(running: &Running, node: &str) {
    let agent = Agent::connect(addr(&running.addr), Some(TOKEN), TIMEOUT)
        .await
        .expect("connects");
    assert_eq!(agent.node(), node);
    assert_eq!(agent.status.protocol_version, PROTOCOL_VERSION);
    check_every_rpc(&agent, running).await;
}

fn agent_with_data(node: &str) -> FakeAgent {
    fake_agent::agent_with_data(node, 4, StreamEnd::Close)
}

#[tokio::test]
async fn every_rpc_over_tcp_with_the_token() {
    let running = serve_tcp(agent_with_data("node-tcp"));
    every_rpc_through(&running, "node-tcp").await;
}

#[cfg(unix)]
#[tokio::test]
async fn every_rpc_over_a_unix_socket_with_the_token() {
    let running = fake_agent::serve_unix(agent_with_data("node-unix"));
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
    // Accepts TCP connections and holds them open until the test ends, never speaking HTTP/2.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    // The client gives up by itself, after its own timeout; the outer bound only keeps a
    // regression from hanging the suite.
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        Agent::connect(addr(&target), None, Duration::from_millis(500)),
    )
    .await
    .expect("connect gives up by itself")
    .expect_err("no answer");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach agent {target}: ")),
        "{err}"
    );
    assert!(err.to_string().ends_with("within 500ms"), "{err}");
}

#[tokio::test]
async fn an_agent_without_list_flows_is_read_through_query_flows() {
    let mut fake = agent_with_data("node-old");
    fake.list_flows = false;
    let running = serve_tcp(fake);
    let agent = Agent::connect(addr(&running.addr), Some(TOKEN), TIMEOUT)
        .await
        .expect("connects");
    let request = orb8_proto::QueryFlowsRequest {
        page_size: 1,
        ..Default::default()
    };
    let mut pages = Vec::new();
    agent
        .flow_pages(request.clone(), |p| pages.push(p))
        .await
        .expect("falls back to QueryFlows");
    assert_eq!(pages.len(), 1, "QueryFlows's answer is the one page");
    assert_eq!(pages[0].flows.len(), 2);
    assert_eq!(pages[0].node, "node-old");
    assert_eq!(
        running.calls.queries.lock().expect("lock").as_slice(),
        &[request],
        "only QueryFlows recorded the request (ListFlows refused it first)"
    );
}
