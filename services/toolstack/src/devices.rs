//! Guest disks: the xenstore nodes of a `vbd` device as libxl writes them, the disk backend
//! that serves it (behind [`DiskBackends`], which the kernel implements with blkback), and
//! the toolstack's side of attaching at start, hot-plug, hot-unplug and CD media changes.
//!
//! # Nodes (libxl's `libxl__device_disk_add`, `libxl__device_generic_add`)
//! Backend `/local/domain/0/backend/vbd/<domid>/<devid>`, dom0's and readable by the guest
//! (`[n0, r<domid>]`): `frontend`, `frontend-id`, `online = 1`, `state = 1`, `removable`,
//! `bootable`, `dev` (`xvda`), `type` (`vdi`: Keel's backends serve VDIs), `mode` (`r`/`w`),
//! `device-type` (`disk`/`cdrom`), `params` (the VDI's UUID; empty for an empty drive),
//! `discard-enable`. Frontend `/local/domain/<domid>/device/vbd/<devid>`, the guest's and
//! readable by dom0 (`[n<domid>, r0]`): `backend`, `backend-id = 0`, `state = 1`,
//! `virtual-device` (the devid), `device-type`, `trusted = 1`.
//!
//! # Who does what
//! The toolstack writes those nodes and tells the backend to start; the backend runs the
//! xenbus handshake with the frontend itself (features, `InitWait`, `Connected`) — the
//! toolstack never speaks the block protocol. Hot-unplug is libxl's: the toolstack writes
//! the backend's `online = 0` and `state = 5` (Closing); the frontend closes, the backend
//! sees it and goes `Closed` (6); the toolstack then stops the backend and removes both
//! directories (and the backend's error node, if it wrote one). A guest that does not close
//! within [`DETACH_TIMEOUT_NS`] is not waited for: the device is removed by force (as libxl
//! does after its timeout). Destroying the domain stops every backend and removes every
//! node.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::domain::Phase;
use crate::skeleton::{domain_path, SkeletonNode};
use crate::store::{Access, Perm, Store, StoreError};
use crate::toolstack::{CleanupProblem, Env, Event, EventKind, Toolstack, WATCH_TOKEN};

/// How long a hot-unplug waits for the guest to close the device (libxl's
/// `LIBXL_DESTROY_TIMEOUT`).
pub const DETACH_TIMEOUT_NS: u64 = 10_000_000_000;

/// xenbus `Closing`.
pub const XENBUS_CLOSING: &str = "5";
/// xenbus `Closed`.
pub const XENBUS_CLOSED: &str = "6";

/// Where a disk's data is: the storage manager's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMedium {
    pub sr_uuid: String,
    pub vdi_uuid: String,
}

/// One virtual block device of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vbd {
    /// Xen's virtual-device number (`202 << 8 | index << 4` for `xvd<a + index>`).
    pub devid: u32,
    /// The guest's device name (`xvda`).
    pub device: String,
    /// The VDI served; `None` for an empty CD drive.
    pub medium: Option<DiskMedium>,
    pub read_only: bool,
    pub cdrom: bool,
    pub bootable: bool,
}

/// A disk for the backend to serve: where its nodes are and what it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendDisk<'a> {
    pub domid: u16,
    pub devid: u32,
    /// The backend's directory (it writes its features and `state` there).
    pub backend_path: &'a str,
    /// The frontend's directory (it reads the ring references there).
    pub frontend_path: &'a str,
    pub medium: Option<&'a DiskMedium>,
    /// Refuse writes (`BLKIF_RSP_ERROR`) and advertise `VDISK_READONLY`.
    pub read_only: bool,
    /// Advertise `VDISK_CDROM | VDISK_REMOVABLE`.
    pub cdrom: bool,
}

/// Why a disk backend could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskBackendError {
    /// This host has no disk backend.
    Unavailable,
    /// The VDI (UUID) is not in the storage manager.
    NoSuchVdi(String),
    /// Anything else; the message says what.
    Failed(String),
}

