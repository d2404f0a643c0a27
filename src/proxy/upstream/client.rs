//! Bodyless requests of hyper's path (HTTP/2 streams, connections the direct path handed
//! over) sent to a worker on the direct path's plain pooled sockets: the head written as
//! one buffer, the response head parsed in place, the body passed on frame by frame with
//! its chunked framing taken off. Saves hyper's client connection task, its channel and its
//! per-request wake-ups.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use super::body::UpstreamBody;
use super::pool::{until, Pool, RawConn, SendError};
use crate::proxy::http1::chunked::Chunks;
use crate::proxy::http1::head::{Framing, Parse, ResponseHead, Role};
use crate::proxy::http1::push_header;

/// A boxed error, as hyper takes them from a body.
pub use crate::proxy::io::BoxError;

/// Sends `req` (which has no body) on a pooled plain connection of `pool`, waiting at most
/// `timeout` for the response head.
///
/// # Errors
/// As [`Pool::send`]: [`SendError::Connect`] with the request when no connection could be
/// made, [`SendError::Broken`] with it when the connection broke before any answer,
/// [`SendError::Failed`] when the answer was broken, [`SendError::TimedOut`].
pub async fn send(
    pool: &Arc<Pool>,
    req: Request<UpstreamBody>,
    timeout: Duration,
) -> Result<(http::response::Parts, RawBody), SendError> {
    let mut up = match pool.take_raw() {
        Some(up) => up,
        None => match pool.connect_raw().await {
            Ok(up) => up,
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        },
    };
    write_head(&req, &mut up.wbuf);
    let is_head = req.method() == Method::HEAD;
    // The request is kept until the answer starts: it may have to go again.
    let mut req = Some(req);
    let (head, head_len) = match exchange(&mut up, is_head, timeout).await {
        Ok(answer) => answer,
        Err(e) => return Err(send_error(e, &mut req)),
    };
    drop(req);
    let parts = response_parts(&head, &up.rbuf[..head_len])?;
    Ok((parts, RawBody::new(up, &head, head_len, pool)))
}

/// Sends the request in `up.wbuf` and reads the final response head into `up.rbuf`, at
/// most `timeout` after sending; the head and its length. Interim answers (103 and the
/// like) are dropped, as hyper's client does; a 101 nobody asked for is invalid.
pub async fn exchange(
    up: &mut RawConn,
    is_head: bool,
    timeout: Duration,
) -> Result<(ResponseHead, usize), NoResponse> {
    up.deadline.as_mut().reset(Instant::now() + timeout);
    send_request(up).await?;
    let mut head = ResponseHead::default();
    let mut interim = false;
    loop {
        let n = match read_head(up, &mut head, is_head).await {
            Ok(n) => n,
            // After an interim answer the worker has seen the request: not to be resent.
            Err(NoResponse::Broken(_)) if interim => {
                return Err(NoResponse::Invalid("connection closed mid-head"))
            }
            Err(e) => return Err(e),
        };
        match head.status {
            101 => return Err(NoResponse::Invalid("switched protocols unasked")),
            100..=199 => {
                interim = true;
                up.rbuf.advance(n);
            }
            _ => return Ok((head, n)),
        }
    }
}

fn failed(why: &'static str) -> SendError {
    SendError::Failed(why.into())
}

/// A connection that broke before any answer gives the request back (it may be resent if
/// idempotent); a broken answer or a timeout may not be resent.
fn send_error(e: NoResponse, req: &mut Option<Request<UpstreamBody>>) -> SendError {
    match (e, req.take()) {
        (NoResponse::Broken(e), Some(req)) => SendError::Broken(e, Box::new(req)),
        (NoResponse::Broken(e), None) => SendError::Failed(Box::new(e)),
        // A 101 is an answer, not a broken exchange: not to be sent again.
        (NoResponse::Invalid(why @ "switched protocols unasked"), _) => {
            SendError::Unusable(why.into())
        }
        (NoResponse::Invalid(why), _) => failed(why),
        (NoResponse::TimedOut, _) => SendError::TimedOut,
    }
}

