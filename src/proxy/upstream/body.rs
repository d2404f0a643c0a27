//! The request body the proxy sends a worker, and its watch: a client whose body pauses
//! longer than `--body-timeout` fails it ([`Stalled`]), and its moves are noted
//! ([`Progress`]) so that the response timeout counts from the last of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::proxy::io::request_body::RequestBody;
use crate::proxy::io::BoxError;

/// What the proxy sends a worker: the client's body (from hyper's HTTP/1 server or our
/// HTTP/2 front), or nothing (a retried bodyless request). An enum, so the pooled client has
/// one concrete body type.
#[derive(Debug)]
pub enum UpstreamBody {
    /// An HTTP/1 client's body, streamed.
    Client(Incoming),
    /// An HTTP/2 stream's body, streamed.
    H2(RequestBody),
    /// No body.
    Empty,
    /// A body under watch ([`UpstreamBody::watched`]).
    Watched(Box<Watched>),
}

/// How far a request body has come, read by the response timeout: it runs from the body's
/// last move (a frame the worker took, or its end), and not while the body waits for the
/// client, whose pauses have their own limit.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    /// The last move, in milliseconds after `start`.
    moved: AtomicU64,
    /// The body is waiting for the client.
    waiting: AtomicBool,
    ended: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            moved: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        }
    }

    fn moved(&self) {
        let after = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved.store(after, Ordering::Relaxed);
        self.waiting.store(false, Ordering::Relaxed);
    }

    fn end(&self) {
        if !self.ended.swap(true, Ordering::Relaxed) {
            self.moved();
        }
    }

    /// When a response timeout of `limit` runs out: `limit` after the body's last move, or
    /// `limit` from now while it waits for the client.
    pub fn response_deadline(&self, limit: Duration) -> Instant {
        if self.waiting.load(Ordering::Relaxed) && !self.ended.load(Ordering::Relaxed) {
            return Instant::now() + limit;
        }
        self.start + Duration::from_millis(self.moved.load(Ordering::Relaxed)) + limit
    }
}

/// A client's request body paused longer than `--body-timeout` (the limit).
#[derive(Debug)]
pub struct Stalled(pub Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body paused longer than {:?}", self.0)
    }
}

impl std::error::Error for Stalled {}

/// A body whose pauses are timed: only while the watch waits for a client that may send (a
/// worker that reads slowly, or an HTTP/2 connection window other streams hold, is not the
/// client's pause).
#[derive(Debug)]
pub struct Watched {
    inner: UpstreamBody,
    limit: Duration,
    /// Since when the client has been waited for, if it is.
    waiting_since: Option<Instant>,
    /// Made at the first pause; fires at or before the pause's end, moved on only when it
    /// fires early.
    timer: Option<Pin<Box<Sleep>>>,
    progress: Arc<Progress>,
}

impl UpstreamBody {
    /// This body under a pause `limit`, and what the response timeout reads of it; a body
    /// that has already ended is left as it is.
    pub fn watched(self, limit: Duration) -> (Self, Option<Arc<Progress>>) {
        if self.is_end_stream() {
            return (self, None);
        }
        let progress = Arc::new(Progress::new());
        let watched = Watched {
            inner: self,
            limit,
            waiting_since: None,
            timer: None,
            progress: progress.clone(),
        };
        (Self::Watched(Box::new(watched)), Some(progress))
    }

    /// The client cannot send now for a reason of the proxy's own (an HTTP/2 connection
    /// window other streams hold).
    fn client_blocked(&self) -> bool {
        match self {
            Self::H2(b) => b.client_blocked(),
            Self::Watched(w) => w.inner.client_blocked(),
            Self::Client(_) | Self::Empty => false,
        }
    }
}

impl Watched {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.progress.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                self.waiting_since = None;
                match &frame {
                    // Trailers end a body; hyper polls it no more.
                    Ok(f) if f.is_trailers() => self.progress.end(),
                    _ => self.progress.moved(),
                }
                Poll::Ready(Some(frame))
            }
            Poll::Pending => self.poll_pause(cx),
        }
    }

    /// Waiting for the client: [`Stalled`] once it could send and has not for the limit.
    fn poll_pause(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.progress.waiting.store(true, Ordering::Relaxed);
        let now = Instant::now();
        if self.inner.client_blocked() {
            self.waiting_since = None;
        }
        let mut since = *self.waiting_since.get_or_insert(now);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(since + self.limit)));
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if self.inner.client_blocked() {
                since = now;
                self.waiting_since = Some(now);
            } else if now >= since + self.limit {
                return Poll::Ready(Some(Err(Box::new(Stalled(self.limit)))));
            }
            timer.as_mut().reset(since + self.limit);
        }
        Poll::Pending
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // A body dropped unfinished (the worker answered first, or the exchange failed)
        // moves no more: the response timeout runs from here.
        self.progress.end();
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Client(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            Self::H2(b) => Pin::new(b).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
            Self::Watched(w) => w.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Client(b) => b.is_end_stream(),
            Self::H2(b) => b.is_end_stream(),
            Self::Empty => true,
            Self::Watched(w) => {
                // Asked by hyper after every frame: where the body's end is learnt without
                // asking the body once more.
                let ended = w.inner.is_end_stream();
                if ended {
                    w.progress.end();
                }
                ended
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Client(b) => b.size_hint(),
            Self::H2(b) => b.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
            Self::Watched(w) => w.inner.size_hint(),
        }
    }
}