/// The disk backends (blkback), as the toolstack drives them. The kernel implements it.
pub trait DiskBackends {
    /// Starts serving `disk`: its nodes exist (state 1); the backend takes the handshake
    /// from there. Returns promptly.
    fn start(&mut self, disk: &BackendDisk<'_>) -> Result<(), DiskBackendError>;
    /// A CD drive's medium changed (`None`: ejected); `params` is already rewritten.
    fn change_medium(
        &mut self,
        domid: u16,
        devid: u32,
        medium: Option<&DiskMedium>,
    ) -> Result<(), DiskBackendError>;
    /// Stops serving (unmaps the ring and grants, unbinds the channel, forgets the VDI).
    /// Idempotent; it must not touch the xenstore nodes (the toolstack removes them).
    fn stop(&mut self, domid: u16, devid: u32);
}

/// A host without disk backends: every start is refused with `Unavailable`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDiskBackends;

impl DiskBackends for NoDiskBackends {
    fn start(&mut self, _disk: &BackendDisk<'_>) -> Result<(), DiskBackendError> {
        Err(DiskBackendError::Unavailable)
    }
    fn change_medium(
        &mut self,
        _domid: u16,
        _devid: u32,
        _medium: Option<&DiskMedium>,
    ) -> Result<(), DiskBackendError> {
        Err(DiskBackendError::Unavailable)
    }
    fn stop(&mut self, _domid: u16, _devid: u32) {}
}

/// `/local/domain/0/backend/vbd/<domid>`: every vbd backend of a guest.
pub fn vbd_backend_root(domid: u16) -> String {
    format!("/local/domain/0/backend/vbd/{domid}")
}

/// A vbd's backend directory.
pub fn vbd_backend_path(domid: u16, devid: u32) -> String {
    format!("{}/{devid}", vbd_backend_root(domid))
}

/// Where a backend's fatal errors go (`xenbus_dev_fatal`: `error/<backend path>` under dom0's
/// home); removed with the device so that no node outlives it.
pub fn vbd_error_path(domid: u16, devid: u32) -> String {
    format!("/local/domain/0/error/backend/vbd/{domid}/{devid}")
}

/// Every vbd error node of a guest.
fn vbd_error_root(domid: u16) -> String {
    format!("/local/domain/0/error/backend/vbd/{domid}")
}

/// A vbd's frontend directory.
pub fn vbd_frontend_path(domid: u16, devid: u32) -> String {
    format!("{}/device/vbd/{devid}", domain_path(domid))
}

fn bit(b: bool) -> String {
    String::from(if b { "1" } else { "0" })
}

fn params(medium: Option<&DiskMedium>) -> String {
    medium.map(|m| m.vdi_uuid.clone()).unwrap_or_default()
}

/// The nodes of one vbd, in creation order (each directory before its values).
pub fn vbd_nodes(domid: u16, vbd: &Vbd) -> Vec<SkeletonNode> {
    let backend = vbd_backend_path(domid, vbd.devid);
    let frontend = vbd_frontend_path(domid, vbd.devid);
    let device_type = if vbd.cdrom { "cdrom" } else { "disk" };
    let mut nodes = vec![
        SkeletonNode {
            path: backend.clone(),
            value: None,
            perms: Some(vec![
                Perm::new(0, Access::None),
                Perm::new(domid, Access::Read),
            ]),
        },
        SkeletonNode {
            path: frontend.clone(),
            value: None,
            perms: Some(vec![
                Perm::new(domid, Access::None),
                Perm::new(0, Access::Read),
            ]),
        },
    ];
    let backend_values = [
        ("frontend", frontend.clone()),
        ("frontend-id", format!("{domid}")),
        ("online", bit(true)),
        ("removable", bit(vbd.cdrom)),
        ("bootable", bit(vbd.bootable)),
        ("dev", vbd.device.clone()),
        ("type", String::from("vdi")),
        ("mode", String::from(if vbd.read_only { "r" } else { "w" })),
        ("device-type", String::from(device_type)),
        ("params", params(vbd.medium.as_ref())),
        ("discard-enable", bit(!vbd.read_only)),
        // Last: a backend watching for its directory sees a complete one.
        ("state", String::from("1")),
    ];
    let frontend_values = [
        ("backend", backend.clone()),
        ("backend-id", String::from("0")),
        ("virtual-device", format!("{}", vbd.devid)),
        ("device-type", String::from(device_type)),
        ("trusted", bit(true)),
        ("state", String::from("1")),
    ];
    for (dir, values) in [
        (&backend, &backend_values[..]),
        (&frontend, &frontend_values[..]),
    ] {
        for (key, value) in values {
            nodes.push(SkeletonNode {
                path: format!("{dir}/{key}"),
                value: Some(value.clone()),
                perms: None,
            });
        }
    }
    nodes
}

/// Why a disk operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    NoSuchDomain(u16),
    /// The domain is shut down or being destroyed.
    NotLive(u16),
    /// The guest already has a device with this devid (or one still being removed).
    DevidInUse(u32),
    NoSuchDevice(u32),
    /// A medium change on a device that is not a CD drive.
    NotRemovable(u32),
    Store(StoreError),
    Backend(DiskBackendError),
}

