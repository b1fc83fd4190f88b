//! Channels to agents: tonic over TCP, a unix socket, or byte streams a [`PodConnector`] opens
//! to a pod port (the API server's port-forward, implemented in `k8s::portforward`: transport
//! defines the connector and runs gRPC over it, and never needs Kubernetes). Every channel gets
//! the same timeouts and keep-alives, and every call the session token.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use orb8_proto::TOKEN_METADATA_KEY;
use orb8_proto::agent_service_client::AgentServiceClient;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use super::addr::{AgentAddr, PodPort};
use super::error::{AgentError, PortForwardError, chain_line, find_port_forward_error, root_cause};
use crate::defaults::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_MESSAGE_BYTES};

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

/// Every connection to an agent is configured here, whatever carries it: the connect timeout
/// and the keep-alives of [`crate::defaults`].
fn configured(endpoint: Endpoint, timeout: Duration) -> Endpoint {
    endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

fn endpoint(uri: String, addr: &AgentAddr, timeout: Duration) -> Result<Endpoint, AgentError> {
    let endpoint = Endpoint::from_shared(uri).map_err(|e| AgentError::InvalidAddress {
        input: addr.to_string(),
        reason: root_cause(&e),
    })?;
    Ok(configured(endpoint, timeout))
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
                "a pod port is reached through a pod connector (pod_channel)".to_string(),
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

/// The gRPC client over `channel`, sending what `interceptor` adds.
pub fn client_over(channel: Channel, interceptor: TokenInterceptor) -> AgentClient {
    AgentServiceClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// Opens byte streams to a pod port, one per connection tonic makes (the first, then each
/// reconnect). Failures are reported as [`PortForwardError`]s naming the pod.
pub trait PodConnector: Clone + Send + Sync + 'static {
    /// A connection to the pod port.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Opens a fresh stream to `target`. Implementations that can tell a port nobody listens on
    /// from one that answers should do so here, so the failure names the cause.
    fn open(&self, target: &PodPort) -> BoxFuture<'static, Result<Self::Stream, PortForwardError>>;
}

/// A tonic channel to `target` whose connections `connector` opens. `timeout` bounds opening
/// the first one.
pub async fn pod_channel<C: PodConnector>(
    connector: C,
    target: PodPort,
    timeout: Duration,
) -> Result<Channel, PortForwardError> {
    let connect_target = target.clone();
    let service = tower::service_fn(move |_: Uri| {
        let opening = connector.open(&connect_target);
        async move { opening.await.map(TokioIo::new) }
    });
    let unreachable = |reason: String| PortForwardError::Connect {
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        port: target.port,
        reason,
    };
    let endpoint = configured(Endpoint::from_static("http://agent"), timeout);
    let connecting = endpoint.connect_with_connector(service);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => {
            Err(find_port_forward_error(&e).unwrap_or_else(|| unreachable(chain_line(&e))))
        }
        Err(_) => Err(unreachable(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
