//! Guest frames for pages Xen provides: where a PVH dom0 places shared_info, its own
//! grant-table frames and the foreign pages it maps from other domains.
//!
//! Such a frame must be a guest-physical address that is neither RAM (Xen would drop the
//! RAM page behind it, and the frame allocator might hand it out again) nor a device's
//! registers. In a PVH dom0's memory map, Xen marks the host RAM that dom0 did not get as
//! E820 "unusable": addresses that are real memory on the host, populated by nobody in
//! dom0's physical address space, and never claimed by a PCI BAR. [`FrameSpace`] hands out
//! frames from exactly those ranges (Linux's PVH dom0 makes the same choice for its
//! unpopulated-memory allocator). Xen always keeps some host memory for itself, so a dom0
//! memory map has such a range even without `dom0_mem=`.

use alloc::vec::Vec;

use crate::hypercall::PAGE_SIZE;
use crate::memory::{E820Entry, E820Kind};

/// Frames below 1 MiB are never used: firmware conventions live there.
const LOWEST_FRAME: u64 = 0x100;

/// Why frames could not be handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSpaceError {
    /// The memory map has no unusable range to place Xen's pages in.
    NoUnusableRange,
    /// No range has `requested` contiguous frames left.
    Exhausted { requested: u64 },
    /// Zero frames were asked for.
    ZeroFrames,
    /// The frame was never handed out, or was already returned.
    NotAllocated(u64),
}

impl core::fmt::Display for FrameSpaceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameSpaceError::NoUnusableRange => write!(
                f,
                "the memory map Xen gave dom0 has no unusable range for Xen's pages \
                 (shared_info, grant frames)"
            ),
            FrameSpaceError::Exhausted { requested } => write!(
                f,
                "no {requested} contiguous free frames left in the unusable ranges"
            ),
            FrameSpaceError::ZeroFrames => write!(f, "asked for zero frames"),
            FrameSpaceError::NotAllocated(gfn) => {
                write!(f, "frame {gfn:#x} was not handed out by this space")
            }
        }
    }
}

/// Allocator of guest frames inside the memory map's unusable ranges: first fit over
/// free ranges, coalesced on free, so windows mapped and unmapped over and over (the
/// domain builder's) never fragment it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpace {
    /// Free `[start, end)` frame ranges, sorted, never touching each other.
    free: Vec<(u64, u64)>,
    /// Every range currently handed out, `(start, count)`, to refuse bad returns.
    allocated: Vec<(u64, u64)>,
}

