//! The worker side: keep-alive pools per worker address (`pool`), the raw HTTP/1.1 client on
//! their plain sockets (`client`), and the request body sent to workers (`body`).

pub mod body;
pub mod client;
pub mod pool;
pub mod stream;
pub mod write;
