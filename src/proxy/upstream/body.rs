//! The request body the proxy sends a worker, and its watch: a client whose body pauses
//! longer than `--body-timeout` fails it ([`Stalled`]), and its end is noted
//! ([`Progress`]) so that the response timeout counts from there.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How far a request body has come, read by the response timeout: a worker cannot answer
/// before the body it waits for has arrived.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    /// When the body ended, in milliseconds after `start`; `u64::MAX` while it goes on.
    ended: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            ended: AtomicU64::new(u64::MAX),
        }
    }

    fn end(&self) {
        let after = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        // Only the first end counts.
        let _ = self
            .ended
            .compare_exchange(u64::MAX, after, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// When a response timeout of `limit` runs out: `limit` after the body's end, or
    /// `limit` from now while the body still comes (its pauses have their own limit).
    pub fn response_deadline(&self, limit: Duration) -> Instant {
        match self.ended.load(Ordering::Relaxed) {
            u64::MAX => Instant::now() + limit,
            after => self.start + Duration::from_millis(after) + limit,
        }
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

/// A body whose pauses are timed: only while the watch waits for the client (a worker that
/// reads slowly is not the client's pause).
#[derive(Debug)]
pub struct Watched {
    inner: UpstreamBody,
    limit: Duration,
    /// Since when the client has been waited for, if it is.
    waiting_since: Option<Instant>,
    /// Fires at or before the pause's end; moved on only when it fires early.
    timer: Pin<Box<Sleep>>,
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
            timer: Box::pin(tokio::time::sleep(limit)),
            progress: progress.clone(),
        };
        (Self::Watched(Box::new(watched)), Some(progress))
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
                if self.inner.is_end_stream() {
                    self.progress.end();
                }
                Poll::Ready(Some(frame))
            }
            Poll::Pending => self.poll_pause(cx),
        }
    }

    /// Waiting for the client: [`Stalled`] once the pause is longer than the limit.
    fn poll_pause(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let pause_ends = since + self.limit;
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= pause_ends {
                return Poll::Ready(Some(Err(Box::new(Stalled(self.limit)))));
            }
            self.timer.as_mut().reset(pause_ends);
        }
        Poll::Pending
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
            Self::Watched(w) => w.inner.is_end_stream(),
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
