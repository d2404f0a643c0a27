//! The general path: a request as an `http::Request` (hyper's HTTP/1 server, and the HTTP/2
//! streams the direct exchange does not take). Admitted and routed as every request is;
//! bodyless requests then take the raw exchange, the rest (uploads, upgrades, engine.io
//! handshakes whose reply is sniffed) hyper's client, under the same failure rules.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::answer::Answer;
use super::body::{ProxyBody, SidSniffer};
use super::failure::{self, Failure};
use super::peer::Peer;
use super::raw::{self, Outbound, Reply};
use super::route::Route;
use super::Proxy;
use crate::metrics::{self, Refused};
use crate::proxy::http1::head::ResponseHead;
use crate::proxy::io::framing::{Refusal, Verdict};
use crate::proxy::io::upgrade::{self, TunnelLimits};
use crate::proxy::upstream::body::{Stalled, UpstreamBody};
use crate::proxy::upstream::client::{response_parts, RawBody};
use crate::proxy::upstream::pool::{Lease, Pool, SendError};
use crate::proxy::upstream::write::{
    rewrite_map, set_sticky, strip_hop_by_hop, Forwarded, RequestWriter,
};
use crate::routing::key;
use crate::workers::InFlight;

/// What the requests of one client connection share.
#[derive(Debug)]
pub struct Client {
    /// The connection's peer.
    pub peer: Peer,
    /// The connection's smuggling watch.
    pub framing: Arc<Verdict>,
}

impl Client {
    /// The shared state of a connection from `peer`.
    pub fn new(proxy: &Proxy, peer: SocketAddr, framing: Arc<Verdict>) -> Self {
        Self {
            peer: Peer::new(proxy, peer),
            framing,
        }
    }

    /// What the worker is told of a request of this connection routed by `route`.
    pub fn forwarded(&self, proxy: &Proxy, route: &Route) -> Forwarded<'_> {
        self.peer.forwarded(proxy, route)
    }
}

/// Handles one client request end to end; never fails (errors become responses).
pub async fn handle(
    proxy: Arc<Proxy>,
    mut req: Request<UpstreamBody>,
    conn: Arc<Client>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    if let Some(refused) = bad_request(&req, &conn) {
        metrics::refused(Refused::BadRequest);
        log_answer(&proxy, conn.peer.ip(), &req, &refused);
        return Ok(refused.response());
    }
    authority_as_host(&mut req);
    let wants_upgrade = is_upgrade(&req);
    let connect = req.method() == Method::CONNECT;
    let client = match proxy.admit(conn.peer.ip(), req.headers(), connect, wants_upgrade) {
        Ok(client) => client,
        Err(refused) => {
            log_answer(&proxy, conn.peer.ip(), &req, &refused);
            return Ok(refused.response());
        }
    };
    let sniff = proxy.router.sticky() && key::is_engineio_handshake(req.uri());
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut head, body) = req.into_parts();
    to_origin_form(&mut head);
    let Some(route) = proxy.route(&head, client).await else {
        let answer = Answer::no_worker();
        log_answer(
            &proxy,
            conn.peer.ip(),
            &Request::from_parts(head, ()),
            &answer,
        );
        return Ok(answer.response());
    };
    if client_upgrade.is_none() && !sniff && body.is_end_stream() {
        return Ok(raw_exchange(&proxy, head, route, &conn).await);
    }
    let exchange = HyperExchange {
        proxy: &proxy,
        conn: &conn,
        client_upgrade,
        sniff,
    };
    // Boxed: rarer, and its future is large.
    Ok(Box::pin(exchange.run(Request::from_parts(head, body), route)).await)
}

/// The answer refusing a request no worker may get: framing the watch refused, a bad
/// `Host`, a transfer coding, a target in the wrong form.
fn bad_request<B>(req: &Request<B>, conn: &Client) -> Option<Answer> {
    if let Some(why) = conn.framing.next_request_refused() {
        return Some(match why {
            Refusal::Conflict => Answer::smuggling(),
            Refusal::Unframeable => Answer::unframeable(),
            Refusal::TooLarge => Answer::head_too_large(),
        });
    }
    super::admit::host_refusal(req.version(), req.headers())
        .or_else(|| super::admit::coding_refusal(req.headers()))
        .or_else(|| super::admit::target_refusal(req.method(), req.uri()).map(Answer::bad_target))
}

