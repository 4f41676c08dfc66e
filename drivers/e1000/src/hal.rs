//! What the driver needs from the machine: the controller's register window (BAR0) and DMA
//! memory. The kernel implements these over a mapped BAR and its frame allocator; the tests
//! over a register-level model of the controller.

use core::ptr::NonNull;

/// Size of the pages DMA memory comes in.
pub const PAGE_SIZE: usize = 4096;

/// The controller's registers, addressed by byte offset. Every register is 32 bits wide.
pub trait Registers {
    fn read32(&self, offset: usize) -> u32;
    fn write32(&mut self, offset: usize, value: u32);
}

/// A block of DMA memory: `pages` whole pages, contiguous in both the CPU's and the device's
/// address space.
#[derive(Debug)]
pub struct DmaRegion {
    /// The address the device uses (under an IOMMU, what the IOMMU translates).
    pub bus: u64,
    /// Where the CPU sees it.
    pub virt: NonNull<u8>,
    pub pages: usize,
}

impl DmaRegion {
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// DMA memory and time.
///
/// # Safety
/// Implementors guarantee that a region from [`Hal::allocate`] is `pages * PAGE_SIZE` bytes
/// of zeroed, page-aligned memory that nothing else uses until it is passed to [`Hal::free`],
/// and that the device reaches it contiguously at `bus`. The driver hands those addresses to
/// the controller, which then writes there behind the compiler's back.
pub unsafe trait Hal {
    /// Allocates `pages` zeroed pages, or `None` when memory is short.
    fn allocate(&mut self, pages: usize) -> Option<DmaRegion>;

    /// Returns a region from [`Hal::allocate`].
    fn free(&mut self, region: DmaRegion);

    /// Waits about `us` microseconds (used only while the controller resets).
    fn delay_us(&mut self, us: u32);
}
