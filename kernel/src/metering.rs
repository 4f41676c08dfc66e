//! Wiring of the metering (`keel-metering`, docs/metering.md): a task samples the host and
//! every running VM every 5 s through keel-xen's wrappers and feeds the RRDs and the usage
//! ledger; the management task hands over what only the XenAPI knows (which VM runs as which
//! domain, under which name and tags; destroyed VMs) and serves the routes and data source
//! calls from the same [`Meters`].
//!
//! Figures: host CPU busy time = Xen's system time − each physical CPU's idle time
//! (`XEN_SYSCTL_getcpuinfo`); host memory from physinfo; per domain, each vCPU's running time
//! (`XEN_DOMCTL_getvcpuinfo`) and `tot_pages` (`getdomaininfo`), the target from the VM
//! record. Dom0's `memory` is Keel's heap in use (its target: the pages Xen gave dom0).
//! Disk and network figures come from a [`DeviceCounters`] ([`MeteringService::set_devices`]):
//! under Xen, [`GuestDevices`] reads blkback's per-device statistics and the VDIs' sizes,
//! netback's per-VIF counters and the switch's uplink counters (the PIFs).
//!
//! The meters are made at the first [`MeteringService::sync`] (they need the host's uuid,
//! which the XenAPI holds); the RRD snapshot is read back then and saved every 5 minutes.

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use keel_executor::Handle;
use keel_hostnet::netbacks::SharedNetbacks;
use keel_management::{MeteringAccess, Meters};
use keel_xen::{domctl, sysctl};
use keel_xenapi::keel_metering::figures::{
    vbd_device_name, HostFigures, PifFigures, VbdFigures, VifFigures, VmFigures,
};
use keel_xenapi::keel_metering::{Metering, Usage, UsageConfig, UsageStore, VmUsageSample};
use keel_xenapi::{MeteredVm, MeteringView, Timestamp, XenApi};

use crate::platform::xen::disks::SharedDisks;
use crate::platform::xen::guests::GuestService;
use crate::platform::xen::hypercall::Xen;
use crate::storage::usage::{self as store, Backing};
use crate::storage::SharedRepositories;
use crate::{memory, rtc, time};

const SAMPLE_NS: u64 = 5_000_000_000;
/// The RRD snapshot is saved every this many samples (5 minutes).
const SAVE_EVERY: u64 = 60;
/// How often the management task refreshes the VM list.
const SYNC_NS: u64 = 2_000_000_000;
const PAGE: u64 = 4096;

/// Where blkback's and netback's per-device counters and the physical interfaces' come in:
/// installed with [`MeteringService::set_devices`].
pub trait DeviceCounters {
    /// The VBDs of domain `domid` (device name as the guest sees it, `xvda`).
    fn vbds(&self, domid: u16) -> Vec<VbdFigures>;
    /// The VIFs of domain `domid` (by device index).
    fn vifs(&self, domid: u16) -> Vec<VifFigures>;
    /// The host's physical interfaces (`eth0`).
    fn pifs(&self) -> Vec<PifFigures>;
}

/// The guests' devices as the guest task serves them: blkback's [`keel_blkback::Stats`]
/// per VBD with its VDI's sizes, netback's [`keel_netback::VifCounters`] per VIF, and the
/// switch's counters of the NIC uplinks (the PIFs). A device counts from when it was
/// started; one stopped is gone (its last few seconds since the previous sample with it).
pub struct GuestDevices {
    disks: SharedDisks,
    netbacks: Option<SharedNetbacks>,
}

impl GuestDevices {
    pub fn new(guests: &GuestService) -> GuestDevices {
        GuestDevices {
            disks: guests.disks.clone(),
            netbacks: guests.vifs.as_ref().map(|v| v.netbacks().clone()),
        }
    }
}

impl DeviceCounters for GuestDevices {
    fn vbds(&self, domid: u16) -> Vec<VbdFigures> {
        let disks = self.disks.borrow();
        let sized = disks.targets().disks_of(domid);
        sized
            .into_iter()
            .filter_map(|(devid, provisioned_bytes, used_bytes)| {
                let stats = disks.device(domid, devid)?.stats();
                Some(VbdFigures {
                    device: vbd_device_name(devid),
                    read_bytes: stats.read_bytes,
                    write_bytes: stats.write_bytes,
                    read_requests: stats.reads,
                    write_requests: stats.writes,
                    read_latency_total_us: stats.read_latency_us,
                    write_latency_total_us: stats.write_latency_us,
                    provisioned_bytes,
                    used_bytes,
                })
            })
            .collect()
    }

