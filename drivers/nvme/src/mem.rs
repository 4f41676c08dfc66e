//! Bounds-checked volatile access to DMA memory shared with the controller.
//!
//! Queue memory is written by the controller behind the compiler's back, so every access is
//! volatile, and an access outside the region is refused rather than performed (it would be
//! a driver bug; refusing keeps it from corrupting memory).

use crate::hal::DmaRegion;

/// A region with the driver's accessors; owns the allocation until [`Shared::into_region`].
#[derive(Debug)]
pub struct Shared {
    region: DmaRegion,
}

impl Shared {
    pub fn new(region: DmaRegion) -> Self {
        Shared { region }
    }

    pub fn bus(&self) -> u64 {
        self.region.bus
    }

    pub fn len(&self) -> usize {
        self.region.len()
    }

    pub fn into_region(self) -> DmaRegion {
        self.region
    }

    fn in_bounds(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len())
    }

    /// The byte at `offset`. Computing the pointer is safe (`wrapping_add`); callers check
    /// `in_bounds` before dereferencing it, which makes it equal to `add`.
    fn byte(&self, offset: usize) -> *mut u8 {
        self.region.virt.as_ptr().wrapping_add(offset)
    }

    /// Copies `data` to `offset`; false (and nothing written) if it does not fit.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        if !self.in_bounds(offset, data.len()) {
            return false;
        }
        for (i, byte) in data.iter().enumerate() {
            // SAFETY: in bounds of a region the `Hal` contract makes valid and exclusive.
            unsafe { core::ptr::write_volatile(self.byte(offset + i), *byte) };
        }
        true
    }

    /// Copies from `offset` into `out`; false (and `out` untouched) if it does not fit.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if !self.in_bounds(offset, out.len()) {
            return false;
        }
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: as in `write`.
            *byte = unsafe { core::ptr::read_volatile(self.byte(offset + i)) };
        }
        true
    }

    /// Reads the little-endian u32 at `offset` (0 if out of bounds).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write_u64(&mut self, offset: usize, value: u64) -> bool {
        self.write(offset, &value.to_le_bytes())
    }

    pub fn zero(&mut self) {
        for i in 0..self.len() {
            // SAFETY: as in `write`.
            unsafe { core::ptr::write_volatile(self.byte(i), 0) };
        }
    }
}
