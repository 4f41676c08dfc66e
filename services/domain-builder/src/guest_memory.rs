//! Reaching a guest's memory from dom0: its frames are mapped, a bounded window at a time,
//! into *holes* of dom0's physical address space (`XENMEM_add_to_physmap_batch` with
//! `XENMAPSPACE_gmfn_foreign`), read and written there, and unmapped
//! (`XENMEM_remove_from_physmap`) when the [`Window`] is dropped.
//!
//! Never into dom0 RAM: Xen would free the RAM page under the mapping. The kernel supplies
//! the holes through [`HoleFrames`] (its `FrameSpace` of E820-unusable ranges, identity
//! mapped); everything else is here.

use core::cell::{Cell, RefCell};
use core::ops::Range;

use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::memory::{
    acquire_resource, map_foreign_frames, remove_from_physmap, ForeignMapError, ResourceType,
};
use keel_xen::{Hypervisor, XenError};

/// Frames per `add_to_physmap_batch` call.
const MAP_BATCH: usize = 512;
/// Frames of the window [`GuestWriter`] moves through guest memory: 4 MiB.
pub const WRITE_WINDOW_FRAMES: u64 = 1024;

/// Dom0 frames where foreign pages may be mapped, and where dom0 reaches them.
///
/// # Safety
/// Implementors promise that the frames [`HoleFrames::allocate`] hands out are holes in
/// dom0's physical address space (neither RAM nor device memory), not handed out again
/// until freed, and that [`HoleFrames::address`] of the first of `count` allocated frames
/// is valid for reads and writes of `count × 4096` bytes once guest pages are mapped there
/// (the kernel: `gfn << 12` through its identity map), touched by nothing else.
pub unsafe trait HoleFrames {
    /// `count` contiguous hole frames; the first one, or `None` when none are left.
    fn allocate(&mut self, count: u64) -> Option<u64>;
    /// Gives back frames from [`HoleFrames::allocate`], named by the first one; nothing is
    /// mapped there any more.
    fn free(&mut self, first: u64);
    /// Dom0's virtual address of hole frame `gfn`.
    fn address(&self, gfn: u64) -> *mut u8;
}

/// Why guest memory could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Dom0 has no `frames` contiguous hole frames left.
    NoHoles { frames: u64 },
    /// Xen refused to map (an unpopulated guest frame, a dying domain…).
    Xen(XenError),
    /// A write aimed at a guest frame the builder did not populate.
    NotPopulated { gfn: u64 },
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::NoHoles { frames } => {
                write!(
                    f,
                    "dom0 has no {frames} contiguous hole frames to map guest memory"
                )
            }
            MapError::Xen(e) => write!(f, "Xen refused to map guest memory: {e}"),
            MapError::NotPopulated { gfn } => write!(f, "guest frame {gfn:#x} is not populated"),
        }
    }
}

/// A guest's memory as seen from dom0.
pub struct GuestMemory<'a, H: Hypervisor + ?Sized, F: HoleFrames> {
    hv: &'a H,
    holes: RefCell<&'a mut F>,
    domid: u16,
    /// Frames whose unmapping failed twice; they keep the domain from dying.
    leaked: Cell<u64>,
}

impl<'a, H: Hypervisor + ?Sized, F: HoleFrames> GuestMemory<'a, H, F> {
    pub fn new(hv: &'a H, holes: &'a mut F, domid: u16) -> Self {
        Self::resume(hv, holes, domid, 0)
    }

    /// The same guest's memory again, `leaked` frames already lost by earlier calls (a
    /// stepped build reaches the guest through a new `GuestMemory` per step).
    pub fn resume(hv: &'a H, holes: &'a mut F, domid: u16, leaked: u64) -> Self {
        GuestMemory {
            hv,
            holes: RefCell::new(holes),
            domid,
            leaked: Cell::new(leaked),
        }
    }

    pub fn domid(&self) -> u16 {
        self.domid
    }

