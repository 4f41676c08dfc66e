//! JSON-RPC codec (`POST /jsonrpc`, `application/json`).
//!
//! xapi speaks two dialects on the same endpoint and answers in the one it was asked in:
//! - v1 (no `jsonrpc` member): `{"result", "error", "id"}` with `error` the list
//!   `[code, params...]` (or `null`);
//! - v2 (`"jsonrpc": "2.0"`, what Xen Orchestra sends): `{"jsonrpc", "result" | "error", "id"}`
//!   with `error` = `{"code": 1, "message": CODE, "data": [params...]}`.
//!
//! Results are bare values: no `Status` envelope, unlike XML-RPC. A body that is not a
//! JSON-RPC request at all gets the standard JSON-RPC 2.0 parse/invalid-request error object.

use alloc::collections::BTreeMap;
use alloc::string::ToString;
use alloc::vec::Vec;

use serde_json::{json, Map, Number, Value as Json};

use crate::codec::{check_method_name, truncate, DecodeError, MethodCall, MAX_NESTING_DEPTH};
use crate::error::ApiError;
use crate::value::Value;

pub const CONTENT_TYPE: &str = "application/json";

/// Which dialect a request used, and so which the reply must use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonRpcVersion {
    V1,
    V2,
}

/// What a reply needs from its request: dialect and the `id` to echo.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonReplyTo {
    pub version: JsonRpcVersion,
    pub id: Json,
}

/// A request body that could not be decoded, with as much of the reply context as was found.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonDecodeFailure {
    pub error: DecodeError,
    pub reply_to: JsonReplyTo,
}

/// Decode a JSON-RPC request body.
pub fn decode_call(body: &[u8]) -> Result<(MethodCall, JsonReplyTo), JsonDecodeFailure> {
    let mut reply_to = JsonReplyTo {
        version: JsonRpcVersion::V2,
        id: Json::Null,
    };
    let fail = |error, reply_to: &JsonReplyTo| JsonDecodeFailure {
        error,
        reply_to: reply_to.clone(),
    };
    let text = core::str::from_utf8(body).map_err(|_| fail(DecodeError::InvalidUtf8, &reply_to))?;
    // serde_json caps its own recursion (128), so hostile nesting is an error, not a crash.
    let doc: Json = serde_json::from_str(text)
        .map_err(|e| fail(DecodeError::Syntax(truncate(e.to_string(), 128)), &reply_to))?;
    let Json::Object(mut request) = doc else {
        return Err(fail(
            DecodeError::Unexpected {
                expected: "request object",
                received: kind_of(&doc).to_string(),
            },
            &reply_to,
        ));
    };
    reply_to.id = request.remove("id").unwrap_or(Json::Null);
    reply_to.version = match request.get("jsonrpc") {
        Some(Json::String(v)) if v == "2.0" => JsonRpcVersion::V2,
        _ => JsonRpcVersion::V1,
    };
    let method = match request.get("method") {
        Some(Json::String(m)) => m.clone(),
        other => {
            return Err(fail(
                DecodeError::Unexpected {
                    expected: "method string",
                    received: other.map_or("nothing", kind_of).to_string(),
                },
                &reply_to,
            ))
        }
    };
    check_method_name(&method).map_err(|e| fail(e, &reply_to))?;
    let params = match request.get("params") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(from_json(item, 0).map_err(|e| fail(e, &reply_to))?);
            }
            out
        }
        Some(other) => {
            return Err(fail(
                DecodeError::Unexpected {
                    expected: "params array",
                    received: kind_of(other).to_string(),
                },
                &reply_to,
            ))
        }
    };
    Ok((MethodCall { method, params }, reply_to))
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn from_json(v: &Json, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_NESTING_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    Ok(match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if n.is_u64() {
                return Err(DecodeError::BadInt(n.to_string()));
            } else {
                // Without arbitrary precision, serde_json yields every other number as f64.
                Value::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| from_json(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => {
            let mut out = BTreeMap::new();
            for (k, v) in map {
                out.insert(k.clone(), from_json(v, depth + 1)?);
            }
            Value::Struct(out)
        }
    })
}

/// A XenAPI value as JSON: datetimes become their text, non-finite floats `null`.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::Number((*i).into()),
        Value::Float(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) | Value::DateTime(s) => Json::String(s.clone()),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Struct(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                out.insert(k.clone(), to_json(v));
            }
            Json::Object(out)
        }
    }
}

/// Encode a call outcome in the request's dialect.
pub fn encode_response(reply_to: &JsonReplyTo, result: &Result<Value, ApiError>) -> Vec<u8> {
    let id = reply_to.id.clone();
    let doc = match (reply_to.version, result) {
        (JsonRpcVersion::V1, Ok(v)) => json!({"result": to_json(v), "error": Json::Null, "id": id}),
        (JsonRpcVersion::V1, Err(e)) => {
            json!({"result": Json::Null, "error": e.description(), "id": id})
        }
        (JsonRpcVersion::V2, Ok(v)) => json!({"jsonrpc": "2.0", "result": to_json(v), "id": id}),
        (JsonRpcVersion::V2, Err(e)) => json!({
            "jsonrpc": "2.0",
            "error": {"code": 1, "message": e.code(), "data": e.params()},
            "id": id,
        }),
    };
    serialise(&doc)
}

/// Encode the reply to an undecodable body: JSON-RPC 2.0's own error codes (-32700 for a
/// body that is not JSON, -32600 for JSON that is not a request), with the detail in `data`.
pub fn encode_decode_failure(failure: &JsonDecodeFailure) -> Vec<u8> {
    let (code, message) = match failure.error {
        DecodeError::InvalidUtf8 | DecodeError::Syntax(_) => (-32700, "Parse error"),
        _ => (-32600, "Invalid Request"),
    };
    let api = failure.error.to_api_error();
    let doc = json!({
        "jsonrpc": "2.0",
        "error": {"code": code, "message": message, "data": api.description()},
        "id": failure.reply_to.id.clone(),
    });
    serialise(&doc)
}

fn serialise(doc: &Json) -> Vec<u8> {
    // Serialising a serde_json::Value into a Vec cannot fail (string keys, finite numbers).
    serde_json::to_vec(doc).unwrap_or_else(|_| b"{}".to_vec())
}

/// Encode a request the way Xen Orchestra does (v2) or a v1 client does; for tests and tools.
pub fn encode_call(version: JsonRpcVersion, id: Json, method: &str, params: &[Value]) -> Vec<u8> {
    let params: Vec<Json> = params.iter().map(to_json).collect();
    let doc = match version {
        JsonRpcVersion::V1 => json!({"method": method, "params": params, "id": id}),
        JsonRpcVersion::V2 => {
            json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id})
        }
    };
    serialise(&doc)
}
