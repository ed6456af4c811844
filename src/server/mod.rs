//! The HTTP server under the router (in place of `axum::serve`): accepts connections up to
//! `server.max_connections` (the rest get a 503 and are closed at once), and gives every
//! connection a header timeout and a keep-alive idle timeout (`io`) and every request body
//! an idle and a total timeout (`body`), so that slow or silent clients cannot hold the
//! gateway's sockets or delay anyone else. Errors hyper answers itself are OpenAI-shaped.

mod api_error;
mod body;
mod in_place;
mod io;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tower_service::Service;

pub use api_error::ApiError;
pub use body::BodyTimeout;
#[cfg(test)]
pub(crate) use in_place::Counted;

use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// The address a request's connection came from (console and admin requests only).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// What every connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header: Duration,
    pub keep_alive: Duration,
    pub body_idle: Duration,
    pub body_total: Duration,
}

impl ConnectionLimits {
    /// From the settings, with `max_connections` lowered to what the open-file limit allows.
    pub fn from_config(server: &ServerConfig) -> ConnectionLimits {
        let open_files = raise_open_file_limit();
        // Each client connection may hold a backend connection; keep some for the ledger,
        // the database and the listener.
        let allowed = usize::try_from(open_files.saturating_sub(64) / 2).unwrap_or(usize::MAX);
        let max_connections = server.max_connections.min(allowed.max(1));
        if max_connections < server.max_connections {
            tracing::warn!(
                configured = server.max_connections,
                open_files,
                max_connections,
                "server.max_connections lowered to what the open-file limit allows"
            );
        }
        ConnectionLimits {
            max_connections,
            header: server.header_timeout(),
            keep_alive: server.keep_alive_timeout(),
            body_idle: server.body_idle_timeout(),
            body_total: server.body_timeout(),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the connections
/// finish what they are doing (in-flight requests, streams) and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Closed (dropped) at shutdown: every connection then finishes gracefully.
    let (stop, stopping) = watch::channel(());
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or the peer left before accept: wait a moment.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused_connections.inc();
            io::refuse(tcp);
            continue;
        };
        let connection = Connection {
            peer,
            router: router.clone(),
            limits,
            metrics: metrics.clone(),
        };
        let stopping = stopping.clone();
        connections.spawn(in_place::InPlace::new(async move {
            connection.run(tcp, stopping).await;
            drop(permit);
        }));
    }
    drop(listener);
    drop(stop);
    connections.close();
    connections.wait().await;
}

struct Connection {
    peer: std::net::SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn run(self, tcp: TcpStream, mut stopping: watch::Receiver<()>) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        self.metrics.client_connections.inc();
        let requests = Arc::new(Requests::default());
        let io = TokioIo::new(io::Watched::new(tcp, requests.clone(), &self.limits));
        let (router, limits, peer) = (self.router, self.limits, self.peer);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            // Counted from the moment hyper has the head until the response body is done:
            // while a request is in flight the connection is not idle.
            let in_flight = InFlight::start(&requests);
            let mut request = request.map(|b| Body::new(body::Timed::new(b, &limits)));
            // Who is asking matters to the console and the admin API (sign-in throttling,
            // the audit log), not to the gateway's own routes.
            let path = request.uri().path();
            if path.starts_with("/console") || path.starts_with("/admin") {
                request.extensions_mut().insert(ClientAddr(peer));
            }
            let mut router = router.clone();
            async move {
                let response = router.call(request).await?;
                Ok::<_, Infallible>(response.map(|b| body::Tracked::new(b, in_flight)))
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        // Header and idle timeouts are `io::Watched`'s: hyper's own would start counting
        // while the connection idles, so it could not tell the two apart.
        http.timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true);
        let mut conn = std::pin::pin!(http.serve_connection(io, service));
        let stopped = stopping.changed();
        tokio::select! {
            result = conn.as_mut() => finished(result),
            _ = stopped => {
                conn.as_mut().graceful_shutdown();
                finished(conn.await);
            }
        }
        self.metrics.client_connections.dec();
    }
}

fn finished(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// The requests in flight on one connection, shared by its socket and its service (the
/// socket notices the last one end: `io::Watched::follow_requests`).
#[derive(Default)]
pub(crate) struct Requests {
    in_flight: AtomicUsize,
}

impl Requests {
    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// One request in flight on a connection, until dropped.
pub(crate) struct InFlight(Arc<Requests>);

impl InFlight {
    fn start(requests: &Arc<Requests>) -> InFlight {
        requests.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(requests.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connections the kernel may hold for `accept` (it caps this at `net.core.somaxconn`):
/// tokio's default of 1,024 drops connections when thousands arrive at once (a burst of
/// streams, a fleet of clients reconnecting).
const ACCEPT_BACKLOG: u32 = 8192;

/// Listens on `addr` with a deep accept queue (`ACCEPT_BACKLOG`).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Sets `TCP_NODELAY` on every connection an `axum::serve` accepts (the simulator's, the
/// benchmark's pass-through; tollgate's own connections get it in `Connection::run`): without it a stream's first chunk can
/// wait behind the response head for the client's delayed ACK.
pub fn nodelay(
    listener: TcpListener,
) -> axum::serve::TapIo<TcpListener, impl FnMut(&mut tokio::net::TcpStream) + Send + 'static> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    })
}

/// Raises the soft limit of open files to the hard limit (many connections need many
/// descriptors; the usual soft limit of 1,024 runs out first) and returns the limit now.
pub fn raise_open_file_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return 1024;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        let open_files = limit.rlim_cur as u64;
        open_files
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}
