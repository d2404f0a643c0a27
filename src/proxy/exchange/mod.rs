//! What happens to a request, once for every front: admit -> route -> target -> send ->
//! classify a failure -> answer -> resend -> decorate -> learn.

pub mod body;
pub mod general;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ipfilter::{IpFilter, TrustedProxies};
use crate::proxy::upstream::pool::Pool;
use crate::proxy::upstream::stream::Connector;
use crate::routing::{Decision, Router};
use crate::tls::TlsReloader;
use crate::workers::{WorkerId, WorkerSet};

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
    /// TLS to the workers (`--worker-tls`).
    pub worker_tls: Option<Arc<rustls::ClientConfig>>,
    /// Which clients may enter.
    pub filter: Option<IpFilter>,
    /// Front proxies whose X-Forwarded-For names the client.
    pub trusted: Option<TrustedProxies>,
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Proxy {
    pub(in crate::proxy) router: Arc<Router>,
    pub(in crate::proxy) workers: Arc<WorkerSet>,
    /// Per slot, the connection pool of each of its two addresses.
    pub(in crate::proxy) pools: Vec<[Arc<Pool>; 2]>,
    pub(in crate::proxy) websocket: bool,
    pub(in crate::proxy) scheme: &'static str,
    pub(in crate::proxy) debug: bool,
    pub(in crate::proxy) hold: Option<Duration>,
    pub(in crate::proxy) hold_queue: usize,
    pub(in crate::proxy) holding: AtomicUsize,
    pub(in crate::proxy) response_timeout: Duration,
    pub(in crate::proxy) ws_idle_timeout: Duration,
    pub(in crate::proxy) close_jitter: Duration,
    pub(in crate::proxy) filter: Option<IpFilter>,
    pub(in crate::proxy) trusted: Option<TrustedProxies>,
    /// Requests may take the direct paths (`h1`, and `h2`'s direct exchange): not with a
    /// custom hash, which reads the whole head.
    pub(in crate::proxy) direct: bool,
    pub(in crate::proxy) config: ProxyConfig,
}

impl Proxy {
    /// A proxy routing with `router` over `workers`.
    pub fn new(router: Arc<Router>, workers: Arc<WorkerSet>, config: ProxyConfig) -> Self {
        let connector = Connector {
            timeout: config.connect_timeout,
            tls: config.worker_tls.clone(),
        };
        let pool = |addr| Arc::new(Pool::new(addr, connector.clone()));
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
    pub(in crate::proxy) async fn choose(
        &self,
        head: &http::request::Parts,
        client: IpAddr,
    ) -> Option<Decision> {
        let now = self.router.table().now();
        let hold = self.hold.is_some();
        let decision = self.router.route(head, client, &self.workers, now, hold)?;
        if !decision.wait {
            return Some(decision);
        }
        // Boxed: holding is rare and its wait would otherwise grow every request's future.
        Box::pin(self.hold_then_route(head, client, decision)).await
    }

    pub(in crate::proxy) async fn hold_then_route(
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
    pub(in crate::proxy) fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
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
    pub(in crate::proxy) async fn check_reachable(&self, worker: WorkerId) {
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
    pub(in crate::proxy) fn admits(&self, client: IpAddr) -> bool {
        self.filter.as_ref().is_none_or(|f| f.permits(client))
    }

    /// Waits until `worker` is up, at most the hold time; false when it is not back in time
    /// or too many requests are already waiting.
    pub(in crate::proxy) async fn wait_for(&self, worker: WorkerId) -> bool {
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
