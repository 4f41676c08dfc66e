//! A parsed request head, owned so the handler can keep it while the body streams in.

use alloc::string::String;
use alloc::vec::Vec;

use crate::query::{query_param, QueryError};

/// The request method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    /// Any other (syntactically valid) method token, as sent.
    Other(String),
}

impl Method {
    pub(crate) fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            other => Method::Other(String::from(other)),
        }
    }

    /// The method token as it appears on the request line.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(token) => token,
        }
    }
}

/// The protocol version of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: served with close semantics (one request per connection).
    Http10,
    /// HTTP/1.1: persistent unless either side says `Connection: close`.
    Http11,
}

/// How the request body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// A body of exactly this many bytes.
    Length(u64),
    /// A chunked body of unknown length.
    Chunked,
}

/// One header field as received: the name keeps its case (compare with
/// [`Request::header`], which ignores case); the value is trimmed of surrounding whitespace and
/// kept as bytes because HTTP allows non-UTF-8 octets in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A request head. The body follows as [`crate::Event::BodyChunk`]s and one
/// [`crate::Event::BodyEnd`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request target exactly as sent (origin-form, absolute-form or `*`).
    pub target: String,
    /// The path of the target, still percent-encoded; `/` for an absolute-form target
    /// without a path and `*` for `OPTIONS *`.
    pub path: String,
    /// The query of the target (after `?`, before any `#`), still percent-encoded.
    pub query: Option<String>,
    pub version: Version,
    /// The header fields in the order received; at most `max_headers` of them.
    pub headers: Vec<Header>,
    pub body: BodyKind,
    /// Whether the client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// Whether the client sent `Expect: 100-continue` (HTTP/1.1 only); the connection answers
    /// it with `100 Continue` when the handler first asks for the body.
    pub expect_continue: bool,
}

impl Request {
    /// The value of the first header field called `name` (compared without case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value.as_slice())
    }

    /// The value of the first header field called `name`, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|value| core::str::from_utf8(value).ok())
    }

    /// The percent-decoded value of the first query parameter called `name` (`+` is a space).
    pub fn query_param(&self, name: &str) -> Result<Option<String>, QueryError> {
        match &self.query {
            Some(query) => query_param(query, name),
            None => Ok(None),
        }
    }
}
