//! HPACK's Huffman code (RFC 7541, Appendix B), decoding only: the proxy sends its own
//! header blocks as plain literals.
//!
//! The code is canonical (within a length, codes ascend with the symbol), so the code
//! lengths alone define it; the tables are built from them at compile time. Codes of up to
//! eight bits (every letter, digit and common punctuation) are decoded with one lookup;
//! longer ones by length, from the first code of each length.

/// The code length in bits of each symbol: bytes 0..=255, then EOS (256).
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Why a Huffman string could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidHuffman;

struct Tables {
    /// By the next eight bits: `symbol << 4 | length` for codes of up to eight bits, else 0.
    fast: [u16; 256],
    /// By length: the first code of that length, how many there are, and where their
    /// symbols start in `symbols`.
    first_code: [u32; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    first_index: [u16; MAX_LEN + 1],
    /// Symbols ordered by (length, symbol): the order of their codes.
    symbols: [u16; 257],
}

const TABLES: Tables = build();

const fn build() -> Tables {
    let mut t = Tables {
        fast: [0; 256],
        first_code: [0; MAX_LEN + 1],
        count: [0; MAX_LEN + 1],
        first_index: [0; MAX_LEN + 1],
        symbols: [0; 257],
    };
    let mut code: u32 = 0;
    let mut next = 0usize;
    let mut len = 1;
    while len <= MAX_LEN {
        t.first_code[len] = code;
        t.first_index[len] = next as u16;
        let mut sym = 0;
        while sym < 257 {
            if LENGTHS[sym] as usize == len {
                t.symbols[next] = sym as u16;
                next += 1;
                t.count[len] += 1;
                if len <= 8 {
                    // Every 8-bit window starting with this code.
                    let base = (code << (8 - len)) as usize;
                    let mut fill = 0;
                    while fill < 1 << (8 - len) {
                        t.fast[base + fill] = ((sym as u16) << 4) | len as u16;
                        fill += 1;
                    }
                }
                code += 1;
            }
            sym += 1;
        }
        code <<= 1;
        len += 1;
    }
    t
}

/// Appends the decoding of `input` to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), InvalidHuffman> {
    let t = &TABLES;
    out.reserve(input.len() * 8 / 5);
    // Bits not yet decoded, aligned to the top of `acc`.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut rest = input;
    loop {
        while bits <= 56 {
            let Some((&b, tail)) = rest.split_first() else {
                break;
            };
            acc |= u64::from(b) << (56 - bits);
            bits += 8;
            rest = tail;
        }
        if bits == 0 {
            return Ok(());
        }
        let fast = t.fast[(acc >> 56) as usize];
        let fast_len = u32::from(fast & 0xf);
        if fast != 0 && fast_len <= bits {
            out.push((fast >> 4) as u8);
            acc <<= fast_len;
            bits -= fast_len;
            continue;
        }
        let mut found = None;
        let mut len = 9;
        while len <= MAX_LEN && len as u32 <= bits {
            let code = (acc >> (64 - len)) as u32;
            let offset = code.wrapping_sub(t.first_code[len]);
            if offset < u32::from(t.count[len]) {
                found = Some((
                    t.symbols[(t.first_index[len] as u32 + offset) as usize],
                    len,
                ));
                break;
            }
            len += 1;
        }
        match found {
            Some((EOS, _)) => return Err(InvalidHuffman),
            Some((sym, len)) => {
                out.push(sym as u8);
                acc <<= len;
                bits -= len as u32;
            }
            // The end: what is left must be padding, fewer than eight bits, all ones
            // (a prefix of EOS).
            None if rest.is_empty() && bits < 8 && acc >> (64 - bits) == (1 << bits) - 1 => {
                return Ok(())
            }
            None => return Err(InvalidHuffman),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The canonical code of every symbol: (code, length).
    pub fn codes() -> Vec<(u32, u8)> {
        let t = &TABLES;
        let mut out = vec![(0, 0); 257];
        for len in 1..=MAX_LEN {
            for i in 0..t.count[len] {
                let sym = t.symbols[(t.first_index[len] + i) as usize];
                out[sym as usize] = (t.first_code[len] + u32::from(i), len as u8);
            }
        }
        out
    }

    /// Huffman-encodes `input` (tests only: the proxy never encodes).
    pub fn encode(input: &[u8]) -> Vec<u8> {
        let codes = codes();
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &b in input {
            let (code, len) = codes[b as usize];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn decoded(input: &[u8]) -> Result<Vec<u8>, InvalidHuffman> {
        let mut out = Vec::new();
        decode(input, &mut out).map(|()| out)
    }

    #[test]
    fn some_codes_are_those_of_the_rfc() {
        let c = codes();
        assert_eq!(c[0], (0x1ff8, 13));
        assert_eq!(c[1], (0x7fffd8, 23));
        assert_eq!(c[9], (0xffffea, 24));
        assert_eq!(c[10], (0x3ffffffc, 30));
        assert_eq!(c[b' ' as usize], (0x14, 6));
        assert_eq!(c[b'0' as usize], (0x0, 5));
        assert_eq!(c[b'a' as usize], (0x3, 5));
        assert_eq!(c[255], (0x3ffffee, 26));
        assert_eq!(c[256], (0x3fffffff, 30));
    }

    #[test]
    fn decodes_the_examples_of_rfc_7541() {
        let cases = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            (
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
                "https://www.example.com",
            ),
            ("640e ff", "307"),
            ("9bd9 ab", "gzip"),
            (
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
        ];
        for (code, text) in cases {
            assert_eq!(
                decoded(&hex(code)).as_deref(),
                Ok(text.as_bytes()),
                "{text}"
            );
            assert_eq!(encode(text.as_bytes()), hex(code), "{text}");
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decoded(&encode(&all)), Ok(all.clone()));
        let mut reversed = all;
        reversed.reverse();
        assert_eq!(decoded(&encode(&reversed)), Ok(reversed));
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // "a" is 00011: padded with ones is valid, with zeros it is not.
        assert_eq!(decoded(&[0b0001_1111]), Ok(b"a".to_vec()));
        assert_eq!(decoded(&[0b0001_1000]), Err(InvalidHuffman));
        // Eight or more bits of padding.
        assert_eq!(decoded(&[0b0001_1111, 0xff]), Err(InvalidHuffman));
        // EOS itself (30 ones).
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xff]), Err(InvalidHuffman));
        assert_eq!(decoded(&[]), Ok(Vec::new()));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip(input in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            proptest::prop_assert_eq!(decoded(&encode(&input)), Ok(input));
        }

        #[test]
        fn any_input_decodes_or_fails_without_panicking(input in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decoded(&input);
        }
    }
}
