//! The direct HTTP/1.1 path: the common request (HTTP/1.1, a small fixed-length body or
//! none, no upgrade) is parsed in place, routed, and forwarded with its head rewritten
//! byte for byte into one buffer; the worker's response head is rewritten the same way and
//! its body passed through as it comes (chunked bodies included, never re-encoded).
//! No header map, no task or channel per exchange, no allocation in the steady state.
//!
//! Everything else goes to hyper: the first request the direct path does not take (an
//! upgrade, `Expect`, a chunked or large upload, HTTP/1.0, HTTP/2, a malformed head, a
//! hold, no worker up, a refused client, an engine.io handshake whose reply is sniffed)
//! hands the connection over, with the bytes read so far put back in front, and hyper's
//! path serves it from there on. Failures that hyper's path knows how to retry (a worker
//! that cannot be reached, an idempotent request whose reused connection broke before any
//! answer) are handed over the same way, before anything was answered.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, COOKIE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::proxy::exchange::Proxy;
use crate::proxy::http1::chunked::Chunks;
use crate::proxy::http1::head::{Framing, Parse, RequestHead, ResponseHead, Role};
use crate::proxy::http1::push_header;
use crate::proxy::io::rewind::Rewind;
use crate::proxy::upstream::client::{read_head, send_request, NoResponse};
use crate::proxy::upstream::pool::{until, RawConn};
use crate::routing::{key, Decision};
use crate::workers::InFlight;

/// Most bytes read at once while a request head is incomplete (on the stack).
const HEAD_READ: usize = 4 * 1024;

/// Response head buffer kept between requests; a larger one (grown for a body) is let go.
const KEPT_OUT_BUFFER: usize = 4 * 1024;

/// How long closing a client connection may take (a TLS close_notify to a client that
/// reads nothing more).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// How the direct path left a connection.
#[derive(Debug)]
pub enum Served<I> {
    /// Closed: the client is done, an error, the head deadline, or shutdown.
    Closed,
    /// Hyper serves the rest of the connection, starting with the bytes put back.
    HandOver(Rewind<I>),
}

/// Serves requests from `io` until the connection ends or hyper must take over.
pub async fn serve<I>(
    io: I,
    proxy: &Arc<Proxy>,
    peer: SocketAddr,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = ClientConn {
        io,
        proxy,
        peer,
        forwarded_for: key::canonical_ip(peer.ip()).to_string(),
        buf: BytesMut::new(),
        out: Vec::with_capacity(1024),
        req: RequestHead::default(),
        routing_map: http::HeaderMap::new(),
        resp: ResponseHead::default(),
        timer: Box::pin(tokio::time::sleep_until(Instant::now())),
    };
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    loop {
        match conn.next_request(cancelled.as_mut()).await {
            Next::Request(msg) => match conn.exchange(&msg, shutdown.is_cancelled()).await {
                Done::KeepAlive => conn.rest(),
                Done::Close => {
                    // A clean close (TLS close_notify, then FIN) after the last answer.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.io.shutdown()).await;
                    return Served::Closed;
                }
                Done::HandOver => return conn.hand_over(Some(msg)),
            },
            Next::Closed => return Served::Closed,
            Next::HandOver => return conn.hand_over(None),
        }
    }
}

enum Next {
    /// A whole request (head and body) for the direct path.
    Request(Bytes),
    Closed,
    HandOver,
}

enum Done {
    KeepAlive,
    Close,
    /// Nothing was answered: hyper's path takes the request (and the connection).
    HandOver,
}

