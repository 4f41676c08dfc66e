//! Wiring of guests' disks: `keel-toolstack`'s [`Blkbacks`] over this machine's hole frames
//! (ring pages), grant copies from Keel's identity-mapped memory, and the storage service's
//! VDIs ([`VdiTarget`]). The guest task serves them (`guests.rs`); the toolstack starts and
//! stops them through the XenAPI's VBDs.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use core::cell::RefCell;

use keel_blkback::{BlockTarget, IdentityMapped, PageWords, RingFrames, XenGrantCopy};
use keel_domain_builder::HoleFrames;
use keel_repositories::{parse_uuid, VdiTarget};
use keel_storage::Uuid;
use keel_toolstack::blkbacks::{Blkbacks, DiskTargets, DisksServiced};
use keel_toolstack::devices::{BackendDisk, DiskBackendError, DiskBackends, DiskMedium};
use keel_xen::grant_table::GrantRef;
use keel_xen::hypercall::PAGE_SIZE;
use keel_xenstored::Xenstored;

use super::holes::KernelHoles;
use super::hypercall::Xen;
use crate::storage::{Disk, SharedRepositories};

/// The host's blkback devices, shared by the toolstack (which starts and stops them) and
/// the guest task (which serves them).
pub type SharedDisks = Rc<RefCell<Blkbacks<&'static PageWords, Vdis>>>;

/// Dom0 frames for guests' block rings: hole frames, one per ring page.
pub struct DiskFrames;

impl RingFrames for DiskFrames {
    type Page = &'static PageWords;

    fn allocate(&mut self) -> Option<u64> {
        KernelHoles.allocate(1)
    }

    fn free(&mut self, gfn: u64) {
        KernelHoles.free(gfn);
    }

    fn view(&self, gfn: u64, _domid: u16, _gref: GrantRef) -> &'static PageWords {
        const _: () = assert!(core::mem::size_of::<PageWords>() == PAGE_SIZE);
        // SAFETY: `gfn` came from `allocate` (an identity-mapped hole frame of our own) and
        // the frontend's ring page is grant-mapped there now; a page of `AtomicU32`s is
        // valid for any content the guest writes. blkback drops the view before it unmaps
        // the grant and frees the frame.
        unsafe { &*((gfn * PAGE_SIZE as u64) as *const PageWords) }
    }
}

/// The storage service as the disk backends open VDIs on it.
pub struct Vdis {
    repositories: Option<SharedRepositories>,
    /// The (SR, VDI) each served device opened, for the metering's disk sizes.
    opened: RefCell<BTreeMap<(u16, u32), (Uuid, Uuid)>>,
}

impl Vdis {
    /// The devids of domain `domid`'s disks, with the virtual size and the bytes used of
    /// each one's VDI (0, 0 if it cannot be read).
    pub fn disks_of(&self, domid: u16) -> alloc::vec::Vec<(u32, u64, u64)> {
        let opened = self.opened.borrow();
        let repositories = self.repositories.as_ref().map(|r| r.borrow());
        opened
            .range((domid, 0)..=(domid, u32::MAX))
            .map(|(&(_, devid), &(sr, vdi))| {
                let info = repositories
                    .as_ref()
                    .and_then(|r| r.sr(sr)?.vdi_info(vdi).ok());
                let sizes = info.map_or((0, 0), |i| (i.virtual_size, i.physical_utilisation));
                (devid, sizes.0, sizes.1)
            })
            .collect()
    }
}

impl DiskTargets for Vdis {
    type Target = VdiTarget<Disk>;

    fn open(
        &mut self,
        disk: &BackendDisk<'_>,
        user: u32,
    ) -> Result<Self::Target, DiskBackendError> {
        let Some(repositories) = &self.repositories else {
            return Err(DiskBackendError::Failed("this host has no storage".into()));
        };
        let Some(DiskMedium { sr_uuid, vdi_uuid }) = disk.medium else {
            return Err(DiskBackendError::Failed(format!(
                "vbd {} of domain {} has no medium",
                disk.devid, disk.domid
            )));
        };
        let no_vdi = || DiskBackendError::NoSuchVdi(vdi_uuid.clone());
        let (Some(sr), Some(vdi)) = (parse_uuid(sr_uuid), parse_uuid(vdi_uuid)) else {
            return Err(no_vdi());
        };
        let exists = repositories
            .borrow()
            .sr(sr)
            .is_some_and(|sr| sr.vdi_info(vdi).is_ok());
        if !exists {
            return Err(no_vdi());
        }
        let target = VdiTarget::new(repositories.clone(), sr, vdi, user);
        self.opened
            .borrow_mut()
            .insert((disk.domid, disk.devid), (sr, vdi));
        log::info!(
            "disks: domain {} vbd {} serves VDI {vdi_uuid} ({} sectors)",
            disk.domid,
            disk.devid,
            target.geometry().sectors
        );
        Ok(target)
    }
}

/// The disk backends, for `XenHost::set_disk_backends`: the toolstack's calls go to the
/// shared set.
struct Backends(SharedDisks);

impl DiskBackends for Backends {
    fn start(&mut self, disk: &BackendDisk<'_>) -> Result<(), DiskBackendError> {
        self.0.borrow_mut().start(disk)
    }

    fn change_medium(
        &mut self,
        domid: u16,
        devid: u32,
        medium: Option<&DiskMedium>,
    ) -> Result<(), DiskBackendError> {
        self.0.borrow_mut().change_medium(domid, devid, medium)
    }

    fn stop(&mut self, domid: u16, devid: u32) {
        let mut disks = self.0.borrow_mut();
        disks.stop(domid, devid);
        disks.targets().opened.borrow_mut().remove(&(domid, devid));
    }
}

/// The host's disk backends over `repositories` (none: every disk is refused), and the
/// toolstack's handle on them.
pub fn new(repositories: Option<SharedRepositories>) -> (SharedDisks, Box<dyn DiskBackends>) {
    let disks = Rc::new(RefCell::new(Blkbacks::new(Vdis {
        repositories,
        opened: RefCell::new(BTreeMap::new()),
    })));
    let backends = Box::new(Backends(disks.clone()));
    (disks, backends)
}

/// Serves every disk once, with xenstored lent by the toolstack's host.
pub fn serve(disks: &SharedDisks, xenstored: &mut Xenstored) -> DisksServiced {
    static XEN: Xen = Xen;
    let mut grants = XenGrantCopy {
        hv: &XEN,
        local: IdentityMapped,
    };
    let now_us = crate::time::since_entry_ns() / 1000;
    disks
        .borrow_mut()
        .serve(&XEN, xenstored, &mut DiskFrames, &mut grants, now_us)
}
