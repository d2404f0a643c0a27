//! The HTTP/2 front (RFC 9113): one task per client connection, streams as plain state in a
//! map, header blocks decoded straight into what the exchange needs, and every frame the
//! connection owes the client gathered in one buffer and written together.
//!
//! Each stream's exchange is a future polled inside this task from a `FuturesUnordered`
//! instead of a task of its own: the direct exchange ([`direct`]) for a bodyless request
//! that needs nothing special, else [`forward::handle`] (the same routing, rewriting,
//! retries, holds and error answers as every other request). A response body is polled the
//! same way, one frame at a time, only while the client's flow-control windows have room
//! for it. hyper's HTTP/2 server, which this replaced, spawns a task per stream and shares
//! every stream's state behind a lock between that task and the connection's.

mod direct;
mod frame;
mod hpack;
mod huffman;

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::proxy::exchange::body::ProxyBody;
use crate::proxy::exchange::{general as forward, Proxy};
use crate::proxy::io::request_body::{self, Credit, Sender};
use crate::proxy::io::BoxError;
use crate::proxy::upstream::body::UpstreamBody;
use direct::Answer;
use frame::{Head, Reason, MAX_WINDOW};
use hpack::Name;

pub use frame::PREFACE;

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
/// How long closing may take (a last GOAWAY, a TLS close_notify).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
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
        client: Arc::new(forward::Client::new(peer, Arc::default())),
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
        exchanges: FuturesUnordered::new(),
        bodies: FuturesUnordered::new(),
        credits_tx,
        credits_rx,
        send_window: 65_535,
        conn_unacked: 0,
        recv_window: i64::from(CONNECTION_WINDOW),
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
}

