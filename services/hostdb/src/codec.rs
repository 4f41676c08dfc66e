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
pub const MAX_ITEMS: usize = 1 << 22;

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
                    items
                        .try_reserve(1)
                        .map_err(|_| DecodeError::OutOfMemory)?;
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
