//! The queued VDI I/O interface: what a user of a VDI (blkback, an import, a copy) submits,
//! and what it gets back.
//!
//! A user submits [`VdiIo`] requests with [`crate::Sr::submit_io`], each with a tag of its
//! own choosing, and keeps submitting without waiting: many requests, on many VDIs of the SR,
//! are in flight at once, and the SR keeps the device's queue busy with their pieces. Whoever
//! runs the SR calls [`crate::Sr::poll_io`] when the device may have finished something (its
//! interrupt, or the executor's next round); finished requests come back, in whatever order
//! they finish, from [`crate::Sr::take_io_completion`]. Nothing here waits.
//!
//! Buffers travel with the request, as they do for a block device: a read's buffer comes back
//! filled, a write's comes back for reuse.

use alloc::vec::Vec;

use crate::{SrError, Uuid};

/// One I/O on a VDI. Offsets and lengths are multiples of the SR's sector size.
#[derive(Debug, PartialEq, Eq)]
pub enum VdiIo {
    /// Fill `buffer` from the VDI at `offset`; never-written ranges read as zeros.
    Read { offset: u64, buffer: Vec<u8> },
    /// Write `buffer` at `offset`. Completion means later reads see the data; it is durable
    /// once a `Flush` submitted after this completion (or after this submission) completes.
    Write { offset: u64, buffer: Vec<u8> },
    /// Completes when every write and discard to the SR submitted before it is durable (it
    /// waits for them to complete first, then commits the SR's maps or flushes the device).
    Flush,
    /// The range's contents are no longer needed. Whole extents inside it are unmapped (they
    /// read as zeros and their space returns to the SR once no snapshot and no recent root
    /// holds them); the rest of the range keeps its contents.
    Discard { offset: u64, len: u64 },
}

impl VdiIo {
    pub fn kind(&self) -> VdiIoKind {
        match self {
            VdiIo::Read { .. } => VdiIoKind::Read,
            VdiIo::Write { .. } => VdiIoKind::Write,
            VdiIo::Flush => VdiIoKind::Flush,
            VdiIo::Discard { .. } => VdiIoKind::Discard,
        }
    }

    /// Gives back the data buffer, if the request carries one.
    pub fn into_buffer(self) -> Option<Vec<u8>> {
        match self {
            VdiIo::Read { buffer, .. } | VdiIo::Write { buffer, .. } => Some(buffer),
            VdiIo::Flush | VdiIo::Discard { .. } => None,
        }
    }
}

/// What a [`VdiIo`] does, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VdiIoKind {
    Read,
    Write,
    Flush,
    Discard,
}

/// A finished [`VdiIo`].
#[derive(Debug, PartialEq, Eq)]
pub struct VdiCompletion {
    pub vdi: Uuid,
    /// The tag given to `submit_io`.
    pub tag: u64,
    pub kind: VdiIoKind,
    /// A failed write leaves its range undefined (each sector old or new); a failed flush
    /// acknowledges nothing.
    pub result: Result<(), SrError>,
    /// The request's buffer (filled, for a successful read).
    pub buffer: Option<Vec<u8>>,
}

/// A request `submit_io` refused, handed back with the reason so the caller keeps its
/// buffer. Nothing was done.
#[derive(Debug, PartialEq, Eq)]
pub struct IoRejected {
    pub error: SrError,
    pub io: VdiIo,
}