/// The request head in origin form, HTTP/1.1, every header as it is (the caller rewrote
/// them).
fn write_head(req: &Request<UpstreamBody>, w: &mut Vec<u8>) {
    w.clear();
    w.extend_from_slice(req.method().as_str().as_bytes());
    w.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    w.extend_from_slice(target.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        push_header(w, name.as_str().as_bytes(), value.as_bytes());
    }
    // A bodyless request whose method usually has a body says so, as browsers and curl do
    // (hyper's client would send no length at all).
    let usually_has_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if usually_has_body && !req.headers().contains_key(http::header::CONTENT_LENGTH) {
        w.extend_from_slice(b"content-length: 0\r\n");
    }
    w.extend_from_slice(b"\r\n");
}

/// The response head as hyper's server takes it: status and headers, hop-by-hop headers and
/// the chunked framing (taken off the body here) left out.
fn response_parts(head: &ResponseHead, raw: &[u8]) -> Result<http::response::Parts, SendError> {
    let mut resp = http::Response::new(());
    *resp.status_mut() =
        StatusCode::from_u16(head.status).map_err(|_| failed("invalid status code"))?;
    let kept = || head.fields.iter().filter(|f| f.role == Role::Keep);
    // One copy of the head that every value slices, instead of one allocation per value.
    let head_end = kept().map(|f| f.value.end).max().unwrap_or(0);
    let owned = bytes::Bytes::copy_from_slice(&raw[..head_end]);
    let headers = resp.headers_mut();
    headers.reserve(head.fields.len());
    for f in kept() {
        let name = &raw[f.name.clone()];
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(owned.slice(f.value.clone())),
        ) else {
            return Err(failed("invalid response header"));
        };
        headers.append(name, value);
    }
    Ok(resp.into_parts().0)
}

#[derive(Debug)]
enum BodyFraming {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunks),
    UntilClose,
    /// A chunked body that ended.
    Done,
}

/// A worker's response body read from a plain pooled socket; the socket goes back to its
/// pool when the body ended where its framing said.
#[derive(Debug)]
pub struct RawBody {
    conn: Option<RawConn>,
    framing: BodyFraming,
    keep_alive: bool,
    pool: Arc<Pool>,
    /// The trailer section of a chunked body, as read (empty without trailers).
    trailers: Vec<u8>,
}

/// Largest trailer section passed on.
const MAX_TRAILERS: usize = 16 * 1024;

/// The fields of a trailer section (lines ending with the empty line), `None` when there
/// are none that are valid.
fn trailer_fields(section: &[u8]) -> Option<http::HeaderMap> {
    if section.len() <= 2 {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) =
        httparse::parse_headers(section, &mut headers)
    else {
        return None;
    };
    let mut map = http::HeaderMap::new();
    for f in fields {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            map.append(name, value);
        }
    }
    (!map.is_empty()).then_some(map)
}

impl RawBody {
    /// The body after the response head of `head_len` bytes at the start of `up.rbuf`.
    pub fn new(mut up: RawConn, head: &ResponseHead, head_len: usize, pool: &Arc<Pool>) -> Self {
        up.rbuf.advance(head_len);
        let framing = match head.framing {
            Framing::Empty => BodyFraming::Length(0),
            Framing::Length(n) => BodyFraming::Length(n),
            Framing::Chunked => BodyFraming::Chunked(Chunks::default()),
            Framing::UntilClose => BodyFraming::UntilClose,
        };
        let mut body = Self {
            conn: Some(up),
            framing,
            keep_alive: head.keep_alive,
            pool: pool.clone(),
            trailers: Vec::new(),
        };
        if body.is_done() {
            body.finish();
        }
        body
    }

    fn is_done(&self) -> bool {
        matches!(self.framing, BodyFraming::Length(0) | BodyFraming::Done)
    }

