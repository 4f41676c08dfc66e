//! xenstored inside Keel: the xenstore protocol as Xen 4.17's C daemon serves it, as a
//! sans-I/O state machine. Keel's own services call it in-process; each guest is served over
//! its store ring page and event channel by the kernel glue, which hands pages to
//! [`Xenstored::service_ring`]. See `docs/xenstored.md`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod args;
mod connection;
mod daemon;
mod local;
pub mod path;
pub mod perms;
pub mod quota;
pub mod ring;
mod transaction;
pub mod tree;
mod view;

pub use connection::{CutOff, WatchEvent};
pub use daemon::{
    DomainUsage, HandleError, LocalClient, Xenstored, DOMID_FIRST_RESERVED, DOMID_SELF,
    INTRODUCE_DOMAIN, RELEASE_DOMAIN,
};
pub use keel_xen::xenstore_wire::XsError;
pub use perms::{Access, Caller, Perm, Perms, Rights};
pub use quota::Quotas;
pub use ring::{prepare, RingActivity, RingPage};
