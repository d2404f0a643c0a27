//! How bytes arrive: the accept loop and TLS handshake, the direct HTTP/1.1 path (`h1`),
//! hyper's HTTP/1 server for what it hands over, and the HTTP/2 front (`h2`).

pub mod h1;
pub mod h2;
pub mod redirect;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{self, Open, Protocol, Refused};
use crate::proxy::exchange::{general, Proxy};
use crate::proxy::io::framing::{FramingWatch, Verdict};
use crate::proxy::io::rewind::Rewind;
use crate::proxy::upstream::body::UpstreamBody;
use crate::tls::TlsReloader;

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most hyper's HTTP/1 server reads at once, so the largest piece of an upload it hands
/// on (bench/bodies.sh, 1 MiB uploads: 0.59 ms of proxy CPU per MiB at 64 KiB, 0.53 at
/// 128 KiB, 0.29-0.41 at 256 KiB, no better at 512 KiB). hyper's buffer starts at 8 KiB and
/// grows only for reads that fill it, so only a connection that carried a large upload
/// holds this much, until it closes (an idle one at the head deadline). Heads are held to
/// `--max-header-size` by the framing watch, not by this buffer.
const BODY_READ: usize = 256 * 1024;

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
        // The framing watch holds heads to --max-header-size; hyper's buffer is larger so
        // that an upload is read in fewer, larger pieces.
        .max_buf_size(proxy.config.max_header_size.max(BODY_READ))
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
        if slots.available_permits() == 0 {
            metrics::refused(Refused::Limit);
        }
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
        Ok(Ok(stream)) => {
            metrics::tls_handshake(true);
            serve_connection(builder, stream, proxy, peer, shutdown).await
        }
        Ok(Err(e)) => {
            metrics::tls_handshake(false);
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
        }
        Err(_) => {
            metrics::tls_handshake(false);
            tracing::debug!(peer = %peer, "TLS handshake timed out")
        }
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
    let open = Open::new(Protocol::Http1);
    let io = if proxy.direct {
        match h1::serve(io, &proxy, peer, &shutdown).await {
            h1::Served::Closed => return,
            h1::Served::HandOver(io) => io,
        }
    } else {
        Rewind::new(io, bytes::Bytes::new())
    };
    let mut io = io;
    let header_timeout = proxy.config.header_timeout;
    match tokio::time::timeout(header_timeout, io.starts_with(h2::PREFACE)).await {
        Ok(Ok(true)) => {
            drop(open);
            let _open = Open::new(Protocol::Http2);
            h2::serve(io, proxy, peer, shutdown).await
        }
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
    let io = FramingWatch::new(
        io,
        verdict.clone(),
        proxy.config.header_timeout,
        proxy.config.max_header_size,
    );
    let client = Arc::new(general::Client::new(&proxy, peer, verdict));
    // Boxed: the service's future is large and hyper moves it around; the allocation
    // costs less than the copies.
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        Box::pin(general::handle(
            proxy.clone(),
            req.map(UpstreamBody::Client),
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
        if e.is_parse() {
            log_unparsed(peer, &e);
        }
        tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
    }
}

/// The access-log line of a head hyper could not parse: hyper answered it itself (431 for
/// one too large, 400 else) and no request line is known.
#[cold]
fn log_unparsed(peer: SocketAddr, e: &hyper::Error) {
    let status = if e.is_parse_too_large() {
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    } else {
        http::StatusCode::BAD_REQUEST
    };
    let client = crate::routing::key::canonical_ip(peer.ip());
    crate::access_log::own_answer(client, (b"-", b"-"), status, std::time::Duration::ZERO);
}
