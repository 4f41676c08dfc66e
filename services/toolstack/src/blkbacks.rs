//! The host's disk backends: one [`Blkback`] per guest vbd, started and stopped by the
//! toolstack through [`DiskBackends`] and served by the kernel's guest task.
//!
//! The toolstack calls [`DiskBackends`] while it holds the host (xenstored included), so
//! those calls only record what to do; [`Blkbacks::serve`], called by the guest task with
//! xenstored lent, runs it: a new device's `start` (features, `InitWait`), the watch events
//! of the devices' own xenstored connection (the frontend's state changes), each device's
//! rings and its VDI's completions, and the draining of stopped devices — a device that is
//! stopped with requests in flight is closed and kept until the storage has answered them,
//! so no completion ever lands in a buffer that is gone.
//!
//! Storage comes in through [`DiskTargets`] (the kernel opens a VDI as a
//! [`BlockTarget`]), ring pages through blkback's [`RingFrames`], grant copies through
//! [`GrantIo`]: the kernel's parts are small and this file holds the logic.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;

use keel_blkback::{
    Blkback, BlockTarget, Config, Env, Failure, GrantIo, PageWords, RingFrames,
    StoreError as BlkStoreError, Xenstore,
};
use keel_xen::evtchn::Port;
use keel_xen::hypercall::Hypervisor;
use keel_xenstored::{LocalClient, Xenstored, XsError};

use crate::devices::{BackendDisk, DiskBackendError, DiskBackends, DiskMedium};

/// Opens the storage behind a disk: the kernel's storage service.
pub trait DiskTargets {
    type Target: BlockTarget;
    /// The VDI `disk.medium` names, ready for requests. `user` tells this disk's requests
    /// apart on a shared queue (`domid << 16 | devid & 0xffff`).
    fn open(&mut self, disk: &BackendDisk<'_>, user: u32)
        -> Result<Self::Target, DiskBackendError>;
}

/// One served vbd.
struct Device<P, T> {
    blkback: Blkback<P>,
    target: T,
    /// `start` has run (the toolstack's call only queued it).
    started: bool,
    /// `close` has run (the device was stopped and drains).
    closed: bool,
}

impl<P, T: BlockTarget> Device<P, T> {
    /// The device and the environment it acts through, for one call.
    fn lend<'a, H: ?Sized, F>(
        &'a mut self,
        hv: &'a H,
        store: &'a mut DeviceStore<'_>,
        frames: &'a mut F,
        grants: &'a mut dyn GrantIo,
        now_us: u64,
    ) -> (&'a mut Blkback<P>, Env<'a, H, F>) {
        let env = Env {
            hv,
            frames,
            store,
            grants,
            target: &mut self.target,
            now_us,
        };
        (&mut self.blkback, env)
    }
}

/// Every blkback device of the host.
pub struct Blkbacks<P, K: DiskTargets> {
    targets: K,
    devices: BTreeMap<(u16, u32), Device<P, K::Target>>,
    /// Stopped devices whose storage requests are still in flight.
    draining: Vec<Device<P, K::Target>>,
    /// The devices' own xenstored connection (their watches live on it); opened at the
    /// first [`Blkbacks::serve`].
    client: Option<LocalClient>,
}

/// What one [`Blkbacks::serve`] call did. Its lists are grown with fallible allocation (a
/// guest's requests must not be able to abort dom0): when memory for them runs out, the
/// flags below say what is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisksServiced {
    /// A device has more to do now, or storage requests in flight whose completions only
    /// polling finds: call again soon.
    pub more: bool,
    /// Every event channel of every device, for the kernel to route to the guest task.
    pub ports: Vec<Port>,
    /// `ports` lacks some channels (no memory for the list): keep the channels routed as
    /// they are rather than unrouting the missing ones; `more` is set.
    pub ports_incomplete: bool,
    /// Devices that failed since the last call: (domid, devid, why).
    pub failures: Vec<(u16, u32, DiskFailure)>,
    /// Failures left out of `failures` (no memory for the list); each device still holds
    /// its own ([`Blkbacks::device`], `Blkback::failure`).
    pub failures_unlisted: usize,
}

