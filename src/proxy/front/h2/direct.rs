//! The direct exchange of an HTTP/2 stream, as the direct HTTP/1.1 path does it: a bodyless
//! request that needs nothing special is routed while its header block is decoded, written
//! to a pooled plain socket straight from its fields (no header map, no `http::Request`),
//! and the worker's response head is encoded into HPACK straight from the bytes it came in.
//! Anything else (a body, a hold, an engine.io handshake to sniff, a refused client, no
//! worker up, a custom hash) takes [`forward::handle`], and so do the failures it knows
//! how to retry (an unreachable worker, an idempotent request whose connection broke
//! before any answer).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, StatusCode};

use super::{hpack, Fields, RequestHead};
use crate::proxy::exchange::body::ProxyBody;
use crate::proxy::exchange::{general as forward, Proxy};
use crate::proxy::http1::head::{upstream_role, ResponseHead, Role};
use crate::proxy::http1::push_header;
use crate::proxy::upstream::body::UpstreamBody;
use crate::proxy::upstream::client::{self, NoResponse, RawBody};
use crate::proxy::upstream::pool::{Pool, RawConn};
use crate::routing::{key, Decision};
use crate::workers::InFlight;

/// What a stream's exchange answers with.
pub enum Answer {
    /// From the general path.
    Response(http::Response<ProxyBody>),
    /// A header block already encoded, and the body.
    Encoded { block: Vec<u8>, body: ProxyBody },
}

/// A routed request, ready to go.
pub struct Plan {
    pool: Arc<Pool>,
    /// A pooled connection with the request in its write buffer, or (none idle) the
    /// request for a new one.
    up: Result<RawConn, Vec<u8>>,
    decision: Decision,
    in_flight: InFlight,
    is_head: bool,
}

/// Routes a bodyless request and writes it for its worker; `None` when it takes the
/// general path. `routing` is the connection's header map for what routing reads, left
/// empty again.
pub fn plan(
    proxy: &Arc<Proxy>,
    peer: SocketAddr,
    forwarded_for: &HeaderValue,
    fields: &Fields,
    head: &RequestHead,
    routing: &mut http::HeaderMap,
) -> Option<Plan> {
    let router = &proxy.router;
    if head.method == Method::CONNECT || (router.sticky() && key::is_engineio_handshake(&head.uri))
    {
        return None;
    }
    let mut view = http::Request::new(()).into_parts().0;
    view.uri = head.uri.clone();
    view.headers = std::mem::take(routing);
    routing_headers(proxy, fields, head, &mut view.headers);
    let routed = route(proxy, peer, &view);
    *routing = view.headers;
    routing.clear();
    let (decision, index) = routed?;
    let worker = decision.worker;
    if proxy.debug {
        tracing::debug!(worker, outcome = ?decision.outcome, uri = %head.uri, "route");
    }
    let pool = proxy.pools[usize::from(worker)][index].clone();
    let up = match pool.take_raw() {
        Some(mut up) => {
            write_request(proxy, forwarded_for, fields, head, &decision, &mut up.wbuf);
            Ok(up)
        }
        None => {
            let mut w = Vec::with_capacity(1024);
            write_request(proxy, forwarded_for, fields, head, &decision, &mut w);
            Err(w)
        }
    };
    Some(Plan {
        pool,
        up,
        decision,
        in_flight: InFlight::new(proxy.workers.clone(), worker, index),
        is_head: head.method == Method::HEAD,
    })
}

fn route(
    proxy: &Proxy,
    peer: SocketAddr,
    view: &http::request::Parts,
) -> Option<(Decision, usize)> {
    let client = proxy.client_ip(peer.ip(), &view.headers);
    if !proxy.admits(client) {
        return None;
    }
    let now = proxy.router.table().now();
    let hold = proxy.hold.is_some();
    let decision = proxy
        .router
        .route(view, client, &proxy.workers, now, hold)
        .filter(|d| !d.wait)?;
    let (index, _) = proxy.workers.active(decision.worker)?;
    Some((decision, index))
}

