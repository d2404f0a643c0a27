//! Refusing request smuggling on HTTP/1 client connections.
//!
//! A request head carrying both `Content-Length` and `Transfer-Encoding` is the classic
//! smuggling vector: two parsers that disagree on where its body ends disagree on where the
//! next request starts. hyper resolves it safely (chunked wins, the connection closes after
//! the answer) but removes the `Content-Length` before the handler sees the head, so the
//! handler cannot refuse the request as HAProxy and nginx do. [`FramingWatch`] follows the
//! client's byte stream beside hyper (request heads, fixed-length and chunked bodies) and
//! records which request on the connection, by position, carried both headers (or a
//! `Content-Length` it cannot read); [`Verdict::next_request_refused`] tells the handler
//! when that request is the one it holds. Requests are numbered the same way on both sides
//! because HTTP/1 serves them one at a time, in order.
//!
//! The watch and hyper must agree on every head and every chunk line: what hyper cannot
//! follow it refuses itself, and what the watch cannot follow is refused too (a refused
//! head by the handler, with 400; a chunked body the watch's parser, [`Chunks`], finds
//! malformed, e.g. a chunk size padded with leading zeros past 15 digits, by failing the
//! connection's reads, which hyper's body reader reports to the handler). Only an HTTP/2
//! preface and a tunnel after an upgrade turn the watch off quietly.
//!
//! The watch costs one line search per head line and a byte loop over chunk-size lines;
//! none per byte of a fixed-length body or of chunk data.
//!
//! Knowing where heads start also makes it the cheapest place for the head deadline
//! (`--header-timeout`: slowloris, and idle keep-alive connections): a connection waiting
//! for a head that is not complete within the deadline gets a read error and is closed.
//! hyper's own header timer allocates and registers a fresh timer per request; this one
//! timer per connection is only moved later (an atomic update in tokio's timer wheel).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::close;

use crate::proxy::http1::chunked::{Chunks, Malformed};

/// What the watch learned, shared with the connection's request handler.
#[derive(Debug, Default)]
pub struct Verdict {
    /// 1-based number of the first request the watch refuses; 0: none so far.
    refused: AtomicU32,
    /// Why: the [`Refusal`] as its `u8`.
    why: AtomicU8,
    /// Requests the handler has taken so far.
    taken: AtomicU32,
    /// The connection left HTTP/1 (an upgrade): its bytes are no longer requests.
    stopped: AtomicBool,
}

impl Verdict {
    /// Counts one more request on the connection; `Some` when the watch refuses it (its
    /// head carried both `Content-Length` and `Transfer-Encoding`, or a `Content-Length`
    /// the watch cannot read).
    pub fn next_request_refused(&self) -> Option<Refusal> {
        let n = self.taken.fetch_add(1, Ordering::Relaxed) + 1;
        (n == self.refused.load(Ordering::Acquire)).then(|| {
            match self.why.load(Ordering::Relaxed) {
                0 => Refusal::Conflict,
                1 => Refusal::Unframeable,
                _ => Refusal::TooLarge,
            }
        })
    }

    fn refuse(&self, n: u32, why: Refusal) {
        self.why.store(why as u8, Ordering::Relaxed);
        self.refused.store(n, Ordering::Release);
    }

    /// The connection became a tunnel: stop reading its bytes as requests.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

/// A client stream whose reads pass through a [`Scanner`]; writes go straight through.
#[derive(Debug)]
pub struct FramingWatch<I> {
    io: I,
    scanner: Scanner,
    verdict: Arc<Verdict>,
    head_timeout: Duration,
    /// Made on the first wait for a head, then only moved.
    head_deadline: Option<Pin<Box<Sleep>>>,
    /// The heads seen when the deadline was set, while one is running.
    deadline_for_head: Option<u32>,
    /// Closing: half-closed, and this many of the client's last bytes thrown away.
    discarded: Option<usize>,
}

impl<I> FramingWatch<I> {
    /// Watches `io`, reporting to `verdict`; a head must be complete within
    /// `head_timeout` of the connection starting to wait for it, and at most `max_head`
    /// bytes long.
    pub fn new(io: I, verdict: Arc<Verdict>, head_timeout: Duration, max_head: usize) -> Self {
        Self {
            io,
            scanner: Scanner::new(max_head),
            verdict,
            head_timeout,
            head_deadline: None,
            deadline_for_head: None,
            discarded: None,
        }
    }

