//! Storage repositories (SRs): thin-provisioned virtual disks (VDIs) with copy-on-write
//! snapshots and clones, on one whole block device, with crash-safe metadata.
//!
//! The on-disk format is specified in `docs/storage-format.md`. In short: a static superblock
//! (primary at the start, backup at the end), two alternating root slots, and a copy-on-write
//! tree of CRC32C-checked, postcard-encoded metadata blocks (catalog + per-VDI map chunks)
//! that maps each VDI's virtual extents to physical extents. A commit writes a new tree beside
//! the old one and then switches the root; attach picks the newest root whose tree is intact.
//!
//! Durability: data writes ([`Sr::write`]) are acknowledged by [`Sr::flush`], like a disk with
//! a write cache; metadata operations (create, destroy, rename, resize, snapshot, clone,
//! copy) are durable when they return, and they also make all earlier writes durable.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod check;
mod commit;
mod data;
mod engine;
mod error;
mod format;
mod frame;
mod io;
pub mod layout;
mod ops;
mod records;
mod recovery;
mod space;
mod sr;
mod uuid;
mod vdi;
mod vdi_io;

pub use check::{CheckFailure, CheckReport};
pub use engine::{MAX_COPY_ON_WRITES, MAX_QUEUED_IO};
pub use error::{Corruption, FrameProblem, Inconsistency, Space, SrError};
pub use format::FormatOptions;
pub use frame::crc32c;
pub use sr::{RecoveryReport, Sr, VdiInfo};
pub use uuid::Uuid;
pub use vdi_io::{IoRejected, VdiCompletion, VdiIo, VdiIoKind};
