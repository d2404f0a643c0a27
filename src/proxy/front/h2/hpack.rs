//! HPACK (RFC 7541): the decoder of client header blocks, with its dynamic table, and the
//! encoder of the proxy's response heads.
//!
//! The encoder is stateless: every field goes out as a literal that is never added to the
//! client's table (with the static table's name index where it has one), and `:status`
//! indexed when the static table has it. Response heads are a few hundred bytes; keeping a
//! table for them would save bytes on the wire and cost a table per connection and a search
//! per field. The decoder must keep the table the client's encoder keeps.

use std::collections::VecDeque;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;

use super::huffman;

/// Our SETTINGS_HEADER_TABLE_SIZE (the default: never announced).
pub const TABLE_SIZE: usize = 4096;

/// A field name as the decoder found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// Entry `n` (1-based) of the static table.
    Static(u8),
    /// Any other name, as sent.
    Literal(Bytes),
}

impl Name {
    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Static(i) => STATIC[usize::from(*i) - 1].0.as_bytes(),
            Self::Literal(b) => b,
        }
    }
}

/// Why a header block could not be decoded: a connection error (COMPRESSION_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The static table (RFC 7541, Appendix A).
pub static STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Static-table indexes of some names the connection checks.
pub mod index {
    /// `:authority`
    pub const AUTHORITY: u8 = 1;
    /// `:method`
    pub const METHOD: u8 = 2;
    /// `:path`
    pub const PATH: u8 = 4;
    /// `:scheme`
    pub const SCHEME: u8 = 6;
    /// `:status`
    pub const STATUS: u8 = 8;
}

/// The canonical name of a static entry: its first index (`:method` of both 2 and 3 is 2).
fn canonical(i: u8) -> u8 {
    match i {
        3 => 2,
        5 => 4,
        7 => 6,
        9..=14 => 8,
        i => i,
    }
}

struct Entry {
    name: Name,
    value: Bytes,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.as_bytes().len() + self.value.len() + 32
    }
}

/// The decoding side of one connection: the dynamic table the client's encoder fills.
#[derive(Default)]
pub struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    /// The size the client's encoder last set (at most [`TABLE_SIZE`]).
    max_size: Option<usize>,
    /// Reused for Huffman strings.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("entries", &self.table.len())
            .field("size", &self.size)
            .finish()
    }
}

impl Decoder {
    fn max_size(&self) -> usize {
        self.max_size.unwrap_or(TABLE_SIZE)
    }

    /// Decodes one whole header block, calling `field` with each name and value in order.
    /// Values that were sent as plain literals are slices of `block` (no copy).
    pub fn decode(
        &mut self,
        block: &Bytes,
        mut field: impl FnMut(Name, Bytes),
    ) -> Result<(), DecodeError> {
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                // Indexed field.
                let i = integer(block, &mut at, 7)?;
                let (name, value) = self.get(i)?;
                field(name, value);
                fields_seen = true;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field.
                if fields_seen {
                    return Err(DecodeError("table size update after a field"));
                }
                let size = integer(block, &mut at, 5)?;
                if size > TABLE_SIZE {
                    return Err(DecodeError("table size update above the agreed size"));
                }
                self.max_size = Some(size);
                self.evict(0);
            } else {
                // A literal: with incremental indexing (01), without (0000) or never
                // indexed (0001).
                let indexing = first & 0xc0 == 0x40;
                let prefix = if indexing { 6 } else { 4 };
                let i = integer(block, &mut at, prefix)?;
                let name = if i == 0 {
                    Name::Literal(self.string(block, &mut at)?)
                } else {
                    self.get(i)?.0
                };
                let value = self.string(block, &mut at)?;
                if indexing {
                    // Owned copies: a slice would keep the connection's read buffer alive
                    // as long as the entry stays in the table.
                    let entry = Entry {
                        name: match &name {
                            Name::Literal(b) => Name::Literal(Bytes::copy_from_slice(b)),
                            s => s.clone(),
                        },
                        value: Bytes::copy_from_slice(&value),
                    };
                    self.insert(entry);
                }
                field(name, value);
                fields_seen = true;
            }
        }
        Ok(())
    }

    fn get(&self, i: usize) -> Result<(Name, Bytes), DecodeError> {
        match i {
            0 => Err(DecodeError("index 0")),
            1..=61 => {
                let value = STATIC[i - 1].1;
                Ok((
                    Name::Static(canonical(i as u8)),
                    Bytes::from_static(value.as_bytes()),
                ))
            }
            _ => self
                .table
                .get(i - 62)
                .map(|e| (e.name.clone(), e.value.clone()))
                .ok_or(DecodeError("index beyond the tables")),
        }
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        self.evict(size);
        // An entry larger than the whole table empties it and is not kept (RFC 7541, 4.4).
        if size <= self.max_size() {
            self.size += size;
            self.table.push_front(entry);
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size() {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size(),
                None => break,
            }
        }
    }

    fn string(&mut self, block: &Bytes, at: &mut usize) -> Result<Bytes, DecodeError> {
        let huffman = block.get(*at).ok_or(DecodeError("truncated string"))? & 0x80 != 0;
        let len = integer(block, at, 7)?;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= block.len())
            .ok_or(DecodeError("string beyond the block"))?;
        let raw = &block[*at..end];
        let s = if huffman {
            self.scratch.clear();
            huffman::decode(raw, &mut self.scratch)
                .map_err(|_| DecodeError("invalid Huffman string"))?;
            Bytes::copy_from_slice(&self.scratch)
        } else {
            block.slice(*at..end)
        };
        *at = end;
        Ok(s)
    }
}

