//! Wiring of the storage service: the NVMe (class 01.08.02) and virtio-blk functions in the
//! PCI list get their drivers, and each disk is attached, formatted or refused by the rules
//! of `keel-repositories` (attach an SR; format a blank disk or the one `keel.format=`
//! names; leave anything else untouched). One log line per disk and per SR.
//!
//! Everything happens before the executor runs. [`start`] returns the service, [`Storage`],
//! and the kernel hands it to its users (the XenAPI, the host database) instead of their
//! reaching for it: the SRs are shared through one `Rc<RefCell<_>>` handle each user holds.
//! Each SR queues many requests to its disk at once (`keel_storage::Sr::submit_io`); the
//! synchronous operations the XenAPI uses wait for the device by polling it.
//!
//! With `keel.test=bench-storage` the disks are opened but never attached or formatted, and
//! [`bench`] runs the raw-disk workloads on them after ready (`cargo xtask bench storage`).

mod disk;
pub mod hostdb;
mod nvme;
pub mod usage;

use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use keel_block::BlockDevice;
use keel_cmdline::{Config, TestAction};
use keel_nvme::{Controller, DiskOptions, NvmeDisk};
use keel_pci::{reg, Bar, DeviceKind, Function};
use keel_repositories::{provision, Provisioned, Refusal, Repositories, Repository};
use keel_storage::{Sr, Uuid};
use keel_virtio::VirtioBlk;
use keel_xenapi::Entropy as _;

pub use disk::{Disk, Driver};
use nvme::{FrameDma, Mmio};

use crate::dma::KeelHal;
use crate::entropy::Entropy;
use crate::pci::PciConfig;

/// Allocation unit of new SRs.
const EXTENT_SIZE: u64 = 1 << 20;
const MIB: u64 = 1 << 20;

/// The attached SRs, as their users share them.
pub type SharedRepositories = Rc<RefCell<Repositories<Disk>>>;

/// Every disk Keel drives and every SR attached on them.
pub struct Storage {
    /// Every disk, attached or not (the benchmark uses them raw).
    pub disks: Vec<Disk>,
    /// The SRs, for the XenAPI, the host database and the disk backends of guests.
    pub repositories: SharedRepositories,
}

/// Starts every disk and provisions it. `None` when the machine has no disk (and so no SR
/// objects at all).
pub fn start(
    pci: &'static PciConfig,
    functions: &[Function],
    config: &Config<'static>,
) -> Option<Storage> {
    let found: Vec<&Function> = functions
        .iter()
        .filter(|f| matches!(f.kind, DeviceKind::Nvme | DeviceKind::VirtioBlk))
        .collect();
    if found.is_empty() {
        if let Some(name) = config.format {
            log::warn!("storage: keel.format={name} names no disk: this machine has none");
        }
        return None;
    }
    let mut entropy = Entropy::seed(crate::arch::rdtsc());
    let mut disks = Vec::new();
    let mut repositories = Repositories::default();
    let mut named_found = false;
    let benchmark = config.test == TestAction::BenchStorage;
    for function in found {
        let Some(disk) = open(pci, function) else {
            continue;
        };
        if benchmark {
            // The benchmark overwrites the disks: never attach or format them.
            disks.push(disk);
            continue;
        }
        let identity = disk.info().identity.clone();
        named_found |= config.format == Some(identity.as_str());
        let mut uuid = [0u8; 16];
        entropy.fill(&mut uuid);
        uuid[6] = (uuid[6] & 0x0f) | 0x40;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        match provision(disk.clone(), config.format, Uuid(uuid), EXTENT_SIZE) {
            Ok((sr, how)) => {
                log_sr(&sr, &identity, how);
                repositories.srs.push(Repository {
                    sr,
                    device: identity.clone(),
                    bus: String::from(disk.bus()),
                });
            }
            Err(refusal) => log_refusal(&identity, &refusal),
        }
        disk.log_errors();
        disks.push(disk);
    }
    if let (Some(name), false) = (config.format, named_found) {
        log::warn!("storage: keel.format={name} names no disk here; nothing was formatted");
    }
    if disks.is_empty() {
        return None;
    }
    Some(Storage {
        disks,
        repositories: Rc::new(RefCell::new(repositories)),
    })
}

