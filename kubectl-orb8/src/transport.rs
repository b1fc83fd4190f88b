//! Reaching agents: parsing `--agent` addresses, opening tonic channels over TCP or a unix
//! socket, sending the session token, and checking the protocol version before anything else.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use orb8_proto::agent_service_client::AgentServiceClient;
use orb8_proto::{
    Event, GetStatusRequest, GetStatusResponse, GetSyscallSummaryRequest, PROTOCOL_VERSION,
    QueryFlowsRequest, QueryFlowsResponse, StreamEventsRequest, SyscallSummary, SyscallTraceEvent,
    TOKEN_METADATA_KEY, TraceSyscallsRequest,
};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// The largest message accepted from an agent: a full flow table of a big node is several MiB,
/// more than tonic's 4 MiB default.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How long a unary call (GetStatus, QueryFlows) may take once connected.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Where an agent listens: `host:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AgentAddr {
    /// A TCP address; `host` is a name, an IPv4 address or a bracket-less IPv6 address.
    Tcp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix domain socket path.
    Unix(PathBuf),
    /// A port inside a pod, reached through the API server's port-forward
    /// ([`crate::k8s::portforward`]); never parsed from `--agent`.
    PortForward {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port inside the pod.
        port: u16,
    },
}

impl FromStr for AgentAddr {
    type Err = AgentError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| AgentError::InvalidAddress {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("expected unix:/path/to/socket"));
            }
            return Ok(AgentAddr::Unix(PathBuf::from(path)));
        }
        let s = s.strip_prefix("http://").unwrap_or(s);
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port or unix:/path"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            inner
                .strip_suffix(']')
                .ok_or_else(|| bad("unclosed '[' in an IPv6 address"))?
        } else if host.contains(':') {
            return Err(bad("write IPv6 addresses in brackets: [fd00::1]:port"));
        } else {
            host
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        Ok(AgentAddr::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            AgentAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            AgentAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            AgentAddr::PortForward {
                namespace,
                pod,
                port,
            } => write!(f, "pod/{namespace}/{pod}:{port}"),
        }
    }
}

/// Which side of a protocol mismatch has to be upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// The agent speaks an older protocol.
    Agent,
    /// The agent speaks a newer protocol than this client.
    Client,
}

impl fmt::Display for Upgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upgrade::Agent => f.write_str("upgrade the agent"),
            Upgrade::Client => f.write_str("upgrade kubectl-orb8"),
        }
    }
}

/// Checks an agent's protocol version against this client's; the error says who must upgrade.
pub fn check_protocol(agent_protocol: u32) -> Result<(), Upgrade> {
    match agent_protocol.cmp(&PROTOCOL_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(Upgrade::Agent),
        std::cmp::Ordering::Greater => Err(Upgrade::Client),
    }
}

/// Why an agent could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `--agent` got something that is not an address.
    #[error("bad agent address '{input}': {reason}")]
    InvalidAddress {
        /// What the user typed.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// Nothing answered at the address (refused, timed out, not gRPC).
    #[error("cannot reach agent {addr}: {reason}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// What went wrong, in one line.
        reason: String,
    },
    /// The agent answered `Unauthenticated`.
    #[error("the agent at {addr} rejected the token (check --token or ORB8_TOKEN)")]
    Unauthenticated {
        /// The agent's address.
        addr: String,
    },
    /// The agent speaks another protocol version.
    #[error(
        "agent {addr} (node {node}, orb8-agent {agent_version}) speaks protocol {agent}, \
         kubectl-orb8 {} speaks protocol {client}: {upgrade}",
        env!("CARGO_PKG_VERSION")
    )]
    ProtocolMismatch {
        /// The agent's address.
        addr: String,
        /// The agent's node.
        node: String,
        /// The agent's own version.
        agent_version: String,
        /// The agent's protocol version.
        agent: u32,
        /// This client's protocol version.
        client: u32,
        /// Who must upgrade.
        upgrade: Upgrade,
    },
    /// The token contains characters gRPC metadata cannot carry.
    #[error("the token cannot be sent: it must be printable ASCII")]
    InvalidToken,
    /// Unix sockets are not available on this platform.
    #[error("cannot reach agent {addr}: unix sockets are not supported on this platform")]
    UnixUnsupported {
        /// The address tried.
        addr: String,
    },
    /// The port-forward to an agent pod failed.
    #[error(transparent)]
    PortForward(#[from] crate::k8s::portforward::PortForwardError),
    /// A call failed for another reason.
    #[error("agent {addr}: {rpc} failed: {reason}")]
    Rpc {
        /// The agent's address.
        addr: String,
        /// Which RPC.
        rpc: &'static str,
        /// The status, in one line.
        reason: String,
    },
}

