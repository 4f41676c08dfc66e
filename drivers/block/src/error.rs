//! The typed errors a block device reports.

use crate::request::RequestKind;

/// Why a block request failed or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The request touches sectors past the end of the device.
    OutOfRange {
        lba: u64,
        sectors: u64,
        capacity_sectors: u64,
    },
    /// The buffer length is zero or not a whole number of sectors.
    Misaligned { len: usize, sector_size: u32 },
    /// The request is larger than the device accepts in one transfer.
    TooLarge { sectors: u64, max_sectors: u32 },
    /// The medium or transport failed. For a write, sectors before `first_failed_lba` may
    /// have been written (a short write); nothing after it was.
    Io { first_failed_lba: u64 },
    /// A thin-provisioned backing store ran out of space.
    NoSpace,
    /// The device does not implement this kind of request (e.g. discard).
    Unsupported(RequestKind),
    /// The device is gone (hot-unplugged, reset, or power lost); nothing more will complete.
    DeviceGone,
    /// The queue is full: wait for a completion and submit again.
    Busy,
    /// The device is write-protected.
    ReadOnly,
    /// A synchronous helper was used while other requests were in flight, or the device
    /// reported no completion for a request it had accepted.
    NotIdle,
}

impl core::fmt::Display for BlockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlockError::OutOfRange {
                lba,
                sectors,
                capacity_sectors,
            } => write!(
                f,
                "sectors {lba}+{sectors} are past the end of a {capacity_sectors}-sector device"
            ),
            BlockError::Misaligned { len, sector_size } => write!(
                f,
                "buffer of {len} bytes is not a whole number of {sector_size}-byte sectors"
            ),
            BlockError::TooLarge {
                sectors,
                max_sectors,
            } => write!(
                f,
                "{sectors} sectors exceed the {max_sectors}-sector transfer limit"
            ),
            BlockError::Io { first_failed_lba } => {
                write!(f, "I/O error at sector {first_failed_lba}")
            }
            BlockError::NoSpace => write!(f, "backing store is out of space"),
            BlockError::Unsupported(kind) => write!(f, "{kind:?} is not supported by this device"),
            BlockError::DeviceGone => write!(f, "device is gone"),
            BlockError::Busy => write!(f, "device queue is full"),
            BlockError::ReadOnly => write!(f, "device is read-only"),
            BlockError::NotIdle => write!(f, "device is not idle"),
        }
    }
}
