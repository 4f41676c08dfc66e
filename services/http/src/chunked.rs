//! Incremental decoder for chunked request bodies (RFC 9112 §7.1).
//!
//! It walks the buffered input byte by byte through the framing (size lines, extensions, CRLFs,
//! trailers) and stops at chunk data, which the caller hands to the handler without copying.
//! Its state survives between calls, so any split of the input decodes the same.

use crate::error::HttpError;
use crate::limits::Limits;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hexadecimal chunk size.
    Size { value: u64, digits: usize },
    /// After the size: whitespace and `;extension` text up to CR.
    Extension { value: u64 },
    /// Expecting the LF ending the size line.
    SizeLf { value: u64 },
    /// Inside chunk data, `remaining` bytes to go.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Expecting the LF ending a trailer field line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    FinalLf,
    /// The body has ended.
    Done,
}

/// What one [`ChunkedDecoder::advance`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Framing bytes at the start of the input that the caller must discard.
    pub framing: usize,
    /// Chunk data bytes right after the framing bytes (already counted as delivered).
    pub data: usize,
    /// Whether the body ended within the framing bytes.
    pub finished: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    /// Bytes of the current size line, bounded by `max_chunk_line_bytes`.
    line_bytes: usize,
    /// Bytes of trailer fields, bounded by `max_trailer_bytes`.
    trailer_bytes: usize,
    /// Body bytes announced so far, checked against the body limit.
    announced: u64,
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            line_bytes: 0,
            trailer_bytes: 0,
            announced: 0,
        }
    }

    /// Walks `input` until chunk data (at most `max_data` bytes of it), the end of the body,
    /// or the end of the input.
    pub(crate) fn advance(
        &mut self,
        input: &[u8],
        limits: &Limits,
        body_limit: u64,
        max_data: usize,
    ) -> Result<Progress, HttpError> {
        let mut framing = 0usize;
        for &byte in input {
            if let State::Data { remaining } = self.state {
                let available = input.len().saturating_sub(framing);
                let data = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(available)
                    .min(max_data);
                let remaining = remaining.saturating_sub(data as u64);
                self.state = if remaining == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining }
                };
                return Ok(Progress {
                    framing,
                    data,
                    finished: false,
                });
            }
            self.step(byte, limits, body_limit)?;
            framing += 1;
            if self.state == State::Done {
                return Ok(Progress {
                    framing,
                    data: 0,
                    finished: true,
                });
            }
        }
        Ok(Progress {
            framing,
            data: 0,
            finished: false,
        })
    }

    /// Moves the framing state over one byte that is not chunk data.
    fn step(&mut self, byte: u8, limits: &Limits, body_limit: u64) -> Result<(), HttpError> {
        let in_size_line = matches!(
            self.state,
            State::Size { .. } | State::Extension { .. } | State::SizeLf { .. }
        );
        if in_size_line {
            self.line_bytes += 1;
            if self.line_bytes > limits.max_chunk_line_bytes {
                return Err(HttpError::ChunkLineTooLong);
            }
        }
        self.state = match (self.state, byte) {
            (State::Size { value, digits }, _) if byte.is_ascii_hexdigit() => {
                let digit = u64::from(hex_digit(byte));
                let value = value
                    .checked_mul(16)
                    .and_then(|value| value.checked_add(digit))
                    .ok_or(HttpError::ChunkSizeOverflow)?;
                State::Size {
                    value,
                    digits: digits + 1,
                }
            }
            (State::Size { digits: 0, .. }, _) => return Err(HttpError::BadChunkSize),
            (State::Size { value, .. }, b';' | b' ' | b'\t') => State::Extension { value },
            (State::Size { value, .. }, b'\r') => State::SizeLf { value },
            (State::Size { .. }, _) => return Err(HttpError::BadChunkSize),
            (State::Extension { value }, b'\r') => State::SizeLf { value },
            (State::Extension { .. }, b'\n' | 0) => return Err(HttpError::BadChunkSize),
            (State::Extension { value }, _) => State::Extension { value },
            (State::SizeLf { value }, b'\n') => {
                self.line_bytes = 0;
                self.announced = self.announced.saturating_add(value);
                if self.announced > body_limit {
                    return Err(HttpError::PayloadTooLarge);
                }
                if value == 0 {
                    State::TrailerStart
                } else {
                    State::Data { remaining: value }
                }
            }
            (State::SizeLf { .. }, _) => return Err(HttpError::BadChunkSize),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size {
                value: 0,
                digits: 0,
            },
            (State::DataCr | State::DataLf, _) => return Err(HttpError::BadChunkFraming),
            (State::TrailerStart, b'\r') => State::FinalLf,
            (State::TrailerStart | State::TrailerLine, b'\n') => {
                return Err(HttpError::BadChunkFraming)
            }
            (State::TrailerLine, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::TrailerLine, _) => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > limits.max_trailer_bytes {
                    return Err(HttpError::TrailersTooLarge);
                }
                State::TrailerLine
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::FinalLf, b'\n') => State::Done,
            (State::TrailerLf | State::FinalLf, _) => return Err(HttpError::BadChunkFraming),
            // `advance` never steps over data bytes or past the end.
            (State::Data { .. } | State::Done, _) => self.state,
        };
        Ok(())
    }
}

