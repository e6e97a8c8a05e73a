//! HPACK's static Huffman code (RFC 7541 Appendix B): decoding string literals, bounded by
//! the caller's budget, and an encoder the tests use to build header blocks.

use thiserror::Error;

/// Why a Huffman-coded string literal was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HuffmanError {
    /// A bit sequence that is no code, or the EOS symbol inside the string (RFC 7541 5.2).
    #[error("invalid Huffman code")]
    InvalidCode,
    /// Padding longer than 7 bits, or not the most significant bits of EOS (all ones).
    #[error("invalid Huffman padding")]
    InvalidPadding,
    /// The decoded string would be longer than the caller allows.
    #[error("decoded string longer than {0} bytes")]
    TooLong(usize),
}

/// (code, bit length) for symbols 0..=255 and EOS (256), as printed in RFC 7541 Appendix B.
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

const EOS: u16 = 256;
const MAX_BITS: usize = 30;

/// The code is canonical: for each length, the codes are consecutive integers assigned in
/// symbol order. That lets decoding be a per-bit range check instead of a big state table
/// (a test checks the property against `CODES`).
struct Canonical {
    /// Smallest code of each length.
    first_code: [u32; MAX_BITS + 1],
    /// How many codes have each length.
    count: [u32; MAX_BITS + 1],
    /// Where the symbols of each length start in `symbols`.
    first_index: [u16; MAX_BITS + 1],
    /// Symbols ordered by (length, code).
    symbols: [u16; 257],
}

const CANONICAL: Canonical = canonical();

const fn canonical() -> Canonical {
    let mut c = Canonical {
        first_code: [0; MAX_BITS + 1],
        count: [0; MAX_BITS + 1],
        first_index: [0; MAX_BITS + 1],
        symbols: [0; 257],
    };
    let mut next = 0usize;
    let mut len = 1usize;
    while len <= MAX_BITS {
        c.first_index[len] = next as u16;
        c.first_code[len] = u32::MAX;
        // Symbols of this length in ascending code order (a selection pass per length).
        let mut last: i64 = -1;
        loop {
            let mut best: i64 = -1;
            let mut sym = 0usize;
            while sym < 257 {
                let (code, l) = CODES[sym];
                if l as usize == len
                    && (code as i64) > last
                    && (best < 0 || (code as i64) < (CODES[best as usize].0 as i64))
                {
                    best = sym as i64;
                }
                sym += 1;
            }
            if best < 0 {
                break;
            }
            let code = CODES[best as usize].0;
            if c.count[len] == 0 {
                c.first_code[len] = code;
            }
            c.symbols[next] = best as u16;
            next += 1;
            c.count[len] += 1;
            last = code as i64;
        }
        len += 1;
    }
    c
}

/// Decodes `input` onto the end of `out`; fails once `out` would grow past `limit` bytes
/// in total, so a hostile literal never makes it allocate more than that.
pub fn decode(input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), HuffmanError> {
    let mut code: u32 = 0;
    let mut len: usize = 0;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let count = CANONICAL.count[len];
            if count != 0 {
                let first = CANONICAL.first_code[len];
                if code >= first && code - first < count {
                    let at = usize::from(CANONICAL.first_index[len]) + (code - first) as usize;
                    let symbol = CANONICAL.symbols[at];
                    if symbol == EOS {
                        return Err(HuffmanError::InvalidCode);
                    }
                    if out.len() >= limit {
                        return Err(HuffmanError::TooLong(limit));
                    }
                    out.push(symbol as u8);
                    code = 0;
                    len = 0;
                    continue;
                }
            }
            if len >= MAX_BITS {
                return Err(HuffmanError::InvalidCode);
            }
        }
    }
    // What is left must be a strict prefix of EOS: at most 7 one bits.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::InvalidPadding);
    }
    Ok(())
}

/// Encodes `input` (test helper; the processor never encodes).
#[cfg(test)]
pub fn encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &byte in input {
        let (code, len) = CODES[usize::from(byte)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) as u8) | ((1u8 << pad) - 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_canonical() {
        // Rebuild the codes from the lengths alone; they must equal the RFC's.
        let mut code: u32 = 0;
        for len in 1..=MAX_BITS {
            let start = usize::from(CANONICAL.first_index[len]);
            for i in 0..CANONICAL.count[len] as usize {
                let symbol = usize::from(CANONICAL.symbols[start + i]);
                assert_eq!(CODES[symbol], (code, len as u8), "symbol {symbol}");
                if i > 0 {
                    assert!(CANONICAL.symbols[start + i - 1] < CANONICAL.symbols[start + i]);
                }
                code += 1;
            }
            code <<= 1;
        }
        let total: u32 = CANONICAL.count.iter().sum();
        assert_eq!(total, 257);
    }

    #[test]
    fn rfc_examples() {
        // RFC 7541 C.4.1 and C.6.1.
        let cases: [(&str, &[u8]); 3] = [
            (
                "www.example.com",
                &[
                    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
                ],
            ),
            ("no-cache", &[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]),
            ("302", &[0x64, 0x02]),
        ];
        for (text, coded) in cases {
            assert_eq!(encode(text.as_bytes()), coded);
            let mut out = Vec::new();
            decode(coded, &mut out, 100).unwrap();
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        decode(&encode(&all), &mut out, 1000).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn rejects_bad_input() {
        let mut out = Vec::new();
        // EOS spelled out (30 one bits) is an error, as is a long run of padding.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out, 10),
            Err(HuffmanError::InvalidCode)
        );
        assert_eq!(
            decode(&[0xff], &mut out, 10),
            Err(HuffmanError::InvalidPadding)
        );
        // Padding with a zero bit: '0' is 00000, then 000 is not all ones.
        assert_eq!(
            decode(&[0x00], &mut out, 10),
            Err(HuffmanError::InvalidPadding)
        );
        // The output limit holds.
        out.clear();
        assert_eq!(
            decode(&encode(b"abcdef"), &mut out, 3),
            Err(HuffmanError::TooLong(3))
        );
        assert_eq!(out.len(), 3);
    }
}
