//! A loopback stand-in for the Kubernetes API server's pod port-forward, so that kube's real
//! `Client` and `Portforwarder` carry real gRPC in tests.
//!
//! It speaks what kube 5 expects: `GET /api/v1/namespaces/{ns}/pods/{name}/portforward?ports=P`
//! upgraded to a websocket with subprotocol `v4.channel.k8s.io`; per requested port `i`, data
//! on channel `2i` and errors on channel `2i+1`, each channel's first message carrying the port
//! (2 bytes, little-endian), every message prefixed with its channel byte. Like the kubelet, it
//! dials the port in the pod's network (here: the pod's loopback IP), reports a failed dial on
//! the error channel, and closes the websocket when the pod side closes. Missing pods get a
//! 404 `Status` as a real API server sends.
//!
//! [`port_forward`] and [`status`] are public so that a fuller fake (`fake_cluster`,
//! Linux only) can serve port-forwards with its own [`Dial`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The websocket subprotocol the kubelet's port-forward speaks.
pub const PORT_FORWARD_PROTOCOL: &str = "v4.channel.k8s.io";

/// How a port-forward reaches a port of its pod, as the kubelet dials inside the pod's network:
/// the connection, or why not in the kubelet's words (`dial tcp4 ...: connect: ...`).
pub type Dial = Arc<dyn Fn(u16) -> BoxFuture<'static, Result<TcpStream, String>> + Send + Sync>;

/// Dials the ports of `ip` from this process's network.
pub fn dial_ip(ip: IpAddr) -> Dial {
    Arc::new(move |port| {
        async move {
            TcpStream::connect((ip, port))
                .await
                .map_err(|e| format!("dial tcp4 {ip}:{port}: connect: {e}"))
        }
        .boxed()
    })
}

#[derive(Debug, Default)]
struct State {
    /// (namespace, name) → the IP whose ports are the pod's ports.
    pods: Mutex<HashMap<(String, String), IpAddr>>,
    /// `METHOD path?query` of every request, in order.
    requests: Mutex<Vec<String>>,
    /// How many port-forward websockets are open now.
    open_forwards: Arc<Mutex<usize>>,
}

/// A fake API server on 127.0.0.1; dropping it stops accepting (open forwards run on).
#[derive(Debug)]
pub struct FakeApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeApiServer {
    /// Starts serving on a free loopback port, on the current tokio runtime.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeApiServer {
            addr,
            state,
            accept,
        }
    }

    /// Adds a running pod whose network is 127.0.0.1: forwarding its port P dials 127.0.0.1:P
    /// (a hostNetwork agent pod on this "node").
    pub fn add_pod(&self, namespace: &str, name: &str) {
        self.add_pod_at(namespace, name, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    /// Adds a running pod whose ports are those of `ip`.
    pub fn add_pod_at(&self, namespace: &str, name: &str, ip: IpAddr) {
        self.state
            .pods
            .lock()
            .expect("pods lock")
            .insert((namespace.to_string(), name.to_string()), ip);
    }

    /// Deletes a pod: later port-forwards to it get 404.
    pub fn remove_pod(&self, namespace: &str, name: &str) {
        self.state
            .pods
            .lock()
            .expect("pods lock")
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// `METHOD path?query` of every request seen so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// How many port-forward websockets are open now.
    pub fn open_forwards(&self) -> usize {
        *self.state.open_forwards.lock().expect("forwards lock")
    }

    /// A kube client talking plain HTTP to this server.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr)
            .parse()
            .expect("API server URL");
        kube::Client::try_from(kube::Config::new(url)).expect("kube client")
    }

    /// The path kube requests to forward `port` of `namespace/pod`.
    pub fn port_forward_request(namespace: &str, pod: &str, port: u16) -> String {
        format!("GET /api/v1/namespaces/{namespace}/pods/{pod}/portforward?&ports={port}")
    }
}

/// A `Status` response as the API server sends for failures.
pub fn status(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: serde_json::Value,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code.as_u16(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    status(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        message,
        serde_json::Value::Null,
    )
}

/// `ports=80,1234` (possibly `%2C`-encoded, possibly after a leading `&`) from a query.
fn requested_ports(query: &str) -> Option<Vec<u16>> {
    let value = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ports="))?
        .replace("%2C", ",")
        .replace("%2c", ",");
    value
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p != 0))
        .collect()
}

