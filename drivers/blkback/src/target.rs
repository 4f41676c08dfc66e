//! The storage side of a virtual disk, asynchronous: the backend submits many requests
//! and collects completions in whatever order the storage finishes them.
//!
//! Buffers are owned `Vec<u8>`s that travel with the request and come back with its
//! completion (a read's buffer holds the data; a write's is returned for reuse or to be
//! dropped), so nothing borrowed is in flight. Sectors are 512 bytes.

use alloc::vec::Vec;

/// The backend's name for a request in flight, unique per device for its lifetime.
pub type Tag = u64;

/// One operation on the disk.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockRequest {
    /// Fill `buf` (a whole number of sectors) from `sector` on.
    Read { sector: u64, buf: Vec<u8> },
    /// Write `buf` at `sector`; with `fua`, complete only once it is durable.
    Write {
        sector: u64,
        buf: Vec<u8>,
        fua: bool,
    },
    /// Make every write completed before this was submitted durable.
    Flush,
    /// The sectors' contents are no longer needed (thin storage frees them; later reads
    /// return zeros or the old data).
    Discard {
        sector: u64,
        sectors: u64,
        secure: bool,
    },
}

/// Why the storage could not do a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoError {
    /// The device reported an error (`BLKIF_RSP_ERROR`).
    Failed,
    /// The operation is not supported (`BLKIF_RSP_EOPNOTSUPP`).
    NotSupported,
}

/// A finished request.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    pub tag: Tag,
    /// The request's buffer (with the data, for a read), empty for flush and discard.
    pub buf: Vec<u8>,
    pub result: Result<(), IoError>,
}

/// The storage refused a request for now (queue full); it is handed back untouched.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy(pub BlockRequest);

/// What the backend advertises about the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// The medium's sector size in bytes (`physical-sector-size`).
    pub physical_sector_size: u32,
    pub read_only: bool,
    pub cdrom: bool,
    /// Whether [`BlockRequest::Flush`] and FUA writes are honoured.
    pub flush: bool,
    /// Discard support, if any.
    pub discard: Option<DiscardInfo>,
}

/// `discard-granularity`, `discard-alignment` (bytes) and `discard-secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardInfo {
    pub granularity: u32,
    pub alignment: u32,
    pub secure: bool,
}

/// A virtual disk the backend serves.
pub trait BlockTarget {
    fn geometry(&self) -> Geometry;
    /// Starts `request`; its completion comes back from [`BlockTarget::poll`] with `tag`.
    fn submit(&mut self, tag: Tag, request: BlockRequest) -> Result<(), Busy>;
    /// One finished request, if any.
    fn poll(&mut self) -> Option<Completion>;
}
