//! The host's network fabric (issue 11): Keel's virtual switch with an output queue per
//! port, so whichever task receives a frame (the network task from the NIC and the
//! management stack, the guest task from a VIF) switches it, and each port's owner drains
//! what was switched to it.
//!
//! - [`Fabric`]: the switch, the queues, the management stack's port ([`keel_vswitch::local_link`])
//!   and the table's ageing. The kernel shares one ([`SharedFabric`]) between its tasks.
//! - [`netbacks::Netbacks`]: one netback per guest VIF with its switch port, and the XenAPI's
//!   `NetworkBackend` (bridges are the switch's networks).
//!
//! See docs/architecture.md ("Network data path").

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod fabric;
pub mod netbacks;

pub use fabric::{Fabric, FabricError, SharedFabric, AGE_INTERVAL_MS, UPLINK_QUEUE, VIF_QUEUE};