    fn vifs(&self, domid: u16) -> Vec<VifFigures> {
        let Some(netbacks) = &self.netbacks else {
            return Vec::new();
        };
        netbacks
            .borrow()
            .vif_counters()
            .filter(|((d, _), _)| *d == domid)
            .map(|((_, index), c)| VifFigures {
                index,
                // rx is what the guest received (xapi's VIF direction).
                rx_bytes: c.to_guest_bytes,
                tx_bytes: c.from_guest_bytes,
                rx_errors: c.to_guest_dropped.saturating_add(c.to_guest_errors),
                tx_errors: c.from_guest_dropped.saturating_add(c.from_guest_errors),
            })
            .collect()
    }

    fn pifs(&self) -> Vec<PifFigures> {
        let Some(netbacks) = &self.netbacks else {
            return Vec::new();
        };
        // The switch's counters of the uplink port: rx is what came in from the wire.
        netbacks
            .borrow()
            .counters()
            .pifs
            .into_iter()
            .map(|(device, c)| PifFigures {
                device,
                rx_bytes: c.rx_bytes,
                tx_bytes: c.tx_bytes,
            })
            .collect()
    }
}

type SharedMeters = Rc<RefCell<Option<Meters<Backing>>>>;

/// What the XenAPI last said about the VMs.
#[derive(Default)]
struct Plan {
    vms: Vec<MeteredVm>,
    /// VMs sampled (or billed) since the meters were made: a destroyed one is forgotten.
    sampled: BTreeSet<String>,
    next_sync_ns: u64,
}

/// The metering, shared by the sampling task and the management task.
#[derive(Clone)]
pub struct MeteringService {
    meters: SharedMeters,
    plan: Rc<RefCell<Plan>>,
    devices: Rc<RefCell<Option<Box<dyn DeviceCounters>>>>,
    storage: Option<SharedRepositories>,
    /// The RRD snapshot's store.
    archive: Rc<RefCell<Option<Backing>>>,
}

/// Makes the service and, under Xen, spawns the sampling task; the guests' devices are
/// metered from `guests`.
pub fn start(
    handle: &Handle,
    storage: Option<SharedRepositories>,
    guests: Option<&GuestService>,
) -> MeteringService {
    let service = MeteringService {
        meters: Rc::new(RefCell::new(None)),
        plan: Rc::new(RefCell::new(Plan::default())),
        devices: Rc::new(RefCell::new(None)),
        storage,
        archive: Rc::new(RefCell::new(None)),
    };
    if let Some(guests) = guests {
        service.set_devices(Box::new(GuestDevices::new(guests)));
    }
    if crate::platform::is_xen() {
        handle.spawn(sample_forever(handle.clone(), service.clone()));
    }
    service
}

impl MeteringService {
    /// The routes' access (`/rrd_updates`, `/usage`, …).
    pub fn access(&self) -> Box<dyn MeteringAccess> {
        Box::new(self.meters.clone())
    }

    /// The data source calls' view.
    pub fn view(&self) -> Box<dyn MeteringView> {
        Box::new(self.meters.clone())
    }

    /// Installs the devices' counters.
    pub fn set_devices(&self, devices: Box<dyn DeviceCounters>) {
        *self.devices.borrow_mut() = Some(devices);
    }