fn hex_digit(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Decodes `input` delivered in pieces of `step` bytes, as the connection would.
    fn decode(input: &[u8], step: usize, body_limit: u64) -> Result<(Vec<u8>, usize), HttpError> {
        let limits = Limits::default();
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut buffered: Vec<u8> = Vec::new();
        let mut fed = 0;
        loop {
            let progress = decoder.advance(&buffered, &limits, body_limit, usize::MAX)?;
            let data_end = progress.framing + progress.data;
            body.extend_from_slice(&buffered[progress.framing..data_end]);
            buffered.drain(..data_end);
            if progress.finished {
                return Ok((body, input.len() - fed + buffered.len()));
            }
            if progress.framing == 0 && progress.data == 0 {
                if fed == input.len() {
                    panic!("decoder wants more than the whole input");
                }
                let end = (fed + step).min(input.len());
                buffered.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }

    #[test]
    fn decodes_chunks_with_extensions_and_trailers_at_any_split() {
        let input = b"5;name=value\r\nhello\r\n1A ; a=b\r\nabcdefghijklmnopqrstuvwxyz\r\n\
                      0\r\nX-Trailer: yes\r\nAnother: one\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64, input.len()] {
            let (body, left) = decode(input, step, u64::MAX).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(left, 4, "step {step}");
        }
    }

    #[test]
    fn empty_body_is_just_the_last_chunk() {
        assert_eq!(decode(b"0\r\n\r\n", 1, 0).unwrap().0, b"");
    }

    #[test]
    fn leading_zeros_are_fine_but_overflow_is_not() {
        assert_eq!(
            decode(b"0003\r\nabc\r\n0\r\n\r\n", 1, 10).unwrap().0,
            b"abc"
        );
        assert_eq!(
            decode(b"ffffffffffffffffff\r\n", 1, u64::MAX),
            Err(HttpError::ChunkSizeOverflow)
        );
        assert_eq!(
            decode(b"10000000000000000\r\n", 4, u64::MAX),
            Err(HttpError::ChunkSizeOverflow)
        );
    }

    #[test]
    fn malformed_size_lines() {
        for input in [
            &b"\r\n"[..],
            b"x\r\n",
            b";ext\r\n",
            b"5x\r\n",
            b"5\n",
            b"5\rX",
            b"5;a\nb\r\n",
            b"-5\r\n",
        ] {
            assert_eq!(
                decode(input, 1, u64::MAX),
                Err(HttpError::BadChunkSize),
                "{input:?}"
            );
        }
    }

    #[test]
    fn missing_crlf_after_data() {
        assert_eq!(decode(b"3\r\nabcX", 1, 10), Err(HttpError::BadChunkFraming));
        assert_eq!(
            decode(b"3\r\nabc\rX", 1, 10),
            Err(HttpError::BadChunkFraming)
        );
        assert_eq!(
            decode(b"0\r\nTrailer\n", 1, 10),
            Err(HttpError::BadChunkFraming)
        );
        assert_eq!(decode(b"0\r\n\rX", 1, 10), Err(HttpError::BadChunkFraming));
    }

    #[test]
    fn body_limit_counts_announced_sizes() {
        assert_eq!(decode(b"4\r\nabcd\r\n0\r\n\r\n", 1, 4).unwrap().0, b"abcd");
        assert_eq!(
            decode(b"4\r\nabcd\r\n1\r\n", 1, 4),
            Err(HttpError::PayloadTooLarge)
        );
    }

    #[test]
    fn long_lines_and_trailers_are_bounded() {
        let limits = Limits::default();
        let mut long_line = alloc::vec![b'0'; limits.max_chunk_line_bytes + 1];
        long_line.extend_from_slice(b"\r\n");
        assert_eq!(
            decode(&long_line, 100, 10),
            Err(HttpError::ChunkLineTooLong)
        );
        let mut long_extension = b"1;".to_vec();
        long_extension.resize(limits.max_chunk_line_bytes + 10, b'a');
        assert_eq!(
            decode(&long_extension, 100, 10),
            Err(HttpError::ChunkLineTooLong)
        );
        let mut trailers = b"0\r\n".to_vec();
        // Five counted bytes a line (the CRLF is not counted).
        for _ in 0..limits.max_trailer_bytes / 5 + 1 {
            trailers.extend_from_slice(b"X: 12\r\n");
        }
        trailers.extend_from_slice(b"\r\n");
        assert_eq!(decode(&trailers, 100, 10), Err(HttpError::TrailersTooLarge));
    }

    #[test]
    fn max_data_limits_each_piece() {
        let limits = Limits::default();
        let mut decoder = ChunkedDecoder::new();
        let input = b"8\r\n12345678\r\n0\r\n\r\n";
        let progress = decoder.advance(input, &limits, 100, 3).unwrap();
        assert_eq!(
            progress,
            Progress {
                framing: 3,
                data: 3,
                finished: false
            }
        );
        let progress = decoder.advance(&input[6..], &limits, 100, 3).unwrap();
        assert_eq!(
            progress,
            Progress {
                framing: 0,
                data: 3,
                finished: false
            }
        );
    }
}
