//! What `keel-nvme` needs from the kernel: the controller's registers (BAR0, mapped
//! uncached) and DMA memory from the frame allocator.

use core::ptr::NonNull;

use keel_nvme::{DmaRegion, Hal, Registers};

use crate::memory;
use crate::mmio::RegisterWindow;
use crate::time;

/// BAR0 of an NVMe controller.
pub type Mmio = RegisterWindow;

impl Registers for RegisterWindow {
    fn read32(&self, offset: usize) -> u32 {
        RegisterWindow::read32(self, offset)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        RegisterWindow::write32(self, offset, value);
    }
}

/// DMA through the frame allocator; memory is identity-mapped, so a buffer's address is its
/// bus address (under Xen, dom0's physical addresses are what the IOMMU maps).
pub struct FrameDma;

// SAFETY: frames are contiguous, zeroed, identity-mapped and owned by the driver until
// `free`; heap buffers are identity-mapped RAM, so their addresses are bus addresses.
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

    fn bus_address(&mut self, buffer: NonNull<u8>, _len: usize) -> Option<u64> {
        Some(buffer.as_ptr() as u64)
    }

    fn release(&mut self, _bus: u64, _len: usize) {}

    fn delay_us(&mut self, us: u32) {
        time::spin_us(us);
    }
}
