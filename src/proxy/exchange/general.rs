//! One request: route it, rewrite its head, send it over the pooled client, and map the
//! answer (or the failure) back to the client.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::body::{ProxyBody, SidSniffer};
use super::Proxy;
use crate::proxy::http1::head::is_hop_by_hop;
use crate::proxy::io::framing::Verdict;
use crate::proxy::io::upgrade::{self, TunnelLimits};
use crate::proxy::upstream::body::UpstreamBody;
use crate::proxy::upstream::client::{self as raw_client, RawBody};
use crate::proxy::upstream::pool::{Lease, SendError};
use crate::routing::{key, Decision};
use crate::workers::{InFlight, WorkerId};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_STICKY: HeaderName = HeaderName::from_static("x-sticky");
static X_STICKY_WORKER: HeaderName = HeaderName::from_static("x-sticky-worker");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the requests of one client connection share.
#[derive(Debug)]
pub struct Client {
    /// The connection's peer.
    pub peer: SocketAddr,
    /// The peer's address as an `X-Forwarded-For` value, formatted once per connection.
    forwarded_for: HeaderValue,
    /// The connection's smuggling watch.
    pub framing: Arc<Verdict>,
}

impl Client {
    /// The client's address as an `X-Forwarded-For` value.
    pub fn forwarded_for(&self) -> &HeaderValue {
        &self.forwarded_for
    }

    /// The shared state of a connection from `peer`.
    pub fn new(peer: SocketAddr, framing: Arc<Verdict>) -> Self {
        let ip = key::canonical_ip(peer.ip()).to_string();
        Self {
            peer,
            forwarded_for: HeaderValue::try_from(ip)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            framing,
        }
    }
}

/// Handles one client request end to end; never fails (errors become responses).
pub async fn handle(
    proxy: Arc<Proxy>,
    mut req: Request<UpstreamBody>,
    conn: Arc<Client>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let peer = conn.peer;
    let framing = &conn.framing;
    if framing.next_request_conflicts() {
        return Ok(smuggling_refused());
    }
    if let Some(refusal) = refuse(&req) {
        return Ok(refusal);
    }
    let wants_upgrade = is_upgrade(&req);
    let client = proxy.client_ip(peer.ip(), req.headers());
    if !proxy.admits(client) {
        if proxy.debug {
            tracing::debug!(client = %client, peer = %peer, uri = %req.uri(), "refused by the IP filter");
        }
        let mut resp = error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your address may not enter",
        );
        if wants_upgrade {
            // No upgrade for a refused client: the connection ends with this answer.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(resp);
    }
    if wants_upgrade && !proxy.websocket {
        return Ok(error(
            StatusCode::FORBIDDEN,
            "websocket_disabled",
            "WebSocket proxying is off (--no-websocket)",
        ));
    }
    let sniff = proxy.router.sticky() && key::is_engineio_handshake(req.uri());
    let mut client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (head, body) = req.into_parts();
    let Some(decision) = proxy.choose(&head, client).await else {
        return Ok(no_worker());
    };
    // An idempotent request without a body can be sent again when its connection breaks
    // before the response: the copy of its head is made before the head is rewritten.
    // (A request that was not sent at all, or one sent on a plain socket, which is every
    // bodyless one that is not sniffed, comes back from the pool: no copy needed.)
    let idempotent = head.method.is_idempotent();
    let resend =
        (idempotent && !wants_upgrade && sniff && body.is_end_stream()).then(|| copy_head(&head));
    let mut req = Request::from_parts(head, body);
    prepare_request(&mut req, &conn, proxy.scheme, wants_upgrade);
    let first = forward_once(&proxy, req, decision, &mut client_upgrade, sniff).await;
    let failure = match first {
        Ok(resp) => return Ok(upgraded(resp, framing)),
        Err(f) => f,
    };
    let retry = match (failure.unsent, resend) {
        (Some(req), _) if !failure.broken => *req,
        (Some(req), _) if idempotent => {
            proxy.check_reachable(decision.worker).await;
            *req
        }
        (None, Some(head)) if failure.broken => {
            // If the worker is gone, take it out now so the retry goes elsewhere (the
            // supervisor may not have noticed yet).
            proxy.check_reachable(decision.worker).await;
            let mut req = Request::from_parts(head, UpstreamBody::Empty);
            prepare_request(&mut req, &conn, proxy.scheme, false);
            req
        }
        _ => return Ok(failure.response),
    };
    let (head, body) = retry.into_parts();
    // No other worker to try: the client learns why the first one failed.
    let Some(decision) = proxy.choose(&head, client).await else {
        return Ok(failure.response);
    };
    tracing::debug!(worker = decision.worker, "retrying on another worker");
    let req = Request::from_parts(head, body);
    // Boxed: the retry is rare, and inlining a second exchange would double the size of
    // every request's future.
    Ok(Box::pin(forward_once(
        &proxy,
        req,
        decision,
        &mut client_upgrade,
        sniff,
    ))
    .await
    .map_or_else(|f| f.response, |resp| upgraded(resp, framing)))
}

