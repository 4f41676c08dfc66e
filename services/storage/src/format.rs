//! Creating a new, empty SR on a device — only on a blank device, or when the caller names the
//! device it means to overwrite.

use alloc::string::String;
use alloc::vec;

use keel_block::BlockDevice;

use crate::commit::encode;
use crate::error::SrError;
use crate::frame::{seal, BlockKind};
use crate::io;
use crate::layout::{
    Geometry, BLANK_CHECK_BYTES, BLOCK_SIZE, DEFAULT_EXTENT_SIZE, FORMAT_VERSION, MAX_IO_BYTES,
    ROOT_SLOT_BLOCKS,
};
use crate::records::{CatalogRecord, RootRecord, SuperblockRecord};
use crate::recovery::read_superblock;
use crate::sr::Sr;
use crate::Uuid;

/// How to format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatOptions {
    /// The new SR's UUID; the caller draws it from its entropy source.
    pub sr_uuid: Uuid,
    /// Allocation unit: a power of two from 4 KiB to 1 GiB.
    pub extent_size: u64,
    /// Size of the metadata area in 4 KiB blocks; `None` picks one block per 16 extents
    /// (at least 64).
    pub metadata_blocks: Option<u32>,
    /// Overwrite whatever the device holds. Must equal the device's
    /// [`keel_block::DeviceInfo::identity`], so a force meant for one disk cannot wipe another.
    pub force: Option<String>,
}

impl FormatOptions {
    pub fn new(sr_uuid: Uuid) -> Self {
        FormatOptions {
            sr_uuid,
            extent_size: DEFAULT_EXTENT_SIZE,
            metadata_blocks: None,
            force: None,
        }
    }
}

/// True if the first `BLANK_CHECK_BYTES` and the backup superblock's block are all zero.
fn is_blank(dev: &mut impl BlockDevice, geometry: &Geometry) -> Result<bool, SrError> {
    let head = BLANK_CHECK_BYTES.min(geometry.backup_superblock);
    let mut buffer = vec![0u8; MAX_IO_BYTES];
    let mut at = 0;
    while at < head {
        let n = (MAX_IO_BYTES as u64).min(head - at) as usize;
        let part = buffer.get_mut(..n).unwrap_or_default();
        io::read_at(dev, at, part)?;
        if part.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    let tail = io::read_block(dev, geometry.backup_superblock)?;
    Ok(tail.iter().all(|&b| b == 0))
}

impl<D: BlockDevice> Sr<D> {
    /// Formats `dev` as an empty SR and attaches it.
    ///
    /// Without `force`, a device that is not blank is refused with `ExistingSr` (it holds an
    /// SR) or `ForeignData`, and nothing is written. Formatting is durable when this returns.
    pub fn format(mut dev: D, options: FormatOptions) -> Result<Sr<D>, SrError> {
        let info = dev.info().clone();
        let geometry = Geometry::plan(
            info.sector_size,
            info.capacity_bytes(),
            options.extent_size,
            options.metadata_blocks,
        )?;
        match &options.force {
            Some(identity) if *identity != info.identity => return Err(SrError::ForceMismatch),
            Some(_) => {}
            None => {
                if !is_blank(&mut dev, &geometry)? {
                    return Err(match read_superblock(&mut dev) {
                        Ok(existing) => SrError::ExistingSr(existing.sr),
                        Err(_) => SrError::ForeignData,
                    });
                }
            }
        }
        let sr = options.sr_uuid;
        let generation = 1;
        let no_space = || SrError::InvalidMetadataSize(geometry.metadata_blocks);
        // An empty catalog in metadata block 0, and root 1 in slot 0 naming it. Slot 1 is
        // zeroed so no root of an earlier SR on this device survives a forced format.
        let catalog = encode(&CatalogRecord { vdis: vec![] })?;
        let (catalog_block, catalog_crc) =
            seal(BlockKind::Catalog, sr, generation, &catalog).ok_or_else(no_space)?;
        let root = RootRecord {
            generation,
            next_vdi_serial: 1,
            catalog_len: catalog.len() as u32,
            catalog: vec![crate::records::BlockRef {
                block: 0,
                crc: catalog_crc,
            }],
        };
        let (root_block, _) =
            seal(BlockKind::Root, sr, generation, &encode(&root)?).ok_or_else(no_space)?;
        let superblock = SuperblockRecord {
            version: FORMAT_VERSION,
            sr,
            sector_size: geometry.sector_size,
            extent_size: geometry.extent_size,
            metadata_blocks: geometry.metadata_blocks,
            data_start: geometry.data_start,
            extent_count: geometry.extent_count,
            backup_superblock: geometry.backup_superblock,
        };
        let (superblock_block, _) =
            seal(BlockKind::Superblock, sr, 0, &encode(&superblock)?).ok_or_else(no_space)?;
        let slot_offset = |slot: usize| ROOT_SLOT_BLOCKS[slot] * BLOCK_SIZE as u64;
        io::write_at(&mut dev, geometry.metadata_block_offset(0), &catalog_block)?;
        io::write_at(&mut dev, slot_offset(0), &root_block)?;
        io::write_at(&mut dev, slot_offset(1), &[0u8; BLOCK_SIZE])?;
        // A valid superblock must imply a valid root, whatever part of the cache a power cut
        // loses: roots durable first, then the backup superblock.
        io::flush(&mut dev)?;
        io::write_at(&mut dev, geometry.backup_superblock, &superblock_block)?;
        io::flush(&mut dev)?;
        // The primary superblock last: until it is durable the backup already describes a
        // complete SR.
        io::write_at(&mut dev, 0, &superblock_block)?;
        io::flush(&mut dev)?;
        Sr::attach(dev)
    }
}