    pub fn hypervisor(&self) -> &'a H {
        self.hv
    }

    /// Dom0 frames still mapping guest pages because unmapping failed.
    pub fn leaked_frames(&self) -> u64 {
        self.leaked.get()
    }

    /// Maps guest frames `[gfn, gfn + frames)`; they stay mapped until the window drops.
    pub fn map(&self, gfn: u64, frames: u64) -> Result<Window<'_, 'a, H, F>, MapError> {
        let local = self
            .holes
            .borrow_mut()
            .allocate(frames)
            .ok_or(MapError::NoHoles { frames })?;
        let mut window = Window {
            memory: self,
            local,
            gfn,
            frames: 0,
            leaked_before: self.leaked.get(),
        };
        let mut foreign = alloc::vec::Vec::new();
        let mut dom0 = alloc::vec::Vec::new();
        let mut done = 0u64;
        while done < frames {
            let n = (frames - done).min(MAP_BATCH as u64);
            foreign.clear();
            dom0.clear();
            foreign.extend(gfn + done..gfn + done + n);
            dom0.extend(local + done..local + done + n);
            match map_foreign_frames(self.hv, self.domid, &foreign, &dom0) {
                Ok(()) => {
                    done += n;
                    window.frames = done;
                }
                Err(ForeignMapError::Call(e)) => return Err(MapError::Xen(e)),
                Err(ForeignMapError::Entries { error, mapped, .. }) => {
                    // Entries that did map must come down with the rest.
                    for (i, ok) in mapped.iter().enumerate() {
                        if *ok {
                            self.unmap_frame(local + done + i as u64);
                        }
                    }
                    return Err(MapError::Xen(error));
                }
            }
        }
        Ok(window)
    }

    /// Maps the guest's grant-table frame 0 (`XENMEM_acquire_resource`), to seed it.
    pub fn map_grant_frame(&self) -> Result<Window<'_, 'a, H, F>, MapError> {
        let local = self
            .holes
            .borrow_mut()
            .allocate(1)
            .ok_or(MapError::NoHoles { frames: 1 })?;
        let mut window = Window {
            memory: self,
            local,
            gfn: 0,
            frames: 0,
            leaked_before: self.leaked.get(),
        };
        let mut frames = [local];
        acquire_resource(
            self.hv,
            self.domid,
            ResourceType::GrantTable,
            0,
            0,
            &mut frames,
        )
        .map_err(MapError::Xen)?;
        window.frames = 1;
        Ok(window)
    }

    /// A window kept mapped past this `GuestMemory` ([`Window::into_run`]) taken back;
    /// it unmaps when dropped, as any window.
    pub fn adopt(&self, run: MappedRun) -> Window<'_, 'a, H, F> {
        Window {
            memory: self,
            local: run.local,
            gfn: run.gfn,
            frames: run.frames,
            leaked_before: self.leaked.get(),
        }
    }

    /// Dom0's address of a kept window's first byte (valid for its frames while mapped).
    pub fn run_address(&self, run: &MappedRun) -> *mut u8 {
        self.holes.borrow().address(run.local)
    }

    fn unmap_frame(&self, local: u64) {
        // One retry: a transient failure must not keep the guest's page pinned.
        let ok = remove_from_physmap(self.hv, local).is_ok()
            || remove_from_physmap(self.hv, local).is_ok();
        if !ok {
            self.leaked.set(self.leaked.get() + 1);
        }
    }
}

/// Guest frames mapped into dom0; unmapped on drop.
pub struct Window<'m, 'a, H: Hypervisor + ?Sized, F: HoleFrames> {
    memory: &'m GuestMemory<'a, H, F>,
    /// First dom0 hole frame.
    local: u64,
    /// First guest frame.
    gfn: u64,
    /// Frames currently mapped (all of them once `map` returns).
    frames: u64,
    /// [`GuestMemory::leaked_frames`] when the window was made: a frame of a failed batch
    /// that would not unmap (in `map`, before the window drops) keeps the run too.
    leaked_before: u64,
}

/// A window kept mapped across calls, holding no borrow: give it back to a
/// [`GuestMemory`] of the same guest with [`GuestMemory::adopt`] to use or unmap it. Dropped
/// as it is, its frames stay mapped (and the guest's pages pinned) for good.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a kept window stays mapped until a GuestMemory adopts and drops it"]
pub struct MappedRun {
    local: u64,
    gfn: u64,
    frames: u64,
}

impl MappedRun {
    pub fn gfn(&self) -> u64 {
        self.gfn
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }
}

impl<H: Hypervisor + ?Sized, F: HoleFrames> Window<'_, '_, H, F> {
    /// Keeps the window mapped after this borrow of the guest's memory ends.
    pub fn into_run(self) -> MappedRun {
        let run = MappedRun {
            local: self.local,
            gfn: self.gfn,
            frames: self.frames,
        };
        core::mem::forget(self);
        run
    }

    /// First guest frame of the window.
    pub fn gfn(&self) -> u64 {
        self.gfn
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The guest's bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        let ptr = self.memory.holes.borrow().address(self.local);
        // SAFETY: by the `HoleFrames` contract `ptr` is valid for the window's frames, which
        // are mapped to guest pages for as long as this window lives; the `&mut self`
        // borrow makes this the only reference, and no two windows share hole frames.
        unsafe { core::slice::from_raw_parts_mut(ptr, self.frames as usize * PAGE_SIZE) }
    }
}

