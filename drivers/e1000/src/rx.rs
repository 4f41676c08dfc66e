//! The receive ring: descriptors each holding a 2 KiB buffer, written back by the device in
//! ring order.
//!
//! Ownership follows the head and tail registers: the device owns the descriptors from RDH
//! up to (not including) RDT; the driver owns the rest. The driver keeps exactly one
//! descriptor back (RDT names it), so a full ring and an empty one look different to the
//! device. A descriptor the driver has copied out is cleared (DD off) at once, but handed
//! back by moving RDT only in batches, or when the ring runs dry: each RDT write is a
//! register access, a VM exit under virtualisation.

use crate::descriptor::{self, RxWriteBack, RX_ERRORS_FATAL};
use crate::error::E1000Error;
use crate::hal::{Hal, Registers, PAGE_SIZE};
use crate::mem::Shared;
use crate::regs::{self, DESCRIPTOR_LEN, RX_BUFFER_LEN};

/// Descriptors handed back with one RDT write at most; also the most the device can be
/// short of at a time.
pub const RETURN_BATCH: u16 = 32;

/// What one look at the ring found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The device has written nothing new.
    Empty,
    /// A whole frame of this many bytes was copied out.
    Frame(usize),
    /// A descriptor was consumed without a frame for the caller.
    Dropped(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The device flagged the frame as damaged.
    DeviceError,
    /// Part of a frame spread over several descriptors (the ring's buffers hold any frame the
    /// receiver accepts, so this is a misbehaving device; the whole frame is thrown away).
    Fragment,
    /// The device claims a length larger than the buffer.
    BadLength,
    /// The caller's buffer is smaller than the frame.
    TooLarge,
}

pub struct RxRing {
    descriptors: Shared,
    buffers: Shared,
    entries: u16,
    /// The next descriptor the device writes back.
    next: u16,
    /// Descriptors cleared since the last RDT write.
    unreturned: u16,
    /// Inside a frame that spans descriptors: drop until its last one.
    discarding: bool,
}

pub(crate) fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE)
}

impl RxRing {
    /// Allocates `entries` descriptors and their buffers, each descriptor posted with its
    /// buffer.
    pub fn new(hal: &mut impl Hal, entries: u16) -> Result<Self, E1000Error> {
        let count = usize::from(entries);
        let descriptors = hal
            .allocate(pages_for(count * DESCRIPTOR_LEN))
            .ok_or(E1000Error::NoMemory)?;
        let Some(buffers) = hal.allocate(pages_for(count * RX_BUFFER_LEN)) else {
            hal.free(descriptors);
            return Err(E1000Error::NoMemory);
        };
        let mut ring = RxRing {
            descriptors: Shared::new(descriptors),
            buffers: Shared::new(buffers),
            entries,
            next: 0,
            unreturned: 0,
            discarding: false,
        };
        for i in 0..entries {
            ring.post(i);
        }
        Ok(ring)
    }

    fn buffer_bus(&self, index: u16) -> u64 {
        self.buffers.bus() + (usize::from(index) * RX_BUFFER_LEN) as u64
    }

    fn post(&mut self, index: u16) {
        let raw = descriptor::rx_posted(self.buffer_bus(index));
        self.descriptors
            .write(usize::from(index) * DESCRIPTOR_LEN, &raw);
    }

    /// Points the device at the ring and gives it every descriptor but one.
    pub fn program(&mut self, regs: &mut impl Registers) {
        let bus = self.descriptors.bus();
        regs.write32(regs::RDBAL, bus as u32);
        regs.write32(regs::RDBAH, (bus >> 32) as u32);
        regs.write32(
            regs::RDLEN,
            (usize::from(self.entries) * DESCRIPTOR_LEN) as u32,
        );
        regs.write32(regs::RDH, 0);
        regs.write32(regs::RDT, u32::from(self.entries - 1));
        self.next = 0;
        self.unreturned = 0;
        self.discarding = false;
    }

    /// Looks at the next descriptor; copies a finished frame into `out`.
    pub fn poll(&mut self, out: &mut [u8]) -> Received {
        let offset = usize::from(self.next) * DESCRIPTOR_LEN;
        // Only the status byte first: the rest is meaningful once DD is set.
        if self.descriptors.read_u8(offset + descriptor::STATUS_OFFSET) & descriptor::STATUS_DD == 0
        {
            return Received::Empty;
        }
        // The device wrote the data and length before it set DD; read them only now.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let mut raw = [0u8; DESCRIPTOR_LEN];
        self.descriptors.read(offset, &mut raw);
        let written = RxWriteBack::decode(&raw);
        let result = self.take(&written, out);
        self.post(self.next);
        self.next = (self.next + 1) % self.entries;
        self.unreturned += 1;
        result
    }

    fn take(&mut self, written: &RxWriteBack, out: &mut [u8]) -> Received {
        let index = self.next;
        if !written.end_of_packet() {
            self.discarding = true;
            return Received::Dropped(DropReason::Fragment);
        }
        if core::mem::take(&mut self.discarding) {
            return Received::Dropped(DropReason::Fragment);
        }
        if written.errors & RX_ERRORS_FATAL != 0 {
            return Received::Dropped(DropReason::DeviceError);
        }
        let len = usize::from(written.length);
        if len > RX_BUFFER_LEN {
            return Received::Dropped(DropReason::BadLength);
        }
        let Some(dst) = out.get_mut(..len) else {
            return Received::Dropped(DropReason::TooLarge);
        };
        self.buffers.read(usize::from(index) * RX_BUFFER_LEN, dst);
        Received::Frame(len)
    }

    /// Descriptors cleared but not yet handed back.
    pub fn unreturned(&self) -> u16 {
        self.unreturned
    }

    /// Hands every cleared descriptor back to the device with one RDT write.
    pub fn give_back(&mut self, regs: &mut impl Registers) {
        if self.unreturned == 0 {
            return;
        }
        // The cleared descriptors must be in memory before the device may fetch them.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        // The last descriptor looked at stays with the driver as the one held back.
        let tail = (self.next + self.entries - 1) % self.entries;
        regs.write32(regs::RDT, u32::from(tail));
        self.unreturned = 0;
    }

    pub fn entries(&self) -> u16 {
        self.entries
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
