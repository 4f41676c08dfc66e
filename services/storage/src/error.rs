//! The typed errors of the storage manager.

use keel_block::BlockError;

use crate::Uuid;

/// Which pool ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// No free data extent for a write, clone copy or copy.
    Data,
    /// The metadata area cannot hold the worst case of the requested layout.
    Metadata,
}

/// What is wrong with a metadata block as read from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameProblem {
    /// The block does not start with the magic of the expected block type.
    Magic,
    /// The CRC32C stored in the block does not match its contents.
    Checksum,
    /// The payload length field is impossible.
    Length,
    /// The block belongs to another SR (a leftover of an earlier format).
    ForeignSr,
    /// The block claims to be newer than the root that references it.
    Generation,
    /// The block is intact but differs from the checksum its parent recorded (a stale block).
    ParentChecksum,
    /// The payload does not decode as the expected record.
    Decode,
}

/// A structural inconsistency between valid metadata blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inconsistency {
    /// A reference to a metadata block outside the metadata area.
    BlockOutOfRange,
    /// A map entry naming a physical extent that does not exist.
    ExtentOutOfRange,
    /// A map chunk whose position or length does not fit its VDI.
    ChunkShape,
    /// Two VDIs with the same UUID.
    DuplicateVdi,
    /// A VDI whose size is unaligned or beyond the limits.
    VdiSize,
    /// The superblock's geometry does not fit the device it is on.
    Geometry,
    /// The catalog is longer than the root record can describe.
    CatalogLength,
}

/// What part of the metadata is corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Neither the primary nor the backup superblock is valid (one of them is ours).
    Superblock(FrameProblem),
    /// Neither root slot leads to a fully valid metadata tree.
    NoValidRoot,
    /// A metadata block (index within the metadata area) failed validation.
    MetadataBlock { block: u32, problem: FrameProblem },
    /// The blocks are intact but do not fit together.
    Inconsistent(Inconsistency),
}

/// Every way a storage-repository operation can fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrError {
    /// The block device failed the request (includes `DeviceGone` after a power cut).
    Device(BlockError),
    /// Sector sizes other than 512, 1024, 2048 and 4096 bytes are not supported.
    UnsupportedSectorSize(u32),
    /// The extent size must be a power of two between 4 KiB and 1 GiB and a multiple of the
    /// sector size.
    InvalidExtentSize(u64),
    /// The requested metadata area is too small (fewer than 8 blocks) or too large.
    InvalidMetadataSize(u32),
    /// The device cannot hold the superblocks, the metadata area and at least one extent.
    DeviceTooSmall {
        needed_bytes: u64,
        capacity_bytes: u64,
    },
    /// Format refused: the device holds data that is not an SR. Nothing was written.
    ForeignData,
    /// Format refused: the device already holds an SR. Nothing was written.
    ExistingSr(Uuid),
    /// Format with force refused: the identity given does not name this device.
    ForceMismatch,
    /// Attach refused: the device holds no SR (blank or foreign).
    NotAnSr,
    /// Attach refused: the SR was written by an unknown format version.
    UnsupportedVersion(u32),
    /// The metadata on the device is damaged beyond what recovery can repair.
    Corrupt {
        what: Corruption,
    },
    VdiNotFound(Uuid),
    /// The VDI is a read-only snapshot.
    ReadOnly(Uuid),
    /// The I/O reaches past the VDI's virtual size.
    OutOfRange {
        offset: u64,
        len: u64,
        virtual_size: u64,
    },
    /// Offset and length must be multiples of the device's sector size.
    Unaligned {
        offset: u64,
        len: u64,
        sector_size: u32,
    },
    /// Names are 1 to 255 bytes of UTF-8.
    InvalidName,
    /// Virtual sizes are non-zero multiples of the sector size, at most the per-VDI limit.
    InvalidSize(u64),
    /// The SR is full; the operation changed nothing.
    SrFull {
        space: Space,
    },
    /// A record could not be encoded (cannot happen with this crate's record types; kept
    /// typed rather than panicking).
    Encode,
    /// A metadata commit failed after its root record may have reached the device, so the
    /// in-memory view may disagree with the disk: attach again to recover.
    NeedsReattach,
    /// Too many VDI requests are in flight on this SR: take some completions and submit
    /// again.
    QueueFull,
    /// A buffer for the request could not be allocated; nothing was done.
    OutOfMemory,
}

impl From<BlockError> for SrError {
    fn from(error: BlockError) -> Self {
        SrError::Device(error)
    }
}

impl SrError {
    pub(crate) fn corrupt(what: Corruption) -> Self {
        SrError::Corrupt { what }
    }

    pub(crate) fn inconsistent(what: Inconsistency) -> Self {
        SrError::Corrupt {
            what: Corruption::Inconsistent(what),
        }
    }
}

impl core::fmt::Display for SrError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SrError::Device(error) => write!(f, "block device error: {error}"),
            SrError::SrFull { space } => write!(f, "SR full ({space:?})"),
            SrError::VdiNotFound(uuid) => write!(f, "VDI {uuid} not found"),
            SrError::ReadOnly(uuid) => write!(f, "VDI {uuid} is read-only"),
            other => write!(f, "{other:?}"),
        }
    }
}
