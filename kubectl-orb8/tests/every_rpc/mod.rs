//! The client-side "every RPC" check, shared by the tests that reach a fake agent
//! ([`orb8_testkit::fake_agent`]) through different transports.

use std::time::Duration;

use futures::StreamExt;
use orb8_proto::{
    QueryFlowsRequest, StreamEventsRequest, SyscallTarget, TraceSyscallsRequest, syscall_target,
};
use orb8_testkit::fake_agent::{
    Running, SYSCALL_TRACE_ID, dns_trace, syscall_summary, syscall_trace,
};

/// Calls every RPC of `orb8.agent.v1` (GetStatus, QueryFlows, ListFlows, StreamEvents, TraceSyscalls,
/// GetSyscallSummary, TraceDns; TraceDrops, GetDropSummary and TraceTcp, which the fake
/// refuses) on `agent`, connected to `running` (an
/// [`agent_with_data`](orb8_testkit::fake_agent::agent_with_data) with 4 events), and checks
/// each answer against the fake's canned data, that each request arrived as sent, and that
/// every call (connect's GetStatus included) carried
/// [`TOKEN`](orb8_testkit::fake_agent::TOKEN).
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
        page_size: 0,
    };
    let flows = agent
        .query_flows(request.clone())
        .await
        .expect("QueryFlows");
    assert_eq!(flows.flows.len(), 2);
    assert_eq!(
        running.calls.queries.lock().expect("lock").as_slice(),
        std::slice::from_ref(&request),
        "the filter, limit and sort arrive as sent"
    );

    // ListFlows: the same table in pages of the size asked for, each page whole.
    let paged = QueryFlowsRequest {
        page_size: 1,
        ..request.clone()
    };
    let mut pages = Vec::new();
    agent
        .flow_pages(paged.clone(), |p| pages.push(p))
        .await
        .expect("ListFlows");
    assert_eq!(pages.len(), 2, "two flows in pages of one");
    assert!(
        pages
            .iter()
            .all(|p| p.flows.len() == 1 && p.total_matched == 2 && p.node == flows.node)
    );
    let paged_flows: Vec<_> = pages.into_iter().flat_map(|p| p.flows).collect();
    assert_eq!(paged_flows, flows.flows, "the same flows in the same order");
    assert_eq!(
        running.calls.queries.lock().expect("lock").as_slice(),
        &[request, paged],
        "ListFlows's request arrives as sent"
    );

    let events: Vec<_> = agent
        .stream_events(StreamEventsRequest::default())
        .await
        .expect("StreamEvents")
        .collect()
        .await;
    let seqs: Vec<u64> = events.into_iter().map(|e| e.expect("event").seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);

    let trace_request = TraceSyscallsRequest {
        target: Some(SyscallTarget {
            kind: Some(syscall_target::Kind::CgroupPath(
                "/sys/fs/cgroup/app".into(),
            )),
        }),
        syscalls: vec!["getppid".into(), "openat".into()],
        stream: true,
    };
    let trace = agent
        .trace_syscalls(trace_request.clone())
        .await
        .expect("TraceSyscalls");
    // The canned events; then the trace stays open, as a live one does, until dropped.
    let events = tokio::time::timeout(Duration::from_secs(5), trace.take(4).collect::<Vec<_>>())
        .await
        .expect("the canned syscall trace arrives");
    let events: Vec<_> = events
        .into_iter()
        .map(|e| e.expect("trace event"))
        .collect();
    assert_eq!(events, syscall_trace(&status.node));
    assert_eq!(
        running.calls.traces.lock().expect("lock").as_slice(),
        &[trace_request],
        "the target, syscalls and stream flag arrive as sent"
    );

    let summary = agent
        .syscall_summary(SYSCALL_TRACE_ID)
        .await
        .expect("GetSyscallSummary");
    assert_eq!(summary, syscall_summary(&status.node));
    assert_eq!(
        running.calls.summaries.lock().expect("lock").as_slice(),
        &[SYSCALL_TRACE_ID]
    );

    let dns = agent.trace_dns().await.expect("TraceDns");
    // The canned exchanges; then the stream stays open, as a live one does.
    let exchanges = tokio::time::timeout(Duration::from_secs(5), dns.take(3).collect::<Vec<_>>())
        .await
        .expect("the canned DNS trace arrives");
    let exchanges: Vec<_> = exchanges
        .into_iter()
        .map(|e| e.expect("DNS event"))
        .collect();
    assert_eq!(exchanges, dns_trace(&status.node));

    // Drop and TCP traces are not faked: the fake refuses them (after checking the token), and
    // the client says which RPC failed.
    for err in [
        agent
            .trace_drops(orb8_proto::TraceDropsRequest::default())
            .await
            .err(),
        agent.drop_summary(1).await.err(),
        agent
            .trace_tcp(orb8_proto::TraceTcpRequest::default())
            .await
            .err(),
    ] {
        let err = err
            .expect("the fake agent refuses drop and TCP traces")
            .to_string();
        assert!(err.contains("does not trace"), "{err}");
    }

    let tokens = running.tokens();
    assert_eq!(tokens.len(), 11, "connect's GetStatus plus ten calls");
    assert!(
        tokens
            .iter()
            .all(|t| t.as_deref() == Some("Bearer s3cret-token")),
        "{tokens:?}"
    );
}
