//! A device's memory-mapped registers (a BAR mapped uncached), read and written 32 bits at a
//! time: what the NVMe and Intel NIC drivers take as their `Registers`.

use core::ptr::NonNull;

use crate::memory;

/// A mapped register window. Offsets outside it or not 4-byte aligned read as all ones (what
/// a missing device answers) and are not written.
pub struct RegisterWindow {
    base: NonNull<u8>,
    len: usize,
}

impl RegisterWindow {
    /// Maps `len` bytes of registers at physical `base`.
    pub fn map(base: u64, len: u64) -> Result<Self, memory::MapError> {
        let ptr = memory::map_mmio(base, len)?;
        Ok(RegisterWindow {
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

    pub fn read32(&self, offset: usize) -> u32 {
        match self.register(offset) {
            // SAFETY: a mapped, uncached device register.
            Some(r) => unsafe { core::ptr::read_volatile(r) },
            None => u32::MAX,
        }
    }

    pub fn write32(&mut self, offset: usize, value: u32) {
        if let Some(r) = self.register(offset) {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(r, value) }
        }
    }
}
