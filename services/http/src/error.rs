//! Typed errors: what was wrong with a request (and the status it is answered with), and what
//! was wrong with a handler's use of the response side.

use core::fmt;

/// Why a request could not be served. The [`crate::Connection`] answers each with
/// [`HttpError::status`] (when no response has started yet) and then closes, because after a
/// framing error the position of the next request in the byte stream is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The request line or a header field is not valid HTTP/1.x syntax.
    MalformedHead,
    /// The request target is not origin-form, absolute-form or `*` (for OPTIONS).
    BadRequestTarget,
    /// The head did not end within `max_head_bytes`.
    HeadTooLarge,
    /// The head has more than `max_headers` header fields.
    TooManyHeaders,
    /// An HTTP/1.1 request without exactly one Host header field.
    BadHost,
    /// A Content-Length value that is not a decimal number or does not fit 64 bits.
    InvalidContentLength,
    /// Several Content-Length values that differ.
    ConflictingContentLength,
    /// Both Transfer-Encoding and Content-Length: a classic request-smuggling vector.
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding in an HTTP/1.0 request, or a malformed coding list.
    InvalidTransferEncoding,
    /// A transfer coding other than a single final `chunked`.
    UnsupportedTransferEncoding,
    /// An Expect header field other than `100-continue`.
    UnsupportedExpectation,
    /// The body is larger than the route's limit.
    PayloadTooLarge,
    /// A chunk-size line that is not hexadecimal digits followed by optional extensions.
    BadChunkSize,
    /// A chunk size that does not fit 64 bits.
    ChunkSizeOverflow,
    /// A chunk-size line longer than `max_chunk_line_bytes`.
    ChunkLineTooLong,
    /// Missing or wrong CRLF around chunk data or trailer fields.
    BadChunkFraming,
    /// More than `max_trailer_bytes` of trailer fields.
    TrailersTooLarge,
    /// The peer closed its side before the body was complete.
    IncompleteBody,
    /// The request head did not arrive within `head_timeout_ms`.
    HeadTimeout,
    /// No body byte arrived within `body_timeout_ms` while the handler waited for one.
    BodyTimeout,
}

impl HttpError {
    /// The status code this error is answered with.
    pub fn status(self) -> u16 {
        match self {
            HttpError::MalformedHead
            | HttpError::BadRequestTarget
            | HttpError::BadHost
            | HttpError::InvalidContentLength
            | HttpError::ConflictingContentLength
            | HttpError::ContentLengthWithTransferEncoding
            | HttpError::InvalidTransferEncoding
            | HttpError::BadChunkSize
            | HttpError::ChunkSizeOverflow
            | HttpError::ChunkLineTooLong
            | HttpError::BadChunkFraming
            | HttpError::IncompleteBody => 400,
            HttpError::HeadTimeout | HttpError::BodyTimeout => 408,
            HttpError::PayloadTooLarge => 413,
            HttpError::UnsupportedExpectation => 417,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders | HttpError::TrailersTooLarge => {
                431
            }
            HttpError::UnsupportedTransferEncoding => 501,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            HttpError::MalformedHead => "malformed request head",
            HttpError::BadRequestTarget => "unsupported request target",
            HttpError::HeadTooLarge => "request head too large",
            HttpError::TooManyHeaders => "too many header fields",
            HttpError::BadHost => "missing or repeated Host header field",
            HttpError::InvalidContentLength => "invalid Content-Length",
            HttpError::ConflictingContentLength => "conflicting Content-Length values",
            HttpError::ContentLengthWithTransferEncoding => {
                "both Content-Length and Transfer-Encoding"
            }
            HttpError::InvalidTransferEncoding => "invalid Transfer-Encoding",
            HttpError::UnsupportedTransferEncoding => "unsupported transfer coding",
            HttpError::UnsupportedExpectation => "unsupported expectation",
            HttpError::PayloadTooLarge => "request body too large",
            HttpError::BadChunkSize => "invalid chunk size",
            HttpError::ChunkSizeOverflow => "chunk size overflows 64 bits",
            HttpError::ChunkLineTooLong => "chunk-size line too long",
            HttpError::BadChunkFraming => "invalid chunk framing",
            HttpError::TrailersTooLarge => "trailer fields too large",
            HttpError::IncompleteBody => "connection closed before the body was complete",
            HttpError::HeadTimeout => "request head timed out",
            HttpError::BodyTimeout => "request body timed out",
        };
        f.write_str(text)
    }
}

/// A misuse of the response side of a [`crate::Connection`] by the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// There is no request awaiting a response (none delivered yet, or it failed).
    NoActiveRequest,
    /// A response to the current request has already been started.
    AlreadyStarted,
    /// No response has been started, so there is no body to write or finish.
    NotStarted,
    /// The response was already finished.
    AlreadyFinished,
    /// The status is not a final status code (200..=599).
    InvalidStatus,
    /// A header name is not an HTTP token.
    InvalidHeaderName,
    /// A header value contains CR, LF or NUL (which would let it inject header fields).
    InvalidHeaderValue,
    /// Content-Length, Transfer-Encoding and Connection are written by the connection itself.
    ReservedHeader,
    /// The status line and header fields exceed `max_response_head_bytes`.
    HeadTooLarge,
    /// 204 and 304 responses carry no body.
    BodyNotAllowed,
    /// More body bytes than the declared Content-Length.
    BodyOverrun,
    /// The response was finished with fewer body bytes than its Content-Length: the
    /// connection closes after what was written, since the peer cannot find the message end.
    BodyIncomplete,
    /// The connection is closing or closed; nothing more can be written.
    ConnectionClosed,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ResponseError::NoActiveRequest => "no request awaits a response",
            ResponseError::AlreadyStarted => "response already started",
            ResponseError::NotStarted => "response not started",
            ResponseError::AlreadyFinished => "response already finished",
            ResponseError::InvalidStatus => "not a final status code",
            ResponseError::InvalidHeaderName => "invalid header name",
            ResponseError::InvalidHeaderValue => "invalid header value",
            ResponseError::ReservedHeader => "header is written by the connection",
            ResponseError::HeadTooLarge => "response head too large",
            ResponseError::BodyNotAllowed => "status does not allow a body",
            ResponseError::BodyOverrun => "body longer than its Content-Length",
            ResponseError::BodyIncomplete => "body shorter than its Content-Length",
            ResponseError::ConnectionClosed => "connection closed",
        };
        f.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_statuses() {
        assert_eq!(HttpError::MalformedHead.status(), 400);
        assert_eq!(HttpError::ConflictingContentLength.status(), 400);
        assert_eq!(HttpError::ContentLengthWithTransferEncoding.status(), 400);
        assert_eq!(HttpError::ChunkSizeOverflow.status(), 400);
        assert_eq!(HttpError::HeadTimeout.status(), 408);
        assert_eq!(HttpError::BodyTimeout.status(), 408);
        assert_eq!(HttpError::PayloadTooLarge.status(), 413);
        assert_eq!(HttpError::UnsupportedExpectation.status(), 417);
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
        assert_eq!(HttpError::UnsupportedTransferEncoding.status(), 501);
    }
}