/// A disk of a managed domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachedDisk {
    pub(crate) vbd: Vbd,
    /// Hot-unplug under way: when it is forced.
    pub(crate) detach_deadline: Option<u64>,
}

fn write_nodes<S: Store + ?Sized>(store: &mut S, nodes: &[SkeletonNode]) -> Result<(), StoreError> {
    for node in nodes {
        match &node.value {
            Some(v) => store.write(&node.path, v.as_bytes()),
            None => store.mkdir(&node.path),
        }?;
        if let Some(perms) = &node.perms {
            store.set_perms(&node.path, perms)?;
        }
    }
    Ok(())
}

fn state_path(domid: u16, devid: u32) -> String {
    format!("{}/state", vbd_backend_path(domid, devid))
}

/// Writes a vbd's nodes and starts its backend; on failure nothing of it is left.
pub(crate) fn plug<S, C, D>(
    env: &mut Env<'_, S, C, D>,
    domid: u16,
    vbd: &Vbd,
) -> Result<(), DeviceError>
where
    S: Store + ?Sized,
    C: ?Sized,
    D: ?Sized,
{
    let backend = vbd_backend_path(domid, vbd.devid);
    let frontend = vbd_frontend_path(domid, vbd.devid);
    let undo = |env: &mut Env<'_, S, C, D>| {
        let _ = env.store.rm(&backend);
        let _ = env.store.rm(&frontend);
    };
    if let Err(e) = write_nodes(env.store, &vbd_nodes(domid, vbd)) {
        undo(env);
        return Err(DeviceError::Store(e));
    }
    let disk = BackendDisk {
        domid,
        devid: vbd.devid,
        backend_path: &backend,
        frontend_path: &frontend,
        medium: vbd.medium.as_ref(),
        read_only: vbd.read_only,
        cdrom: vbd.cdrom,
    };
    if let Err(e) = env.disks.start(&disk) {
        undo(env);
        return Err(DeviceError::Backend(e));
    }
    Ok(())
}

/// Stops a vbd's backend and removes its nodes (problems are recorded, not fatal).
fn unplug_now<S, C, D>(
    env: &mut Env<'_, S, C, D>,
    domid: u16,
    disk: &AttachedDisk,
) -> Vec<CleanupProblem>
where
    S: Store + ?Sized,
    C: ?Sized,
    D: ?Sized,
{
    let devid = disk.vbd.devid;
    if disk.detach_deadline.is_some() {
        let _ = env.store.unwatch(&state_path(domid, devid), WATCH_TOKEN);
    }
    env.disks.stop(domid, devid);
    let mut problems = Vec::new();
    for path in [
        vbd_backend_path(domid, devid),
        vbd_frontend_path(domid, devid),
        vbd_error_path(domid, devid),
    ] {
        if let Err(e) = env.store.rm(&path) {
            problems.push(CleanupProblem::RemoveDevice(e));
        }
    }
    problems
}