/// An access-log line for an answer of the proxy's own, before any worker was asked.
fn log_answer<B>(proxy: &Proxy, peer: std::net::IpAddr, req: &Request<B>, answer: &Answer) {
    if crate::access_log::get().is_some() {
        let client = proxy.client_ip(peer, req.headers());
        // A CONNECT's target is its authority.
        let target = match req.uri().path_and_query() {
            Some(p) => std::borrow::Cow::Borrowed(p.as_str()),
            None => std::borrow::Cow::Owned(req.uri().to_string()),
        };
        let method = req.method().as_str().as_bytes();
        let line = (method, target.as_bytes());
        crate::access_log::own_answer(client, line, answer.status, Duration::ZERO);
    }
}

/// An absolute-form target (`GET http://host/path`) names the host the request is for:
/// its authority replaces the `Host` field before routing (RFC 9112 3.2.2), so the worker,
/// routing and the target agree. (Over HTTP/2 the `:authority` already is the `Host`.)
fn authority_as_host<B>(req: &mut Request<B>) {
    if req.uri().scheme().is_none() {
        return;
    }
    // `admit::target_refusal` checked that it is a host[:port].
    let host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        req.headers_mut().insert(header::HOST, host);
    }
}

/// Origin-form target, HTTP/1.1 (workers speak it), and an HTTP/2 `:authority` as the `Host`
/// they expect.
fn to_origin_form(head: &mut Parts) {
    let authority = head.uri.authority().cloned();
    if head.uri.scheme().is_some() || authority.is_some() {
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        head.uri = Uri::from(path);
    }
    head.version = Version::HTTP_11;
    if !head.headers.contains_key(header::HOST) {
        if let Some(host) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            head.headers.insert(header::HOST, host);
        }
    }
}

/// A bodyless request on a pooled raw connection.
async fn raw_exchange(
    proxy: &Proxy,
    mut head: Parts,
    route: Route,
    conn: &Client,
) -> Response<ProxyBody> {
    // Fields a `Connection` header names go; the writer drops the rest by role.
    strip_hop_by_hop(&mut head.headers);
    let mut out = Outgoing { head: &head, conn };
    let mut resp_head = ResponseHead::default();
    let reply = match raw::exchange(proxy, route, &mut out, &mut resp_head).await {
        Ok(reply) => reply,
        Err(answer) => return answer.unwrap_or_else(Answer::client_gone).response(),
    };
    reply.learn(proxy, &resp_head);
    let Reply {
        route,
        up,
        head_len,
        pool,
        in_flight,
    } = reply;
    let mut parts = match response_parts(&resp_head, &up.rbuf[..head_len]) {
        Ok(parts) => parts,
        Err(why) => {
            let failure = Failure::Invalid(why);
            tracing::warn!(worker = route.worker(), error = %failure.reason(route.worker()), "upstream request failed");
            return failure
                .answer(route.worker())
                .unwrap_or_else(Answer::client_gone)
                .response();
        }
    };
    proxy.decorations(&route.decision).apply(&mut parts.headers);
    let body = RawBody::new(up, &resp_head, head_len, pool);
    Response::from_parts(parts, ProxyBody::raw(body, in_flight))
}

/// A request of the general path, for the raw exchange.
struct Outgoing<'a> {
    head: &'a Parts,
    conn: &'a Client,
}

