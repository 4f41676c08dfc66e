//! Physical frame allocation over the boot memory map.
//!
//! The kernel feeds [`FrameAllocator`] the RAM ranges of the memory map (PVH start info, Xen,
//! multiboot), carves out what is already in use (the image, boot structures, the first MiB),
//! and then allocates runs of 4 KiB frames from it: page-table frames, the heap arena, and
//! DMA buffers, which need physically contiguous memory.
//!
//! It works before any heap exists, so it keeps its free ranges in a fixed array. Allocation
//! is first-fit from the lowest address that satisfies alignment and an optional upper limit
//! (page tables built while only the low 4 GiB are mapped need frames below that line).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::fmt;

pub mod identity;

/// Size of one frame.
pub const FRAME_SIZE: u64 = 4096;

/// How many disjoint free ranges the allocator can track.
pub const MAX_RANGES: usize = 128;

/// A half-open physical range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub const fn new(start: u64, end: u64) -> Self {
        Range { start, end }
    }
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Why a range could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// More disjoint ranges than [`MAX_RANGES`]; the memory in question is left unused.
    TooManyRanges,
    /// A freed range overlaps memory that is already free (a double free).
    OverlapsFree(Range),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooManyRanges => write!(f, "more than {MAX_RANGES} free memory ranges"),
            FrameError::OverlapsFree(r) => {
                write!(f, "range {:#x}..{:#x} is already free", r.start, r.end)
            }
        }
    }
}

