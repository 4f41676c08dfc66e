//! The two slots a volume holds and the self-checking header at the start of each.
//!
//! ```text
//! slot s (0 or 1) starts at s × slot_bytes;
//! slot_bytes = capacity / 2 rounded down to 4 KiB, at most MAX_SLOT_BYTES
//!
//! 0..8    magic "KEELHDB\0"
//! 8..12   format version, little endian (1)
//! 12..16  zero
//! 16..24  generation, little endian (higher is newer)
//! 24..32  payload length in bytes, little endian
//! 32..36  CRC32C of the payload, little endian
//! 36..60  zero
//! 60..64  CRC32C of bytes 0..60, little endian
//! 64..    payload (see codec), then zeros to the end of its last 4 KiB block
//! ```
//!
//! Later format versions keep the magic, the version field and the header CRC where they are,
//! so an older Keel recognises a newer slot as such instead of as damage.

use crate::codec::DecodeError;
use crate::volume::BLOCK;

pub const MAGIC: [u8; 8] = *b"KEELHDB\0";
/// The only version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of header before the payload.
pub const HEADER_LEN: usize = 64;
/// Largest slot used, whatever the volume's size (bounds the memory a load needs).
pub const MAX_SLOT_BYTES: u64 = 64 << 20;

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// The first block is all zeros: the slot was never written.
    Blank,
    /// An intact database of this generation.
    Valid { generation: u64 },
    /// An intact header of a format version this Keel does not know (written by a newer one).
    UnsupportedVersion(u32),
    /// Torn by a power cut during a save that was never acknowledged, or corrupted.
    Damaged(SlotProblem),
}

/// What is wrong with a damaged slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotProblem {
    /// The first block is neither blank nor starts with the magic.
    Magic,
    /// The header's CRC does not match.
    HeaderChecksum,
    /// The payload length exceeds the slot.
    Length,
    /// The payload's CRC does not match (typically a torn save).
    PayloadChecksum,
    /// The payload is intact by its CRC yet does not decode.
    Decode(DecodeError),
}

/// Where the slots are in a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    slot_bytes: u64,
}

impl SlotLayout {
    /// The layout of a volume of `capacity` bytes; `None` if a slot would be smaller than one
    /// block.
    pub fn for_capacity(capacity: u64) -> Option<SlotLayout> {
        let block = BLOCK as u64;
        let slot_bytes = (capacity / 2 / block * block).min(MAX_SLOT_BYTES);
        (slot_bytes >= block).then_some(SlotLayout { slot_bytes })
    }

    pub fn slot_bytes(&self) -> u64 {
        self.slot_bytes
    }

    /// Byte offset of slot 0 or 1.
    pub fn offset(&self, slot: usize) -> u64 {
        if slot == 0 {
            0
        } else {
            self.slot_bytes
        }
    }

    /// Largest payload a slot holds.
    pub fn payload_capacity(&self) -> usize {
        usize::try_from(self.slot_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(HEADER_LEN)
    }
}

/// A header whose own CRC checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub generation: u64,
    pub payload_len: u64,
    pub payload_crc: u32,
}

