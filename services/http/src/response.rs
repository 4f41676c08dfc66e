//! Writing response heads and body framing: the connection owns Content-Length,
//! Transfer-Encoding and Connection so a handler cannot get the framing wrong.

use alloc::vec::Vec;

use crate::error::ResponseError;
use crate::status::reason_phrase;

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body (`Content-Length: 0`, or nothing at all for 204 and 304).
    Empty,
    /// Exactly this many bytes will follow through [`crate::Connection::write_body`].
    Length(u64),
    /// An unknown length, sent chunked (to an HTTP/1.0 client: delimited by closing).
    Chunked,
}

/// How the body bytes written after the head are framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutFraming {
    /// `remaining` bytes still to be written.
    Length { remaining: u64 },
    /// Each write becomes one chunk; finishing writes the last chunk.
    Chunked,
    /// Raw bytes; the end of the body is the end of the connection.
    UntilClose,
}

/// Options of the head that come from the connection rather than the handler.
pub(crate) struct HeadContext {
    /// Write `Connection: close`.
    pub close: bool,
    /// The peer speaks HTTP/1.0 and cannot decode chunked bodies.
    pub peer_is_http10: bool,
    pub max_head_bytes: usize,
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn validate_header(name: &str, value: &str) -> Result<(), ResponseError> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(ResponseError::InvalidHeaderName);
    }
    if ["content-length", "transfer-encoding", "connection"]
        .iter()
        .any(|reserved| name.eq_ignore_ascii_case(reserved))
    {
        return Err(ResponseError::ReservedHeader);
    }
    if value.bytes().any(|byte| matches!(byte, b'\r' | b'\n' | 0)) {
        return Err(ResponseError::InvalidHeaderValue);
    }
    Ok(())
}

/// Writes `value` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut index = digits.len();
    let mut rest = value;
    loop {
        index -= 1;
        if let Some(slot) = digits.get_mut(index) {
            *slot = b'0' + (rest % 10) as u8;
        }
        rest /= 10;
        if rest == 0 || index == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(index..).unwrap_or(&[]));
}

/// Number of hexadecimal digits of `value` (at least one).
pub(crate) fn hex_len(value: usize) -> usize {
    let bits = usize::BITS - value.leading_zeros();
    (bits as usize).div_ceil(4).max(1)
}

/// Writes `value` in lowercase hexadecimal.
pub(crate) fn push_hex(out: &mut Vec<u8>, value: usize) {
    for shift in (0..hex_len(value)).rev() {
        let nibble = (value >> (shift * 4)) & 0xf;
        out.push(b"0123456789abcdef".get(nibble).copied().unwrap_or(b'0'));
    }
}

fn push_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Builds the head that accepts a tunnel (a `2xx` answer to `CONNECT`): the status line and
/// `headers`, with no framing fields, since the bytes after it are not an HTTP body.
pub(crate) fn build_tunnel_head(
    status: u16,
    headers: &[(&str, &str)],
    max_head_bytes: usize,
) -> Result<Vec<u8>, ResponseError> {
    if !(200..=299).contains(&status) {
        return Err(ResponseError::InvalidStatus);
    }
    let mut head = Vec::new();
    push_status_line(&mut head, status);
    for (name, value) in headers {
        validate_header(name, value)?;
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
        if head.len() > max_head_bytes {
            return Err(ResponseError::HeadTooLarge);
        }
    }
    head.extend_from_slice(b"\r\n");
    if head.len() > max_head_bytes {
        return Err(ResponseError::HeadTooLarge);
    }
    Ok(head)
}

