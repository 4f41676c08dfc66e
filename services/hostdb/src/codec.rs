//! The payload encoding: a compact, self-describing, canonical binary form of a [`Database`].
//!
//! ```text
//! database := count { string(class) count { string(ref) count { string(field) value } } }
//! value    := 0x00                         Nil
//!           | 0x01 byte(0|1)               Bool
//!           | 0x02 zigzag-varint           Int
//!           | 0x03 u64 LE (IEEE 754 bits)  Float
//!           | 0x04 string                  String
//!           | 0x05 string                  DateTime
//!           | 0x06 string                  Ref
//!           | 0x07 count { value }         Set
//!           | 0x08 count { string value }  Map
//! count    := varint (LEB128, at most 10 bytes, shortest form)
//! string   := count bytes (UTF-8)
//! ```
//!
//! Keys (class names, refs, field names, map keys) appear in strictly ascending byte order,
//! so every database has exactly one encoding and duplicate keys cannot be expressed.
//!
//! Decoding is total: any input yields a database or a [`DecodeError`], never a panic. Memory
//! is bounded by the input: a length or count is checked against the bytes that remain before
//! anything is allocated, nesting is limited to [`MAX_DEPTH`] and the number of items to
//! [`MAX_ITEMS`]. The encoder enforces the same limits, so whatever it writes decodes.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::value::{Database, FieldValue, Record};

/// Deepest nesting of sets and maps inside one field value (a field's top-level value is
/// depth 1). XenAPI fields nest two or three levels at most.
pub const MAX_DEPTH: usize = 32;
/// Most items in one database, counting every class, object, field and value (each set
/// element and map entry is a value).
pub const MAX_ITEMS: usize = 1 << 20;

const TAG_NIL: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_FLOAT: u8 = 3;
const TAG_STRING: u8 = 4;
const TAG_DATETIME: u8 = 5;
const TAG_REF: u8 = 6;
const TAG_SET: u8 = 7;
const TAG_MAP: u8 = 8;

/// Why a database could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// A value nests sets and maps deeper than [`MAX_DEPTH`].
    TooDeep,
    /// More than [`MAX_ITEMS`] items.
    TooManyItems,
    /// The encoding would exceed the byte limit given (the slot's capacity).
    TooLarge { limit: usize },
    /// The output buffer could not grow.
    OutOfMemory,
}

/// Why a payload does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends inside an item, or a length or count exceeds what remains.
    Truncated,
    /// A varint longer than 10 bytes, above `u64::MAX`, or not in its shortest form.
    Varint,
    /// A value tag this format version does not define.
    UnknownTag(u8),
    /// A Bool value byte other than 0 or 1.
    InvalidBool(u8),
    /// A string that is not UTF-8.
    Utf8,
    /// Keys not in strictly ascending order (or a duplicate key).
    KeyOrder,
    /// Nesting beyond [`MAX_DEPTH`].
    TooDeep,
    /// More than [`MAX_ITEMS`] items.
    TooManyItems,
    /// Bytes left after the database.
    TrailingBytes,
    /// A buffer could not be allocated.
    OutOfMemory,
}

/// Appends the encoding of `database` to `out`, failing with `TooLarge` as soon as `out`
/// would grow beyond `limit` bytes in total.
pub fn encode_into(
    database: &Database,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), EncodeError> {
    let mut writer = Writer {
        out,
        limit,
        items: 0,
    };
    writer.count(database.classes.len())?;
    for (class, objects) in &database.classes {
        writer.item()?;
        writer.string(class)?;
        writer.count(objects.len())?;
        for (reference, record) in objects {
            writer.item()?;
            writer.string(reference)?;
            writer.count(record.len())?;
            for (field, value) in record {
                writer.item()?;
                writer.string(field)?;
                writer.value(value, 1)?;
            }
        }
    }
    Ok(())
}

/// Encodes `database` into a new buffer (no size limit beyond memory).
pub fn encode(database: &Database) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(database, &mut out, usize::MAX)?;
    Ok(out)
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
    items: usize,
}

