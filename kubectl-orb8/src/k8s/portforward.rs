//! gRPC to an agent pod through the API server's pod port-forward, opened in this process:
//! every connection tonic makes is a fresh port-forward stream (kube's [`Portforwarder`]), so
//! no local port is bound and no `kubectl port-forward` runs.
//!
//! The agent pod runs with `hostNetwork` and binds 127.0.0.1 only; the port-forward reaches it
//! there with the user's `pods/portforward` permission.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Portforwarder};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, DuplexStream, ReadBuf};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::transport::{Agent, AgentAddr, AgentError};

/// The pod port a port-forward reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodPort {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The port inside the pod.
    pub port: u16,
}

impl PodPort {
    /// The pod port `port` of `namespace/pod`.
    pub fn new(namespace: impl Into<String>, pod: impl Into<String>, port: u16) -> PodPort {
        PodPort {
            namespace: namespace.into(),
            pod: pod.into(),
            port,
        }
    }

    /// The address an agent reached here is known by.
    pub fn agent_addr(&self) -> AgentAddr {
        AgentAddr::PortForward {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            port: self.port,
        }
    }
}

impl fmt::Display for PodPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} port {}", self.namespace, self.pod, self.port)
    }
}

/// An error from kube's port-forward task; kube does not export its type.
pub type ForwarderError = Arc<dyn StdError + Send + Sync>;

/// Why a port-forward to an agent pod failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortForwardError {
    /// The API server has no such pod (never created, already deleted or evicted).
    #[error("cannot port-forward to pod {namespace}/{pod}: the pod does not exist")]
    PodNotFound {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
    },
    /// The API server refused the user: port-forwarding needs `create` on `pods/portforward`.
    #[error(
        "cannot port-forward to pod {namespace}/{pod}: forbidden (needs create on pods/portforward): {message}"
    )]
    Forbidden {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// The API server's message.
        message: String,
    },
    /// The port-forward request failed otherwise (API server unreachable, pod not running,
    /// no websocket upgrade).
    #[error("cannot port-forward to pod {namespace}/{pod} port {port}: {}", kube_reason(.source))]
    Open {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// kube's error.
        #[source]
        source: Arc<kube::Error>,
    },
    /// The port-forward opened, but the API server returned no stream for the port.
    #[error("port-forward to pod {namespace}/{pod} returned no stream for port {port}")]
    NoStream {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
    },
    /// The node reported an error on the port's error channel: usually nothing listens on
    /// the port inside the pod (the agent is not up, or has exited).
    #[error("port-forward to pod {namespace}/{pod} port {port} failed: {message}")]
    Remote {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// What the node said.
        message: String,
    },
    /// The port-forward closed before the agent said anything.
    #[error("port-forward to pod {namespace}/{pod} port {port} closed before the agent answered")]
    Closed {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
    },
    /// The port-forward connection to the API server broke.
    #[error("port-forward to pod {namespace}/{pod} port {port} broke: {source}")]
    Broken {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// kube's forwarding error.
        #[source]
        source: ForwarderError,
    },
    /// The port-forward opened, but gRPC could not start over it.
    #[error("cannot reach the agent in pod {namespace}/{pod} port {port}: {reason}")]
    Connect {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// What went wrong, in one line.
        reason: String,
    },
}

/// A kube error in one line: an API `Status` by its message, anything else by its causes.
fn kube_reason(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => {
            format!("{} ({})", status.message, status.code)
        }
        other => chain_line(other),
    }
}

fn chain_line(err: &(dyn StdError + 'static)) -> String {
    let mut line = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cur = e.source();
    }
    line.replace(['\n', '\r'], " ")
}

impl PortForwardError {
    fn open(target: &PodPort, err: kube::Error) -> PortForwardError {
        let PodPort {
            namespace,
            pod,
            port,
        } = target.clone();
        match &err {
            kube::Error::Api(status) if status.code == 404 => PortForwardError::PodNotFound {
                namespace,
                pod,
                port,
            },
            kube::Error::Api(status) if status.code == 403 => PortForwardError::Forbidden {
                namespace,
                pod,
                port,
                message: status.message.replace(['\n', '\r'], " "),
            },
            _ => PortForwardError::Open {
                namespace,
                pod,
                port,
                source: Arc::new(err),
            },
        }
    }
}

