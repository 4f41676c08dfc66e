//! [`Store`] over Keel's in-process xenstored (`keel-xenstored`), as a privileged local
//! client. Mapping a guest's store ring is the kernel's part and comes in through
//! [`StoreRings`]; everything else is xenstored's own in-process API.

use alloc::format;
use alloc::vec::Vec;

use keel_xenstored::{Access as XsAccess, LocalClient, Perm as XsPerm, Xenstored, XsError};

use crate::store::{Access, Perm, Store, StoreError};
use crate::toolstack::{Env, Toolstack, WATCH_TOKEN};

/// The kernel's part of introducing a guest to xenstored: map its store page (grant 1, or
/// the store gfn), reset it with `keel_xenstored::prepare`, remember it for
/// `Xenstored::service_ring`, bind the guest's store port; and undo all of that.
pub trait StoreRings {
    fn map(&mut self, domid: u16, store_gfn: u64, store_port: u32) -> Result<(), StoreError>;
    /// Idempotent.
    fn unmap(&mut self, domid: u16);
}

/// The toolstack's view of xenstored, lent for one call.
pub struct LocalStore<'a, R> {
    pub xenstored: &'a mut Xenstored,
    /// From `Xenstored::open_local`, kept for the toolstack's lifetime: its watches live on it.
    pub client: LocalClient,
    pub rings: &'a mut R,
}

impl From<XsError> for StoreError {
    fn from(e: XsError) -> Self {
        match e {
            XsError::ENOENT => StoreError::NotFound,
            XsError::EINVAL => StoreError::Invalid,
            XsError::ENOMEM | XsError::ENOSPC | XsError::E2BIG => StoreError::NoSpace,
            XsError::EEXIST => StoreError::Exists,
            other => StoreError::Other(format!("{other:?}")),
        }
    }
}

fn to_xs(p: &Perm) -> XsPerm {
    let access = match p.access {
        Access::None => XsAccess::None,
        Access::Read => XsAccess::Read,
        Access::Write => XsAccess::Write,
        Access::Both => XsAccess::Both,
    };
    XsPerm::new(p.domid, access)
}

impl<R: StoreRings> Store for LocalStore<'_, R> {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.xenstored.read(self.client, 0, path) {
            Ok(v) => Ok(Some(v)),
            Err(XsError::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError> {
        Ok(self.xenstored.write(self.client, 0, path, value)?)
    }

    fn mkdir(&mut self, path: &str) -> Result<(), StoreError> {
        Ok(self.xenstored.mkdir(self.client, 0, path)?)
    }

    fn rm(&mut self, path: &str) -> Result<(), StoreError> {
        match self.xenstored.rm(self.client, 0, path) {
            Ok(()) | Err(XsError::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), StoreError> {
        let perms: Vec<XsPerm> = perms.iter().map(to_xs).collect();
        Ok(self.xenstored.set_perms(self.client, 0, path, &perms)?)
    }

    fn introduce(&mut self, domid: u16, store_gfn: u64, store_port: u32) -> Result<(), StoreError> {
        self.rings.map(domid, store_gfn, store_port)?;
        self.xenstored
            .introduce_domain(domid, store_port)
            .map_err(|e| {
                self.rings.unmap(domid);
                e.into()
            })
    }

    fn release(&mut self, domid: u16) -> Result<(), StoreError> {
        let result = self.xenstored.release_domain(domid);
        self.rings.unmap(domid);
        Ok(result?)
    }

    fn domain_exited(&mut self, domid: u16) {
        self.xenstored.domain_shutdown(domid);
    }

    fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        Ok(self.xenstored.watch(self.client, path, token)?)
    }

    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        Ok(self.xenstored.unwatch(self.client, path, token)?)
    }
}

/// Hands the toolstack's pending xenstored watch events (on its own local client) to
/// [`Toolstack::on_watch`]; returns how many were delivered. Call it after anything that
/// may have changed the store (the guest rings' service, the toolstack's own calls).
pub fn deliver_watch_events<R: StoreRings, C: ?Sized, D: ?Sized>(
    toolstack: &mut Toolstack,
    env: &mut Env<'_, LocalStore<'_, R>, C, D>,
    now: u64,
) -> usize {
    let mut delivered = 0;
    while let Some(event) = env.store.xenstored.poll_event(env.store.client) {
        if event.token == WATCH_TOKEN {
            toolstack.on_watch(env, &event.path, now);
            delivered += 1;
        }
    }
    delivered
}
