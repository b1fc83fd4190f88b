//! Component tests: the real transport and merge over three fake agents' event streams.

use std::collections::HashMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kubectl_orb8::merge::{GapCause, Merged, merge_events};
use kubectl_orb8::transport::Agent;
use orb8_proto::{DropStage, StreamEventsRequest};
use orb8_testkit::fake_agent::{
    FakeAgent, Running, StreamEnd, gap_event, new_flow_event, new_flow_events, serve_tcp,
};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn open_streams(agents: &[&Running]) -> impl Stream<Item = Merged> + Send + Unpin + use<> {
    let mut streams = Vec::new();
    for running in agents {
        let agent = Agent::connect(running.addr.parse().expect("addr"), None, TIMEOUT)
            .await
            .expect("connects");
        let events = agent
            .stream_events(StreamEventsRequest::default())
            .await
            .expect("stream opens");
        streams.push((agent.node(), events));
    }
    merge_events(streams)
}

/// Takes exactly `n` items, failing if they do not all arrive within a few seconds.
async fn take_exactly(merged: &mut (impl Stream<Item = Merged> + Unpin), n: usize) -> Vec<Merged> {
    let mut items = Vec::with_capacity(n);
    while items.len() < n {
        match tokio::time::timeout(TIMEOUT, merged.next()).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => panic!(
                "merged stream ended after {} of {n} items: {items:?}",
                items.len()
            ),
            Err(_) => panic!("only {} of {n} items arrived: {items:?}", items.len()),
        }
    }
    items
}

/// Asserts nothing more arrives for a while (the live agents hold their streams open).
async fn assert_quiet(merged: &mut (impl Stream<Item = Merged> + Unpin)) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), merged.next()).await {
        panic!("unexpected extra item: {item:?}");
    }
}

fn new_flows_by_node(items: &[Merged]) -> HashMap<String, Vec<u64>> {
    let mut by_node: HashMap<String, Vec<u64>> = HashMap::new();
    for item in items {
        if let Merged::Event { node, event } = item {
            by_node.entry(node.clone()).or_default().push(event.seq);
        }
    }
    by_node
}

fn agent(node: &str, events: u64, end: StreamEnd) -> FakeAgent {
    let mut fake = FakeAgent::new(node);
    fake.events = new_flow_events(node, events);
    fake.end = end;
    fake
}

#[tokio::test]
async fn one_agent_failing_mid_stream_does_not_stall_the_others() {
    let a = serve_tcp(agent("node-a", 10, StreamEnd::Hold));
    let b = serve_tcp(agent(
        "node-b",
        5,
        StreamEnd::Fail(Code::Unavailable, "probe crashed".into()),
    ));
    let c = serve_tcp(agent("node-c", 7, StreamEnd::Hold));
    let mut merged = open_streams(&[&a, &b, &c]).await;

    let items = take_exactly(&mut merged, 10 + 5 + 1 + 7).await;
    assert_quiet(&mut merged).await;

    let by_node = new_flows_by_node(&items);
    assert_eq!(
        by_node["node-a"],
        (1..=10).collect::<Vec<_>>(),
        "in order, all of them"
    );
    assert_eq!(by_node["node-b"], (1..=5).collect::<Vec<_>>());
    assert_eq!(by_node["node-c"], (1..=7).collect::<Vec<_>>());
    let lost: Vec<&Merged> = items
        .iter()
        .filter(|m| matches!(m, Merged::AgentLost { .. }))
        .collect();
    assert_eq!(
        lost,
        vec![&Merged::AgentLost {
            node: "node-b".into(),
            error: "Unavailable: probe crashed".into()
        }]
    );
    assert!(!items.iter().any(|m| matches!(m, Merged::Gap { .. })));
}

#[tokio::test]
async fn an_agent_killed_mid_stream_is_reported_lost_and_the_others_go_on() {
    let a = serve_tcp(agent("node-a", 3, StreamEnd::Hold));
    let mut b = serve_tcp(agent("node-b", 4, StreamEnd::Hold));
    let c = serve_tcp(agent("node-c", 2, StreamEnd::Hold));
    let mut merged = open_streams(&[&a, &b, &c]).await;

    let before = take_exactly(&mut merged, 3 + 4 + 2).await;
    let by_node = new_flows_by_node(&before);
    assert_eq!(
        (
            by_node["node-a"].len(),
            by_node["node-b"].len(),
            by_node["node-c"].len()
        ),
        (3, 4, 2)
    );

    b.kill();
    let after = take_exactly(&mut merged, 1).await;
    assert!(
        matches!(&after[0], Merged::AgentLost { node, .. } if node == "node-b"),
        "{after:?}"
    );
    assert_quiet(&mut merged).await;

    // The survivors still answer.
    for running in [&a, &c] {
        let agent = Agent::connect(running.addr.parse().expect("addr"), None, TIMEOUT)
            .await
            .expect("still reachable");
        agent.get_status().await.expect("still answers");
    }
}

#[tokio::test]
async fn gaps_are_reported_with_exact_counts() {
    let mut jumpy = FakeAgent::new("node-a");
    jumpy.events = vec![
        new_flow_event("node-a", 1),
        new_flow_event("node-a", 2),
        // 3, 4 and 5 never arrive.
        new_flow_event("node-a", 6),
        gap_event("node-a", 7, 9),
        new_flow_event("node-a", 8),
    ];
    let a = serve_tcp(jumpy);
    let b = serve_tcp(agent("node-b", 2, StreamEnd::Close));
    let mut merged = open_streams(&[&a, &b]).await;

    let items = take_exactly(&mut merged, 4 + 2 + 2 + 1).await;
    assert_quiet(&mut merged).await;
    let a_items: Vec<&Merged> = items
        .iter()
        .filter(|m| match m {
            Merged::Event { node, .. }
            | Merged::Gap { node, .. }
            | Merged::AgentLost { node, .. } => node == "node-a",
        })
        .collect();
    assert_eq!(a_items.len(), 6);
    assert_eq!(
        a_items[2],
        &Merged::Gap {
            node: "node-a".into(),
            lost: 3,
            cause: GapCause::SeqJump {
                expected: 3,
                got: 6
            }
        }
    );
    assert!(matches!(a_items[3], Merged::Event { event, .. } if event.seq == 6));
    assert_eq!(
        a_items[4],
        &Merged::Gap {
            node: "node-a".into(),
            lost: 9,
            cause: GapCause::Reported {
                stage: DropStage::Client,
                reason: "slow_client".into()
            }
        }
    );
    assert!(matches!(a_items[5], Merged::Event { event, .. } if event.seq == 8));
    assert!(
        items
            .iter()
            .any(|m| matches!(m, Merged::AgentLost { node, .. } if node == "node-b")),
        "an agent ending its stream early is lost: {items:?}"
    );
}
