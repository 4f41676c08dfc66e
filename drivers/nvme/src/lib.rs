//! Keel's NVMe driver.
//!
//! [`Controller::start`] resets and enables a controller through its registers
//! ([`Registers`]) with queues in DMA memory ([`Hal`]), and identifies it and its namespaces.
//! [`NvmeDisk::open`] creates an I/O queue pair and exposes one namespace as a
//! [`keel_block::BlockDevice`]: up to the queue depth of requests outstanding, completions
//! reaped by polling in whatever order the controller finishes them, PRP lists for transfers
//! beyond two pages, failed commands decoded into a typed [`Status`] (and a
//! [`keel_block::BlockError`] for the caller), transient failures retried once, and a
//! controller that reports a fatal status (CSTS.CFS) reset and its outstanding commands
//! resubmitted.
//!
//! Submissions are announced with one doorbell write per batch (when the caller next polls),
//! not one per command: under virtualisation each register write is a VM exit.
//!
//! Interrupts are not used yet: Keel has no MSI-X setup, so completions are polled.
//!
//! Module map: `hal` (what the machine provides), `regs` (controller registers), `command`
//! (queue entries), `status` (completion status), `identify` (Identify data), `prp` (data
//! pointers), `mem` (DMA memory access), `queue` (rings), `controller` (bring-up, admin
//! commands), `device` (the block device).

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod command;
mod controller;
mod device;
mod error;
mod hal;
pub mod identify;
mod mem;
pub mod prp;
mod queue;
pub mod regs;
mod status;

pub use controller::Controller;
pub use device::{DiskOptions, DiskStats, ErrorRecord, NvmeDisk, DEFAULT_QUEUE_ENTRIES};
pub use error::{NvmeError, Waiting};
pub use hal::{DmaRegion, Hal, Registers, PAGE_SIZE};
pub use identify::{ControllerIdentity, NamespaceIdentity};
pub use status::{Status, StatusCode};