/// Reads an integer with an `n`-bit prefix (RFC 7541, 5.1), at most 2^28.
fn integer(block: &[u8], at: &mut usize, n: u32) -> Result<usize, DecodeError> {
    const TOO_LONG: DecodeError = DecodeError("integer too large");
    let mask = (1usize << n) - 1;
    let first = *block.get(*at).ok_or(DecodeError("truncated integer"))?;
    *at += 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*at).ok_or(DecodeError("truncated integer"))?;
        *at += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(TOO_LONG);
        }
    }
}

fn put_integer(out: &mut Vec<u8>, first_bits: u8, n: u32, mut value: usize) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(first_bits | value as u8);
        return;
    }
    out.push(first_bits | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Appends `:status` and `headers` as a header block. Connection-specific fields, which
/// HTTP/2 forbids, are left out.
pub fn encode_response(status: StatusCode, headers: &HeaderMap, out: &mut Vec<u8>) {
    encode_status(status.as_u16(), out);
    encode_fields(headers, out);
}

/// Appends `:status`, indexed when the static table has it.
pub fn encode_status(status: u16, out: &mut Vec<u8>) {
    let indexed = match status {
        200 => Some(8),
        204 => Some(9),
        206 => Some(10),
        304 => Some(11),
        400 => Some(12),
        404 => Some(13),
        500 => Some(14),
        _ => None,
    };
    match indexed {
        Some(i) => out.push(0x80 | i),
        None => {
            put_integer(out, 0, 4, usize::from(index::STATUS));
            let digits = [
                b'0' + (status / 100 % 10) as u8,
                b'0' + (status / 10 % 10) as u8,
                b'0' + (status % 10) as u8,
            ];
            put_string(out, &digits);
        }
    }
}

/// Appends a field as a literal never added to the table, with the static table's name
/// index when it has one; a name from an HTTP/1 head (any case) is lowercased, as HTTP/2
/// requires.
pub fn encode_raw_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let mut lower = [0u8; 32];
    let index = lower.get_mut(..name.len()).and_then(|l| {
        for (d, s) in l.iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        std::str::from_utf8(l).ok().and_then(static_name_index)
    });
    match index {
        Some(i) => put_integer(out, 0, 4, usize::from(i)),
        None => {
            out.push(0);
            put_integer(out, 0, 7, name.len());
            out.extend(name.iter().map(u8::to_ascii_lowercase));
        }
    }
    put_string(out, value);
}

/// Appends `headers` (trailers, or the rest of a response head) as literals.
pub fn encode_fields(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        if !is_connection_specific(name) {
            encode_raw_field(name.as_str().as_bytes(), value.as_bytes(), out);
        }
    }
}

