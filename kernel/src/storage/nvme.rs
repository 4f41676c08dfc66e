//! What `keel-nvme` needs from the kernel: the controller's registers (BAR0, mapped
//! uncached) and DMA memory from the frame allocator.

use core::ptr::NonNull;

use keel_nvme::{DmaRegion, Hal, Registers};

use crate::memory;
use crate::time;

/// BAR0 of an NVMe controller.
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
}

impl Mmio {
    /// Maps `len` bytes of registers at physical `base`.
    pub fn map(base: u64, len: u64) -> Result<Self, memory::MapError> {
        let ptr = memory::map_mmio(base, len)?;
        Ok(Mmio {
            base: ptr,
            len: len as usize,
        })
    }

    /// The register at `offset`, if it is inside the window and aligned.
    fn register(&self, offset: usize) -> Option<*mut u32> {
        (offset.is_multiple_of(4) && offset + 4 <= self.len)
            // SAFETY: inside the mapped window.
            .then(|| unsafe { self.base.as_ptr().add(offset) }.cast::<u32>())
    }
}

impl Registers for Mmio {
    fn read32(&self, offset: usize) -> u32 {
        match self.register(offset) {
            // SAFETY: a mapped, uncached device register.
            Some(r) => unsafe { core::ptr::read_volatile(r) },
            None => u32::MAX,
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        if let Some(r) = self.register(offset) {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(r, value) }
        }
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
        let end = time::since_entry_ns() + u64::from(us) * 1000;
        while time::since_entry_ns() < end {
            core::hint::spin_loop();
        }
    }
}
