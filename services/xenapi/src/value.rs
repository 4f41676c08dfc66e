//! The XenAPI value model shared by both wire codecs and the semantics.
//!
//! XenAPI's types (string, bool, int, float, datetime, enum, ref, set, map, record) map onto
//! a small set of wire shapes: refs and enums travel as strings, sets as arrays, maps and
//! records as structs. `Nil` exists because XML-RPC `<nil/>` and JSON `null` can arrive; xapi
//! itself never sends it (a void result is the empty string).

use alloc::borrow::ToOwned;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// One XenAPI value on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    /// `YYYYMMDDTHH:MM:SSZ` text; kept as text because clients only ever echo or display it.
    DateTime(String),
    Array(Vec<Value>),
    Struct(BTreeMap<String, Value>),
}

/// 2^63 as f64: exactly representable, so range checks against it are exact.
const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;

/// Text XenAPI uses for "no object".
pub const NULL_REF: &str = "OpaqueRef:NULL";

impl Value {
    pub fn str(text: &str) -> Value {
        Value::String(text.to_owned())
    }

    /// The empty string: what xapi returns for a message without a result.
    pub fn void() -> Value {
        Value::String(String::new())
    }

    pub fn empty_struct() -> Value {
        Value::Struct(BTreeMap::new())
    }

    /// A string-to-string map (`other_config`, `software_version`, ...).
    pub fn string_map<'a, I>(pairs: I) -> Value
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        Value::Struct(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::str(v)))
                .collect(),
        )
    }

    pub fn string_array<'a, I>(items: I) -> Value
    where
        I: IntoIterator<Item = &'a str>,
    {
        Value::Array(items.into_iter().map(Value::str).collect())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_struct(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Struct(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An int as XenAPI clients send it: a native int, (XML-RPC) a decimal string because
    /// 64-bit ints do not fit `<i4>`, or (JSON) an integral number written as a float.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::String(s) => parse_decimal_i64(s),
            // The bounds are exact powers of two, so the range check is exact in f64.
            Value::Float(f) if *f >= -(I64_BOUND) && *f < I64_BOUND && (*f as i64) as f64 == *f => {
                Some(*f as i64)
            }
            _ => None,
        }
    }

    /// A float; ints are accepted because JSON clients write `60` for `60.0`, and strings
    /// because some XML-RPC clients stringify every number.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// Strict decimal parse: optional sign, 1..=19 digits, in range; no whitespace tricks beyond
/// trimming, no `+`-only or empty strings.
pub fn parse_decimal_i64(text: &str) -> Option<i64> {
    let text = text.trim();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_accept_decimal_strings_and_reject_junk() {
        assert_eq!(Value::str("123").as_int(), Some(123));
        assert_eq!(Value::str("-9223372036854775808").as_int(), Some(i64::MIN));
        assert_eq!(Value::str("9223372036854775808").as_int(), None);
        assert_eq!(Value::str("12a").as_int(), None);
        assert_eq!(Value::str("").as_int(), None);
        assert_eq!(Value::str("-").as_int(), None);
        assert_eq!(Value::Bool(true).as_int(), None);
        assert_eq!(Value::Float(3.0).as_int(), Some(3));
        assert_eq!(Value::Float(3.5).as_int(), None);
        assert_eq!(Value::Float(1e30).as_int(), None);
        assert_eq!(Value::Float(f64::NAN).as_int(), None);
    }

    #[test]
    fn floats_accept_ints_and_strings() {
        assert_eq!(Value::Int(60).as_float(), Some(60.0));
        assert_eq!(Value::str("60.1").as_float(), Some(60.1));
        assert_eq!(Value::Nil.as_float(), None);
    }
}
