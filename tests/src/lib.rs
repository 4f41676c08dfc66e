//! Host-side harness that boots the Keel image in QEMU and watches its serial console.
//!
//! A test describes a VM with the [`Machine`] builder (memory, accelerator, disks, NIC, kernel
//! command line, extra QEMU arguments), boots it, and waits for console lines with deadlines:
//!
//! ```no_run
//! use keel_tests::{Machine, Pattern};
//! use std::time::Duration;
//!
//! let vm = Machine::new("example").append("keel.log=debug").boot()?;
//! let ready = vm.wait_for(Pattern::starts_with("keel: ready"), Duration::from_secs(60))?;
//! # Ok::<(), keel_tests::HarnessError>(())
//! ```
//!
//! Every console line is logged to `target/keel/test-logs/<name>.log`; errors carry the last
//! lines of the console and that path. The QEMU process is always killed when the [`Vm`] is
//! dropped, also while a failing test unwinds.
//!
//! `cargo xtask` uses the same library, so `cargo xtask run` and `cargo xtask bench` build the
//! QEMU command line with the same code as the tests ([`qemu::VmConfig`]).

pub mod accel;
pub mod cache_lock;
pub mod console;
pub mod credentials;
pub mod emulator;
pub mod error;
pub mod guest;
pub mod guest_host;
pub mod image;
pub mod kernel_lines;
pub mod linux;
pub mod machine;
pub mod paths;
pub mod prereq;
pub mod python;
pub mod qemu;
pub mod reference;
pub mod reference_net;
pub mod triple_fault;
pub mod xen;
pub mod xen_stall;

use std::time::Duration;

/// How long a boot may take to reach `keel: ready`: generous, because TCG on a loaded
/// 2-core machine is slow.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(60);

pub use accel::{Accel, AccelChoice};
pub use console::Pattern;
pub use error::HarnessError;
pub use machine::{ConsoleLine, Machine, Vm};
pub use qemu::{DiskBus, NicModel};
