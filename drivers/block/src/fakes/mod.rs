//! Test doubles for [`crate::BlockDevice`], usable from any crate's tests (they need only
//! `alloc`, so they are always compiled; they cost nothing unless used).

mod mem;

pub use mem::{CacheLoss, CompletionOrder, DiskStats, MemDisk, MemDiskConfig};
