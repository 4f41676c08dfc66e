//! Keel's toolstack: a guest's lifecycle around the domain builder, as libxl and xapi run
//! it — the xenstore skeleton, introduction to xenstored, the console backend, disks (`vbd`
//! devices, served by [`DiskBackends`]: attached at start, hot-plugged and unplugged), unpause;
//! clean shutdown through `control/shutdown` with the guest's acknowledgement; hard
//! shutdown; death detection on `VIRQ_DOM_EXC`; cleanup on destroy. See docs/guests.md,
//! "Guest lifecycle" and "Disks".
//!
//! Host-testable: xenstored, the builder and the console backend are reached through the
//! small traits in [`store`] and [`builder`], Xen through [`DomainControl`] (real:
//! [`XenControl`] over keel-xen's domctl wrappers). Time is given by the caller.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod blkbacks;
pub mod builder;
pub mod console;
pub mod control;
pub mod devices;
pub mod domain;
pub mod guest_page;
pub mod host;
pub mod pvh;
pub mod skeleton;
pub mod start_times;
pub mod store;
pub mod toolstack;
pub mod xenapi;
pub mod xenstored;

pub use builder::{Builder, BuiltDomain, ConsoleBackend};
pub use console::{ConsoleAttachError, ConsolePages, Consoles};
pub use control::{DestroyProgress, DomainControl, XenControl};
pub use devices::{
    BackendDisk, DeviceError, DiskBackendError, DiskBackends, DiskMedium, NoDiskBackends, Vbd,
};
pub use domain::{Domain, ExitReason, Phase, ShutdownFailure, ShutdownKind, StateError, Timeouts};
pub use guest_page::{GrantMapper, GuestPage, GuestPageError, MapFrames, MappedPages};
pub use host::{guests, BuildFailure, Clocks, Serviced, SharedHost, XenHost, MAX_PREPARED_STARTS};
pub use pvh::{PvhBuilder, PvhError};
pub use skeleton::XenstoreDataError;
pub use store::{Access, Perm, Store, StoreError};
pub use toolstack::{
    CleanupProblem, Env, Event, EventKind, LifecycleError, StartError, StartRequest, Toolstack,
    WATCH_TOKEN,
};
pub use xenapi::{report, take_reports, GuestHost, Guests, Report};
pub use xenstored::{deliver_watch_events, LocalStore, StoreRings};