/// Starts the driver of one disk function and logs the disk.
fn open(pci: &'static PciConfig, function: &Function) -> Option<Disk> {
    let address = function.address;
    let disk = match function.kind {
        DeviceKind::Nvme => {
            let (base, size) = match function.bars[0] {
                Some(Bar::Memory { base, size, .. }) if base != 0 => (base, size),
                _ => {
                    log::error!("storage: nvme {address}: BAR0 is not an assigned memory BAR");
                    return None;
                }
            };
            keel_pci::enable(pci, address, reg::CMD_MEMORY | reg::CMD_BUS_MASTER);
            let regs = match Mmio::map(base, size) {
                Ok(regs) => regs,
                Err(e) => {
                    log::error!("storage: nvme {address}: cannot map BAR0: {e}");
                    return None;
                }
            };
            let opened = Controller::start(regs, FrameDma).and_then(|controller| {
                // Without a serial number, the PCI address names the disk.
                let identity = controller
                    .identity()
                    .serial
                    .is_empty()
                    .then(|| format!("nvme-{address}"));
                let options = DiskOptions {
                    identity,
                    ..DiskOptions::default()
                };
                NvmeDisk::open(controller, options)
            });
            match opened {
                Ok(nvme) => {
                    let identity = nvme.controller().identity();
                    log::info!(
                        "storage: nvme {address} {} firmware {}, NVMe {}.{}",
                        identity.model,
                        identity.firmware,
                        nvme.controller().version().0,
                        nvme.controller().version().1
                    );
                    Disk::new(Driver::Nvme(Box::new(nvme)))
                }
                Err(e) => {
                    log::error!("storage: nvme {address} failed to start: {e}");
                    return None;
                }
            }
        }
        _ => {
            let transport = match keel_virtio::open_transport::<KeelHal>(pci, address) {
                Ok(t) => t,
                Err(e) => {
                    log::error!("storage: virtio-blk {address} unusable: {e}");
                    return None;
                }
            };
            let fallback = format!("virtio-blk-{address}");
            match VirtioBlk::<KeelHal>::new(transport, &fallback) {
                Ok(blk) => Disk::new(Driver::VirtioBlk(Box::new(blk))),
                Err(e) => {
                    log::error!("storage: virtio-blk {address} failed to start: {e:?}");
                    return None;
                }
            }
        }
    };
    let info = disk.info();
    log::info!(
        "storage: {} {address} {}: {} MiB, {}-byte sectors, queue depth {}",
        disk.bus(),
        info.identity,
        info.capacity_bytes() / MIB,
        info.sector_size,
        info.queue_depth
    );
    Some(disk)
}

fn log_sr(sr: &Sr<Disk>, identity: &str, how: Provisioned) {
    let how = match how {
        Provisioned::Attached(report) if report.fell_back => {
            "attached, rolled back to the previous commit (the newest was damaged)"
        }
        Provisioned::Attached(_) => "attached",
        Provisioned::FormattedBlank => "created on a blank disk",
        Provisioned::FormattedOnRequest => "created as keel.format asked",
    };
    log::info!(
        "storage: SR {} on {identity}: {how}; {} MiB, {} MiB used, {} VDIs",
        sr.uuid(),
        sr.physical_size() / MIB,
        sr.physical_utilisation() / MIB,
        sr.list_vdis().len()
    );
}

fn log_refusal(identity: &str, refusal: &Refusal) {
    match refusal {
        Refusal::ForeignData | Refusal::Unattachable(_) => log::warn!(
            "storage: {identity} {refusal}; left untouched (boot with keel.format={identity} \
             to erase it and create an empty SR)"
        ),
        Refusal::TooSmall { .. } | Refusal::Failed(_) => {
            log::warn!("storage: {identity} {refusal}; not used")
        }
    }
}

/// `keel.test=bench-storage`: runs the standard workloads on every disk, raw, and prints one
/// `bench-storage:` line per workload (see `keel_repositories::bench`).
pub fn bench(disks: &[Disk]) {
    for disk in disks {
        let mut disk = disk.clone();
        let identity = disk.info().identity.clone();
        for workload in keel_repositories::bench::standard_workloads() {
            match keel_repositories::bench::run(&mut disk, &workload, crate::time::since_entry_ns) {
                Ok(m) => crate::console::write_line(format_args!("{}", m.line(&identity))),
                Err(e) => log::error!(
                    "bench-storage: {identity} {} failed: {e}",
                    workload.pattern.name()
                ),
            }
        }
        disk.log_errors();
    }
}