    /// Moves the one deadline timer to `at` (made on first use).
    fn set_deadline(&mut self, at: Instant) {
        match &mut self.head_deadline {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.head_deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Waiting for (the rest of) a head: runs the deadline, set now if none is running.
    fn poll_head_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let heads = self.scanner.heads;
        if self.deadline_for_head != Some(heads) {
            self.set_deadline(Instant::now() + self.head_timeout);
            self.deadline_for_head = Some(heads);
        }
        match self.head_deadline.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete request head within {:?}", self.head_timeout),
            ))),
            _ => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingWatch<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.scanner.is_off() && this.verdict.stopped.load(Ordering::Relaxed) {
            // A tunnel now: neither framing nor a head deadline applies.
            this.scanner.turn_off();
        }
        if this.scanner.is_refused() {
            return Poll::Ready(Err(refused_stream()));
        }
        let start = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending if this.scanner.awaits_head() => return this.poll_head_deadline(cx),
            other => return other,
        }
        if !this.scanner.is_off() {
            match this.scanner.feed(&buf.filled()[start..]) {
                Some(Found::Request(n, why)) => this.verdict.refuse(n, why),
                Some(Found::Stream(at)) => {
                    // Hyper gets the bytes before the malformed one; its next read fails,
                    // and so does the body it is reading.
                    buf.set_filled(start + at);
                    if at == 0 {
                        return Poll::Ready(Err(refused_stream()));
                    }
                }
                None => {}
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The read error of a connection whose chunked body the watch cannot follow.
fn refused_stream() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed chunked request body")
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FramingWatch<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Half-closes, then reads on until the client closes (bounded; [`close`]) so that the
    /// last answer is not lost to a reset. A tunnel only half-closes: its other half still
    /// reads the client's bytes for the worker.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.verdict.stopped.load(Ordering::Relaxed) {
            return Pin::new(&mut this.io).poll_shutdown(cx);
        }
        if this.discarded.is_none() {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            // The head deadline's timer now bounds the close.
            this.set_deadline(Instant::now() + close::CLOSE_TIMEOUT);
            this.deadline_for_head = None;
        }
        if let Some(Poll::Ready(())) = this.head_deadline.as_mut().map(|s| s.as_mut().poll(cx)) {
            return Poll::Ready(Ok(()));
        }
        let discarded = this.discarded.get_or_insert(0);
        close::poll_discard(&mut this.io, cx, discarded).map(Ok)
    }
}

/// Where the scanner is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head, line by line.
    Head,
    /// In a fixed-length body: this many bytes left.
    Body(u64),
    /// In a chunked body, followed by [`Chunks`] (the one chunked parser).
    Chunked,
    /// Not following the stream any more (HTTP/2, a tunnel, or a refused request).
    Off,
    /// In a head longer than `--max-header-size`: not followed any more, but the head
    /// deadline still runs, so a head that never ends cannot hold the connection.
    Oversized,
    /// Bytes the watch cannot follow: the connection is refused (reads fail).
    Refused,
}

/// Why the watch refuses a request (the handler answers 400, or 431, and closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding` (request smuggling).
    Conflict,
    /// A `Content-Length` the watch cannot read (malformed, repeated with other values, or
    /// its line longer than the watch follows): the body's end cannot be agreed on.
    Unframeable,
    /// A head longer than `--max-header-size`. The watch sets the head limit, not hyper's
    /// read buffer, which is larger so that a body is read in fewer, larger pieces.
    TooLarge,
}

/// The longest line prefix kept: enough for `content-length:` with a 20-digit value and
/// some spaces; a longer `Content-Length` line is refused, other lines are judged by their
/// prefix.
const LINE_PREFIX: usize = 64;

/// Follows HTTP/1 request framing over a byte stream fed in arbitrary pieces.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    line: [u8; LINE_PREFIX],
    line_len: usize,
    line_truncated: bool,
    /// The chunked body being followed (in [`State::Chunked`]).
    chunks: Chunks,
    /// Lines of the current head so far (the request line included).
    head_lines: u32,
    content_length: Option<u64>,
    has_content_length: bool,
    has_transfer_encoding: bool,
    /// The current head's body length cannot be told.
    unframeable: bool,
    /// Complete heads seen.
    heads: u32,
    /// Bytes of the current head so far (from the end of the previous request).
    head_bytes: usize,
    /// The longest head let through.
    max_head: usize,
}

impl Default for Scanner {
    /// A scanner with no head limit.
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

/// What feeding the scanner found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The request with this 1-based number is refused, for this reason; nothing after it is
    /// followed.
    Request(u32, Refusal),
    /// A chunked body the watch cannot follow, from this offset of the bytes fed on: the
    /// connection is refused there (reads fail from it on).
    Stream(usize),
}