fn handle(state: Arc<State>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let line = if query.is_empty() {
        format!("{} {path}", req.method())
    } else {
        format!("{} {path}?{query}", req.method())
    };
    state.requests.lock().expect("requests lock").push(line);

    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (namespace, pod) = match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, "portforward"] => {
            (ns.to_string(), name.to_string())
        }
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
                serde_json::json!({}),
            );
        }
    };
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            serde_json::json!({}),
        );
    }
    let ip = state
        .pods
        .lock()
        .expect("pods lock")
        .get(&(namespace.clone(), pod.clone()))
        .copied();
    let Some(ip) = ip else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{pod}\" not found"),
            serde_json::json!({"name": pod, "kind": "pods"}),
        );
    };
    port_forward(
        &mut req,
        pod,
        &query,
        dial_ip(ip),
        state.open_forwards.clone(),
    )
}

/// Answers the port-forward request `req` (query `query`) for an existing `pod`: checks the
/// ports and the websocket upgrade like the API server, then carries the websocket on a task,
/// dialing each port with `dial`. `open_forwards` counts the websockets open.
pub fn port_forward(
    req: &mut Request<Incoming>,
    pod: String,
    query: &str,
    dial: Dial,
    open_forwards: Arc<Mutex<usize>>,
) -> Response<Full<Bytes>> {
    let Some(ports) = requested_ports(query) else {
        return bad_request("query parameter \"ports\" is required and must be a list of ports");
    };
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let is_websocket = header(header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let Some(key) = header(header::SEC_WEBSOCKET_KEY).filter(|_| is_websocket) else {
        return bad_request("Upgrade request required");
    };
    let offers_v4 = header(header::SEC_WEBSOCKET_PROTOCOL)
        .is_some_and(|p| p.split(',').any(|p| p.trim() == PORT_FORWARD_PROTOCOL));
    if !offers_v4 {
        return bad_request("unable to upgrade: no supported websocket subprotocol was offered");
    }

    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        *open_forwards.lock().expect("forwards lock") += 1;
        forward(ws, &pod, &dial, &ports).await;
        *open_forwards.lock().expect("forwards lock") -= 1;
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("accept key"),
    );
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(PORT_FORWARD_PROTOCOL),
    );
    resp
}

enum FromPod {
    Data(usize, Vec<u8>),
    Closed(usize),
}

fn framed(channel: usize, payload: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(payload.len() + 1);
    frame.push(u8::try_from(channel).expect("channel fits a byte"));
    frame.extend_from_slice(payload);
    Message::binary(frame)
}

/// Carries one port-forward websocket until the client or every pod port closes it.
async fn forward<S>(ws: WebSocketStream<S>, pod: &str, dial: &Dial, ports: &[u16])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut incoming) = ws.split();
    for (i, port) in ports.iter().enumerate() {
        for channel in [2 * i, 2 * i + 1] {
            if sink
                .send(framed(channel, &port.to_le_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    let (to_client, mut from_pods) = mpsc::channel::<FromPod>(16);
    let mut writers: Vec<Option<OwnedWriteHalf>> = Vec::with_capacity(ports.len());
    let mut open = 0;
    for (i, port) in ports.iter().enumerate() {
        match dial(*port).await {
            Ok(conn) => {
                let (mut reader, writer) = conn.into_split();
                writers.push(Some(writer));
                open += 1;
                let to_client = to_client.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if to_client
                                    .send(FromPod::Data(i, buf[..n].to_vec()))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = to_client.send(FromPod::Closed(i)).await;
                });
            }
            Err(e) => {
                writers.push(None);
                let message = format!("error forwarding port {port} to pod {pod}: {e}");
                if sink
                    .send(framed(2 * i + 1, message.as_bytes()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    drop(to_client);

    while open > 0 {
        tokio::select! {
            msg = incoming.next() => match msg {
                Some(Ok(Message::Binary(frame))) if frame.len() > 1 => {
                    let channel = usize::from(frame[0]);
                    if channel % 2 == 0
                        && let Some(slot) = writers.get_mut(channel / 2)
                        && let Some(w) = slot.as_mut()
                        && w.write_all(&frame[1..]).await.is_err()
                    {
                        *slot = None;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            out = from_pods.recv() => match out {
                Some(FromPod::Data(i, bytes)) => {
                    if sink.send(framed(2 * i, &bytes)).await.is_err() {
                        break;
                    }
                }
                Some(FromPod::Closed(i)) => {
                    if let Some(mut w) = writers.get_mut(i).and_then(Option::take) {
                        let _ = w.shutdown().await;
                    }
                    open -= 1;
                }
                None => break,
            },
        }
    }
    // Like the kubelet: when the pod side is done (or the client left), the websocket closes.
    // Then waits (briefly) for the client's close reply, as a websocket server does.
    let _ = sink.send(Message::Close(None)).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while let Some(Ok(msg)) = incoming.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
    let _ = sink.close().await;
}
