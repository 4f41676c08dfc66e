//! Bounds-checked volatile access to DMA memory shared with the controller.
//!
//! Descriptor rings and buffers are written by the controller behind the compiler's back, so
//! every access is volatile, and an access outside the region is refused rather than
//! performed (it would be a driver bug; refusing keeps it from corrupting memory).

use core::ptr::NonNull;

use crate::hal::DmaRegion;

/// A region with the driver's accessors; owns the allocation until [`Shared::take`].
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

    /// Hands the allocation back (to be freed), leaving an empty region that refuses every
    /// access; `None` if it was taken already.
    pub fn take(&mut self) -> Option<DmaRegion> {
        let empty = DmaRegion {
            bus: 0,
            virt: NonNull::dangling(),
            pages: 0,
        };
        let region = core::mem::replace(&mut self.region, empty);
        (!region.is_empty()).then_some(region)
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
            // SAFETY: in bounds of a region the `Hal` contract makes valid and exclusive to
            // this driver and its device.
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

    /// The byte at `offset` (0 if out of bounds).
    pub fn read_u8(&self, offset: usize) -> u8 {
        let mut b = [0u8; 1];
        self.read(offset, &mut b);
        b[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::PAGE_SIZE;

    #[test]
    fn refuses_access_outside_and_after_take() {
        let mut page = vec![0u8; PAGE_SIZE];
        let mut shared = Shared::new(DmaRegion {
            bus: 0x1000,
            virt: NonNull::new(page.as_mut_ptr()).unwrap(),
            pages: 1,
        });
        assert!(shared.write(PAGE_SIZE - 2, &[1, 2]));
        assert!(!shared.write(PAGE_SIZE - 1, &[1, 2]));
        assert!(!shared.write(usize::MAX, &[1]));
        assert_eq!(shared.read_u8(PAGE_SIZE - 1), 2);
        let region = shared.take().unwrap();
        assert_eq!(region.bus, 0x1000);
        assert!(shared.take().is_none());
        assert!(!shared.write(0, &[1]));
        assert_eq!(page[PAGE_SIZE - 2..], [1, 2]);
    }
}
