//! gRPC to an agent pod through the API server's pod port-forward, opened in this process:
//! every connection tonic makes is a fresh port-forward stream (kube's [`Portforwarder`]), so
//! no local port is bound and no `kubectl port-forward` runs.
//!
//! The agent pod runs with `hostNetwork` and binds 127.0.0.1 only; the port-forward reaches it
//! there with the user's `pods/portforward` permission.
//!
//! This is transport's [`PodConnector`] for Kubernetes: transport runs gRPC over the streams and
//! owns the failure vocabulary ([`PortForwardError`]); this module opens the forwards with kube
//! and says in those terms what went wrong.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Portforwarder};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, DuplexStream, ReadBuf};
use tonic::transport::Channel;

use crate::transport::{
    Agent, AgentError, ForwarderError, PodConnector, PodPort, PortForwardError, chain_line,
    pod_channel,
};

/// A kube error in one line: an API `Status` by its message, anything else by its causes.
fn kube_reason(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => {
            format!("{} ({})", status.message, status.code)
        }
        other => chain_line(other),
    }
}

/// Classifies a failed port-forward request: no such pod, forbidden, or otherwise.
fn open_error(target: &PodPort, err: kube::Error) -> PortForwardError {
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
            reason: kube_reason(&err),
            source: Arc::new(err),
        },
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
            .map_err(|e| open_error(&target, e))?;
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

/// The API server's port-forward as a [`PodConnector`]: each stream is a fresh port-forward
/// through the API server `client` talks to.
#[derive(Clone)]
pub struct KubePortForward(pub kube::Client);

impl fmt::Debug for KubePortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KubePortForward")
    }
}

impl PodConnector for KubePortForward {
    type Stream = PortForwardStream;

    fn open(&self, target: &PodPort) -> BoxFuture<'static, Result<Self::Stream, PortForwardError>> {
        PortForwardStream::open(self.0.clone(), target.clone()).boxed()
    }
}

/// A tonic channel to `target` whose every connection (the first now, then each reconnect) is
/// a fresh port-forward through the API server. `timeout` bounds opening the first one.
pub async fn channel(
    client: kube::Client,
    target: PodPort,
    timeout: Duration,
) -> Result<Channel, PortForwardError> {
    pod_channel(KubePortForward(client), target, timeout).await
}

/// Reaches the agent at `target` through a port-forward and checks it like any other agent:
/// the token is sent with every call, and GetStatus must answer with this client's protocol.
pub async fn connect_agent(
    client: kube::Client,
    target: PodPort,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Agent, AgentError> {
    Agent::connect_pod(KubePortForward(client), target, token, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = open_error(&target, api(404, "pods \"p\" not found"));
        assert!(
            matches!(err, PortForwardError::PodNotFound { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "cannot port-forward to pod ns/p: the pod does not exist"
        );
        let err = open_error(&target, api(403, "forbidden\nby RBAC"));
        assert_eq!(
            err.to_string(),
            "cannot port-forward to pod ns/p: forbidden (needs create on pods/portforward): forbidden by RBAC"
        );
        let err = open_error(&target, api(400, "pod p is not running"));
        assert_eq!(
            err.to_string(),
            "cannot port-forward to pod ns/p port 1: pod p is not running (400)"
        );
    }
}
