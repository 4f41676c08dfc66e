//! The guest's console page, `struct xencons_interface` (`xen/include/public/io/console.h`):
//! an input ring (backend → guest) and an output ring (guest → backend) with free-running
//! `u32` indices masked by each ring's size.
//!
//! The ring code reaches the page only through [`ConsolePage`], so the kernel can hand it a
//! mapped guest frame and tests a plain array. [`XenconsInterface`] is the page image itself,
//! laid out like Xen's struct, for the kernel to place over the mapped frame.

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Size of the `in` ring (backend → guest).
pub const IN_RING_SIZE: usize = 1024;
/// Size of the `out` ring (guest → backend).
pub const OUT_RING_SIZE: usize = 2048;

/// Byte offsets in `struct xencons_interface` (3088 bytes), as the guest sees them.
pub mod offset {
    pub const IN: usize = 0;
    pub const OUT: usize = 1024;
    pub const IN_CONS: usize = 3072;
    pub const IN_PROD: usize = 3076;
    pub const OUT_CONS: usize = 3080;
    pub const OUT_PROD: usize = 3084;
    /// Size of the whole structure.
    pub const END: usize = 3088;
}

/// One of the four ring indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// Guest's progress reading `in`.
    InCons,
    /// Our progress writing `in`.
    InProd,
    /// Our progress reading `out`.
    OutCons,
    /// Guest's progress writing `out`.
    OutProd,
}

impl Index {
    /// Byte offset of the index in the page.
    pub const fn offset(self) -> usize {
        match self {
            Index::InCons => offset::IN_CONS,
            Index::InProd => offset::IN_PROD,
            Index::OutCons => offset::OUT_CONS,
            Index::OutProd => offset::OUT_PROD,
        }
    }
}

/// Access to a console page shared with a guest that may write anything to it at any time.
///
/// Index loads have acquire and stores release semantics, so that ring bytes are read after
/// the index that published them and written before the index that publishes them. Slots are
/// always below the ring's size; implementations may panic otherwise (the ring code masks).
pub trait ConsolePage {
    fn load_index(&self, index: Index) -> u32;
    fn store_index(&self, index: Index, value: u32);
    /// Byte `slot` of the `out` ring (`slot < OUT_RING_SIZE`).
    fn out_byte(&self, slot: usize) -> u8;
    /// Stores byte `slot` of the `in` ring (`slot < IN_RING_SIZE`).
    fn set_in_byte(&self, slot: usize, byte: u8);
}

impl<P: ConsolePage + ?Sized> ConsolePage for &P {
    fn load_index(&self, index: Index) -> u32 {
        (**self).load_index(index)
    }
    fn store_index(&self, index: Index, value: u32) {
        (**self).store_index(index, value)
    }
    fn out_byte(&self, slot: usize) -> u8 {
        (**self).out_byte(slot)
    }
    fn set_in_byte(&self, slot: usize, byte: u8) {
        (**self).set_in_byte(slot, byte)
    }
}

impl<P: ConsolePage + ?Sized> ConsolePage for alloc::boxed::Box<P> {
    fn load_index(&self, index: Index) -> u32 {
        (**self).load_index(index)
    }
    fn store_index(&self, index: Index, value: u32) {
        (**self).store_index(index, value)
    }
    fn out_byte(&self, slot: usize) -> u8 {
        (**self).out_byte(slot)
    }
    fn set_in_byte(&self, slot: usize, byte: u8) {
        (**self).set_in_byte(slot, byte)
    }
}

/// `struct xencons_interface`, made of atomics because the guest writes it concurrently.
/// The kernel views the mapped console frame as this type; tests make one with
/// [`XenconsInterface::zeroed`].
#[repr(C)]
pub struct XenconsInterface {
    pub input: [AtomicU8; IN_RING_SIZE],
    pub output: [AtomicU8; OUT_RING_SIZE],
    pub in_cons: AtomicU32,
    pub in_prod: AtomicU32,
    pub out_cons: AtomicU32,
    pub out_prod: AtomicU32,
}

impl XenconsInterface {
    /// A fresh page image.
    pub fn zeroed() -> Self {
        XenconsInterface {
            input: core::array::from_fn(|_| AtomicU8::new(0)),
            output: core::array::from_fn(|_| AtomicU8::new(0)),
            in_cons: AtomicU32::new(0),
            in_prod: AtomicU32::new(0),
            out_cons: AtomicU32::new(0),
            out_prod: AtomicU32::new(0),
        }
    }

    fn index(&self, index: Index) -> &AtomicU32 {
        match index {
            Index::InCons => &self.in_cons,
            Index::InProd => &self.in_prod,
            Index::OutCons => &self.out_cons,
            Index::OutProd => &self.out_prod,
        }
    }
}

impl core::fmt::Debug for XenconsInterface {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XenconsInterface")
            .field("in_cons", &self.in_cons)
            .field("in_prod", &self.in_prod)
            .field("out_cons", &self.out_cons)
            .field("out_prod", &self.out_prod)
            .finish_non_exhaustive()
    }
}

impl ConsolePage for XenconsInterface {
    fn load_index(&self, index: Index) -> u32 {
        self.index(index).load(Ordering::Acquire)
    }
    fn store_index(&self, index: Index, value: u32) {
        self.index(index).store(value, Ordering::Release)
    }
    fn out_byte(&self, slot: usize) -> u8 {
        self.output[slot % OUT_RING_SIZE].load(Ordering::Relaxed)
    }
    fn set_in_byte(&self, slot: usize, byte: u8) {
        self.input[slot % IN_RING_SIZE].store(byte, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_xen() {
        assert_eq!(size_of::<XenconsInterface>(), offset::END);
        assert_eq!(offset_of!(XenconsInterface, input), offset::IN);
        assert_eq!(offset_of!(XenconsInterface, output), offset::OUT);
        assert_eq!(offset_of!(XenconsInterface, in_cons), offset::IN_CONS);
        assert_eq!(offset_of!(XenconsInterface, in_prod), offset::IN_PROD);
        assert_eq!(offset_of!(XenconsInterface, out_cons), offset::OUT_CONS);
        assert_eq!(offset_of!(XenconsInterface, out_prod), offset::OUT_PROD);
        for index in [Index::InCons, Index::InProd, Index::OutCons, Index::OutProd] {
            let page = XenconsInterface::zeroed();
            page.store_index(index, 0x1234_5678);
            assert_eq!(page.load_index(index), 0x1234_5678);
            let others = [Index::InCons, Index::InProd, Index::OutCons, Index::OutProd]
                .into_iter()
                .filter(|i| *i != index);
            for other in others {
                assert_eq!(page.load_index(other), 0);
            }
        }
    }
}
