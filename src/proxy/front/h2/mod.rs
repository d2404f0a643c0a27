//! The HTTP/2 front (RFC 9113): one task per client connection, streams as plain state in a
//! map, header blocks decoded straight into what the exchange needs, and every frame the
//! connection owes the client gathered in one buffer and written together.
//!
//! Each stream's exchange is a future polled inside this task from a `FuturesUnordered`
//! instead of a task of its own: the direct exchange ([`direct`]) for a bodyless request
//! that needs nothing special, else [`general::handle`] (the same routing, rewriting,
//! retries, holds and error answers as every other request). A response body is polled the
//! same way, one frame at a time, only while the client's flow-control windows have room
//! for it. hyper's HTTP/2 server, which this replaced, spawns a task per stream and shares
//! every stream's state behind a lock between that task and the connection's.

mod direct;
mod flow;
mod frame;
mod hpack;
mod huffman;
mod read;
mod request;
mod respond;

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hashbrown::HashMap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::proxy::exchange::body::ProxyBody;
use crate::proxy::exchange::{general, Proxy};
use crate::proxy::io::close;
use crate::proxy::io::request_body::{self, Credit, Sender};
use crate::proxy::io::BoxError;
use crate::proxy::upstream::body::UpstreamBody;
use direct::Answer;
use frame::{Head, Reason, MAX_WINDOW};
use hpack::Name;
use request::{Fields, RequestHead};

pub use frame::PREFACE;

/// The HTTP/2 codec pieces the fuzz targets reach (through `internal::codec`).
#[doc(hidden)]
pub mod codec {
    pub use super::frame::Head;
    pub use super::hpack::{encode_raw_field, DecodeError, Decoder, Name};
    pub use super::request::{Fields, RequestHead};
    use bytes::Bytes;

    /// A frame's payload without its padding, as the reader takes it; `None` when the
    /// padding is malformed.
    pub fn unpad(head: Head, payload: Bytes) -> Option<Bytes> {
        super::unpad(head, payload).ok()
    }
}

/// Streams a client may have open at once.
const MAX_STREAMS: u32 = 256;
/// Our receive window per stream: the most request body buffered per stream.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Our receive window for the whole connection.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bodies are not polled while this much output waits to be written.
const WRITE_HIGH: usize = 64 * 1024;
/// The client is not read while this much output waits (it is not reading its answers).
const READ_PAUSE: usize = 256 * 1024;
/// How long answers may wait on a client that reads nothing, or opens no window for them
/// (nginx's `send_timeout`).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes read at once into a buffer on the stack (the read buffer is empty).
const STACK_READ: usize = 8 * 1024;
/// Request body chunks smaller than this are copied out of the read buffer.
const SMALL_DATA: usize = 4 * 1024;
/// Streams the client may reset (or make us reset) before their answer, beyond a quarter
/// of those answered, before the connection is closed (Rapid Reset, CVE-2023-44487).
const RESET_ALLOWANCE: u64 = 100;

type Exchange = Pin<Box<dyn Future<Output = (u32, Answer)> + Send>>;

/// Serves an HTTP/2 connection whose first bytes are the client preface.
pub async fn serve<I>(io: I, proxy: Arc<Proxy>, peer: SocketAddr, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (credits_tx, credits_rx) = mpsc::unbounded_channel();
    let header_timeout = proxy.config.header_timeout;
    let max_header_size = proxy.config.max_header_size;
    let mut conn = Conn {
        io,
        client: Arc::new(general::Client::new(&proxy, peer, Arc::default())),
        proxy,
        rbuf: BytesMut::new(),
        out: Vec::with_capacity(1024),
        written: 0,
        unflushed: false,
        preface_seen: false,
        settings_seen: false,
        decoder: hpack::Decoder::default(),
        routing: HeaderMap::new(),
        streams: HashMap::new(),
        last_stream: 0,
        continuation: None,
        self_dependent: None,
        recent_resets: RecentResets::default(),
        exchanges: FuturesUnordered::new(),
        bodies: FuturesUnordered::new(),
        credits_tx,
        credits_rx,
        send_window: 65_535,
        conn_unacked: 0,
        recv_window: i64::from(CONNECTION_WINDOW),
        window_closed: Arc::default(),
        peer_initial_window: 65_535,
        peer_max_frame: frame::MAX_FRAME,
        blocked: Vec::new(),
        accepting: true,
        goaway_last: None,
        closing: None,
        read_closed: false,
        resets: 0,
        answered: 0,
        stall: Box::pin(tokio::time::sleep(SEND_TIMEOUT)),
        stalled: false,
        max_header_size,
        header_timeout,
        idle: Box::pin(tokio::time::sleep(header_timeout)),
        peer,
    };
    frame::put_settings(
        &mut conn.out,
        &[
            (frame::setting::MAX_CONCURRENT_STREAMS, MAX_STREAMS),
            (frame::setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (
                frame::setting::MAX_HEADER_LIST_SIZE,
                u32::try_from(max_header_size).unwrap_or(u32::MAX),
            ),
        ],
    );
    frame::put_window_update(&mut conn.out, 0, CONNECTION_WINDOW - 65_535);
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    let mut watching = false;
    poll_fn(|cx| {
        // Polled once to be woken on shutdown; after that a flag read tells.
        if !watching || shutdown.is_cancelled() {
            watching = true;
            if cancelled.as_mut().poll(cx).is_ready() && conn.accepting {
                // Shutdown: the streams already accepted are answered; no new ones.
                conn.go_away(Reason::NoError, Closing::Drain);
            }
        }
        conn.poll(cx)
    })
    .await;
    conn.close().await;
}

/// Why the connection is ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// No new streams; the connection ends when the open ones are done.
    Drain,
    /// At once, after a GOAWAY with this reason.
    Now,
}

