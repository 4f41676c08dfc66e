//! XML-RPC codec (`POST /` and `/RPC2`, `text/xml`).
//!
//! Requests are parsed with roxmltree (DTDs refused, node count capped, nesting capped);
//! responses are written by hand. Every response is a `methodResponse` carrying xapi's
//! envelope struct: `{Status: "Success", Value: v}` or
//! `{Status: "Failure", ErrorDescription: [code, params...]}` — never an XML-RPC `<fault>`,
//! because xapi clients only look at the envelope.
//!
//! Writing follows xapi: strings, refs, enums and 64-bit ints are untyped `<value>text</value>`
//! (XML-RPC's default type is string, and `<i4>` cannot hold 64 bits); bools are `<boolean>`,
//! floats `<double>`, datetimes `<dateTime.iso8601>`.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use roxmltree::{Document, Node, ParsingOptions};

use crate::codec::{
    check_method_name, truncate, DecodeError, MethodCall, MAX_NESTING_DEPTH, MAX_XML_NODES,
};
use crate::error::ApiError;
use crate::value::{parse_decimal_i64, Value};

pub const CONTENT_TYPE: &str = "text/xml";

/// Decode a `methodCall` body.
pub fn decode_call(body: &[u8]) -> Result<MethodCall, DecodeError> {
    let text = core::str::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8)?;
    let doc = parse_document(text)?;
    let root = doc.root_element();
    expect_name(root, "methodCall")?;
    let mut method = None;
    let mut params = Vec::new();
    for child in elements(root) {
        match child.tag_name().name() {
            "methodName" => method = Some(text_of(child)),
            "params" => {
                for param in elements(child) {
                    expect_name(param, "param")?;
                    let value = single_element(param, "value")?;
                    params.push(decode_value(value, 0)?);
                }
            }
            other => return Err(unexpected("methodName or params", other)),
        }
    }
    let method = method.ok_or(DecodeError::Unexpected {
        expected: "methodName",
        received: "nothing".to_string(),
    })?;
    let method = method.trim().to_string();
    check_method_name(&method)?;
    Ok(MethodCall { method, params })
}

/// Decode a `methodResponse` body to its single value (client side; used by tests and tools).
pub fn decode_response(body: &[u8]) -> Result<Value, DecodeError> {
    let text = core::str::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8)?;
    let doc = parse_document(text)?;
    let root = doc.root_element();
    expect_name(root, "methodResponse")?;
    let params = single_element(root, "params")?;
    let param = single_element(params, "param")?;
    let value = single_element(param, "value")?;
    decode_value(value, 0)
}

fn parse_document(text: &str) -> Result<Document<'_>, DecodeError> {
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::NodesLimitReached => DecodeError::TooManyNodes,
        other => DecodeError::Syntax(truncate(other.to_string(), 128)),
    })
}

/// Element children only: whitespace and comments between elements are not content.
fn elements<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(|n| n.is_element())
}

fn expect_name(node: Node<'_, '_>, name: &'static str) -> Result<(), DecodeError> {
    if node.tag_name().name() == name {
        Ok(())
    } else {
        Err(unexpected(name, node.tag_name().name()))
    }
}

fn single_element<'a, 'i>(
    node: Node<'a, 'i>,
    name: &'static str,
) -> Result<Node<'a, 'i>, DecodeError> {
    let mut children = elements(node);
    let first = children.next().ok_or(DecodeError::Unexpected {
        expected: name,
        received: "nothing".to_string(),
    })?;
    expect_name(first, name)?;
    if let Some(extra) = children.next() {
        return Err(unexpected(name, extra.tag_name().name()));
    }
    Ok(first)
}

fn unexpected(expected: &'static str, received: &str) -> DecodeError {
    DecodeError::Unexpected {
        expected,
        received: truncate(received.to_string(), 64),
    }
}

/// All text directly inside an element (entities already resolved by the parser).
fn text_of(node: Node<'_, '_>) -> String {
    let mut out = String::new();
    for child in node.children().filter(|n| n.is_text()) {
        out.push_str(child.text().unwrap_or(""));
    }
    out
}

