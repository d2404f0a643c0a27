//! What a worker is told about the connection a request came on, made once per connection:
//! the peer's address as an `X-Forwarded-For` hop, and whether it is a `--trust-proxy`
//! front whose own forwarded fields pass.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

use super::route::Route;
use super::Proxy;
use crate::proxy::upstream::write::Forwarded;
use crate::routing::key;

/// A client connection's peer.
#[derive(Debug)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The address as an `X-Forwarded-For` value.
    forwarded_for: HeaderValue,
    /// It is a `--trust-proxy` front.
    trusted_front: bool,
}

impl Peer {
    /// The peer at `addr`, as `proxy` judges it.
    pub fn new(proxy: &Proxy, addr: SocketAddr) -> Self {
        let ip = key::canonical_ip(addr.ip()).to_string();
        Self {
            addr,
            forwarded_for: HeaderValue::try_from(ip)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            trusted_front: proxy.trusts(addr.ip()),
        }
    }

    /// The peer's address.
    #[inline]
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// What the worker is told of a request from this peer routed by `route`.
    #[inline]
    pub fn forwarded(&self, proxy: &Proxy, route: &Route) -> Forwarded<'_> {
        Forwarded {
            client: self.forwarded_for.as_bytes(),
            scheme: proxy.scheme,
            sticky: route.decision.outcome,
            trusted_front: self.trusted_front,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}