impl Header {
    /// The header bytes for this payload.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        put(&mut out, 0, &MAGIC);
        put(&mut out, 8, &FORMAT_VERSION.to_le_bytes());
        put(&mut out, 16, &self.generation.to_le_bytes());
        put(&mut out, 24, &self.payload_len.to_le_bytes());
        put(&mut out, 32, &self.payload_crc.to_le_bytes());
        let crc = keel_storage::crc32c(out.get(..60).unwrap_or_default());
        put(&mut out, 60, &crc.to_le_bytes());
        out
    }

    /// Parses the first block of a slot. `Err` carries the slot's state when the header does
    /// not describe a payload this version can read.
    pub fn parse(block: &[u8], layout: &SlotLayout) -> Result<Header, SlotState> {
        let Some(header) = block.get(..HEADER_LEN) else {
            return Err(SlotState::Damaged(SlotProblem::Length));
        };
        if header.get(..8) != Some(&MAGIC[..]) {
            return Err(if block.iter().all(|&b| b == 0) {
                SlotState::Blank
            } else {
                SlotState::Damaged(SlotProblem::Magic)
            });
        }
        if keel_storage::crc32c(header.get(..60).unwrap_or_default()) != le_u32(header, 60) {
            return Err(SlotState::Damaged(SlotProblem::HeaderChecksum));
        }
        let version = le_u32(header, 8);
        if version != FORMAT_VERSION {
            return Err(SlotState::UnsupportedVersion(version));
        }
        let parsed = Header {
            generation: le_u64(header, 16),
            payload_len: le_u64(header, 24),
            payload_crc: le_u32(header, 32),
        };
        if parsed.payload_len > layout.payload_capacity() as u64 {
            return Err(SlotState::Damaged(SlotProblem::Length));
        }
        Ok(parsed)
    }
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(target) = out.get_mut(at..at + bytes.len()) {
        target.copy_from_slice(bytes);
    }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut out = [0u8; 4];
    if let Some(source) = bytes.get(at..at + 4) {
        out.copy_from_slice(source);
    }
    u32::from_le_bytes(out)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut out = [0u8; 8];
    if let Some(source) = bytes.get(at..at + 8) {
        out.copy_from_slice(source);
    }
    u64::from_le_bytes(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> SlotLayout {
        SlotLayout::for_capacity(64 * 1024).unwrap()
    }

    fn block_with(header: &Header) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK];
        block[..HEADER_LEN].copy_from_slice(&header.encode());
        block
    }

    #[test]
    fn layout_halves_the_volume_in_whole_blocks() {
        assert_eq!(SlotLayout::for_capacity(8191), None);
        let layout = SlotLayout::for_capacity(3 * 4096 + 100).unwrap();
        assert_eq!(layout.slot_bytes(), 4096);
        assert_eq!((layout.offset(0), layout.offset(1)), (0, 4096));
        assert_eq!(layout.payload_capacity(), 4096 - HEADER_LEN);
        let huge = SlotLayout::for_capacity(1 << 40).unwrap();
        assert_eq!(huge.slot_bytes(), MAX_SLOT_BYTES);
    }

    #[test]
    fn header_round_trips() {
        let header = Header {
            generation: 0x0102_0304_0506_0708,
            payload_len: 1000,
            payload_crc: 0xdead_beef,
        };
        assert_eq!(Header::parse(&block_with(&header), &layout()), Ok(header));
    }

    #[test]
    fn blank_foreign_and_flipped_headers_are_told_apart() {
        let layout = layout();
        assert_eq!(Header::parse(&[0u8; BLOCK], &layout), Err(SlotState::Blank));
        let mut foreign = vec![0u8; BLOCK];
        foreign[100] = 1;
        assert_eq!(
            Header::parse(&foreign, &layout),
            Err(SlotState::Damaged(SlotProblem::Magic))
        );
        let header = Header {
            generation: 5,
            payload_len: 10,
            payload_crc: 1,
        };
        for byte in 8..HEADER_LEN {
            let mut block = block_with(&header);
            block[byte] ^= 0x10;
            assert_eq!(
                Header::parse(&block, &layout),
                Err(SlotState::Damaged(SlotProblem::HeaderChecksum)),
                "flip in byte {byte}"
            );
        }
        assert_eq!(
            Header::parse(&block_with(&header)[..10], &layout),
            Err(SlotState::Damaged(SlotProblem::Length))
        );
    }

    #[test]
    fn lengths_beyond_the_slot_and_other_versions_are_refused() {
        let layout = layout();
        let header = Header {
            generation: 1,
            payload_len: layout.payload_capacity() as u64 + 1,
            payload_crc: 0,
        };
        assert_eq!(
            Header::parse(&block_with(&header), &layout),
            Err(SlotState::Damaged(SlotProblem::Length))
        );
        let mut block = block_with(&Header {
            payload_len: 0,
            ..header
        });
        block[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = keel_storage::crc32c(&block[..60]);
        block[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Header::parse(&block, &layout),
            Err(SlotState::UnsupportedVersion(2))
        );
    }
}
