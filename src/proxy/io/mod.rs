//! Byte plumbing below HTTP: a stream with bytes put back in front (`rewind`), the HTTP/1
//! framing watch beside hyper (`framing`), tunnels (`splice`, `upgrade`), an HTTP/2
//! stream's request body under flow control (`request_body`) and how a client connection
//! is closed (`close`).

pub mod close;
pub mod framing;
pub mod request_body;
pub mod rewind;
pub mod splice;
pub mod upgrade;

/// A boxed error, as bodies report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
