//! 128-bit identifiers for SRs and VDIs.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A UUID, stored as its 16 bytes in RFC 4122 order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Uuid(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A version-4-shaped UUID derived from the SR's UUID and a per-SR serial number.
    ///
    /// The storage layer has no entropy source of its own; the SR UUID (chosen randomly by
    /// whoever formatted the SR) makes the result globally distinct, and the serial makes it
    /// distinct within the SR. The caller still checks for a clash, because the version and
    /// variant bits overwrite six bits of the mix.
    pub fn derive(sr: Uuid, serial: u64) -> Self {
        let (hi, lo) = sr.0.split_at(8);
        let mut hi_bytes = [0u8; 8];
        let mut lo_bytes = [0u8; 8];
        hi_bytes.copy_from_slice(hi);
        lo_bytes.copy_from_slice(lo);
        let hi = mix(u64::from_be_bytes(hi_bytes) ^ serial);
        let lo = mix(u64::from_be_bytes(lo_bytes) ^ serial.rotate_left(29) ^ 0x5bd1_e995);
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&hi.to_be_bytes());
        out[8..].copy_from_slice(&lo.to_be_bytes());
        out[6] = (out[6] & 0x0f) | 0x40;
        out[8] = (out[8] & 0x3f) | 0x80;
        Uuid(out)
    }
}

/// The SplitMix64 finaliser: a bijection on u64 that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_hyphenated_lowercase() {
        let uuid = Uuid([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        assert_eq!(format!("{uuid}"), "12345678-9abc-def0-0123-456789abcdef");
    }

    #[test]
    fn derived_uuids_differ_per_serial_and_are_v4_shaped() {
        let sr = Uuid([7; 16]);
        let a = Uuid::derive(sr, 1);
        let b = Uuid::derive(sr, 2);
        assert_ne!(a, b);
        assert_eq!(a.0[6] >> 4, 4);
        assert_eq!(a.0[8] >> 6, 2);
        assert_ne!(Uuid::derive(Uuid([8; 16]), 1), a);
    }
}