impl FrameSpace {
    /// The unusable ranges of `map`, shrunk to whole pages, above 1 MiB.
    pub fn from_e820(map: &[E820Entry]) -> Result<Self, FrameSpaceError> {
        let page = PAGE_SIZE as u64;
        let mut ranges: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| e.kind() == E820Kind::Unusable)
            .filter_map(|e| {
                let (addr, size) = (e.addr, e.size);
                let start = addr.checked_add(page - 1)? / page;
                let end = addr.checked_add(size)? / page;
                let start = start.max(LOWEST_FRAME);
                (start < end).then_some((start, end))
            })
            .collect();
        if ranges.is_empty() {
            return Err(FrameSpaceError::NoUnusableRange);
        }
        ranges.sort_unstable();
        let mut space = FrameSpace {
            free: Vec::new(),
            allocated: Vec::new(),
        };
        for (start, end) in ranges {
            space.insert_free(start, end);
        }
        Ok(space)
    }

    /// Frames not handed out.
    pub fn free_frames(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }

    /// `count` contiguous frames; returns the first guest frame number.
    pub fn allocate(&mut self, count: u64) -> Result<u64, FrameSpaceError> {
        if count == 0 {
            return Err(FrameSpaceError::ZeroFrames);
        }
        let index = self
            .free
            .iter()
            .position(|(s, e)| e - s >= count)
            .ok_or(FrameSpaceError::Exhausted { requested: count })?;
        let (start, end) = self.free[index];
        if end - start == count {
            self.free.remove(index);
        } else {
            self.free[index].0 = start + count;
        }
        self.allocated.push((start, count));
        Ok(start)
    }

    /// Gives back frames from [`FrameSpace::allocate`] (after Xen's page was removed).
    pub fn free(&mut self, gfn: u64) -> Result<(), FrameSpaceError> {
        let index = self
            .allocated
            .iter()
            .position(|&(start, _)| start == gfn)
            .ok_or(FrameSpaceError::NotAllocated(gfn))?;
        let (start, count) = self.allocated.swap_remove(index);
        self.insert_free(start, start + count);
        Ok(())
    }

    /// Adds `[start, end)` to the free ranges, merging with neighbours.
    fn insert_free(&mut self, mut start: u64, mut end: u64) {
        let at = self.free.partition_point(|&(s, _)| s < start);
        if at < self.free.len() && self.free[at].0 <= end {
            end = end.max(self.free[at].1);
            self.free.remove(at);
        }
        if at > 0 && self.free[at - 1].1 >= start {
            start = self.free[at - 1].0;
            end = end.max(self.free[at - 1].1);
            self.free.remove(at - 1);
            self.free.insert(at - 1, (start, end));
        } else {
            self.free.insert(at, (start, end));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e820(addr: u64, size: u64, kind: u32) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    /// What Xen gave a 512 MiB PVH dom0 on a 1 GiB q35 machine.
    fn dom0_map() -> Vec<E820Entry> {
        alloc::vec![
            e820(0, 0x9fc00, 1),
            e820(0x9fc00, 0x400, 2),
            e820(0xf0000, 0x10000, 2),
            e820(0x10_0000, 0x1ff0_0000, 1),
            e820(0x2000_0000, 0x1ffe_0000, 5),
            e820(0x3ffe_0000, 0x2_0000, 2),
            e820(0xb000_0000, 0x1000_0000, 2),
        ]
    }

    #[test]
    fn frames_come_from_the_unusable_range_only() {
        let mut space = FrameSpace::from_e820(&dom0_map()).unwrap();
        assert_eq!(space.free_frames(), 0x1ffe0);
        assert_eq!(space.allocate(1), Ok(0x20000));
        assert_eq!(space.allocate(4), Ok(0x20001));
        assert_eq!(space.allocate(1), Ok(0x20005));
        assert_eq!(space.free_frames(), 0x1ffe0 - 6);
    }

    #[test]
    fn ranges_are_shrunk_to_whole_pages_and_kept_above_1_mib() {
        let map = [
            e820(0x1800, 0x3000, 5),      // frames 2..4 only, below 1 MiB: dropped
            e820(0xff800, 0x2000, 5),     // 0xff800..0x101800: only frame 0x100
            e820(0x4000_0800, 0x1000, 5), // no whole page
        ];
        let mut space = FrameSpace::from_e820(&map).unwrap();
        assert_eq!(space.free_frames(), 1);
        assert_eq!(space.allocate(1), Ok(0x100));
        assert_eq!(
            space.allocate(1),
            Err(FrameSpaceError::Exhausted { requested: 1 })
        );
    }

    #[test]
    fn a_map_without_unusable_ranges_is_refused() {
        let map: Vec<E820Entry> = dom0_map().into_iter().filter(|e| { e.kind } != 5).collect();
        assert_eq!(
            FrameSpace::from_e820(&map),
            Err(FrameSpaceError::NoUnusableRange)
        );
        assert!(FrameSpaceError::NoUnusableRange
            .to_string()
            .contains("no unusable range"));
    }

    #[test]
    fn contiguous_requests_skip_ranges_that_are_too_small() {
        let map = [e820(0x20_0000, 0x2000, 5), e820(0x40_0000, 0x8000, 5)];
        let mut space = FrameSpace::from_e820(&map).unwrap();
        assert_eq!(space.allocate(4), Ok(0x400));
        assert_eq!(space.allocate(2), Ok(0x200));
        assert_eq!(
            space.allocate(5),
            Err(FrameSpaceError::Exhausted { requested: 5 })
        );
        assert_eq!(space.allocate(0), Err(FrameSpaceError::ZeroFrames));
    }

    #[test]
    fn returned_frames_are_reused_and_bad_returns_refused() {
        let map = [e820(0x20_0000, 0x3000, 5)];
        let mut space = FrameSpace::from_e820(&map).unwrap();
        let pair = space.allocate(2).unwrap();
        let last = space.allocate(1).unwrap();
        assert_eq!((pair, last), (0x200, 0x202));
        assert_eq!(
            space.allocate(1),
            Err(FrameSpaceError::Exhausted { requested: 1 })
        );
        assert_eq!(space.free(0x201), Err(FrameSpaceError::NotAllocated(0x201)));
        space.free(pair).unwrap();
        assert_eq!(space.free(pair), Err(FrameSpaceError::NotAllocated(pair)));
        assert_eq!(space.free_frames(), 2);
        let again = [space.allocate(1).unwrap(), space.allocate(1).unwrap()];
        assert!(again.contains(&0x200) && again.contains(&0x201));
    }

    #[test]
    fn freed_ranges_coalesce_for_large_requests_again() {
        let map = [e820(0x20_0000, 0x10_0000, 5)]; // 256 frames at 0x200
        let mut space = FrameSpace::from_e820(&map).unwrap();
        for _ in 0..100 {
            let a = space.allocate(100).unwrap();
            let b = space.allocate(100).unwrap();
            let c = space.allocate(50).unwrap();
            space.free(b).unwrap();
            space.free(a).unwrap();
            space.free(c).unwrap();
            assert_eq!(space.free_frames(), 256);
        }
        assert_eq!(space.allocate(256), Ok(0x200));
        space.free(0x200).unwrap();
        // Overlapping unusable entries merge too.
        let map = [e820(0x20_0000, 0x2000, 5), e820(0x20_1000, 0x2000, 5)];
        let mut space = FrameSpace::from_e820(&map).unwrap();
        assert_eq!(space.free_frames(), 3);
        assert_eq!(space.allocate(3), Ok(0x200));
    }
}