    /// The body is over: the connection goes back when nothing followed it.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.rbuf.is_empty() {
                self.pool.put_raw(conn);
            }
        }
    }

    /// The next data frame, `None` at the end.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.is_done() {
                self.finish();
                return Poll::Ready(None);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if !conn.rbuf.is_empty() {
                let data = match &mut self.framing {
                    BodyFraming::Length(left) => {
                        let take = (*left).min(conn.rbuf.len() as u64);
                        *left -= take;
                        conn.rbuf.split_to(take as usize).freeze()
                    }
                    BodyFraming::Chunked(chunks) => {
                        let in_trailers = chunks.in_trailers();
                        let step = chunks.decode(&conn.rbuf).map_err(|_| {
                            io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body")
                        })?;
                        let used = conn.rbuf.split_to(step.consumed).freeze();
                        if in_trailers {
                            if self.trailers.len() + used.len() > MAX_TRAILERS {
                                return Poll::Ready(Some(Err("trailers too large".into())));
                            }
                            self.trailers.extend_from_slice(&used);
                        }
                        if step.done {
                            self.framing = BodyFraming::Done;
                            // HTTP/2 clients get the worker's trailers (gRPC status,
                            // Server-Timing); hyper's HTTP/1 server drops them.
                            if let Some(fields) = trailer_fields(&self.trailers) {
                                self.trailers = Vec::new();
                                return Poll::Ready(Some(Ok(Frame::trailers(fields))));
                            }
                        }
                        used.slice(step.data)
                    }
                    BodyFraming::UntilClose => conn.rbuf.split().freeze(),
                    BodyFraming::Done => Bytes::new(),
                };
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                continue;
            }
            if conn.rbuf.capacity() < 1024 {
                conn.rbuf.reserve(16 * 1024);
            }
            match ready!(poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.rbuf
            )) {
                Ok(0) => {
                    self.conn = None;
                    return match self.framing {
                        BodyFraming::UntilClose => Poll::Ready(None),
                        _ => Poll::Ready(Some(Err("worker closed mid-body".into()))),
                    };
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// True once the body is over.
    pub fn is_end_stream(&self) -> bool {
        self.is_done()
    }

    /// The exact length, when the worker gave one.
    pub fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            BodyFraming::Length(n) => http_body::SizeHint::with_exact(n),
            BodyFraming::Done => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        // Dropped unfinished (the client went away): the connection is mid-body, so it is
        // closed, not pooled. A finished one was given back already.
        if self.is_done() {
            self.finish();
        }
    }
}

/// Why a worker gave no usable response head.
pub enum NoResponse {
    /// The connection broke (or closed) before a single response byte.
    Broken(io::Error),
    /// A response head that cannot be read, or a broken one.
    Invalid(&'static str),
    TimedOut,
}

/// Largest response head read from a worker.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;

/// Writes the request in `up.wbuf` to the worker before its deadline.
pub async fn send_request(up: &mut RawConn) -> Result<(), NoResponse> {
    let stream = &mut up.stream;
    let write = std::pin::pin!(async {
        stream.write_all(&up.wbuf).await?;
        // A TLS stream may hold the last record until flushed.
        stream.flush().await
    });
    match until(&mut up.deadline, write).await {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(NoResponse::Broken(e)),
        None => Err(NoResponse::TimedOut),
    }
}

/// Reads from the worker until `head` parses a complete response head (an interim one
/// too: the caller decides what to do with it), before the connection's deadline; the
/// head's length. [`NoResponse::Broken`] when the connection ended before any byte of it.
pub async fn read_head(
    up: &mut RawConn,
    head: &mut ResponseHead,
    is_head: bool,
) -> Result<usize, NoResponse> {
    loop {
        match head.parse(&up.rbuf, is_head) {
            Parse::Complete(n) => return Ok(n),
            Parse::Invalid => return Err(NoResponse::Invalid("invalid response head")),
            Parse::Partial if up.rbuf.len() > MAX_RESPONSE_HEAD => {
                return Err(NoResponse::Invalid("response head too large"))
            }
            Parse::Partial => {}
        }
        if up.rbuf.capacity() - up.rbuf.len() < 1024 {
            up.rbuf.reserve(8 * 1024);
        }
        let got_nothing = up.rbuf.is_empty();
        let read = std::pin::pin!(up.stream.read_buf(&mut up.rbuf));
        match until(&mut up.deadline, read).await {
            None => return Err(NoResponse::TimedOut),
            Some(Ok(n)) if n > 0 => {}
            Some(result) if got_nothing => {
                let e = result.err().unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
                });
                return Err(NoResponse::Broken(e));
            }
            Some(_) => return Err(NoResponse::Invalid("connection closed mid-head")),
        }
    }
}
