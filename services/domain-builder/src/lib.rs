//! The PVH domain builder: what libxl and libxc do to turn a kernel, an initrd and a
//! command line into a paused Xen domain ready to run, for Keel's toolstack.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod elf_load;
pub mod guest_memory;
pub mod layout;
pub mod source;
pub mod start_info;