struct Stream {
    /// What the client lets us send on it.
    send_window: i64,
    /// What it may still send us.
    recv_window: i64,
    /// Consumed request body not yet given back with a WINDOW_UPDATE.
    recv_unacked: u32,
    /// The request body, while the client is still sending it.
    body: Option<Sender>,
    /// The body length the client announced, and what came so far.
    expected_len: Option<u64>,
    received: u64,
    /// A HEAD request: its answer has no body.
    head_only: bool,
    /// Stops the stream's exchange, or its response body.
    abort: Option<AbortHandle>,
    /// Response data waiting for window, and the body it came from.
    parked: Option<(Bytes, ProxyBody)>,
}

/// What became of a DATA frame.
enum DataOutcome {
    /// Its stream is gone.
    Dropped,
    Reset(Reason),
    /// Passed to the request body; `unread` bytes (padding, or all of it when nobody reads
    /// the body any more) are given back at once.
    Delivered {
        unread: u32,
    },
}

/// A header block split over HEADERS and CONTINUATION frames.
struct Continuation {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
    /// CONTINUATION frames so far (bounded: empty ones would grow nothing else).
    frames: u32,
}

/// Most CONTINUATION frames one header block may take: a client that uses frames of the
/// minimum maximum size (16 KiB) needs a handful for the largest block accepted.
const MAX_CONTINUATIONS: u32 = 128;

/// Streams this side reset lately: a client's frames sent before it saw our RST_STREAM are
/// ignored (RFC 9113 5.4.2) instead of being taken for a reused stream id. Bounded: the
/// oldest is forgotten first.
#[derive(Debug, Default)]
struct RecentResets {
    ids: [u32; 16],
    next: usize,
}

impl RecentResets {
    fn note(&mut self, id: u32) {
        self.ids[self.next] = id;
        self.next = (self.next + 1) % self.ids.len();
    }

    fn contains(&self, id: u32) -> bool {
        id != 0 && self.ids.contains(&id)
    }
}