/// Once a connection switches protocols its bytes are no longer HTTP/1 requests.
fn upgraded(resp: Response<ProxyBody>, framing: &Verdict) -> Response<ProxyBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        framing.stop();
    }
    resp
}

/// A request that did not get a worker's response.
struct Failure {
    /// The error response for the client.
    response: Response<ProxyBody>,
    /// The request, when the worker could not be reached and nothing was sent, or when it
    /// was sent on a plain socket that broke before any answer (`broken`).
    unsent: Option<Box<Request<UpstreamBody>>>,
    /// The connection broke before a response: an idempotent request may be resent.
    broken: bool,
}

impl Failure {
    /// A 502 for `reason` (logged), with the request when it can be sent again.
    fn bad_gateway(
        worker: WorkerId,
        reason: &str,
        unsent: Option<Box<Request<UpstreamBody>>>,
        broken: bool,
    ) -> Self {
        tracing::warn!(worker, error = %reason, "upstream request failed");
        Self {
            response: error(StatusCode::BAD_GATEWAY, "proxy_error", reason),
            unsent,
            broken,
        }
    }

    fn final_answer(response: Response<ProxyBody>) -> Self {
        Self {
            response,
            unsent: None,
            broken: false,
        }
    }
}

async fn forward_once(
    proxy: &Arc<Proxy>,
    mut req: Request<UpstreamBody>,
    decision: Decision,
    client_upgrade: &mut Option<hyper::upgrade::OnUpgrade>,
    sniff: bool,
) -> Result<Response<ProxyBody>, Failure> {
    let worker = decision.worker;
    let Some((index, _)) = proxy.workers.active(worker) else {
        return Err(Failure::final_answer(error(
            StatusCode::BAD_GATEWAY,
            "proxy_error",
            "unknown worker",
        )));
    };
    let pool = &proxy.pools[usize::from(worker)][index];
    if proxy.debug {
        tracing::debug!(worker, outcome = ?decision.outcome, uri = %req.uri(), "route");
    }
    req.headers_mut()
        .insert(X_STICKY.clone(), decision.outcome.header_value());
    let in_flight = InFlight::new(proxy.workers.clone(), worker, index);

    // A bodyless request that stays HTTP goes over a plain socket (see `h1::client`);
    // upgrades, uploads and handshakes whose reply is sniffed keep hyper's client.
    let plain = client_upgrade.is_none() && !sniff && req.body().is_end_stream();
    let sent = if plain {
        raw_client::send(pool, req, proxy.response_timeout)
            .await
            .map(Sent::Plain)
    } else {
        pool.send(req, proxy.response_timeout)
            .await
            .map(Sent::Hyper)
    };
    let sent = match sent {
        Ok(sent) => sent,
        Err(SendError::Connect(e, req)) => {
            // Passive health: out of rotation at once; active checks bring it back.
            proxy.workers.set_healthy(worker, false);
            let reason = format!("worker {worker} unreachable: {e}");
            return Err(Failure::bad_gateway(worker, &reason, Some(req), false));
        }
        Err(SendError::Broken(e, req)) => {
            let reason = format!("worker {worker} failed: {e}");
            return Err(Failure::bad_gateway(worker, &reason, Some(req), true));
        }
        Err(SendError::Failed(e)) => {
            let reason = format!("worker {worker} failed: {}", innermost(&*e));
            return Err(Failure::bad_gateway(worker, &reason, None, true));
        }
        Err(SendError::Unusable(e)) => {
            let reason = format!("worker {worker} failed: {e}");
            tracing::warn!(worker, error = %reason, "upstream request failed");
            return Err(Failure::final_answer(error(
                StatusCode::BAD_GATEWAY,
                "proxy_error",
                &reason,
            )));
        }
        Err(SendError::TimedOut) => {
            let reason = format!(
                "worker {worker} sent no response headers within {:?}",
                proxy.response_timeout
            );
            tracing::warn!(worker, "{reason}");
            return Err(Failure::final_answer(error(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                &reason,
            )));
        }
    };
    let (mut resp, lease) = match sent {
        Sent::Hyper(sent) => sent,
        Sent::Plain((mut head, body)) => {
            // Its head holds no hop-by-hop header: `h1::client` left them out.
            decorate(proxy, &decision, &mut head.headers);
            let body = ProxyBody::plain(body, in_flight);
            return Ok(Response::from_parts(head, body));
        }
    };
    decorate(proxy, &decision, resp.headers_mut());

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade.take() {
            // The worker connection becomes the tunnel: it never goes back to the pool.
            drop(lease);
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let limits = TunnelLimits {
                idle: proxy.ws_idle_timeout,
                drain: proxy.workers.tunnel_token(worker, index),
                jitter: proxy.close_jitter,
            };
            upgrade::spawn_tunnel(client_upgrade, upstream_upgrade, worker, limits, in_flight);
            return Ok(resp.map(|_| ProxyBody::empty()));
        }
    }
    strip_hop_by_hop(resp.headers_mut());
    let sniffer = (sniff && resp.status() == StatusCode::OK)
        .then(|| SidSniffer::new(proxy.router.clone(), worker));
    let giveback = (pool.clone(), lease);
    Ok(resp.map(|body| ProxyBody::upstream(body, sniffer, in_flight, giveback)))
}

