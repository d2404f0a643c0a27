//! Reading: frames off the connection, settings, windows, DATA, and header blocks that
//! start exchanges.

use super::*;

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.read_closed || self.out.len() - self.written > READ_PAUSE {
            return false;
        }
        let polled = if self.rbuf.is_empty() {
            // Read on the stack, kept on the heap only as far as a frame is incomplete: a
            // connection between requests holds no read buffer.
            let mut stack = [const { std::mem::MaybeUninit::<u8>::uninit() }; STACK_READ];
            let mut read = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    self.rbuf.extend_from_slice(read.filled());
                    Poll::Ready(Ok(read.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        } else {
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(STACK_READ);
            }
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
        };
        match polled {
            Poll::Pending => false,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                // The client is gone: nothing it asked for can reach it any more.
                self.read_closed = true;
                self.closing = Some(Closing::Now);
                true
            }
            Poll::Ready(Ok(_)) => {
                if let Err(e) = self.read_frames() {
                    self.fail(e);
                }
                true
            }
        }
    }

    pub(super) fn read_frames(&mut self) -> Result<(), ConnError> {
        if !self.preface_seen {
            if self.rbuf.len() < PREFACE.len() {
                return if PREFACE.starts_with(&self.rbuf) {
                    Ok(())
                } else {
                    Err(ConnError(Reason::ProtocolError, "no HTTP/2 preface"))
                };
            }
            if &self.rbuf[..PREFACE.len()] != PREFACE {
                return Err(ConnError(Reason::ProtocolError, "no HTTP/2 preface"));
            }
            self.rbuf.advance(PREFACE.len());
            self.preface_seen = true;
        }
        while let Some(head) = Head::parse(&self.rbuf) {
            if head.len > frame::MAX_FRAME {
                return Err(ConnError(Reason::FrameSizeError, "frame too large"));
            }
            if self.rbuf.len() < 9 + head.len {
                self.rbuf.reserve(9 + head.len - self.rbuf.len());
                break;
            }
            self.rbuf.advance(9);
            // DATA may be large: sliced, not copied (`on_data` copies small ones). Other
            // frames are small and some are kept (a header block's values slice it): a
            // copy of their own, so nothing keeps the read buffer.
            let payload = if head.kind == frame::DATA {
                self.rbuf.split_to(head.len).freeze()
            } else {
                let payload = Bytes::copy_from_slice(&self.rbuf[..head.len]);
                self.rbuf.advance(head.len);
                payload
            };
            if !self.settings_seen && head.kind != frame::SETTINGS {
                return Err(ConnError(Reason::ProtocolError, "SETTINGS must come first"));
            }
            self.on_frame(head, payload)?;
            if self.closing == Some(Closing::Now) {
                break;
            }
        }
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    pub(super) fn on_frame(&mut self, head: Head, payload: Bytes) -> Result<(), ConnError> {
        if let Some(c) = &self.continuation {
            if head.kind != frame::CONTINUATION || head.stream != c.stream {
                return Err(ConnError(Reason::ProtocolError, "header block interrupted"));
            }
        }
        let conn_frame = matches!(head.kind, frame::SETTINGS | frame::PING | frame::GOAWAY);
        if conn_frame != (head.stream == 0)
            && !matches!(head.kind, frame::WINDOW_UPDATE)
            && head.kind <= frame::CONTINUATION
        {
            return Err(ConnError(
                Reason::ProtocolError,
                "frame on the wrong stream",
            ));
        }
        match head.kind {
            frame::DATA => self.on_data(head, payload),
            frame::HEADERS => self.on_headers(head, payload),
            frame::CONTINUATION => self.on_continuation(head, &payload),
            frame::PRIORITY => {
                if head.len != 5 {
                    self.reset(head.stream, Reason::FrameSizeError);
                } else if depends_on_itself(head.stream, &payload) {
                    self.reset(head.stream, Reason::ProtocolError);
                }
                Ok(())
            }
            frame::RST_STREAM => {
                if head.len != 4 {
                    return Err(ConnError(Reason::FrameSizeError, "RST_STREAM size"));
                }
                if head.stream > self.last_stream {
                    return Err(ConnError(
                        Reason::ProtocolError,
                        "RST_STREAM on an idle stream",
                    ));
                }
                if let Some(stream) = self.streams.remove(&head.stream) {
                    end_stream_state(stream);
                    self.on_stream_removed();
                    self.count_reset()?;
                }
                Ok(())
            }
            frame::SETTINGS => self.on_settings(head, &payload),
            frame::PUSH_PROMISE => Err(ConnError(Reason::ProtocolError, "clients do not push")),
            frame::PING => {
                if head.len != 8 {
                    return Err(ConnError(Reason::FrameSizeError, "PING size"));
                }
                if !head.has(frame::ACK) {
                    frame::put_ping_ack(&mut self.out, &payload);
                }
                Ok(())
            }
            frame::GOAWAY => {
                // The client opens no more streams; those it opened are still answered.
                self.accepting = false;
                if self.closing.is_none() {
                    self.closing = Some(Closing::Drain);
                }
                Ok(())
            }
            frame::WINDOW_UPDATE => self.on_window_update(head, &payload),
            // Unknown frame types are ignored (RFC 9113, 4.1).
            _ => Ok(()),
        }
    }

    pub(super) fn on_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.has(frame::ACK) {
            return if head.len == 0 {
                Ok(())
            } else {
                Err(ConnError(
                    Reason::FrameSizeError,
                    "SETTINGS ack with a payload",
                ))
            };
        }
        if head.len % 6 != 0 {
            return Err(ConnError(Reason::FrameSizeError, "SETTINGS size"));
        }
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                frame::setting::ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::ProtocolError, "ENABLE_PUSH not 0 or 1"));
                }
                frame::setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(ConnError(Reason::FlowControlError, "window too large"));
                    }
                    let delta = i64::from(value) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(value);
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > MAX_WINDOW {
                            return Err(ConnError(Reason::FlowControlError, "window overflow"));
                        }
                    }
                }
                frame::setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError(
                            Reason::ProtocolError,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                // The encoder keeps no table (so HEADER_TABLE_SIZE does not matter) and
                // never pushes; the rest are advisory.
                _ => {}
            }
        }
        self.settings_seen = true;
        frame::put_settings_ack(&mut self.out);
        self.unblock();
        Ok(())
    }

    pub(super) fn on_window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Ok(b) = <[u8; 4]>::try_from(payload) else {
            return Err(ConnError(Reason::FrameSizeError, "WINDOW_UPDATE size"));
        };
        let increment = i64::from(u32::from_be_bytes(b) & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(ConnError(Reason::ProtocolError, "WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError(Reason::FlowControlError, "window overflow"));
            }
        } else if let Some(stream) = self.streams.get_mut(&head.stream) {
            stream.send_window += increment;
            if increment == 0 {
                self.reset(head.stream, Reason::ProtocolError);
            } else if stream.send_window > MAX_WINDOW {
                self.reset(head.stream, Reason::FlowControlError);
            }
        } else if head.stream > self.last_stream {
            return Err(ConnError(
                Reason::ProtocolError,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        self.unblock();
        Ok(())
    }

    pub(super) fn on_data(&mut self, head: Head, payload: Bytes) -> Result<(), ConnError> {
        let flow_len = head.len as u32;
        self.recv_window -= i64::from(flow_len);
        if self.recv_window < 0 {
            return Err(ConnError(
                Reason::FlowControlError,
                "connection window exceeded",
            ));
        }
        self.note_window();
        let data = unpad(head, payload)?;
        let padding = flow_len - data.len() as u32;
        let end = head.has(frame::END_STREAM);
        let outcome = match self.streams.get_mut(&head.stream) {
            None if head.stream > self.last_stream => {
                return Err(ConnError(Reason::ProtocolError, "DATA on an idle stream"));
            }
            // A stream that was reset or answered: its data is dropped, the window given back.
            None => DataOutcome::Dropped,
            Some(stream) => {
                stream.recv_window -= i64::from(flow_len);
                stream.received += data.len() as u64;
                let length_wrong = stream
                    .expected_len
                    .is_some_and(|n| stream.received > n || (end && stream.received != n));
                match &stream.body {
                    None => DataOutcome::Reset(Reason::StreamClosed),
                    Some(_) if stream.recv_window < 0 => {
                        DataOutcome::Reset(Reason::FlowControlError)
                    }
                    Some(_) if length_wrong => DataOutcome::Reset(Reason::ProtocolError),
                    Some(sender) => {
                        // Small chunks are copied: a slice would keep the whole read buffer
                        // alive while it waits for the worker.
                        let data = if data.len() < SMALL_DATA {
                            Bytes::copy_from_slice(&data)
                        } else {
                            data
                        };
                        let unread = if data.is_empty() || !sender.data(data) {
                            flow_len
                        } else {
                            padding
                        };
                        if end {
                            if let Some(sender) = stream.body.take() {
                                sender.end();
                            }
                        }
                        DataOutcome::Delivered { unread }
                    }
                }
            }
        };
        match outcome {
            DataOutcome::Dropped => self.credit_connection(flow_len),
            DataOutcome::Reset(reason) => {
                self.credit_connection(flow_len);
                self.reset(head.stream, reason);
            }
            DataOutcome::Delivered { unread } if unread > 0 => {
                self.credit((head.stream, unread));
            }
            DataOutcome::Delivered { .. } => {}
        }
        Ok(())
    }

    pub(super) fn on_headers(&mut self, head: Head, payload: Bytes) -> Result<(), ConnError> {
        let mut block = unpad(head, payload)?;
        if head.has(frame::PRIORITY_FLAG) {
            if block.len() < 5 {
                return Err(ConnError(Reason::FrameSizeError, "HEADERS too short"));
            }
            if depends_on_itself(head.stream, &block) {
                self.self_dependent = Some(head.stream);
            }
            block.advance(5);
        }
        let end_stream = head.has(frame::END_STREAM);
        if head.has(frame::END_HEADERS) {
            // The frame's own copy, sized to it (see `read_frames`): the request's values
            // slice it, and a long-lived request (a long poll) keeps only that alive.
            return self.on_header_block(head.stream, end_stream, block);
        }
        self.continuation = Some(Continuation {
            stream: head.stream,
            end_stream,
            block: BytesMut::from(&block[..]),
            frames: 0,
        });
        Ok(())
    }

    pub(super) fn on_continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Some(c) = self.continuation.as_mut() else {
            return Err(ConnError(
                Reason::ProtocolError,
                "CONTINUATION without HEADERS",
            ));
        };
        // A block may not grow without bound before it is decoded, nor take frames without
        // end (CONTINUATION floods, empty frames included).
        if c.block.len() + payload.len() > self.max_header_size.max(16 * 1024) * 2 {
            return Err(ConnError(Reason::EnhanceYourCalm, "header block too large"));
        }
        c.frames += 1;
        if c.frames > MAX_CONTINUATIONS {
            return Err(ConnError(
                Reason::EnhanceYourCalm,
                "too many CONTINUATION frames",
            ));
        }
        c.block.extend_from_slice(payload);
        if !head.has(frame::END_HEADERS) {
            return Ok(());
        }
        let Some(c) = self.continuation.take() else {
            return Ok(());
        };
        self.on_header_block(c.stream, c.end_stream, c.block.freeze())
    }

    pub(super) fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: Bytes,
    ) -> Result<(), ConnError> {
        let mut fields = Fields::new(self.max_header_size);
        self.decoder
            .decode(&block, |name, value| fields.add(name, value))
            .map_err(|e| ConnError(Reason::CompressionError, e.0))?;
        if self.self_dependent.take() == Some(id) {
            fields.bad("a stream that depends on itself");
        }
        if id % 2 == 0 {
            return Err(ConnError(
                Reason::ProtocolError,
                "even stream id from a client",
            ));
        }
        if id <= self.last_stream {
            return self.on_later_headers(id, end_stream, fields);
        }
        self.last_stream = id;
        if !self.accepting {
            // After our GOAWAY: not processed, and the client knows it from the GOAWAY.
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS as usize {
            self.put_rst(id, Reason::RefusedStream);
            return Ok(());
        }
        let too_large = fields.too_large;
        let head = match fields.head() {
            Ok(head) => head,
            Err(why) => {
                tracing::debug!(peer = %self.peer, stream = id, error = why, "malformed HTTP/2 request");
                self.put_rst(id, Reason::ProtocolError);
                return self.count_reset();
            }
        };
        self.start_stream(id, end_stream, fields, head, too_large)
    }

    /// A new stream: its state, and its exchange (the direct one, the general path, or an
    /// answer of the proxy's own).
    fn start_stream(
        &mut self,
        id: u32,
        end_stream: bool,
        fields: Fields,
        head: RequestHead,
        too_large: bool,
    ) -> Result<(), ConnError> {
        let expected_len = fields.content_length;
        let mut stream = Stream {
            send_window: self.peer_initial_window,
            recv_window: i64::from(STREAM_WINDOW),
            recv_unacked: 0,
            body: None,
            expected_len,
            received: 0,
            head_only: head.method == Method::HEAD,
            abort: None,
            parked: None,
        };
        if end_stream && expected_len.is_some_and(|n| n > 0) {
            self.put_rst(id, Reason::ProtocolError);
            return self.count_reset();
        }
        let exchange = self.exchange(id, end_stream, fields, head, too_large, &mut stream);
        if too_large && !end_stream {
            // Its body is not wanted: a sender nobody reads drops it as it comes and gives
            // the window back.
            stream.body = Some(
                request_body::channel(
                    id,
                    self.credits_tx.clone(),
                    None,
                    self.window_closed.clone(),
                )
                .0,
            );
        }
        let (abort, registration) = AbortHandle::new_pair();
        stream.abort = Some(abort);
        self.streams.insert(id, stream);
        self.exchanges.push(Abortable::new(exchange, registration));
        Ok(())
    }

    /// The exchange of a new stream; a body it takes is sent through `stream`.
    fn exchange(
        &mut self,
        id: u32,
        end_stream: bool,
        fields: Fields,
        head: RequestHead,
        too_large: bool,
        stream: &mut Stream,
    ) -> Exchange {
        let proxy = self.proxy.clone();
        let client = self.client.clone();
        let plan = (end_stream && !too_large && proxy.direct)
            .then(|| direct::plan(&proxy, self.peer, &fields, &head, &mut self.routing))
            .flatten();
        if too_large {
            let resp = crate::proxy::exchange::answer::error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "bad_request",
                "request header fields too large",
            );
            return Box::pin(std::future::ready((id, Answer::Response(resp))));
        }
        if let Some(plan) = plan {
            return Box::pin(
                async move { (id, direct::run(proxy, plan, fields, head, client).await) },
            );
        }
        let body = if end_stream {
            UpstreamBody::Empty
        } else {
            let expected_len = fields.content_length;
            let (sender, body) = request_body::channel(
                id,
                self.credits_tx.clone(),
                expected_len,
                self.window_closed.clone(),
            );
            stream.body = Some(sender);
            UpstreamBody::H2(body)
        };
        let req = fields.into_request(head).map(|()| body);
        Box::pin(async move {
            let resp = match general::handle(proxy, req, client).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            (id, Answer::Response(resp))
        })
    }

    /// HEADERS on a stream id already used: trailers of an open stream, a late frame of a
    /// stream we reset (or one refused after our GOAWAY), else a reused or lower stream id,
    /// a connection error (RFC 9113 5.1, 5.1.1).
    pub(super) fn on_later_headers(
        &mut self,
        id: u32,
        end_stream: bool,
        fields: Fields,
    ) -> Result<(), ConnError> {
        if self.streams.contains_key(&id) {
            return self.on_trailers(id, end_stream, fields);
        }
        if self.recent_resets.contains(id) || !self.accepting {
            return Ok(());
        }
        Err(ConnError(
            Reason::ProtocolError,
            "HEADERS on a closed or skipped stream id",
        ))
    }

    fn on_trailers(&mut self, id: u32, end_stream: bool, fields: Fields) -> Result<(), ConnError> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let Some(sender) = stream.body.take() else {
            self.reset(id, Reason::StreamClosed);
            return Ok(());
        };
        let length_right = stream.expected_len.is_none_or(|n| n == stream.received);
        match fields.into_trailers() {
            Some(trailers) if end_stream && length_right => sender.trailers(trailers),
            _ => {
                sender.break_off();
                self.reset(id, Reason::ProtocolError);
            }
        }
        Ok(())
    }
}

/// A priority block (HEADERS' or PRIORITY's: exclusive bit and 31-bit stream dependency
/// first) that names its own stream (RFC 9113 5.3.1: a stream error).
fn depends_on_itself(stream: u32, priority: &[u8]) -> bool {
    priority
        .get(..4)
        .is_some_and(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) & 0x7fff_ffff == stream)
}
