//! The reverse proxy: accepts client connections (HTTP/1.1 and HTTP/2 on one socket), asks
//! the router for a worker, forwards over a pooled keep-alive client, tunnels upgrades.
//! It knows nothing about processes: worker liveness comes from the shared [`WorkerSet`].

mod body;
mod forward;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use body::handshake_sid;

use crate::routing::Router;
use crate::workers::WorkerSet;

/// How long a client may take to send a request head (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pooled upstream connections are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Proxy {
    router: Arc<Router>,
    workers: Arc<WorkerSet>,
    client: Client<HttpConnector, Incoming>,
    authorities: Vec<http::uri::Authority>,
    websocket: bool,
    scheme: &'static str,
    debug: bool,
}

impl Proxy {
    /// A proxy routing with `router` over `workers`.
    pub fn new(router: Arc<Router>, workers: Arc<WorkerSet>, websocket: bool, debug: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let authorities = workers
            .ids()
            .filter_map(|id| workers.addr(id))
            .filter_map(|addr| addr.to_string().parse().ok())
            .collect();
        Self {
            router,
            workers,
            client,
            authorities,
            websocket,
            scheme: "http",
            debug,
        }
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
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut backoff = Duration::from_millis(5);
    loop {
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
