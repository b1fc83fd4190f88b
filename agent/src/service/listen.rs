//! Where and how long the agent serves: the loopback or unix-socket listener, connection
//! counting, the idle watchdog (no client for the idle timeout: exit) and graceful shutdown.

use std::{
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use orb8_proto::agent_service_server::{AgentService, AgentServiceServer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::StreamExt as _;
use tonic::transport::server::Connected;

use super::auth::TokenCheck;
use crate::defaults;

/// Connection bookkeeping shared by the listener and the idle watchdog.
#[derive(Debug)]
pub struct Activity {
    connections: AtomicUsize,
    last_change: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            connections: AtomicUsize::new(0),
            last_change: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How long no client has been connected; zero while one is.
    pub fn idle_for(&self) -> Duration {
        if self.connections() > 0 {
            return Duration::ZERO;
        }
        self.last_change.lock().expect("activity lock").elapsed()
    }

    fn open(&self) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        *self.last_change.lock().expect("activity lock") = Instant::now();
    }

    fn close(&self) {
        self.connections.fetch_sub(1, Ordering::SeqCst);
        *self.last_change.lock().expect("activity lock") = Instant::now();
    }
}

/// A client connection that counts itself in [`Activity`] while open.
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    /// Wraps an accepted connection.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        activity.open();
        Tracked { inner, activity }
    }
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        self.activity.close();
    }
}

impl<T: Connected> Connected for Tracked<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A loopback TCP address (port 0 picks a free port).
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        let a: SocketAddr = s
            .parse()
            .map_err(|_| format!("invalid listen address {s:?}"))?;
        if !a.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {a}: the agent only binds loopback (127.0.0.1 or ::1) or a unix socket"
            ));
        }
        Ok(Listen::Tcp(a))
    }
}

/// A bound listener.
pub enum Listener {
    /// TCP on loopback.
    Tcp(tokio::net::TcpListener),
    /// A unix socket and its path (removed when serving ends).
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds the address; a stale unix socket file is replaced.
    pub async fn bind(listen: &Listen) -> std::io::Result<Listener> {
        match listen {
            Listen::Tcp(a) => Ok(Listener::Tcp(tokio::net::TcpListener::bind(a).await?)),
            Listen::Unix(p) => {
                let _ = std::fs::remove_file(p);
                Ok(Listener::Unix(
                    tokio::net::UnixListener::bind(p)?,
                    p.clone(),
                ))
            }
        }
    }

    /// The address clients connect to: `127.0.0.1:PORT` or `unix:/path`.
    pub fn address(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// Why [`serve`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown future completed (signal).
    Shutdown,
    /// No client was connected for the idle timeout.
    Idle,
}

/// An accepted connection with Nagle's algorithm off: a small answer (GetStatus, a stream's
/// first event) would otherwise wait for the client's delayed ACK (40 ms each on loopback,
/// measured: half of the first line of a local `trace network`). Failing to set it only costs
/// that latency.
fn without_nagle(s: tokio::net::TcpStream) -> tokio::net::TcpStream {
    let _ = s.set_nodelay(true);
    s
}

/// Serves `service`, behind the per-session `token`, on an already bound listener until
/// `shutdown` completes or no client has been connected for `idle` (zero: never idle out). Connections are counted so
/// the idle clock only runs while none is open.
pub async fn serve<T, S>(
    service: T,
    token: &str,
    listener: Listener,
    idle: Duration,
    shutdown: S,
) -> Result<Stopped, tonic::transport::Error>
where
    T: AgentService,
    S: std::future::Future<Output = ()> + Send,
{
    let activity = Arc::new(Activity::default());
    let svc = AgentServiceServer::with_interceptor(service, TokenCheck::new(token));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Stopped>();
    let watchdog_activity = activity.clone();
    let watchdog = async move {
        if idle.is_zero() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(defaults::IDLE_CHECK.min(idle));
        loop {
            tick.tick().await;
            if watchdog_activity.idle_for() >= idle {
                return Stopped::Idle;
            }
        }
    };
    let signal = async move {
        let why = tokio::select! {
            _ = shutdown => Stopped::Shutdown,
            why = watchdog => why,
        };
        let _ = stop_tx.send(why);
    };
    let router = tonic::transport::Server::builder().add_service(svc);
    match listener {
        Listener::Tcp(l) => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l)
                .map(move |c| c.map(|s| Tracked::new(without_nagle(s), activity.clone())));
            router
                .serve_with_incoming_shutdown(incoming, signal)
                .await?;
        }
        Listener::Unix(l, path) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l)
                .map(move |c| c.map(|s| Tracked::new(s, activity.clone())));
            let result = router.serve_with_incoming_shutdown(incoming, signal).await;
            let _ = std::fs::remove_file(&path);
            result?;
        }
    }
    Ok(stop_rx.await.unwrap_or(Stopped::Shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_answers_at_once() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let (s, _) = accepted.unwrap();
        assert!(
            !s.nodelay().unwrap(),
            "accepted sockets start with Nagle on"
        );
        assert!(without_nagle(s).nodelay().unwrap());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "127.0.0.1:0".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            defaults::LISTEN.parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            "[::1]:7".parse::<Listen>().unwrap(),
            Listen::Tcp("[::1]:7".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/orb8.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/orb8.sock".into())
        );
        assert!(
            "0.0.0.0:9000"
                .parse::<Listen>()
                .unwrap_err()
                .contains("only binds loopback")
        );
        assert!("nope".parse::<Listen>().is_err());
    }

    #[test]
    fn idle_clock_runs_only_without_connections() {
        let a = Arc::new(Activity::default());
        let t = Tracked::new((), a.clone());
        assert_eq!(a.connections(), 1);
        assert_eq!(a.idle_for(), Duration::ZERO);
        drop(t);
        assert_eq!(a.connections(), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(a.idle_for() >= Duration::from_millis(5));
    }
}
