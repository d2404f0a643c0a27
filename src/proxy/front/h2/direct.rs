//! The direct exchange of an HTTP/2 stream, as the direct HTTP/1.1 path does it: a bodyless
//! request that needs nothing special is routed while its header block is decoded, written
//! to a pooled socket straight from its fields (no header map, no `http::Request`), and the
//! worker's response head is encoded into HPACK straight from the bytes it came in.
//! Anything else (a body, a hold, an engine.io handshake to sniff, a refused client, no
//! worker up, a custom hash) takes the general path. Admission, routing, resends and
//! answers are the exchange's, as for every front.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header;
use http::Method;

use super::{hpack, Fields, RequestHead};
use crate::proxy::exchange::body::ProxyBody;
use crate::proxy::exchange::general::Client;
use crate::proxy::exchange::raw::{self, Outbound, Reply};
use crate::proxy::exchange::route::{Route, Routing};
use crate::proxy::exchange::Proxy;
use crate::proxy::http1::head::{valid_host, ResponseHead, Role};
use crate::proxy::upstream::client::RawBody;
use crate::proxy::upstream::write::RequestWriter;
use crate::routing::key;

/// What a stream's exchange answers with.
pub enum Answer {
    /// A response (the general path's, or an answer of the proxy's own).
    Response(http::Response<ProxyBody>),
    /// A header block already encoded, and the body.
    Encoded { block: Vec<u8>, body: ProxyBody },
}

/// A request routed while its header block was decoded.
pub struct Plan {
    route: Route,
}

/// Admits and routes a bodyless request; `None` when it takes the general path. `routing`
/// is the connection's header map for what routing reads, left empty again.
pub fn plan(
    proxy: &Proxy,
    peer: SocketAddr,
    fields: &Fields,
    head: &RequestHead,
    routing: &mut http::HeaderMap,
) -> Option<Plan> {
    // A malformed `:authority`: the general path refuses it (`admit::host_refusal`).
    let bad_host = head
        .host
        .as_ref()
        .is_some_and(|h| !valid_host(h.as_bytes()));
    if head.method == Method::CONNECT
        || bad_host
        || (proxy.router.sticky() && key::is_engineio_handshake(&head.uri))
    {
        return None;
    }
    let mut view = http::Request::new(()).into_parts().0;
    view.uri = head.uri.clone();
    view.headers = std::mem::take(routing);
    routing_headers(proxy, fields, head, &mut view.headers);
    // A refused client, a hold or no worker up: the general path answers (and waits).
    let routed = match proxy.admit(peer.ip(), &view.headers, false, false) {
        Ok(client) => match proxy.route_now(&view, client) {
            Routing::Go(route) => Some(Plan { route }),
            Routing::Wait(_) | Routing::NoWorker | Routing::Lookup => None,
        },
        Err(_) => None,
    };
    *routing = view.headers;
    routing.clear();
    routed
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

/// A stream's request, for the raw exchange.
struct Outgoing {
    fields: Fields,
    head: RequestHead,
    client: Arc<Client>,
}

impl Outbound for Outgoing {
    /// Origin form, HTTP/1.1, `Host` from `:authority`, the cookie crumbs joined.
    fn write(&self, proxy: &Proxy, route: &Route, w: &mut Vec<u8>) {
        let head = &self.head;
        let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut writer = RequestWriter::start(
            w,
            head.method.as_str().as_bytes(),
            target.as_bytes(),
            proxy.config.underscores,
        );
        if let Some(host) = &head.host {
            writer.host(host.as_bytes());
        }
        for (name, value) in &self.fields.headers {
            writer.field(name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(cookie) = &head.cookie {
            writer.field(b"cookie", cookie.as_bytes());
        }
        writer.finish(&self.client.forwarded(proxy, route));
    }

    fn request_line(&self) -> (&[u8], &[u8]) {
        let target = self.head.uri.path_and_query().map_or("/", |p| p.as_str());
        (self.head.method.as_str().as_bytes(), target.as_bytes())
    }

    fn reroute(&mut self, proxy: &Proxy, failed: &Route) -> Option<Route> {
        let mut view = http::Request::new(()).into_parts().0;
        view.uri = self.head.uri.clone();
        routing_headers(proxy, &self.fields, &self.head, &mut view.headers);
        proxy.reroute(&view, failed)
    }

    /// Interim answers are dropped, as the general path does.
    fn interim(
        &mut self,
        _raw: &[u8],
        _head: &ResponseHead,
    ) -> impl Future<Output = Result<(), ()>> {
        std::future::ready(Ok(()))
    }
}

/// Sends a planned request and encodes the answer.
pub async fn run(
    proxy: Arc<Proxy>,
    plan: Plan,
    fields: Fields,
    head: RequestHead,
    client: Arc<Client>,
) -> Answer {
    let mut out = Outgoing {
        fields,
        head,
        client,
    };
    let mut resp = ResponseHead::default();
    match raw::exchange(&proxy, plan.route, &mut out, &mut resp).await {
        Ok(reply) => encoded(&proxy, reply, &resp),
        Err(answer) => {
            let answer = answer.unwrap_or_else(crate::proxy::exchange::answer::Answer::client_gone);
            Answer::Response(answer.response())
        }
    }
}

/// The worker's answer: learnt from, its head encoded with the proxy's decorations.
fn encoded(proxy: &Arc<Proxy>, reply: Reply<'_>, resp: &ResponseHead) -> Answer {
    reply.learn(proxy, resp);
    let Reply {
        route,
        up,
        head_len,
        pool,
        in_flight,
    } = reply;
    let raw = &up.rbuf[..head_len];
    let block = encode_response(proxy, resp, raw, &route);
    let body = RawBody::new(up, resp, head_len, pool);
    Answer::Encoded {
        block,
        body: ProxyBody::raw(body, in_flight),
    }
}

/// The worker's response head as an HPACK block: its status and the fields it keeps, then
/// the proxy's decorations.
fn encode_response(proxy: &Proxy, resp: &ResponseHead, raw: &[u8], route: &Route) -> Vec<u8> {
    let decorations = proxy.decorations(&route.decision);
    let mut block = Vec::with_capacity(raw.len());
    hpack::encode_status(resp.status, &mut block);
    for f in resp.fields.iter().filter(|f| f.role == Role::Keep) {
        let name = &raw[f.name.clone()];
        if name.eq_ignore_ascii_case(b"transfer-encoding") || decorations.replaces(name) {
            continue;
        }
        hpack::encode_raw_field(name, &raw[f.value.clone()], &mut block);
    }
    decorations.each(|name, value| hpack::encode_raw_field(name, value, &mut block));
    block
}
