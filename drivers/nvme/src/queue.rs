//! A submission/completion queue pair in DMA memory: the driver's side of the rings.
//!
//! The submission queue is written at `sq_tail` and published by the tail doorbell; the
//! controller reports how far it has fetched in each completion (`sq_head`). Completions are
//! recognised by their phase bit, which the controller inverts on every pass through the
//! completion queue; the driver consumes them at `cq_head` and returns the slots through the
//! head doorbell.

use core::sync::atomic::{fence, Ordering};

use crate::command::{Command, CompletionEntry, CQE_SIZE, SQE_SIZE};
use crate::error::NvmeError;
use crate::hal::{Hal, PAGE_SIZE};
use crate::mem::Shared;

pub struct QueuePair {
    pub id: u16,
    entries: u16,
    sq: Shared,
    cq: Shared,
    sq_tail: u16,
    sq_head: u16,
    cq_head: u16,
    phase: bool,
}

impl QueuePair {
    /// Allocates the rings for a queue pair of `entries` entries (2..=4096 with 4 KiB pages).
    pub fn new(hal: &mut impl Hal, id: u16, entries: u16) -> Result<Self, NvmeError> {
        let entries = entries.clamp(2, 4096);
        let pages = |entry: usize| (usize::from(entries) * entry).div_ceil(PAGE_SIZE);
        let sq = hal.allocate(pages(SQE_SIZE)).ok_or(NvmeError::NoMemory)?;
        let cq = match hal.allocate(pages(CQE_SIZE)) {
            Some(cq) => cq,
            None => {
                hal.free(sq);
                return Err(NvmeError::NoMemory);
            }
        };
        let mut pair = QueuePair {
            id,
            entries,
            sq: Shared::new(sq),
            cq: Shared::new(cq),
            sq_tail: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
        };
        pair.reset();
        Ok(pair)
    }

    /// Back to the state of a freshly created queue (after a controller reset).
    pub fn reset(&mut self) {
        self.sq.zero();
        self.cq.zero();
        self.sq_tail = 0;
        self.sq_head = 0;
        self.cq_head = 0;
        self.phase = true;
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    pub fn sq_bus(&self) -> u64 {
        self.sq.bus()
    }

    pub fn cq_bus(&self) -> u64 {
        self.cq.bus()
    }

    /// No room for another submission until the controller fetches one.
    pub fn is_full(&self) -> bool {
        (self.sq_tail + 1) % self.entries == self.sq_head
    }

    /// Writes `command` at the tail; returns the new tail for the doorbell, or `None` when
    /// the queue is full.
    pub fn push(&mut self, command: &Command) -> Option<u16> {
        if self.is_full() {
            return None;
        }
        let at = usize::from(self.sq_tail) * SQE_SIZE;
        if !self.sq.write(at, &command.to_bytes()) {
            return None;
        }
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        // The entry must be in memory before the doorbell tells the controller about it.
        fence(Ordering::SeqCst);
        Some(self.sq_tail)
    }

    /// Takes the next completion if the controller has posted one.
    pub fn pop(&mut self) -> Option<CompletionEntry> {
        let at = usize::from(self.cq_head) * CQE_SIZE;
        // The phase bit lives in the last dword; read it before the rest of the entry.
        let dw3 = self.cq.read_u32(at + 12);
        if (dw3 & (1 << 16) != 0) != self.phase {
            return None;
        }
        fence(Ordering::SeqCst);
        let mut bytes = [0u8; CQE_SIZE];
        self.cq.read(at, &mut bytes);
        let entry = CompletionEntry::from_bytes(&bytes);
        self.cq_head += 1;
        if self.cq_head == self.entries {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        if entry.sq_head < self.entries {
            self.sq_head = entry.sq_head;
        }
        Some(entry)
    }

    /// The tail to write to the submission doorbell.
    pub fn sq_tail(&self) -> u16 {
        self.sq_tail
    }

    /// The head to write to the completion doorbell.
    pub fn cq_head(&self) -> u16 {
        self.cq_head
    }

    pub fn free(self, hal: &mut impl Hal) {
        hal.free(self.sq.into_region());
        hal.free(self.cq.into_region());
    }
}
