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
