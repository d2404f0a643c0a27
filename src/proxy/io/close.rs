//! Closing a client connection so that its last bytes arrive (RFC 9112 9.6, "tear-down"):
//! write what is left, half-close (a TLS close_notify, then FIN), then read and throw away
//! what the client still sends until it closes too. Closing a socket with unread bytes
//! makes the kernel answer with a reset, and a reset can discard the answer or GOAWAY the
//! client has not read yet. Bounded in time and bytes, as nginx's lingering close is.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The longest a close may take, whatever the client does.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The most bytes read and thrown away while closing.
const DISCARD_MAX: usize = 4 << 20;

/// Writes `rest`, half-closes, and reads until the client closes (bounded); the caller
/// then drops the connection.
pub async fn close<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I, rest: &[u8]) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        io.write_all(rest).await?;
        io.shutdown().await?;
        let mut read = 0;
        poll_fn(|cx| poll_discard(io, cx, &mut read)).await;
        std::io::Result::Ok(())
    })
    .await;
}

/// After the half-close: reads and throws away what the client sends until it closes, a
/// read fails, or `read` (the bytes so far) reaches the bound. The caller bounds the time.
pub fn poll_discard<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    read: &mut usize,
) -> Poll<()> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); 8 * 1024];
    while *read < DISCARD_MAX {
        let mut buf = ReadBuf::uninit(&mut chunk);
        match ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
            Ok(()) if !buf.filled().is_empty() => *read += buf.filled().len(),
            _ => break,
        }
    }
    Poll::Ready(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_until_the_client_closes_then_returns() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&[1; 10_000]).await.unwrap();
        let closing = tokio::spawn(async move { close(&mut server, b"bye").await });
        let mut got = [0; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"bye");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "half-closed after the last bytes");
        client.write_all(&[2; 10_000]).await.unwrap();
        drop(client);
        closing.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_closes_is_given_up_on() {
        let (_client, mut server) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        close(&mut server, b"").await;
        assert_eq!(start.elapsed(), CLOSE_TIMEOUT);
    }
}
