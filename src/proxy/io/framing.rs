//! Refusing request smuggling on HTTP/1 client connections.
//!
//! A request head carrying both `Content-Length` and `Transfer-Encoding` is the classic
//! smuggling vector: two parsers that disagree on where its body ends disagree on where the
//! next request starts. hyper resolves it safely (chunked wins, the connection closes after
//! the answer) but removes the `Content-Length` before the handler sees the head, so the
//! handler cannot refuse the request as HAProxy and nginx do. [`FramingWatch`] follows the
//! client's byte stream beside hyper (request heads, fixed-length and chunked bodies) and
//! records which request on the connection, by position, carried both headers;
//! [`Verdict::next_request_conflicts`] tells the handler when that request is the one it
//! holds. Requests are numbered the same way on both sides because HTTP/1 serves them one
//! at a time, in order.
//!
//! The watch costs one line search per head line and none per body byte. Anything it cannot
//! follow (an HTTP/2 preface, a malformed chunk, a tunnel after an upgrade) turns it off:
//! hyper rejects malformed framing itself, so the watch only has to be right about the
//! streams hyper accepts.
//!
//! Knowing where heads start also makes it the cheapest place for the head deadline
//! (`--header-timeout`: slowloris, and idle keep-alive connections): a connection waiting
//! for a head that is not complete within the deadline gets a read error and is closed.
//! hyper's own header timer allocates and registers a fresh timer per request; this one
//! timer per connection is only moved later (an atomic update in tokio's timer wheel).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the watch learned, shared with the connection's request handler.
#[derive(Debug, Default)]
pub struct Verdict {
    /// 1-based number of the first request whose head had both headers; 0: none so far.
    conflicting: AtomicU32,
    /// Requests the handler has taken so far.
    taken: AtomicU32,
    /// The connection left HTTP/1 (an upgrade): its bytes are no longer requests.
    stopped: AtomicBool,
}

impl Verdict {
    /// Counts one more request on the connection; true when its head carried both
    /// `Content-Length` and `Transfer-Encoding`.
    pub fn next_request_conflicts(&self) -> bool {
        let n = self.taken.fetch_add(1, Ordering::Relaxed) + 1;
        n == self.conflicting.load(Ordering::Acquire)
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
}

impl<I> FramingWatch<I> {
    /// Watches `io`, reporting to `verdict`; a head must be complete within
    /// `head_timeout` of the connection starting to wait for it.
    pub fn new(io: I, verdict: Arc<Verdict>, head_timeout: Duration) -> Self {
        Self {
            io,
            scanner: Scanner::default(),
            verdict,
            head_timeout,
            head_deadline: None,
            deadline_for_head: None,
        }
    }

    /// Waiting for (the rest of) a head: runs the deadline, set now if none is running.
    fn poll_head_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let heads = self.scanner.heads;
        if self.deadline_for_head != Some(heads) {
            let at = Instant::now() + self.head_timeout;
            match &mut self.head_deadline {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.head_deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
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
        let start = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending if this.scanner.awaits_head() => return this.poll_head_deadline(cx),
            other => return other,
        }
        if !this.scanner.is_off() {
            if let Some(n) = this.scanner.feed(&buf.filled()[start..]) {
                this.verdict.conflicting.store(n, Ordering::Release);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingWatch<I> {
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

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where the scanner is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head, line by line.
    Head,
    /// In a fixed-length body: this many bytes left.
    Body(u64),
    /// At a chunk-size line.
    ChunkSize,
    /// In a chunk: this many bytes left.
    ChunkData(u64),
    /// At the line break that ends a chunk's data.
    ChunkEnd,
    /// In the trailer section after the last chunk.
    Trailers,
    /// Not following the stream any more.
    Off,
}

/// The longest line prefix kept: enough for `content-length:` with a 20-digit value and
/// some spaces, and for a chunk size; longer lines are judged by their prefix.
const LINE_PREFIX: usize = 64;

/// Follows HTTP/1 request framing over a byte stream fed in arbitrary pieces.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    line: [u8; LINE_PREFIX],
    line_len: usize,
    line_truncated: bool,
    /// Lines of the current head so far (the request line included).
    head_lines: u32,
    content_length: Option<u64>,
    has_content_length: bool,
    has_transfer_encoding: bool,
    /// The current head's body length cannot be told (hyper refuses such a head).
    unframeable: bool,
    /// Complete heads seen.
    heads: u32,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            state: State::Head,
            line: [0; LINE_PREFIX],
            line_len: 0,
            line_truncated: false,
            head_lines: 0,
            content_length: None,
            has_content_length: false,
            has_transfer_encoding: false,
            unframeable: false,
            heads: 0,
        }
    }
}

impl Scanner {
    /// True once the scanner no longer follows the stream.
    pub fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Between or inside request heads (not in a body, not off).
    pub fn awaits_head(&self) -> bool {
        self.state == State::Head
    }

