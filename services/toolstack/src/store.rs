//! What the toolstack needs from xenstored, as a trait the in-process xenstore daemon
//! implements for dom0 (privileged: permissions do not restrict it, quotas do not apply).

use alloc::string::String;
use alloc::vec::Vec;

/// One entry of a node's permission list (`n`, `r`, `w`, `b` followed by a domain id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub domid: u16,
    pub access: Access,
}

/// What a permission entry grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

impl Perm {
    pub const fn new(domid: u16, access: Access) -> Self {
        Perm { domid, access }
    }
}

/// Why a store operation failed, as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// `ENOENT`.
    NotFound,
    /// `EINVAL`, e.g. a malformed path.
    Invalid,
    /// `ENOMEM`, `E2BIG` or a quota.
    NoSpace,
    /// `EEXIST` (introducing a domain twice).
    Exists,
    /// Anything else, with the daemon's own name for it.
    Other(String),
}

/// The xenstore operations the toolstack issues as dom0.
///
/// Paths are absolute. `write` and `mkdir` create missing parents, which inherit their
/// parent's permissions (as xenstored does); `rm` removes a whole subtree and succeeds when
/// the node does not exist. `introduce` is `XS_INTRODUCE` (map the guest's store ring, bind
/// its port, fire `@introduceDomain`); `release` is `XS_RELEASE` (forget the connection,
/// its watches and transactions, fire `@releaseDomain`). Watches fire
/// [`Toolstack::on_watch`](crate::Toolstack::on_watch) through the glue, with the token given.
pub trait Store {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError>;
    fn mkdir(&mut self, path: &str) -> Result<(), StoreError>;
    fn rm(&mut self, path: &str) -> Result<(), StoreError>;
    fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), StoreError>;
    fn introduce(&mut self, domid: u16, store_gfn: u64, store_port: u32) -> Result<(), StoreError>;
    fn release(&mut self, domid: u16) -> Result<(), StoreError>;
    /// Xen reports the domain shut down: xenstored fires `@releaseDomain` (the C daemon
    /// finds this out itself on `VIRQ_DOM_EXC`; in Keel the toolstack owns that scan).
    fn domain_exited(&mut self, domid: u16);
    fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError>;
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError>;
}