impl Outbound for Outgoing<'_> {
    fn write(&self, proxy: &Proxy, route: &Route, w: &mut Vec<u8>) {
        let target = self.head.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut writer = RequestWriter::start(
            w,
            self.head.method.as_str().as_bytes(),
            target.as_bytes(),
            proxy.config.underscores,
        );
        for (name, value) in &self.head.headers {
            writer.field(name.as_str().as_bytes(), value.as_bytes());
        }
        writer.finish(&self.conn.forwarded(proxy, route));
    }

    fn request_line(&self) -> (&[u8], &[u8]) {
        let target = self.head.uri.path_and_query().map_or("/", |p| p.as_str());
        (self.head.method.as_str().as_bytes(), target.as_bytes())
    }

    fn reroute(&mut self, proxy: &Proxy, failed: &Route) -> Option<Route> {
        proxy.reroute(self.head, failed)
    }

    /// Interim answers are dropped, as hyper's client does.
    fn interim(
        &mut self,
        _raw: &[u8],
        _head: &ResponseHead,
    ) -> impl Future<Output = Result<(), ()>> {
        std::future::ready(Ok(()))
    }
}

/// A request on hyper's client: an upload, an upgrade, or an engine.io handshake.
struct HyperExchange<'a> {
    proxy: &'a Arc<Proxy>,
    conn: &'a Client,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    sniff: bool,
}

