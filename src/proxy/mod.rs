//! The reverse proxy: accepts client connections (HTTP/1.1 and HTTP/2 on one socket), asks
//! the router for a worker, forwards over a pooled keep-alive client, tunnels upgrades.
//! It knows nothing about processes: worker liveness comes from the shared [`WorkerSet`].

mod exchange;
mod front;
mod http1;
mod io;
mod upstream;

pub use exchange::body::handshake_sid;
pub use exchange::{Proxy, ProxyConfig};
pub use front::redirect::serve_redirect;
pub use front::serve;
pub use http1::head::Underscores;

/// The proxy's own codecs, for the fuzz targets (through `internal::codec`): HTTP/1 heads,
/// the chunked follower, the framing watch, HTTP/2 frames and HPACK.
#[doc(hidden)]
pub mod codec {
    pub use super::front::h2::codec as h2;
    pub use super::http1::chunked::{Chunks, Decoded, Malformed};
    pub use super::http1::head::{
        upstream_role, valid_host, Field, Framing, Parse, RequestHead, ResponseHead, Role,
        MAX_HEADERS,
    };
    pub use super::io::framing::{Found, Refusal, Scanner};
}