fn decode_value(node: Node<'_, '_>, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_NESTING_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    let mut typed = elements(node);
    let Some(inner) = typed.next() else {
        // XML-RPC: a value without a type element is a string.
        return Ok(Value::String(text_of(node)));
    };
    if let Some(extra) = typed.next() {
        return Err(unexpected("one typed value", extra.tag_name().name()));
    }
    let text = || text_of(inner);
    match inner.tag_name().name() {
        "string" => Ok(Value::String(text())),
        "i4" | "int" | "i8" => {
            let t = text();
            parse_decimal_i64(&t)
                .map(Value::Int)
                .ok_or_else(|| DecodeError::BadInt(truncate(t, 64)))
        }
        "boolean" => match text().trim() {
            "1" | "true" => Ok(Value::Bool(true)),
            "0" | "false" => Ok(Value::Bool(false)),
            other => Err(DecodeError::BadBool(truncate(other.to_string(), 64))),
        },
        "double" => {
            let t = text();
            t.trim()
                .parse::<f64>()
                .map(Value::Float)
                .map_err(|_| DecodeError::BadDouble(truncate(t, 64)))
        }
        "dateTime.iso8601" => Ok(Value::DateTime(text().trim().to_string())),
        "nil" => Ok(Value::Nil),
        "array" => {
            let data = single_element(inner, "data")?;
            let mut items = Vec::new();
            for item in elements(data) {
                expect_name(item, "value")?;
                items.push(decode_value(item, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        "struct" => {
            let mut map = BTreeMap::new();
            for member in elements(inner) {
                expect_name(member, "member")?;
                let mut name = None;
                let mut value = None;
                for part in elements(member) {
                    match part.tag_name().name() {
                        "name" => name = Some(text_of(part)),
                        "value" => value = Some(decode_value(part, depth + 1)?),
                        other => return Err(unexpected("name or value", other)),
                    }
                }
                match (name, value) {
                    (Some(n), Some(v)) => {
                        map.insert(n, v);
                    }
                    _ => return Err(unexpected("member with name and value", "partial member")),
                }
            }
            Ok(Value::Struct(map))
        }
        other => Err(unexpected("XML-RPC type", other)),
    }
}

/// Encode a call outcome as xapi's `methodResponse` with the Status envelope.
pub fn encode_response(result: &Result<Value, ApiError>) -> Vec<u8> {
    let mut envelope = BTreeMap::new();
    match result {
        Ok(value) => {
            envelope.insert("Status".to_string(), Value::str("Success"));
            envelope.insert("Value".to_string(), value.clone());
        }
        Err(error) => {
            envelope.insert("Status".to_string(), Value::str("Failure"));
            envelope.insert(
                "ErrorDescription".to_string(),
                Value::Array(error.description().into_iter().map(Value::String).collect()),
            );
        }
    }
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodResponse><params><param>");
    write_value(&mut out, &Value::Struct(envelope));
    out.push_str("</param></params></methodResponse>\n");
    out.into_bytes()
}

/// Encode a `methodCall` the way a client would (ints as `<int>`/`<i8>`); for tests and tools.
pub fn encode_call(method: &str, params: &[Value]) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodCall><methodName>");
    escape_into(&mut out, method);
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        write_value_with(&mut out, p, IntStyle::Typed);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>\n");
    out
}

/// A value as a standalone `<value>...</value>` string: the form of a task's `result`, which
/// xapi keeps as XML-RPC text even when the client talks JSON-RPC.
pub fn value_to_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

#[derive(Clone, Copy)]
enum IntStyle {
    /// Server side: 64-bit ints as decimal strings, as xapi sends them.
    AsString,
    /// Client side: `<int>` when it fits 32 bits, `<i8>` otherwise.
    Typed,
}

pub fn write_value(out: &mut String, value: &Value) {
    write_value_with(out, value, IntStyle::AsString)
}

fn write_value_with(out: &mut String, value: &Value, ints: IntStyle) {
    out.push_str("<value>");
    match value {
        Value::Nil => out.push_str("<nil/>"),
        Value::Bool(b) => out.push_str(if *b {
            "<boolean>1</boolean>"
        } else {
            "<boolean>0</boolean>"
        }),
        Value::Int(i) => match ints {
            IntStyle::AsString => {
                let _ = write!(out, "{i}");
            }
            IntStyle::Typed if i32::try_from(*i).is_ok() => {
                let _ = write!(out, "<int>{i}</int>");
            }
            IntStyle::Typed => {
                let _ = write!(out, "<i8>{i}</i8>");
            }
        },
        Value::Float(f) => {
            let _ = write!(out, "<double>{}</double>", format_double(*f));
        }
        Value::String(s) => escape_into(out, s),
        Value::DateTime(d) => {
            out.push_str("<dateTime.iso8601>");
            escape_into(out, d);
            out.push_str("</dateTime.iso8601>");
        }
        Value::Array(items) => {
            out.push_str("<array><data>");
            for item in items {
                write_value_with(out, item, ints);
            }
            out.push_str("</data></array>");
        }
        Value::Struct(map) => {
            out.push_str("<struct>");
            for (k, v) in map {
                out.push_str("<member><name>");
                escape_into(out, k);
                out.push_str("</name>");
                write_value_with(out, v, ints);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// XML-RPC doubles have no exponent and no NaN/infinity: `Display` for f64 never writes an
/// exponent, and non-finite values become 0 so the document stays parseable by every client.
fn format_double(f: f64) -> String {
    if f.is_finite() {
        format!("{f}")
    } else {
        "0.0".to_string()
    }
}

/// Escape text for element content. Characters XML 1.0 forbids (most C0 controls) become
/// U+FFFD, since no escape can carry them; `\r` is written as a character reference so XML
/// line-ending normalisation does not turn it into `\n`.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}
