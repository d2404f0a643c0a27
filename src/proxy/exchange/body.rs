//! The response body the proxy sends: a worker's streamed body (optionally watched for an
//! engine.io handshake) or a small body of our own. An enum, not a box: no allocation per
//! response.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::proxy::io::BoxError;
use crate::proxy::upstream::client::RawBody;
use crate::proxy::upstream::pool::{Lease, Pool};
use crate::routing::Router;
use crate::workers::InFlight;

/// Reads the engine.io session id out of the first frame of a polling handshake reply
/// (`0{"sid":"...",...}` for EIO 4, `96:0{"sid":...}` for EIO 3) and teaches it to the router.
#[derive(Debug)]
pub struct SidSniffer {
    router: Arc<Router>,
    pin: crate::routing::table::Pin,
}

impl SidSniffer {
    /// A sniffer that binds the sid it finds to `worker`.
    pub fn new(router: Arc<Router>, pin: crate::routing::table::Pin) -> Self {
        Self { router, pin }
    }

    fn inspect(&self, chunk: &[u8]) {
        if let Some(sid) = handshake_sid(chunk) {
            let now = self.router.table().now();
            self.router
                .learn_key(sid, self.pin, now, crate::metrics::Learned::EngineIo);
            tracing::debug!(worker = self.pin.worker, sid = %String::from_utf8_lossy(sid), "learned engine.io sid");
        }
    }
}

/// The `sid` of an engine.io open packet at the start of `chunk`, if it is one.
pub fn handshake_sid(chunk: &[u8]) -> Option<&[u8]> {
    let head = &chunk[..chunk.len().min(512)];
    // EIO 3 frames the packet as `<length>:<packet>`; the length may contain zeros.
    let digits = head.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = match head.get(digits) {
        Some(b':') if digits > 0 => &head[digits + 1..],
        _ => head,
    };
    if !rest.starts_with(b"0{") {
        return None;
    }
    const NEEDLE: &[u8] = b"\"sid\":\"";
    let at = rest.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let len = rest[at..].iter().position(|&b| b == b'"')?;
    Some(&rest[at..at + len]).filter(|s| !s.is_empty())
}

/// What the proxy answers with: the body, and the in-flight count it holds open until the
/// body is done (so a draining worker is stopped only after its responses are sent).
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    _in_flight: Option<InFlight>,
    /// The worker connection, handed back to its pool when the body ends.
    giveback: Option<(Arc<Pool>, Lease)>,
}

#[derive(Debug)]
enum Kind {
    /// A worker's body, streamed as it comes.
    Upstream(Incoming),
    /// A worker's handshake body, watched until its first data frame.
    Sniffing(Incoming, Option<SidSniffer>),
    /// A worker's body read from a pooled raw connection.
    Raw(RawBody),
    /// A small body of the proxy's own (errors).
    Own(Option<Bytes>),
}

impl ProxyBody {
    /// A body of the proxy's own.
    pub fn own(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Own(Some(bytes.into())),
            _in_flight: None,
            giveback: None,
        }
    }

    /// A worker's body read from a pooled raw connection (it gives its connection back itself),
    /// counted in flight.
    pub fn raw(body: RawBody, in_flight: InFlight) -> Self {
        Self {
            kind: Kind::Raw(body),
            _in_flight: Some(in_flight),
            giveback: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Own(None),
            _in_flight: None,
            giveback: None,
        }
    }

    /// A worker's body, optionally sniffed for an engine.io sid, counted in flight; its
    /// connection goes back to the pool when it ends.
    pub fn upstream(
        body: Incoming,
        sniffer: Option<SidSniffer>,
        in_flight: InFlight,
        giveback: (Arc<Pool>, Lease),
    ) -> Self {
        let ended = body.is_end_stream();
        let kind = match sniffer {
            Some(s) => Kind::Sniffing(body, Some(s)),
            None => Kind::Upstream(body),
        };
        let mut body = Self {
            kind,
            _in_flight: Some(in_flight),
            giveback: Some(giveback),
        };
        if ended {
            // An empty body may never be polled.
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        if let Some((pool, lease)) = self.giveback.take() {
            pool.put(lease);
        }
    }

    /// The bytes of a body of our own (tests).
    #[cfg(test)]
    pub fn own_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Own(b) => b.as_ref(),
            _ => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Every part is Unpin (Incoming is), so no projection is needed.
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(inner) => Pin::new(inner).poll_frame(cx),
            Kind::Sniffing(inner, sniffer) => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        if let Some(s) = sniffer.take() {
                            s.inspect(data);
                        }
                    }
                }
                polled
            }
            Kind::Raw(body) => return body.poll_frame(cx),
            Kind::Own(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        let polled = polled.map(|frame| frame.map(|r| r.map_err(BoxError::from)));
        if this.giveback.is_some() && (matches!(polled, Poll::Ready(None)) || this.is_end_stream())
        {
            this.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b) | Kind::Sniffing(b, _) => b.is_end_stream(),
            Kind::Raw(b) => b.is_end_stream(),
            Kind::Own(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) | Kind::Sniffing(b, _) => b.size_hint(),
            Kind::Raw(b) => b.size_hint(),
            Kind::Own(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::handshake_sid;

    #[test]
    fn finds_the_sid_of_both_protocol_versions() {
        let v4 =
            br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(handshake_sid(v4), Some(&b"lv_VI97HAXpY6yYWAAAC"[..]));
        let v3 = br#"96:0{"sid":"abcdefghijklmnop","upgrades":[]}2:40"#;
        assert_eq!(handshake_sid(v3), Some(&b"abcdefghijklmnop"[..]));
        assert_eq!(handshake_sid(b"hello 0{\"sid\":\"x\"}"), None);
        assert_eq!(handshake_sid(b"40"), None);
        assert_eq!(handshake_sid(br#"0{"sid":""}"#), None);
        // Lengths with zeros in them (found by fuzzing).
        let v3_100 = br#"100:0{"sid":"abcdefghijklmnopqrstuvwx","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}"#;
        assert_eq!(
            handshake_sid(v3_100),
            Some(&b"abcdefghijklmnopqrstuvwx"[..])
        );
        let v3_90 = br#"90:0{"sid":"l7AY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":186760}"#;
        assert_eq!(handshake_sid(v3_90), Some(&b"l7AY6yYWAAAC"[..]));
        assert_eq!(handshake_sid(b"12:40"), None);
    }
}