impl Scanner {
    /// A scanner that refuses heads longer than `max_head` bytes.
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            line: [0; LINE_PREFIX],
            line_len: 0,
            line_truncated: false,
            chunks: Chunks::default(),
            head_lines: 0,
            content_length: None,
            has_content_length: false,
            has_transfer_encoding: false,
            unframeable: false,
            heads: 0,
            head_bytes: 0,
            max_head,
        }
    }

    /// True once the scanner no longer follows the stream.
    pub fn is_off(&self) -> bool {
        matches!(self.state, State::Off | State::Oversized | State::Refused)
    }

    /// True once the stream was refused.
    pub fn is_refused(&self) -> bool {
        self.state == State::Refused
    }

    /// Between or inside request heads (not in a body, not off).
    pub fn awaits_head(&self) -> bool {
        matches!(self.state, State::Head | State::Oversized)
    }

    fn turn_off(&mut self) {
        if self.state != State::Refused {
            self.state = State::Off;
        }
    }

    /// Follows the next bytes of the stream; tells when a request or the stream is refused.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<Found> {
        let fed = bytes.len();
        while !bytes.is_empty() {
            match self.state {
                State::Off | State::Oversized | State::Refused => return None,
                State::Body(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    let left = left - take;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::Chunked => {
                    let before = self.chunks.clone();
                    match self.chunks.feed(bytes) {
                        Ok(Some(end)) => {
                            bytes = &bytes[end..];
                            self.chunks = Chunks::default();
                            self.state = State::Head;
                        }
                        Ok(None) => return None,
                        Err(Malformed) => {
                            self.state = State::Refused;
                            let at = fed - bytes.len() + malformed_at(before, bytes);
                            return Some(Found::Stream(at));
                        }
                    }
                }
                State::Head => {
                    let line_end = memchr::memchr(b'\n', bytes);
                    let taken = line_end.map_or(bytes.len(), |end| end + 1);
                    if let Some(found) = self.count_head(taken) {
                        return Some(found);
                    }
                    let Some(end) = line_end else {
                        self.keep(bytes);
                        return None;
                    };
                    let found = if self.line_len == 0 && !self.line_truncated {
                        // The whole line is at hand: judge it in place, by the same prefix.
                        let line = &bytes[..end];
                        let kept = line.len().min(LINE_PREFIX);
                        self.end_line(&line[..kept], kept < line.len())
                    } else {
                        self.keep(&bytes[..end]);
                        let (line, len, truncated) =
                            (self.line, self.line_len, self.line_truncated);
                        self.line_len = 0;
                        self.line_truncated = false;
                        self.end_line(&line[..len], truncated)
                    };
                    bytes = &bytes[end + 1..];
                    if found.is_some() {
                        return found;
                    }
                }
            }
        }
        None
    }

    /// Counts `n` more bytes of the current head; refuses the request once it is too long.
    fn count_head(&mut self, n: usize) -> Option<Found> {
        self.head_bytes = self.head_bytes.saturating_add(n);
        if self.head_bytes <= self.max_head {
            return None;
        }
        self.state = State::Oversized;
        Some(Found::Request(self.heads + 1, Refusal::TooLarge))
    }

    fn keep(&mut self, part: &[u8]) {
        let room = LINE_PREFIX - self.line_len;
        let kept = part.len().min(room);
        self.line[self.line_len..self.line_len + kept].copy_from_slice(&part[..kept]);
        self.line_len += kept;
        self.line_truncated |= kept < part.len();
    }

    /// Judges one head line (its first `LINE_PREFIX` bytes, and whether there were more).
    fn end_line(&mut self, line: &[u8], truncated: bool) -> Option<Found> {
        let line = match line {
            [rest @ .., b'\r'] if !truncated => rest,
            _ => line,
        };
        let empty = line.is_empty() && !truncated;
        self.head_line(line, truncated, empty)
    }

    fn head_line(&mut self, line: &[u8], truncated: bool, empty: bool) -> Option<Found> {
        if self.head_lines == 0 {
            // Empty lines before a request line are tolerated (RFC 9112 §2.2).
            if empty {
                return None;
            }
            if line.starts_with(b"PRI * HTTP/2") {
                self.state = State::Off;
                return None;
            }
            self.head_lines = 1;
            return None;
        }
        if !empty {
            self.head_lines += 1;
            if let Some(value) = header_value(line, b"content-length") {
                self.has_content_length = true;
                let parsed = (!truncated).then(|| parse_decimal(value)).flatten();
                match (self.content_length, parsed) {
                    (None, Some(n)) => self.content_length = Some(n),
                    (Some(a), Some(b)) if a == b => {}
                    _ => self.unframeable = true,
                }
            } else if header_value(line, b"transfer-encoding").is_some() {
                self.has_transfer_encoding = true;
            }
            return None;
        }
        self.heads += 1;
        self.head_bytes = 0;
        let conflict = self.has_content_length && self.has_transfer_encoding;
        let body = self.content_length;
        let chunked = self.has_transfer_encoding;
        let unframeable = self.unframeable;
        self.head_lines = 0;
        self.content_length = None;
        self.has_content_length = false;
        self.has_transfer_encoding = false;
        self.unframeable = false;
        let refusal = if conflict {
            Some(Refusal::Conflict)
        } else if unframeable {
            Some(Refusal::Unframeable)
        } else {
            None
        };
        if let Some(why) = refusal {
            // The handler refuses it and the connection closes: nothing further to follow.
            self.state = State::Off;
            return Some(Found::Request(self.heads, why));
        }
        self.state = match (chunked, body) {
            (true, _) => State::Chunked,
            (false, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head,
        };
        None
    }
}

