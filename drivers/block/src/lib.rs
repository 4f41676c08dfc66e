//! The block-device interface every disk driver in Keel implements (virtio-blk, NVMe, ...),
//! and faithful in-memory test doubles for it.
//!
//! One trait, [`BlockDevice`], serves two styles of use:
//! - submit/complete: [`BlockDevice::submit`] queues a [`Request`] (up to
//!   [`DeviceInfo::queue_depth`] may be outstanding) and [`BlockDevice::poll_completion`]
//!   hands back finished ones, in whatever order the device finishes them;
//! - synchronous: the helpers in [`sync`] submit one request and wait for it (tests, and
//!   small metadata work on a device nobody else is using at that moment).
//!
//! Buffers are owned by the request while it is in flight: a `Read` or `Write` carries a
//! `Vec<u8>` that the device keeps until the matching [`Completion`] gives it back. That makes
//! "the memory stays valid and unaliased while the device may DMA into it" a property the type
//! system enforces instead of a safety comment; a driver translates the buffer's address to a
//! bus address when it builds its descriptor.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod device;
mod error;
pub mod fakes;
mod request;
pub mod sync;

pub use device::{BlockDevice, DeviceInfo};
pub use error::BlockError;
pub use request::{validate, Completion, Rejected, Request, RequestId, RequestKind};
