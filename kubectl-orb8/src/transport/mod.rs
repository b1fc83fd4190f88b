//! Reaching agents: `--agent` addresses, tonic channels over TCP, a unix socket or a pod
//! connector, the session token, and the protocol version check before anything else.
//!
//! Submodules form a stack: [`error`] (why agents could not be used) under [`addr`] (where
//! they are) under [`channel`] (how bytes and calls reach them); this module, on top, is the
//! connected [`Agent`] and its calls.

pub mod addr;
pub mod channel;
pub mod error;

use std::time::Duration;

use orb8_proto::{
    DnsTraceEvent, Event, GetGpusRequest, GetGpusResponse, GetStatusRequest, GetStatusResponse,
    GetSyscallSummaryRequest, PROTOCOL_VERSION, QueryFlowsRequest, QueryFlowsResponse,
    StreamEventsRequest, SyscallSummary, SyscallTraceEvent, TraceDnsRequest, TraceSyscallsRequest,
};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

pub use addr::{AgentAddr, PodPort};
pub use channel::{
    AgentClient, PodConnector, TokenInterceptor, client_over, connect, connect_channel, pod_channel,
};
pub use error::{
    AgentError, ForwarderError, PortForwardError, Upgrade, chain_line, check_protocol,
    find_port_forward_error,
};

use crate::defaults::RPC_TIMEOUT;

async fn within<T>(
    addr: &AgentAddr,
    rpc: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(AgentError::from_status(addr, rpc, &status)),
        Err(_) => Err(no_answer(addr, rpc, timeout)),
    }
}

fn no_answer(addr: &AgentAddr, rpc: &'static str, timeout: Duration) -> AgentError {
    AgentError::Unreachable {
        addr: addr.to_string(),
        reason: format!(
            "{rpc} got no answer within {}",
            humantime::format_duration(timeout)
        ),
    }
}

/// A connected agent whose protocol version has been checked.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Where it was reached.
    pub addr: AgentAddr,
    /// What GetStatus answered on connect.
    pub status: GetStatusResponse,
    client: AgentClient,
}