impl<H: Hypervisor + ?Sized, F: HoleFrames> Drop for Window<'_, '_, H, F> {
    fn drop(&mut self) {
        for i in 0..self.frames {
            self.memory.unmap_frame(self.local + i);
        }
        // Hole frames still showing a guest page are never handed out again.
        if self.memory.leaked.get() == self.leaked_before {
            self.memory.holes.borrow_mut().free(self.local);
        }
    }
}

/// Writes at guest-physical addresses through a window that follows the writes.
pub struct GuestWriter<'m, 'a, H: Hypervisor + ?Sized, F: HoleFrames> {
    memory: &'m GuestMemory<'a, H, F>,
    /// Populated guest frame ranges; windows never leave the one they start in.
    populated: &'m [Range<u64>],
    window: Option<Window<'m, 'a, H, F>>,
    window_frames: u64,
}

impl<'m, 'a, H: Hypervisor + ?Sized, F: HoleFrames> GuestWriter<'m, 'a, H, F> {
    /// A writer whose windows are at most `window_frames` frames.
    pub fn new(
        memory: &'m GuestMemory<'a, H, F>,
        populated: &'m [Range<u64>],
        window_frames: u64,
    ) -> Self {
        GuestWriter {
            memory,
            populated,
            window: None,
            window_frames: window_frames.max(1),
        }
    }

    /// A writer whose current window was kept by [`GuestWriter::suspend`].
    pub fn resume(
        memory: &'m GuestMemory<'a, H, F>,
        populated: &'m [Range<u64>],
        window_frames: u64,
        window: Option<MappedRun>,
    ) -> Self {
        let mut writer = Self::new(memory, populated, window_frames);
        writer.window = window.map(|run| memory.adopt(run));
        writer
    }

    /// Ends this writer but keeps its window mapped for [`GuestWriter::resume`].
    pub fn suspend(mut self) -> Option<MappedRun> {
        self.window.take().map(Window::into_run)
    }

    /// The window covering `gfn`, mapped on demand.
    fn window_for(&mut self, gfn: u64) -> Result<&mut Window<'m, 'a, H, F>, MapError> {
        let covered = self
            .window
            .as_ref()
            .is_some_and(|w| gfn >= w.gfn && gfn < w.gfn + w.frames);
        if !covered {
            // Unmap first: the old window's hole frames are reused.
            self.window = None;
            let range = self
                .populated
                .iter()
                .find(|r| r.contains(&gfn))
                .ok_or(MapError::NotPopulated { gfn })?;
            // Windows start where the write does: streams map forward a window at a time.
            let end = (gfn + self.window_frames).min(range.end);
            let start = gfn;
            self.window = Some(self.memory.map(start, end - start)?);
        }
        self.window.as_mut().ok_or(MapError::NotPopulated { gfn })
    }

    /// Runs `f` on the guest bytes `[addr, addr + len)`, a window's worth at a time.
    fn each_span(
        &mut self,
        mut addr: u64,
        len: usize,
        mut f: impl FnMut(&mut [u8], usize),
    ) -> Result<(), MapError> {
        let page = PAGE_SIZE as u64;
        let mut done = 0usize;
        while done < len {
            let gfn = addr / page;
            let window = self.window_for(gfn)?;
            let offset = ((gfn - window.gfn) * page + addr % page) as usize;
            let bytes = window.bytes();
            let n = (bytes.len() - offset).min(len - done);
            f(&mut bytes[offset..offset + n], done);
            done += n;
            addr += n as u64;
        }
        Ok(())
    }

    /// Copies `data` to guest-physical `addr`.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MapError> {
        self.each_span(addr, data.len(), |dst, at| {
            dst.copy_from_slice(&data[at..at + dst.len()]);
        })
    }

    /// Zeroes `[addr, addr + len)`.
    pub fn zero(&mut self, addr: u64, len: u64) -> Result<(), MapError> {
        let len = usize::try_from(len).map_err(|_| MapError::NoHoles { frames: u64::MAX })?;
        self.each_span(addr, len, |dst, _| dst.fill(0))
    }
}

/// Somewhere the kernel loader can put bytes at guest-physical addresses: a
/// [`GuestWriter`] in the builder, a plain buffer in unit tests.
pub trait GuestWrite {
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MapError>;
    fn zero(&mut self, addr: u64, len: u64) -> Result<(), MapError>;
}

impl<H: Hypervisor + ?Sized, F: HoleFrames> GuestWrite for GuestWriter<'_, '_, H, F> {
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MapError> {
        GuestWriter::write(self, addr, data)
    }
    fn zero(&mut self, addr: u64, len: u64) -> Result<(), MapError> {
        GuestWriter::zero(self, addr, len)
    }
}