/// One port-forward stream to a pod port, as a byte stream; it keeps kube's forwarder task
/// with it and reports the forward's own error (the node's message, a broken websocket)
/// instead of a bare end of stream.
pub struct PortForwardStream {
    stream: DuplexStream,
    /// The agent's first bytes, read by [`PortForwardStream::open`], not yet handed on.
    pending: Vec<u8>,
    consumed: usize,
    target: PodPort,
    remote_error: Option<BoxFuture<'static, Option<String>>>,
    forwarder: Option<BoxFuture<'static, Result<(), ForwarderError>>>,
}

impl fmt::Debug for PortForwardStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortForwardStream")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PortForwardStream {
    /// Opens a port-forward to `target` through the API server `client` talks to, and waits
    /// for the first bytes from the pod port: an HTTP/2 server (the agent) speaks first, with
    /// its SETTINGS frame. So a port nobody listens on fails here, with the node's message,
    /// rather than later as a bare transport error. Callers bound the wait.
    pub async fn open(client: kube::Client, target: PodPort) -> Result<Self, PortForwardError> {
        let pods: Api<Pod> = Api::namespaced(client, &target.namespace);
        let mut forwarder = pods
            .portforward(&target.pod, &[target.port])
            .await
            .map_err(|e| PortForwardError::open(&target, e))?;
        let mut stream = Self::from_forwarder(&mut forwarder, target.clone())?;
        stream.forwarder = Some(
            forwarder
                .join()
                .map(|r| r.map_err(|e| Arc::new(e) as ForwarderError))
                .boxed(),
        );
        let mut first = vec![0u8; 16 * 1024];
        match stream.stream.read(&mut first).await {
            Ok(n) if n > 0 => {
                first.truncate(n);
                stream.pending = first;
                Ok(stream)
            }
            _ => Err(stream.closed().await),
        }
    }

    /// Why a stream closed before any byte came: waits for kube's task to report it.
    async fn closed(self) -> PortForwardError {
        let PortForwardStream {
            stream,
            target,
            remote_error,
            forwarder,
            ..
        } = self;
        // Closing our end lets kube's task finish, which settles both futures.
        drop(stream);
        let PodPort {
            namespace,
            pod,
            port,
        } = target;
        if let Some(remote_error) = remote_error
            && let Some(message) = remote_error.await
        {
            return PortForwardError::Remote {
                namespace,
                pod,
                port,
                message: message.replace(['\n', '\r'], " ").trim().to_string(),
            };
        }
        if let Some(forwarder) = forwarder
            && let Err(source) = forwarder.await
        {
            return PortForwardError::Broken {
                namespace,
                pod,
                port,
                source,
            };
        }
        PortForwardError::Closed {
            namespace,
            pod,
            port,
        }
    }

    fn from_forwarder(
        forwarder: &mut Portforwarder,
        target: PodPort,
    ) -> Result<Self, PortForwardError> {
        let no_stream = || PortForwardError::NoStream {
            namespace: target.namespace.clone(),
            pod: target.pod.clone(),
            port: target.port,
        };
        let stream = forwarder.take_stream(target.port).ok_or_else(no_stream)?;
        let remote_error = forwarder.take_error(target.port).map(FutureExt::boxed);
        Ok(PortForwardStream {
            stream,
            pending: Vec::new(),
            consumed: 0,
            target,
            remote_error,
            forwarder: None,
        })
    }

    /// The pod port this stream reaches.
    pub fn target(&self) -> &PodPort {
        &self.target
    }

    /// The forward's own failure, if it has already been reported; never waits.
    fn failure(&mut self, cx: &mut Context<'_>) -> Option<PortForwardError> {
        let PodPort {
            namespace,
            pod,
            port,
        } = self.target.clone();
        if let Some(fut) = self.remote_error.as_mut()
            && let Poll::Ready(message) = fut.poll_unpin(cx)
        {
            self.remote_error = None;
            if let Some(message) = message {
                return Some(PortForwardError::Remote {
                    namespace,
                    pod,
                    port,
                    message: message.replace(['\n', '\r'], " ").trim().to_string(),
                });
            }
        }
        if let Some(fut) = self.forwarder.as_mut()
            && let Poll::Ready(result) = fut.poll_unpin(cx)
        {
            self.forwarder = None;
            if let Err(source) = result {
                return Some(PortForwardError::Broken {
                    namespace,
                    pod,
                    port,
                    source,
                });
            }
        }
        None
    }

    fn explain(&mut self, cx: &mut Context<'_>, err: io::Error) -> io::Error {
        match self.failure(cx) {
            Some(failure) => io::Error::other(failure),
            None => err,
        }
    }
}