/// A connection error: GOAWAY with this reason, then close.
#[derive(Debug, Clone, Copy)]
struct ConnError(Reason, &'static str);

struct Conn<I> {
    io: I,
    proxy: Arc<Proxy>,
    client: Arc<general::Client>,
    peer: SocketAddr,
    rbuf: BytesMut,
    /// Frames owed to the client; `written` of them are on their way.
    out: Vec<u8>,
    written: usize,
    unflushed: bool,
    preface_seen: bool,
    settings_seen: bool,
    decoder: hpack::Decoder,
    /// What routing reads of a request, for the direct exchange; kept empty between them.
    routing: HeaderMap,
    streams: HashMap<u32, Stream>,
    last_stream: u32,
    continuation: Option<Continuation>,
    /// The stream whose HEADERS named itself as its dependency (RFC 9113 5.3.1): its block
    /// is still decoded (the table must follow), then the stream is reset.
    self_dependent: Option<u32>,
    recent_resets: RecentResets,
    exchanges: FuturesUnordered<Abortable<Exchange>>,
    bodies: FuturesUnordered<Abortable<NextFrame>>,
    credits_tx: mpsc::UnboundedSender<Credit>,
    credits_rx: mpsc::UnboundedReceiver<Credit>,
    /// The client's connection window for our DATA.
    send_window: i64,
    /// What the client may still send on the connection, and what was consumed since
    /// the last connection WINDOW_UPDATE.
    recv_window: i64,
    conn_unacked: u32,
    /// `recv_window` has less room than a frame: told to every request body, whose client
    /// is then not the one pausing.
    window_closed: Arc<AtomicBool>,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// Streams with response data waiting for window.
    blocked: Vec<u32>,
    accepting: bool,
    /// The last stream id of our first GOAWAY.
    goaway_last: Option<u32>,
    closing: Option<Closing>,
    read_closed: bool,
    /// Streams reset before their answer (by the client, or by us for its errors), and
    /// streams answered.
    resets: u64,
    answered: u64,
    /// Runs while answers wait on the client (output unwritten, or no window).
    stall: Pin<Box<Sleep>>,
    stalled: bool,
    max_header_size: usize,
    header_timeout: Duration,
    /// Runs while no stream is open.
    idle: Pin<Box<Sleep>>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut progress = false;
            if self.streams.is_empty() && self.idle.as_mut().poll(cx).is_ready() {
                self.go_away(Reason::NoError, Closing::Now);
            }
            if self.closing == Some(Closing::Now) {
                // `close` sends what is left, within its own time limit.
                return Poll::Ready(());
            }
            progress |= self.poll_read(cx);
            progress |= self.poll_exchanges(cx);
            progress |= self.poll_credits(cx);
            progress |= self.poll_bodies(cx);
            match self.poll_write(cx) {
                // Output that went out may let bodies be polled and the client be read.
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(())) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            if self.poll_stall(cx) {
                tracing::debug!(peer = %self.peer, "HTTP/2 client read nothing for {SEND_TIMEOUT:?}");
                return Poll::Ready(());
            }
            let done = match self.closing {
                Some(Closing::Now) => true,
                Some(Closing::Drain) => self.streams.is_empty(),
                None => self.read_closed,
            };
            if done && self.written == self.out.len() && !self.unflushed {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// True when answers have waited on the client for longer than [`SEND_TIMEOUT`].
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> bool {
        let waiting = self.written < self.out.len() || !self.blocked.is_empty();
        if !waiting {
            self.stalled = false;
            return false;
        }
        if !self.stalled {
            self.stalled = true;
            self.stall.as_mut().reset(Instant::now() + SEND_TIMEOUT);
        }
        self.stall.as_mut().poll(cx).is_ready()
    }

    /// Sends what is left (a last GOAWAY), then closes the connection (bounded).
    async fn close(&mut self) {
        for (_, stream) in self.streams.drain() {
            end_stream_state(stream);
        }
        let rest = &self.out[self.written.min(self.out.len())..];
        close::close(&mut self.io, rest).await;
    }

    fn go_away(&mut self, reason: Reason, closing: Closing) {
        if self.accepting || reason != Reason::NoError {
            // The last stream id never grows from one GOAWAY to the next (RFC 9113, 6.8).
            let last = *self.goaway_last.get_or_insert(self.last_stream);
            frame::put_goaway(&mut self.out, last, reason);
        }
        self.accepting = false;
        if self.closing != Some(Closing::Now) {
            self.closing = Some(closing);
        }
    }

    fn fail(&mut self, e: ConnError) {
        tracing::debug!(peer = %self.peer, reason = ?e.0, error = e.1, "HTTP/2 connection error");
        self.go_away(e.0, Closing::Now);
    }

    // ------------------------------------------------------------------ writing

    /// Writes what is owed; Ready(true) when something went out.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ()>> {
        let mut wrote = false;
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.unflushed = true;
                    wrote = true;
                    // Progress: the client reads.
                    self.stalled = false;
                }
                Poll::Pending => {
                    if self.written >= WRITE_HIGH {
                        // What went out is dropped, or a slow reader would make the buffer
                        // hold everything ever sent.
                        self.out.drain(..self.written);
                        self.written = 0;
                    }
                    return Poll::Pending;
                }
            }
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > WRITE_HIGH * 2 {
            self.out.shrink_to(4 * 1024);
        }
        if self.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(wrote))
    }
}

/// Stops whatever still runs for a stream that is gone.
fn end_stream_state(stream: Stream) {
    if let Some(abort) = stream.abort {
        abort.abort();
    }
    if let Some(sender) = stream.body {
        sender.break_off();
    }
}

/// A DATA or HEADERS payload without its padding.
fn unpad(head: Head, mut payload: Bytes) -> Result<Bytes, ConnError> {
    if !head.has(frame::PADDED) {
        return Ok(payload);
    }
    let Some(&pad) = payload.first() else {
        return Err(ConnError(
            Reason::FrameSizeError,
            "padded frame without padding length",
        ));
    };
    let pad = usize::from(pad);
    if pad + 1 > payload.len() {
        return Err(ConnError(
            Reason::ProtocolError,
            "padding longer than the frame",
        ));
    }
    payload.truncate(payload.len() - pad);
    payload.advance(1);
    Ok(payload)
}

/// The next frame of a response body, with the body.
struct NextFrame {
    id: u32,
    body: Option<ProxyBody>,
}

type Polled = (u32, ProxyBody, Option<Result<Frame<Bytes>, BoxError>>);

impl Future for NextFrame {
    type Output = Polled;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Pending;
        };
        let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
        match this.body.take() {
            Some(body) => Poll::Ready((this.id, body, frame)),
            None => Poll::Pending,
        }
    }
}
