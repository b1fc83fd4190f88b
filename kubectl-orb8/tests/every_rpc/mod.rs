//! The client-side "every RPC" check, shared by the tests that reach a fake agent
//! ([`orb8_testkit::fake_agent`]) through different transports.

use futures::StreamExt;
use orb8_proto::{QueryFlowsRequest, StreamEventsRequest};
use orb8_testkit::fake_agent::Running;

/// Calls GetStatus, QueryFlows and StreamEvents on `agent`, connected to `running` (an
/// [`agent_with_data`](orb8_testkit::fake_agent::agent_with_data) with 4 events), and checks each answer, that the query arrived as sent,
/// and that every call (connect's GetStatus included) carried [`TOKEN`](orb8_testkit::fake_agent::TOKEN).
pub async fn check_every_rpc(agent: &kubectl_orb8::transport::Agent, running: &Running) {
    let status = agent.get_status().await.expect("GetStatus");
    assert_eq!(status.kernel_release, "6.18.0-test");

    let request = QueryFlowsRequest {
        filter: Some(orb8_proto::FlowFilter {
            ports: vec![53],
            ..Default::default()
        }),
        limit: 7,
        sort: orb8_proto::SortBy::Packets as i32,
    };
    let flows = agent
        .query_flows(request.clone())
        .await
        .expect("QueryFlows");
    assert_eq!(flows.flows.len(), 2);
    assert_eq!(
        running.calls.queries.lock().expect("lock").as_slice(),
        &[request],
        "the filter, limit and sort arrive as sent"
    );

    let events: Vec<_> = agent
        .stream_events(StreamEventsRequest::default())
        .await
        .expect("StreamEvents")
        .collect()
        .await;
    let seqs: Vec<u64> = events.into_iter().map(|e| e.expect("event").seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);

    let tokens = running.tokens();
    assert_eq!(tokens.len(), 4, "connect's GetStatus plus three calls");
    assert!(
        tokens
            .iter()
            .all(|t| t.as_deref() == Some("Bearer s3cret-token")),
        "{tokens:?}"
    );
}
