//! The PVH domain builder: what libxl and libxc do to turn a kernel, an initrd and a
//! command line into a paused Xen domain ready to run, for Keel's toolstack.
//!
//! [`build_pvh`] is the entry point. The kernel supplies dom0's hole frames
//! ([`HoleFrames`]) and the hypercall ([`keel_xen::Hypervisor`]); kernel and initrd bytes
//! come from an [`ImageSource`]. See `docs/guests.md`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod build;
pub mod elf_load;
pub mod guest_memory;
pub mod gzip;
pub mod kernel_image;
pub mod kernel_stream;
pub mod layout;
pub mod pvh_build;
pub mod source;
pub mod start_info;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use build::{
    build_pvh, BuildError, BuildOptions, BuiltDomain, ConfigError, DomainConfig, FeedError, Step,
};
pub use guest_memory::{HoleFrames, MapError};
pub use kernel_image::KernelError;
pub use pvh_build::{PvhBuild, PROBE_BYTES};
pub use source::{BytesSource, ImageSource, SourceError};
