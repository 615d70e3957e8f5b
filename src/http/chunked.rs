//! An incremental decoder for `Transfer-Encoding: chunked` bodies.
//!
//! It is fed whatever bytes have arrived and keeps its place between calls,
//! so a body trickling in one byte at a time costs O(bytes), not a rescan per
//! read. It is strict where leniency enables smuggling: sizes are hex digits
//! only (at most 15), every line ends in CRLF, and the decoded body and the
//! chunk metadata are both bounded.

use thiserror::Error;

/// Longest chunk-size line (size + extensions) or trailer section accepted.
const MAX_META_BYTES: usize = 4096;

/// Why a chunked body was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Bad chunk syntax.
    #[error("malformed chunked body")]
    Malformed,
    /// The decoded body exceeds the limit.
    #[error("chunked body larger than {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size { value: u64, digits: u8 },
    /// After the size and whitespace: only more whitespace, `;` or CR may follow
    /// (`2 x` is refused: peers that read it as size 2 and peers that refuse
    /// it would disagree about where the request ends).
    SizeBws,
    /// After `;`: extensions up to CR.
    Extension,
    /// Expecting the LF of the size line.
    SizeLf,
    /// Copying chunk data.
    Data { remaining: u64 },
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// In the trailer section; `line_start` is true at the start of a line.
    Trailer { line_start: bool },
    /// Expecting the LF that ends a trailer line (`last` if it was empty).
    TrailerLf { last: bool },
    /// The body is complete.
    Done,
}

/// Decoder state for one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    max_body: usize,
    /// Decoded bytes so far, counting the chunk being read.
    decoded: usize,
    /// Size of the chunk whose size line is being read.
    pending: u64,
    /// Metadata bytes in the current size line or trailer section.
    meta: usize,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies over `max_body` decoded bytes.
    pub fn new(max_body: usize) -> Self {
        Self { state: State::Size { value: 0, digits: 0 }, max_body, decoded: 0, pending: 0, meta: 0 }
    }

    /// Feeds `input`, appending decoded data to `out`.
    ///
    /// Returns how many bytes of `input` were consumed and whether the body is
    /// complete. After completion the rest of `input` (the next pipelined
    /// request) is left unconsumed.
    ///
    /// # Errors
    /// [`ChunkError`] on bad syntax or an oversized body.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Done => break,
                State::Data { remaining } => {
                    let take = (input.len() - i).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining }
                    }
                }
                state => {
                    i += 1;
                    self.meta_byte()?;
                    self.step(state, b)?
                }
            };
        }
        Ok((i, self.state == State::Done))
    }

    fn meta_byte(&mut self) -> Result<(), ChunkError> {
        self.meta += 1;
        if self.meta > MAX_META_BYTES {
            return Err(ChunkError::Malformed);
        }
        Ok(())
    }

    fn step(&mut self, state: State, b: u8) -> Result<State, ChunkError> {
        Ok(match (state, b) {
            (State::Size { value, digits }, _) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err(ChunkError::Malformed);
                }
                let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                State::Size { value: value * 16 + d, digits: digits + 1 }
            }
            (State::Size { digits: 0, .. }, _) => return Err(ChunkError::Malformed),
            (State::Size { value, .. }, b' ' | b'\t' | b';' | b'\r') => {
                self.start_chunk(value)?;
                after_size(b)
            }
            (State::SizeBws, b' ' | b'\t' | b';' | b'\r') => after_size(b),
            (State::Extension, b'\r') => State::SizeLf,
            (State::Extension, b'\t' | 0x20..=0x7e | 0x80..) => State::Extension,
            (State::SizeLf, b'\n') => {
                self.meta = 0;
                match self.pending {
                    0 => State::Trailer { line_start: true },
                    n => State::Data { remaining: n },
                }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { value: 0, digits: 0 },
            (State::Trailer { line_start: true }, b'\r') => State::TrailerLf { last: true },
            (State::Trailer { .. }, b'\r') => State::TrailerLf { last: false },
            (State::Trailer { .. }, b'\n') => return Err(ChunkError::Malformed),
            (State::Trailer { .. }, _) => State::Trailer { line_start: false },
            (State::TrailerLf { last: true }, b'\n') => State::Done,
            (State::TrailerLf { last: false }, b'\n') => State::Trailer { line_start: true },
            _ => return Err(ChunkError::Malformed),
        })
    }

    /// Records the size of the chunk whose line is being read and checks the
    /// running total against the limit before any of its data is buffered.
    fn start_chunk(&mut self, size: u64) -> Result<(), ChunkError> {
        let total = (self.decoded as u64).saturating_add(size);
        if total > self.max_body as u64 {
            return Err(ChunkError::TooLarge(self.max_body));
        }
        self.decoded = total as usize;
        self.pending = size;
        Ok(())
    }
}

/// Where a byte after the size digits (or their whitespace) leads.
fn after_size(b: u8) -> State {
    match b {
        b';' => State::Extension,
        b'\r' => State::SizeLf,
        _ => State::SizeBws,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max: usize) -> Result<(usize, bool, Vec<u8>), ChunkError> {
        let mut d = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        let (n, done) = d.decode(input, &mut out)?;
        Ok((n, done, out))
    }

    #[test]
    fn a_chunked_body_decodes_and_stops_at_its_end() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (n, done, out) = decode_all(input, 100).unwrap();
        assert!(done);
        assert_eq!(out, b"hello world");
        assert_eq!(&input[n..], b"NEXT");
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_body() {
        let input = b"A\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        let mut finished = false;
        for (i, b) in input.iter().enumerate() {
            let (n, done) = d.decode(std::slice::from_ref(b), &mut out).unwrap();
            assert_eq!(n, 1);
            finished = done;
            assert_eq!(done, i == input.len() - 1);
        }
        assert!(finished);
        assert_eq!(out, b"0123456789!");
    }

    #[test]
    fn partial_input_is_not_done() {
        let (n, done, out) = decode_all(b"5\r\nhel", 100).unwrap();
        assert_eq!((n, done, &out[..]), (6, false, &b"hel"[..]));
    }

    #[test]
    fn bad_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"fffffffffffffffff\r\n",
            b"-1\r\n",
            b"0\r\nX\n",
        ] {
            assert_eq!(decode_all(bad, 1 << 40).unwrap_err(), ChunkError::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn the_body_limit_is_checked_before_data_is_buffered() {
        assert_eq!(decode_all(b"65\r\n", 100).unwrap_err(), ChunkError::TooLarge(100));
        assert_eq!(decode_all(b"32\r\n", 100).map(|r| r.1), Ok(false));
        let two = format!("32\r\n{}\r\n33\r\n", "a".repeat(50));
        assert_eq!(decode_all(two.as_bytes(), 100).unwrap_err(), ChunkError::TooLarge(100));
    }

    #[test]
    fn whitespace_after_a_size_may_only_lead_to_an_extension() {
        assert_eq!(decode_all(b"2 ;a=\"b c\"\r\nab\r\n0 \t\r\n\r\n", 100).unwrap().2, b"ab");
        for bad in [&b"2 x\r\nab\r\n0\r\n\r\n"[..], b"2;a\x01\r\nab\r\n0\r\n\r\n", b"2 2\r\nab\r\n0\r\n\r\n"]
        {
            assert_eq!(decode_all(bad, 100).unwrap_err(), ChunkError::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn endless_extensions_are_cut_off() {
        let long = format!("1;{}", "e".repeat(5000));
        assert_eq!(decode_all(long.as_bytes(), 100).unwrap_err(), ChunkError::Malformed);
    }
}