    /// From the management task, each round: makes the meters once the XenAPI is up, and at
    /// most every 2 s refreshes the VM list, forgets destroyed VMs and fills the metrics
    /// records. Returns whether it did anything.
    pub fn sync(&self, api: &mut XenApi, now: Timestamp) -> bool {
        // Without a hypervisor there is nothing to sample (no guests, no Xen figures): no
        // meters, no stores made on the SR; the routes say the metering is absent.
        if !crate::platform::is_xen() {
            return false;
        }
        let mono = time::since_entry_ns();
        if mono < self.plan.borrow().next_sync_ns {
            return false;
        }
        self.plan.borrow_mut().next_sync_ns = mono + SYNC_NS;
        if self.meters.borrow().is_none() {
            self.make_meters(&api.host_uuid(), now);
        }
        let vms = api.metered_vms();
        let known: BTreeSet<String> = api.vm_uuids().into_iter().collect();
        let destroyed: Vec<String> = {
            let mut plan = self.plan.borrow_mut();
            plan.vms = vms;
            let gone: Vec<String> = plan
                .sampled
                .iter()
                .filter(|uuid| !known.contains(*uuid))
                .cloned()
                .collect();
            for uuid in &gone {
                plan.sampled.remove(uuid);
            }
            gone
        };
        if let Some(meters) = self.meters.borrow_mut().as_mut() {
            for uuid in destroyed {
                meters.metering.forget_vm(&uuid);
                if let Err(e) = meters.usage.vm_destroyed(&uuid) {
                    log::warn!("metering: cannot record VM {uuid} destroyed: {e:?}");
                }
            }
        }
        api.apply_metering(now);
        true
    }

    fn make_meters(&self, host_uuid: &str, now: Timestamp) {
        let mut metering = match Metering::new(host_uuid) {
            Ok(m) => m,
            Err(e) => {
                log::error!("metering: cannot meter host {host_uuid:?}: {e:?}");
                return;
            }
        };
        let storage = self.storage.as_ref();
        let mut archive = store::open(storage, store::RRD_VDI, store::RRD_VDI_BYTES);
        match archive.read_all() {
            Ok(snapshot) if !snapshot.is_empty() => match metering.restore(&snapshot) {
                Ok(()) => log::info!("metering: archives restored ({} bytes)", snapshot.len()),
                Err(e) => log::warn!("metering: archives not restored: {e:?}"),
            },
            Ok(_) => {}
            Err(e) => log::warn!("metering: cannot read the archives: {e:?}"),
        }
        let backing = store::open(storage, store::USAGE_VDI, store::USAGE_VDI_BYTES);
        if !backing.persists() {
            log::warn!("metering: no SR: usage records will not persist across a reboot");
        }
        let usage = match Usage::open(backing, UsageConfig::default()) {
            Ok((usage, report)) => {
                if report.torn_tail_bytes > 0 {
                    log::warn!(
                        "metering: the usage journal ended in {} torn bytes (a power cut); \
                         {} changes replayed",
                        report.torn_tail_bytes,
                        report.frames
                    );
                }
                usage
            }
            Err(e) => {
                // A journal that does not decode is kept as it is (nothing is appended to
                // it); usage is counted in memory until an operator looks.
                log::error!("metering: usage journal unusable ({e:?}); usage kept in memory");
                match Usage::open(Backing::Memory(Vec::new()), UsageConfig::default()) {
                    Ok((usage, _)) => usage,
                    Err(_) => return,
                }
            }
        };
        // VMs billed before the boot: a destroyed one is marked when the sync notices.
        let hour = now.unix_ms / 1000 / 3600 * 3600;
        let from = hour.saturating_sub(keel_xenapi::keel_metering::MAX_PERIOD_S - 3600);
        if let Ok(rows) = usage.rows(from, hour + 3600) {
            let mut plan = self.plan.borrow_mut();
            for row in rows.into_iter().filter(|r| !r.destroyed) {
                plan.sampled.insert(row.vm_uuid);
            }
        }
        *self.archive.borrow_mut() = Some(archive);
        *self.meters.borrow_mut() = Some(Meters { metering, usage });
        log::info!("metering: sampling every 5 s");
    }

