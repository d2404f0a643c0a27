//! Keep-alive connections to the workers: one small pool per worker address, of hyper
//! HTTP/1.1 client connections (for hyper's path) and of plain sockets (for the direct
//! HTTP/1 path, which speaks on them itself).
//!
//! Why not hyper-util's pooled client: it hashes a pool key per request, boxes its futures,
//! spawns a task per HTTP/1 response to wait for the connection to be idle again, and
//! consumes the request even when nothing was sent. Here a connection goes back to its pool
//! the moment the response body ends (the body wrapper hands it back), and a request that
//! was not sent comes back to the caller to be sent elsewhere.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

use super::body::{Progress, UpstreamBody};
use super::stream::{Connector, WorkerStream};
use crate::workers::{WorkerId, WorkerSet};

/// Idle connections kept per worker address; more are closed when they come back. It must
/// cover a burst: a proxy thread often hands back hundreds of connections before it reads
/// the requests that will take them again. At 256, h2load's 640 concurrent streams to one
/// worker (-c64 -m10 over TLS) opened a new connection for about one request in ten and
/// closed another: 12.9 µs of proxy CPU per request against 9.4 at 1024 (bench/h2-streams.sh).
/// Idle connections never outnumber the requests that were once in flight together, so
/// they hold no descriptors or memory beyond that peak's (a raw one: its socket and 17 KiB
/// of buffers), and workers close idle ones at their keep-alive timeout. Giving the buffers
/// of idle connections past the first 64 back to the allocator was tried: the allocations
/// and page faults when they were taken again cost 7 % of the requests per second.
const MAX_IDLE: usize = 1024;

type Sender = http1::SendRequest<UpstreamBody>;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// The request was not sent (the worker could not be reached, or the connection closed
    /// before it went out); it comes back.
    Connect(std::io::Error, Box<Request<UpstreamBody>>),
    /// The connection failed; the request may have been (partly) sent.
    Failed(Box<dyn std::error::Error + Send + Sync>),
    /// No response head within the response timeout.
    TimedOut,
}

/// A connection and its response deadline: one timer per connection, moved later for each
/// request (an atomic update in tokio's timer wheel) instead of a timer made and
/// registered per request.
#[derive(Debug)]
struct Conn {
    sender: Sender,
    /// The task driving the connection: ended when a response times out, so neither the
    /// worker's socket nor the client's body (and the client) wait on a worker that may
    /// never answer.
    task: AbortHandle,
    deadline: Pin<Box<Sleep>>,
    /// The generation of the address it was opened to.
    generation: u8,
}

impl Conn {
    fn new((sender, task): (Sender, AbortHandle), generation: u8) -> Self {
        Self {
            sender,
            task,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now())),
            generation,
        }
    }

    /// True when the connection can take a request, waiting at most `within` for it to
    /// finish its previous exchange; false when it closed or did not get there.
    async fn ready(&mut self, within: Duration) -> bool {
        if self.sender.is_ready() {
            return true;
        }
        if self.sender.is_closed() {
            return false;
        }
        let sender = &mut self.sender;
        let ready = std::pin::pin!(poll_fn(|cx| sender.poll_ready(cx)));
        before(&mut self.deadline, within, ready)
            .await
            .is_some_and(|r| r.is_ok())
    }

    /// Sends `req`, waiting at most `timeout` for the response head (counted from the last
    /// move of the body whose `progress` is given, and not while it waits for its client).
    async fn send(
        &mut self,
        req: Request<UpstreamBody>,
        timeout: Duration,
        progress: Option<&Progress>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        self.deadline.as_mut().reset(Instant::now() + timeout);
        let outcome = loop {
            match until(&mut self.deadline, response.as_mut()).await {
                Some(out) => break Some(out),
                None => match progress.map(|p| p.response_deadline(timeout)) {
                    Some(later) if later > Instant::now() => self.deadline.as_mut().reset(later),
                    _ => break None,
                },
            }
        };
        match outcome {
            Some(Ok(resp)) => Ok(resp),
            Some(Err(mut e)) => Err(match e.take_message() {
                Some(back) => {
                    SendError::Connect(std::io::Error::other(e.into_error()), Box::new(back))
                }
                None => SendError::Failed(Box::new(e.into_error())),
            }),
            None => {
                self.task.abort();
                Err(SendError::TimedOut)
            }
        }
    }
}

/// `work`'s output, or `None` when `timer`, moved to `limit` from now, fires first. Takes
/// `work` pinned where it is and is no async fn: a per-request future copied into one more
/// frame showed in the instruction count.
fn before<'a, F: Future>(
    timer: &'a mut Pin<Box<Sleep>>,
    limit: Duration,
    work: Pin<&'a mut F>,
) -> impl Future<Output = Option<F::Output>> + 'a {
    timer.as_mut().reset(Instant::now() + limit);
    until(timer, work)
}

