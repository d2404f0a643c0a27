//! What happens to a request, once for every front: admit -> route -> target -> send ->
//! classify a failure -> answer -> resend -> decorate -> learn.

pub mod admit;
pub mod answer;
pub mod body;
pub mod decorate;
pub mod failure;
pub mod general;
pub mod peer;
pub mod raw;
pub mod route;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::ipfilter::{IpFilter, TrustedProxies};
use crate::proxy::upstream::pool::{Address, Pool};
use crate::proxy::upstream::stream::Connector;
use crate::routing::Router;
use crate::tls::TlsReloader;
use crate::workers::WorkerSet;

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
    /// Longest pause in a client's request body (408).
    pub body_timeout: Duration,
    /// Largest client request head.
    pub max_header_size: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Most requests one worker may have unanswered; more are answered 503 (0: no bound).
    pub max_pending: usize,
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
    /// The session table shared with other proxies (`--shared-table`).
    pub shared: Option<Arc<crate::shared_table::SharedTable>>,
    /// Client header names with `_`: dropped unless `--allow-underscore-headers`.
    pub underscores: crate::proxy::http1::head::Underscores,
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
    /// Per worker slot, the requests sent and not yet answered (`--max-pending`).
    pub(in crate::proxy) pending: Box<[AtomicUsize]>,
    pub(in crate::proxy) response_timeout: Duration,
    pub(in crate::proxy) ws_idle_timeout: Duration,
    pub(in crate::proxy) close_jitter: Duration,
    pub(in crate::proxy) filter: Option<IpFilter>,
    pub(in crate::proxy) trusted: Option<TrustedProxies>,
    /// Asked on a key new to this proxy (`--shared-table`); `None`: the local table only.
    pub(in crate::proxy) shared: Option<Arc<crate::shared_table::SharedTable>>,
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
        let pool = |id, index| {
            let addr = Address {
                workers: workers.clone(),
                id,
                index,
            };
            Arc::new(Pool::new(addr, connector.clone()))
        };
        let pools: Vec<_> = workers.ids().map(|id| [pool(id, 0), pool(id, 1)]).collect();
        let pending = pools.iter().map(|_| AtomicUsize::new(0)).collect();
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
            pending,
            response_timeout: config.response_timeout,
            ws_idle_timeout: config.ws_idle_timeout,
            close_jitter: config.drain_timeout.min(MAX_CLOSE_JITTER),
            filter: config.filter.clone().filter(|f| !f.is_empty()),
            trusted: config.trusted.clone().filter(|t| !t.is_empty()),
            shared: config.shared.clone(),
            config,
        }
    }
}
