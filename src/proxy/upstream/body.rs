//! The request body the proxy sends a worker.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Client(b) => b.is_end_stream(),
            Self::H2(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Client(b) => b.size_hint(),
            Self::H2(b) => b.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}
