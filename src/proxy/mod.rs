//! The reverse proxy: accepts client connections (HTTP/1.1 and HTTP/2 on one socket), asks
//! the router for a worker, forwards over a pooled keep-alive client, tunnels upgrades.
//! It knows nothing about processes: worker liveness comes from the shared [`WorkerSet`].

mod body;
mod forward;
mod framing;
mod h1;
mod h2;
mod pool;
mod splice;
mod upgrade;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::handshake_sid;

use crate::ipfilter::{IpFilter, TrustedProxies};
use crate::routing::{Decision, Router};
use crate::tls::TlsReloader;
use crate::workers::{WorkerId, WorkerSet};
use body::ProxyBody;
use framing::{FramingWatch, Verdict};
use pool::Pool;

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
    /// TLS: the proxy speaks HTTPS with the reloader's current certificate.
    pub tls: Option<Arc<TlsReloader>>,
    /// Which clients may enter.
    pub filter: Option<IpFilter>,
    /// Front proxies whose X-Forwarded-For names the client.
    pub trusted: Option<TrustedProxies>,
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Proxy {
    router: Arc<Router>,
    workers: Arc<WorkerSet>,
    /// Per slot, the connection pool of each of its two addresses.
    pools: Vec<[Arc<Pool>; 2]>,
    websocket: bool,
    scheme: &'static str,
    debug: bool,
    hold: Option<Duration>,
    hold_queue: usize,
    holding: AtomicUsize,
    response_timeout: Duration,
    ws_idle_timeout: Duration,
    close_jitter: Duration,
    filter: Option<IpFilter>,
    trusted: Option<TrustedProxies>,
    /// Requests may take the direct paths (`h1`, and `h2`'s direct exchange): not with a
    /// custom hash, which reads the whole head.
    direct: bool,
    config: ProxyConfig,
}

impl Proxy {
    /// A proxy routing with `router` over `workers`.
    pub fn new(router: Arc<Router>, workers: Arc<WorkerSet>, config: ProxyConfig) -> Self {
        let pool = |addr| Arc::new(Pool::new(addr, config.connect_timeout));
        let pools = workers
            .ids()
            .filter_map(|id| workers.addrs(id))
            .map(|[a, b]| [pool(a), pool(b)])
            .collect();
        Self {
            direct: !router.has_custom_hash(),
            router,
            workers,
            pools,
            websocket: config.websocket,
            scheme: config.scheme,
            debug: config.debug,
            hold: config.hold,
            hold_queue: config.hold_queue,
            holding: AtomicUsize::new(0),
            response_timeout: config.response_timeout,
            ws_idle_timeout: config.ws_idle_timeout,
            close_jitter: config.drain_timeout.min(MAX_CLOSE_JITTER),
            filter: config.filter.clone().filter(|f| !f.is_empty()),
            trusted: config.trusted.clone().filter(|t| !t.is_empty()),
            config,
        }
    }

    /// Routes a request head; with `--on-worker-down hold`, waits (bounded) for a pinned
    /// worker that is restarting instead of moving its client.
    async fn choose(&self, head: &http::request::Parts, client: IpAddr) -> Option<Decision> {
        let now = self.router.table().now();
        let hold = self.hold.is_some();
        let decision = self.router.route(head, client, &self.workers, now, hold)?;
        if !decision.wait {
            return Some(decision);
        }
        // Boxed: holding is rare and its wait would otherwise grow every request's future.
        Box::pin(self.hold_then_route(head, client, decision)).await
    }

    async fn hold_then_route(
        &self,
        head: &http::request::Parts,
        client: IpAddr,
        decision: Decision,
    ) -> Option<Decision> {
        if self.wait_for(decision.worker).await {
            return Some(Decision {
                wait: false,
                ..decision
            });
        }
        let now = self.router.table().now();
        self.router.route(head, client, &self.workers, now, false)
    }

