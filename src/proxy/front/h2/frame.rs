//! HTTP/2 frames (RFC 9113, section 4 and 6): the 9-byte frame header, and the frames the
//! proxy writes, appended to the connection's output buffer.

/// What every client connection starts with.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest frame payload we accept: the default SETTINGS_MAX_FRAME_SIZE, never raised.
pub const MAX_FRAME: usize = 16_384;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// SETTINGS identifiers.
pub mod setting {
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes (RFC 9113, section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    NoError = 0x0,
    ProtocolError = 0x1,
    InternalError = 0x2,
    FlowControlError = 0x3,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    CompressionError = 0x9,
    EnhanceYourCalm = 0xb,
}

/// The largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The payload's length.
    pub len: usize,
    /// The frame type.
    pub kind: u8,
    /// The flags.
    pub flags: u8,
    /// The stream id (reserved bit cleared).
    pub stream: u32,
}

impl Head {
    /// The header at the start of `buf`, if nine bytes are there.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b: &[u8; 9] = buf.get(..9)?.try_into().ok()?;
        Some(Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    /// True when `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

fn head_bytes(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    debug_assert!(len < 1 << 24);
    let s = stream.to_be_bytes();
    [
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        kind,
        flags,
        s[0],
        s[1],
        s[2],
        s[3],
    ]
}

pub fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&head_bytes(len, kind, flags, stream));
}

pub fn put_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    put_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn put_settings_ack(out: &mut Vec<u8>) {
    put_head(out, 0, SETTINGS, ACK, 0);
}

pub fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

pub fn put_rst(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    put_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub fn put_goaway(out: &mut Vec<u8>, last_stream: u32, reason: Reason) {
    put_head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub fn put_ping_ack(out: &mut Vec<u8>, payload: &[u8]) {
    put_head(out, 8, PING, ACK, 0);
    out.extend_from_slice(payload);
}

pub fn put_data(out: &mut Vec<u8>, stream: u32, data: &[u8], end: bool) {
    put_head(
        out,
        data.len(),
        DATA,
        if end { END_STREAM } else { 0 },
        stream,
    );
    out.extend_from_slice(data);
}

/// Appends a header block that was written at `block_start..` of `out` (after room for a
/// frame header was left at `block_start - 9`) as HEADERS and, when larger than the
/// client's frame size, CONTINUATION frames.
pub fn finish_headers(
    out: &mut Vec<u8>,
    block_start: usize,
    stream: u32,
    end_stream: bool,
    max_frame: usize,
) {
    let block_len = out.len() - block_start;
    let end = if end_stream { END_STREAM } else { 0 };
    if block_len <= max_frame {
        out[block_start - 9..block_start].copy_from_slice(&head_bytes(
            block_len,
            HEADERS,
            end | END_HEADERS,
            stream,
        ));
        return;
    }
    // Rare: a response head larger than one frame. Rebuild it split.
    let block = out.split_off(block_start);
    out.truncate(block_start - 9);
    let mut chunks = block.chunks(max_frame).peekable();
    let mut kind = HEADERS;
    let mut flags = end;
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        put_head(out, chunk.len(), kind, flags, stream);
        out.extend_from_slice(chunk);
        kind = CONTINUATION;
        flags = 0;
    }
}

/// Leaves room for a HEADERS frame header; returns where the block starts.
pub fn start_headers(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0; 9]);
    out.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip() {
        let mut out = Vec::new();
        put_head(&mut out, 0x12_3456, HEADERS, END_HEADERS, 0x7fff_fffe);
        assert_eq!(
            Head::parse(&out),
            Some(Head {
                len: 0x12_3456,
                kind: HEADERS,
                flags: END_HEADERS,
                stream: 0x7fff_fffe
            })
        );
        // The reserved bit is ignored.
        out[5] |= 0x80;
        assert_eq!(Head::parse(&out).map(|h| h.stream), Some(0x7fff_fffe));
        assert_eq!(Head::parse(&out[..8]), None);
    }

    #[test]
    fn large_header_blocks_continue() {
        let mut out = vec![0xaa];
        let start = start_headers(&mut out);
        out.extend((0..40u8).collect::<Vec<_>>());
        finish_headers(&mut out, start, 3, true, 16);
        let first = Head::parse(&out[1..]).expect("head");
        assert_eq!(
            (first.len, first.kind, first.flags),
            (16, HEADERS, END_STREAM)
        );
        let second = Head::parse(&out[1 + 9 + 16..]).expect("head");
        assert_eq!(
            (second.len, second.kind, second.flags),
            (16, CONTINUATION, 0)
        );
        let third = Head::parse(&out[1 + 2 * 25..]).expect("head");
        assert_eq!(
            (third.len, third.kind, third.flags),
            (8, CONTINUATION, END_HEADERS)
        );
        assert_eq!(out.len(), 1 + 3 * 9 + 40);
        let mut small = Vec::new();
        let start = start_headers(&mut small);
        small.extend_from_slice(b"abc");
        finish_headers(&mut small, start, 1, false, 16);
        assert_eq!(
            Head::parse(&small),
            Some(Head {
                len: 3,
                kind: HEADERS,
                flags: END_HEADERS,
                stream: 1
            })
        );
    }
}
