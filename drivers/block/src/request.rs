//! Requests, their identifiers and completions, and the checks every device applies.

use alloc::vec::Vec;

use crate::{BlockError, DeviceInfo};

/// Identifies one submitted request until its completion is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// What a request does, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
    Flush,
    Discard,
}

/// One block request. Data buffers are owned by the request while it is in flight and come
/// back in the [`Completion`]; their length must be a whole, non-zero number of sectors.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Fill `buffer` from sectors starting at `lba`.
    Read { lba: u64, buffer: Vec<u8> },
    /// Write `buffer` to sectors starting at `lba`. Completion means the device accepted the
    /// data; with a volatile write cache it is durable only after a later `Flush` completes.
    Write { lba: u64, buffer: Vec<u8> },
    /// Make every write that completed before this request was submitted durable.
    Flush,
    /// The host no longer needs these sectors; their contents become unspecified.
    Discard { lba: u64, sectors: u64 },
}

impl Request {
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Read { .. } => RequestKind::Read,
            Request::Write { .. } => RequestKind::Write,
            Request::Flush => RequestKind::Flush,
            Request::Discard { .. } => RequestKind::Discard,
        }
    }

    /// Gives back the data buffer, if the request carries one.
    pub fn into_buffer(self) -> Option<Vec<u8>> {
        match self {
            Request::Read { buffer, .. } | Request::Write { buffer, .. } => Some(buffer),
            Request::Flush | Request::Discard { .. } => None,
        }
    }
}

/// A finished request.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    pub id: RequestId,
    pub kind: RequestKind,
    pub result: Result<(), BlockError>,
    /// The request's buffer, returned to its owner (filled, for a successful read).
    pub buffer: Option<Vec<u8>>,
}

/// A request the device refused to queue, handed back with the reason so the caller keeps
/// its buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub error: BlockError,
    pub request: Request,
}

/// Checks a request against the device's geometry: whole sectors, within capacity, within the
/// transfer limit, and of a kind the device supports. Drivers call this before building
/// descriptors so every implementation refuses the same things the same way.
pub fn validate(info: &DeviceInfo, request: &Request) -> Result<(), BlockError> {
    let sector_size = u64::from(info.sector_size);
    let (lba, sectors) = match request {
        Request::Flush => return Ok(()),
        Request::Read { lba, buffer } | Request::Write { lba, buffer } => {
            let len = buffer.len() as u64;
            if len == 0 || sector_size == 0 || !len.is_multiple_of(sector_size) {
                return Err(BlockError::Misaligned {
                    len: buffer.len(),
                    sector_size: info.sector_size,
                });
            }
            if request.kind() == RequestKind::Write && info.read_only {
                return Err(BlockError::ReadOnly);
            }
            let sectors = len / sector_size;
            if sectors > u64::from(info.max_transfer_sectors) {
                return Err(BlockError::TooLarge {
                    sectors,
                    max_sectors: info.max_transfer_sectors,
                });
            }
            (*lba, sectors)
        }
        Request::Discard { lba, sectors } => {
            if !info.supports_discard {
                return Err(BlockError::Unsupported(RequestKind::Discard));
            }
            if info.read_only {
                return Err(BlockError::ReadOnly);
            }
            (*lba, *sectors)
        }
    };
    let out_of_range = BlockError::OutOfRange {
        lba,
        sectors,
        capacity_sectors: info.capacity_sectors,
    };
    match lba.checked_add(sectors) {
        Some(end) if end <= info.capacity_sectors && sectors > 0 => Ok(()),
        _ => Err(out_of_range),
    }
}
