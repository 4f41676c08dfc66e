//! A VM's console history: the last [`History::capacity`] bytes the guest wrote, each byte
//! numbered by its position in the whole output (its sequence number).
//!
//! The capacity is a bound, not an allocation: the buffer grows (fallibly, doubling) with the
//! output until it holds `capacity` bytes and only then becomes a ring, so a quiet guest
//! (a `quiet` Linux boot writes a few hundred bytes) costs what it wrote, not the bound. If
//! growing fails the history stops growing and keeps what it holds as its ring: the oldest
//! bytes are forgotten sooner, nothing fails. Readers keep their own position (a
//! [`ConsoleStream`](crate::stream::ConsoleStream)), so any number of them can follow one
//! console, and one that falls more than a capacity behind is told how much it missed
//! instead of holding memory for it.

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

/// History kept per VM unless the glue asks otherwise: 64 KiB, about 800 lines of 80
/// columns — a whole Linux boot log of a small guest, or the last screens of a busy one.
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024;

/// The first allocation of a history that receives output.
const FIRST_CHUNK: usize = 256;

/// Bytes retained: a growing buffer (sequence number = index) until it reaches the
/// capacity, then a ring over the output's sequence numbers.
#[derive(Debug)]
pub struct History {
    buf: Vec<u8>,
    /// The most bytes retained; `buf` never grows past it.
    capacity: usize,
    /// Sequence number of the next byte to be appended (= bytes ever appended).
    end: u64,
}

/// Result of [`History::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRead {
    /// Bytes between the requested position and the oldest retained one, which are lost.
    pub skipped: u64,
    /// Sequence number of the first byte copied.
    pub start: u64,
    /// Bytes copied.
    pub len: usize,
}

impl HistoryRead {
    /// Where the next read should begin.
    pub fn next(&self) -> u64 {
        self.start + self.len as u64
    }
}

impl History {
    /// A history of at most `capacity` bytes (at least 1). Nothing is allocated until output
    /// arrives; a capacity no allocation could ever hold is refused.
    pub fn with_capacity(capacity: usize) -> Result<Self, TryReserveError> {
        let capacity = capacity.max(1);
        if capacity > isize::MAX as usize {
            // Fails without allocating (capacity overflow); the error is the allocator's.
            Vec::<u8>::new().try_reserve_exact(capacity)?;
        }
        Ok(History {
            buf: Vec::new(),
            capacity,
            end: 0,
        })
    }

    /// The most bytes retained.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Heap bytes the history holds now (at most [`History::capacity`]).
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// Makes room for `n` more bytes below the capacity (doubling, fallibly). On failure
    /// the history keeps what it holds as its ring from now on.
    fn grow_for(&mut self, n: usize) {
        let len = self.buf.len();
        let wanted = len + n;
        if wanted <= self.buf.capacity() {
            return;
        }
        let target = wanted.max(len * 2).max(FIRST_CHUNK).min(self.capacity);
        if self.buf.try_reserve_exact(target - len).is_err()
            && self.buf.try_reserve_exact(wanted - len).is_err()
        {
            self.capacity = len.max(1);
            if len == 0 {
                // Not even one byte: the history is a byte of nothing, every byte is lost.
                self.buf = Vec::new();
            }
        }
    }

    /// Sequence number of the oldest byte still retained.
    pub fn start_seq(&self) -> u64 {
        self.end.saturating_sub(self.capacity() as u64)
    }

    /// Sequence number the next byte will get (= total bytes ever appended).
    pub fn end_seq(&self) -> u64 {
        self.end
    }

    /// Where byte `seq` is kept: its own index while the buffer grows (`seq` < its length
    /// < the capacity), its slot in the ring once full.
    fn slot(&self, seq: u64) -> usize {
        (seq % self.capacity as u64) as usize
    }

    /// Appends guest output, forgetting the oldest bytes beyond the capacity.
    pub fn append(&mut self, data: &[u8]) {
        // Only the last `capacity` bytes of a long write can survive it.
        let skip = data.len().saturating_sub(self.capacity);
        let mut rest = data.get(skip..).unwrap_or(&[]);
        if self.buf.len() < self.capacity && skip > 0 {
            // The write alone fills the history: it is the whole ring from now on.
            self.grow_for(self.capacity - self.buf.len());
            if self.buf.capacity() >= self.capacity {
                self.buf.resize(self.capacity, 0);
            }
        } else if self.buf.len() < self.capacity {
            // Growing: the buffer holds every byte so far (`end` = its length).
            let n = rest.len().min(self.capacity - self.buf.len());
            self.grow_for(n);
            if self.buf.len() < self.capacity {
                let n = n.min(self.buf.capacity() - self.buf.len());
                let (now, later) = rest.split_at(n);
                self.buf.extend_from_slice(now);
                rest = later;
            }
        }
        self.end += skip as u64 + (data.len() - skip - rest.len()) as u64;
        if self.buf.is_empty() {
            // No memory for even the first byte: everything written is lost (readers are
            // told how much).
            self.end += rest.len() as u64;
            return;
        }
        let cap = self.capacity;
        while !rest.is_empty() {
            let at = self.slot(self.end);
            let n = (cap - at).min(rest.len());
            let (now, later) = rest.split_at(n);
            if let Some(dst) = self.buf.get_mut(at..at + n) {
                dst.copy_from_slice(now);
            }
            self.end += n as u64;
            rest = later;
        }
    }