impl Agent {
    /// Connects, asks GetStatus and refuses a protocol mismatch. `timeout` bounds both.
    pub async fn connect(
        addr: AgentAddr,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Agent, AgentError> {
        let client = connect(&addr, token, timeout).await?;
        Self::checked(addr, client, timeout).await
    }

    /// Connects to a pod port through `connector` (the API server's port-forward) and checks the
    /// agent like any other: the token is sent with every call, and GetStatus must answer with
    /// this client's protocol. `timeout` bounds opening the channel and GetStatus each.
    pub async fn connect_pod<C: PodConnector>(
        connector: C,
        target: PodPort,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Agent, AgentError> {
        let channel = pod_channel(connector, target.clone(), timeout).await?;
        Self::from_channel(target.agent_addr(), channel, token, timeout).await
    }

    /// Like [`Agent::connect`], over a channel opened elsewhere (a port-forward): sends
    /// `token`, asks GetStatus and refuses a protocol mismatch. `timeout` bounds GetStatus.
    pub async fn from_channel(
        addr: AgentAddr,
        channel: Channel,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Agent, AgentError> {
        let client = client_over(channel, TokenInterceptor::new(token)?);
        Self::checked(addr, client, timeout).await
    }

    async fn checked(
        addr: AgentAddr,
        client: AgentClient,
        timeout: Duration,
    ) -> Result<Agent, AgentError> {
        let status = within(
            &addr,
            "GetStatus",
            timeout,
            client.clone().get_status(GetStatusRequest {}),
        )
        .await?;
        if let Err(upgrade) = check_protocol(status.protocol_version) {
            return Err(AgentError::ProtocolMismatch {
                addr: addr.to_string(),
                node: status.node.clone(),
                agent_version: status.agent_version.clone(),
                agent: status.protocol_version,
                client: PROTOCOL_VERSION,
                upgrade,
            });
        }
        Ok(Agent {
            addr,
            status,
            client,
        })
    }

    /// The node name the agent reported, or its address when it reported none.
    pub fn node(&self) -> String {
        if self.status.node.is_empty() {
            self.addr.to_string()
        } else {
            self.status.node.clone()
        }
    }

    /// Asks GetStatus again.
    pub async fn get_status(&self) -> Result<GetStatusResponse, AgentError> {
        let mut client = self.client.clone();
        within(
            &self.addr,
            "GetStatus",
            RPC_TIMEOUT,
            client.get_status(GetStatusRequest {}),
        )
        .await
    }

    /// Asks for the agent's flow table.
    pub async fn query_flows(
        &self,
        request: QueryFlowsRequest,
    ) -> Result<QueryFlowsResponse, AgentError> {
        let mut client = self.client.clone();
        within(
            &self.addr,
            "QueryFlows",
            RPC_TIMEOUT,
            client.query_flows(request),
        )
        .await
    }

    /// Reads the agent's flow table page by page (`ListFlows`), handing each page to `page` as
    /// it arrives, so that a large table is never one message; from an agent that predates
    /// ListFlows, the QueryFlows answer is the one page. Each page must come within the RPC
    /// timeout.
    pub async fn flow_pages(
        &self,
        request: QueryFlowsRequest,
        mut page: impl FnMut(QueryFlowsResponse),
    ) -> Result<(), AgentError> {
        const RPC: &str = "ListFlows";
        let mut client = self.client.clone();
        let mut pages =
            match tokio::time::timeout(RPC_TIMEOUT, client.list_flows(request.clone())).await {
                Ok(Ok(pages)) => pages.into_inner(),
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    page(self.query_flows(request).await?);
                    return Ok(());
                }
                Ok(Err(status)) => return Err(AgentError::from_status(&self.addr, RPC, &status)),
                Err(_) => return Err(no_answer(&self.addr, RPC, RPC_TIMEOUT)),
            };
        loop {
            match tokio::time::timeout(RPC_TIMEOUT, pages.message()).await {
                Ok(Ok(Some(p))) => page(p),
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(status)) => return Err(AgentError::from_status(&self.addr, RPC, &status)),
                Err(_) => return Err(no_answer(&self.addr, RPC, RPC_TIMEOUT)),
            }
        }
    }

    /// Opens the agent's event stream.
    pub async fn stream_events(
        &self,
        request: StreamEventsRequest,
    ) -> Result<Streaming<Event>, AgentError> {
        let mut client = self.client.clone();
        within(
            &self.addr,
            "StreamEvents",
            RPC_TIMEOUT,
            client.stream_events(request),
        )
        .await
    }

    /// Starts a syscall trace; it runs while the returned stream is open.
    pub async fn trace_syscalls(
        &self,
        request: TraceSyscallsRequest,
    ) -> Result<Streaming<SyscallTraceEvent>, AgentError> {
        let mut client = self.client.clone();
        within(
            &self.addr,
            "TraceSyscalls",
            RPC_TIMEOUT,
            client.trace_syscalls(request),
        )
        .await
    }

    /// Opens the agent's DNS exchange stream.
    pub async fn trace_dns(&self) -> Result<Streaming<DnsTraceEvent>, AgentError> {
        let mut client = self.client.clone();
        within(
            &self.addr,
            "TraceDns",
            RPC_TIMEOUT,
            client.trace_dns(TraceDnsRequest {}),
        )
        .await
    }

    /// The node's GPUs, the kubelet's GPU allocations and the GPU processes' containers;
    /// per-process utilization covers the last `window`.
    pub async fn get_gpus(&self, window: Duration) -> Result<GetGpusResponse, AgentError> {
        let mut client = self.client.clone();
        let sample_window_ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX);
        within(
            &self.addr,
            "GetGpus",
            RPC_TIMEOUT + window,
            client.get_gpus(GetGpusRequest { sample_window_ms }),
        )
        .await
    }

    /// Starts a drop trace; it runs while the returned stream is open.
    pub async fn trace_drops(
        &self,
        request: orb8_proto::TraceDropsRequest,
    ) -> Result<Streaming<orb8_proto::DropTraceEvent>, AgentError> {
        let mut client = self.client.clone();
        within(
            &self.addr,
            "TraceDrops",
            RPC_TIMEOUT,
            client.trace_drops(request),
        )
        .await
    }

    /// Starts a TCP trace; it runs while the returned stream is open.
    pub async fn trace_tcp(
        &self,
        request: orb8_proto::TraceTcpRequest,
    ) -> Result<Streaming<orb8_proto::TcpTraceEvent>, AgentError> {
        let mut client = self.client.clone();
        within(
            &self.addr,
            "TraceTcp",
            RPC_TIMEOUT,
            client.trace_tcp(request),
        )
        .await
    }

    /// The drops of an open drop trace since it started.
    pub async fn drop_summary(&self, trace_id: u64) -> Result<orb8_proto::DropSummary, AgentError> {
        let mut client = self.client.clone();
        within(
            &self.addr,
            "GetDropSummary",
            RPC_TIMEOUT,
            client.get_drop_summary(orb8_proto::GetDropSummaryRequest { trace_id }),
        )
        .await
    }

    /// The counts of an open syscall trace since it started.
    pub async fn syscall_summary(&self, trace_id: u64) -> Result<SyscallSummary, AgentError> {
        let mut client = self.client.clone();
        within(
            &self.addr,
            "GetSyscallSummary",
            RPC_TIMEOUT,
            client.get_syscall_summary(GetSyscallSummaryRequest { trace_id }),
        )
        .await
    }
}
