//! The admin listener (`--admin ADDR`): `/metrics` (Prometheus text), `/status` (JSON), the
//! dashboard at `/`, and the controls (`POST /reload`, `POST /workers/{id}/drain` and
//! `/undrain`, `GET /sessions/{key}`). Its own address, never the proxy port; off loopback
//! every request needs the bearer token.
//!
//! The command-line side (`sticky-cluster status|reload|drain N`) is in `client`.

pub mod client;
mod controls;
mod metrics;
pub mod runtime;
mod status;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::routing::table::StickyTable;
use crate::settings::Settings;
use crate::workers::WorkerSet;

/// The dashboard page and its script, served as they are (no build step, no CDN).
const DASHBOARD_HTML: &str = include_str!("dashboard.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");

/// What the admin listener reads and steers.
#[derive(Debug)]
pub struct Admin {
    /// The worker slots.
    pub workers: Arc<WorkerSet>,
    /// The sticky table.
    pub table: Arc<StickyTable>,
    /// Asks for a rolling restart (the SIGHUP path).
    pub reload: mpsc::UnboundedSender<()>,
    /// The bearer token every request must carry, if any.
    pub token: Option<String>,
    /// The settings `/status` shows.
    pub settings: Settings,
    /// When the master started.
    pub started: Instant,
    /// The same, as wall-clock time.
    pub started_at: SystemTime,
}

/// A response body.
type Body = Full<Bytes>;

/// Most admin connections open at once; more are closed at accept, so that slow or idle
/// admin clients cannot take the descriptors the proxy port needs.
const MAX_CONNECTIONS: usize = 64;
/// A request head (and an idle keep-alive wait) on the admin listener may take this long.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin address (before any worker starts, so a taken port fails early).
///
/// # Errors
/// The address cannot be bound.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the admin listener until `stop`.
pub async fn serve(listener: std::net::TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener unusable");
            return;
        }
    };
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = MAX_CONNECTIONS, "admin connection refused: too many open");
            continue;
        };
        let admin = admin.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&admin, req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// One admin request.
fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    if !authorized(admin.token.as_deref(), &req) {
        let mut resp = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sticky-cluster\""),
        );
        return resp;
    }
    if admin.token.is_none() && !names_the_listener(&req) {
        return text(
            StatusCode::FORBIDDEN,
            "Host must be an address or localhost (without --admin-token a host name could be a DNS rebinding page)\n",
        );
    }
    if req.method() == Method::POST && !same_origin(&req) {
        return text(StatusCode::FORBIDDEN, "cross-origin control refused\n");
    }
    let path = req.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => page(DASHBOARD_HTML, "text/html; charset=utf-8"),
        (&Method::GET, ["dashboard.js"]) => page(DASHBOARD_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, ["favicon.ico"]) => text(StatusCode::NO_CONTENT, ""),
        (&Method::GET, ["metrics"]) => {
            let mut resp = text(StatusCode::OK, metrics::render(admin));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, ["status"]) => json(StatusCode::OK, &status::status(admin)),
        (&Method::POST, ["reload"]) => controls::reload(admin),
        (&Method::POST, ["workers", id, action]) => controls::drain(admin, id, action),
        (&Method::GET, ["sessions", key]) => controls::session(admin, key),
        (_, ["" | "metrics" | "status" | "dashboard.js" | "reload"])
        | (_, ["workers", _, _] | ["sessions", _]) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /metrics or /status\n",
        ),
    }
}

/// True when no token is configured, or the request carries it (`Authorization: Bearer`,
/// or `?token=` for the dashboard page opened in a browser), compared in constant time.
fn authorized<B>(token: Option<&str>, req: &Request<B>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
    bearer
        .into_iter()
        .chain(query)
        .any(|given| same_bytes(given.trim().as_bytes(), token.as_bytes()))
}

/// Compares two byte strings in time that depends only on their lengths.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when the request names the listener by an IP address or as `localhost` (with or
/// without a port), or names nothing. A web page whose domain was pointed at 127.0.0.1
/// (DNS rebinding) sends its own domain: refused, since without a token nothing else
/// would stop it (its Origin matches its Host).
fn names_the_listener<B>(req: &Request<B>) -> bool {
    let Some(host) = req.headers().get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    if host.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(host, |(name, _)| name);
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.parse::<IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

/// A control request from a web page of another origin is refused (a page on the web must
/// not steer a loopback admin listener through the operator's browser).
fn same_origin<B>(req: &Request<B>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req.headers().get(header::HOST).map(HeaderValue::as_bytes);
    let origin = origin.as_bytes();
    let origin_host = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    origin_host.is_some() && origin_host == host
}

fn page(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>, uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_token_is_checked_when_set() {
        assert!(authorized(None, &req(None, "/metrics")));
        let t = Some("s3cret");
        assert!(!authorized(t, &req(None, "/metrics")));
        assert!(!authorized(t, &req(Some("Bearer s3cre"), "/metrics")));
        assert!(!authorized(t, &req(Some("Basic s3cret"), "/metrics")));
        assert!(authorized(t, &req(Some("Bearer s3cret"), "/metrics")));
        assert!(authorized(t, &req(None, "/?token=s3cret")));
    }

    #[test]
    fn controls_from_another_origin_are_refused() {
        let with = |origin: &str| {
            Request::builder()
                .header(header::HOST, "127.0.0.1:9100")
                .header(header::ORIGIN, origin)
                .body(())
                .unwrap()
        };
        assert!(same_origin(&with("http://127.0.0.1:9100")));
        assert!(!same_origin(&with("https://evil.example")));
        assert!(same_origin(&Request::new(())), "curl sends no Origin");
    }

    #[test]
    fn only_addresses_and_localhost_name_the_listener() {
        let host = |h: &str| Request::builder().header(header::HOST, h).body(()).unwrap();
        for ok in [
            "127.0.0.1:9100",
            "127.0.0.1",
            "[::1]:9100",
            "[::1]",
            "localhost:9100",
            "LOCALHOST",
            "10.1.2.3:80",
        ] {
            assert!(names_the_listener(&host(ok)), "{ok}");
        }
        for rebound in [
            "rebind.evil.example:9100",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:9100",
        ] {
            assert!(!names_the_listener(&host(rebound)), "{rebound}");
        }
        assert!(names_the_listener(&Request::new(())), "no Host (HTTP/1.0)");
    }
}
