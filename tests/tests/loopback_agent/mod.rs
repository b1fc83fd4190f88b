//! A real agent (flow probes on `lo` only) started in this test process and served over gRPC
//! on loopback with a token, for the privileged tests that drive the on-demand tracers
//! (syscalls, drops, TCP) through their RPCs.

use std::{sync::Arc, time::Duration};

use orb8_agent::{
    probes::{AttachMode, DnsPorts, ProbeConfig},
    runtime::{Agent, AgentConfig},
    service::{Listen, Listener, Service, serve},
};
use orb8_proto::{self as pb, agent_service_client::AgentServiceClient};
use orb8_testkit::require_root;
use tonic::{Request, Status, service::interceptor::InterceptedService, transport::Channel};

type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;

/// A client that sends the test's token with every call.
#[allow(
    dead_code,
    reason = "each test binary including this module names the type or not"
)]
pub type Client = AgentServiceClient<InterceptedService<Channel, AddToken>>;

/// Starts the agent, serving on loopback and accepting `token`, and a client holding it.
pub async fn agent(token: &'static str) -> (Arc<Agent>, Client) {
    require_root();
    let config = AgentConfig {
        interfaces: vec!["lo".into()],
        rescan: Duration::from_secs(5),
        probe: ProbeConfig {
            flow_map_entries: 1024,
            flow_map_entries_v6: 1024,
            ringbuf_bytes: 1 << 16,
            mode: AttachMode::detect(),
            dns_ports: DnsPorts::DEFAULT,
        },
        event_queue: 1024,
        dns_timeout: Duration::from_secs(5),
    };
    let (agent, _tasks) = Agent::start(config).await.expect("starting the agent");
    let listener = Listener::bind(&"127.0.0.1:0".parse::<Listen>().unwrap())
        .await
        .unwrap();
    let addr = listener.address();
    let service = Service::new(agent.clone(), "test-node".into());
    tokio::spawn(serve(
        service,
        token,
        listener,
        Duration::from_secs(60),
        std::future::pending(),
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connecting");
    let add: AddToken = Box::new(move |mut r: Request<()>| {
        r.metadata_mut()
            .insert("authorization", pb::bearer(token).parse().unwrap());
        Ok(r)
    });
    (agent, AgentServiceClient::with_interceptor(channel, add))
}

/// The wire form of an address: 4 bytes for IPv4, 16 for IPv6.
#[allow(
    dead_code,
    reason = "each test binary including this module uses it or not"
)]
pub fn addr_bytes(a: &str) -> Vec<u8> {
    match a.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(v) => v.octets().to_vec(),
        std::net::IpAddr::V6(v) => v.octets().to_vec(),
    }
}
