//! What `keel-e1000` needs from the kernel: the NIC's registers (BAR0, mapped uncached) and
//! DMA memory from the frame allocator, and the bring-up of one Intel NIC function.
//!
//! Memory is identity-mapped, so a frame's address is its bus address; under Xen the IOMMU
//! maps dom0's physical addresses, so the same addresses hold there.

use core::ptr::NonNull;

use keel_e1000::{DmaRegion, Hal, Model, Options, Registers, E1000};
use keel_pci::{reg, Bar, DeviceKind, Function};

use crate::memory;
use crate::mmio::RegisterWindow;
use crate::pci::PciConfig;
use crate::time;

pub type IntelNic = E1000<Mmio, FrameDma>;

/// BAR0 of the NIC.
pub type Mmio = RegisterWindow;

impl Registers for RegisterWindow {
    fn read32(&self, offset: usize) -> u32 {
        RegisterWindow::read32(self, offset)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        RegisterWindow::write32(self, offset, value);
    }
}

/// DMA through the frame allocator.
pub struct FrameDma;

// SAFETY: frames are contiguous, zeroed, identity-mapped and owned by the driver until
// `free`; their physical address is what the device (or, under Xen, the IOMMU) uses.
unsafe impl Hal for FrameDma {
    fn allocate(&mut self, pages: usize) -> Option<DmaRegion> {
        let phys = memory::allocate_frames(pages as u64)?;
        Some(DmaRegion {
            bus: phys,
            virt: NonNull::new(phys as *mut u8)?,
            pages,
        })
    }

    fn free(&mut self, region: DmaRegion) {
        memory::free_frames(region.bus, region.pages as u64);
    }

    fn delay_us(&mut self, us: u32) {
        time::spin_us(us);
    }
}

/// The model of the first Intel NIC the driver supports, with its function. Intel NICs it
/// does not support are named in the log, so an operator sees why there is no network.
pub fn find(functions: &[Function]) -> Option<(&Function, Model)> {
    let found = functions
        .iter()
        .find_map(|f| Some((f, Model::from_pci_id(f.vendor_id, f.device_id)?)));
    if found.is_none() {
        for f in functions
            .iter()
            .filter(|f| matches!(f.kind, DeviceKind::E1000 | DeviceKind::E1000e))
        {
            log::warn!(
                "net: {} {:04x}:{:04x} at {} is not a part keel-e1000 drives (82540EM, 82574L)",
                f.kind.name(),
                f.vendor_id,
                f.device_id,
                f.address
            );
        }
    }
    found
}

/// Starts the driver on one function; errors are logged.
pub fn open(pci: &'static PciConfig, function: &Function, model: Model) -> Option<IntelNic> {
    let address = function.address;
    let (base, size) = match function.bars[0] {
        Some(Bar::Memory { base, size, .. }) if base != 0 => (base, size),
        _ => {
            log::error!(
                "net: {} {address}: BAR0 is not an assigned memory BAR",
                model.driver_name()
            );
            return None;
        }
    };
    keel_pci::enable(pci, address, reg::CMD_MEMORY | reg::CMD_BUS_MASTER);
    let regs = match Mmio::map(base, size) {
        Ok(regs) => regs,
        Err(e) => {
            log::error!(
                "net: {} {address}: cannot map BAR0: {e}",
                model.driver_name()
            );
            return None;
        }
    };
    match E1000::start(regs, FrameDma, model, Options::default()) {
        Ok(nic) => Some(nic),
        Err(e) => {
            log::error!(
                "net: {} ({}) at {address} failed to start: {e}",
                model.driver_name(),
                model.name()
            );
            None
        }
    }
}
