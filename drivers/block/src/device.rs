//! The [`BlockDevice`] trait and the description of a device's geometry and abilities.

use alloc::string::String;

use crate::{Completion, Rejected, Request, RequestId};

/// What a device is and what it can do. Fixed for the life of the device handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Bytes per logical sector (512 or 4096 on real hardware); every transfer is a whole
    /// number of sectors at a sector-aligned position.
    pub sector_size: u32,
    /// Capacity in sectors.
    pub capacity_sectors: u64,
    /// How many requests may be outstanding at once; `submit` answers `Busy` beyond it.
    pub queue_depth: u16,
    /// The largest single read or write, in sectors.
    pub max_transfer_sectors: u32,
    /// Writes are refused.
    pub read_only: bool,
    /// `Request::Discard` is implemented.
    pub supports_discard: bool,
    /// Completed writes may sit in a volatile cache until a `Flush` completes.
    pub volatile_write_cache: bool,
    /// A stable name for the device (serial number, NVMe namespace id, ...). Destructive
    /// operations such as a forced format ask the caller to repeat it.
    pub identity: String,
}

impl DeviceInfo {
    /// Capacity in bytes (saturating, for absurd geometries).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors
            .saturating_mul(u64::from(self.sector_size))
    }
}

/// A block device with a request queue.
///
/// Requests are submitted and complete asynchronously, possibly out of order. A device never
/// blocks in `submit`: it queues the request or hands it back in a [`Rejected`]. Completions
/// are collected with `poll_completion`; a real driver fills them from its used ring when the
/// interrupt fires, a fake produces them on demand. Ordering between requests is not implied:
/// a caller that needs "A before B" waits for A's completion before submitting B, and a
/// caller that needs durability submits a `Flush` after the writes completed.
pub trait BlockDevice {
    /// The device's geometry and abilities.
    fn info(&self) -> &DeviceInfo;

    /// Queues a request. On success the request is in flight and will produce exactly one
    /// [`Completion`] with the returned id.
    fn submit(&mut self, request: Request) -> Result<RequestId, Rejected>;

    /// Returns one finished request, if any has finished.
    fn poll_completion(&mut self) -> Option<Completion>;

    /// How many accepted requests have not yet been returned by `poll_completion`.
    fn in_flight(&self) -> usize;
}

impl<D: BlockDevice + ?Sized> BlockDevice for &mut D {
    fn info(&self) -> &DeviceInfo {
        (**self).info()
    }
    fn submit(&mut self, request: Request) -> Result<RequestId, Rejected> {
        (**self).submit(request)
    }
    fn poll_completion(&mut self) -> Option<Completion> {
        (**self).poll_completion()
    }
    fn in_flight(&self) -> usize {
        (**self).in_flight()
    }
}
