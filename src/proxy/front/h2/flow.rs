//! Flow control: request body bytes credited back to the client as the worker reads them,
//! and what waited for the client's window.

use super::*;

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Gives back a stream's consumed body bytes (and the connection's) in batches.
    pub(super) fn credit(&mut self, (id, n): Credit) {
        self.credit_connection(n);
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.recv_unacked += n;
        if stream.body.is_some() && stream.recv_unacked >= STREAM_WINDOW / 4 {
            frame::put_window_update(&mut self.out, id, stream.recv_unacked);
            stream.recv_window += i64::from(stream.recv_unacked);
            stream.recv_unacked = 0;
        }
    }

    pub(super) fn credit_connection(&mut self, n: u32) {
        self.conn_unacked += n;
        if self.conn_unacked >= CONNECTION_WINDOW / 4 {
            frame::put_window_update(&mut self.out, 0, self.conn_unacked);
            self.recv_window += i64::from(self.conn_unacked);
            self.conn_unacked = 0;
            self.note_window();
        }
    }

    /// Tells the request bodies whether the client has room for a frame on the connection.
    pub(super) fn note_window(&self) {
        let closed = self.recv_window < frame::MAX_FRAME as i64;
        self.window_closed.store(closed, Ordering::Relaxed);
    }

    pub(super) fn poll_credits(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while let Poll::Ready(Some(credit)) = self.credits_rx.poll_recv(cx) {
            self.credit(credit);
            progress = true;
        }
        progress
    }

    /// Sends what waited for window, now that there may be some.
    pub(super) fn unblock(&mut self) {
        if self.blocked.is_empty() || self.send_window <= 0 {
            return;
        }
        for id in std::mem::take(&mut self.blocked) {
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            if let Some((data, body)) = stream.parked.take() {
                self.send_data(id, data, body);
            }
        }
    }
}
