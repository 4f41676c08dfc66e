//! Keel's Xen network backend: serves a guest's `xen-netfront` (`vif`) to the virtual
//! switch. See `docs/netback.md`.
//!
//! - [`wire`]: the netif ring ABI; [`packet`]: checksum fill and TSO segmentation;
//!   [`xenbus`]: the handshake nodes; [`ratelimit`]: the per-VIF credit; [`stats`]: counters.
//! - [`Netback`] ties them: `new` → `start` (InitWait) → `on_watch` (frontend state) →
//!   Connected → `poll` (tx then rx per queue, bounded) with `push_rx` feeding frames.
//!
//! No unsafe code: rings come from the kernel as `keel_xen::ring::SharedRing`s, grant
//! copies and event channels go through `keel_xen`'s typed wrappers.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod env;
pub mod fault;
mod netback;
pub mod packet;
mod queue;
pub mod ratelimit;
mod rx;
pub mod stats;
mod tx;
pub mod wire;
pub mod xenbus;

pub use env::{CopyBuffer, Env, FramePort, Full, NetStore, RingFrames, StoreError, BUFFER_PAGES};
pub use fault::Fault;
pub use netback::{Netback, Progress, RxDrop, IDLE_TRIM_NS, RX_UNNOTIFIED_POLL_NS};
pub use queue::MCAST_MAX;
pub use ratelimit::RateLimit;
pub use stats::VifCounters;
pub use xenbus::{Config, XenbusState};
