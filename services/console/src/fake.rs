//! A console page as a plain byte array, addressed by the byte offsets of Xen's struct, and
//! the guest's side of the protocol (what Linux `hvc_xen` does), for host tests.
//!
//! It is deliberately independent of [`XenconsInterface`](crate::page::XenconsInterface):
//! tests that go through it check the ring code against the documented offsets.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::page::{offset, ConsolePage, Index, IN_RING_SIZE, OUT_RING_SIZE};

/// One 4 KiB page. Not `Sync`: tests drive it from one thread.
#[derive(Debug)]
pub struct BytePage {
    bytes: RefCell<Box<[u8; 4096]>>,
}

impl Default for BytePage {
    fn default() -> Self {
        Self::new()
    }
}

/// What a well-behaved guest finds wrong with the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSawCorruptRing;

impl BytePage {
    pub fn new() -> Self {
        BytePage {
            bytes: RefCell::new(Box::new([0; 4096])),
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = self.bytes.borrow();
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn set_u32_at(&self, at: usize, value: u32) {
        self.bytes.borrow_mut()[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Reads an index as the guest would.
    pub fn index(&self, index: Index) -> u32 {
        self.u32_at(index.offset())
    }

    /// Writes any value into an index, as a (possibly hostile) guest may.
    pub fn set_index(&self, index: Index, value: u32) {
        self.set_u32_at(index.offset(), value)
    }

    /// The guest writes console output: as much as fits; returns how much.
    pub fn guest_write_output(&self, data: &[u8]) -> Result<usize, GuestSawCorruptRing> {
        let cons = self.index(Index::OutCons);
        let prod = self.index(Index::OutProd);
        let used = prod.wrapping_sub(cons) as usize;
        if used > OUT_RING_SIZE {
            return Err(GuestSawCorruptRing);
        }
        let n = (OUT_RING_SIZE - used).min(data.len());
        {
            let mut b = self.bytes.borrow_mut();
            for (i, byte) in data.iter().take(n).enumerate() {
                let slot = prod.wrapping_add(i as u32) as usize % OUT_RING_SIZE;
                b[offset::OUT + slot] = *byte;
            }
        }
        self.set_index(Index::OutProd, prod.wrapping_add(n as u32));
        Ok(n)
    }

    /// The guest reads up to `max` bytes of console input.
    pub fn guest_read_input(&self, max: usize) -> Result<Vec<u8>, GuestSawCorruptRing> {
        let cons = self.index(Index::InCons);
        let prod = self.index(Index::InProd);
        let avail = prod.wrapping_sub(cons) as usize;
        if avail > IN_RING_SIZE {
            return Err(GuestSawCorruptRing);
        }
        let n = avail.min(max);
        let out = {
            let b = self.bytes.borrow();
            (0..n)
                .map(|i| b[offset::IN + cons.wrapping_add(i as u32) as usize % IN_RING_SIZE])
                .collect()
        };
        self.set_index(Index::InCons, cons.wrapping_add(n as u32));
        Ok(out)
    }
}

impl ConsolePage for BytePage {
    fn load_index(&self, index: Index) -> u32 {
        self.index(index)
    }
    fn store_index(&self, index: Index, value: u32) {
        self.set_index(index, value)
    }
    fn out_byte(&self, slot: usize) -> u8 {
        self.bytes.borrow()[offset::OUT + slot % OUT_RING_SIZE]
    }
    fn set_in_byte(&self, slot: usize, byte: u8) {
        self.bytes.borrow_mut()[offset::IN + slot % IN_RING_SIZE] = byte;
    }
}
