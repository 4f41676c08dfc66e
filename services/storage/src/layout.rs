//! Where things live on the device, and the limits of the format (see docs/storage-format.md).

use crate::error::SrError;

/// Every metadata block (superblocks, root slots, catalog and map chunks) is this big.
pub const BLOCK_SIZE: usize = 4096;
/// Format version written into the superblock; attach refuses any other.
pub const FORMAT_VERSION: u32 = 1;
/// Block index (in `BLOCK_SIZE` units from the start of the device) of the two root slots.
pub const ROOT_SLOT_BLOCKS: [u64; 2] = [1, 2];
/// Block index where the metadata area starts.
pub const METADATA_FIRST_BLOCK: u64 = 3;
/// Virtual extents described by one map chunk.
pub const CHUNK_ENTRIES: usize = 512;
/// Longest VDI name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;
/// Largest VDI, in extents (bounds a VDI's map: at most 65 536 chunks).
pub const MAX_VIRTUAL_EXTENTS: u64 = 1 << 25;
/// Smallest and largest metadata area, in blocks.
pub const MIN_METADATA_BLOCKS: u32 = 8;
pub const MAX_METADATA_BLOCKS: u32 = 1 << 24;
/// Format refuses a device unless this many leading bytes (and the backup superblock's
/// block) are zero, or the caller forces it.
pub const BLANK_CHECK_BYTES: u64 = 1 << 20;
/// Largest single device transfer the SR issues for metadata and format (bounds its bounce
/// buffers).
pub const MAX_IO_BYTES: usize = 64 * 1024;
/// Largest single device transfer of the queued data path (or the device's limit, if lower):
/// a guest's request up to this size inside one extent goes to the device in its own buffer.
pub const MAX_DATA_IO_BYTES: usize = 1 << 20;
/// Default extent size.
pub const DEFAULT_EXTENT_SIZE: u64 = 1 << 20;

/// Sizes and positions derived from the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub sector_size: u32,
    pub extent_size: u64,
    pub metadata_blocks: u32,
    /// Byte offset of physical extent 0 (aligned to the extent size).
    pub data_start: u64,
    pub extent_count: u32,
    /// Byte offset of the backup superblock: the last whole block of the device.
    pub backup_superblock: u64,
}

impl Geometry {
    /// Lays out a new SR on a device of `capacity_bytes`.
    pub fn plan(
        sector_size: u32,
        capacity_bytes: u64,
        extent_size: u64,
        metadata_blocks: Option<u32>,
    ) -> Result<Geometry, SrError> {
        check_sector_size(sector_size)?;
        if !extent_size.is_power_of_two()
            || extent_size < BLOCK_SIZE as u64
            || extent_size > (1 << 30)
            || !extent_size.is_multiple_of(u64::from(sector_size))
        {
            return Err(SrError::InvalidExtentSize(extent_size));
        }
        let metadata_blocks = match metadata_blocks {
            Some(blocks) => blocks,
            // One block per 16 extents: room for maps of 10x the physical size (see the
            // format document), never less than 64 blocks.
            None => u32::try_from((capacity_bytes / extent_size).div_ceil(16))
                .unwrap_or(MAX_METADATA_BLOCKS)
                .clamp(64, MAX_METADATA_BLOCKS),
        };
        if !(MIN_METADATA_BLOCKS..=MAX_METADATA_BLOCKS).contains(&metadata_blocks) {
            return Err(SrError::InvalidMetadataSize(metadata_blocks));
        }
        let metadata_end = (METADATA_FIRST_BLOCK + u64::from(metadata_blocks)) * BLOCK_SIZE as u64;
        let data_start = metadata_end.div_ceil(extent_size) * extent_size;
        let needed_bytes = data_start + extent_size + BLOCK_SIZE as u64;
        let too_small = SrError::DeviceTooSmall {
            needed_bytes,
            capacity_bytes,
        };
        if capacity_bytes < needed_bytes {
            return Err(too_small);
        }
        let backup_superblock = backup_superblock_offset(capacity_bytes).ok_or(too_small)?;
        let extents = (backup_superblock - data_start) / extent_size;
        let extent_count = u32::try_from(extents)
            .unwrap_or(u32::MAX - 1)
            .min(u32::MAX - 1);
        Ok(Geometry {
            sector_size,
            extent_size,
            metadata_blocks,
            data_start,
            extent_count,
            backup_superblock,
        })
    }

    /// Byte offset of block `index` of the metadata area.
    pub fn metadata_block_offset(&self, index: u32) -> u64 {
        (METADATA_FIRST_BLOCK + u64::from(index)) * BLOCK_SIZE as u64
    }

    /// Byte offset of physical extent `extent`.
    pub fn extent_offset(&self, extent: u32) -> u64 {
        self.data_start + u64::from(extent) * self.extent_size
    }

    /// Number of virtual extents covering `virtual_size` bytes.
    pub fn extents_for(&self, virtual_size: u64) -> u64 {
        virtual_size.div_ceil(self.extent_size)
    }
}

/// The last whole `BLOCK_SIZE` block of a device, if it has at least two.
pub fn backup_superblock_offset(capacity_bytes: u64) -> Option<u64> {
    let blocks = capacity_bytes / BLOCK_SIZE as u64;
    (blocks >= 2).then(|| (blocks - 1) * BLOCK_SIZE as u64)
}

/// Number of map chunks of a VDI with `extents` virtual extents.
pub fn chunks_for(extents: u64) -> usize {
    usize::try_from(extents.div_ceil(CHUNK_ENTRIES as u64)).unwrap_or(usize::MAX)
}

pub fn check_sector_size(sector_size: u32) -> Result<(), SrError> {
    match sector_size {
        512 | 1024 | 2048 | 4096 => Ok(()),
        other => Err(SrError::UnsupportedSectorSize(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_aligns_data_to_extents_and_keeps_the_last_block_for_the_backup() {
        let geometry = Geometry::plan(512, 16 << 20, 1 << 20, Some(64)).unwrap();
        assert_eq!(geometry.data_start, 1 << 20);
        assert_eq!(geometry.backup_superblock, (16 << 20) - 4096);
        // 16 MiB - 1 MiB metadata - one block for the backup leaves 14 whole extents.
        assert_eq!(geometry.extent_count, 14);
    }

    #[test]
    fn plan_refuses_bad_extent_sizes_and_tiny_devices() {
        assert_eq!(
            Geometry::plan(512, 16 << 20, 3000, None),
            Err(SrError::InvalidExtentSize(3000))
        );
        assert_eq!(
            Geometry::plan(4096, 16 << 20, 2048, None),
            Err(SrError::InvalidExtentSize(2048))
        );
        assert!(matches!(
            Geometry::plan(512, 64 << 10, 4096, Some(64)),
            Err(SrError::DeviceTooSmall { .. })
        ));
        assert_eq!(
            Geometry::plan(520, 16 << 20, 4096, None),
            Err(SrError::UnsupportedSectorSize(520))
        );
        assert_eq!(
            Geometry::plan(512, 16 << 20, 4096, Some(2)),
            Err(SrError::InvalidMetadataSize(2))
        );
    }
}
