//! Dom0 hole frames for foreign mappings: runs of the [`super::FrameSpace`] (E820-unusable
//! ranges, never our RAM: Xen would free a RAM page mapped over), identity-mapped
//! write-back, handed to the domain builder as [`HoleFrames`] and to the guest backends as
//! [`MapFrames`] for single ring pages.
//!
//! Mapping a run that was mapped before is a no-op for our page tables, and only Xen's p2m
//! entry behind each frame changes as guest pages come and go, so a run can be handed out,
//! freed and handed out again without TLB work here. Runs come back at other alignments
//! (a window, then ring pages and persistent grants in its place, then a window again), so
//! a 2 MiB slot may already hold a table of 4 KiB pages when a run covers it whole:
//! `memory::map_range` then fills that table instead of taking the slot as mapped
//! (keel_memory::identity; the page faults in docs/blkback.md).

use keel_console::XenconsInterface;
use keel_domain_builder::HoleFrames;
use keel_toolstack::MapFrames;
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::xenstore_ring::XenstoreDomainInterface;

use crate::memory;

/// The kernel's hole frames. Stateless: every value shares the one frame space.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelHoles;

// SAFETY: runs come from the frame space, which hands out only frames that are neither RAM
// nor device memory, and never twice until freed. Every run is identity-mapped write-back
// (`map_firmware`) before it is handed out, so `address(gfn)` = `gfn << 12` is valid for the
// whole run once Xen has put guest pages behind it.
unsafe impl HoleFrames for KernelHoles {
    fn allocate(&mut self, count: u64) -> Option<u64> {
        let bytes = count.checked_mul(PAGE_SIZE as u64)?;
        let first = super::with_frames(|f| f.allocate(count)).ok()?;
        match memory::map_firmware(first * PAGE_SIZE as u64, bytes) {
            Ok(_) => Some(first),
            Err(e) => {
                log::warn!("xen: cannot map {count} hole frames at {first:#x}: {e}");
                let _ = super::with_frames(|f| f.free(first));
                None
            }
        }
    }

    fn free(&mut self, first: u64) {
        if let Err(e) = super::with_frames(|f| f.free(first)) {
            log::error!("xen: freeing hole frames at {first:#x}: {e}");
        }
    }

    fn address(&self, gfn: u64) -> *mut u8 {
        (gfn * PAGE_SIZE as u64) as *mut u8
    }
}

/// One hole frame per guest page, mapped for the lifetime of the guest's device.
fn allocate_page() -> Option<u64> {
    KernelHoles.allocate(1)
}

/// Frames for guests' xenstore rings, seen as `xenstore_domain_interface`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreFrames;

impl MapFrames for StoreFrames {
    type View = &'static XenstoreDomainInterface;

    fn allocate(&mut self) -> Option<u64> {
        allocate_page()
    }

    fn free(&mut self, gfn: u64) {
        KernelHoles.free(gfn);
    }

    fn view(&self, gfn: u64) -> Self::View {
        const _: () = assert!(core::mem::size_of::<XenstoreDomainInterface>() <= PAGE_SIZE);
        // SAFETY: `gfn` came from `allocate` (an identity-mapped hole frame of our own) and
        // the guest's store page is mapped there now; the interface is 2076 bytes of
        // atomics and byte arrays, valid for any content the guest writes. The toolstack
        // drops the view before it unmaps and frees the frame.
        unsafe { &*((gfn * PAGE_SIZE as u64) as *const XenstoreDomainInterface) }
    }
}

/// Frames for guests' console rings, seen as `xencons_interface`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConsoleFrames;

impl MapFrames for ConsoleFrames {
    type View = &'static XenconsInterface;

    fn allocate(&mut self) -> Option<u64> {
        allocate_page()
    }

    fn free(&mut self, gfn: u64) {
        KernelHoles.free(gfn);
    }

    fn view(&self, gfn: u64) -> Self::View {
        const _: () = assert!(core::mem::size_of::<XenconsInterface>() <= PAGE_SIZE);
        // SAFETY: as for `StoreFrames::view`: our own identity-mapped hole frame with the
        // guest's console page behind it; the interface is atomics and byte arrays.
        unsafe { &*((gfn * PAGE_SIZE as u64) as *const XenconsInterface) }
    }
}