impl HyperExchange<'_> {
    async fn run(mut self, req: Request<UpstreamBody>, mut route: Route) -> Response<ProxyBody> {
        let proxy = self.proxy;
        let upgrade = self.client_upgrade.is_some();
        // A bodyless idempotent request (a sniffed handshake) may be sent again after its
        // connection broke: its head is copied before it is rewritten.
        let repeatable = failure::idempotent(req.method().as_str().as_bytes())
            && !upgrade
            && req.body().is_end_stream();
        let copy = repeatable.then(|| copy_head(req.headers(), req.method(), req.uri()));
        let (mut head, body) = req.into_parts();
        // For the access log: kept only when it is on.
        let (copy_method, copy_target) = match crate::access_log::get() {
            Some(_) => (
                head.method.clone(),
                head.uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
            ),
            None => (Method::GET, String::new()),
        };
        rewrite_map(
            &mut head.headers,
            &self.conn.forwarded(proxy, &route),
            upgrade,
            proxy.config.underscores,
        );
        // The proxy's own answer after a failure, with its access-log line.
        // Like the request line above, only read when the access log is on.
        let started = crate::access_log::get().map(|_| std::time::Instant::now());
        let logged = |route: &Route, answer: Answer| {
            let line = (copy_method.as_str().as_bytes(), copy_target.as_bytes());
            let took = started.map_or(Duration::ZERO, |s| s.elapsed());
            crate::access_log::own_answer(route.client, line, answer.status, took);
            answer.response()
        };
        let (body, progress) = body.watched(proxy.config.body_timeout);
        let mut req = Request::from_parts(head, body);
        let mut sends = 0;
        loop {
            sends += 1;
            set_sticky(req.headers_mut(), route.decision.outcome);
            let pending = match proxy.admit_to(&route) {
                Ok(pending) => pending,
                Err(shed) => return logged(&route, shed),
            };
            let (pool, in_flight) = proxy.target(&route);
            let sent = std::time::Instant::now();
            let sending = pool
                .send(req, proxy.response_timeout, progress.as_deref())
                .await;
            drop(pending);
            let (failure, back) = match sending {
                Ok((resp, lease)) => {
                    let took = sent.elapsed();
                    metrics::response(route.worker(), resp.status().as_u16(), took);
                    if let Some(log) = crate::access_log::get() {
                        log.record(&crate::access_log::Entry {
                            client: route.client,
                            method: copy_method.as_str().as_bytes(),
                            path: copy_target.as_bytes(),
                            status: resp.status().as_u16(),
                            routed: Some((route.worker(), route.decision.outcome)),
                            took,
                        });
                    }
                    let giveback = (pool.clone(), lease);
                    return self.respond(resp, giveback, &route, in_flight);
                }
                Err(SendError::Connect(e, back)) => (Failure::connecting(e), Some(*back)),
                Err(SendError::Failed(e)) if client_body_failed(&*e) => {
                    // Not the worker's fault: answered 400 (408 for a pause), logged at debug.
                    if let Some(limit) = stalled(&*e) {
                        tracing::debug!(peer = %self.conn.peer, "request body paused past {limit:?}");
                        return logged(&route, super::admit::body_stalled(limit));
                    }
                    let failure = Failure::ClientBody(innermost(&*e));
                    tracing::debug!(peer = %self.conn.peer, error = %failure.reason(route.worker()), "request refused");
                    let answer = failure.answer(route.worker());
                    return logged(&route, answer.unwrap_or_else(Answer::client_gone));
                }
                Err(SendError::Failed(e)) => match &copy {
                    Some(copy) => (
                        Failure::Broken(std::io::Error::other(innermost(&*e))),
                        Some(self.rebuild(copy, &route)),
                    ),
                    None => (Failure::Failed(innermost(&*e)), None),
                },
                Err(SendError::TimedOut) => (Failure::TimedOut(proxy.response_timeout), None),
            };
            drop(in_flight);
            let parts = back.map(Request::into_parts);
            let req_info = failure::Request { repeatable, sends };
            let next = proxy
                .after_failure(&route, &failure, req_info, |failed| {
                    parts
                        .as_ref()
                        .and_then(|(head, _)| proxy.reroute(head, failed))
                })
                .await;
            match (next, parts) {
                (Ok(next), Some((head, body))) => {
                    route = next;
                    req = Request::from_parts(head, body);
                }
                // The table resends nothing it has not got back.
                (Ok(_), None) => {
                    let answer = failure.answer(route.worker());
                    return logged(&route, answer.unwrap_or_else(Answer::client_gone));
                }
                (Err(answer), _) => {
                    return logged(&route, answer.unwrap_or_else(Answer::client_gone));
                }
            }
        }
    }

    /// The copied head, rewritten again, with no body.
    fn rebuild(&self, copy: &Parts, route: &Route) -> Request<UpstreamBody> {
        let mut head = copy_head(&copy.headers, &copy.method, &copy.uri);
        rewrite_map(
            &mut head.headers,
            &self.conn.forwarded(self.proxy, route),
            false,
            self.proxy.config.underscores,
        );
        Request::from_parts(head, UpstreamBody::Empty)
    }

    /// The worker's response: decorated, learnt from, and turned into a tunnel after a 101.
    fn respond(
        &mut self,
        mut resp: Response<Incoming>,
        giveback: (Arc<Pool>, Lease),
        route: &Route,
        in_flight: InFlight,
    ) -> Response<ProxyBody> {
        let proxy = self.proxy;
        let worker = route.worker();
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Once a connection switches protocols its bytes are no longer HTTP/1.
            self.conn.framing.stop();
        }
        proxy.learn_response(resp.headers(), route.decision.pin());
        proxy.decorations(&route.decision).apply(resp.headers_mut());
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = self.client_upgrade.take() {
                // The worker connection becomes the tunnel: it never goes back to the pool.
                drop(giveback);
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                let limits = TunnelLimits {
                    idle: proxy.ws_idle_timeout,
                    drain: proxy.workers.tunnel_token(worker, route.index),
                    jitter: proxy.close_jitter,
                };
                upgrade::spawn_tunnel(client_upgrade, upstream_upgrade, worker, limits, in_flight);
                return resp.map(|_| ProxyBody::empty());
            }
        }
        strip_hop_by_hop(resp.headers_mut());
        let sniffer = (self.sniff && resp.status() == StatusCode::OK)
            .then(|| SidSniffer::new(proxy.router.clone(), route.decision.pin()));
        resp.map(|body| ProxyBody::upstream(body, sniffer, in_flight, giveback))
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

/// True when hyper's client failed because the request body it streamed failed (hyper's
/// only user error with a cause): the client's chunking was malformed, or the client
/// stopped sending.
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_user() && std::error::Error::source(h).is_some())
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The pause limit, when `e` is a client's request body that paused past it.
fn stalled(e: &(dyn std::error::Error + 'static)) -> Option<std::time::Duration> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(Stalled(limit)) = e.downcast_ref::<Stalled>() {
            return Some(*limit);
        }
        cause = e.source();
    }
    None
}

/// A request head (without extensions) for a resend.
fn copy_head(headers: &http::HeaderMap, method: &Method, uri: &Uri) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = headers.clone();
    req.into_parts().0
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