/// Stops every backend of a domain being torn down and removes its backend directory (the
/// frontends go with `/local/domain/<domid>`).
pub(crate) fn unplug_all<S, C, D>(
    env: &mut Env<'_, S, C, D>,
    domid: u16,
    disks: &mut alloc::collections::BTreeMap<u32, AttachedDisk>,
) -> Vec<CleanupProblem>
where
    S: Store + ?Sized,
    C: ?Sized,
    D: ?Sized,
{
    for disk in disks.values() {
        if disk.detach_deadline.is_some() {
            let _ = env
                .store
                .unwatch(&state_path(domid, disk.vbd.devid), WATCH_TOKEN);
        }
        env.disks.stop(domid, disk.vbd.devid);
    }
    disks.clear();
    [vbd_backend_root(domid), vbd_error_root(domid)]
        .iter()
        .filter_map(|path| env.store.rm(path).err())
        .map(CleanupProblem::RemoveDevice)
        .collect()
}

impl Toolstack {
    /// Hot-plugs a disk into a live domain.
    pub fn attach_disk<S, C, D>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        vbd: Vbd,
    ) -> Result<(), DeviceError>
    where
        S: Store + ?Sized,
        C: ?Sized,
        D: ?Sized,
    {
        let m = self
            .domains
            .get_mut(&domid)
            .ok_or(DeviceError::NoSuchDomain(domid))?;
        let live = matches!(
            m.domain.phase(),
            Phase::Active | Phase::ShutdownRequested { .. } | Phase::ShutdownAcknowledged { .. }
        );
        if !live {
            return Err(DeviceError::NotLive(domid));
        }
        if m.disks.contains_key(&vbd.devid) {
            return Err(DeviceError::DevidInUse(vbd.devid));
        }
        plug(env, domid, &vbd)?;
        m.disks.insert(
            vbd.devid,
            AttachedDisk {
                vbd,
                detach_deadline: None,
            },
        );
        Ok(())
    }

    /// Hot-unplugs a disk: the handshake (module docs), or at once when `force`. A
    /// `DiskDetached` event follows when the device is gone.
    pub fn detach_disk<S, C, D>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        devid: u32,
        force: bool,
        now: u64,
    ) -> Result<(), DeviceError>
    where
        S: Store + ?Sized,
        C: ?Sized,
        D: ?Sized,
    {
        let m = self
            .domains
            .get_mut(&domid)
            .ok_or(DeviceError::NoSuchDomain(domid))?;
        let disk = m
            .disks
            .get_mut(&devid)
            .ok_or(DeviceError::NoSuchDevice(devid))?;
        if !force {
            if disk.detach_deadline.is_some() {
                return Ok(());
            }
            let backend = vbd_backend_path(domid, devid);
            env.store
                .write(&format!("{backend}/online"), b"0")
                .map_err(DeviceError::Store)?;
            env.store
                .write(&state_path(domid, devid), XENBUS_CLOSING.as_bytes())
                .map_err(DeviceError::Store)?;
            disk.detach_deadline = Some(now.saturating_add(DETACH_TIMEOUT_NS));
            // Without the watch the backend's Closed is still seen, by `poll`.
            let _ = env.store.watch(&state_path(domid, devid), WATCH_TOKEN);
            return Ok(());
        }
        self.finish_detach(env, domid, devid, true);
        Ok(())
    }

    /// Changes a CD drive's medium: rewrites `params` and tells the backend.
    pub fn change_medium<S, C, D>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        devid: u32,
        medium: Option<DiskMedium>,
    ) -> Result<(), DeviceError>
    where
        S: Store + ?Sized,
        C: ?Sized,
        D: ?Sized,
    {
        let m = self
            .domains
            .get_mut(&domid)
            .ok_or(DeviceError::NoSuchDomain(domid))?;
        let disk = m
            .disks
            .get_mut(&devid)
            .ok_or(DeviceError::NoSuchDevice(devid))?;
        if !disk.vbd.cdrom {
            return Err(DeviceError::NotRemovable(devid));
        }
        env.store
            .write(
                &format!("{}/params", vbd_backend_path(domid, devid)),
                params(medium.as_ref()).as_bytes(),
            )
            .map_err(DeviceError::Store)?;
        env.disks
            .change_medium(domid, devid, medium.as_ref())
            .map_err(DeviceError::Backend)?;
        disk.vbd.medium = medium;
        Ok(())
    }

    /// The disks of a domain (attached or being detached).
    pub fn disks(&self, domid: u16) -> Vec<Vbd> {
        self.domains
            .get(&domid)
            .map(|m| m.disks.values().map(|d| d.vbd.clone()).collect())
            .unwrap_or_default()
    }

    /// Removes a device now and reports it.
    fn finish_detach<S, C, D>(
        &mut self,
        env: &mut Env<'_, S, C, D>,
        domid: u16,
        devid: u32,
        forced: bool,
    ) where
        S: Store + ?Sized,
        C: ?Sized,
        D: ?Sized,
    {
        let Some(m) = self.domains.get_mut(&domid) else {
            return;
        };
        let Some(disk) = m.disks.remove(&devid) else {
            return;
        };
        let problems = unplug_now(env, domid, &disk);
        let event = Event {
            domid,
            uuid: *m.domain.uuid(),
            kind: EventKind::DiskDetached {
                devid,
                forced,
                problems,
            },
        };
        self.events.push_back(event);
    }

    /// A watch fired on `path`: a detaching disk's backend `state`.
    pub(crate) fn on_disk_watch<S, C, D>(&mut self, env: &mut Env<'_, S, C, D>, path: &str)
    where
        S: Store + ?Sized,
        C: ?Sized,
        D: ?Sized,
    {
        let target = self.domains.iter().find_map(|(&domid, m)| {
            m.disks
                .values()
                .find(|d| d.detach_deadline.is_some() && state_path(domid, d.vbd.devid) == path)
                .map(|d| (domid, d.vbd.devid))
        });
        if let Some((domid, devid)) = target {
            self.check_detach(env, domid, devid);
        }
    }

    /// Finishes a detach once the backend is Closed (or its directory is gone).
    fn check_detach<S, C, D>(&mut self, env: &mut Env<'_, S, C, D>, domid: u16, devid: u32)
    where
        S: Store + ?Sized,
        C: ?Sized,
        D: ?Sized,
    {
        match env.store.read(&state_path(domid, devid)) {
            Ok(Some(state)) if state != XENBUS_CLOSED.as_bytes() => {}
            // Closed, or gone: done. A failed read: the deadline still applies.
            Ok(_) => self.finish_detach(env, domid, devid, false),
            Err(_) => {}
        }
    }

    /// Timers of hot-unplugs: re-reads each backend's state, forces the overdue ones.
    pub(crate) fn poll_disks<S, C, D>(&mut self, env: &mut Env<'_, S, C, D>, now: u64)
    where
        S: Store + ?Sized,
        C: ?Sized,
        D: ?Sized,
    {
        let detaching: Vec<(u16, u32, u64)> = self
            .domains
            .iter()
            .flat_map(|(&domid, m)| {
                m.disks
                    .values()
                    .filter_map(move |d| d.detach_deadline.map(|t| (domid, d.vbd.devid, t)))
            })
            .collect();
        for (domid, devid, deadline) in detaching {
            self.check_detach(env, domid, devid);
            let still = self
                .domains
                .get(&domid)
                .is_some_and(|m| m.disks.contains_key(&devid));
            if still && now >= deadline {
                self.finish_detach(env, domid, devid, true);
            }
        }
    }

    /// The earliest hot-unplug deadline.
    pub(crate) fn next_disk_deadline(&self) -> Option<u64> {
        self.domains
            .values()
            .flat_map(|m| m.disks.values().filter_map(|d| d.detach_deadline))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xvdb() -> Vbd {
        Vbd {
            devid: 51728,
            device: "xvdb".into(),
            medium: Some(DiskMedium {
                sr_uuid: "sr".into(),
                vdi_uuid: "0f0e0d0c-0000-4000-8000-000000000001".into(),
            }),
            read_only: false,
            cdrom: false,
            bootable: true,
        }
    }

    fn value<'a>(nodes: &'a [SkeletonNode], path: &str) -> &'a str {
        nodes
            .iter()
            .find(|n| n.path == path)
            .and_then(|n| n.value.as_deref())
            .unwrap_or_else(|| panic!("no value at {path}"))
    }

    #[test]
    fn nodes_are_libxls() {
        let nodes = vbd_nodes(7, &xvdb());
        let be = "/local/domain/0/backend/vbd/7/51728";
        let fe = "/local/domain/7/device/vbd/51728";
        assert_eq!(value(&nodes, &format!("{be}/frontend")), fe);
        assert_eq!(value(&nodes, &format!("{be}/frontend-id")), "7");
        assert_eq!(value(&nodes, &format!("{be}/online")), "1");
        assert_eq!(value(&nodes, &format!("{be}/state")), "1");
        assert_eq!(value(&nodes, &format!("{be}/removable")), "0");
        assert_eq!(value(&nodes, &format!("{be}/bootable")), "1");
        assert_eq!(value(&nodes, &format!("{be}/dev")), "xvdb");
        assert_eq!(value(&nodes, &format!("{be}/mode")), "w");
        assert_eq!(value(&nodes, &format!("{be}/device-type")), "disk");
        assert_eq!(
            value(&nodes, &format!("{be}/params")),
            "0f0e0d0c-0000-4000-8000-000000000001"
        );
        assert_eq!(value(&nodes, &format!("{be}/discard-enable")), "1");
        assert_eq!(value(&nodes, &format!("{fe}/backend")), be);
        assert_eq!(value(&nodes, &format!("{fe}/backend-id")), "0");
        assert_eq!(value(&nodes, &format!("{fe}/virtual-device")), "51728");
        assert_eq!(value(&nodes, &format!("{fe}/device-type")), "disk");
        assert_eq!(value(&nodes, &format!("{fe}/state")), "1");
        // Permissions: backend dom0's readable by the guest, frontend the guest's.
        let perms = |p: &str| nodes.iter().find(|n| n.path == p).unwrap().perms.clone();
        assert_eq!(
            perms(be),
            Some(vec![Perm::new(0, Access::None), Perm::new(7, Access::Read)])
        );
        assert_eq!(
            perms(fe),
            Some(vec![Perm::new(7, Access::None), Perm::new(0, Access::Read)])
        );
        // The backend's state is its last value.
        let last_backend = nodes.iter().rposition(|n| n.path.starts_with(be)).unwrap();
        assert_eq!(nodes[last_backend].path, format!("{be}/state"));
    }

    #[test]
    fn a_read_only_empty_cd_drive() {
        let cd = Vbd {
            devid: 51760,
            device: "xvdd".into(),
            medium: None,
            read_only: true,
            cdrom: true,
            bootable: false,
        };
        let nodes = vbd_nodes(3, &cd);
        let be = "/local/domain/0/backend/vbd/3/51760";
        assert_eq!(value(&nodes, &format!("{be}/mode")), "r");
        assert_eq!(value(&nodes, &format!("{be}/device-type")), "cdrom");
        assert_eq!(value(&nodes, &format!("{be}/removable")), "1");
        assert_eq!(value(&nodes, &format!("{be}/params")), "");
        assert_eq!(value(&nodes, &format!("{be}/discard-enable")), "0");
        assert_eq!(
            value(&nodes, "/local/domain/3/device/vbd/51760/device-type"),
            "cdrom"
        );
    }
}