    fn turn_off(&mut self) {
        self.state = State::Off;
    }

    /// Follows the next bytes of the stream; returns the 1-based number of a request whose
    /// head carries both `Content-Length` and `Transfer-Encoding` when one ends in them.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<u32> {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return None,
                State::Body(left) | State::ChunkData(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    let left = left - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), _) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(end) = memchr::memchr(b'\n', bytes) else {
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

    fn keep(&mut self, part: &[u8]) {
        let room = LINE_PREFIX - self.line_len;
        let kept = part.len().min(room);
        self.line[self.line_len..self.line_len + kept].copy_from_slice(&part[..kept]);
        self.line_len += kept;
        self.line_truncated |= kept < part.len();
    }

    /// Judges one line (its first `LINE_PREFIX` bytes, and whether there were more).
    fn end_line(&mut self, line: &[u8], truncated: bool) -> Option<u32> {
        let line = match line {
            [rest @ .., b'\r'] if !truncated => rest,
            _ => line,
        };
        let empty = line.is_empty() && !truncated;
        match self.state {
            State::Head => return self.head_line(line, truncated, empty),
            State::ChunkSize => {
                self.state = match chunk_size(line, truncated) {
                    Some(0) => State::Trailers,
                    Some(size) => State::ChunkData(size),
                    None => State::Off,
                }
            }
            State::ChunkEnd => self.state = if empty { State::ChunkSize } else { State::Off },
            State::Trailers => {
                if empty {
                    self.state = State::Head;
                }
            }
            State::Body(_) | State::ChunkData(_) | State::Off => {}
        }
        None
    }

    fn head_line(&mut self, line: &[u8], truncated: bool, empty: bool) -> Option<u32> {
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
        let conflict = self.has_content_length && self.has_transfer_encoding;
        let body = self.content_length;
        let chunked = self.has_transfer_encoding;
        let unframeable = self.unframeable;
        self.head_lines = 0;
        self.content_length = None;
        self.has_content_length = false;
        self.has_transfer_encoding = false;
        self.unframeable = false;
        if conflict {
            // hyper closes the connection after this request: nothing further to follow.
            self.state = State::Off;
            return Some(self.heads);
        }
        self.state = match (chunked, body) {
            // hyper refuses a head it cannot frame: nothing to follow after it.
            _ if unframeable => State::Off,
            (true, _) => State::ChunkSize,
            (false, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head,
        };
        None
    }
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

/// A chunk-size line's size (extensions after `;` ignored); `None` when malformed.
fn chunk_size(line: &[u8], truncated: bool) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    if digits == 0 || digits > 16 || (truncated && rest.is_empty()) {
        return None;
    }
    if !matches!(rest.first(), None | Some(b';' | b' ' | b'\t')) {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conflicts found when `stream` is fed whole and in every two-piece split.
    fn conflicts(stream: &[u8]) -> Option<u32> {
        let whole = Scanner::default().feed(stream);
        for cut in 0..=stream.len() {
            let mut s = Scanner::default();
            let first = s.feed(&stream[..cut]);
            let found = first.or_else(|| s.feed(&stream[cut..]));
            assert_eq!(found, whole, "split at {cut} changed the answer");
        }
        let mut s = Scanner::default();
        let byte_by_byte = stream.iter().find_map(|b| s.feed(std::slice::from_ref(b)));
        assert_eq!(
            byte_by_byte, whole,
            "byte-by-byte feeding changed the answer"
        );
        whole
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
    fn http2_and_malformed_chunks_turn_the_watch_off() {
        let mut s = Scanner::default();
        s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(s.is_off());
        let mut s = Scanner::default();
        s.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert!(s.is_off());
        let mut s = Scanner::default();
        s.feed(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert!(s.is_off());
    }

    #[test]
    fn long_lines_are_judged_by_their_prefix() {
        let pad = " ".repeat(200);
        let stream = format!(
            "POST / HTTP/1.1\r\nX-Long: {pad}\r\nContent-Length:{pad}5\r\nTransfer-Encoding: chunked\r\n\r\n"
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
            let whole = Scanner::default().feed(&stream);
            let cut = cut.min(stream.len());
            let mut s = Scanner::default();
            let split = s.feed(&stream[..cut]).or_else(|| s.feed(&stream[cut..]));
            proptest::prop_assert_eq!(split, whole);
        }
    }

    #[test]
    fn verdict_matches_the_conflicting_request_only() {
        let v = Verdict::default();
        v.conflicting.store(2, Ordering::Release);
        assert!(!v.next_request_conflicts());
        assert!(v.next_request_conflicts());
        assert!(!v.next_request_conflicts());
    }
}