/// Fields HTTP/2 forbids (RFC 9113, 8.2.2).
pub fn is_connection_specific(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, TRANSFER_ENCODING, UPGRADE};
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The static table's index of a (lowercase) regular name.
fn static_name_index(name: &str) -> Option<u8> {
    // Responses carry a handful of these; the match compiles to a length switch.
    Some(match name {
        "accept-ranges" => 18,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "date" => 33,
        "etag" => 34,
        "expires" => 36,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "proxy-authenticate" => 48,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect::<Vec<u8>>()
            .into()
    }

    fn fields(d: &mut Decoder, block: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(&hex(block), |n, v| {
            out.push((
                String::from_utf8_lossy(n.as_bytes()).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ))
        })
        .expect("decodes");
        out
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn decodes_the_requests_of_rfc_7541_c3_and_c4() {
        // C.3: without Huffman; C.4: the same requests with it. One table per connection.
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::default();
            let base = [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ];
            assert_eq!(fields(&mut d, blocks[0]), pairs(&base));
            assert_eq!(d.size, 57);
            let mut second = base.to_vec();
            second.push(("cache-control", "no-cache"));
            assert_eq!(fields(&mut d, blocks[1]), pairs(&second));
            assert_eq!(d.size, 110);
            assert_eq!(
                fields(&mut d, blocks[2]),
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(d.size, 164);
        }
    }

    #[test]
    fn evicts_the_oldest_entries_at_the_size_the_encoder_set() {
        let mut d = Decoder::default();
        // Size update to 100, then two literals with indexing of 32 + 10 + 20 = 62 bytes.
        let entry = |name: &str, value: &str| {
            let mut b = vec![0x40, name.len() as u8];
            b.extend_from_slice(name.as_bytes());
            b.push(value.len() as u8);
            b.extend_from_slice(value.as_bytes());
            b
        };
        let mut block = vec![0x3f, 100 - 31];
        block.extend(entry("aaaaaaaaaa", "11111111111111111111"));
        block.extend(entry("bbbbbbbbbb", "22222222222222222222"));
        // Then index 62: the newest.
        block.push(0x80 | 62);
        let mut seen = Vec::new();
        d.decode(&Bytes::from(block), |n, v| seen.push((n, v)))
            .expect("decodes");
        assert_eq!(d.table.len(), 1);
        assert_eq!(seen[2].1, Bytes::from_static(b"22222222222222222222"));
        // Index 63 is gone.
        assert!(d
            .decode(&Bytes::from_static(&[0x80 | 63]), |_, _| {})
            .is_err());
    }

    #[test]
    fn refuses_broken_blocks() {
        for bad in [
            &[0x80][..],                     // index 0
            &[0xff, 0x80, 0x80, 0x80, 0x80], // integer never ends / too large
            &[0x40, 0x05, b'a'],             // string beyond the block
            &[0xbf],                         // index 63, table empty
            &[0x3f, 0xe2, 0x1f],             // size update above 4096
            &[0x82, 0x20],                   // size update after a field
            &[0x40, 0x81, 0x00, 0x00],       // Huffman string with bad padding
        ] {
            let mut d = Decoder::default();
            assert!(
                d.decode(&Bytes::copy_from_slice(bad), |_, _| {}).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn encodes_what_the_decoder_reads_back() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert(
            "x-long",
            HeaderValue::from_str(&"v".repeat(300)).expect("value"),
        );
        headers.insert("connection", HeaderValue::from_static("close"));
        for status in [200u16, 404, 302, 599] {
            let mut out = Vec::new();
            encode_response(
                StatusCode::from_u16(status).expect("status"),
                &headers,
                &mut out,
            );
            let mut d = Decoder::default();
            let mut seen = Vec::new();
            d.decode(&Bytes::from(out), |n, v| {
                seen.push((n.as_bytes().to_vec(), v.to_vec()))
            })
            .expect("decodes");
            let expect: Vec<(Vec<u8>, Vec<u8>)> = [
                (":status".as_bytes(), status.to_string().into_bytes()),
                (b"content-type", b"text/plain".to_vec()),
                (b"set-cookie", b"a=1".to_vec()),
                (b"set-cookie", b"b=2".to_vec()),
                (b"x-long", "v".repeat(300).into_bytes()),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v))
            .collect();
            assert_eq!(seen, expect);
            assert!(d.table.is_empty(), "nothing indexed");
        }
    }

    #[test]
    fn the_name_index_agrees_with_the_table() {
        for (i, (name, _)) in STATIC.iter().enumerate() {
            if let Some(found) = static_name_index(name) {
                assert_eq!(usize::from(found), i + 1, "{name}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_block_decodes_or_fails_without_panicking(
            blocks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 1..4)
        ) {
            let mut d = Decoder::default();
            for b in blocks {
                let _ = d.decode(&Bytes::from(b), |_, _| {});
                proptest::prop_assert!(d.size <= TABLE_SIZE);
            }
        }
    }
}
