//! A connection with bytes put back in front: what the direct path read but hands to
//! hyper is read again, first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io`, whose next reads return `pre` first.
#[derive(Debug)]
pub struct Rewind<I> {
    pre: Bytes,
    io: I,
}

impl<I> Rewind<I> {
    /// `io` with `pre` to be read again before it.
    pub fn new(io: I, pre: Bytes) -> Self {
        Self { pre, io }
    }
}

impl<I: AsyncRead + Unpin> Rewind<I> {
    /// Reads (into the bytes put back) until they tell whether the connection starts with
    /// `prefix`; false also when it ends first.
    pub async fn starts_with(&mut self, prefix: &[u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        while self.pre.len() < prefix.len() && prefix.starts_with(&self.pre) {
            let mut more = bytes::BytesMut::with_capacity(4096);
            more.extend_from_slice(&self.pre);
            if self.io.read_buf(&mut more).await? == 0 {
                self.pre = more.freeze();
                return Ok(false);
            }
            self.pre = more.freeze();
        }
        Ok(self.pre.starts_with(prefix))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pre.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.pre.len().min(buf.remaining());
        buf.put_slice(&this.pre[..n]);
        this.pre.advance(n);
        if this.pre.is_empty() {
            // Frees the buffer the bytes came in: a long-lived tunnel must not keep it.
            this.pre = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn put_back_bytes_come_first_then_the_connection() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = Rewind::new(a, Bytes::from_static(b"GET / HT"));
        b.write_all(b"TP/1.1\r\n").await.expect("write");
        drop(b);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn tells_a_prefix_across_reads_and_keeps_every_byte() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = Rewind::new(a, Bytes::from_static(b"PRI * "));
        let writer = tokio::spawn(async move {
            b.write_all(b"HTTP/2").await.expect("write");
            tokio::task::yield_now().await;
            b.write_all(b".0\r\n rest").await.expect("write");
        });
        assert!(io.starts_with(b"PRI * HTTP/2.0\r\n").await.expect("read"));
        writer.await.expect("writer");
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"PRI * HTTP/2.0\r\n rest");
        let mut other = Rewind::new(tokio::io::empty(), Bytes::from_static(b"GET"));
        assert!(!other.starts_with(b"PRI").await.expect("read"));
    }
}
