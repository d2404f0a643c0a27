//! Bodyless requests of hyper's path (HTTP/2 streams, connections the direct path handed
//! over) sent to a worker on the direct path's plain pooled sockets: the head written as
//! one buffer, the response head parsed in place, the body passed on frame by frame with
//! its chunked framing taken off. Saves hyper's client connection task, its channel and its
//! per-request wake-ups.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use super::pool::{until, Pool, RawConn};
use crate::proxy::http1::chunked::Chunks;
use crate::proxy::http1::head::{Framing, Parse, ResponseHead, Role};

/// A boxed error, as hyper takes them from a body.
pub use crate::proxy::io::BoxError;

/// The response head as hyper's server takes it: status and headers, hop-by-hop headers and
/// the chunked framing (taken off the body here) left out.
///
/// # Errors
/// What makes the head unusable.
pub fn response_parts(
    head: &ResponseHead,
    raw: &[u8],
) -> Result<http::response::Parts, &'static str> {
    let mut resp = http::Response::new(());
    *resp.status_mut() = StatusCode::from_u16(head.status).map_err(|_| "invalid status code")?;
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
            return Err("invalid response header");
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

/// A worker's response body read from a pooled raw connection; the connection goes back to its
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
        // Nothing read yet (the usual start: the request was just written) parses as
        // nothing: read first.
        let parsed = if up.rbuf.is_empty() {
            Parse::Partial
        } else {
            head.parse(&up.rbuf, is_head)
        };
        match parsed {
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
