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
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, COOKIE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::{self, Refused};
use crate::proxy::exchange::admit;
use crate::proxy::exchange::answer::Answer;
use crate::proxy::exchange::decorate::Decorations;
use crate::proxy::exchange::peer::Peer;
use crate::proxy::exchange::raw::{self, Outbound, Reply};
use crate::proxy::exchange::route::Route;
use crate::proxy::exchange::Proxy;
use crate::proxy::http1::chunked::Chunks;
use crate::proxy::http1::head::{Framing, Parse, RequestHead, ResponseHead, Role};
use crate::proxy::http1::push_header;
use crate::proxy::io::close;
use crate::proxy::io::rewind::Rewind;
use crate::proxy::upstream::pool::{until, RawConn};
use crate::proxy::upstream::write::RequestWriter;
use crate::routing::key;

/// Most bytes read at once while a request head is incomplete (on the stack).
const HEAD_READ: usize = 4 * 1024;

/// Read size for the rest of a response body longer than this: a quarter of the reads and
/// writes of the pooled connection's usual 16 KiB.
const LARGE_READ: usize = 64 * 1024;

/// Response head buffer kept between requests; a larger one (grown for a body) is let go.
const KEPT_OUT_BUFFER: usize = 4 * 1024;

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
        peer: Peer::new(proxy, peer),
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
                    close::close(&mut conn.io, &[]).await;
                    return Served::Closed;
                }
                Done::HandOver => return conn.hand_over(Some(msg)),
            },
            Next::TooLarge => {
                metrics::refused(Refused::BadRequest);
                conn.refuse(&Answer::head_too_large(), (b"-", b"-"), Duration::ZERO)
                    .await;
                return Served::Closed;
            }
            Next::Stalled(took) => {
                let answer = admit::body_stalled(proxy.config.body_timeout);
                let buf = std::mem::take(&mut conn.buf);
                let line = (&buf[conn.req.method.clone()], &buf[conn.req.target.clone()]);
                conn.refuse(&answer, line, took).await;
                return Served::Closed;
            }
            Next::Closed => return Served::Closed,
            Next::HandOver => return conn.hand_over(None),
        }
    }
}