/// `work`'s output, or `None` when `timer` fires first (where it is set now).
pub fn until<'a, F: Future>(
    timer: &'a mut Pin<Box<Sleep>>,
    mut work: Pin<&'a mut F>,
) -> impl Future<Output = Option<F::Output>> + 'a {
    poll_fn(move |cx| match work.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
    })
}

/// Where a pool's connections go: one of a worker slot's two addresses, read at each
/// connect (a rolling restart may move a replacement to another port).
#[derive(Debug, Clone)]
pub struct Address {
    /// The slots.
    pub workers: Arc<WorkerSet>,
    /// The slot.
    pub id: WorkerId,
    /// Which of its two addresses.
    pub index: usize,
}

impl Address {
    fn get(&self) -> SocketAddr {
        self.workers
            .addrs(self.id)
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |a| a[self.index & 1])
    }

    /// The generation of the process (or, for a discovered slot, of the address) behind
    /// it now: a pooled connection of another generation leads elsewhere and is dropped.
    #[inline]
    fn generation(&self) -> u8 {
        self.workers.generation_at(self.id, self.index)
    }
}

/// The pool of one worker address.
#[derive(Debug)]
pub struct Pool {
    addr: Address,
    connector: Connector,
    idle: Mutex<Vec<Conn>>,
    raw_idle: Mutex<Vec<RawConn>>,
}

/// A worker connection the direct HTTP/1 path reads and writes itself, with its buffers
/// (kept across requests: no allocation per exchange).
#[derive(Debug)]
pub struct RawConn {
    /// The socket.
    pub stream: WorkerStream,
    /// Bytes read from the worker and not yet passed on.
    pub rbuf: BytesMut,
    /// The request head being written.
    pub wbuf: Vec<u8>,
    /// The deadline of the exchange under way (request written, response head read): one
    /// timer per connection, moved for each request.
    pub deadline: Pin<Box<Sleep>>,
    /// The generation of the address it was opened to.
    generation: u8,
}

/// Read buffer of a direct-path worker connection.
const RAW_READ_BUFFER: usize = 16 * 1024;

impl RawConn {
    fn still_idle(&self) -> bool {
        self.stream.still_idle()
    }
}

/// A connection lent out with a response; give it back with [`Pool::put`] once the response
/// body has ended.
#[derive(Debug)]
pub struct Lease(Conn);

