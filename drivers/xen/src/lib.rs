//! Keel's Xen layer: the hypercall ABI of Xen 4.17 (x86_64) and the guest-side protocols a
//! PVH dom0 builds on (pvclock, 2-level event channels, v1 grant tables, shared rings,
//! console, xenstore wire format), all host-testable.
//!
//! The kernel supplies only the hypercall instruction (an implementation of
//! [`hypercall::Hypervisor`]), raw CPUID for [`cpuid::detect`], the upcall interrupt
//! vector, and mapped memory for shared_info, grant frames and rings. See `README.md`.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod console;
pub mod control;
pub mod cpuid;
pub mod domctl;
pub mod error;
pub mod evtchn;
pub mod evtchn_dispatch;
pub mod frames;
pub mod grant_access;
pub mod grant_table;
pub mod host;
pub mod hvm;
pub mod hvm_save;
pub mod hypercall;
pub mod memory;
pub mod physdev;
pub mod requirements;
pub mod ring;
pub mod sched;
pub mod shared_info;
pub mod sysctl;
pub mod time;
pub mod vcpu;
pub mod version;
pub mod xenbus;
pub mod xenstore_ring;
pub mod xenstore_wire;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use error::{GntStatus, XenError};
pub use hypercall::Hypervisor;
