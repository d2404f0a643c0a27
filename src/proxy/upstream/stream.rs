//! A connection to a worker: a plain socket, or TLS over one (`--worker-tls`). An enum, so
//! the pools and the raw client keep one concrete type and a plain connection pays one
//! branch per read or write.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How connections to workers are opened.
#[derive(Debug, Clone)]
pub struct Connector {
    /// Connect and (with TLS) handshake timeout.
    pub timeout: Duration,
    /// TLS to the workers, when on.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Connector {
    /// A new connection to `addr`, within the timeout (TLS handshake included).
    ///
    /// # Errors
    /// The connect or handshake error, or `TimedOut`.
    pub async fn open(&self, addr: SocketAddr) -> io::Result<WorkerStream> {
        let opening = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => Ok(WorkerStream::Plain(tcp)),
                Some(config) => {
                    let name = crate::worker_tls::server_name(addr);
                    let tls = TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        // The kind tells a refused certificate (invalid data) from a reset.
                        .map_err(|e| {
                            io::Error::new(e.kind(), format!("TLS handshake failed: {e}"))
                        })?;
                    Ok(WorkerStream::Tls(Box::new(tls)))
                }
            }
        };
        tokio::time::timeout(self.timeout, opening)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {:?}", self.timeout),
                )
            })?
    }
}

/// One connection to a worker.
#[derive(Debug)]
pub enum WorkerStream {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS (`--worker-tls`); boxed, the TLS state is large.
    Tls(Box<TlsStream<TcpStream>>),
}

impl WorkerStream {
    /// False when the worker closed (or wrote to) the connection while it sat idle. Costs no
    /// system call unless the socket was reported readable: tokio remembers readiness. A TLS
    /// connection that became readable is given up (its bytes cannot be peeked at).
    #[inline]
    pub fn still_idle(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Self::Plain(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(tcp.try_read(&mut probe),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            Self::Tls(tls) => tls.get_ref().0.poll_read_ready(&mut cx).is_pending(),
        }
    }
}

impl AsyncRead for WorkerStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WorkerStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    /// Vectored: hyper's client writes a request head and a body chunk it did not copy in
    /// one call.
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
