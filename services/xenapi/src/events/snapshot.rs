//! An event's snapshot as the history keeps it: the record encoded into one byte string.
//!
//! A record as a [`Value`] tree costs a heap block per field name, per string and per tree
//! node (a VM record: ~10 KB); the event history holds up to a thousand of them, one per
//! change, and creating and starting a guest makes dozens. Encoded, the same record is a
//! single block of about a quarter of that; it is decoded back to the same [`Value`] only
//! when a client is sent the event.
//!
//! The encoding (private to this process, never stored or sent): one tag byte per value —
//! nil, false, true, int (zigzag LEB128), float (8 bytes LE), string and dateTime (LEB128
//! length, UTF-8 bytes), array (LEB128 count, items), struct (LEB128 count, then per field
//! its key and value). A key that is one of the class's declared fields is its index
//! (LEB128 of 2 × index + 1), any other its text (LEB128 of 2 × length, then the bytes):
//! a record's field names, most of its bytes, are never copied.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::schema::FieldDecl;
use crate::value::Value;

const NIL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const FLOAT: u8 = 4;
const STRING: u8 = 5;
const DATE_TIME: u8 = 6;
const ARRAY: u8 = 7;
const STRUCT: u8 = 8;

/// A [`Value`] kept encoded, with the field names of its class.
#[derive(Clone, Debug)]
pub struct Snapshot {
    bytes: Box<[u8]>,
    fields: &'static [FieldDecl],
}

/// Equal when they stand for the same value (whatever dictionary each was made with).
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.to_value() == other.to_value()
    }
}

impl Snapshot {
    /// `value` encoded; keys that are `fields`' names (the record's class) are kept as
    /// their index.
    pub fn new(value: &Value, fields: &'static [FieldDecl]) -> Snapshot {
        let mut out = Vec::new();
        encode(value, fields, &mut out);
        Snapshot {
            bytes: out.into_boxed_slice(),
            fields,
        }
    }

