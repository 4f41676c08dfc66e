//! The postcard-encoded records stored inside metadata frames.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::Uuid;

/// Static description of the SR, written once at format (primary and backup copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuperblockRecord {
    pub version: u32,
    pub sr: Uuid,
    pub sector_size: u32,
    pub extent_size: u64,
    pub metadata_blocks: u32,
    pub data_start: u64,
    pub extent_count: u32,
    pub backup_superblock: u64,
}

/// A reference from a parent block to a child: where it is and the CRC it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// Index within the metadata area.
    pub block: u32,
    /// The child's frame CRC, so a stale but intact block is recognised.
    pub crc: u32,
}

/// The commit record, in one of the two root slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRecord {
    pub generation: u64,
    pub next_vdi_serial: u64,
    /// Length in bytes of the encoded catalog spread over `catalog`.
    pub catalog_len: u32,
    pub catalog: Vec<BlockRef>,
}

/// Every VDI of the SR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRecord {
    pub vdis: Vec<VdiRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiRecord {
    pub uuid: Uuid,
    pub name: String,
    pub virtual_size: u64,
    pub read_only: bool,
    pub is_snapshot: bool,
    pub snapshot_of: Option<Uuid>,
    pub parent: Option<Uuid>,
    /// One entry per 512 virtual extents; `None` means the whole range is unallocated.
    pub chunks: Vec<Option<BlockRef>>,
}

/// The physical extents of up to 512 consecutive virtual extents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapChunkRecord {
    pub first_virtual_extent: u64,
    /// `entries[i]` maps virtual extent `first_virtual_extent + i`; trailing holes are
    /// omitted, so the list may be shorter than the chunk.
    pub entries: Vec<Option<u32>>,
}

/// Worst-case encoded size of a VDI's catalog entry (postcard varints at their longest).
pub fn vdi_record_worst_len(name_len: usize, chunks: usize) -> usize {
    // uuid 16 + name length 2 + size 10 + flags 2 + two optional UUIDs 34 + chunk count 5
    // = 69, rounded up; each chunk ref is a tag byte and two 5-byte varints.
    128 + name_len + 11 * chunks
}

/// Worst-case encoded size of the root record describing `catalog_blocks` blocks.
pub fn root_record_worst_len(catalog_blocks: usize) -> usize {
    32 + 10 * catalog_blocks
}
