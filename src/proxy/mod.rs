//! The reverse proxy: accepts client connections (HTTP/1.1 and HTTP/2 on one socket), asks
//! the router for a worker, forwards over a pooled keep-alive client, tunnels upgrades.
//! It knows nothing about processes: worker liveness comes from the shared [`WorkerSet`].

mod body;
mod forward;
mod upgrade;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use body::handshake_sid;

use crate::routing::{Decision, Router};
use crate::workers::{WorkerId, WorkerSet};
use body::UpstreamBody;

/// Idle pooled upstream connections are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Upper bound of the random delay before a drained WebSocket is closed.
const MAX_CLOSE_JITTER: Duration = Duration::from_secs(10);

/// The proxy's limits and policies, from the settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Proxy upgrades.
    pub websocket: bool,
    /// Log routing decisions, add `X-Sticky-Worker`.
    pub debug: bool,
    /// `X-Forwarded-Proto`: "http" or "https".
    pub scheme: &'static str,
    /// Hold requests for a down pinned worker this long (`None`: redispatch at once).
    pub hold: Option<Duration>,
    /// Most requests held at once.
    pub hold_queue: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-header timeout.
    pub response_timeout: Duration,
    /// Client request-head (and keep-alive idle) timeout.
    pub header_timeout: Duration,
    /// Largest client request head.
    pub max_header_size: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// WebSocket idle timeout.
    pub ws_idle_timeout: Duration,
    /// How long a replaced worker may drain (bounds the close jitter of its tunnels).
    pub drain_timeout: Duration,
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Proxy {
    router: Arc<Router>,
    workers: Arc<WorkerSet>,
    client: Client<HttpConnector, UpstreamBody>,
    /// Per slot, the authority of each of its two addresses.
    authorities: Vec<[http::uri::Authority; 2]>,
    websocket: bool,
    scheme: &'static str,
    debug: bool,
    hold: Option<Duration>,
    hold_queue: usize,
    holding: AtomicUsize,
    response_timeout: Duration,
    ws_idle_timeout: Duration,
    close_jitter: Duration,
    config: ProxyConfig,
}

impl Proxy {
    /// A proxy routing with `router` over `workers`.
    pub fn new(router: Arc<Router>, workers: Arc<WorkerSet>, config: ProxyConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let authority = |addr: SocketAddr| {
            addr.to_string()
                .parse::<http::uri::Authority>()
                .unwrap_or_else(|_| http::uri::Authority::from_static("127.0.0.1"))
        };
        let authorities = workers
            .ids()
            .filter_map(|id| workers.addrs(id))
            .map(|[a, b]| [authority(a), authority(b)])
            .collect();
        Self {
            router,
            workers,
            client,
            authorities,
            websocket: config.websocket,
            scheme: config.scheme,
            debug: config.debug,
            hold: config.hold,
            hold_queue: config.hold_queue,
            holding: AtomicUsize::new(0),
            response_timeout: config.response_timeout,
            ws_idle_timeout: config.ws_idle_timeout,
            close_jitter: config.drain_timeout.min(MAX_CLOSE_JITTER),
            config,
        }
    }

    /// Routes a request head; with `--on-worker-down hold`, waits (bounded) for a pinned
    /// worker that is restarting instead of moving its client.
    async fn choose(&self, head: &http::request::Parts, peer: SocketAddr) -> Option<Decision> {
        let now = self.router.table().now();
        let decision =
            self.router
                .route(head, peer.ip(), &self.workers, now, self.hold.is_some())?;
        if !decision.wait {
            return Some(decision);
        }
        if self.wait_for(decision.worker).await {
            return Some(Decision {
                wait: false,
                ..decision
            });
        }
        let now = self.router.table().now();
        self.router
            .route(head, peer.ip(), &self.workers, now, false)
    }

    /// Waits until `worker` is up, at most the hold time; false when it is not back in time
    /// or too many requests are already waiting.
    async fn wait_for(&self, worker: WorkerId) -> bool {
        let Some(hold) = self.hold else { return false };
        if self.holding.fetch_add(1, Ordering::AcqRel) >= self.hold_queue {
            self.holding.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let deadline = tokio::time::Instant::now() + hold;
        let back = loop {
            let changed = self.workers.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.workers.is_up(worker) {
                break true;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => break self.workers.is_up(worker),
            }
        };
        self.holding.fetch_sub(1, Ordering::AcqRel);
        back
    }
}

/// Accepts connections until `shutdown` fires, then lets in-flight requests finish for at
/// most `grace`.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.config.header_timeout)
        .max_buf_size(proxy.config.max_header_size.max(8192))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(proxy.config.max_connections.max(1)));
    let mut backoff = Duration::from_millis(5);
    loop {
        // At the connection limit, stop accepting: newcomers wait in the kernel's queue.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => { backoff = Duration::from_millis(5); pair }
                Err(e) => {
                    // Out of descriptors and the like: the accept loop must not die.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let service = service_fn(move |req| forward::handle(proxy.clone(), req, peer));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("all client connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace time over; closing open connections"),
    }
}