    /// One sample of the host and the running VMs into the RRDs and the ledger.
    fn sample(&self, boot_ms: u64) {
        let now_ms = rtc::now().unix_ms;
        let vms = self.plan.borrow().vms.clone();
        let devices = self.devices.borrow();
        let Some(host) = host_figures(devices.as_deref()) else {
            return;
        };
        let figures: Vec<VmFigures> = vms
            .iter()
            .filter_map(|vm| vm_figures(vm, boot_ms, devices.as_deref()))
            .collect();
        drop(devices);
        let mut meters = self.meters.borrow_mut();
        let Some(meters) = meters.as_mut() else {
            return;
        };
        let report = meters.metering.sample(now_ms, &host, &figures);
        if let Some(e) = report.host_error {
            log::warn!("metering: host sample refused: {e:?}");
        }
        for (uuid, e) in report.vm_errors {
            log::warn!("metering: VM {uuid} sample refused: {e:?}");
        }
        let samples: Vec<VmUsageSample<'_>> = figures
            .iter()
            .filter_map(|f| {
                let vm = vms.iter().find(|vm| vm.uuid == f.uuid)?;
                Some(VmUsageSample {
                    identity: &vm.identity,
                    figures: f,
                })
            })
            .collect();
        if let Err(e) = meters.usage.record(now_ms, &samples) {
            log::warn!(
                "metering: usage not recorded this time ({e:?}); the next sample carries it"
            );
        }
        let mut plan = self.plan.borrow_mut();
        for f in &figures {
            if !plan.sampled.contains(&f.uuid) {
                plan.sampled.insert(f.uuid.clone());
            }
        }
    }

    fn save_archives(&self) {
        let snapshot = match self.meters.borrow().as_ref() {
            Some(meters) => meters.metering.save(),
            None => return,
        };
        if let Some(archive) = self.archive.borrow_mut().as_mut() {
            if archive.persists() {
                if let Err(e) = archive.compact(&snapshot) {
                    log::warn!("metering: archives not saved: {e:?}");
                }
            }
        }
    }
}

async fn sample_forever(handle: Handle, service: MeteringService) {
    // Tells this boot's domains from the previous boot's in the usage ledger.
    let boot_ms = rtc::now().unix_ms;
    let mut next = handle.now_ns() + SAMPLE_NS;
    let mut samples = 0u64;
    loop {
        handle.sleep_until(next).await;
        next += SAMPLE_NS;
        // After a long stall (a guest build holding the CPU), keep the 5 s rhythm from now.
        let now = handle.now_ns();
        if next <= now {
            next = now + SAMPLE_NS;
        }
        service.sample(boot_ms);
        samples += 1;
        if samples.is_multiple_of(SAVE_EVERY) {
            service.save_archives();
        }
    }
}

fn host_figures(devices: Option<&dyn DeviceCounters>) -> Option<HostFigures> {
    let info = match sysctl::physinfo(&Xen) {
        Ok(info) => info,
        Err(e) => {
            log::warn!("metering: physinfo: {e:?}");
            return None;
        }
    };
    let system_ns = time::xen_system_time_ns()?;
    let idle = match sysctl::cpu_idle_times(&Xen) {
        Ok(idle) => idle,
        Err(e) => {
            log::warn!("metering: getcpuinfo: {e:?}");
            return None;
        }
    };
    Some(HostFigures {
        cpu_busy_ns: idle.iter().map(|i| system_ns.saturating_sub(*i)).collect(),
        memory_total_bytes: info.total_pages.saturating_mul(PAGE),
        memory_free_bytes: info.free_memory_bytes(),
        heap_used_bytes: memory::heap_usage().0 as u64,
        pifs: devices.map(|d| d.pifs()).unwrap_or_default(),
    })
}

fn vm_figures(
    vm: &MeteredVm,
    boot_ms: u64,
    devices: Option<&dyn DeviceCounters>,
) -> Option<VmFigures> {
    let domid = u16::try_from(vm.domid).ok()?;
    let info = domctl::domain_info(&Xen, domid).ok()?;
    let vcpu_time_ns = (0..=info.max_vcpu_id)
        .take(keel_xenapi::keel_metering::source::MAX_CPUS)
        .map(|v| domctl::vcpu_info(&Xen, domid, v).map_or(0, |i| i.cpu_time))
        .collect();
    let domain_bytes = info.tot_pages.saturating_mul(PAGE);
    let (memory_actual_bytes, memory_target_bytes) = if vm.is_control_domain {
        (memory::heap_usage().0 as u64, domain_bytes)
    } else {
        (domain_bytes, vm.memory_target_bytes)
    };
    Some(VmFigures {
        uuid: vm.uuid.clone(),
        instance: boot_ms << 16 | u64::from(domid),
        vcpu_time_ns,
        memory_actual_bytes,
        memory_target_bytes,
        vbds: devices.map(|d| d.vbds(domid)).unwrap_or_default(),
        vifs: devices.map(|d| d.vifs(domid)).unwrap_or_default(),
    })
}
