//! The self-checking frame around every metadata block.
//!
//! ```text
//! 0..8    magic (identifies the block type)
//! 8..12   CRC32C (Castagnoli), little endian, over bytes 12..4096
//! 12..16  payload length, little endian
//! 16..32  UUID of the SR the block belongs to
//! 32..40  generation of the commit that wrote the block, little endian
//! 40..    postcard payload, then zeros to the end of the block (covered by the CRC)
//! ```

use alloc::vec;
use alloc::vec::Vec;

use crate::error::FrameProblem;
use crate::layout::BLOCK_SIZE;
use crate::Uuid;

pub const HEADER_LEN: usize = 40;
pub const PAYLOAD_MAX: usize = BLOCK_SIZE - HEADER_LEN;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    CASTAGNOLI.checksum(data)
}

/// The kinds of metadata block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Superblock,
    Root,
    Catalog,
    MapChunk,
}

impl BlockKind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            BlockKind::Superblock => b"KEELSR\x00S",
            BlockKind::Root => b"KEELSR\x00R",
            BlockKind::Catalog => b"KEELSR\x00C",
            BlockKind::MapChunk => b"KEELSR\x00M",
        }
    }
}

/// A block whose frame checked out.
#[derive(Debug)]
pub struct Opened<'a> {
    pub sr: Uuid,
    pub generation: u64,
    pub crc: u32,
    pub payload: &'a [u8],
}

/// Frames `payload` into a block. The caller keeps payloads within `PAYLOAD_MAX`.
pub fn seal(kind: BlockKind, sr: Uuid, generation: u64, payload: &[u8]) -> Option<(Vec<u8>, u32)> {
    if payload.len() > PAYLOAD_MAX {
        return None;
    }
    let mut block = vec![0u8; BLOCK_SIZE];
    block[..8].copy_from_slice(kind.magic());
    block[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    block[16..32].copy_from_slice(sr.as_bytes());
    block[32..40].copy_from_slice(&generation.to_le_bytes());
    block[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let crc = crc32c(&block[12..]);
    block[8..12].copy_from_slice(&crc.to_le_bytes());
    Some((block, crc))
}

/// Checks a block's frame. `sr` is the SR it must belong to, if known.
pub fn open(kind: BlockKind, block: &[u8], sr: Option<Uuid>) -> Result<Opened<'_>, FrameProblem> {
    if block.len() != BLOCK_SIZE || block.get(..8) != Some(&kind.magic()[..]) {
        return Err(FrameProblem::Magic);
    }
    let stored = u32::from_le_bytes(field(block, 8));
    let crc = crc32c(block.get(12..).unwrap_or_default());
    if stored != crc {
        return Err(FrameProblem::Checksum);
    }
    let len = u32::from_le_bytes(field(block, 12)) as usize;
    let payload = block
        .get(HEADER_LEN..HEADER_LEN.saturating_add(len))
        .ok_or(FrameProblem::Length)?;
    let owner = Uuid(field(block, 16));
    if sr.is_some_and(|expected| expected != owner) {
        return Err(FrameProblem::ForeignSr);
    }
    Ok(Opened {
        sr: owner,
        generation: u64::from_le_bytes(field(block, 32)),
        crc,
        payload,
    })
}

/// True if the block starts with any Keel SR magic (used to tell "ours but damaged" from
/// "foreign").
pub fn has_any_magic(block: &[u8]) -> bool {
    block.get(..6) == Some(&b"KEELSR"[..])
}

fn field<const N: usize>(block: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(bytes) = block.get(at..at + N) {
        out.copy_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_castagnoli_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn sealed_blocks_open_and_any_flipped_bit_is_caught() {
        let sr = Uuid([3; 16]);
        let (block, crc) = seal(BlockKind::Catalog, sr, 9, b"hello").unwrap();
        let opened = open(BlockKind::Catalog, &block, Some(sr)).unwrap();
        assert_eq!(
            (opened.payload, opened.generation, opened.crc),
            (&b"hello"[..], 9, crc)
        );
        for byte in [0usize, 9, 13, 20, 33, 41, 4095] {
            let mut damaged = block.clone();
            damaged[byte] ^= 0x10;
            assert!(
                open(BlockKind::Catalog, &damaged, Some(sr)).is_err(),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn open_checks_type_and_owner() {
        let sr = Uuid([3; 16]);
        let (block, _) = seal(BlockKind::Root, sr, 1, b"x").unwrap();
        assert_eq!(
            open(BlockKind::Catalog, &block, Some(sr)).unwrap_err(),
            FrameProblem::Magic
        );
        assert_eq!(
            open(BlockKind::Root, &block, Some(Uuid([4; 16]))).unwrap_err(),
            FrameProblem::ForeignSr
        );
        assert!(seal(BlockKind::Root, sr, 1, &[0; PAYLOAD_MAX + 1]).is_none());
    }
}
