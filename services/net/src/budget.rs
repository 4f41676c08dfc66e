//! A byte budget for memory that remote peers make Keel hold.
//!
//! The heap is shared by everything in Keel's one address space, and Rust's infallible
//! allocations end in a panic when it runs out. Memory a client can cause to be held (socket
//! buffers of its connections, the request body it is sending) is therefore taken from a
//! [`MemoryBudget`] sized well below the heap, and allocated with `try_reserve`, so that
//! neither a flood of clients nor a fragmented heap can exhaust it: past the budget, new work
//! is refused cleanly and the rest of Keel keeps its memory.

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

/// Why memory was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetError {
    /// The budget has `available` bytes left and `requested` were asked for.
    Exhausted { requested: usize, available: usize },
    /// Within the budget, but the heap could not provide the allocation.
    HeapExhausted { requested: usize },
}

/// Bytes granted against a limit; grants are returned with [`MemoryBudget::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    limit: usize,
    used: usize,
    refusals: u64,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            limit,
            used: 0,
            refusals: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used
    }

    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    /// How many requests for memory were refused since start.
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    /// Takes `bytes` from the budget (no allocation is made).
    pub fn reserve(&mut self, bytes: usize) -> Result<(), BudgetError> {
        if bytes > self.available() {
            self.refusals += 1;
            return Err(BudgetError::Exhausted {
                requested: bytes,
                available: self.available(),
            });
        }
        self.used += bytes;
        Ok(())
    }

    /// Gives back `bytes` taken with [`MemoryBudget::reserve`] or [`MemoryBudget::zeroed`].
    pub fn release(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
    }

    /// A zero-filled buffer of `len` bytes, charged to the budget and allocated fallibly.
    pub fn zeroed(&mut self, len: usize) -> Result<Vec<u8>, BudgetError> {
        self.reserve(len)?;
        match try_zeroed(len) {
            Ok(buf) => Ok(buf),
            Err(_) => {
                self.release(len);
                self.refusals += 1;
                Err(BudgetError::HeapExhausted { requested: len })
            }
        }
    }

    /// Grows `buf` so that `extra` more bytes fit, charging the budget for the growth of its
    /// capacity; on failure nothing changes.
    pub fn grow(&mut self, buf: &mut Vec<u8>, extra: usize) -> Result<(), BudgetError> {
        let needed = buf.len().saturating_add(extra);
        if needed <= buf.capacity() {
            return Ok(());
        }
        // Grow geometrically (bounded by what is asked) so that a body arriving in many small
        // chunks is not copied once per chunk.
        let target = needed.max(buf.capacity().saturating_mul(2)).max(256);
        let mut charge = target - buf.capacity();
        if charge > self.available() {
            charge = needed - buf.capacity();
        }
        self.reserve(charge)?;
        let before = buf.capacity();
        if buf.try_reserve_exact(before + charge - buf.len()).is_err() {
            self.release(charge);
            self.refusals += 1;
            return Err(BudgetError::HeapExhausted { requested: charge });
        }
        // The allocator may round up; charge exactly what is held.
        let actual = buf.capacity() - before;
        if actual > charge {
            self.used += actual - charge;
        } else {
            self.release(charge - actual);
        }
        Ok(())
    }
}

/// A zero-filled vector made with `try_reserve_exact`: `Err` instead of an allocation abort.
pub fn try_zeroed(len: usize) -> Result<Vec<u8>, TryReserveError> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)?;
    buf.resize(len, 0);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_stop_at_the_limit_and_come_back_on_release() {
        let mut budget = MemoryBudget::new(1000);
        let a = budget.zeroed(600).unwrap();
        assert_eq!(a.len(), 600);
        assert_eq!(
            budget.zeroed(600),
            Err(BudgetError::Exhausted {
                requested: 600,
                available: 400
            })
        );
        assert_eq!(budget.refusals(), 1);
        budget.release(a.len());
        assert_eq!(budget.zeroed(600).map(|b| b.len()), Ok(600));
    }

    #[test]
    fn an_allocation_the_heap_cannot_make_is_an_error_and_charges_nothing() {
        let mut budget = MemoryBudget::new(usize::MAX);
        assert_eq!(
            budget.zeroed(usize::MAX / 2),
            Err(BudgetError::HeapExhausted {
                requested: usize::MAX / 2
            })
        );
        assert_eq!(budget.used(), 0);
        let mut buf = Vec::new();
        assert!(budget.grow(&mut buf, usize::MAX / 2).is_err());
        assert_eq!((budget.used(), buf.capacity()), (0, 0));
    }

    #[test]
    fn growth_is_charged_by_capacity_and_refused_past_the_limit() {
        let mut budget = MemoryBudget::new(4096);
        let mut buf = Vec::new();
        budget.grow(&mut buf, 100).unwrap();
        buf.extend_from_slice(&[1; 100]);
        assert_eq!(budget.used(), buf.capacity());
        while budget.grow(&mut buf, 500).is_ok() {
            buf.extend_from_slice(&[2; 500]);
            assert_eq!(budget.used(), buf.capacity());
        }
        assert!(buf.capacity() <= 4096);
        assert!(buf.len() + 500 > 4096 || budget.available() < 500);
        budget.release(buf.capacity());
        assert_eq!(budget.used(), 0);
    }
}