/// A connection error: GOAWAY with this reason, then close.
#[derive(Debug, Clone, Copy)]
struct ConnError(Reason, &'static str);

struct Conn<I> {
    io: I,
    proxy: Arc<Proxy>,
    client: Arc<forward::Client>,
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

    /// Sends what is left (bounded), then closes the connection.
    async fn close(&mut self) {
        for (_, stream) in self.streams.drain() {
            end_stream_state(stream);
        }
        let rest = &self.out[self.written.min(self.out.len())..];
        let io = &mut self.io;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            io.write_all(rest).await?;
            io.shutdown().await
        })
        .await;
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

    // ------------------------------------------------------------------ reading

    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.read_closed || self.out.len() - self.written > READ_PAUSE {
            return false;
        }
        let polled = if self.rbuf.is_empty() {
            // Read on the stack, kept on the heap only as far as a frame is incomplete: a
            // connection between requests holds no read buffer.
            let mut stack = [const { std::mem::MaybeUninit::<u8>::uninit() }; STACK_READ];
            let mut read = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    self.rbuf.extend_from_slice(read.filled());
                    Poll::Ready(Ok(read.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        } else {
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(STACK_READ);
            }
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
        };
        match polled {
            Poll::Pending => false,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                // The client is gone: nothing it asked for can reach it any more.
                self.read_closed = true;
                self.closing = Some(Closing::Now);
                true
            }
            Poll::Ready(Ok(_)) => {
                if let Err(e) = self.read_frames() {
                    self.fail(e);
                }
                true
            }
        }
    }

    fn read_frames(&mut self) -> Result<(), ConnError> {
        if !self.preface_seen {
            if self.rbuf.len() < PREFACE.len() {
                return if PREFACE.starts_with(&self.rbuf) {
                    Ok(())
                } else {
                    Err(ConnError(Reason::ProtocolError, "no HTTP/2 preface"))
                };
            }
            if &self.rbuf[..PREFACE.len()] != PREFACE {
                return Err(ConnError(Reason::ProtocolError, "no HTTP/2 preface"));
            }
            self.rbuf.advance(PREFACE.len());
            self.preface_seen = true;
        }
        while let Some(head) = Head::parse(&self.rbuf) {
            if head.len > frame::MAX_FRAME {
                return Err(ConnError(Reason::FrameSizeError, "frame too large"));
            }
            if self.rbuf.len() < 9 + head.len {
                self.rbuf.reserve(9 + head.len - self.rbuf.len());
                break;
            }
            self.rbuf.advance(9);
            // DATA may be large: sliced, not copied (`on_data` copies small ones). Other
            // frames are small and some are kept (a header block's values slice it): a
            // copy of their own, so nothing keeps the read buffer.
            let payload = if head.kind == frame::DATA {
                self.rbuf.split_to(head.len).freeze()
            } else {
                let payload = Bytes::copy_from_slice(&self.rbuf[..head.len]);
                self.rbuf.advance(head.len);
                payload
            };
            if !self.settings_seen && head.kind != frame::SETTINGS {
                return Err(ConnError(Reason::ProtocolError, "SETTINGS must come first"));
            }
            self.on_frame(head, payload)?;
            if self.closing == Some(Closing::Now) {
                break;
            }
        }
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    fn on_frame(&mut self, head: Head, payload: Bytes) -> Result<(), ConnError> {
        if let Some(c) = &self.continuation {
            if head.kind != frame::CONTINUATION || head.stream != c.stream {
                return Err(ConnError(Reason::ProtocolError, "header block interrupted"));
            }
        }
        let conn_frame = matches!(head.kind, frame::SETTINGS | frame::PING | frame::GOAWAY);
        if conn_frame != (head.stream == 0)
            && !matches!(head.kind, frame::WINDOW_UPDATE)
            && head.kind <= frame::CONTINUATION
        {
            return Err(ConnError(
                Reason::ProtocolError,
                "frame on the wrong stream",
            ));
        }
        match head.kind {
            frame::DATA => self.on_data(head, payload),
            frame::HEADERS => self.on_headers(head, payload),
            frame::CONTINUATION => self.on_continuation(head, &payload),
            frame::PRIORITY => {
                if head.len != 5 {
                    self.reset(head.stream, Reason::FrameSizeError);
                }
                Ok(())
            }
            frame::RST_STREAM => {
                if head.len != 4 {
                    return Err(ConnError(Reason::FrameSizeError, "RST_STREAM size"));
                }
                if head.stream > self.last_stream {
                    return Err(ConnError(
                        Reason::ProtocolError,
                        "RST_STREAM on an idle stream",
                    ));
                }
                if let Some(stream) = self.streams.remove(&head.stream) {
                    end_stream_state(stream);
                    self.on_stream_removed();
                    self.count_reset()?;
                }
                Ok(())
            }
            frame::SETTINGS => self.on_settings(head, &payload),
            frame::PUSH_PROMISE => Err(ConnError(Reason::ProtocolError, "clients do not push")),
            frame::PING => {
                if head.len != 8 {
                    return Err(ConnError(Reason::FrameSizeError, "PING size"));
                }
                if !head.has(frame::ACK) {
                    frame::put_ping_ack(&mut self.out, &payload);
                }
                Ok(())
            }
            frame::GOAWAY => {
                // The client opens no more streams; those it opened are still answered.
                self.accepting = false;
                if self.closing.is_none() {
                    self.closing = Some(Closing::Drain);
                }
                Ok(())
            }
            frame::WINDOW_UPDATE => self.on_window_update(head, &payload),
            // Unknown frame types are ignored (RFC 9113, 4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.has(frame::ACK) {
            return if head.len == 0 {
                Ok(())
            } else {
                Err(ConnError(
                    Reason::FrameSizeError,
                    "SETTINGS ack with a payload",
                ))
            };
        }
        if head.len % 6 != 0 {
            return Err(ConnError(Reason::FrameSizeError, "SETTINGS size"));
        }
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                frame::setting::ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::ProtocolError, "ENABLE_PUSH not 0 or 1"));
                }
                frame::setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(ConnError(Reason::FlowControlError, "window too large"));
                    }
                    let delta = i64::from(value) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(value);
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > MAX_WINDOW {
                            return Err(ConnError(Reason::FlowControlError, "window overflow"));
                        }
                    }
                }
                frame::setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError(
                            Reason::ProtocolError,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                // The encoder keeps no table (so HEADER_TABLE_SIZE does not matter) and
                // never pushes; the rest are advisory.
                _ => {}
            }
        }
        self.settings_seen = true;
        frame::put_settings_ack(&mut self.out);
        self.unblock();
        Ok(())
    }

    fn on_window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Ok(b) = <[u8; 4]>::try_from(payload) else {
            return Err(ConnError(Reason::FrameSizeError, "WINDOW_UPDATE size"));
        };
        let increment = i64::from(u32::from_be_bytes(b) & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(ConnError(Reason::ProtocolError, "WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError(Reason::FlowControlError, "window overflow"));
            }
        } else if let Some(stream) = self.streams.get_mut(&head.stream) {
            stream.send_window += increment;
            if increment == 0 {
                self.reset(head.stream, Reason::ProtocolError);
            } else if stream.send_window > MAX_WINDOW {
                self.reset(head.stream, Reason::FlowControlError);
            }
        } else if head.stream > self.last_stream {
            return Err(ConnError(
                Reason::ProtocolError,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        self.unblock();
        Ok(())
    }

    fn on_data(&mut self, head: Head, payload: Bytes) -> Result<(), ConnError> {
        let flow_len = head.len as u32;
        self.recv_window -= i64::from(flow_len);
        if self.recv_window < 0 {
            return Err(ConnError(
                Reason::FlowControlError,
                "connection window exceeded",
            ));
        }
        let data = unpad(head, payload)?;
        let padding = flow_len - data.len() as u32;
        let end = head.has(frame::END_STREAM);
        let outcome = match self.streams.get_mut(&head.stream) {
            None if head.stream > self.last_stream => {
                return Err(ConnError(Reason::ProtocolError, "DATA on an idle stream"));
            }
            // A stream that was reset or answered: its data is dropped, the window given back.
            None => DataOutcome::Dropped,
            Some(stream) => {
                stream.recv_window -= i64::from(flow_len);
                stream.received += data.len() as u64;
                let length_wrong = stream
                    .expected_len
                    .is_some_and(|n| stream.received > n || (end && stream.received != n));
                match &stream.body {
                    None => DataOutcome::Reset(Reason::StreamClosed),
                    Some(_) if stream.recv_window < 0 => {
                        DataOutcome::Reset(Reason::FlowControlError)
                    }
                    Some(_) if length_wrong => DataOutcome::Reset(Reason::ProtocolError),
                    Some(sender) => {
                        // Small chunks are copied: a slice would keep the whole read buffer
                        // alive while it waits for the worker.
                        let data = if data.len() < SMALL_DATA {
                            Bytes::copy_from_slice(&data)
                        } else {
                            data
                        };
                        let unread = if data.is_empty() || !sender.data(data) {
                            flow_len
                        } else {
                            padding
                        };
                        if end {
                            if let Some(sender) = stream.body.take() {
                                sender.end();
                            }
                        }
                        DataOutcome::Delivered { unread }
                    }
                }
            }
        };
        match outcome {
            DataOutcome::Dropped => self.credit_connection(flow_len),
            DataOutcome::Reset(reason) => {
                self.credit_connection(flow_len);
                self.reset(head.stream, reason);
            }
            DataOutcome::Delivered { unread } if unread > 0 => {
                self.credit((head.stream, unread));
            }
            DataOutcome::Delivered { .. } => {}
        }
        Ok(())
    }

    fn on_headers(&mut self, head: Head, payload: Bytes) -> Result<(), ConnError> {
        let mut block = unpad(head, payload)?;
        if head.has(frame::PRIORITY_FLAG) {
            if block.len() < 5 {
                return Err(ConnError(Reason::FrameSizeError, "HEADERS too short"));
            }
            block.advance(5);
        }
        let end_stream = head.has(frame::END_STREAM);
        if head.has(frame::END_HEADERS) {
            // The frame's own copy, sized to it (see `read_frames`): the request's values
            // slice it, and a long-lived request (a long poll) keeps only that alive.
            return self.on_header_block(head.stream, end_stream, block);
        }
        self.continuation = Some(Continuation {
            stream: head.stream,
            end_stream,
            block: BytesMut::from(&block[..]),
        });
        Ok(())
    }

    fn on_continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Some(c) = self.continuation.as_mut() else {
            return Err(ConnError(
                Reason::ProtocolError,
                "CONTINUATION without HEADERS",
            ));
        };
        // A block may not grow without bound before it is decoded (CONTINUATION floods).
        if c.block.len() + payload.len() > self.max_header_size.max(16 * 1024) * 2 {
            return Err(ConnError(Reason::EnhanceYourCalm, "header block too large"));
        }
        c.block.extend_from_slice(payload);
        if !head.has(frame::END_HEADERS) {
            return Ok(());
        }
        let Some(c) = self.continuation.take() else {
            return Ok(());
        };
        self.on_header_block(c.stream, c.end_stream, c.block.freeze())
    }

    fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: Bytes,
    ) -> Result<(), ConnError> {
        let mut fields = Fields::new(self.max_header_size);
        self.decoder
            .decode(&block, |name, value| fields.add(name, value))
            .map_err(|e| ConnError(Reason::CompressionError, e.0))?;
        if id % 2 == 0 {
            return Err(ConnError(
                Reason::ProtocolError,
                "even stream id from a client",
            ));
        }
        if id <= self.last_stream {
            return self.on_trailers(id, end_stream, fields);
        }
        self.last_stream = id;
        if !self.accepting {
            // After our GOAWAY: not processed, and the client knows it from the GOAWAY.
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS as usize {
            frame::put_rst(&mut self.out, id, Reason::RefusedStream);
            return Ok(());
        }
        let too_large = fields.too_large;
        let head = match fields.head() {
            Ok(head) => head,
            Err(why) => {
                tracing::debug!(peer = %self.peer, stream = id, error = why, "malformed HTTP/2 request");
                frame::put_rst(&mut self.out, id, Reason::ProtocolError);
                return self.count_reset();
            }
        };
        let expected_len = fields.content_length;
        let mut stream = Stream {
            send_window: self.peer_initial_window,
            recv_window: i64::from(STREAM_WINDOW),
            recv_unacked: 0,
            body: None,
            expected_len,
            received: 0,
            head_only: head.method == Method::HEAD,
            abort: None,
            parked: None,
        };
        if end_stream && expected_len.is_some_and(|n| n > 0) {
            frame::put_rst(&mut self.out, id, Reason::ProtocolError);
            return self.count_reset();
        }
        let proxy = self.proxy.clone();
        let client = self.client.clone();
        let plan = (end_stream && !too_large && proxy.direct)
            .then(|| {
                direct::plan(
                    &proxy,
                    self.peer,
                    client.forwarded_for(),
                    &fields,
                    &head,
                    &mut self.routing,
                )
            })
            .flatten();
        let exchange: Exchange = if too_large {
            let resp = forward::error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "bad_request",
                "request header fields too large",
            );
            Box::pin(std::future::ready((id, Answer::Response(resp))))
        } else if let Some(plan) = plan {
            Box::pin(async move { (id, direct::run(proxy, plan, fields, head, client).await) })
        } else {
            let body = if end_stream {
                UpstreamBody::Empty
            } else {
                let (sender, body) =
                    request_body::channel(id, self.credits_tx.clone(), expected_len);
                stream.body = Some(sender);
                UpstreamBody::H2(body)
            };
            let req = fields.into_request(head).map(|()| body);
            Box::pin(async move {
                let resp = match forward::handle(proxy, req, client).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
                (id, Answer::Response(resp))
            })
        };
        if too_large && !end_stream {
            // Its body is not wanted: a sender nobody reads drops it as it comes and gives
            // the window back.
            stream.body = Some(request_body::channel(id, self.credits_tx.clone(), None).0);
        }
        let (abort, registration) = AbortHandle::new_pair();
        stream.abort = Some(abort);
        self.streams.insert(id, stream);
        self.exchanges.push(Abortable::new(exchange, registration));
        Ok(())
    }

    fn on_trailers(&mut self, id: u32, end_stream: bool, fields: Fields) -> Result<(), ConnError> {
        let Some(stream) = self.streams.get_mut(&id) else {
            // A stream reset or answered meanwhile.
            return Ok(());
        };
        let Some(sender) = stream.body.take() else {
            self.reset(id, Reason::StreamClosed);
            return Ok(());
        };
        let length_right = stream.expected_len.is_none_or(|n| n == stream.received);
        match fields.into_trailers() {
            Some(trailers) if end_stream && length_right => sender.trailers(trailers),
            _ => {
                sender.break_off();
                self.reset(id, Reason::ProtocolError);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ flow control

    /// Gives back a stream's consumed body bytes (and the connection's) in batches.
    fn credit(&mut self, (id, n): Credit) {
        self.credit_connection(n);
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.recv_unacked += n;
        if stream.body.is_some() && stream.recv_unacked >= STREAM_WINDOW / 4 {
            frame::put_window_update(&mut self.out, id, stream.recv_unacked);
            stream.recv_window += i64::from(stream.recv_unacked);
            stream.recv_unacked = 0;
        }
    }

    fn credit_connection(&mut self, n: u32) {
        self.conn_unacked += n;
        if self.conn_unacked >= CONNECTION_WINDOW / 4 {
            frame::put_window_update(&mut self.out, 0, self.conn_unacked);
            self.recv_window += i64::from(self.conn_unacked);
            self.conn_unacked = 0;
        }
    }

    fn poll_credits(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while let Poll::Ready(Some(credit)) = self.credits_rx.poll_recv(cx) {
            self.credit(credit);
            progress = true;
        }
        progress
    }

    /// Sends what waited for window, now that there may be some.
    fn unblock(&mut self) {
        if self.blocked.is_empty() || self.send_window <= 0 {
            return;
        }
        for id in std::mem::take(&mut self.blocked) {
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            if let Some((data, body)) = stream.parked.take() {
                self.send_data(id, data, body);
            }
        }
    }

    // ------------------------------------------------------------------ responses

    fn poll_exchanges(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while let Poll::Ready(Some(done)) = self.exchanges.poll_next_unpin(cx) {
            progress = true;
            if let Ok((id, resp)) = done {
                self.on_response(id, resp, cx);
            }
        }
        progress
    }

    fn on_response(&mut self, id: u32, answer: Answer, cx: &mut Context<'_>) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.abort = None;
        let head_only = stream.head_only;
        let start = frame::start_headers(&mut self.out);
        let mut body = match answer {
            Answer::Response(resp) => {
                let (parts, body) = resp.into_parts();
                hpack::encode_response(parts.status, &parts.headers, &mut self.out);
                body
            }
            Answer::Encoded { block, body } => {
                self.out.extend_from_slice(&block);
                body
            }
        };
        let end = head_only || body.is_end_stream();
        frame::finish_headers(&mut self.out, start, id, end, self.peer_max_frame);
        if end {
            self.finish_stream(id);
            return;
        }
        // Most bodies are already here (read with the head): sent with it, in one write.
        match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => self.on_body_frame(id, body, frame),
            Poll::Pending => self.next_frame(id, body),
        }
    }

    fn next_frame(&mut self, id: u32, body: ProxyBody) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let (abort, registration) = AbortHandle::new_pair();
        stream.abort = Some(abort);
        self.bodies.push(Abortable::new(
            NextFrame {
                id,
                body: Some(body),
            },
            registration,
        ));
    }

    fn poll_bodies(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.out.len() - self.written < WRITE_HIGH {
            let Poll::Ready(Some(polled)) = self.bodies.poll_next_unpin(cx) else {
                break;
            };
            progress = true;
            if let Ok((id, body, frame)) = polled {
                self.on_body_frame(id, body, frame);
            }
        }
        progress
    }

    fn on_body_frame(
        &mut self,
        id: u32,
        body: ProxyBody,
        frame: Option<Result<Frame<Bytes>, BoxError>>,
    ) {
        let Some(head_only) = self.streams.get(&id).map(|s| s.head_only) else {
            return;
        };
        match frame {
            None => {
                frame::put_data(&mut self.out, id, &[], true);
                self.finish_stream(id);
            }
            Some(Err(e)) => {
                tracing::debug!(stream = id, error = %e, "response body failed");
                self.reset(id, Reason::InternalError);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if head_only => {
                    drop(data);
                    if body.is_end_stream() {
                        frame::put_data(&mut self.out, id, &[], true);
                        self.finish_stream(id);
                    } else {
                        self.next_frame(id, body);
                    }
                }
                Ok(data) => self.send_data(id, data, body),
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_default();
                    let start = frame::start_headers(&mut self.out);
                    hpack::encode_fields(&trailers, &mut self.out);
                    frame::finish_headers(&mut self.out, start, id, true, self.peer_max_frame);
                    self.finish_stream(id);
                }
            },
        }
    }

    /// Sends `data` as far as the windows allow; parks the rest, or asks for more.
    fn send_data(&mut self, id: u32, mut data: Bytes, body: ProxyBody) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let end = body.is_end_stream();
        loop {
            let window = stream.send_window.min(self.send_window).max(0) as usize;
            let n = data.len().min(window).min(self.peer_max_frame);
            if n == 0 && !data.is_empty() {
                stream.parked = Some((data, body));
                self.blocked.push(id);
                return;
            }
            let last = n == data.len();
            frame::put_data(&mut self.out, id, &data[..n], last && end);
            stream.send_window -= n as i64;
            self.send_window -= n as i64;
            data.advance(n);
            if last {
                break;
            }
        }
        if end {
            self.finish_stream(id);
        } else {
            self.next_frame(id, body);
        }
    }

    /// The response is complete: the stream ends (the client is told to stop sending a
    /// request body nobody will read).
    fn finish_stream(&mut self, id: u32) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        self.answered += 1;
        if stream.body.is_some() {
            frame::put_rst(&mut self.out, id, Reason::NoError);
        }
        end_stream_state(stream);
        self.on_stream_removed();
    }

    /// Resets a stream: RST_STREAM, its exchange or body stopped. Resets for the client's
    /// errors count toward [`RESET_ALLOWANCE`].
    fn reset(&mut self, id: u32, reason: Reason) {
        frame::put_rst(&mut self.out, id, reason);
        if let Some(stream) = self.streams.remove(&id) {
            end_stream_state(stream);
            self.on_stream_removed();
        }
        if reason != Reason::InternalError {
            if let Err(e) = self.count_reset() {
                self.fail(e);
            }
        }
    }

    /// One more stream reset before its answer; too many end the connection.
    fn count_reset(&mut self) -> Result<(), ConnError> {
        self.resets += 1;
        if self.resets > RESET_ALLOWANCE + self.answered / 4 {
            return Err(ConnError(Reason::EnhanceYourCalm, "too many streams reset"));
        }
        Ok(())
    }

    fn on_stream_removed(&mut self) {
        if self.streams.is_empty() {
            let deadline = Instant::now() + self.header_timeout;
            self.idle.as_mut().reset(deadline);
        }
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

// ---------------------------------------------------------------------- requests

/// What a request is, besides its regular fields.
struct RequestHead {
    method: Method,
    /// Origin form.
    uri: Uri,
    /// `:authority`, or the `host` field.
    host: Option<HeaderValue>,
    /// The cookie crumbs joined into one field.
    cookie: Option<HeaderValue>,
}

/// The names of the static table's regular entries (15..=61), as header names.
static STATIC_NAMES: [HeaderName; 47] = [
    HeaderName::from_static("accept-charset"),
    HeaderName::from_static("accept-encoding"),
    HeaderName::from_static("accept-language"),
    HeaderName::from_static("accept-ranges"),
    HeaderName::from_static("accept"),
    HeaderName::from_static("access-control-allow-origin"),
    HeaderName::from_static("age"),
    HeaderName::from_static("allow"),
    HeaderName::from_static("authorization"),
    HeaderName::from_static("cache-control"),
    HeaderName::from_static("content-disposition"),
    HeaderName::from_static("content-encoding"),
    HeaderName::from_static("content-language"),
    HeaderName::from_static("content-length"),
    HeaderName::from_static("content-location"),
    HeaderName::from_static("content-range"),
    HeaderName::from_static("content-type"),
    HeaderName::from_static("cookie"),
    HeaderName::from_static("date"),
    HeaderName::from_static("etag"),
    HeaderName::from_static("expect"),
    HeaderName::from_static("expires"),
    HeaderName::from_static("from"),
    HeaderName::from_static("host"),
    HeaderName::from_static("if-match"),
    HeaderName::from_static("if-modified-since"),
    HeaderName::from_static("if-none-match"),
    HeaderName::from_static("if-range"),
    HeaderName::from_static("if-unmodified-since"),
    HeaderName::from_static("last-modified"),
    HeaderName::from_static("link"),
    HeaderName::from_static("location"),
    HeaderName::from_static("max-forwards"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("range"),
    HeaderName::from_static("referer"),
    HeaderName::from_static("refresh"),
    HeaderName::from_static("retry-after"),
    HeaderName::from_static("server"),
    HeaderName::from_static("set-cookie"),
    HeaderName::from_static("strict-transport-security"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("user-agent"),
    HeaderName::from_static("vary"),
    HeaderName::from_static("via"),
    HeaderName::from_static("www-authenticate"),
];

/// The fields of a request's header block, checked as they are decoded.
struct Fields {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    /// The regular fields but `cookie`, in order.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The first cookie crumb, and the rest joined to it (rarely more than one).
    cookie: Option<Bytes>,
    more_cookies: Option<Vec<u8>>,
    content_length: Option<u64>,
    regular_seen: bool,
    malformed: Option<&'static str>,
    size: usize,
    max_size: usize,
    too_large: bool,
}

impl Fields {
    fn new(max_size: usize) -> Self {
        Self {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            headers: Vec::with_capacity(16),
            cookie: None,
            more_cookies: None,
            content_length: None,
            regular_seen: false,
            malformed: None,
            size: 0,
            max_size,
            too_large: false,
        }
    }

    fn bad(&mut self, why: &'static str) {
        self.malformed.get_or_insert(why);
    }

    fn add(&mut self, name: Name, value: Bytes) {
        self.size += name.as_bytes().len() + value.len() + 32;
        if self.size > self.max_size {
            // Still decoded (the table must follow), no longer kept.
            self.too_large = true;
            return;
        }
        let header = match name {
            Name::Static(i) if i > hpack::index::STATUS + 6 => {
                STATIC_NAMES[usize::from(i) - 15].clone()
            }
            Name::Static(i) => return self.pseudo(i, value),
            Name::Literal(b) => {
                if let Some(i) = pseudo_index(&b) {
                    return self.pseudo(i, value);
                }
                match HeaderName::from_lowercase(&b) {
                    Ok(n) => n,
                    Err(_) => return self.bad("invalid or uppercase field name"),
                }
            }
        };
        self.regular_seen = true;
        if hpack::is_connection_specific(&header) {
            return self.bad("connection-specific field");
        }
        if header == header::TE && value.as_ref() != b"trailers" {
            return self.bad("te other than trailers");
        }
        if header == header::HOST && self.headers.iter().any(|(n, _)| n == header::HOST) {
            return self.bad("more than one host");
        }
        if header == header::COOKIE {
            // Crumbs are joined back into one field for HTTP/1.1 (RFC 9113, 8.2.3).
            match (&self.cookie, &mut self.more_cookies) {
                (None, _) => self.cookie = Some(value),
                (Some(first), more) => {
                    let joined = more.get_or_insert_with(|| first.to_vec());
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(&value);
                }
            }
            return;
        }
        if header == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(&value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok());
            match (n, self.content_length) {
                (Some(n), None) => self.content_length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return self.bad("invalid content-length"),
            }
        }
        match HeaderValue::from_maybe_shared(value) {
            Ok(v) => self.headers.push((header, v)),
            Err(_) => self.bad("invalid field value"),
        }
    }

    fn pseudo(&mut self, index: u8, value: Bytes) {
        if self.regular_seen {
            return self.bad("pseudo-header after a regular field");
        }
        let slot = match index {
            hpack::index::METHOD => &mut self.method,
            hpack::index::SCHEME => &mut self.scheme,
            hpack::index::AUTHORITY => &mut self.authority,
            hpack::index::PATH => &mut self.path,
            _ => return self.bad("unknown pseudo-header"),
        };
        if slot.replace(value).is_some() {
            self.bad("repeated pseudo-header");
        }
    }

    /// The request's method, target, host and cookie, checked (RFC 9113, 8.3.1).
    fn head(&mut self) -> Result<RequestHead, &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        let method = self.method.take().ok_or("no :method")?;
        let method = Method::from_bytes(&method).map_err(|_| "invalid :method")?;
        let uri = if method == Method::CONNECT {
            // Refused by the forwarding path (this is no forward proxy).
            Uri::from_static("/")
        } else {
            if self.scheme.is_none() {
                return Err("no :scheme");
            }
            let path = self
                .path
                .take()
                .filter(|p| !p.is_empty())
                .ok_or("no :path")?;
            if path[0] != b'/' && &path[..] != b"*" {
                return Err(":path not absolute");
            }
            Uri::from_maybe_shared(path).map_err(|_| "invalid :path")?
        };
        let cookie = match self.more_cookies.take() {
            Some(joined) => Some(Bytes::from(joined)),
            None => self.cookie.take(),
        };
        let cookie = cookie
            .map(HeaderValue::from_maybe_shared)
            .transpose()
            .map_err(|_| "invalid cookie")?;
        let host_field = self.headers.iter().position(|(n, _)| n == header::HOST);
        let host = match (self.authority.take(), host_field) {
            (Some(authority), Some(i)) => {
                // Two names for the target must agree.
                if self.headers[i].1.as_bytes() != &authority[..] {
                    return Err("host differs from :authority");
                }
                Some(self.headers.remove(i).1)
            }
            (Some(authority), None) => {
                Some(HeaderValue::from_maybe_shared(authority).map_err(|_| "invalid :authority")?)
            }
            (None, Some(i)) => Some(self.headers.remove(i).1),
            (None, None) => None,
        };
        Ok(RequestHead {
            method,
            uri,
            host,
            cookie,
        })
    }

    /// The request (without a body) for the general path.
    fn into_request(self, head: RequestHead) -> Request<()> {
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 6);
        if let Some(host) = head.host {
            headers.insert(header::HOST, host);
        }
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        if let Some(cookie) = head.cookie {
            headers.insert(header::COOKIE, cookie);
        }
        let mut req = Request::new(());
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = headers;
        req
    }

    fn into_trailers(self) -> Option<HeaderMap> {
        let pseudo = self.method.is_some()
            || self.scheme.is_some()
            || self.authority.is_some()
            || self.path.is_some();
        if self.malformed.is_some() || pseudo || self.too_large {
            return None;
        }
        let mut trailers = HeaderMap::with_capacity(self.headers.len() + 1);
        for (name, value) in self.headers {
            trailers.append(name, value);
        }
        if let Some(cookie) = self.cookie {
            if let Ok(v) = HeaderValue::from_maybe_shared(cookie) {
                trailers.append(header::COOKIE, v);
            }
        }
        Some(trailers)
    }
}

fn pseudo_index(name: &[u8]) -> Option<u8> {
    match name {
        b":authority" => Some(hpack::index::AUTHORITY),
        b":method" => Some(hpack::index::METHOD),
        b":path" => Some(hpack::index::PATH),
        b":scheme" => Some(hpack::index::SCHEME),
        b":status" => Some(hpack::index::STATUS),
        n if n.starts_with(b":") => Some(0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_names_are_the_static_tables() {
        for (i, name) in STATIC_NAMES.iter().enumerate() {
            assert_eq!(name.as_str(), hpack::STATIC[i + 14].0, "index {}", i + 15);
        }
    }
}
