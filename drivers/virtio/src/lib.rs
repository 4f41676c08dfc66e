//! virtio devices through the `virtio-drivers` crate.
//!
//! `virtio-drivers` owns the virtqueues and the device protocols; this crate connects it to
//! Keel: its PCI configuration access goes through our [`keel_pci::ConfigSpace`], and its
//! devices are exposed through Keel's device interfaces ([`keel_netdev::NetDevice`], …). The
//! kernel supplies the DMA side as a `virtio_drivers::Hal`.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod access_platform;
mod blk;
mod net;
mod pci;

pub use access_platform::{PlatformTransport, ACCESS_PLATFORM};
pub use blk::VirtioBlk;
pub use net::VirtioNet;
pub use pci::{open_transport, Transport, TransportError};
pub use virtio_drivers::{BufferDirection, Hal, PhysAddr};
