//! [`HoleFrames`] for host tests: dom0 hole frames of a [`FakeXen`] made with
//! `FakeXen::with_dom0_holes`, handed out by the same `FrameSpace` the kernel uses.

use keel_xen::fake::FakeXen;
use keel_xen::frames::FrameSpace;
use keel_xen::memory::{memory_map, E820Entry};

use crate::guest_memory::HoleFrames;

/// The fake's dom0 holes.
pub struct FakeHoles<'x> {
    xen: &'x FakeXen,
    space: FrameSpace,
}

impl<'x> FakeHoles<'x> {
    /// The unusable ranges of the fake's dom0 memory map (read with `XENMEM_memory_map`,
    /// as the kernel does).
    pub fn new(xen: &'x FakeXen) -> Self {
        let mut buf = [E820Entry::default(); 16];
        let map = memory_map(xen, &mut buf).unwrap_or(&[]);
        let space = FrameSpace::from_e820(map).unwrap_or_else(|e| {
            panic!("FakeHoles needs FakeXen::with_dom0_holes: {e}");
        });
        FakeHoles { xen, space }
    }

    /// Hole frames not handed out (to check that every window was given back).
    pub fn free_frames(&self) -> u64 {
        self.space.free_frames()
    }
}

// SAFETY: the frames come from the fake's unusable range, which `with_dom0_holes` backs
// with contiguous memory at `hole_address`; `FrameSpace` never hands a frame out twice.
unsafe impl HoleFrames for FakeHoles<'_> {
    fn allocate(&mut self, count: u64) -> Option<u64> {
        self.space.allocate(count).ok()
    }

    fn free(&mut self, first: u64) {
        // Only frames this space handed out come back here.
        let _ = self.space.free(first);
    }

    fn address(&self, gfn: u64) -> *mut u8 {
        self.xen.hole_address(gfn).unwrap_or(core::ptr::null_mut())
    }
}