/// Where in `bytes` a chunked body followed from `chunks` turns malformed.
fn malformed_at(mut chunks: Chunks, bytes: &[u8]) -> usize {
    (0..bytes.len())
        .find(|&i| chunks.feed(&bytes[i..=i]).is_err())
        .unwrap_or(0)
}

/// The value of a header line when its name is `name` (ASCII case-insensitive).
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.get(name.len()..)?;
    (line[..name.len()].eq_ignore_ascii_case(name) && rest.first() == Some(&b':'))
        .then(|| &rest[1..])
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refused request found when `stream` is fed whole and in every two-piece split.
    fn conflicts(stream: &[u8]) -> Option<u32> {
        let whole = refused(&mut Scanner::default(), stream);
        for cut in 0..=stream.len() {
            let mut s = Scanner::default();
            let first = refused(&mut s, &stream[..cut]);
            let found = first.or_else(|| refused(&mut s, &stream[cut..]));
            assert_eq!(found, whole, "split at {cut} changed the answer");
        }
        let mut s = Scanner::default();
        let byte_by_byte = stream
            .iter()
            .find_map(|b| refused(&mut s, std::slice::from_ref(b)));
        assert_eq!(
            byte_by_byte, whole,
            "byte-by-byte feeding changed the answer"
        );
        whole
    }

    fn refused(s: &mut Scanner, bytes: &[u8]) -> Option<u32> {
        match s.feed(bytes) {
            Some(Found::Request(n, _)) => Some(n),
            Some(Found::Stream(_)) => Some(0),
            None => None,
        }
    }

    #[test]
    fn both_headers_in_either_order_are_found() {
        let cl_first = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let te_first =
            b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n";
        assert_eq!(conflicts(cl_first), Some(1));
        assert_eq!(conflicts(te_first), Some(1));
    }

    #[test]
    fn a_head_longer_than_the_limit_is_refused_whatever_the_split() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let at_limit = |limit: usize, stream: &[u8]| {
            let whole = Scanner::new(limit).feed(stream);
            for cut in 0..=stream.len() {
                let mut s = Scanner::new(limit);
                let split = s.feed(&stream[..cut]).or_else(|| s.feed(&stream[cut..]));
                assert_eq!(split, whole, "split at {cut} changed the answer");
            }
            whole
        };
        assert_eq!(
            at_limit(head.len(), head),
            None,
            "a head of exactly the limit"
        );
        assert_eq!(
            at_limit(head.len() - 1, head),
            Some(Found::Request(1, Refusal::TooLarge))
        );
        // Each head is counted from the end of the one before; bodies do not count.
        let mut two = b"POST / HTTP/1.1\r\nContent-Length: 60\r\n\r\n".to_vec();
        two.extend_from_slice(&[b'x'; 60]);
        let first = two.len() - 60;
        two.extend_from_slice(head);
        assert_eq!(at_limit(first.max(head.len()), &two), None);
        let mut three = two.clone();
        three.extend_from_slice(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: aaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        );
        assert_eq!(
            at_limit(first.max(head.len()), &three),
            Some(Found::Request(3, Refusal::TooLarge))
        );
    }

    #[test]
    fn clean_requests_pass() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
            GET /c HTTP/1.1\n\n";
        assert_eq!(conflicts(stream), None);
    }

    #[test]
    fn the_conflicting_request_is_numbered_by_its_position() {
        let stream = b"\r\nGET / HTTP/1.1\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi\
            POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(conflicts(stream), Some(4));
    }

    #[test]
    fn bodies_that_look_like_heads_are_skipped() {
        let fake = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", fake.len()).into_bytes();
        stream.extend_from_slice(fake);
        stream.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.extend_from_slice(format!("{:x}\r\n", fake.len()).as_bytes());
        stream.extend_from_slice(fake);
        stream.extend_from_slice(b"\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(conflicts(&stream), None);
    }

    #[test]
    fn http2_turns_the_watch_off_and_what_it_cannot_follow_is_refused() {
        let mut s = Scanner::default();
        s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(s.is_off() && !s.is_refused());
        let mut s = Scanner::default();
        let found = s.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        let at = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".len();
        assert_eq!(found, Some(Found::Stream(at)));
        assert!(s.is_refused());
        let mut s = Scanner::default();
        let found = s.feed(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(found, Some(Found::Request(1, Refusal::Unframeable)));
    }

    /// The red team's skips (issue 13): a chunk size of 17 hex digits (leading zeros) and a
    /// `Content-Length` line padded past what the watch keeps. Each is refused where it
    /// stands, so the conflicting request behind it is never reached unwatched.
    #[test]
    fn what_the_watch_cannot_follow_is_refused() {
        let conflicting =
            "POST /b HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let zeros = format!(
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000003\r\nabc\r\n0\r\n\r\n{conflicting}"
        );
        assert_eq!(conflicts(zeros.as_bytes()), Some(0));
        let pad = " ".repeat(70);
        let padded = format!("POST /a HTTP/1.1\r\nContent-Length:{pad}3\r\n\r\nabc{conflicting}");
        assert_eq!(conflicts(padded.as_bytes()), Some(1));
        let fifteen = format!(
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000000000000003\r\nabc\r\n0\r\n\r\n{conflicting}"
        );
        assert_eq!(conflicts(fifteen.as_bytes()), Some(2));
    }

    #[test]
    fn long_lines_are_judged_by_their_prefix() {
        let pad = " ".repeat(200);
        let stream = format!(
            "POST / HTTP/1.1\r\nX-Long: {pad}\r\nContent-Length: 5\r\nTransfer-Encoding:{pad}chunked\r\n\r\n"
        );
        assert_eq!(conflicts(stream.as_bytes()), Some(1));
        let mut s = Scanner::default();
        s.feed(
            format!("POST / HTTP/1.1\r\nX-Long: {pad}\r\n\r\nGET / HTTP/1.1\r\n\r\n").as_bytes(),
        );
        assert_eq!(s.heads, 2);
    }

    proptest::proptest! {
        /// Any stream, in any two pieces, gets the same answer as whole, and never panics.
        #[test]
        fn answers_do_not_depend_on_how_reads_split_the_stream(
            parts in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(&b"POST / HTTP/1.1\r\n"[..]),
                proptest::strategy::Just(&b"Content-Length: 3\r\n"[..]),
                proptest::strategy::Just(&b"Transfer-Encoding: chunked\r\n"[..]),
                proptest::strategy::Just(&b"\r\n"[..]),
                proptest::strategy::Just(&b"3\r\nabc\r\n"[..]),
                proptest::strategy::Just(&b"0\r\n"[..]),
                proptest::strategy::Just(&b"abc"[..]),
            ], 0..24),
            cut in 0usize..400,
        ) {
            let stream = parts.concat();
            let whole = refused(&mut Scanner::default(), &stream);
            let cut = cut.min(stream.len());
            let mut s = Scanner::default();
            let split = refused(&mut s, &stream[..cut]).or_else(|| refused(&mut s, &stream[cut..]));
            proptest::prop_assert_eq!(split, whole);
        }
    }

    #[test]
    fn verdict_matches_the_refused_request_only() {
        let v = Verdict::default();
        v.refuse(2, Refusal::Unframeable);
        assert_eq!(v.next_request_refused(), None);
        assert_eq!(v.next_request_refused(), Some(Refusal::Unframeable));
        assert_eq!(v.next_request_refused(), None);
        for why in [Refusal::Conflict, Refusal::Unframeable, Refusal::TooLarge] {
            let v = Verdict::default();
            v.refuse(1, why);
            assert_eq!(v.next_request_refused(), Some(why));
        }
    }
}
