//! Responses: answers of the exchanges encoded as HEADERS, bodies polled one frame at a
//! time while the client's windows have room, resets.

use super::*;

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    pub(super) fn poll_exchanges(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while let Poll::Ready(Some(done)) = self.exchanges.poll_next_unpin(cx) {
            progress = true;
            if let Ok((id, resp)) = done {
                self.on_response(id, resp, cx);
            }
        }
        progress
    }

    pub(super) fn on_response(&mut self, id: u32, answer: Answer, cx: &mut Context<'_>) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.abort = None;
        let head_only = stream.head_only;
        let start = frame::start_headers(&mut self.out);
        let mut body = match answer {
            Answer::Response(resp) => {
                let (parts, body) = resp.into_parts();
                hpack::encode_response(parts.status, &parts.headers, &mut self.out);
                body
            }
            Answer::Encoded { block, body } => {
                self.out.extend_from_slice(&block);
                body
            }
        };
        let end = head_only || body.is_end_stream();
        frame::finish_headers(&mut self.out, start, id, end, self.peer_max_frame);
        if end {
            self.finish_stream(id);
            return;
        }
        // Most bodies are already here (read with the head): sent with it, in one write.
        match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => self.on_body_frame(id, body, frame),
            Poll::Pending => self.next_frame(id, body),
        }
    }

    pub(super) fn next_frame(&mut self, id: u32, body: ProxyBody) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let (abort, registration) = AbortHandle::new_pair();
        stream.abort = Some(abort);
        self.bodies.push(Abortable::new(
            NextFrame {
                id,
                body: Some(body),
            },
            registration,
        ));
    }

    pub(super) fn poll_bodies(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.out.len() - self.written < WRITE_HIGH {
            let Poll::Ready(Some(polled)) = self.bodies.poll_next_unpin(cx) else {
                break;
            };
            progress = true;
            if let Ok((id, body, frame)) = polled {
                self.on_body_frame(id, body, frame);
            }
        }
        progress
    }

    pub(super) fn on_body_frame(
        &mut self,
        id: u32,
        body: ProxyBody,
        frame: Option<Result<Frame<Bytes>, BoxError>>,
    ) {
        let Some(head_only) = self.streams.get(&id).map(|s| s.head_only) else {
            return;
        };
        match frame {
            None => {
                frame::put_data(&mut self.out, id, &[], true);
                self.finish_stream(id);
            }
            Some(Err(e)) => {
                tracing::debug!(stream = id, error = %e, "response body failed");
                self.reset(id, Reason::InternalError);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if head_only => {
                    drop(data);
                    if body.is_end_stream() {
                        frame::put_data(&mut self.out, id, &[], true);
                        self.finish_stream(id);
                    } else {
                        self.next_frame(id, body);
                    }
                }
                Ok(data) => self.send_data(id, data, body),
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_default();
                    let start = frame::start_headers(&mut self.out);
                    hpack::encode_fields(&trailers, &mut self.out);
                    frame::finish_headers(&mut self.out, start, id, true, self.peer_max_frame);
                    self.finish_stream(id);
                }
            },
        }
    }

    /// Sends `data` as far as the windows allow; parks the rest, or asks for more.
    pub(super) fn send_data(&mut self, id: u32, mut data: Bytes, body: ProxyBody) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let end = body.is_end_stream();
        loop {
            let window = stream.send_window.min(self.send_window).max(0) as usize;
            let n = data.len().min(window).min(self.peer_max_frame);
            if n == 0 && !data.is_empty() {
                stream.parked = Some((data, body));
                self.blocked.push(id);
                return;
            }
            let last = n == data.len();
            frame::put_data(&mut self.out, id, &data[..n], last && end);
            stream.send_window -= n as i64;
            self.send_window -= n as i64;
            data.advance(n);
            if last {
                break;
            }
        }
        if end {
            self.finish_stream(id);
        } else {
            self.next_frame(id, body);
        }
    }

    /// The response is complete: the stream ends (the client is told to stop sending a
    /// request body nobody will read).
    pub(super) fn finish_stream(&mut self, id: u32) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        self.answered += 1;
        if stream.body.is_some() {
            self.put_rst(id, Reason::NoError);
        }
        end_stream_state(stream);
        self.on_stream_removed();
    }

    /// Resets a stream: RST_STREAM, its exchange or body stopped. Resets for the client's
    /// errors count toward [`RESET_ALLOWANCE`].
    pub(super) fn reset(&mut self, id: u32, reason: Reason) {
        self.put_rst(id, reason);
        if let Some(stream) = self.streams.remove(&id) {
            end_stream_state(stream);
            self.on_stream_removed();
        }
        if reason != Reason::InternalError {
            if let Err(e) = self.count_reset() {
                self.fail(e);
            }
        }
    }

    /// RST_STREAM for `id`, remembered for a while: what the client sent on it before it
    /// saw the reset is ignored (RFC 9113 5.4.2).
    pub(super) fn put_rst(&mut self, id: u32, reason: Reason) {
        frame::put_rst(&mut self.out, id, reason);
        self.recent_resets.note(id);
    }

    /// One more stream reset before its answer; too many end the connection.
    pub(super) fn count_reset(&mut self) -> Result<(), ConnError> {
        self.resets += 1;
        if self.resets > RESET_ALLOWANCE + self.answered / 4 {
            return Err(ConnError(Reason::EnhanceYourCalm, "too many streams reset"));
        }
        Ok(())
    }

    pub(super) fn on_stream_removed(&mut self) {
        if self.streams.is_empty() {
            let deadline = Instant::now() + self.header_timeout;
            self.idle.as_mut().reset(deadline);
        }
    }
}
