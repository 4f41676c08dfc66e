//! What the driver needs from the machine: the controller's register window, DMA memory and
//! a way to wait. The kernel implements these over BAR0 and its frame allocator; the tests
//! implement them over a command-level model of a controller.

use core::ptr::NonNull;

/// Size of a memory page as the driver programs it (`CC.MPS` = 0): every queue, PRP list and
/// identify buffer is one or more of these.
pub const PAGE_SIZE: usize = 4096;

/// The controller's registers (BAR0), addressed by byte offset.
///
/// 64-bit registers are accessed as two 32-bit halves, low half first, which the
/// specification allows and which works on every controller (QEMU's included).
pub trait Registers {
    fn read32(&self, offset: usize) -> u32;
    fn write32(&mut self, offset: usize, value: u32);

    fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }

    fn write64(&mut self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// A block of DMA memory: `pages` whole pages, contiguous in both the CPU's and the device's
/// address space.
#[derive(Debug)]
pub struct DmaRegion {
    /// The address the device uses.
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
/// Implementors guarantee that a region from [`Hal::allocate`] is `pages * PAGE_SIZE`
/// bytes of zeroed, page-aligned memory that nothing else uses until it is passed to
/// [`Hal::free`], reachable by the device at `bus` (contiguously), and that
/// [`Hal::bus_address`] returns an address at which the device reaches the whole given buffer
/// contiguously. The driver relies on this to hand the addresses to the controller.
pub unsafe trait Hal {
    /// Allocates `pages` zeroed pages, or `None` when memory is short.
    fn allocate(&mut self, pages: usize) -> Option<DmaRegion>;

    /// Returns a region from [`Hal::allocate`].
    fn free(&mut self, region: DmaRegion);

    /// The bus address of `len` bytes at `buffer` that the device is about to read or write,
    /// or `None` if the device cannot reach them directly (the driver then copies through a
    /// buffer from [`Hal::allocate`]). The memory stays valid until [`Hal::release`].
    fn bus_address(&mut self, buffer: NonNull<u8>, len: usize) -> Option<u64>;

    /// The device is done with a range from [`Hal::bus_address`].
    fn release(&mut self, bus: u64, len: usize);

    /// Waits about `us` microseconds (used only while the controller starts or resets).
    fn delay_us(&mut self, us: u32);
}
