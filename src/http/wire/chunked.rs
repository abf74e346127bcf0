//! `Transfer-Encoding: chunked` (RFC 9112 section 7.1): the decoder a
//! member's response body goes through, and the encoder for a client's
//! request body of unknown length.
//!
//! The decoder is a state machine fed whatever bytes have arrived: it
//! never needs a whole chunk, a whole size line or a whole trailer at
//! once, holds nothing itself, and tells its caller which bytes are data
//! (handed on as they are) and which are framing (dropped). Size lines,
//! chunk extensions and trailers are bounded; anything malformed is an
//! error, never a guess.

use std::fmt;

/// The longest size line accepted, extensions included: 4 KiB.
const MAX_SIZE_LINE: u32 = 4096;

/// The most trailer bytes accepted after the last chunk: 16 KiB.
const MAX_TRAILERS: u32 = 16 * 1024;

/// Where a chunked body's decoder stands between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Reading a chunk's size in hex; `line` counts the line's bytes.
    Size {
        size: u64,
        digits: u8,
        line: u32,
    },
    /// After the size: an extension or whitespace, up to the CR.
    Extension {
        size: u64,
        line: u32,
    },
    /// The size line's CR was read; its LF must follow.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's data.
    Data {
        remaining: u64,
    },
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or of the
    /// empty line that ends the body).
    TrailerStart {
        seen: u32,
    },
    /// Inside a trailer line, up to its LF.
    TrailerLine {
        seen: u32,
    },
    /// The CR of the closing empty line was read; its LF must follow.
    EndLf,
    /// The body is complete.
    Done,
}

/// What the decoder made of the start of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// That many bytes were framing: drop them and step again.
    Framing(usize),
    /// That many bytes are body data: hand them on and step again.
    Data(usize),
    /// The body ended after that many framing bytes.
    End(usize),
    /// Nothing to do until more bytes arrive.
    More,
}

/// A chunked body that breaks the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkedError(&'static str);

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed chunked body: {}", self.0)
    }
}

impl std::error::Error for ChunkedError {}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size {
            size: 0,
            digits: 0,
            line: 0,
        }
    }
}

impl Chunked {
    /// Reads the start of `input`: data, framing, or the end.
    pub(crate) fn step(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        if input.is_empty() {
            return Ok(if *self == Chunked::Done {
                Step::End(0)
            } else {
                Step::More
            });
        }
        if let Chunked::Data { remaining } = self {
            // Bounded by the input's length, so it fits a usize.
            let data = (*remaining).min(input.len() as u64);
            *remaining -= data;
            if *remaining == 0 {
                *self = Chunked::DataCr;
            }
            return Ok(Step::Data(data as usize));
        }
        for (used, &byte) in input.iter().enumerate() {
            self.framing_byte(byte)?;
            match self {
                Chunked::Data { .. } => return Ok(Step::Framing(used + 1)),
                Chunked::Done => return Ok(Step::End(used + 1)),
                _ => {}
            }
        }
        Ok(Step::Framing(input.len()))
    }

    fn framing_byte(&mut self, byte: u8) -> Result<(), ChunkedError> {
        *self = match *self {
            Chunked::Size { size, digits, line } => {
                let line = next_in_line(line)?;
                match (hex_value(byte), byte) {
                    (Some(value), _) => {
                        if digits >= 16 {
                            return Err(ChunkedError("chunk size over 16 hex digits"));
                        }
                        Chunked::Size {
                            size: size << 4 | u64::from(value),
                            digits: digits + 1,
                            line,
                        }
                    }
                    _ if digits == 0 => return Err(ChunkedError("chunk size is not hex")),
                    (None, b'\r') => Chunked::SizeLf { size },
                    (None, b';' | b' ' | b'\t') => Chunked::Extension { size, line },
                    (None, _) => return Err(ChunkedError("chunk size is not hex")),
                }
            }
            Chunked::Extension { size, line } => {
                let line = next_in_line(line)?;
                match byte {
                    b'\r' => Chunked::SizeLf { size },
                    b'\n' => return Err(ChunkedError("size line ends in a bare LF")),
                    _ => Chunked::Extension { size, line },
                }
            }
            Chunked::SizeLf { size } => match (byte, size) {
                (b'\n', 0) => Chunked::TrailerStart { seen: 0 },
                (b'\n', size) => Chunked::Data { remaining: size },
                _ => return Err(ChunkedError("size line's CR without LF")),
            },
            Chunked::DataCr => match byte {
                b'\r' => Chunked::DataLf,
                _ => return Err(ChunkedError("chunk data longer than its size")),
            },
            Chunked::DataLf => match byte {
                b'\n' => Chunked::default(),
                _ => return Err(ChunkedError("chunk data's CR without LF")),
            },
            Chunked::TrailerStart { seen } => match byte {
                b'\r' => Chunked::EndLf,
                b'\n' => return Err(ChunkedError("trailer ends in a bare LF")),
                _ => Chunked::TrailerLine {
                    seen: next_trailer(seen)?,
                },
            },
            Chunked::TrailerLine { seen } => match byte {
                b'\n' => Chunked::TrailerStart {
                    seen: next_trailer(seen)?,
                },
                _ => Chunked::TrailerLine {
                    seen: next_trailer(seen)?,
                },
            },
            Chunked::EndLf => match byte {
                b'\n' => Chunked::Done,
                _ => return Err(ChunkedError("last line's CR without LF")),
            },
            Chunked::Data { .. } | Chunked::Done => {
                return Err(ChunkedError("bytes after the last chunk"))
            }
        };
        Ok(())
    }
}

