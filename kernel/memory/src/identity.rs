//! How an identity mapping of `[start, end)` is laid over page tables that already map
//! other ranges: a 2 MiB page where a whole, 2 MiB-aligned slot is wanted and the slot is
//! empty, 4 KiB pages everywhere else, including inside a slot that already has a 4 KiB
//! table.
//!
//! The last case is why this exists. `x86_64`'s `Mapper<Size2MiB>::map_to` refuses a slot
//! whose level-2 entry is in use with `PageAlreadyMapped(frame)`, naming the frame it was
//! *asked* to map, whether the entry is that huge page or a table of 4 KiB pages. Read as
//! "already mapped", the slot kept only the 4 KiB pages mapped before: Xen's hole frames
//! (reused by the domain builder's windows at other alignments) then faulted at the first
//! page the old table did not have (docs/blkback.md). The kernel's `memory::map_range`
//! asks [`slot_of`] before it maps anything and maps what [`plan`] says.

use x86_64::structures::paging::mapper::{MappedFrame, TranslateError, TranslateResult};
use x86_64::structures::paging::{Mapper, Page, Size2MiB, Translate};
use x86_64::VirtAddr;

use crate::FRAME_SIZE;

/// Bytes of a 2 MiB page.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// What the page tables hold for the 2 MiB slot of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Nothing: the level-2 entry (or a level above) is unused.
    Empty,
    /// A 2 MiB page of this physical address (or a 1 GiB page above it).
    Huge { phys: u64 },
    /// A table of 4 KiB pages, some of them possibly unmapped.
    Table,
}

/// The next mapping step of an identity map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Map the 2 MiB page at this address.
    Huge(u64),
    /// The slot already holds the 2 MiB page at this address: nothing to do.
    HugeAlreadyMapped(u64),
    /// Map the 4 KiB page at this address (or find it already mapped).
    Page(u64),
}

impl Step {
    /// Where the step after this one starts.
    pub fn next(self) -> u64 {
        match self {
            Step::Huge(addr) | Step::HugeAlreadyMapped(addr) => addr + HUGE_PAGE_SIZE,
            Step::Page(addr) => addr + FRAME_SIZE,
        }
    }
}

/// What `table` holds for the 2 MiB slot containing `addr`.
pub fn slot_of<T: Translate + Mapper<Size2MiB>>(table: &T, addr: u64) -> Slot {
    let slot = addr - addr % HUGE_PAGE_SIZE;
    let virt = VirtAddr::new(slot);
    match Mapper::<Size2MiB>::translate_page(table, Page::containing_address(virt)) {
        Err(TranslateError::PageNotMapped) => Slot::Empty,
        Err(TranslateError::ParentEntryHugePage) => match table.translate(virt) {
            TranslateResult::Mapped { frame, offset, .. } => Slot::Huge {
                phys: frame.start_address().as_u64() + offset,
            },
            _ => Slot::Table,
        },
        // The entry is in use: a 2 MiB page, or a table whose frame happens to be (or not
        // to be) 2 MiB-aligned. Only the full walk tells which.
        Ok(_) | Err(TranslateError::InvalidFrameAddress(_)) => match table.translate(virt) {
            TranslateResult::Mapped {
                frame: MappedFrame::Size2MiB(frame),
                ..
            } => Slot::Huge {
                phys: frame.start_address().as_u64(),
            },
            _ => Slot::Table,
        },
    }
}

/// The step that maps `addr` (4 KiB-aligned) on the way to `end`, given what its slot
/// holds. A 2 MiB page only into an empty slot the range covers whole; a slot holding a
/// huge page of another address, or a table, gets 4 KiB pages (the caller decides whether
/// a 4 KiB page inside someone else's huge page is a conflict).
pub fn plan(addr: u64, end: u64, slot: Slot) -> Step {
    let whole_slot = addr.is_multiple_of(HUGE_PAGE_SIZE) && end - addr >= HUGE_PAGE_SIZE;
    match slot {
        Slot::Empty if whole_slot => Step::Huge(addr),
        Slot::Huge { phys } if whole_slot && phys == addr => Step::HugeAlreadyMapped(addr),
        _ => Step::Page(addr),
    }
}
