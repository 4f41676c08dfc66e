//! A small little-endian binary encoding for the usage journal. The reader is total: any
//! byte string decodes to a value or a [`DecodeError`], never a panic, and never allocates
//! more than the input could describe.

use alloc::string::String;
use alloc::vec::Vec;

/// Longest string stored (VM names, tags, tenants are cut to it at a char boundary).
pub const MAX_TEXT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadText,
    BadTag(u8),
    TooLong,
    /// A value out of its range (an index past its ring, an unknown unit…).
    BadValue,
}

#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u128(&mut self, v: u128) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    pub fn text(&mut self, v: &str) {
        let v = clip(v);
        self.u32(v.len() as u32);
        self.bytes.extend_from_slice(v.as_bytes());
    }

    pub fn len(&mut self, n: usize) {
        self.u32(n as u32);
    }
}

/// `text` cut to [`MAX_TEXT`] bytes at a char boundary.
pub fn clip(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("")
}

pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    pub fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.u64()?))
    }

    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(DecodeError::BadTag(t)),
        }
    }

    pub fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        if len > MAX_TEXT {
            return Err(DecodeError::TooLong);
        }
        let bytes = self.take(len)?;
        core::str::from_utf8(bytes)
            .map(String::from)
            .map_err(|_| DecodeError::BadText)
    }

    /// A count of items each at least `min_item_bytes` long: refused if the rest of the
    /// input could not hold them (so a corrupt count cannot make us allocate).
    pub fn len(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.bytes.len() {
            return Err(DecodeError::TooLong);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_total_reader() {
        let mut w = Writer::default();
        w.u8(7);
        w.u64(u64::MAX);
        w.u128(1 << 100);
        w.text("é-vm");
        w.bool(true);
        let bytes = w.bytes;
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u64().unwrap(), u64::MAX);
        assert_eq!(r.u128().unwrap(), 1 << 100);
        assert_eq!(r.text().unwrap(), "é-vm");
        assert!(r.bool().unwrap());
        assert!(r.is_empty());
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]);
            let ok = r.u8().and_then(|_| r.u64()).and_then(|_| r.u128());
            let ok = ok.and_then(|_| r.text()).and_then(|_| r.bool());
            assert!(ok.is_err());
        }
        let mut huge = Reader::new(&[0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(huge.len(8), Err(DecodeError::TooLong));
    }

    #[test]
    fn long_text_is_clipped_at_a_char_boundary() {
        let long = "é".repeat(MAX_TEXT);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_TEXT);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}
