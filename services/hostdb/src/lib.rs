//! The host database on disk: every object the XenAPI holds (VMs and everything else clients
//! create) survives a host reboot and a power cut at any write.
//!
//! - [`Database`] / [`Record`] / [`FieldValue`]: generic records (class → ref → field →
//!   value), independent of the XenAPI crate; the caller maps its objects onto them.
//! - [`codec`]: a compact, canonical, versioned binary encoding whose decoder is total and
//!   bounded.
//! - [`HostDb`]: two alternating checksummed slots in a [`DbVolume`]; a save is durable when
//!   it returns, and a load finds the last acknowledged database or the one being saved.
//! - [`SrVolume`]: the volume as one reserved VDI inside a keel-storage SR.
//! - [`apply_host_boot`]: what a host boot does to the loaded VMs.
//!
//! Format and integration: docs/hostdb.md.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod boot;
pub mod codec;
mod slot;
mod sr_volume;
mod store;
mod value;
mod volume;

pub use boot::{apply_host_boot, BootPlan, AUTO_POWERON_KEY, NULL_REF};
pub use codec::{DecodeError, EncodeError};
pub use slot::{SlotLayout, SlotProblem, SlotState, FORMAT_VERSION, HEADER_LEN, MAX_SLOT_BYTES};
pub use sr_volume::{
    find_database_vdi, find_or_create_database_vdi, is_host_database, LocateError, Located,
    SrVolume, DEFAULT_VOLUME_BYTES, VDI_NAME,
};
pub use store::{HostDb, HostDbError, Loaded, NoDatabase, Opened, SaveReport};
pub use value::{Database, FieldValue, Record};
pub use volume::{DbVolume, BLOCK};