struct ClientConn<'p, I> {
    io: I,
    proxy: &'p Arc<Proxy>,
    peer: SocketAddr,
    forwarded_for: String,
    /// Bytes read from the client and not yet handled.
    buf: BytesMut,
    /// The response head (and the start of the body) being written.
    out: Vec<u8>,
    req: RequestHead,
    /// The header map routing reads, kept for the next request.
    routing_map: http::HeaderMap,
    resp: ResponseHead,
    /// The head deadline while waiting for a request (and the rest of its body); the
    /// worker's response deadline is its connection's.
    timer: Pin<Box<Sleep>>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> ClientConn<'_, I> {
    /// Between requests: lets go of what an idle connection need not hold (the read
    /// buffer when nothing is pipelined, an output buffer grown for a large response).
    fn rest(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > KEPT_OUT_BUFFER {
            self.out = Vec::with_capacity(1024);
        }
    }

    fn hand_over(self, msg: Option<Bytes>) -> Served<I> {
        let pre = match msg {
            None => self.buf.freeze(),
            Some(msg) if self.buf.is_empty() => msg,
            Some(msg) => {
                let mut all = BytesMut::with_capacity(msg.len() + self.buf.len());
                all.extend_from_slice(&msg);
                all.extend_from_slice(&self.buf);
                all.freeze()
            }
        };
        Served::HandOver(Rewind::new(self.io, pre))
    }

    /// Reads the next request whole, within the head deadline for its head.
    async fn next_request(&mut self, mut cancelled: Pin<&mut impl Future<Output = ()>>) -> Next {
        let limit = self.proxy.config.header_timeout;
        let max_head = self.proxy.config.max_header_size;
        self.timer.as_mut().reset(Instant::now() + limit);
        let head_len = loop {
            if !self.buf.is_empty() {
                match self.req.parse(&self.buf) {
                    Parse::Complete(n) if self.req.plain && n <= max_head => break n,
                    Parse::Complete(_) | Parse::Invalid => return Next::HandOver,
                    // Too large a head: hyper answers 431.
                    Parse::Partial if self.buf.len() > max_head => return Next::HandOver,
                    Parse::Partial => {}
                }
            }
            let idle = self.buf.is_empty();
            let (io, buf, timer) = (&mut self.io, &mut self.buf, &mut self.timer);
            let outcome = poll_fn(|cx| {
                // Read on the stack, kept on the heap only once bytes came: a connection
                // waiting for its next request holds no read buffer.
                let mut stack = [const { std::mem::MaybeUninit::<u8>::uninit() }; HEAD_READ];
                let mut read = ReadBuf::uninit(&mut stack);
                if let Poll::Ready(r) = Pin::new(&mut *io).poll_read(cx, &mut read) {
                    buf.extend_from_slice(read.filled());
                    return Poll::Ready(Some(r.map(|()| read.filled().len())));
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                // On shutdown an idle connection closes; a started head is still read.
                if idle && cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            match outcome {
                Some(Ok(n)) if n > 0 => {}
                _ => return Next::Closed,
            }
        };
        let total = head_len + self.req.content_length as usize;
        if self.buf.len() < total {
            // The rest of the body, within the response timeout (hyper's path streams it to
            // the worker under that deadline).
            let limit = self.proxy.response_timeout;
            self.timer.as_mut().reset(Instant::now() + limit);
            while self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
                match until(&mut self.timer, read).await {
                    Some(Ok(n)) if n > 0 => {}
                    _ => return Next::Closed,
                }
            }
        }
        Next::Request(self.buf.split_to(total).freeze())
    }

    /// Routes and forwards one request, and passes the response back.
    async fn exchange(&mut self, msg: &Bytes, shutting_down: bool) -> Done {
        let Ok(uri) = http::Uri::from_maybe_shared(msg.slice(self.req.target.clone())) else {
            return Done::HandOver;
        };
        if self.proxy.router.sticky() && key::is_engineio_handshake(&uri) {
            return Done::HandOver;
        }
        // What routing reads, in a head of its own whose header map is the connection's,
        // cleared and reused: no allocation per request.
        let mut view = http::Request::new(()).into_parts().0;
        view.uri = uri;
        view.headers = std::mem::take(&mut self.routing_map);
        self.routing_headers(msg, &mut view.headers);
        let done = self.forward(msg, &view, shutting_down).await;
        self.routing_map = view.headers;
        self.routing_map.clear();
        done
    }

    async fn forward(
        &mut self,
        msg: &Bytes,
        view: &http::request::Parts,
        shutting_down: bool,
    ) -> Done {
        let proxy = self.proxy;
        let client = proxy.client_ip(self.peer.ip(), &view.headers);
        if !proxy.admits(client) {
            return Done::HandOver;
        }
        let now = proxy.router.table().now();
        let hold = proxy.hold.is_some();
        let decision = match proxy.router.route(view, client, &proxy.workers, now, hold) {
            Some(d) if !d.wait => d,
            _ => return Done::HandOver,
        };
        let worker = decision.worker;
        let Some((index, _)) = proxy.workers.active(worker) else {
            return Done::HandOver;
        };
        if proxy.debug {
            tracing::debug!(worker, outcome = ?decision.outcome, uri = %view.uri, "route");
        }
        let pool = &proxy.pools[usize::from(worker)][index];
        let in_flight = InFlight::new(proxy.workers.clone(), worker, index);
        let (mut up, reused) = match pool.take_raw() {
            Some(up) => (up, true),
            None => match pool.connect_raw().await {
                Ok(up) => (up, false),
                Err(e) => {
                    // Passive health: out of rotation at once. Hyper's path routes again
                    // when there is another worker to try; else the client learns why.
                    proxy.workers.set_healthy(worker, false);
                    let reason = format!("worker {worker} unreachable: {e}");
                    tracing::warn!(worker, error = %reason, "upstream request failed");
                    let now = proxy.router.table().now();
                    if proxy
                        .router
                        .route(view, client, &proxy.workers, now, false)
                        .is_some()
                    {
                        return Done::HandOver;
                    }
                    drop(in_flight);
                    return self.answer_error(msg, 502, "proxy_error", &reason).await;
                }
            },
        };
        self.write_request(msg, &mut up.wbuf, &decision);
        let is_head = &msg[self.req.method.clone()] == b"HEAD";
        let head_len = match self.response_head(&mut up, is_head).await {
            Ok(n) => n,
            Err(NoResponse::Broken(e)) => {
                // Sent again by hyper's path only when that is safe: nothing came back, and
                // the method may be repeated (a stale reused connection, most likely).
                if self.req.idempotent(msg) && self.req.content_length == 0 {
                    tracing::debug!(worker, reused, error = %e, "worker connection broke; handing over");
                    return Done::HandOver;
                }
                let reason = format!("worker {worker} failed: {e}");
                tracing::warn!(worker, error = %reason, "upstream request failed");
                return self.answer_error(msg, 502, "proxy_error", &reason).await;
            }
            Err(NoResponse::Invalid(why)) => {
                let reason = format!("worker {worker} failed: {why}");
                tracing::warn!(worker, error = %reason, "upstream request failed");
                return self.answer_error(msg, 502, "proxy_error", &reason).await;
            }
            Err(NoResponse::TimedOut) => {
                let reason = format!(
                    "worker {worker} sent no response headers within {:?}",
                    proxy.response_timeout
                );
                tracing::warn!(worker, "{reason}");
                return self
                    .answer_error(msg, 504, "gateway_timeout", &reason)
                    .await;
            }
        };
        for value in self.resp.set_cookies(&up.rbuf[..head_len]) {
            proxy.router.learn_set_cookie(value, worker, now);
        }
        let framing = self.resp.framing;
        let keep_client = !self.req.close && !shutting_down && framing != Framing::UntilClose;
        self.write_response_head(&up.rbuf[..head_len], &decision, keep_client);
        up.rbuf.advance(head_len);
        let worker_keeps = self.resp.keep_alive;
        match self.pass_body(&mut up, framing).await {
            Ok(complete) => {
                drop(in_flight);
                if complete && worker_keeps {
                    pool.put_raw(up);
                }
                if keep_client {
                    Done::KeepAlive
                } else {
                    Done::Close
                }
            }
            Err(_) => Done::Close,
        }
    }

    /// A header map of just what routing reads: cookies, the configured key headers, and
    /// `X-Forwarded-For` when a trusted proxy may name the client.
    fn routing_headers(&self, msg: &Bytes, headers: &mut http::HeaderMap) {
        let proxy = self.proxy;
        if !proxy.router.sticky() && proxy.trusted.is_none() {
            return;
        }
        for f in &self.req.fields {
            let name = &msg[f.name.clone()];
            let named = if name.eq_ignore_ascii_case(b"cookie") {
                Some(&COOKIE)
            } else if proxy.trusted.is_some() && name.eq_ignore_ascii_case(b"x-forwarded-for") {
                Some(&X_FORWARDED_FOR)
            } else {
                proxy
                    .router
                    .key_headers()
                    .find(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
            };
            if let Some(name) = named {
                if let Ok(v) = HeaderValue::from_maybe_shared(msg.slice(f.value.clone())) {
                    headers.append(name.clone(), v);
                }
            }
        }
    }

    /// The request for the worker: the client's head with hop-by-hop headers dropped and
    /// `X-Forwarded-*` and `X-Sticky` set, then the body.
    fn write_request(&self, msg: &[u8], w: &mut Vec<u8>, decision: &Decision) {
        let req = &self.req;
        w.clear();
        w.extend_from_slice(&msg[req.method.clone()]);
        w.push(b' ');
        w.extend_from_slice(&msg[req.target.clone()]);
        w.extend_from_slice(b" HTTP/1.1\r\n");
        for f in req.fields.iter().filter(|f| f.role == Role::Keep) {
            push_header(w, &msg[f.name.clone()], &msg[f.value.clone()]);
        }
        w.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prior) = req.forwarded_for.clone().map(|r| &msg[r]) {
            if !prior.is_empty() {
                w.extend_from_slice(prior);
                w.extend_from_slice(b", ");
            }
        }
        w.extend_from_slice(self.forwarded_for.as_bytes());
        w.extend_from_slice(b"\r\n");
        push_header(w, b"x-forwarded-proto", self.proxy.scheme.as_bytes());
        if let Some(host) = req.host.clone() {
            push_header(w, b"x-forwarded-host", &msg[host]);
        }
        push_header(w, b"x-sticky", decision.outcome.header_value().as_bytes());
        w.extend_from_slice(b"\r\n");
        let body = msg.len() - req.content_length as usize;
        w.extend_from_slice(&msg[body..]);
    }

    /// Sends the request in `up.wbuf` and reads the response head into `up.rbuf` (1xx
    /// heads are passed on as they come); the head's length.
    async fn response_head(
        &mut self,
        up: &mut RawConn,
        is_head: bool,
    ) -> Result<usize, NoResponse> {
        let limit = self.proxy.response_timeout;
        up.deadline.as_mut().reset(Instant::now() + limit);
        send_request(up).await?;
        let mut answered = false;
        loop {
            let n = match read_head(up, &mut self.resp, is_head).await {
                Ok(n) => n,
                // After an interim answer was passed on, the client has seen part of one.
                Err(NoResponse::Broken(_)) if answered => {
                    return Err(NoResponse::Invalid("connection closed mid-head"))
                }
                Err(e) => return Err(e),
            };
            match self.resp.status {
                101 => return Err(NoResponse::Invalid("switched protocols unasked")),
                100..=199 => {
                    // 103 Early Hints and the like go to the client as they come.
                    answered = true;
                    self.write_head(&up.rbuf[..n]);
                    let passed = self.io.write_all(&self.out).await;
                    if passed.is_err() || self.io.flush().await.is_err() {
                        return Err(NoResponse::Invalid("client went away"));
                    }
                    up.rbuf.advance(n);
                }
                _ => return Ok(n),
            }
        }
    }

    /// The response head for the client: the worker's, hop-by-hop headers dropped, the
    /// affinity cookie added when due.
    fn write_response_head(&mut self, raw: &[u8], decision: &Decision, keep_client: bool) {
        self.write_head(raw);
        let o = &mut self.out;
        let router = &self.proxy.router;
        if decision.set_affinity {
            if let Some(cookie) = router
                .affinity()
                .and_then(|a| a.set_cookie(decision.worker))
            {
                push_header(o, b"set-cookie", cookie.as_bytes());
            }
        }
        if self.proxy.debug {
            let worker = decision.worker.to_string();
            push_header(o, b"x-sticky-worker", worker.as_bytes());
        }
        if !keep_client {
            push_header(o, b"connection", b"close");
        }
        o.extend_from_slice(b"\r\n");
    }

    /// The worker's response head without its hop-by-hop headers, into `out`, unfinished
    /// (no empty line yet).
    fn write_head(&mut self, raw: &[u8]) {
        let o = &mut self.out;
        o.clear();
        o.extend_from_slice(b"HTTP/1.1 ");
        o.extend_from_slice(&raw[self.resp.status_line.clone()]);
        o.extend_from_slice(b"\r\n");
        let debug = self.proxy.debug;
        for f in self.resp.fields.iter().filter(|f| f.role == Role::Keep) {
            let name = &raw[f.name.clone()];
            // With --debug the proxy's X-Sticky-Worker replaces the worker's.
            if debug && name.eq_ignore_ascii_case(b"x-sticky-worker") {
                continue;
            }
            push_header(o, name, &raw[f.value.clone()]);
        }
        if self.resp.status < 200 {
            o.extend_from_slice(b"\r\n");
        }
    }

    /// Passes the response body on (after the head in `out`); true when it ended where its
    /// framing said, with nothing after it (the worker connection may be reused).
    async fn pass_body(&mut self, up: &mut RawConn, framing: Framing) -> io::Result<bool> {
        let mut left = match framing {
            Framing::Empty => 0,
            Framing::Length(n) => n,
            Framing::Chunked | Framing::UntilClose => u64::MAX,
        };
        let mut chunks = Chunks::default();
        loop {
            let take = match framing {
                Framing::Chunked => match chunks.feed(&up.rbuf) {
                    Ok(Some(end)) => {
                        left = 0;
                        end
                    }
                    Ok(None) => up.rbuf.len(),
                    Err(_) => return Err(io::Error::other("malformed chunked body")),
                },
                Framing::UntilClose => up.rbuf.len(),
                Framing::Empty | Framing::Length(_) => {
                    let take = left.min(up.rbuf.len() as u64);
                    left -= take;
                    take as usize
                }
            };
            self.out.extend_from_slice(&up.rbuf[..take]);
            up.rbuf.advance(take);
            if !self.out.is_empty() {
                self.io.write_all(&self.out).await?;
                self.out.clear();
                // Before waiting on the worker again: a TLS stream may hold the records.
                self.io.flush().await?;
            }
            if left == 0 {
                return Ok(up.rbuf.is_empty());
            }
            up.rbuf.clear();
            if up.stream.read_buf(&mut up.rbuf).await? == 0 {
                return match framing {
                    Framing::UntilClose => Ok(false),
                    _ => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "worker closed mid-body",
                    )),
                };
            }
        }
    }

    /// Answers with an error of the proxy's own; the request was read whole, so the
    /// connection stays open.
    async fn answer_error(&mut self, msg: &[u8], status: u16, code: &str, reason: &str) -> Done {
        let body = crate::proxy::exchange::general::error_json(code, reason);
        let o = &mut self.out;
        o.clear();
        o.extend_from_slice(b"HTTP/1.1 ");
        o.extend_from_slice(status.to_string().as_bytes());
        o.push(b' ');
        let canonical = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        o.extend_from_slice(canonical.as_bytes());
        o.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        o.extend_from_slice(body.len().to_string().as_bytes());
        o.extend_from_slice(b"\r\n");
        if self.req.close {
            o.extend_from_slice(b"connection: close\r\n");
        }
        o.extend_from_slice(b"\r\n");
        if &msg[self.req.method.clone()] != b"HEAD" {
            o.extend_from_slice(body.as_bytes());
        }
        if self.io.write_all(&self.out).await.is_err() || self.io.flush().await.is_err() {
            return Done::Close;
        }
        if self.req.close {
            Done::Close
        } else {
            Done::KeepAlive
        }
    }
}
