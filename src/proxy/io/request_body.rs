//! A client's request body on an HTTP/2 stream, as the forwarding path reads it: the
//! connection pushes DATA in, the reader takes it out, and every byte taken is credited back
//! to the connection, which only then reopens the client's flow-control window. So a client
//! can never have more than one window of body buffered here, however slow the worker.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc::UnboundedSender;

use super::BoxError;

/// Bytes a stream's reader consumed: (stream, bytes), for WINDOW_UPDATE.
pub type Credit = (u32, u32);

#[derive(Debug, Default)]
struct State {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The client sent END_STREAM.
    ended: bool,
    /// The client reset the stream, or the connection ended first.
    broken: bool,
    /// The reader is gone: nothing more is queued (the connection gives the window back).
    dropped: bool,
    waker: Option<Waker>,
}

/// The connection's side of a request body.
#[derive(Debug, Clone)]
pub struct Sender(Arc<Mutex<State>>);

/// The forwarding path's side: an [`http_body::Body`].
#[derive(Debug)]
pub struct RequestBody {
    state: Arc<Mutex<State>>,
    stream: u32,
    credits: UnboundedSender<Credit>,
    /// The body's length, from the client's `content-length`.
    length: Option<u64>,
    /// The connection's receive window is closed: the client cannot send (see
    /// [`RequestBody::client_blocked`]).
    window_closed: Arc<AtomicBool>,
}

/// A body for `stream`, whose consumption is credited on `credits`; `window_closed` is the
/// connection's word on whether its client may send.
pub fn channel(
    stream: u32,
    credits: UnboundedSender<Credit>,
    length: Option<u64>,
    window_closed: Arc<AtomicBool>,
) -> (Sender, RequestBody) {
    let state = Arc::new(Mutex::new(State::default()));
    (
        Sender(state.clone()),
        RequestBody {
            state,
            stream,
            credits,
            length,
            window_closed,
        },
    )
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing panics while holding it; a poisoned lock still holds consistent data.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sender {
    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut state = lock(&self.0);
        f(&mut state);
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }

    /// More of the body; false (and not kept) when nobody reads it any more.
    pub fn data(&self, data: Bytes) -> bool {
        let mut kept = false;
        self.update(|s| {
            if !s.dropped {
                s.chunks.push_back(data);
                kept = true;
            }
        });
        kept
    }

    /// The body's trailers, which end it.
    pub fn trailers(&self, trailers: HeaderMap) {
        self.update(|s| {
            s.trailers = Some(trailers);
            s.ended = true;
        });
    }

    /// The body is complete.
    pub fn end(&self) {
        self.update(|s| s.ended = true);
    }

    /// The body will not be completed.
    pub fn break_off(&self) {
        self.update(|s| s.broken = true);
    }
}

impl RequestBody {
    /// The client cannot send for now: the connection's receive window is held by other
    /// streams' bodies their workers have not read yet. Not the client's pause.
    pub fn client_blocked(&self) -> bool {
        self.window_closed.load(Ordering::Relaxed)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // What was queued and never read is given back, or the client's window would
        // shrink for good (a request answered before its body was read).
        let mut state = lock(&self.state);
        state.dropped = true;
        let unread: usize = state.chunks.drain(..).map(|c| c.len()).sum();
        drop(state);
        if unread > 0 {
            let _ = self.credits.send((self.stream, unread as u32));
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut state = lock(&this.state);
        if let Some(data) = state.chunks.pop_front() {
            drop(state);
            // The connection may be gone; then nothing needs the credit.
            let _ = this.credits.send((this.stream, data.len() as u32));
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(t) = state.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        if state.broken {
            return Poll::Ready(Some(Err("the client reset the stream".into())));
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let state = lock(&self.state);
        state.ended && state.chunks.is_empty() && state.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.length
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