    /// Copies retained bytes from sequence number `from` into `out`. A position older than
    /// the history starts at the oldest retained byte and reports the gap in `skipped`; a
    /// position beyond the end reads nothing from the end.
    pub fn read(&self, from: u64, out: &mut [u8]) -> HistoryRead {
        let start_seq = self.start_seq();
        let skipped = start_seq.saturating_sub(from);
        let start = from.clamp(start_seq, self.end);
        let available = (self.end - start) as usize;
        let len = available.min(out.len());
        let mut copied = 0;
        while copied < len {
            let at = self.slot(start + copied as u64);
            let n = (self.capacity() - at).min(len - copied);
            if let (Some(dst), Some(src)) =
                (out.get_mut(copied..copied + n), self.buf.get(at..at + n))
            {
                dst.copy_from_slice(src);
            }
            copied += n;
        }
        HistoryRead {
            skipped,
            start,
            len,
        }
    }

    /// The retained bytes in order, into a new vector (fallible).
    pub fn snapshot(&self) -> Result<Vec<u8>, TryReserveError> {
        let len = (self.end - self.start_seq()) as usize;
        let mut out = Vec::new();
        out.try_reserve_exact(len)?;
        out.resize(len, 0);
        self.read(self.start_seq(), &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_below_capacity() {
        let mut h = History::with_capacity(16).unwrap();
        h.append(b"abc");
        h.append(b"defg");
        assert_eq!(h.start_seq(), 0);
        assert_eq!(h.end_seq(), 7);
        assert_eq!(h.snapshot().unwrap(), b"abcdefg");
        let mut out = [0u8; 4];
        let r = h.read(2, &mut out);
        assert_eq!(
            r,
            HistoryRead {
                skipped: 0,
                start: 2,
                len: 4
            }
        );
        assert_eq!(&out, b"cdef");
        assert_eq!(r.next(), 6);
    }

    #[test]
    fn forgets_the_oldest_and_reports_the_gap() {
        let mut h = History::with_capacity(8).unwrap();
        h.append(b"0123456789");
        h.append(b"ABC");
        assert_eq!(h.start_seq(), 5);
        assert_eq!(h.end_seq(), 13);
        assert_eq!(h.snapshot().unwrap(), b"56789ABC");
        let mut out = [0u8; 100];
        let r = h.read(1, &mut out);
        assert_eq!(r.skipped, 4);
        assert_eq!(r.start, 5);
        assert_eq!(&out[..r.len], b"56789ABC");
    }

    #[test]
    fn a_write_longer_than_the_capacity_keeps_its_tail() {
        let mut h = History::with_capacity(4).unwrap();
        h.append(b"x");
        h.append(b"abcdefghij");
        assert_eq!(h.end_seq(), 11);
        assert_eq!(h.snapshot().unwrap(), b"ghij");
    }

    #[test]
    fn positions_past_the_end_read_nothing() {
        let mut h = History::with_capacity(4).unwrap();
        h.append(b"ab");
        let mut out = [0u8; 4];
        let r = h.read(1000, &mut out);
        assert_eq!((r.skipped, r.start, r.len), (0, 2, 0));
    }

    #[test]
    fn many_wraps_stay_consistent() {
        let mut h = History::with_capacity(7).unwrap();
        let mut all = alloc::vec::Vec::new();
        for i in 0..200u32 {
            let chunk: alloc::vec::Vec<u8> = (0..(i % 5)).map(|j| (i * 7 + j) as u8).collect();
            h.append(&chunk);
            all.extend_from_slice(&chunk);
            let keep = all.len().min(7);
            assert_eq!(h.snapshot().unwrap(), &all[all.len() - keep..]);
        }
    }

    #[test]
    fn memory_follows_the_output_up_to_the_capacity() {
        let mut h = History::with_capacity(DEFAULT_HISTORY_BYTES).unwrap();
        assert_eq!(h.allocated(), 0, "a silent guest costs nothing");
        h.append(&[b'q'; 1500]);
        assert!(
            (1500..4096).contains(&h.allocated()),
            "a quiet boot's output: {} bytes held",
            h.allocated()
        );
        for _ in 0..100 {
            h.append(&[b'x'; 1000]);
        }
        assert_eq!(h.allocated(), DEFAULT_HISTORY_BYTES, "never past the bound");
        assert_eq!(
            h.snapshot().unwrap(),
            alloc::vec![b'x'; DEFAULT_HISTORY_BYTES]
        );
    }

    /// Writes of every size against a plain copy of the output, across the growth, the
    /// switch to a ring and its wraps.
    #[test]
    fn growing_then_wrapping_keeps_the_last_capacity_bytes() {
        for capacity in [1, 5, 300, 1000] {
            let mut h = History::with_capacity(capacity).unwrap();
            let mut all = alloc::vec::Vec::new();
            let mut seed = 7u32;
            for _ in 0..300 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let len = (seed >> 16) as usize % (capacity * 2 + 3);
                let chunk: alloc::vec::Vec<u8> =
                    (0..len).map(|j| (seed as usize + j) as u8).collect();
                h.append(&chunk);
                all.extend_from_slice(&chunk);
                let keep = all.len().min(capacity);
                assert_eq!(h.end_seq(), all.len() as u64);
                assert_eq!(
                    h.snapshot().unwrap(),
                    &all[all.len() - keep..],
                    "capacity {capacity}"
                );
                assert!(h.allocated() <= capacity);
            }
        }
    }

    #[test]
    fn impossible_sizes_fail_instead_of_aborting() {
        assert!(History::with_capacity(usize::MAX).is_err());
    }
}