fn next_in_line(line: u32) -> Result<u32, ChunkedError> {
    if line >= MAX_SIZE_LINE {
        return Err(ChunkedError("size line over 4 KiB"));
    }
    Ok(line + 1)
}

fn next_trailer(seen: u32) -> Result<u32, ChunkedError> {
    if seen >= MAX_TRAILERS {
        return Err(ChunkedError("trailers over 16 KiB"));
    }
    Ok(seen + 1)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Appends a chunk's size line for `length` bytes of data.
pub(crate) fn encode_size(length: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut rest = length;
    loop {
        at -= 1;
        digits[at] = HEX[rest & 0xf];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body: the last chunk, no trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Decodes `input` given in pieces of `piece` bytes: the data, or the
    /// first error; `None` data when the input ends before the body.
    fn decode(input: &[u8], piece: usize) -> Result<Option<Vec<u8>>, ChunkedError> {
        let mut decoder = Chunked::default();
        let mut data = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut pieces = input.chunks(piece.max(1));
        loop {
            match decoder.step(&pending)? {
                Step::Framing(n) => {
                    pending.drain(..n);
                }
                Step::Data(n) => {
                    data.extend(pending.drain(..n));
                }
                Step::End(_) => return Ok(Some(data)),
                Step::More => match pieces.next() {
                    Some(next) => pending.extend_from_slice(next),
                    None => return Ok(None),
                },
            }
        }
    }

    fn encode(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces.iter().filter(|piece| !piece.is_empty()) {
            encode_size(piece.len(), &mut out);
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(LAST_CHUNK);
        out
    }

    #[test]
    fn chunks_extensions_and_trailers_decode_to_their_data() {
        let body = b"4;name=value\r\nWiki\r\n5\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX: y\r\n\r\n";
        for piece in [1, 2, 3, 7, 1000] {
            assert_eq!(
                decode(body, piece).unwrap().as_deref(),
                Some(&b"Wikipedia in\r\n\r\nchunks."[..]),
                "in pieces of {piece}"
            );
        }
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(decode(b"A\r\n0123456789", 4).unwrap(), None, "cut short");
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"4\nWiki\r\n0\r\n\r\n",
            b"4\r\nWikipedia\r\n",
            b"4\r\nWiki\r0\r\n\r\n",
            b"11112222333344445\r\n",
            b"0\r\nX: y\n\n",
        ] {
            assert!(
                decode(bad, 3).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = [b"1;".as_slice(), &[b'x'; 5000], b"\r\n"].concat();
        assert!(decode(&long_line, 512).is_err());
        let long_trailers = [b"0\r\n".as_slice(), &[b'x'; 20000]].concat();
        assert!(decode(&long_trailers, 512).is_err());
    }

    #[test]
    fn sizes_are_written_in_lower_case_hex() {
        for (length, line) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let mut out = Vec::new();
            encode_size(length, &mut out);
            assert_eq!(out, line.as_bytes());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn what_is_encoded_decodes_back_in_any_pieces(
            pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
            piece in 1usize..64,
        ) {
            let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let decoded = decode(&encode(&slices), piece).unwrap();
            prop_assert_eq!(decoded, Some(pieces.concat()));
        }

        #[test]
        fn the_decoder_never_panics(input in prop::collection::vec(any::<u8>(), 0..400), piece in 1usize..32) {
            let _ = decode(&input, piece);
        }
    }
}
