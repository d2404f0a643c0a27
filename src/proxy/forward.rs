//! One request: route it, rewrite its head, send it over the pooled client, and map the
//! answer (or the failure) back to the client.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::body::{ProxyBody, SidSniffer, UpstreamBody};
use super::upgrade::{self, TunnelLimits};
use super::Proxy;
use crate::routing::{key, Decision};
use crate::workers::InFlight;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_STICKY: HeaderName = HeaderName::from_static("x-sticky");
static X_STICKY_WORKER: HeaderName = HeaderName::from_static("x-sticky-worker");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Handles one client request end to end; never fails (errors become responses).
pub async fn handle(
    proxy: Arc<Proxy>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
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
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (head, body) = req.into_parts();
    let Some(decision) = proxy.choose(&head, client).await else {
        return Ok(no_worker());
    };
    // A bodyless request can be sent again when its worker could not be reached (nothing
    // was delivered), or when it is idempotent and no response came. The copy is made
    // before the head is rewritten.
    let idempotent = head.method.is_idempotent();
    let retry = (!wants_upgrade && body.is_end_stream()).then(|| copy_head(&head));
    let first = forward_once(
        &proxy,
        head,
        UpstreamBody::Client(body),
        decision,
        peer,
        client_upgrade,
        sniff,
    )
    .await;
    match (first, retry) {
        (Ok(resp), _) => Ok(resp),
        (Err(failure), Some(head)) if failure.connect || (idempotent && failure.retryable) => {
            if !failure.connect {
                // The connection broke mid-request: if the worker is gone, take it out now so
                // the retry goes elsewhere (the supervisor may not have noticed yet).
                proxy.check_reachable(decision.worker).await;
            }
            // No other worker to try: the client learns why the first one failed.
            let Some(decision) = proxy.choose(&head, client).await else {
                return Ok(failure.response);
            };
            tracing::debug!(worker = decision.worker, "retrying on another worker");
            Ok(forward_once(
                &proxy,
                head,
                UpstreamBody::Empty,
                decision,
                peer,
                None,
                sniff,
            )
            .await
            .unwrap_or_else(|f| f.response))
        }
        (Err(failure), _) => Ok(failure.response),
    }
}

/// A request that did not get a worker's response.
struct Failure {
    /// The error response for the client.
    response: Response<ProxyBody>,
    /// The worker could not be reached at all (nothing was sent).
    connect: bool,
    /// No response came (the connection broke): safe to resend an idempotent request.
    retryable: bool,
}

async fn forward_once(
    proxy: &Arc<Proxy>,
    head: http::request::Parts,
    body: UpstreamBody,
    decision: Decision,
    peer: SocketAddr,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    sniff: bool,
) -> Result<Response<ProxyBody>, Failure> {
    let worker = decision.worker;
    let Some((index, _)) = proxy.workers.active(worker) else {
        return Err(Failure {
            response: error(StatusCode::BAD_GATEWAY, "proxy_error", "unknown worker"),
            connect: false,
            retryable: false,
        });
    };
    let authority = &proxy.authorities[usize::from(worker)][index];
    if proxy.debug {
        tracing::debug!(worker, outcome = ?decision.outcome, uri = %head.uri, peer = %peer, "route");
    }
    let mut req = Request::from_parts(head, body);
    rewrite_request(
        &mut req,
        authority,
        peer,
        proxy.scheme,
        client_upgrade.is_some(),
    );
    req.headers_mut()
        .insert(X_STICKY.clone(), decision.outcome.header_value());
    let in_flight = InFlight::new(proxy.workers.clone(), worker, index);

    let mut resp =
        match tokio::time::timeout(proxy.response_timeout, proxy.client.request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let reason = upstream_reason(&e, worker);
                let connect = e.is_connect();
                if connect {
                    // Passive health: out of rotation at once; active checks bring it back.
                    proxy.workers.set_healthy(worker, false);
                }
                tracing::warn!(worker, error = %reason, "upstream request failed");
                return Err(Failure {
                    response: error(StatusCode::BAD_GATEWAY, "proxy_error", &reason),
                    connect,
                    retryable: true,
                });
            }
            Err(_) => {
                let reason = format!(
                    "worker {worker} sent no response headers within {:?}",
                    proxy.response_timeout
                );
                tracing::warn!(worker, "{reason}");
                return Err(Failure {
                    response: error(StatusCode::GATEWAY_TIMEOUT, "gateway_timeout", &reason),
                    connect: false,
                    retryable: false,
                });
            }
        };
    proxy
        .router
        .learn_from_response(resp.headers(), worker, proxy.router.table().now());
    if decision.set_affinity {
        if let Some(cookie) = proxy.router.affinity().and_then(|a| a.set_cookie(worker)) {
            resp.headers_mut()
                .append(header::SET_COOKIE, cookie.clone());
        }
    }
    if proxy.debug {
        resp.headers_mut()
            .insert(X_STICKY_WORKER.clone(), HeaderValue::from(worker));
    }

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
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
    Ok(resp.map(|body| ProxyBody::upstream(body, sniffer, in_flight)))
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

/// Requests refused before routing: CONNECT (this is no forward proxy). Conflicting
/// Content-Length / Transfer-Encoding framing never reaches a worker as sent: hyper parses
/// the body by Transfer-Encoding and the request is framed anew upstream.
fn refuse(req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
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

fn rewrite_request(
    req: &mut Request<UpstreamBody>,
    authority: &http::uri::Authority,
    peer: SocketAddr,
    scheme: &'static str,
    keep_upgrade: bool,
) {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path);
    let original_authority = req.uri().authority().cloned();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    // Workers speak HTTP/1.1; an HTTP/2 client's :authority becomes the Host they expect.
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    if !headers.contains_key(header::HOST) {
        if let Some(a) = original_authority {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
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
    append_forwarded_for(headers, peer);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1, including any the
/// `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = key::canonical_ip(peer.ip());
    let value = match headers.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()) {
        Some(prior) if !prior.is_empty() => {
            let mut v = Vec::with_capacity(prior.len() + 41);
            v.extend_from_slice(prior);
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip.to_string().as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(v))
        }
        _ => HeaderValue::from_maybe_shared(Bytes::from(ip.to_string())),
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

fn upstream_reason(e: &hyper_util::client::legacy::Error, worker: u16) -> String {
    use std::error::Error as _;
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        format!("worker {worker} unreachable: {cause}")
    } else {
        format!("worker {worker} failed: {cause}")
    }
}

/// A JSON error response: `{"error":"<code>","reason":"<reason>"}`.
pub fn error(status: StatusCode, code: &str, reason: &str) -> Response<ProxyBody> {
    let mut body = String::with_capacity(32 + code.len() + reason.len());
    body.push_str("{\"error\":\"");
    push_json_escaped(&mut body, code);
    body.push_str("\",\"reason\":\"");
    push_json_escaped(&mut body, reason);
    body.push_str("\"}");
    let mut resp = Response::new(ProxyBody::own(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
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
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let peer: SocketAddr = "[::ffff:10.0.0.9]:5000".parse().expect("addr");
        append_forwarded_for(&mut h, peer);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        append_forwarded_for(&mut h, "[::1]:1".parse().expect("addr"));
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