/// A free-range list of page-aligned physical memory.
pub struct FrameAllocator {
    ranges: [Range; MAX_RANGES],
    count: usize,
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameAllocator {
    pub const fn new() -> Self {
        FrameAllocator {
            ranges: [Range::new(0, 0); MAX_RANGES],
            count: 0,
        }
    }

    /// The free ranges, sorted by address, never overlapping or touching.
    pub fn free_ranges(&self) -> &[Range] {
        &self.ranges[..self.count]
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free_ranges().iter().map(Range::len).sum()
    }

    /// Adds usable RAM. The range is shrunk inwards to whole frames. Overlap with memory that
    /// is already free is an error (memory maps with overlapping RAM entries are merged by the
    /// caller through [`FrameAllocator::add_ram`]).
    pub fn free(&mut self, range: Range) -> Result<(), FrameError> {
        let r = Range::new(
            align_up(range.start, FRAME_SIZE),
            align_down(range.end, FRAME_SIZE),
        );
        if r.is_empty() {
            return Ok(());
        }
        // Position of the first free range that starts after `r`.
        let pos = self.ranges[..self.count].partition_point(|f| f.start < r.start);
        let prev = pos.checked_sub(1).map(|i| self.ranges[i]);
        let next = (pos < self.count).then(|| self.ranges[pos]);
        if prev.is_some_and(|p| p.end > r.start) || next.is_some_and(|n| n.start < r.end) {
            return Err(FrameError::OverlapsFree(r));
        }
        let joins_prev = prev.is_some_and(|p| p.end == r.start);
        let joins_next = next.is_some_and(|n| n.start == r.end);
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[pos - 1].end = self.ranges[pos].end;
                self.remove(pos);
            }
            (true, false) => self.ranges[pos - 1].end = r.end,
            (false, true) => self.ranges[pos].start = r.start,
            (false, false) => self.insert(pos, r)?,
        }
        Ok(())
    }

    /// Adds RAM from a memory map entry, ignoring the parts that are already free (firmware
    /// maps sometimes repeat or overlap entries).
    pub fn add_ram(&mut self, range: Range) -> Result<(), FrameError> {
        let mut start = range.start;
        while start < range.end {
            // Skip any free range containing `start`, then free up to the next free range.
            if let Some(f) = self
                .free_ranges()
                .iter()
                .find(|f| f.start <= start && start < f.end)
            {
                start = f.end;
                continue;
            }
            let stop = self
                .free_ranges()
                .iter()
                .map(|f| f.start)
                .filter(|&s| s > start)
                .min()
                .map_or(range.end, |s| s.min(range.end));
            self.free(Range::new(start, stop))?;
            start = stop;
        }
        Ok(())
    }

    /// Removes `range` (widened outwards to whole frames) from the free memory, wherever it
    /// overlaps. Used for the kernel image, boot structures and reserved holes.
    pub fn reserve(&mut self, range: Range) -> Result<(), FrameError> {
        let r = Range::new(
            align_down(range.start, FRAME_SIZE),
            align_up(range.end, FRAME_SIZE),
        );
        let mut i = 0;
        while i < self.count {
            let f = self.ranges[i];
            if f.end <= r.start || f.start >= r.end {
                i += 1;
                continue;
            }
            let left = Range::new(f.start, r.start.max(f.start));
            let right = Range::new(r.end.min(f.end), f.end);
            match (left.is_empty(), right.is_empty()) {
                (true, true) => {
                    self.remove(i);
                    continue;
                }
                (false, true) => self.ranges[i] = left,
                (true, false) => self.ranges[i] = right,
                (false, false) => {
                    self.ranges[i] = left;
                    self.insert(i + 1, right)?;
                    i += 1;
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// Allocates `frames` contiguous frames aligned to `align` bytes (a power of two, at
    /// least [`FRAME_SIZE`]) that end at or below `limit`. Returns the physical address.
    pub fn allocate(&mut self, frames: u64, align: u64, limit: u64) -> Option<u64> {
        let size = frames.checked_mul(FRAME_SIZE)?;
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(FRAME_SIZE);
        for i in 0..self.count {
            let f = self.ranges[i];
            let start = align_up(f.start, align);
            let end = start.checked_add(size)?;
            if end <= f.end && end <= limit {
                // Ignore the result: carving out of one existing range can need at most one
                // extra slot, and if there is none the leftover head is simply not kept.
                let _ = self.reserve(Range::new(start, end));
                return Some(start);
            }
        }
        None
    }

    fn insert(&mut self, pos: usize, r: Range) -> Result<(), FrameError> {
        if self.count == MAX_RANGES {
            return Err(FrameError::TooManyRanges);
        }
        self.ranges.copy_within(pos..self.count, pos + 1);
        self.ranges[pos] = r;
        self.count += 1;
        Ok(())
    }

    fn remove(&mut self, pos: usize) {
        self.ranges.copy_within(pos + 1..self.count, pos);
        self.count -= 1;
    }
}

pub const fn align_up(x: u64, a: u64) -> u64 {
    match x.checked_add(a - 1) {
        Some(v) => v & !(a - 1),
        None => !(a - 1),
    }
}

pub const fn align_down(x: u64, a: u64) -> u64 {
    x & !(a - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn alloc_with(ranges: &[(u64, u64)]) -> FrameAllocator {
        let mut a = FrameAllocator::new();
        for &(s, e) in ranges {
            a.add_ram(Range::new(s, e)).unwrap();
        }
        a
    }

    #[test]
    fn adjacent_ranges_merge_and_unaligned_edges_shrink() {
        let a = alloc_with(&[(0x1001, 0x5000), (0x5000, 0x9fff)]);
        assert_eq!(a.free_ranges(), &[Range::new(0x2000, 0x9000)]);
    }

    #[test]
    fn overlapping_map_entries_are_merged_not_double_counted() {
        let a = alloc_with(&[(0, 8 * MIB), (4 * MIB, 12 * MIB), (2 * MIB, 3 * MIB)]);
        assert_eq!(a.free_ranges(), &[Range::new(0, 12 * MIB)]);
        assert_eq!(a.free_bytes(), 12 * MIB);
    }

    #[test]
    fn double_free_is_refused() {
        let mut a = alloc_with(&[(0, MIB)]);
        assert!(matches!(
            a.free(Range::new(0x1000, 0x2000)),
            Err(FrameError::OverlapsFree(_))
        ));
    }

    #[test]
    fn reserve_splits_and_trims() {
        let mut a = alloc_with(&[(0, 16 * MIB)]);
        a.reserve(Range::new(0, MIB)).unwrap();
        a.reserve(Range::new(4 * MIB + 1, 5 * MIB - 1)).unwrap();
        a.reserve(Range::new(15 * MIB, 20 * MIB)).unwrap();
        assert_eq!(
            a.free_ranges(),
            &[Range::new(MIB, 4 * MIB), Range::new(5 * MIB, 15 * MIB)]
        );
    }

    #[test]
    fn allocation_honours_alignment_limit_and_never_repeats() {
        let mut a = alloc_with(&[(0x3000, 8 * MIB)]);
        let p = a.allocate(1, 2 * MIB, u64::MAX).unwrap();
        assert_eq!(p, 2 * MIB);
        let q = a.allocate(4, FRAME_SIZE, u64::MAX).unwrap();
        assert_eq!(q, 0x3000);
        assert!(a.allocate(1, FRAME_SIZE, 0x3000).is_none());
        // Everything handed out is gone from the free list.
        for r in a.free_ranges() {
            assert!(r.end <= p || r.start >= p + FRAME_SIZE);
            assert!(r.end <= q || r.start >= q + 4 * FRAME_SIZE);
        }
        assert_eq!(a.free_bytes(), 8 * MIB - 0x3000 - 5 * FRAME_SIZE);
    }

    #[test]
    fn allocation_fails_cleanly_when_too_big() {
        let mut a = alloc_with(&[(0, MIB)]);
        assert_eq!(a.allocate(257, FRAME_SIZE, u64::MAX), None);
        assert_eq!(a.allocate(u64::MAX, FRAME_SIZE, u64::MAX), None);
        assert_eq!(a.allocate(0, FRAME_SIZE, u64::MAX), None);
        assert_eq!(a.allocate(1, 3000, u64::MAX), None);
        assert_eq!(a.free_bytes(), MIB);
    }

    #[test]
    fn freeing_back_restores_one_range() {
        let mut a = alloc_with(&[(0, MIB)]);
        let p = a.allocate(16, FRAME_SIZE, u64::MAX).unwrap();
        a.free(Range::new(p, p + 16 * FRAME_SIZE)).unwrap();
        assert_eq!(a.free_ranges(), &[Range::new(0, MIB)]);
    }

    #[test]
    fn too_many_ranges_is_an_error_not_a_panic() {
        let mut a = FrameAllocator::new();
        let mut result = Ok(());
        for i in 0..(MAX_RANGES as u64 + 1) {
            result = a.free(Range::new(i * 2 * FRAME_SIZE, (i * 2 + 1) * FRAME_SIZE));
        }
        assert_eq!(result, Err(FrameError::TooManyRanges));
        assert_eq!(a.free_ranges().len(), MAX_RANGES);
    }
}