impl Pool {
    /// An empty pool for `addr`, opening connections with `connector`.
    pub fn new(addr: Address, connector: Connector) -> Self {
        Self {
            addr,
            connector,
            idle: Mutex::new(Vec::new()),
            raw_idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle raw connection that is still open, if any.
    pub fn take_raw(&self) -> Option<RawConn> {
        loop {
            let conn = self
                .raw_idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()?;
            if conn.generation == self.addr.generation() && conn.still_idle() {
                return Some(conn);
            }
        }
    }

    /// Gives back a raw connection whose exchange is complete.
    pub fn put_raw(&self, mut conn: RawConn) {
        conn.rbuf.clear();
        if conn.rbuf.capacity() > RAW_READ_BUFFER {
            // Grown for a large body: an idle connection holds only the usual buffer.
            conn.rbuf = BytesMut::with_capacity(RAW_READ_BUFFER);
        }
        conn.wbuf.clear();
        if conn.generation != self.addr.generation() {
            return;
        }
        let mut idle = self.raw_idle.lock().unwrap_or_else(|e| e.into_inner());
        // Taken last in, first out: the oldest is looked at here, so connections the worker
        // closed while idle at the bottom do not linger.
        if idle.first().is_some_and(|oldest| !oldest.still_idle()) {
            idle.swap_remove(0);
        }
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// A new raw connection.
    pub async fn connect_raw(&self) -> std::io::Result<RawConn> {
        let generation = self.addr.generation();
        Ok(RawConn {
            generation,
            stream: self.open().await?,
            rbuf: BytesMut::with_capacity(RAW_READ_BUFFER),
            wbuf: Vec::with_capacity(1024),
            deadline: Box::pin(tokio::time::sleep_until(Instant::now())),
        })
    }

    fn pop_idle(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// An idle connection ready for a request: one handed back a moment ago may still be
    /// finishing its previous exchange, so wait for it (closed ones are dropped).
    async fn take_idle(&self) -> Option<Conn> {
        while let Some(mut conn) = self.pop_idle() {
            if conn.generation == self.addr.generation() && conn.ready(self.connector.timeout).await
            {
                return Some(conn);
            }
        }
        None
    }

    /// Gives a connection back once its response body has ended.
    pub fn put(&self, lease: Lease) {
        let conn = lease.0;
        if conn.sender.is_closed() || conn.generation != self.addr.generation() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Sends `req` on an idle connection, or a new one, and waits at most `timeout` for the
    /// response head. An upgrade request's connection is never reused (it becomes the
    /// tunnel).
    ///
    /// # Errors
    /// [`SendError::Connect`] with the request when no connection could be made,
    /// [`SendError::Failed`] when the exchange broke, [`SendError::TimedOut`].
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
        timeout: Duration,
        progress: Option<&Progress>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut conn) = self.take_idle().await {
            match conn.send(req, timeout, progress).await {
                Ok(resp) => return Ok((resp, Lease(conn))),
                // Not sent (the connection closed while idle): try the next one.
                Err(SendError::Connect(_, back)) => req = *back,
                Err(e) => return Err(e),
            }
        }
        let generation = self.addr.generation();
        let mut conn = match self.connect().await {
            Ok(sender) => Conn::new(sender, generation),
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        };
        conn.send(req, timeout, progress)
            .await
            .map(|resp| (resp, Lease(conn)))
    }

    async fn open(&self) -> std::io::Result<WorkerStream> {
        self.connector.open(self.addr.get()).await
    }

    async fn connect(&self) -> std::io::Result<(Sender, AbortHandle)> {
        let stream = self.open().await?;
        let (sender, conn) = http1::Builder::new()
            // Body chunks are queued and written with the head in one vectored write, not
            // copied into a flat buffer: the connections of this pool carry the uploads
            // (bodyless requests take the raw connections), and a 16 MiB upload was copied
            // once more in user space (callgrind, bench/bodies-callgrind.sh).
            .writev(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let addr = self.addr.get();
        let task = tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "worker connection ended with an error");
            }
        });
        Ok((sender, task.abort_handle()))
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
        let connector = Connector {
            timeout: Duration::from_secs(1),
            tls: None,
        };
        let workers = Arc::new(WorkerSet::new([], [addr]));
        let slot = Address {
            workers,
            id: 0,
            index: 0,
        };
        let pool = Pool::new(slot, connector);
        let req = Request::get("/x")
            .body(UpstreamBody::Empty)
            .expect("request");
        match pool.send(req, Duration::from_secs(5), None).await {
            Err(SendError::Connect(_, back)) => assert_eq!(back.uri(), "/x"),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_is_not_reused_once_its_slot_holds_another_address() {
        let a = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let b = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let workers = Arc::new(WorkerSet::new([], []).with_discovered(1));
        workers.occupy(0, a.local_addr().expect("addr"));
        let slot = Address {
            workers: workers.clone(),
            id: 0,
            index: 0,
        };
        let pool = Pool::new(
            slot,
            Connector {
                timeout: Duration::from_secs(1),
                tls: None,
            },
        );
        let conn = pool.connect_raw().await.expect("connected to a");
        let _accepted = a.accept().await.expect("accepted");
        pool.put_raw(conn);
        assert!(pool.take_raw().is_some(), "kept while the address stays");
        let conn = pool.connect_raw().await.expect("connected to a");
        let _accepted = a.accept().await.expect("accepted");
        workers.vacate(0);
        workers.occupy(0, b.local_addr().expect("addr"));
        pool.put_raw(conn);
        assert!(
            pool.take_raw().is_none(),
            "a connection to the old address is dropped"
        );
        let conn = pool.connect_raw().await.expect("connected to b");
        let _accepted = b.accept().await.expect("accepted");
        pool.put_raw(conn);
        workers.vacate(0);
        workers.occupy(0, a.local_addr().expect("addr"));
        assert!(
            pool.take_raw().is_none(),
            "an idle connection to the old address is not lent"
        );
    }

    /// A pool of raw connections to a listener that accepts (and keeps) `n` of them.
    async fn raw_connections(n: usize) -> (Pool, Vec<RawConn>, Vec<tokio::net::TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let workers = Arc::new(WorkerSet::new([], [listener.local_addr().expect("addr")]));
        let connector = Connector {
            timeout: Duration::from_secs(1),
            tls: None,
        };
        let pool = Pool::new(
            Address {
                workers,
                id: 0,
                index: 0,
            },
            connector,
        );
        let (mut conns, mut accepted) = (Vec::new(), Vec::new());
        for _ in 0..n {
            conns.push(pool.connect_raw().await.expect("connected"));
            accepted.push(listener.accept().await.expect("accepted").0);
        }
        (pool, conns, accepted)
    }

    #[tokio::test]
    async fn a_burst_of_connections_handed_back_together_is_kept_for_the_next_burst() {
        let burst = 640;
        let (pool, conns, _accepted) = raw_connections(burst).await;
        for conn in conns {
            pool.put_raw(conn);
        }
        let taken: Vec<RawConn> = std::iter::from_fn(|| pool.take_raw()).collect();
        assert_eq!(
            taken.len(),
            burst,
            "every connection of the burst is lent again"
        );
    }
}