    /// The client's address: the peer, or what a trusted front proxy says it is.
    fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        match &self.trusted {
            Some(t) => t.client_ip(
                peer,
                headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .map(|v| v.as_bytes()),
            ),
            None => crate::routing::key::canonical_ip(peer),
        }
    }

    /// Takes a worker out of rotation when its address refuses connections.
    async fn check_reachable(&self, worker: WorkerId) {
        let Some(addr) = self.workers.addr(worker) else {
            return;
        };
        let probe = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        );
        if !matches!(probe.await, Ok(Ok(_))) {
            self.workers.set_healthy(worker, false);
        }
    }

    /// False when the IP filter refuses `client`.
    fn admits(&self, client: IpAddr) -> bool {
        self.filter.as_ref().is_none_or(|f| f.permits(client))
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

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` fires, then lets in-flight requests finish for at
/// most `grace`.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) {
    // HTTP/1 only: HTTP/2 connections go to our own front (`h2`).
    let mut builder = http1::Builder::new();
    builder
        // The head deadline is the framing watch's (one timer per connection, not one per
        // request).
        .header_read_timeout(None)
        .max_buf_size(proxy.config.max_header_size.max(8192))
        .keep_alive(true)
        // One flat buffer per response instead of a queue of slices: fewer instructions
        // per request (callgrind: 37.0k -> 36.4k), the same one write per response.
        .writev(false);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
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
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            match proxy.config.tls.clone() {
                None => serve_connection(&builder, stream, proxy, peer, shutdown).await,
                // Boxed: the TLS states are several KB, and every task is as large as its
                // largest state; plain connections should not carry them.
                Some(tls) => {
                    Box::pin(serve_tls(tls, &builder, stream, proxy, peer, shutdown)).await
                }
            }
        });
    }
    drop(listener);
    connections.close();
    tokio::select! {
        _ = connections.wait() => tracing::debug!("all client connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace time over; closing open connections"),
    }
}

/// Completes the TLS handshake, then serves the connection.
async fn serve_tls(
    tls: Arc<TlsReloader>,
    builder: &http1::Builder,
    stream: tokio::net::TcpStream,
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    // A failed handshake (plain HTTP on the TLS port, a scanner) ends here.
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => serve_connection(builder, stream, proxy, peer, shutdown).await,
        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
    }
}

/// Serves one client connection; on shutdown, finishes the request in flight and closes.
async fn serve_connection<I>(
    builder: &http1::Builder,
    io: I,
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = if proxy.direct {
        match h1::serve(io, &proxy, peer, &shutdown).await {
            h1::Served::Closed => return,
            h1::Served::HandOver(io) => io,
        }
    } else {
        h1::Rewind::new(io, bytes::Bytes::new())
    };
    let mut io = io;
    let header_timeout = proxy.config.header_timeout;
    match tokio::time::timeout(header_timeout, io.starts_with(h2::PREFACE)).await {
        Ok(Ok(true)) => h2::serve(io, proxy, peer, shutdown).await,
        Ok(Ok(false)) => serve_with_hyper(builder, io, proxy, peer, shutdown).await,
        Ok(Err(_)) | Err(_) => {}
    }
}

/// Serves a client connection with hyper's HTTP/1 server: what the direct path hands over
/// (or all of it, with a custom hash).
async fn serve_with_hyper<I>(
    builder: &http1::Builder,
    io: I,
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let verdict = Arc::new(Verdict::default());
    let io = FramingWatch::new(io, verdict.clone(), proxy.config.header_timeout);
    let client = Arc::new(forward::Client::new(peer, verdict));
    // Boxed: the service's future is large and hyper moves it around; the allocation
    // costs less than the copies.
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        Box::pin(forward::handle(
            proxy.clone(),
            req.map(body::UpstreamBody::Client),
            client.clone(),
        ))
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        // The connection first: a request the direct path handed over during shutdown is
        // read (and answered) before the graceful shutdown can cancel a connection that has
        // not read its first bytes yet.
        biased;
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
    }
}

/// Answers plain HTTP on `listener` with a permanent redirect to the HTTPS proxy port; a
/// client gets `header_timeout` to send its request head, as on the proxy port.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let service = service_fn(
            move |req: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(redirect_to_https(&req, https_port))
            },
        );
        tokio::spawn(async move {
            let io = FramingWatch::new(stream, Arc::default(), header_timeout);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        });
    }
}

fn redirect_to_https<B>(req: &http::Request<B>, https_port: u16) -> http::Response<ProxyBody> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("localhost");
    // Drop the plain port; keep an IPv6 literal's brackets.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    let mut resp = http::Response::new(ProxyBody::empty());
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}
