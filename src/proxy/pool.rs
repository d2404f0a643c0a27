//! Keep-alive connections to the workers: one small pool per worker address, of hyper
//! HTTP/1.1 client connections.
//!
//! Why not hyper-util's pooled client: it hashes a pool key per request, boxes its futures,
//! spawns a task per HTTP/1 response to wait for the connection to be idle again, and
//! consumes the request even when nothing was sent. Here a connection goes back to its pool
//! the moment the response body ends (the body wrapper hands it back), and a request that
//! was not sent comes back to the caller to be sent elsewhere.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::UpstreamBody;

/// Idle connections kept per worker address; more are closed when they come back.
const MAX_IDLE: usize = 256;

type Sender = http1::SendRequest<UpstreamBody>;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// The worker could not be reached; the request was not sent and comes back.
    Connect(std::io::Error, Box<Request<UpstreamBody>>),
    /// The connection failed; the request may have been (partly) sent.
    Failed(hyper::Error),
}

/// The pool of one worker address.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle: Mutex<Vec<Sender>>,
}

/// A connection lent out with a response; give it back with [`Pool::put`] once the response
/// body has ended.
#[derive(Debug)]
pub struct Lease(Sender);

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        Self {
            addr,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn pop_idle(&self) -> Option<Sender> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// An idle connection ready for a request: one handed back a moment ago may still be
    /// finishing its previous exchange, so wait for it (closed ones are dropped).
    async fn take_idle(&self) -> Option<Sender> {
        while let Some(mut sender) = self.pop_idle() {
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
        None
    }

    /// Gives a connection back once its response body has ended.
    pub fn put(&self, lease: Lease) {
        let sender = lease.0;
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    /// Sends `req` on an idle connection, or a new one. An upgrade request's connection is
    /// never reused (it becomes the tunnel).
    ///
    /// # Errors
    /// [`SendError::Connect`] with the request when no connection could be made,
    /// [`SendError::Failed`] when the exchange broke.
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut sender) = self.take_idle().await {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease(sender))),
                Err(mut e) => match e.take_message() {
                    // Not sent (the connection closed while idle): try the next one.
                    Some(back) => req = back,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let mut sender = match self.connect().await {
            Ok(s) => s,
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, Lease(sender))),
            Err(mut e) => match e.take_message() {
                Some(back) => Err(SendError::Connect(
                    std::io::Error::other(e.into_error()),
                    Box::new(back),
                )),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }

    async fn connect(&self) -> std::io::Result<Sender> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {:?}", self.connect_timeout),
                )
            })??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "worker connection ended with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_worker_gives_the_request_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pool = Pool::new(addr, Duration::from_secs(1));
        let req = Request::get("/x")
            .body(UpstreamBody::Empty)
            .expect("request");
        match pool.send(req).await {
            Err(SendError::Connect(_, back)) => assert_eq!(back.uri(), "/x"),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}
