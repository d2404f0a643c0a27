//! Who may enter, which requests are refused before routing, and which are shed because
//! their worker has too many unanswered (`--max-pending`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{header, HeaderMap, Method, Uri, Version};

use super::answer::Answer;
use super::route::Route;
use super::Proxy;
use crate::metrics::{self, Refused};
use crate::proxy::http1::head::valid_host;

/// The answer refusing a request whose `Host` a worker must not be given (RFC 9112 3.2,
/// RFC 9113 8.3.1): two of them, none over HTTP/1.1, one that is not `host[:port]` (an
/// HTTP/2 `:authority` arrives here as the `Host`), or a `Connection` that names it (its
/// removal would leave the worker guessing). Every front's requests pass here: the direct
/// paths hand such requests over to the general path.
pub fn host_refusal(version: Version, headers: &HeaderMap) -> Option<Answer> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let why = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => "more than one Host",
        (None, _) if version == Version::HTTP_11 => "no Host",
        (Some(host), None) if !valid_host(host.as_bytes()) => "a Host that is not host[:port]",
        _ => {
            let names_host = headers.get_all(header::CONNECTION).iter().any(|v| {
                v.as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"host"))
            });
            if !names_host {
                return None;
            }
            "a Connection header that names Host"
        }
    };
    Some(Answer::bad_host(why))
}

/// The answer refusing a request framed by a transfer coding the proxy does not apply
/// (RFC 9112 6.1: 501): only `Transfer-Encoding: chunked` is read. Forwarded, `gzip,
/// chunked` would reach the worker as plain chunked with the `gzip` gone, and the worker
/// would take compressed bytes for the body. As nginx does; the connection closes (its
/// body cannot be followed). Requests with a `Transfer-Encoding` that ends in `chunked`
/// come here (the direct path hands them over, and HTTP/2 refuses the field); hyper's
/// parser answers 400 to one that does not end in `chunked`.
pub fn coding_refusal(headers: &HeaderMap) -> Option<Answer> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(Answer::unknown_coding()),
    }
}

/// The answer to a client whose request body paused longer than `--body-timeout`
/// (`limit`), counted: its own fault, not the worker's (408, the connection closed). Both
/// ways a body is held come here: read whole first (the direct path) or streamed.
pub fn body_stalled(limit: std::time::Duration) -> Answer {
    metrics::refused(Refused::BodyTimeout);
    Answer::body_timeout(limit)
}

/// Why a request target no worker should get is refused (RFC 9112 3.2, RFC 9113 8.3.1):
/// the authority form (`host:port`) belongs to CONNECT alone and the asterisk form (`*`)
/// to OPTIONS alone. Origin form (`/path`) and absolute form (`http://host/path`, whose
/// authority must be a `host[:port]`: it becomes the `Host`) pass.
/// Both HTTP/1.1 (hyper's path; the direct path hands such targets over) and HTTP/2
/// (`:path`) ask here.
pub fn target_refusal(method: &Method, uri: &Uri) -> Option<&'static str> {
    if *method == Method::CONNECT {
        return None;
    }
    if uri.scheme().is_some() {
        // Its authority becomes the `Host` (RFC 9112 3.2.2): it must be one.
        let host = uri.authority().map(|a| a.as_str().as_bytes());
        return (!host.is_some_and(valid_host))
            .then_some("an absolute target whose authority is not host[:port]: send a path");
    }
    if uri.authority().is_some() {
        return Some("a host:port target is CONNECT's, and CONNECT is refused: send a path");
    }
    (uri.path() == "*" && *method != Method::OPTIONS)
        .then_some("the target * is OPTIONS's alone: send a path")
}

impl Proxy {
    /// The client's address: the peer, or what a trusted front proxy says it is.
    #[inline]
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        match &self.trusted {
            Some(t) => t.client_ip(
                peer,
                headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .map(|v| v.as_bytes()),
            ),
            None => crate::routing::key::canonical_ip(peer),
        }
    }

    /// Whether `peer` is a `--trust-proxy` front: its `X-Forwarded-For` names the client and
    /// its `X-Forwarded-Proto` and `X-Forwarded-Host` are passed on to the worker.
    #[inline]
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted
            .as_ref()
            .is_some_and(|t| t.is_trusted(peer.to_canonical()))
    }

    /// Admits a request from `peer` (`connect`: its method is `CONNECT`; `upgrade`: it asks
    /// for one): its client's address, or the answer that refuses it (`CONNECT`, the IP
    /// filter, an upgrade with `--no-websocket`). A refused upgrade
    /// closes its connection.
    #[inline]
    pub fn admit(
        &self,
        peer: IpAddr,
        headers: &http::HeaderMap,
        connect: bool,
        upgrade: bool,
    ) -> Result<IpAddr, Answer> {
        if connect {
            return Err(Answer::connect_refused());
        }
        let client = self.client_ip(peer, headers);
        if !self.filter.as_ref().is_none_or(|f| f.permits(client)) {
            if self.debug {
                tracing::debug!(client = %client, peer = %peer, "refused by the IP filter");
            }
            metrics::refused(Refused::IpFilter);
            let refused = Answer::forbidden();
            return Err(if upgrade { refused.closing() } else { refused });
        }
        if upgrade && !self.websocket {
            return Err(Answer::websocket_off());
        }
        Ok(client)
    }
}

/// A request sent to its worker and not answered yet: counted against `--max-pending` until
/// the worker's response head arrives (or the attempt fails).
#[derive(Debug)]
pub struct Pending<'p>(&'p AtomicUsize);

impl Drop for Pending<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proxy {
    /// Admits a request to the worker of `route`, or sheds it when that worker already has
    /// `--max-pending` requests unanswered: past capacity the excess is answered at once
    /// (503, `Retry-After`) instead of waiting in an unbounded queue. Every front's requests
    /// pass here before each send.
    #[inline]
    pub fn admit_to(&self, route: &Route) -> Result<Pending<'_>, Answer> {
        let count = &self.pending[usize::from(route.worker())];
        let before = count.fetch_add(1, Ordering::AcqRel);
        let pending = Pending(count);
        if self.config.max_pending != 0 && before >= self.config.max_pending {
            drop(pending);
            metrics::refused(Refused::Overloaded);
            if self.debug {
                tracing::debug!(worker = route.worker(), "shed: --max-pending reached");
            }
            return Err(Answer::overloaded());
        }
        Ok(pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_in_the_wrong_form_for_their_method_are_refused() {
        let refused = |m: Method, t: &str| target_refusal(&m, &t.parse().unwrap()).is_some();
        assert!(!refused(Method::GET, "/a?b"));
        assert!(!refused(Method::GET, "http://example.com/a"));
        assert!(refused(Method::GET, "http://u@example.com/a"));
        assert!(!refused(Method::OPTIONS, "*"));
        assert!(!refused(Method::CONNECT, "example.com:443"));
        assert!(refused(Method::GET, "example.com:80"));
        assert!(refused(Method::GET, "a"));
        assert!(refused(Method::GET, "*"));
        assert!(refused(Method::POST, "*"));
    }
}