/// How a worker's response came.
enum Sent {
    Hyper((Response<Incoming>, Lease)),
    Plain((http::response::Parts, RawBody)),
}

/// Learns from a worker's response head and adds the proxy's own headers to it.
fn decorate(proxy: &Proxy, decision: &Decision, headers: &mut HeaderMap) {
    let worker = decision.worker;
    proxy
        .router
        .learn_from_response(headers, worker, proxy.router.table().now());
    if decision.set_affinity {
        if let Some(cookie) = proxy.router.affinity().and_then(|a| a.set_cookie(worker)) {
            headers.append(header::SET_COOKIE, cookie.clone());
        }
    }
    if proxy.debug {
        headers.insert(X_STICKY_WORKER.clone(), HeaderValue::from(worker));
    }
}

/// The innermost cause of an error, for the client's `reason`.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn no_worker() -> Response<ProxyBody> {
    let mut resp = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_worker",
        "no worker is up; retry shortly",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// A copy of a request head (without extensions), for a retry.
fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req.into_parts().0
}

/// A request whose head carried both Content-Length and Transfer-Encoding: refused, and
/// the connection closed, as HAProxy and nginx do (hyper would let Transfer-Encoding win).
fn smuggling_refused() -> Response<ProxyBody> {
    let mut resp = error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "both Content-Length and Transfer-Encoding: send one framing header",
    );
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Requests refused before routing: CONNECT (this is no forward proxy).
fn refuse<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    (req.method() == Method::CONNECT).then(|| {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "CONNECT is not supported",
        )
    })
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Rewrites a client request for a worker, once, whichever worker it goes to: origin-form
/// URI, HTTP/1.1, Host kept (made from an HTTP/2 `:authority` when missing), hop-by-hop
/// headers removed, `X-Forwarded-*` set.
fn prepare_request(
    req: &mut Request<UpstreamBody>,
    client: &Client,
    scheme: &'static str,
    keep_upgrade: bool,
) {
    let authority = req.uri().authority().cloned();
    if req.uri().scheme().is_some() || authority.is_some() {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    // Workers speak HTTP/1.1; an HTTP/2 client's :authority becomes the Host they expect.
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    if !headers.contains_key(header::HOST) {
        // HTTP/1.0 clients may send no Host at all; workers still get one.
        let host = authority
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        headers.insert(header::HOST, host);
    }
    let upgrade = if keep_upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    append_forwarded_for(headers, &client.forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// The hop-by-hop headers of RFC 9110 section 7.6.1 (besides those `Connection` names).
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
];

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1, including any the
/// `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names present, noting which hop-by-hop ones are there, then a
    // removal only for those: most messages carry none, or only `Connection: keep-alive`.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` is HOP_BY_HOP[0]. Its usual tokens name headers removed anyway; any
        // other token names an extra header to remove.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !is_known_connection_token(t))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// `close`, or a hop-by-hop header name (removed whether named or not).
fn is_known_connection_token(token: &[u8]) -> bool {
    token.is_empty() || token.eq_ignore_ascii_case(b"close") || is_hop_by_hop(token)
}

fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let value = match headers.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()) {
        Some(prior) if !prior.is_empty() => {
            let mut v = Vec::with_capacity(prior.len() + 2 + client.len());
            v.extend_from_slice(prior);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            match HeaderValue::from_maybe_shared(Bytes::from(v)) {
                Ok(v) => v,
                Err(_) => return,
            }
        }
        _ => client.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
}

/// A JSON error response: `{"error":"<code>","reason":"<reason>"}`.
pub fn error(status: StatusCode, code: &str, reason: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::own(error_json(code, reason)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The body of an error of the proxy's own: `{"error":"<code>","reason":"<reason>"}`.
pub fn error_json(code: &str, reason: &str) -> String {
    let mut body = String::with_capacity(32 + code.len() + reason.len());
    body.push_str("{\"error\":\"");
    push_json_escaped(&mut body, code);
    body.push_str("\",\"reason\":\"");
    push_json_escaped(&mut body, reason);
    body.push_str("\"}");
    body
}

fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::HOST));
    }

    #[test]
    fn both_paths_know_the_same_hop_by_hop_headers() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_str().as_bytes()), "{name}");
            let upper = name.as_str().to_ascii_uppercase();
            assert!(is_hop_by_hop(upper.as_bytes()), "{upper}");
        }
        for name in [
            "host",
            "cookie",
            "content-length",
            "x-forwarded-for",
            "trailers",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let client = |addr: &str| {
            let conn = Client::new(addr.parse().expect("addr"), Arc::default());
            conn.forwarded_for
        };
        append_forwarded_for(&mut h, &client("[::ffff:10.0.0.9]:5000"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        append_forwarded_for(&mut h, &client("[::1]:1"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9, ::1");
    }

    #[test]
    fn error_bodies_are_json() {
        let r = error(StatusCode::BAD_GATEWAY, "proxy_error", "say \"hi\"\n");
        assert_eq!(
            r.body().own_bytes().map(|b| &b[..]),
            Some(&br#"{"error":"proxy_error","reason":"say \"hi\"\u000a"}"#[..])
        );
    }
}
