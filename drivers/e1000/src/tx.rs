//! The transmit ring: one descriptor per frame, each with its own 2 KiB buffer the frame is
//! copied into.
//!
//! The device owns the descriptors from TDH up to (not including) TDT. Every descriptor asks
//! for status (RS), so the driver reclaims them in order by their DD bit without reading
//! TDH (a register read, slow under virtualisation). One descriptor always stays unused, so
//! a full ring is never mistaken for an empty one.

use crate::descriptor::{self, STATUS_DD};
use crate::error::E1000Error;
use crate::hal::{Hal, Registers};
use crate::mem::Shared;
use crate::regs::{self, DESCRIPTOR_LEN};
use crate::rx::pages_for;

/// Room per transmit buffer: any frame [`keel_netdev::MAX_FRAME`] allows.
pub const TX_BUFFER_LEN: usize = 2048;

pub struct TxRing {
    descriptors: Shared,
    buffers: Shared,
    entries: u16,
    /// The next descriptor to fill (TDT as last written).
    tail: u16,
    /// The oldest descriptor not yet reclaimed.
    clean: u16,
}

impl TxRing {
    pub fn new(hal: &mut impl Hal, entries: u16) -> Result<Self, E1000Error> {
        let count = usize::from(entries);
        let descriptors = hal
            .allocate(pages_for(count * DESCRIPTOR_LEN))
            .ok_or(E1000Error::NoMemory)?;
        let Some(buffers) = hal.allocate(pages_for(count * TX_BUFFER_LEN)) else {
            hal.free(descriptors);
            return Err(E1000Error::NoMemory);
        };
        Ok(TxRing {
            descriptors: Shared::new(descriptors),
            buffers: Shared::new(buffers),
            entries,
            tail: 0,
            clean: 0,
        })
    }

    /// Points the device at the (empty) ring.
    pub fn program(&mut self, regs: &mut impl Registers) {
        let bus = self.descriptors.bus();
        regs.write32(regs::TDBAL, bus as u32);
        regs.write32(regs::TDBAH, (bus >> 32) as u32);
        regs.write32(
            regs::TDLEN,
            (usize::from(self.entries) * DESCRIPTOR_LEN) as u32,
        );
        regs.write32(regs::TDH, 0);
        regs.write32(regs::TDT, 0);
        self.tail = 0;
        self.clean = 0;
    }

    /// Takes back every descriptor the device has finished, oldest first.
    pub fn reclaim(&mut self) {
        while self.clean != self.tail {
            let status = self
                .descriptors
                .read_u8(usize::from(self.clean) * DESCRIPTOR_LEN + descriptor::STATUS_OFFSET);
            if status & STATUS_DD == 0 {
                break;
            }
            self.clean = (self.clean + 1) % self.entries;
        }
    }

    pub fn has_room(&self) -> bool {
        (self.tail + 1) % self.entries != self.clean
    }

    /// Frames handed to the device and not yet reclaimed.
    pub fn in_flight(&self) -> u16 {
        (self.tail + self.entries - self.clean) % self.entries
    }

    /// Copies `frame` into the next buffer and hands it to the device. The caller checked
    /// [`TxRing::has_room`] and the frame's length (at most [`TX_BUFFER_LEN`]).
    pub fn push(&mut self, frame: &[u8], regs: &mut impl Registers) -> bool {
        let Ok(length) = u16::try_from(frame.len()) else {
            return false;
        };
        if !self.has_room() || frame.len() > TX_BUFFER_LEN {
            return false;
        }
        let index = usize::from(self.tail);
        if !self.buffers.write(index * TX_BUFFER_LEN, frame) {
            return false;
        }
        let buffer = self.buffers.bus() + (index * TX_BUFFER_LEN) as u64;
        self.descriptors.write(
            index * DESCRIPTOR_LEN,
            &descriptor::tx_frame(buffer, length),
        );
        self.tail = (self.tail + 1) % self.entries;
        // The descriptor and the data must be in memory before the device reads them.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        regs.write32(regs::TDT, u32::from(self.tail));
        true
    }

    pub fn free(&mut self, hal: &mut impl Hal) {
        if let Some(region) = self.descriptors.take() {
            hal.free(region);
        }
        if let Some(region) = self.buffers.take() {
            hal.free(region);
        }
    }
}
