//! A VM's console history: the last [`History::capacity`] bytes the guest wrote, each byte
//! numbered by its position in the whole output (its sequence number).
//!
//! Memory is fixed when the console is attached; appending never allocates. Readers keep
//! their own position (a [`ConsoleStream`](crate::stream::ConsoleStream)), so any number of
//! them can follow one console, and one that falls more than a capacity behind is told how
//! much it missed instead of holding memory for it.

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

/// History kept per VM unless the glue asks otherwise: 64 KiB, about 800 lines of 80
/// columns — a whole Linux boot log of a small guest, or the last screens of a busy one.
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024;

/// Bytes retained, as a ring over the output's sequence numbers.
#[derive(Debug)]
pub struct History {
    buf: Vec<u8>,
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
    /// Allocates `capacity` bytes (at least 1) up front; fails instead of aborting.
    pub fn with_capacity(capacity: usize) -> Result<Self, TryReserveError> {
        let capacity = capacity.max(1);
        let mut buf = Vec::new();
        buf.try_reserve_exact(capacity)?;
        buf.resize(capacity, 0);
        Ok(History { buf, end: 0 })
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Sequence number of the oldest byte still retained.
    pub fn start_seq(&self) -> u64 {
        self.end.saturating_sub(self.capacity() as u64)
    }

    /// Sequence number the next byte will get (= total bytes ever appended).
    pub fn end_seq(&self) -> u64 {
        self.end
    }

    fn slot(&self, seq: u64) -> usize {
        (seq % self.capacity() as u64) as usize
    }

    /// Appends guest output, forgetting the oldest bytes beyond the capacity.
    pub fn append(&mut self, data: &[u8]) {
        let cap = self.capacity();
        // Only the last `cap` bytes of a long write can survive it.
        let skip = data.len().saturating_sub(cap);
        self.end += skip as u64;
        let mut rest = data.get(skip..).unwrap_or(&[]);
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
    fn impossible_sizes_fail_instead_of_aborting() {
        assert!(History::with_capacity(usize::MAX).is_err());
    }
}
