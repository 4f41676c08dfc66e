//! One type for every disk Keel drives, shared between the SR that owns it and whoever else
//! needs it (the benchmark). Handles are cheap clones of one driver: Keel runs its tasks on
//! one CPU, one at a time, so a `RefCell` is enough.

use alloc::boxed::Box;
use alloc::rc::Rc;
use core::cell::RefCell;

use keel_block::{BlockDevice, Completion, DeviceInfo, Rejected, Request, RequestId};
use keel_nvme::NvmeDisk;
use keel_virtio::VirtioBlk;

use super::nvme::{FrameDma, Mmio};
use crate::dma::KeelHal;

pub enum Driver {
    Nvme(Box<NvmeDisk<Mmio, FrameDma>>),
    VirtioBlk(Box<VirtioBlk<KeelHal>>),
}

impl Driver {
    fn device(&mut self) -> &mut dyn BlockDevice {
        match self {
            Driver::Nvme(d) => &mut **d,
            Driver::VirtioBlk(d) => &mut **d,
        }
    }

    pub fn bus(&self) -> &'static str {
        match self {
            Driver::Nvme(_) => "nvme",
            Driver::VirtioBlk(_) => "virtio-blk",
        }
    }
}

#[derive(Clone)]
pub struct Disk {
    info: DeviceInfo,
    bus: &'static str,
    driver: Rc<RefCell<Driver>>,
}

impl Disk {
    pub fn new(mut driver: Driver) -> Self {
        Disk {
            info: driver.device().info().clone(),
            bus: driver.bus(),
            driver: Rc::new(RefCell::new(driver)),
        }
    }

    /// `nvme` or `virtio-blk`.
    pub fn bus(&self) -> &'static str {
        self.bus
    }

    /// Logs the NVMe driver's recorded command failures, if any.
    pub fn log_errors(&self) {
        if let Driver::Nvme(d) = &mut *self.driver.borrow_mut() {
            for e in d.take_errors() {
                match e.status {
                    Some(status) => log::warn!(
                        "storage: {}: {:?} at sector {} failed: {status}",
                        self.info.identity,
                        e.kind,
                        e.lba
                    ),
                    None => log::warn!(
                        "storage: {}: {:?} at sector {} lost to a controller reset",
                        self.info.identity,
                        e.kind,
                        e.lba
                    ),
                }
            }
        }
    }
}

impl BlockDevice for Disk {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn submit(&mut self, request: Request) -> Result<RequestId, Rejected> {
        self.driver.borrow_mut().device().submit(request)
    }

    fn poll_completion(&mut self) -> Option<Completion> {
        self.driver.borrow_mut().device().poll_completion()
    }

    fn in_flight(&self) -> usize {
        match &*self.driver.borrow() {
            Driver::Nvme(d) => d.in_flight(),
            Driver::VirtioBlk(d) => d.in_flight(),
        }
    }
}
