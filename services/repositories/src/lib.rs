//! The storage service's kernel-independent half.
//!
//! The kernel finds disks and starts their drivers; this crate decides what to do with each
//! disk ([`provision`]: attach, format when blank or asked to, otherwise refuse and leave it
//! untouched) and serves the attached SRs to the XenAPI ([`Repositories`], a
//! [`keel_xenapi::StorageBackend`]). [`bench`] is the raw-disk benchmark the kernel runs for
//! `cargo xtask bench storage`.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod backend;
pub mod bench;
mod provision;
mod vdi_target;

pub use backend::{parse_uuid, storage_error, Repositories, Repository};
pub use provision::{provision, Provisioned, Refusal};
pub use vdi_target::VdiTarget;