impl Writer<'_> {
    fn item(&mut self) -> Result<(), EncodeError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(EncodeError::TooManyItems);
        }
        Ok(())
    }

    fn bytes(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let limit = self.limit;
        if self.out.len().saturating_add(bytes.len()) > limit {
            return Err(EncodeError::TooLarge { limit });
        }
        self.out
            .try_reserve(bytes.len())
            .map_err(|_| EncodeError::OutOfMemory)?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn varint(&mut self, mut value: u64) -> Result<(), EncodeError> {
        let mut buf = [0u8; 10];
        let mut len = 0;
        loop {
            let low = (value & 0x7f) as u8;
            value >>= 7;
            if let Some(byte) = buf.get_mut(len) {
                *byte = if value == 0 { low } else { low | 0x80 };
            }
            len += 1;
            if value == 0 {
                break;
            }
        }
        self.bytes(buf.get(..len).unwrap_or_default())
    }

    fn count(&mut self, count: usize) -> Result<(), EncodeError> {
        self.varint(count as u64)
    }

    fn string(&mut self, text: &str) -> Result<(), EncodeError> {
        self.count(text.len())?;
        self.bytes(text.as_bytes())
    }

    fn value(&mut self, value: &FieldValue, depth: usize) -> Result<(), EncodeError> {
        if depth > MAX_DEPTH {
            return Err(EncodeError::TooDeep);
        }
        self.item()?;
        match value {
            FieldValue::Nil => self.bytes(&[TAG_NIL]),
            FieldValue::Bool(b) => self.bytes(&[TAG_BOOL, u8::from(*b)]),
            FieldValue::Int(i) => {
                self.bytes(&[TAG_INT])?;
                self.varint(zigzag(*i))
            }
            FieldValue::Float(f) => {
                self.bytes(&[TAG_FLOAT])?;
                self.bytes(&f.to_bits().to_le_bytes())
            }
            FieldValue::String(s) => {
                self.bytes(&[TAG_STRING])?;
                self.string(s)
            }
            FieldValue::DateTime(s) => {
                self.bytes(&[TAG_DATETIME])?;
                self.string(s)
            }
            FieldValue::Ref(s) => {
                self.bytes(&[TAG_REF])?;
                self.string(s)
            }
            FieldValue::Set(items) => {
                self.bytes(&[TAG_SET])?;
                self.count(items.len())?;
                items
                    .iter()
                    .try_for_each(|item| self.value(item, depth + 1))
            }
            FieldValue::Map(entries) => {
                self.bytes(&[TAG_MAP])?;
                self.count(entries.len())?;
                for (key, item) in entries {
                    self.string(key)?;
                    self.value(item, depth + 1)?;
                }
                Ok(())
            }
        }
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Decodes a whole payload.
pub fn decode(input: &[u8]) -> Result<Database, DecodeError> {
    let mut reader = Reader {
        input,
        position: 0,
        items: 0,
    };
    let mut database = Database::new();
    let classes = reader.count()?;
    for _ in 0..classes {
        reader.item()?;
        let class = reader.key(&database.classes)?;
        let mut objects = BTreeMap::new();
        let count = reader.count()?;
        for _ in 0..count {
            reader.item()?;
            let reference = reader.key(&objects)?;
            let record = reader.record()?;
            objects.insert(reference, record);
        }
        database.classes.insert(class, objects);
    }
    if reader.position != input.len() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(database)
}

struct Reader<'a> {
    input: &'a [u8],
    position: usize,
    items: usize,
}

impl Reader<'_> {
    fn item(&mut self) -> Result<(), DecodeError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(DecodeError::TooManyItems);
        }
        Ok(())
    }

    fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.position)
    }

    fn take(&mut self, len: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .position
            .checked_add(len)
            .ok_or(DecodeError::Truncated)?;
        let bytes = self
            .input
            .get(self.position..end)
            .ok_or(DecodeError::Truncated)?;
        self.position = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let byte = *self
            .input
            .get(self.position)
            .ok_or(DecodeError::Truncated)?;
        self.position += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for index in 0..10u32 {
            let byte = self.byte()?;
            let low = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if index == 9 && byte > 1 {
                return Err(DecodeError::Varint);
            }
            value |= low << (7 * index);
            if byte & 0x80 == 0 {
                // Shortest form: a final zero byte after a continuation is padding.
                if index > 0 && byte == 0 {
                    return Err(DecodeError::Varint);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Varint)
    }

    /// A length or element count; every element takes at least one byte, so a count above
    /// the bytes that remain is impossible and is refused before any allocation.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let count = self.varint()?;
        match usize::try_from(count) {
            Ok(count) if count <= self.remaining() => Ok(count),
            _ => Err(DecodeError::Truncated),
        }
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.count()?;
        let bytes = self.take(len)?;
        let text = core::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8)?;
        let mut owned = String::new();
        owned
            .try_reserve_exact(text.len())
            .map_err(|_| DecodeError::OutOfMemory)?;
        owned.push_str(text);
        Ok(owned)
    }

    /// A key of `map` that must sort strictly after every key already in it.
    fn key<V>(&mut self, map: &BTreeMap<String, V>) -> Result<String, DecodeError> {
        let key = self.string()?;
        match map.last_key_value() {
            Some((last, _)) if *last >= key => Err(DecodeError::KeyOrder),
            _ => Ok(key),
        }
    }

    fn record(&mut self) -> Result<Record, DecodeError> {
        let mut record = Record::new();
        let count = self.count()?;
        for _ in 0..count {
            self.item()?;
            let field = self.key(&record)?;
            let value = self.value(1)?;
            record.insert(field, value);
        }
        Ok(record)
    }

    fn value(&mut self, depth: usize) -> Result<FieldValue, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        self.item()?;
        let tag = self.byte()?;
        Ok(match tag {
            TAG_NIL => FieldValue::Nil,
            TAG_BOOL => match self.byte()? {
                0 => FieldValue::Bool(false),
                1 => FieldValue::Bool(true),
                other => return Err(DecodeError::InvalidBool(other)),
            },
            TAG_INT => FieldValue::Int(unzigzag(self.varint()?)),
            TAG_FLOAT => {
                let mut bits = [0u8; 8];
                bits.copy_from_slice(self.take(8)?);
                FieldValue::Float(f64::from_bits(u64::from_le_bytes(bits)))
            }
            TAG_STRING => FieldValue::String(self.string()?),
            TAG_DATETIME => FieldValue::DateTime(self.string()?),
            TAG_REF => FieldValue::Ref(self.string()?),
            TAG_SET => {
                let count = self.count()?;
                let mut items = Vec::new();
                for _ in 0..count {
                    let item = self.value(depth + 1)?;
                    items.try_reserve(1).map_err(|_| DecodeError::OutOfMemory)?;
                    items.push(item);
                }
                FieldValue::Set(items)
            }
            TAG_MAP => {
                let count = self.count()?;
                let mut entries = BTreeMap::new();
                for _ in 0..count {
                    let key = self.key(&entries)?;
                    let item = self.value(depth + 1)?;
                    entries.insert(key, item);
                }
                FieldValue::Map(entries)
            }
            other => return Err(DecodeError::UnknownTag(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, FieldValue)]) -> FieldValue {
        FieldValue::Map(
            pairs
                .iter()
                .map(|(k, v)| (String::from(*k), v.clone()))
                .collect(),
        )
    }

    /// A database using every value kind, edge values, nesting and unicode.
    fn sample() -> Database {
        let mut database = Database::new();
        let mut vm = Record::new();
        vm.insert("nil".into(), FieldValue::Nil);
        vm.insert("yes".into(), FieldValue::Bool(true));
        vm.insert("no".into(), FieldValue::Bool(false));
        vm.insert("zero".into(), FieldValue::Int(0));
        vm.insert("min".into(), FieldValue::Int(i64::MIN));
        vm.insert("max".into(), FieldValue::Int(i64::MAX));
        vm.insert("minus_one".into(), FieldValue::Int(-1));
        vm.insert("pi".into(), FieldValue::Float(core::f64::consts::PI));
        vm.insert("neg_zero".into(), FieldValue::Float(-0.0));
        vm.insert("inf".into(), FieldValue::Float(f64::NEG_INFINITY));
        vm.insert("name_label".into(), FieldValue::String("débian ☃".into()));
        vm.insert("empty".into(), FieldValue::String(String::new()));
        vm.insert(
            "created".into(),
            FieldValue::DateTime("20261203T08:40:00Z".into()),
        );
        vm.insert(
            "resident_on".into(),
            FieldValue::Ref("OpaqueRef:1234".into()),
        );
        vm.insert(
            "VBDs".into(),
            FieldValue::Set(vec![
                FieldValue::Ref("OpaqueRef:b".into()),
                FieldValue::Ref("OpaqueRef:a".into()),
            ]),
        );
        vm.insert(
            "other_config".into(),
            map(&[
                ("auto_poweron", FieldValue::String("true".into())),
                ("", FieldValue::String("empty key".into())),
                (
                    "nested",
                    map(&[("deeper", FieldValue::Set(vec![map(&[]), FieldValue::Nil]))]),
                ),
            ]),
        );
        database.insert("VM", "OpaqueRef:vm1", vm);
        database.insert("VM", "OpaqueRef:vm0", Record::new());
        database.insert("network", "OpaqueRef:n", Record::new());
        database
            .classes
            .insert("empty_class".into(), BTreeMap::new());
        database
    }

    #[test]
    fn every_value_kind_round_trips() {
        let database = sample();
        let bytes = encode(&database).unwrap();
        assert_eq!(decode(&bytes), Ok(database));
        assert_eq!(
            decode(&encode(&Database::new()).unwrap()),
            Ok(Database::new())
        );
    }

    #[test]
    fn nan_keeps_its_bits() {
        let mut database = Database::new();
        let nan = f64::from_bits(0x7ff8_0000_dead_beef);
        database.insert(
            "c",
            "r",
            [(String::from("f"), FieldValue::Float(nan))].into(),
        );
        let decoded = decode(&encode(&database).unwrap()).unwrap();
        match decoded.get("c", "r").and_then(|r| r.get("f")) {
            Some(FieldValue::Float(f)) => assert_eq!(f.to_bits(), nan.to_bits()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_encoding_is_compact_and_exact() {
        let mut database = Database::new();
        database.insert(
            "VM",
            "r",
            [
                (String::from("b"), FieldValue::Bool(true)),
                (String::from("i"), FieldValue::Int(-2)),
            ]
            .into(),
        );
        assert_eq!(
            encode(&database).unwrap(),
            [1, 2, b'V', b'M', 1, 1, b'r', 2, 1, b'b', TAG_BOOL, 1, 1, b'i', TAG_INT, 3]
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample()).unwrap();
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "prefix of {len} decoded");
        }
    }

    /// Whatever decodes re-encodes to exactly the input (the encoding is canonical), so
    /// corruption can never silently turn into a different database that still "looks" like
    /// the same bytes; and nothing panics.
    fn decode_is_total_and_canonical(input: &[u8]) {
        if let Ok(database) = decode(input) {
            assert_eq!(encode(&database).unwrap(), input);
        }
    }

    #[test]
    fn bit_flips_never_panic_and_decode_canonically() {
        let bytes = encode(&sample()).unwrap();
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[index] ^= 1 << bit;
                decode_is_total_and_canonical(&flipped);
            }
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias towards the small tags and counts that reach deeper into the decoder.
            if round % 2 == 0 {
                for byte in &mut input {
                    *byte %= 10;
                }
            }
            decode_is_total_and_canonical(&input);
        }
    }

    #[test]
    fn huge_lengths_are_refused_before_allocating() {
        // A class count, a string length and a set count of u64::MAX.
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(decode(&max), Err(DecodeError::Truncated));
        let mut long_name = vec![1];
        long_name.extend_from_slice(&max);
        assert_eq!(decode(&long_name), Err(DecodeError::Truncated));
        let mut long_set = vec![1, 1, b'c', 1, 1, b'r', 1, 1, b'f', TAG_SET];
        long_set.extend_from_slice(&max);
        assert_eq!(decode(&long_set), Err(DecodeError::Truncated));
        // Just one more element than bytes remain.
        assert_eq!(decode(&[2, 0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn malformed_varints_are_refused() {
        // Eleven continuation bytes, a tenth byte above 1, and a padded (non-shortest) zero.
        assert_eq!(decode(&[0x80; 11]), Err(DecodeError::Varint));
        let mut too_big = [0xff; 10];
        too_big[9] = 0x02;
        assert_eq!(decode(&too_big), Err(DecodeError::Varint));
        assert_eq!(decode(&[0x80, 0x00]), Err(DecodeError::Varint));
    }

    #[test]
    fn bad_values_have_typed_errors() {
        let prefix = [1, 1, b'c', 1, 1, b'r', 1, 1, b'f'];
        let with = |tail: &[u8]| {
            let mut input = prefix.to_vec();
            input.extend_from_slice(tail);
            decode(&input)
        };
        assert_eq!(with(&[9]), Err(DecodeError::UnknownTag(9)));
        assert_eq!(with(&[TAG_BOOL, 2]), Err(DecodeError::InvalidBool(2)));
        assert_eq!(with(&[TAG_STRING, 1, 0xff]), Err(DecodeError::Utf8));
        assert_eq!(with(&[TAG_FLOAT, 1, 2, 3]), Err(DecodeError::Truncated));
        assert_eq!(with(&[TAG_NIL, 0]), Err(DecodeError::TrailingBytes));
        assert_eq!(
            with(&[TAG_MAP, 2, 1, b'b', TAG_NIL, 1, b'a', TAG_NIL]),
            Err(DecodeError::KeyOrder)
        );
        assert_eq!(
            with(&[TAG_MAP, 2, 1, b'a', TAG_NIL, 1, b'a', TAG_NIL]),
            Err(DecodeError::KeyOrder)
        );
        // Duplicate refs and duplicate classes.
        assert_eq!(
            decode(&[1, 1, b'c', 2, 1, b'r', 0, 1, b'r', 0]),
            Err(DecodeError::KeyOrder)
        );
        assert_eq!(
            decode(&[2, 1, b'c', 0, 1, b'c', 0]),
            Err(DecodeError::KeyOrder)
        );
    }

    #[test]
    fn nesting_is_bounded_both_ways() {
        fn nested(depth: usize) -> Database {
            let mut value = FieldValue::Nil;
            for _ in 1..depth {
                value = FieldValue::Set(vec![value]);
            }
            let mut database = Database::new();
            database.insert("c", "r", [(String::from("f"), value)].into());
            database
        }
        let deepest = nested(MAX_DEPTH);
        assert_eq!(decode(&encode(&deepest).unwrap()), Ok(deepest));
        assert_eq!(encode(&nested(MAX_DEPTH + 1)), Err(EncodeError::TooDeep));
        // Hand-made: far deeper than the limit, in few bytes.
        let mut input = vec![1, 1, b'c', 1, 1, b'r', 1, 1, b'f'];
        input.extend(core::iter::repeat_n([TAG_SET, 1], 10_000).flatten());
        input.push(TAG_NIL);
        assert_eq!(decode(&input), Err(DecodeError::TooDeep));
    }

    #[test]
    fn item_count_is_bounded_both_ways() {
        // Class, object, field and the set itself are 4 items; each element is one more.
        let with_elements = |elements: usize| {
            let mut database = Database::new();
            let set = FieldValue::Set(vec![FieldValue::Nil; elements]);
            database.insert("c", "r", [(String::from("f"), set)].into());
            database
        };
        let largest = with_elements(MAX_ITEMS - 4);
        let bytes = encode(&largest).unwrap();
        assert_eq!(decode(&bytes), Ok(largest));
        assert_eq!(
            encode(&with_elements(MAX_ITEMS - 3)),
            Err(EncodeError::TooManyItems)
        );
        // The same input with one more element, made by hand: the count varint grows by no
        // byte (it is 3 bytes either way) and one more Nil follows.
        let mut input = bytes[..10].to_vec();
        let mut count = (MAX_ITEMS - 3) as u64;
        while count >= 0x80 {
            input.push((count as u8) | 0x80);
            count >>= 7;
        }
        input.push(count as u8);
        input.extend(core::iter::repeat_n(TAG_NIL, MAX_ITEMS - 3));
        assert_eq!(decode(&input), Err(DecodeError::TooManyItems));
    }

    #[test]
    fn the_size_limit_stops_the_encoder() {
        let database = sample();
        let len = encode(&database).unwrap().len();
        let mut out = vec![0u8; 10];
        assert_eq!(
            encode_into(&database, &mut out, 10 + len - 1),
            Err(EncodeError::TooLarge {
                limit: 10 + len - 1
            })
        );
        out.truncate(10);
        assert_eq!(encode_into(&database, &mut out, 10 + len), Ok(()));
        assert_eq!(out.len(), 10 + len);
    }
}
