//! A byte queue over one `Vec`: bytes are appended at the back and consumed from the front,
//! and the consumed prefix is reclaimed lazily so slices handed out stay valid until the next
//! mutation.

use alloc::vec::Vec;

#[derive(Debug, Default)]
pub(crate) struct ByteQueue {
    bytes: Vec<u8>,
    /// Start of the unconsumed bytes within `bytes`.
    start: usize,
}

impl ByteQueue {
    /// The unconsumed bytes.
    pub(crate) fn data(&self) -> &[u8] {
        self.bytes.get(self.start..).unwrap_or(&[])
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len().saturating_sub(self.start)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory, consumed or not: what this queue costs.
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Drops `count` bytes from the front.
    pub(crate) fn consume(&mut self, count: usize) {
        self.start = self.start.saturating_add(count).min(self.bytes.len());
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
    }

    /// Drops `count` bytes from the front and returns them.
    pub(crate) fn take(&mut self, count: usize) -> &[u8] {
        let from = self.start;
        self.start = self.start.saturating_add(count).min(self.bytes.len());
        self.bytes.get(from..self.start).unwrap_or(&[])
    }

    /// Appends as much of `data` as keeps the unconsumed length within `limit`; returns how much.
    /// The allocation is made once at `limit`, so it never grows past it. When the heap cannot
    /// give that allocation it appends nothing (returns 0): the bytes stay with the caller,
    /// which is backpressure, not a failure.
    pub(crate) fn append_bounded(&mut self, data: &[u8], limit: usize) -> usize {
        let count = data.len().min(limit.saturating_sub(self.len()));
        if count == 0 {
            return 0;
        }
        if self.try_make_room(count, limit).is_err() {
            return 0;
        }
        self.bytes
            .extend_from_slice(data.get(..count).unwrap_or(&[]));
        count
    }

    /// Appends all of `data`; the caller bounds how much that can be.
    pub(crate) fn append(&mut self, data: &[u8], reserve: usize) {
        self.make_room(data.len(), reserve);
        self.bytes.extend_from_slice(data);
    }

    /// Appends `count` bytes produced by `write`, which must push exactly that many.
    pub(crate) fn append_with(
        &mut self,
        count: usize,
        reserve: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        self.make_room(count, reserve);
        write(&mut self.bytes);
    }

    /// Ensures `count` more bytes fit without moving the consumed prefix out more than needed;
    /// a fresh allocation reserves `reserve` bytes at once.
    fn make_room(&mut self, count: usize, reserve: usize) {
        if self.try_make_room(count, reserve).is_err() {
            // Output: the caller bounds it (a response head, a window of body); running out
            // of heap here is the allocator's failure, as for any infallible allocation.
            self.bytes.reserve_exact(count);
        }
    }

    /// [`ByteQueue::make_room`] that reports a failed allocation instead of aborting.
    fn try_make_room(
        &mut self,
        count: usize,
        reserve: usize,
    ) -> Result<(), alloc::collections::TryReserveError> {
        if self.start > 0 && self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
        if self.start > 0 && self.bytes.len() + count > self.bytes.capacity() {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        if self.bytes.capacity() == 0 {
            self.bytes.try_reserve_exact(reserve.max(count))?;
        } else if self.bytes.len() + count > self.bytes.capacity() {
            self.bytes.try_reserve_exact(count)?;
        }
        Ok(())
    }

    /// Frees the allocation when nothing is queued (idle connections hold no buffers).
    pub(crate) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.bytes = Vec::new();
            self.start = 0;
        }
    }

    /// Drops everything, freeing the allocation.
    pub(crate) fn clear(&mut self) {
        self.bytes = Vec::new();
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_append_takes_only_what_fits_and_never_grows() {
        let mut queue = ByteQueue::default();
        assert_eq!(queue.append_bounded(b"abcdef", 4), 4);
        assert_eq!(queue.data(), b"abcd");
        assert_eq!(queue.append_bounded(b"xyz", 4), 0);
        assert_eq!(queue.take(3), b"abc");
        assert_eq!(queue.append_bounded(b"xyz", 4), 3);
        assert_eq!(queue.data(), b"dxyz");
        assert_eq!(queue.capacity(), 4);
    }

    #[test]
    fn an_allocation_the_heap_refuses_is_backpressure_not_an_abort() {
        let mut queue = ByteQueue::default();
        // A limit no heap can reserve: the append takes nothing and the queue stays usable.
        assert_eq!(queue.append_bounded(b"abc", usize::MAX), 0);
        assert!(queue.is_empty());
        assert_eq!(queue.capacity(), 0);
        assert_eq!(queue.append_bounded(b"abc", 8), 3);
        assert_eq!(queue.data(), b"abc");
    }

    #[test]
    fn consume_and_release() {
        let mut queue = ByteQueue::default();
        queue.append(b"hello", 16);
        queue.consume(2);
        assert_eq!(queue.data(), b"llo");
        queue.consume(10);
        assert!(queue.is_empty());
        queue.release_if_empty();
        assert_eq!(queue.capacity(), 0);
    }
}
