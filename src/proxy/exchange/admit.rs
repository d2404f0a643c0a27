//! Who may enter, and which requests are refused before routing.

use std::net::IpAddr;

use super::answer::Answer;
use super::Proxy;
use crate::metrics::{self, Refused};

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
