//! Copying both ways between the two halves of a tunnel without a buffer per idle tunnel.
//!
//! `tokio::io::copy_bidirectional` gives every tunnel two 8 KiB buffers for its whole life;
//! with ten thousand idle WebSockets that is 160 MiB holding nothing. Here each read lands
//! in a buffer on the polling thread's stack and is written on at once; only bytes the
//! other side cannot take yet are moved to the heap, and that copy is freed as soon as
//! they are written. An idle tunnel holds no buffer at all (HAProxy allocates its buffers
//! the same way, on demand).
//!
//! [`Tracked`] counts a side's reads and writes that moved bytes (the tunnel's idle timer
//! reads the count).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per call; it lives on the stack only while a read is being forwarded.
const READ_CHUNK: usize = 64 * 1024;

/// Copies `a` to `b` and `b` to `a` until both have ended, shutting down each writer when
/// its reader ends. Returns the bytes copied each way (a to b, b to a).
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, &mut *a, &mut *b)?;
        let backward = b_to_a.poll_copy(cx, &mut *b, &mut *a)?;
        match (forward, backward) {
            (Poll::Ready(up), Poll::Ready(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One way of the tunnel.
#[derive(Debug, Default)]
struct Direction {
    /// Bytes read but not yet taken by the writer.
    held: Option<Box<[u8]>>,
    /// How much of `held` has been written.
    written: usize,
    /// The writer has bytes it may be buffering (TLS): flush before waiting.
    unflushed: bool,
    /// The reader has ended.
    read_done: bool,
    /// The writer has been shut down: this way is over.
    finished: bool,
    copied: u64,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            if let Some(held) = self.held.take() {
                while self.written < held.len() {
                    match self.write(cx, writer, &held[self.written..]) {
                        Poll::Ready(Ok(n)) => self.written += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            self.held = Some(held);
                            return Poll::Pending;
                        }
                    }
                }
                self.written = 0;
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(self.copied));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                Poll::Pending => {
                    if self.unflushed {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            let mut sent = 0;
            while sent < data.len() {
                match self.write(cx, writer, &data[sent..]) {
                    Poll::Ready(Ok(n)) => sent += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The writer is full: keep the rest until it drains. Reading stops
                        // meanwhile, so a slow side slows the other down instead of
                        // growing memory.
                        self.held = Some(data[sent..].into());
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn write<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut *writer).poll_write(cx, bytes))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.copied += n as u64;
        self.unflushed = true;
        Poll::Ready(Ok(n))
    }
}

/// An IO that counts its reads and writes that moved bytes, in a count both halves of a
/// tunnel share (they live in one task, so a plain load and store suffice).
pub struct Tracked<T> {
    inner: T,
    activity: Arc<AtomicU64>,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Arc<AtomicU64>) -> Self {
        Self { inner, activity }
    }

    #[inline]
    fn touch(&self) {
        let n = self.activity.load(Ordering::Relaxed);
        self.activity.store(n.wrapping_add(1), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_through_a_slow_reader_and_ends_on_close() {
        // Small duplex buffers force partial writes, so bytes are held and released.
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, mut server) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(async move { splice(&mut a, &mut b).await });
        let up: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = up.iter().rev().copied().collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server_side = tokio::spawn(async move {
            let mut got = vec![0; up2.len()];
            let (mut r, mut w) = tokio::io::split(&mut server);
            let read = async {
                r.read_exact(&mut got).await.unwrap();
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty());
            };
            let write = async {
                w.write_all(&down2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            tokio::join!(read, write);
            assert_eq!(got, up2);
        });
        let (mut r, mut w) = tokio::io::split(&mut client);
        let write = async {
            w.write_all(&up).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got);
        let (_, read) = tokio::join!(write, read);
        read.unwrap();
        assert_eq!(got, down);
        server_side.await.unwrap();
        let (to_server, to_client) = tunnel.await.unwrap().unwrap();
        assert_eq!((to_server, to_client), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn a_64_kib_message_crosses_in_one_read_and_one_write() {
        let (mut client, a) = tokio::io::duplex(1 << 20);
        let (b, mut server) = tokio::io::duplex(1 << 20);
        let message = vec![7u8; 64 * 1024];
        client.write_all(&message).await.unwrap();
        // Direction a -> b only reads `a` and only writes `b`: their counts are its calls.
        let (reads, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut a = Tracked::new(a, reads.clone());
        let mut b = Tracked::new(b, writes.clone());
        let mut ab = Direction::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(ab.poll_copy(&mut cx, &mut a, &mut b).is_pending());
        let mut got = vec![0; message.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, message);
        let calls = (
            reads.load(Ordering::Relaxed),
            writes.load(Ordering::Relaxed),
        );
        assert_eq!(calls, (1, 1));
    }

    #[tokio::test]
    async fn an_idle_tunnel_holds_no_buffer() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        let mut ab = Direction::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(ab.poll_copy(&mut cx, &mut a, &mut b).is_pending());
        assert!(ab.held.is_none());
    }
}