/// Why a device stopped serving its guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskFailure {
    /// Its nodes could not be published in xenstore (`start`).
    Publish(BlkStoreError),
    /// The backend closed it (the reason is also in xenstore, as `xenbus_dev_fatal` writes it).
    Backend(Failure),
}

impl fmt::Display for DiskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskFailure::Publish(e) => write!(f, "publishing the backend: {e:?}"),
            DiskFailure::Backend(failure) => write!(f, "{failure:?}"),
        }
    }
}

impl DisksServiced {
    /// Lists a failure if there is memory for it, else counts it.
    fn failed(&mut self, domid: u16, devid: u32, why: DiskFailure) {
        if self.failures.try_reserve(1).is_ok() {
            self.failures.push((domid, devid, why));
        } else {
            self.failures_unlisted += 1;
        }
    }
}

impl<P, K> Blkbacks<P, K>
where
    P: Deref<Target = PageWords>,
    K: DiskTargets,
{
    pub fn new(targets: K) -> Self {
        Blkbacks {
            targets,
            devices: BTreeMap::new(),
            draining: Vec::new(),
            client: None,
        }
    }

    /// Devices served (not counting the draining ones).
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Stopped devices still waiting for their storage requests.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    /// The storage service the disks are opened on.
    pub fn targets(&self) -> &K {
        &self.targets
    }

    /// The storage of the stopped devices still draining.
    pub fn draining_targets_mut(&mut self) -> impl Iterator<Item = &mut K::Target> {
        self.draining.iter_mut().map(|d| &mut d.target)
    }

    /// The blkback of `(domid, devid)`, e.g. for its statistics.
    pub fn device(&self, domid: u16, devid: u32) -> Option<&Blkback<P>> {
        self.devices.get(&(domid, devid)).map(|d| &d.blkback)
    }

    /// Serves every device: starts new ones, hands them their watch events, moves their
    /// rings and completions, and drains stopped ones. `now_us` (monotonic) times the
    /// requests for the devices' latency statistics.
    pub fn serve<H, F>(
        &mut self,
        hv: &H,
        xenstored: &mut Xenstored,
        frames: &mut F,
        grants: &mut dyn GrantIo,
        now_us: u64,
    ) -> DisksServiced
    where
        H: Hypervisor + ?Sized,
        F: RingFrames<Page = P>,
    {
        let client = *self.client.get_or_insert_with(|| xenstored.open_local());
        let mut out = DisksServiced::default();
        let mut events: Vec<String> = Vec::new();
        // A token that finds no room in `events` must not be lost: then every device takes
        // a watch event (each re-reads the frontend's state; a spare one is harmless).
        let mut every_device_fired = false;
        while let Some(event) = xenstored.poll_event(client) {
            if events.contains(&event.token) {
                continue;
            }
            if events.try_reserve(1).is_ok() {
                events.push(event.token);
            } else {
                every_device_fired = true;
            }
        }
        for device in self.devices.values_mut() {
            let had_failed = device.blkback.failure().is_some();
            let (domid, devid) = (device.blkback.config().domid, device.blkback.config().devid);
            let fired = every_device_fired
                || events
                    .iter()
                    .any(|t| *t == device.blkback.config().watch_token);
            let first = !core::mem::replace(&mut device.started, true);
            let mut store = DeviceStore { xenstored, client };
            let (blkback, mut env) = device.lend(hv, &mut store, frames, grants, now_us);
            if first {
                match blkback.start(&mut env) {
                    Ok(progress) => out.more |= progress.more,
                    Err(e) => out.failed(domid, devid, DiskFailure::Publish(e)),
                }
            } else if fired {
                out.more |= blkback.on_watch(&mut env).more;
            }
            out.more |= blkback.poll(&mut env).more;
            // Storage completions come from polling (Keel's disks raise no interrupt), so
            // a device with requests in flight asks to be served again soon.
            out.more |= blkback.in_flight() > 0;
            if let (false, Some(failure)) = (had_failed, blkback.failure()) {
                out.failed(domid, devid, DiskFailure::Backend(failure.clone()));
            }
            if out.ports.try_reserve(blkback.port_count()).is_ok() {
                out.ports.extend(blkback.each_port());
            } else {
                out.ports_incomplete = true;
                out.more = true;
            }
        }
        self.draining.retain_mut(|device| {
            let mut store = DeviceStore { xenstored, client };
            let first = !core::mem::replace(&mut device.closed, true);
            let (blkback, mut env) = device.lend(hv, &mut store, frames, grants, now_us);
            if first {
                blkback.close(&mut env);
            }
            out.more |= blkback.poll(&mut env).more;
            let draining = blkback.in_flight() > 0;
            out.more |= draining;
            draining
        });
        out
    }
}