/// Builds the head of a handler's response and the framing its body will use.
pub(crate) fn build_head(
    status: u16,
    headers: &[(&str, &str)],
    body: ResponseBody,
    context: &HeadContext,
) -> Result<(Vec<u8>, OutFraming), ResponseError> {
    if !(200..=599).contains(&status) {
        return Err(ResponseError::InvalidStatus);
    }
    let bodiless_status = status == 204 || status == 304;
    if bodiless_status && body != ResponseBody::Empty {
        return Err(ResponseError::BodyNotAllowed);
    }
    let mut size = 0usize;
    for (name, value) in headers {
        validate_header(name, value)?;
        size = size.saturating_add(name.len() + value.len() + 4);
    }
    if size > context.max_head_bytes {
        return Err(ResponseError::HeadTooLarge);
    }

    let mut head = Vec::with_capacity(size + 96);
    push_status_line(&mut head, status);
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let framing = match body {
        ResponseBody::Empty if bodiless_status => OutFraming::Length { remaining: 0 },
        ResponseBody::Empty => {
            head.extend_from_slice(b"Content-Length: 0\r\n");
            OutFraming::Length { remaining: 0 }
        }
        ResponseBody::Length(length) => {
            head.extend_from_slice(b"Content-Length: ");
            push_decimal(&mut head, length);
            head.extend_from_slice(b"\r\n");
            OutFraming::Length { remaining: length }
        }
        ResponseBody::Chunked if context.peer_is_http10 => OutFraming::UntilClose,
        ResponseBody::Chunked => {
            head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            OutFraming::Chunked
        }
    };
    if context.close || framing == OutFraming::UntilClose {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if head.len() > context.max_head_bytes {
        return Err(ResponseError::HeadTooLarge);
    }
    Ok((head, framing))
}

/// The complete response the connection sends by itself for a failed request: the reason
/// phrase as a small text body (omitted for HEAD), then a close.
pub(crate) fn error_response(status: u16, head_request: bool) -> Vec<u8> {
    let reason = reason_phrase(status).as_bytes();
    let mut out = Vec::with_capacity(128);
    push_status_line(&mut out, status);
    out.extend_from_slice(b"Content-Type: text/plain\r\nContent-Length: ");
    push_decimal(&mut out, reason.len() as u64 + 1);
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    if !head_request {
        out.extend_from_slice(reason);
        out.push(b'\n');
    }
    out
}

/// The interim response answering `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The last chunk of a chunked body (no trailers).
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn context(close: bool, peer_is_http10: bool) -> HeadContext {
        HeadContext {
            close,
            peer_is_http10,
            max_head_bytes: 256,
        }
    }

    #[test]
    fn writes_length_framed_head() {
        let (head, framing) = build_head(
            200,
            &[("Content-Type", "text/xml")],
            ResponseBody::Length(1234),
            &context(false, false),
        )
        .unwrap();
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 1234\r\n\r\n"
        );
        assert_eq!(framing, OutFraming::Length { remaining: 1234 });
    }

    #[test]
    fn writes_chunked_head_with_close() {
        let (head, framing) =
            build_head(200, &[], ResponseBody::Chunked, &context(true, false)).unwrap();
        assert_eq!(
            head,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(framing, OutFraming::Chunked);
    }

    #[test]
    fn chunked_to_http10_is_close_delimited() {
        let (head, framing) =
            build_head(200, &[], ResponseBody::Chunked, &context(false, true)).unwrap();
        assert_eq!(head, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        assert_eq!(framing, OutFraming::UntilClose);
    }

    #[test]
    fn no_content_has_no_length() {
        let (head, _) = build_head(204, &[], ResponseBody::Empty, &context(false, false)).unwrap();
        assert_eq!(head, b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(
            build_head(204, &[], ResponseBody::Length(1), &context(false, false)),
            Err(ResponseError::BodyNotAllowed)
        );
    }

    #[test]
    fn rejects_bad_heads() {
        let ctx = context(false, false);
        let cases: [(u16, (&str, &str), ResponseError); 6] = [
            (100, ("A", "b"), ResponseError::InvalidStatus),
            (600, ("A", "b"), ResponseError::InvalidStatus),
            (200, ("Bad Name", "b"), ResponseError::InvalidHeaderName),
            (200, ("", "b"), ResponseError::InvalidHeaderName),
            (
                200,
                ("X", "a\r\nInjected: 1"),
                ResponseError::InvalidHeaderValue,
            ),
            (200, ("content-LENGTH", "5"), ResponseError::ReservedHeader),
        ];
        for (status, header, expected) in cases {
            assert_eq!(
                build_head(status, &[header], ResponseBody::Empty, &ctx),
                Err(expected)
            );
        }
        let long = "v".repeat(300);
        assert_eq!(
            build_head(200, &[("X", &long)], ResponseBody::Empty, &ctx),
            Err(ResponseError::HeadTooLarge)
        );
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        push_decimal(&mut out, 0);
        out.push(b' ');
        push_decimal(&mut out, u64::MAX);
        out.push(b' ');
        push_hex(&mut out, 0);
        out.push(b' ');
        push_hex(&mut out, 0x1a2f);
        assert_eq!(out, b"0 18446744073709551615 0 1a2f");
        assert_eq!(hex_len(0), 1);
        assert_eq!(hex_len(15), 1);
        assert_eq!(hex_len(16), 2);
        assert_eq!(hex_len(0x10000), 5);
    }

    #[test]
    fn error_response_is_complete_and_closes() {
        assert_eq!(
            error_response(400, false),
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\
              Connection: close\r\n\r\nBad Request\n"
        );
        let head_only = error_response(408, true);
        assert!(head_only.ends_with(b"Connection: close\r\n\r\n"));
    }
}