impl AsyncRead for PortForwardStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.consumed < self.pending.len() {
            let n = buf.remaining().min(self.pending.len() - self.consumed);
            let start = self.consumed;
            buf.put_slice(&self.pending[start..start + n]);
            self.consumed += n;
            if self.consumed == self.pending.len() {
                self.pending = Vec::new();
                self.consumed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let wants_bytes = buf.remaining() > 0;
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if wants_bytes && buf.filled().len() == before => {
                // End of stream: say why, if the forward knows.
                match self.failure(cx) {
                    Some(failure) => Poll::Ready(Err(io::Error::other(failure))),
                    None => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(cx, e))),
            other => other,
        }
    }
}

impl AsyncWrite for PortForwardStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(cx, e))),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(cx, e))),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The first [`PortForwardError`] in an error's chain of causes.
pub fn find_port_forward_error(err: &(dyn StdError + 'static)) -> Option<PortForwardError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<PortForwardError>() {
            return Some(found.clone());
        }
        // io::Error hides its payload from `source()`: look inside.
        if let Some(found) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<PortForwardError>())
        {
            return Some(found.clone());
        }
        cur = e.source();
    }
    None
}

/// A tonic channel to `target` whose connector opens a fresh port-forward through the API
/// server for every connection (the first now, then each reconnect). `timeout` bounds opening
/// the first one.
pub async fn channel(
    client: kube::Client,
    target: PodPort,
    timeout: Duration,
) -> Result<Channel, PortForwardError> {
    let connect_target = target.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let client = client.clone();
        let target = connect_target.clone();
        async move {
            PortForwardStream::open(client, target)
                .await
                .map(TokioIo::new)
        }
    });
    let unreachable = |reason: String| PortForwardError::Connect {
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        port: target.port,
        reason,
    };
    let endpoint = Endpoint::from_static("http://agent")
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let connecting = endpoint.connect_with_connector(connector);
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

/// Reaches the agent at `target` through a port-forward and checks it like any other agent:
/// the token is sent with every call, and GetStatus must answer with this client's protocol.
pub async fn connect_agent(
    client: kube::Client,
    target: PodPort,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Agent, AgentError> {
    let channel = channel(client, target.clone(), timeout).await?;
    Agent::from_channel(target.agent_addr(), channel, token, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ports_name_their_agent() {
        let target = PodPort::new("orb8-system", "orb8-agent-x", 7000);
        assert_eq!(target.to_string(), "orb8-system/orb8-agent-x port 7000");
        assert_eq!(
            target.agent_addr().to_string(),
            "pod/orb8-system/orb8-agent-x:7000"
        );
    }

    #[test]
    fn api_errors_are_classified() {
        let target = PodPort::new("ns", "p", 1);
        let api = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "")
                    .with_code(code)
                    .boxed(),
            )
        };
        let err = PortForwardError::open(&target, api(404, "pods \"p\" not found"));
        assert!(
            matches!(err, PortForwardError::PodNotFound { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "cannot port-forward to pod ns/p: the pod does not exist"
        );
        let err = PortForwardError::open(&target, api(403, "forbidden\nby RBAC"));
        assert_eq!(
            err.to_string(),
            "cannot port-forward to pod ns/p: forbidden (needs create on pods/portforward): forbidden by RBAC"
        );
        let err = PortForwardError::open(&target, api(400, "pod p is not running"));
        assert_eq!(
            err.to_string(),
            "cannot port-forward to pod ns/p port 1: pod p is not running (400)"
        );
    }

    #[test]
    fn failures_are_found_inside_io_errors() {
        let failure = PortForwardError::Closed {
            namespace: "ns".into(),
            pod: "p".into(),
            port: 1,
        };
        let io = io::Error::other(failure);
        let found = find_port_forward_error(&io).expect("found through io::Error");
        assert!(matches!(found, PortForwardError::Closed { port: 1, .. }));
        assert!(find_port_forward_error(&io::Error::other("plain")).is_none());
    }
}