impl<P, K> DiskBackends for Blkbacks<P, K>
where
    P: Deref<Target = PageWords>,
    K: DiskTargets,
{
    fn start(&mut self, disk: &BackendDisk<'_>) -> Result<(), DiskBackendError> {
        if self.devices.contains_key(&(disk.domid, disk.devid)) {
            return Err(DiskBackendError::Failed(format!(
                "vbd {} of domain {} is already served",
                disk.devid, disk.domid
            )));
        }
        let config = Config {
            backend_path: String::from(disk.backend_path),
            frontend_path: String::from(disk.frontend_path),
            ..Config::vbd(disk.domid, disk.devid)
        };
        let blkback = Blkback::new(config)
            .map_err(|e| DiskBackendError::Failed(format!("blkback: {e:?}")))?;
        let user = (u32::from(disk.domid) << 16) | (disk.devid & 0xffff);
        let target = self.targets.open(disk, user)?;
        self.devices.insert(
            (disk.domid, disk.devid),
            Device {
                blkback,
                target,
                started: false,
                closed: false,
            },
        );
        Ok(())
    }

    fn change_medium(
        &mut self,
        domid: u16,
        devid: u32,
        _medium: Option<&DiskMedium>,
    ) -> Result<(), DiskBackendError> {
        // blkback serves one VDI for a device's life; a CD change while the guest runs
        // needs the frontend to re-read the medium, which Linux's blkfront does not do.
        Err(DiskBackendError::Failed(format!(
            "changing the medium of vbd {devid} of running domain {domid} is not supported"
        )))
    }

    fn stop(&mut self, domid: u16, devid: u32) {
        if let Some(device) = self.devices.remove(&(domid, devid)) {
            // Closed and drained at the next `serve`; the VDI stays open until then.
            self.draining.push(device);
        }
    }
}

/// blkback's xenstore over the devices' own privileged xenstored connection.
struct DeviceStore<'a> {
    xenstored: &'a mut Xenstored,
    client: LocalClient,
}

fn store_error(e: XsError) -> BlkStoreError {
    match e {
        XsError::ENOENT => BlkStoreError::NotFound,
        other => BlkStoreError::Other(format!("{other:?}")),
    }
}

impl Xenstore for DeviceStore<'_> {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, BlkStoreError> {
        match self.xenstored.read(self.client, 0, path) {
            Ok(v) => Ok(Some(v)),
            Err(XsError::ENOENT) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), BlkStoreError> {
        self.xenstored
            .write(self.client, 0, path, value)
            .map_err(store_error)
    }

    fn rm(&mut self, path: &str) -> Result<(), BlkStoreError> {
        match self.xenstored.rm(self.client, 0, path) {
            Ok(()) | Err(XsError::ENOENT) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    fn watch(&mut self, path: &str, token: &str) -> Result<(), BlkStoreError> {
        self.xenstored
            .watch(self.client, path, token)
            .map_err(store_error)
    }

    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), BlkStoreError> {
        match self.xenstored.unwatch(self.client, path, token) {
            Ok(()) | Err(XsError::ENOENT) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }
}