enum Next {
    /// A whole request (head and body) for the direct path.
    Request(Bytes),
    /// An unfinished head already longer than `--max-header-size` (431).
    TooLarge,
    /// A body that paused longer than `--body-timeout` (408), after this long.
    Stalled(Duration),
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
    peer: Peer,
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
                    Parse::Complete(n) if self.req.direct && n <= max_head => break n,
                    Parse::Complete(_) | Parse::Invalid => return Next::HandOver,
                    // Too large a head, not even complete: refused at once.
                    Parse::Partial if self.buf.len() > max_head => return Next::TooLarge,
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
        // The rest of the body; a pause past --body-timeout is the client's (408), as on
        // hyper's path, which streams the body to the worker.
        if self.buf.len() < total {
            let (limit, head_read) = (self.proxy.config.body_timeout, Instant::now());
            while self.buf.len() < total {
                self.timer.as_mut().reset(Instant::now() + limit);
                self.buf.reserve(total - self.buf.len());
                let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
                match until(&mut self.timer, read).await {
                    Some(Ok(n)) if n > 0 => {}
                    None => return Next::Stalled(head_read.elapsed()),
                    Some(_) => return Next::Closed,
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
            // Its reply is sniffed for the session id: hyper's path does that.
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
        let is_head = &msg[self.req.method.clone()] == b"HEAD";
        let route = match proxy.admit(self.peer.ip(), &view.headers, false, false) {
            Ok(client) => proxy
                .route(view, client)
                .await
                .ok_or_else(Answer::no_worker),
            Err(refused) => Err(refused),
        };
        let route = match route {
            Ok(route) => route,
            Err(answer) => {
                if crate::access_log::get().is_some() {
                    let client = proxy.client_ip(self.peer.ip(), &view.headers);
                    let line = (&msg[self.req.method.clone()], &msg[self.req.target.clone()]);
                    let took = std::time::Duration::ZERO;
                    crate::access_log::own_answer(client, line, answer.status, took);
                }
                return self.answer(&answer, is_head).await;
            }
        };
        let mut out = Outgoing {
            msg,
            req: &self.req,
            view,
            peer: &self.peer,
            io: &mut self.io,
            out: &mut self.out,
        };
        let reply = match raw::exchange(proxy, route, &mut out, &mut self.resp).await {
            Ok(reply) => reply,
            Err(Some(answer)) => return self.answer(&answer, is_head).await,
            Err(None) => return Done::Close,
        };
        self.pass_reply(reply, shutting_down).await
    }

    /// Passes a worker's answer on: its head rewritten, then its body.
    async fn pass_reply(&mut self, reply: Reply<'_>, shutting_down: bool) -> Done {
        reply.learn(self.proxy, &self.resp);
        let Reply {
            route,
            mut up,
            head_len,
            pool,
            in_flight,
        } = reply;
        let framing = self.resp.framing;
        let keep_client = !self.req.close && !shutting_down && framing != Framing::UntilClose;
        self.write_response_head(&up.rbuf[..head_len], &route, keep_client);
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

    /// The response head for the client: the worker's, hop-by-hop headers dropped, the
    /// proxy's decorations added.
    fn write_response_head(&mut self, raw: &[u8], route: &Route, keep_client: bool) {
        let decorations = self.proxy.decorations(&route.decision);
        write_head(&mut self.out, raw, &self.resp, &decorations);
        let o = &mut self.out;
        decorations.each(|name, value| push_header(o, name, value));
        if !keep_client {
            push_header(o, b"connection", b"close");
        }
        o.extend_from_slice(b"\r\n");
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
            // The head and the first bytes of the body go in one write; after that the body
            // is written from the read buffer itself (no copy in user space but the reads).
            let written = if self.out.is_empty() {
                &up.rbuf[..take]
            } else {
                self.out.extend_from_slice(&up.rbuf[..take]);
                &self.out[..]
            };
            if !written.is_empty() {
                self.io.write_all(written).await?;
                self.out.clear();
                // Before waiting on the worker again: a TLS stream may hold the records.
                self.io.flush().await?;
            }
            up.rbuf.advance(take);
            if left == 0 {
                return Ok(up.rbuf.is_empty());
            }
            up.rbuf.clear();
            if left > LARGE_READ as u64 {
                // A large body: fewer, larger reads and writes (the pool shrinks the buffer
                // back when the connection returns).
                up.rbuf.reserve(LARGE_READ);
            }
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

    /// Answers a request that cannot go on (its request line, as far as it is known, for the
    /// access log), then closes.
    async fn refuse(&mut self, answer: &Answer, line: (&[u8], &[u8]), took: Duration) {
        let client = key::canonical_ip(self.peer.ip());
        crate::access_log::own_answer(client, line, answer.status, took);
        self.answer(answer, false).await;
        close::close(&mut self.io, &[]).await;
    }

    /// Answers with an answer of the proxy's own; the request was read whole, so the
    /// connection stays open unless the client or the answer closes it.
    async fn answer(&mut self, answer: &Answer, is_head: bool) -> Done {
        answer.write_h1(&mut self.out, is_head, self.req.close);
        if self.io.write_all(&self.out).await.is_err() || self.io.flush().await.is_err() {
            return Done::Close;
        }
        if self.req.close || answer.close {
            Done::Close
        } else {
            Done::KeepAlive
        }
    }
}

/// The worker's response head without its hop-by-hop fields (nor those the proxy replaces),
/// into `o`, unfinished (no empty line yet) unless it is an interim one.
fn write_head(o: &mut Vec<u8>, raw: &[u8], resp: &ResponseHead, decorations: &Decorations<'_>) {
    o.clear();
    o.extend_from_slice(b"HTTP/1.1 ");
    o.extend_from_slice(&raw[resp.status_line.clone()]);
    o.extend_from_slice(b"\r\n");
    for f in resp.fields.iter().filter(|f| f.role == Role::Keep) {
        let name = &raw[f.name.clone()];
        if !decorations.replaces(name) {
            push_header(o, name, &raw[f.value.clone()]);
        }
    }
    if resp.status < 200 {
        o.extend_from_slice(b"\r\n");
    }
}

/// A request of the direct path, for the raw exchange.
struct Outgoing<'c, I> {
    msg: &'c Bytes,
    req: &'c RequestHead,
    view: &'c http::request::Parts,
    peer: &'c Peer,
    /// The client, for interim answers.
    io: &'c mut I,
    out: &'c mut Vec<u8>,
}

impl<I: AsyncWrite + Unpin> Outgoing<'_, I> {
    async fn pass_interim(&mut self, raw: &[u8], head: &ResponseHead) -> Result<(), ()> {
        // 103 Early Hints and the like go to the client as they come.
        write_head(self.out, raw, head, &Decorations::NONE);
        let passed = self.io.write_all(self.out).await;
        if passed.is_err() || self.io.flush().await.is_err() {
            return Err(());
        }
        Ok(())
    }
}

impl<I: AsyncWrite + Unpin> Outbound for Outgoing<'_, I> {
    /// The client's head with its fields sorted by the parser, then the body.
    fn write(&self, proxy: &Proxy, route: &Route, w: &mut Vec<u8>) {
        let (msg, req) = (&self.msg[..], self.req);
        let mut writer = RequestWriter::start(
            w,
            &msg[req.method.clone()],
            &msg[req.target.clone()],
            proxy.config.underscores,
        );
        for f in &req.fields {
            writer.classified(&msg[f.name.clone()], &msg[f.value.clone()], f.role);
        }
        writer.finish(&self.peer.forwarded(proxy, route));
        let body = msg.len() - req.content_length as usize;
        w.extend_from_slice(&msg[body..]);
    }

    fn has_body(&self) -> bool {
        self.req.content_length > 0
    }

    fn request_line(&self) -> (&[u8], &[u8]) {
        (
            &self.msg[self.req.method.clone()],
            &self.msg[self.req.target.clone()],
        )
    }

    fn reroute(&mut self, proxy: &Proxy, failed: &Route) -> Option<Route> {
        proxy.reroute(self.view, failed)
    }

    fn interim(&mut self, raw: &[u8], head: &ResponseHead) -> impl Future<Output = Result<(), ()>> {
        self.pass_interim(raw, head)
    }
}
