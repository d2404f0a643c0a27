//! Follows a chunked body (RFC 9112 section 7.1) as it streams past, to find where it
//! ends; the bytes themselves are passed on untouched, trailers included.

/// Where in a chunked body the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Reading the hex size of the next chunk.
    #[default]
    Size,
    /// After the size: extensions up to the end of the line.
    SizeLine,
    /// This many data bytes left in the chunk.
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// The body is over.
    Done,
}

/// The body is not valid chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A chunked body being followed.
#[derive(Debug, Default, Clone)]
pub struct Chunks {
    state: State,
    size: u64,
    size_digits: u8,
}

/// One step of decoding: `consumed` bytes were used, of which `data` are chunk data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// How many bytes of the input this step used.
    pub consumed: usize,
    /// The chunk data among them (empty when the step used only framing).
    pub data: std::ops::Range<usize>,
    /// The body is over (its last byte was the last one consumed).
    pub done: bool,
}

impl Chunks {
    /// Follows `bytes`, the next part of the body: `Some(n)` when the body ends after the
    /// first `n` of them, `None` when all of them belong to it and more are to come.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut at = 0;
        loop {
            let step = self.decode(&bytes[at..])?;
            at += step.consumed;
            if step.done {
                return Ok(Some(at));
            }
            if at >= bytes.len() {
                return Ok(None);
            }
        }
    }

    /// True inside the trailer section: what the next [`Chunks::decode`] consumes (short of
    /// the body's end) is trailer lines.
    pub fn in_trailers(&self) -> bool {
        matches!(self.state, State::TrailerStart | State::TrailerLine)
    }

    /// Decodes from the start of `bytes` up to the end of the first run of chunk data (or
    /// the end of the body, or of `bytes`): for passing a body on without its framing.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Decoded, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                State::Size => match hex(b) {
                    Some(d) => {
                        self.size_digits += 1;
                        if self.size_digits > 15 {
                            return Err(Malformed);
                        }
                        self.size = self.size << 4 | u64::from(d);
                    }
                    // After the digits: whitespace, extensions, or the line end; nothing else
                    // (`0x10` is no size 0).
                    None if self.size_digits > 0
                        && matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n') =>
                    {
                        self.state = State::SizeLine;
                        continue;
                    }
                    None => return Err(Malformed),
                },
                State::SizeLine => {
                    if b == b'\n' {
                        let last = self.size == 0;
                        self.state = if last {
                            State::TrailerStart
                        } else {
                            State::Data(self.size)
                        };
                        self.size = 0;
                        self.size_digits = 0;
                        if last {
                            // A step ends where the trailer section starts, so a caller
                            // can tell trailer bytes apart (see `in_trailers`).
                            return Ok(Decoded {
                                consumed: i + 1,
                                data: 0..0,
                                done: false,
                            });
                        }
                    }
                }
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    self.state = if take == left {
                        State::DataEnd
                    } else {
                        State::Data(left - take)
                    };
                    let end = i + take as usize;
                    return Ok(Decoded {
                        consumed: end,
                        data: i..end,
                        done: false,
                    });
                }
                State::DataEnd => match b {
                    b'\r' => {}
                    b'\n' => self.state = State::Size,
                    _ => return Err(Malformed),
                },
                State::TrailerStart => match b {
                    b'\r' => {}
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(Decoded {
                            consumed: i + 1,
                            data: 0..0,
                            done: true,
                        });
                    }
                    _ => self.state = State::TrailerLine,
                },
                State::TrailerLine => {
                    if b == b'\n' {
                        self.state = State::TrailerStart;
                    }
                }
                State::Done => break,
            }
            i += 1;
        }
        Ok(Decoded {
            consumed: i,
            data: 0..0,
            done: self.state == State::Done,
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the body ends when fed in pieces of `step` bytes.
    fn end(body: &[u8], step: usize) -> Result<Option<usize>, Malformed> {
        let mut chunks = Chunks::default();
        let mut at = 0;
        for piece in body.chunks(step) {
            if let Some(n) = chunks.feed(piece)? {
                return Ok(Some(at + n));
            }
            at += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_in_any_split() {
        let body = b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let want = body.len() - 4;
        for step in 1..=body.len() {
            assert_eq!(end(body, step), Ok(Some(want)), "step {step}");
        }
        let simple = b"0\r\n\r\n";
        assert_eq!(end(simple, 1), Ok(Some(5)));
        assert_eq!(end(b"3\nabc\n0\n\n", 2), Ok(Some(9)));
    }

    #[test]
    fn data_that_looks_like_framing_is_data() {
        let body = b"5\r\n0\r\n\r\n\r\n0\r\n\r\n";
        assert_eq!(end(body, 1), Ok(Some(body.len())));
    }

    #[test]
    fn unfinished_and_malformed_bodies() {
        assert_eq!(end(b"5\r\nhel", 2), Ok(None));
        assert_eq!(end(b"zz\r\n", 1), Err(Malformed));
        assert_eq!(end(b"0x10\r\n", 1), Err(Malformed));
        assert_eq!(end(b"1\r\naXY", 1), Err(Malformed));
        assert_eq!(end(b"1234567890abcdef0\r\n", 4), Err(Malformed));
    }

    #[test]
    fn decoding_yields_the_data_without_the_framing() {
        let body = b"5\r\nhello\r\nA;e=1\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..=body.len() {
            let mut chunks = Chunks::default();
            let (mut data, mut at, mut end) = (Vec::new(), 0, None);
            while at < body.len() && end.is_none() {
                let piece = &body[at..(at + step).min(body.len())];
                let mut used = 0;
                while used < piece.len() {
                    let d = chunks.decode(&piece[used..]).expect("valid");
                    data.extend_from_slice(&piece[used..][d.data.clone()]);
                    used += d.consumed;
                    if d.done {
                        end = Some(at + used);
                        break;
                    }
                }
                at += piece.len();
            }
            assert_eq!(data, b"hello0123456789", "step {step}");
            assert_eq!(end, Some(body.len() - 4), "step {step}");
        }
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// A chunked body built from `chunks` (empty ones skipped: a zero size ends the
        /// body), optionally with extensions and trailers.
        fn build(chunks: &[Vec<u8>], upper: bool, ext: bool, trailers: &[String]) -> Vec<u8> {
            let mut body = Vec::new();
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                let size = if upper {
                    format!("{:X}", c.len())
                } else {
                    format!("{:x}", c.len())
                };
                body.extend_from_slice(size.as_bytes());
                if ext {
                    body.extend_from_slice(b";name=\"v\"");
                }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            for t in trailers {
                body.extend_from_slice(format!("x-{t}: {t}\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            body
        }

        proptest! {
            #[test]
            fn any_body_ends_where_it_was_built_to_in_any_split(
                chunks in vec(vec(any::<u8>(), 0..300), 0..6),
                upper in any::<bool>(),
                ext in any::<bool>(),
                trailers in vec("[a-z]{1,6}", 0..3),
                steps in vec(1usize..97, 1..8),
                tail in vec(any::<u8>(), 0..16),
            ) {
                let body = build(&chunks, upper, ext, &trailers);
                let mut stream = body.clone();
                stream.extend_from_slice(&tail);
                let mut follower = Chunks::default();
                let (mut at, mut found) = (0, None);
                for step in steps.iter().cycle() {
                    if at >= stream.len() {
                        break;
                    }
                    let piece = &stream[at..(at + step).min(stream.len())];
                    if let Some(n) = follower.feed(piece).expect("well-formed") {
                        found = Some(at + n);
                        break;
                    }
                    at += piece.len();
                }
                prop_assert_eq!(found, Some(body.len()));
            }

            #[test]
            fn garbage_is_an_error_or_a_wait_never_a_panic(bytes in vec(any::<u8>(), 0..256)) {
                if let Ok(Some(n)) = Chunks::default().feed(&bytes) {
                    prop_assert!(n <= bytes.len());
                }
            }
        }
    }
}