impl AgentError {
    /// Classifies a failed call to the agent at `addr`.
    /// A port-forward's own failure (the node's message, a deleted pod) wins over tonic's
    /// summary of it.
    pub fn from_status(addr: &AgentAddr, rpc: &'static str, status: &Status) -> Self {
        if let Some(failure) = crate::k8s::portforward::find_port_forward_error(status) {
            return AgentError::PortForward(failure);
        }
        let addr = addr.to_string();
        match status.code() {
            Code::Unauthenticated => AgentError::Unauthenticated { addr },
            Code::Unavailable => AgentError::Unreachable {
                addr,
                reason: one_line(status.message()),
            },
            _ => AgentError::Rpc {
                addr,
                rpc,
                reason: crate::merge::status_text(status),
            },
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The innermost cause of an error: for a refused connection, "Connection refused".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Debug, Clone, Default)]
pub struct TokenInterceptor {
    value: Option<AsciiMetadataValue>,
}

impl TokenInterceptor {
    /// An interceptor sending `token`, or nothing for `None`.
    pub fn new(token: Option<&str>) -> Result<Self, AgentError> {
        let value = token
            .map(|t| {
                MetadataValue::try_from(orb8_proto::bearer(t)).map_err(|_| AgentError::InvalidToken)
            })
            .transpose()?;
        Ok(TokenInterceptor { value })
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.value {
            request.metadata_mut().insert(TOKEN_METADATA_KEY, v.clone());
        }
        Ok(request)
    }
}

/// The generated gRPC client over a channel that sends the token.
pub type AgentClient = AgentServiceClient<InterceptedService<Channel, TokenInterceptor>>;

fn endpoint(uri: String, addr: &AgentAddr, timeout: Duration) -> Result<Endpoint, AgentError> {
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| AgentError::InvalidAddress {
            input: addr.to_string(),
            reason: root_cause(&e),
        })?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Opens a channel to `addr` (TCP or unix socket), failing after `timeout`.
pub async fn connect_channel(addr: &AgentAddr, timeout: Duration) -> Result<Channel, AgentError> {
    let unreachable = |reason: String| AgentError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let connecting = async {
        match addr {
            AgentAddr::Tcp { .. } => endpoint(format!("http://{addr}"), addr, timeout)?
                .connect()
                .await
                .map_err(|e| unreachable(root_cause(&e))),
            AgentAddr::Unix(path) => connect_unix(addr, path.clone(), timeout).await,
            AgentAddr::PortForward { .. } => Err(unreachable(
                "a pod port is reached through the Kubernetes API (k8s::portforward)".to_string(),
            )),
        }
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .unwrap_or_else(|_| {
            Err(unreachable(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )))
        })
}

#[cfg(unix)]
async fn connect_unix(
    addr: &AgentAddr,
    path: PathBuf,
    timeout: Duration,
) -> Result<Channel, AgentError> {
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint("http://localhost".to_string(), addr, timeout)?
        .connect_with_connector(connector)
        .await
        .map_err(|e| AgentError::Unreachable {
            addr: addr.to_string(),
            reason: root_cause(&e),
        })
}

#[cfg(not(unix))]
async fn connect_unix(
    addr: &AgentAddr,
    _path: PathBuf,
    _timeout: Duration,
) -> Result<Channel, AgentError> {
    Err(AgentError::UnixUnsupported {
        addr: addr.to_string(),
    })
}

/// Connects to `addr` and returns the gRPC client that sends `token`.
pub async fn connect(
    addr: &AgentAddr,
    token: Option<&str>,
    timeout: Duration,
) -> Result<AgentClient, AgentError> {
    let interceptor = TokenInterceptor::new(token)?;
    let channel = connect_channel(addr, timeout).await?;
    Ok(client_over(channel, interceptor))
}

fn client_over(channel: Channel, interceptor: TokenInterceptor) -> AgentClient {
    AgentServiceClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

async fn within<T>(
    addr: &AgentAddr,
    rpc: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(AgentError::from_status(addr, rpc, &status)),
        Err(_) => Err(AgentError::Unreachable {
            addr: addr.to_string(),
            reason: format!(
                "{rpc} got no answer within {}",
                humantime::format_duration(timeout)
            ),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_addresses() {
        let tcp = |h: &str, p| AgentAddr::Tcp {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            "127.0.0.1:7000".parse::<AgentAddr>().ok(),
            Some(tcp("127.0.0.1", 7000))
        );
        assert_eq!(
            "node-1:443".parse::<AgentAddr>().ok(),
            Some(tcp("node-1", 443))
        );
        assert_eq!("[::1]:9".parse::<AgentAddr>().ok(), Some(tcp("::1", 9)));
        assert_eq!(
            "http://localhost:9".parse::<AgentAddr>().ok(),
            Some(tcp("localhost", 9))
        );
        assert_eq!(
            "unix:/run/orb8.sock".parse::<AgentAddr>().ok(),
            Some(AgentAddr::Unix("/run/orb8.sock".into()))
        );
        assert_eq!(tcp("::1", 9).to_string(), "[::1]:9");
        assert_eq!(
            AgentAddr::Unix("/run/a.sock".into()).to_string(),
            "unix:/run/a.sock"
        );
        for bad in [
            "localhost",
            "host:0",
            "host:99999",
            ":80",
            "::1:80",
            "unix:",
            "[::1:80",
        ] {
            assert!(bad.parse::<AgentAddr>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn protocol_mismatch_says_who_upgrades() {
        assert_eq!(check_protocol(PROTOCOL_VERSION), Ok(()));
        assert_eq!(check_protocol(PROTOCOL_VERSION - 1), Err(Upgrade::Agent));
        assert_eq!(check_protocol(PROTOCOL_VERSION + 1), Err(Upgrade::Client));
        let err = AgentError::ProtocolMismatch {
            addr: "127.0.0.1:1".into(),
            node: "n".into(),
            agent_version: "9.0.0".into(),
            agent: PROTOCOL_VERSION + 1,
            client: PROTOCOL_VERSION,
            upgrade: Upgrade::Client,
        };
        assert!(err.to_string().ends_with(": upgrade kubectl-orb8"), "{err}");
    }

    #[test]
    fn token_goes_into_metadata() {
        let mut i = TokenInterceptor::new(Some("abc")).expect("ascii token");
        let req = i.call(tonic::Request::new(())).expect("intercepted");
        assert_eq!(
            req.metadata()
                .get(TOKEN_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer abc")
        );
        let mut none = TokenInterceptor::new(None).expect("no token");
        let req = none.call(tonic::Request::new(())).expect("intercepted");
        assert!(req.metadata().get(TOKEN_METADATA_KEY).is_none());
        assert!(TokenInterceptor::new(Some("bad\ntoken")).is_err());
    }
}
