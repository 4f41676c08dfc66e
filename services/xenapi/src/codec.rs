//! What both wire codecs share: the decoded call, decode failures, and decoding limits.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::ApiError;
use crate::value::Value;

/// Deepest struct/array nesting accepted in a request; xapi's own values nest a few levels.
pub const MAX_NESTING_DEPTH: usize = 64;
/// Most XML nodes (elements, text, attributes) accepted in one XML-RPC request. A request
/// body is bounded by the HTTP layer; this bounds the parse tree built from it.
pub const MAX_XML_NODES: u32 = 200_000;
/// Longest method name accepted (xapi's longest are well under 100 bytes).
pub const MAX_METHOD_NAME: usize = 256;

/// One decoded request: `Class.message` and its positional arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodCall {
    pub method: String,
    pub params: Vec<Value>,
}

/// Why a request body could not be decoded. Never a panic: every hostile body maps here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is not UTF-8.
    InvalidUtf8,
    /// The body is not well-formed XML / JSON; the parser's message.
    Syntax(String),
    /// More XML nodes than [`MAX_XML_NODES`].
    TooManyNodes,
    /// Values nested deeper than [`MAX_NESTING_DEPTH`].
    TooDeep,
    /// The document is well-formed but not the expected shape.
    Unexpected {
        expected: &'static str,
        received: String,
    },
    /// An integer that does not fit in 64 bits, or is not a number.
    BadInt(String),
    /// A `<double>` that is not a number.
    BadDouble(String),
    /// A `<boolean>` that is not `0`/`1`.
    BadBool(String),
}

impl DecodeError {
    /// The xapi failure a client sees for an undecodable request.
    pub fn to_api_error(&self) -> ApiError {
        let (expected, received) = match self {
            DecodeError::InvalidUtf8 => ("UTF-8 text", "invalid UTF-8".to_string()),
            DecodeError::Syntax(msg) => ("well-formed document", msg.clone()),
            DecodeError::TooManyNodes => ("smaller document", "too many nodes".to_string()),
            DecodeError::TooDeep => ("shallower value", "nesting too deep".to_string()),
            DecodeError::Unexpected { expected, received } => (*expected, received.clone()),
            DecodeError::BadInt(t) => ("64-bit integer", t.clone()),
            DecodeError::BadDouble(t) => ("double", t.clone()),
            DecodeError::BadBool(t) => ("boolean 0 or 1", t.clone()),
        };
        ApiError::XmlRpcUnmarshalFailure {
            expected: expected.to_string(),
            received: truncate(received, 128),
        }
    }
}

/// Shorten text that echoes client input into an error, on a char boundary.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

pub(crate) fn check_method_name(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() || name.len() > MAX_METHOD_NAME {
        return Err(DecodeError::Unexpected {
            expected: "method name",
            received: truncate(name.to_string(), 64),
        });
    }
    Ok(())
}
