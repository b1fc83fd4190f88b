//! The always-on agent's HTTP listener: `GET /metrics` (Prometheus text format) and
//! `GET /healthz` (200 while the agent runs) on the pod IP, and nothing else: every
//! other path is 404, every other method 405. It carries no flow data and needs no token;
//! gRPC stays on loopback.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{CONTENT_TYPE as METRICS_TYPE, Metrics};

/// Paths served.
pub const METRICS_PATH: &str = "/metrics";
/// The health endpoint (liveness and readiness probes).
pub const HEALTH_PATH: &str = "/healthz";

/// Whether answering `method` on `path` needs this scrape's GPU reading.
pub fn wants_gpus(method: &Method, path: &str) -> bool {
    path == METRICS_PATH && (method == Method::GET || method == Method::HEAD)
}

/// The answer to one request, as plain data: status, content type, body. `gpu` is the
/// scrape's GPU reading ([`Metrics::read_gpus`]), read only when [`wants_gpus`].
pub fn respond(
    metrics: &Metrics,
    method: &Method,
    path: &str,
    gpu: Option<orb8_proto::GetGpusResponse>,
) -> (StatusCode, &'static str, String) {
    let text = "text/plain; charset=utf-8";
    match path {
        METRICS_PATH | HEALTH_PATH if method != Method::GET && method != Method::HEAD => {
            (StatusCode::METHOD_NOT_ALLOWED, text, "only GET\n".into())
        }
        METRICS_PATH => (StatusCode::OK, METRICS_TYPE, metrics.render(gpu)),
        HEALTH_PATH => (StatusCode::OK, text, metrics.health()),
        _ => (StatusCode::NOT_FOUND, text, "not found\n".into()),
    }
}

/// Binds `addr` (the pod IP in a DaemonSet, or loopback); fails when it cannot.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `metrics` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("metrics listener: accepting: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    let gpu = match wants_gpus(&method, &path) {
                        true => metrics.read_gpus().await,
                        false => None,
                    };
                    // Reading the flow table is blocking work (one syscall per flow).
                    let (status, kind, body) =
                        tokio::task::spawn_blocking(move || respond(&metrics, &method, &path, gpu))
                            .await
                            .unwrap_or_else(|e| {
                                (
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "text/plain; charset=utf-8",
                                    format!("{e}\n"),
                                )
                            });
                    let resp = Response::builder()
                        .status(status)
                        .header(CONTENT_TYPE, kind)
                        .body(Full::new(Bytes::from(body)))
                        .expect("static header values are valid");
                    Ok::<_, Infallible>(resp)
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                log::debug!("metrics connection from {peer}: {e}");
            }
        });
    }
}