    /// The value it was made from.
    pub fn to_value(&self) -> Value {
        let mut input = &self.bytes[..];
        // Only `Snapshot::new` makes the bytes, so they always decode; were they not to,
        // the event would carry no snapshot rather than take the service down.
        decode(&mut input, self.fields).unwrap_or(Value::Nil)
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn put_len(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_text(text: &str, out: &mut Vec<u8>) {
    put_len(text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

fn encode(value: &Value, fields: &[FieldDecl], out: &mut Vec<u8>) {
    match value {
        Value::Nil => out.push(NIL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Int(i) => {
            out.push(INT);
            put_len(((i << 1) ^ (i >> 63)) as u64, out);
        }
        Value::Float(f) => {
            out.push(FLOAT);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => {
            out.push(STRING);
            put_text(s, out);
        }
        Value::DateTime(s) => {
            out.push(DATE_TIME);
            put_text(s, out);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            put_len(items.len() as u64, out);
            for item in items {
                encode(item, &[], out);
            }
        }
        Value::Struct(map) => {
            // The record's declared fields by index, in declaration order (one lookup each
            // in the map); keys the class does not declare, and every key of a nested map
            // (`fields` applies to the record itself), as text.
            let mut body = Vec::new();
            let mut count = 0u64;
            let mut declared = 0;
            for (index, decl) in fields.iter().enumerate() {
                if let Some(field) = map.get(decl.name) {
                    put_len(2 * index as u64 + 1, &mut body);
                    encode(field, &[], &mut body);
                    count += 1;
                    declared += 1;
                }
            }
            if declared < map.len() {
                for (key, field) in map {
                    if !fields.iter().any(|f| f.name == key) {
                        put_len(2 * key.len() as u64, &mut body);
                        body.extend_from_slice(key.as_bytes());
                        encode(field, &[], &mut body);
                        count += 1;
                    }
                }
            }
            out.push(STRUCT);
            put_len(count, out);
            out.extend_from_slice(&body);
        }
    }
}

fn take_byte(input: &mut &[u8]) -> Option<u8> {
    let (&first, rest) = input.split_first()?;
    *input = rest;
    Some(first)
}

fn take_len(input: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take_byte(input)?;
        n |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(n);
        }
    }
    None
}

fn take_bytes(input: &mut &[u8], len: u64) -> Option<String> {
    let len = usize::try_from(len).ok()?;
    let (text, rest) = (input.get(..len)?, input.get(len..)?);
    *input = rest;
    String::from_utf8(text.to_vec()).ok()
}

fn take_text(input: &mut &[u8]) -> Option<String> {
    let len = take_len(input)?;
    take_bytes(input, len)
}

fn take_key(input: &mut &[u8], fields: &[FieldDecl]) -> Option<String> {
    let key = take_len(input)?;
    if key % 2 == 1 {
        let index = usize::try_from(key / 2).ok()?;
        return fields.get(index).map(|f| String::from(f.name));
    }
    take_bytes(input, key / 2)
}

fn decode(input: &mut &[u8], fields: &[FieldDecl]) -> Option<Value> {
    Some(match take_byte(input)? {
        NIL => Value::Nil,
        FALSE => Value::Bool(false),
        TRUE => Value::Bool(true),
        INT => {
            let z = take_len(input)?;
            Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
        }
        FLOAT => {
            let (bytes, rest) = (input.get(..8)?, input.get(8..)?);
            *input = rest;
            Value::Float(f64::from_le_bytes(bytes.try_into().ok()?))
        }
        STRING => Value::String(take_text(input)?),
        DATE_TIME => Value::DateTime(take_text(input)?),
        ARRAY => {
            let count = take_len(input)?;
            // Each item takes at least a byte: a count beyond the input is not believed.
            let mut items = Vec::with_capacity(usize::try_from(count).ok()?.min(input.len()));
            for _ in 0..count {
                items.push(decode(input, &[])?);
            }
            Value::Array(items)
        }
        STRUCT => {
            let count = take_len(input)?;
            let mut map = BTreeMap::new();
            for _ in 0..count {
                let key = take_key(input, fields)?;
                map.insert(key, decode(input, &[])?);
            }
            Value::Struct(map)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ro, FieldType};
    use alloc::string::ToString;
    use alloc::vec;

    fn record() -> Value {
        let mut inner = BTreeMap::new();
        inner.insert("0".to_string(), Value::Float(0.25));
        inner.insert("empty".to_string(), Value::Struct(BTreeMap::new()));
        let mut fields = BTreeMap::new();
        fields.insert(
            "uuid".to_string(),
            Value::str("d3f1c8a0-0000-4000-8000-000000000001"),
        );
        fields.insert("power_state".to_string(), Value::str("Running"));
        fields.insert("domid".to_string(), Value::Int(7));
        fields.insert("memory_static_max".to_string(), Value::Int(117_440_512));
        fields.insert("negative".to_string(), Value::Int(i64::MIN));
        fields.insert("max".to_string(), Value::Int(i64::MAX));
        fields.insert("is_a_template".to_string(), Value::Bool(false));
        fields.insert("ha".to_string(), Value::Bool(true));
        fields.insert("nothing".to_string(), Value::Nil);
        fields.insert("nan".to_string(), Value::Float(-1.5e300));
        fields.insert(
            "start_time".to_string(),
            Value::DateTime("20261203T17:00:00Z".into()),
        );
        fields.insert(
            "VBDs".to_string(),
            Value::Array(vec![Value::str("OpaqueRef:a"), Value::str("é ünïcode")]),
        );
        fields.insert("VCPUs_utilisation".to_string(), Value::Struct(inner));
        fields.insert("long".to_string(), Value::String("x".repeat(300)));
        Value::Struct(fields)
    }

    static FIELDS: [FieldDecl; 3] = [
        ro("uuid", FieldType::String),
        ro("power_state", FieldType::String),
        ro("domid", FieldType::Int),
    ];

    #[test]
    fn every_kind_of_value_comes_back_as_it_was() {
        for value in [record(), Value::Nil, Value::Array(vec![]), Value::Int(-1)] {
            assert_eq!(Snapshot::new(&value, &FIELDS).to_value(), value);
            assert_eq!(Snapshot::new(&value, &[]).to_value(), value);
        }
    }

    /// The encoder writes a declared field once per declaration: names must be unique.
    #[test]
    fn every_class_declares_each_field_name_once() {
        for class in crate::classes::ALL {
            for (i, f) in class.fields.iter().enumerate() {
                let again = class.fields[..i].iter().any(|g| g.name == f.name);
                assert!(!again, "{}.{} declared twice", class.name, f.name);
            }
        }
    }

    #[test]
    fn declared_field_names_are_kept_as_their_index() {
        let with = Snapshot::new(&record(), &FIELDS);
        let without = Snapshot::new(&record(), &[]);
        let names: usize = FIELDS.iter().map(|f| f.name.len()).sum();
        assert_eq!(with.len() + names, without.len());
    }

    #[test]
    fn truncated_or_unknown_bytes_decode_to_nothing() {
        let snapshot = Snapshot::new(&record(), &FIELDS);
        let bytes = &snapshot.bytes;
        for cut in 0..bytes.len() {
            assert_eq!(decode(&mut &bytes[..cut], &FIELDS), None, "cut at {cut}");
        }
        assert_eq!(decode(&mut &[9u8][..], &FIELDS), None);
        // A field index the class does not have.
        assert_eq!(decode(&mut &[STRUCT, 1, 7, NIL][..], &FIELDS), None);
        assert_eq!(
            decode(
                &mut &[INT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
                &FIELDS
            ),
            None
        );
    }
}
