//! The `orb8.agent.v1` gRPC service over a running [`Agent`]: a thin tonic service forwarding
//! each RPC to the module that does its job.
//!
//! - [`listen`]: the loopback or unix-socket listener, idle watchdog, graceful shutdown;
//! - [`auth`]: the per-session token every request must carry;
//! - [`stream`]: the one sequenced, loss-counting client stream both streaming RPCs use;
//! - [`flows`]: `QueryFlows` and `StreamEvents`;
//! - [`syscall_trace`]: `TraceSyscalls` and `GetSyscallSummary`;
//! - [`drop_trace`]: `TraceDrops` and `GetDropSummary`;
//! - [`tcp_trace`]: `TraceTcp` (connects, accepts, closes, resets, retransmits);
//! - [`dns_trace`]: the DNS exchanges of `TraceDns`;
//! - [`status`]: the `GetStatus` reply.
//!
//! `GetGpus` is answered by [`crate::gpu::Gpus`].
//!
//! The modules form a stack: `stream` and `auth` import no sibling, `listen` imports `auth`,
//! `flows`, `syscall_trace`, `drop_trace`, `tcp_trace` and `dns_trace` import `stream`,
//! `status` imports `flows`; only this one imports them all.

pub mod auth;
pub mod dns_trace;
pub mod drop_trace;
pub mod flows;
pub mod listen;
pub mod status;
pub mod stream;
pub mod syscall_trace;
pub mod tcp_trace;

use std::sync::Arc;

use orb8_proto as pb;
use tonic::{Request, Response, Status};

pub use crate::defaults::CLIENT_BUFFER;
pub use auth::TokenCheck;
pub use listen::{Activity, Listen, Listener, Stopped, Tracked, serve};
pub use status::kernel_release;

use crate::gpu::{GpuConfig, Gpus};
use crate::runtime::Agent;

/// The gRPC service.
pub struct Service {
    agent: Arc<Agent>,
    node: String,
    flows: flows::Flows,
    traces: syscall_trace::Traces,
    drop_traces: drop_trace::DropTraces,
    tcp_traces: tcp_trace::TcpTraces,
    dns: dns_trace::DnsTraces,
    gpus: Arc<Gpus>,
}

impl Service {
    /// A service answering for `agent` as node `node`, its GPUs found as by default (NVML, else
    /// a DCGM exporter on its default port, else none).
    pub fn new(agent: Arc<Agent>, node: String) -> Self {
        let config = GpuConfig::default();
        let gpus = Gpus::detect(&config)
            .unwrap_or_else(|e| Gpus::none(e.to_string(), &config.pod_resources_socket));
        Self::with_gpus(agent, node, Arc::new(gpus))
    }

    /// A service answering for `agent` as node `node`, with this GPU source (shared with the
    /// metrics endpoint).
    pub fn with_gpus(agent: Arc<Agent>, node: String, gpus: Arc<Gpus>) -> Self {
        Service {
            flows: flows::Flows::new(agent.clone(), node.clone()),
            traces: syscall_trace::Traces::new(agent.clone(), node.clone()),
            drop_traces: drop_trace::DropTraces::new(agent.clone(), node.clone()),
            tcp_traces: tcp_trace::TcpTraces::new(agent.clone(), node.clone()),
            dns: dns_trace::DnsTraces::new(agent.clone(), node.clone()),
            agent,
            node,
            gpus,
        }
    }

    /// The status reply.
    pub fn status(&self) -> pb::GetStatusResponse {
        let mut s = status::status(&self.agent, &self.node, self.flows.slow_client_drops());
        s.gpu = Some(self.gpus.status());
        s
    }

    /// What flow streams lost to slow clients so far, shared: the metrics endpoint reads it.
    pub fn slow_client_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.flows.slow_client_counter()
    }

    /// The flow table, filtered, sorted and limited.
    pub fn query(&self, req: &pb::QueryFlowsRequest) -> Result<pb::QueryFlowsResponse, String> {
        self.flows.query(req)
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Service {
    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn query_flows(
        &self,
        req: Request<pb::QueryFlowsRequest>,
    ) -> Result<Response<pb::QueryFlowsResponse>, Status> {
        self.query(req.get_ref())
            .map(Response::new)
            .map_err(Status::invalid_argument)
    }

    type ListFlowsStream = flows::FlowPages;

    async fn list_flows(
        &self,
        req: Request<pb::QueryFlowsRequest>,
    ) -> Result<Response<Self::ListFlowsStream>, Status> {
        self.flows.list(req.get_ref()).map(Response::new)
    }

    type StreamEventsStream = flows::EventStream;

    async fn stream_events(
        &self,
        req: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        self.flows.stream(req.get_ref()).map(Response::new)
    }

    type TraceSyscallsStream = syscall_trace::SyscallStream;

    async fn trace_syscalls(
        &self,
        req: Request<pb::TraceSyscallsRequest>,
    ) -> Result<Response<Self::TraceSyscallsStream>, Status> {
        self.traces.trace(req.get_ref()).map(Response::new)
    }

    async fn get_syscall_summary(
        &self,
        req: Request<pb::GetSyscallSummaryRequest>,
    ) -> Result<Response<pb::SyscallSummary>, Status> {
        self.traces
            .summary(req.get_ref().trace_id)
            .map(Response::new)
    }

    type TraceDropsStream = drop_trace::DropStream;

    async fn trace_drops(
        &self,
        req: Request<pb::TraceDropsRequest>,
    ) -> Result<Response<Self::TraceDropsStream>, Status> {
        self.drop_traces.trace(req.get_ref()).map(Response::new)
    }

    async fn get_drop_summary(
        &self,
        req: Request<pb::GetDropSummaryRequest>,
    ) -> Result<Response<pb::DropSummary>, Status> {
        self.drop_traces
            .summary(req.get_ref().trace_id)
            .map(Response::new)
    }

    type TraceTcpStream = tcp_trace::TcpStream;

    async fn trace_tcp(
        &self,
        req: Request<pb::TraceTcpRequest>,
    ) -> Result<Response<Self::TraceTcpStream>, Status> {
        self.tcp_traces.trace(req.get_ref()).map(Response::new)
    }

    type TraceDnsStream = dns_trace::DnsStream;

    async fn trace_dns(
        &self,
        req: Request<pb::TraceDnsRequest>,
    ) -> Result<Response<Self::TraceDnsStream>, Status> {
        Ok(Response::new(self.dns.trace(req.get_ref())))
    }

    async fn get_gpus(
        &self,
        req: Request<pb::GetGpusRequest>,
    ) -> Result<Response<pb::GetGpusResponse>, Status> {
        let window = match req.get_ref().sample_window_ms {
            0 => crate::defaults::GPU_SAMPLE_WINDOW,
            ms => std::time::Duration::from_millis(ms.into()),
        };
        Ok(Response::new(self.gpus.get(&self.node, window).await))
    }
}