/// Cookies, the configured key headers, and `X-Forwarded-For` when a trusted proxy may
/// name the client: all that routing reads.
fn routing_headers(
    proxy: &Proxy,
    fields: &Fields,
    head: &RequestHead,
    headers: &mut http::HeaderMap,
) {
    if !proxy.router.sticky() && proxy.trusted.is_none() {
        return;
    }
    if let Some(cookie) = &head.cookie {
        headers.append(header::COOKIE, cookie.clone());
    }
    if let Some(host) = &head.host {
        if proxy.router.key_headers().any(|h| h == header::HOST) {
            headers.append(header::HOST, host.clone());
        }
    }
    for (name, value) in &fields.headers {
        let wanted = (proxy.trusted.is_some() && name == "x-forwarded-for")
            || proxy.router.key_headers().any(|h| h == name);
        if wanted {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// The request for the worker, as the general path would rewrite it: origin form,
/// HTTP/1.1, `Host` (from `:authority`), hop-by-hop fields dropped, `X-Forwarded-*` and
/// `X-Sticky` set.
fn write_request(
    proxy: &Proxy,
    forwarded_for: &HeaderValue,
    fields: &Fields,
    head: &RequestHead,
    decision: &Decision,
    w: &mut Vec<u8>,
) {
    w.clear();
    w.extend_from_slice(head.method.as_str().as_bytes());
    w.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    w.extend_from_slice(target.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    let host = head
        .host
        .as_ref()
        .map_or(&b"localhost"[..], HeaderValue::as_bytes);
    push_header(w, b"host", host);
    let mut prior_forwarded_for = None;
    let mut has_length = false;
    for (name, value) in &fields.headers {
        match upstream_role(name.as_str().as_bytes()) {
            Role::Keep => {
                has_length |= name == header::CONTENT_LENGTH;
                push_header(w, name.as_str().as_bytes(), value.as_bytes());
            }
            Role::Replaced if name == "x-forwarded-for" => {
                prior_forwarded_for.get_or_insert(value);
            }
            _ => {}
        }
    }
    if let Some(cookie) = &head.cookie {
        push_header(w, b"cookie", cookie.as_bytes());
    }
    // A bodyless request whose method usually has a body says so (as `h1::client` does).
    if !has_length && matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
        push_header(w, b"content-length", b"0");
    }
    w.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = prior_forwarded_for.filter(|v| !v.is_empty()) {
        w.extend_from_slice(prior.as_bytes());
        w.extend_from_slice(b", ");
    }
    w.extend_from_slice(forwarded_for.as_bytes());
    w.extend_from_slice(b"\r\n");
    push_header(w, b"x-forwarded-proto", proxy.scheme.as_bytes());
    push_header(w, b"x-forwarded-host", host);
    push_header(w, b"x-sticky", decision.outcome.header_value().as_bytes());
    w.extend_from_slice(b"\r\n");
}

/// Sends a planned request and reads the answer; what the general path must retry, it
/// runs (`fields` and `head` are the request, for that).
pub async fn run(
    proxy: Arc<Proxy>,
    plan: Plan,
    fields: Fields,
    head: RequestHead,
    client: Arc<forward::Client>,
) -> Answer {
    let Plan {
        pool,
        up,
        decision,
        in_flight,
        is_head,
    } = plan;
    let worker = decision.worker;
    let mut up = match up {
        Ok(up) => up,
        Err(request) => match pool.connect_raw().await {
            Ok(mut up) => {
                up.wbuf = request;
                up
            }
            Err(e) => {
                // Passive health: out of rotation at once. The general path routes again
                // when there is another worker to try; else the client learns why.
                proxy.workers.set_healthy(worker, false);
                let reason = format!("worker {worker} unreachable: {e}");
                tracing::warn!(worker, error = %reason, "upstream request failed");
                drop(in_flight);
                if reroutable(&proxy, &client, &fields, &head) {
                    return general(proxy, fields, head, client).await;
                }
                return Answer::Response(forward::error(
                    StatusCode::BAD_GATEWAY,
                    "proxy_error",
                    &reason,
                ));
            }
        },
    };
    let failure = match client::exchange(&mut up, is_head, proxy.response_timeout).await {
        Ok((resp, head_len)) => {
            let raw = &up.rbuf[..head_len];
            let now = proxy.router.table().now();
            for value in resp.set_cookies(raw) {
                proxy.router.learn_set_cookie(value, worker, now);
            }
            let block = encode_response(&proxy, &resp, raw, &decision);
            let body = RawBody::new(up, &resp, head_len, &pool);
            return Answer::Encoded {
                block,
                body: ProxyBody::plain(body, in_flight),
            };
        }
        Err(failure) => failure,
    };
    drop(in_flight);
    let (status, code, reason) = match failure {
        NoResponse::Broken(e) if head.method.is_idempotent() => {
            // Most likely a reused connection the worker had closed: sent again (routed
            // again, if the worker is gone).
            tracing::debug!(worker, error = %e, "worker connection broke; sending again");
            proxy.check_reachable(worker).await;
            return general(proxy, fields, head, client).await;
        }
        NoResponse::Broken(e) => (
            StatusCode::BAD_GATEWAY,
            "proxy_error",
            format!("worker {worker} failed: {e}"),
        ),
        NoResponse::Invalid(why) => (
            StatusCode::BAD_GATEWAY,
            "proxy_error",
            format!("worker {worker} failed: {why}"),
        ),
        NoResponse::TimedOut => (
            StatusCode::GATEWAY_TIMEOUT,
            "gateway_timeout",
            format!(
                "worker {worker} sent no response headers within {:?}",
                proxy.response_timeout
            ),
        ),
    };
    tracing::warn!(worker, error = %reason, "upstream request failed");
    Answer::Response(forward::error(status, code, &reason))
}

/// Whether routing finds a worker for the request now (one was just taken out).
fn reroutable(
    proxy: &Proxy,
    client: &forward::Client,
    fields: &Fields,
    head: &RequestHead,
) -> bool {
    let mut view = http::Request::new(()).into_parts().0;
    view.uri = head.uri.clone();
    routing_headers(proxy, fields, head, &mut view.headers);
    route(proxy, client.peer, &view).is_some()
}

/// The request through the general path (which may send an idempotent request once more
/// when a connection breaks unanswered: repeating it is allowed, and that is how a request
/// caught on a killed worker's stale sockets reaches a live one).
async fn general(
    proxy: Arc<Proxy>,
    fields: Fields,
    head: RequestHead,
    client: Arc<forward::Client>,
) -> Answer {
    let req = fields.into_request(head).map(|()| UpstreamBody::Empty);
    // Boxed: rare, and it would make every direct exchange's future as large as its own.
    match Box::pin(forward::handle(proxy, req, client)).await {
        Ok(resp) => Answer::Response(resp),
        Err(never) => match never {},
    }
}

/// The worker's response head as an HPACK block: its status and the fields it keeps,
/// then the affinity cookie and the debug header when due.
fn encode_response(proxy: &Proxy, resp: &ResponseHead, raw: &[u8], decision: &Decision) -> Vec<u8> {
    let mut block = Vec::with_capacity(raw.len());
    hpack::encode_status(resp.status, &mut block);
    for f in resp.fields.iter().filter(|f| f.role == Role::Keep) {
        let name = &raw[f.name.clone()];
        // With --debug the proxy's X-Sticky-Worker replaces the worker's.
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || (proxy.debug && name.eq_ignore_ascii_case(b"x-sticky-worker"))
        {
            continue;
        }
        hpack::encode_raw_field(name, &raw[f.value.clone()], &mut block);
    }
    if decision.set_affinity {
        if let Some(cookie) = proxy
            .router
            .affinity()
            .and_then(|a| a.set_cookie(decision.worker))
        {
            hpack::encode_raw_field(b"set-cookie", cookie.as_bytes(), &mut block);
        }
    }
    if proxy.debug {
        let worker = decision.worker.to_string();
        hpack::encode_raw_field(b"x-sticky-worker", worker.as_bytes(), &mut block);
    }
    block
}
