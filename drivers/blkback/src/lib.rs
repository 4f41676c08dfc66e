//! Keel's Xen block backend: serves a guest's `xen-blkfront` (or GRUB's, or any frontend
//! speaking `xen/include/public/io/blkif.h`) from an asynchronous [`BlockTarget`].
//!
//! - [`wire`]: the blkif ABI for x86_64 (requests, segments, indirect pages, responses).
//! - [`ring`]: single- and multi-page shared rings, read through grant-mapped pages.
//! - [`store`]: the xenstore operations the backend needs, as a small trait.
//! - [`grant_io`]: moving data between the frontend's granted pages and dom0 buffers by
//!   `GNTTABOP_copy`, always naming the frontend's domain id.
//! - [`target`]: the storage side, asynchronous (many requests in flight).
//! - [`io`]: request processing for a device's rings: validation, ordering of flushes
//!   and barriers, bounded work per call.
//! - [`backend`]: [`Blkback`], the device: the xenbus state machine (features, ring
//!   references, protocol, queues, fatal errors) and the API the kernel drives.
//!
//! Nothing here is unsafe: ring pages are seen as arrays of `AtomicU32` that the kernel
//! hands out for grant-mapped frames, and data moves through hypercall wrappers.
//! See `docs/blkback.md`.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backend;
pub mod grant_io;
pub mod io;
pub mod persistent;
pub mod ring;
pub mod store;
pub mod target;
pub mod wire;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use backend::{Blkback, Config, ConfigError, ConnectError, Env, Failure};
pub use grant_io::{CopyError, GrantIo, GrantSpan, IdentityMapped, LocalFrames, XenGrantCopy};
pub use io::{Limits, Offer, Progress, Stats};
pub use ring::{PageWords, RingFrames};
pub use store::{StoreError, XenbusState, Xenstore};
pub use target::{
    BlockRequest, BlockTarget, Busy, Completion, DiscardInfo, Geometry, IoError, Tag,
};
