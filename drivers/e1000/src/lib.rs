//! Keel's driver for Intel gigabit NICs: the 82540EM (QEMU's `e1000`) and the 82574L (QEMU's
//! `e1000e`), the NICs a datacentre host typically PXE-boots on.
//!
//! [`E1000::start`] resets the controller, takes the station address from Receive Address 0
//! (or the EEPROM), sets the link up and starts one receive and one transmit ring of legacy
//! descriptors, which both parts support. The started controller is a
//! [`keel_netdev::NetDevice`], so the management stack runs on it unchanged. Interrupts stay
//! masked; the driver is polled, and polling an idle ring reads memory, not registers.
//!
//! Under Xen the device sits behind the platform IOMMU; the driver hands it the bus
//! addresses its [`Hal`] reports, which the kernel makes dom0's physical addresses (what the
//! IOMMU maps), as for every other device.
//!
//! Module map: `hal` (what the machine provides), `regs` (register offsets and fields),
//! `model` (which parts, and where they differ), `descriptor` (legacy descriptor layout),
//! `mem` (DMA memory access), `mac` (station address, EEPROM reads), `rx` and `tx` (the
//! rings), `device` (bring-up and the `NetDevice`).

#![cfg_attr(not(test), no_std)]

mod descriptor;
mod device;
mod error;
mod hal;
mod mac;
mod mem;
mod model;
pub mod regs;
mod rx;
mod tx;

pub use descriptor::{
    RX_ERRORS_FATAL, RX_STATUS_EOP, STATUS_DD, STATUS_OFFSET, TX_CMD_EOP, TX_CMD_IFCS, TX_CMD_RS,
};
pub use device::{Options, E1000};
pub use error::E1000Error;
pub use hal::{DmaRegion, Hal, Registers, PAGE_SIZE};
pub use model::Model;
pub use rx::RETURN_BATCH;
