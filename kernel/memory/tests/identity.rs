//! Identity maps laid over real `x86_64` page tables (in host memory) the way the kernel's
//! `memory::map_range` lays them: Xen's hole frames mapped for one domain-builder window
//! and then for another at a different alignment (docs/blkback.md: the page faults at
//! offset 0x65000 of a 2 MiB slot).

use x86_64::structures::paging::mapper::{MapToError, MappedFrame, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as Flags, PhysFrame,
    Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use keel_memory::identity::{plan, slot_of, Slot, Step, HUGE_PAGE_SIZE};
use keel_memory::FRAME_SIZE;

/// Page-table frames from the host heap: with a physical offset of 0, a table's "physical"
/// address is its host address, so the crate walks real tables.
#[derive(Default)]
struct HostFrames {
    tables: Vec<Box<PageTable>>,
}

// SAFETY: every frame is a fresh, zeroed, 4096-aligned `PageTable` kept alive (and never
// handed out again) for as long as the allocator, which outlives the page table using it.
unsafe impl FrameAllocator<Size4KiB> for HostFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let table = Box::new(PageTable::new());
        let addr = &*table as *const PageTable as u64;
        self.tables.push(table);
        PhysFrame::from_start_address(PhysAddr::new(addr)).ok()
    }
}

struct Tables {
    table: OffsetPageTable<'static>,
    frames: HostFrames,
}

impl Tables {
    fn new() -> Self {
        let l4: &'static mut PageTable = Box::leak(Box::new(PageTable::new()));
        // SAFETY: physical offset 0: every table frame (the leaked level 4, the allocator's
        // boxes) is reachable at its own address in this process.
        let table = unsafe { OffsetPageTable::new(l4, VirtAddr::new(0)) };
        Tables {
            table,
            frames: HostFrames::default(),
        }
    }

    /// The kernel's `map_range` loop (write-back: a 4 KiB page inside another huge page
    /// counts as mapped).
    fn identity_map(&mut self, start: u64, end: u64) {
        let flags = Flags::PRESENT | Flags::WRITABLE;
        let mut addr = start - start % FRAME_SIZE;
        while addr < end {
            let step = plan(addr, end, slot_of(&self.table, addr));
            match step {
                Step::Huge(at) => {
                    let page = Page::<Size2MiB>::containing_address(VirtAddr::new(at));
                    let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(at));
                    // SAFETY: the entries are only walked, never used for an access.
                    let mapped = unsafe {
                        self.table
                            .map_to(page, frame, flags | Flags::HUGE_PAGE, &mut self.frames)
                    };
                    assert!(mapped.is_ok(), "2 MiB page at {at:#x}: {mapped:?}");
                    mapped.map(|flush| flush.ignore()).ok();
                }
                Step::HugeAlreadyMapped(_) => {}
                Step::Page(at) => {
                    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(at));
                    let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(at));
                    // SAFETY: as above.
                    match unsafe { self.table.map_to(page, frame, flags, &mut self.frames) } {
                        Ok(flush) => flush.ignore(),
                        Err(MapToError::PageAlreadyMapped(_))
                        | Err(MapToError::ParentEntryHugePage) => {}
                        Err(e) => panic!("4 KiB page at {at:#x}: {e:?}"),
                    }
                }
            }
            addr = step.next();
        }
    }

    /// The first page of `[start, end)` that does not translate to itself.
    fn first_unmapped(&self, start: u64, end: u64) -> Option<u64> {
        (start..end).step_by(FRAME_SIZE as usize).find(|&addr| {
            !matches!(
                self.table.translate(VirtAddr::new(addr)),
                TranslateResult::Mapped { frame, offset, .. }
                    if frame.start_address().as_u64() + offset == addr
            )
        })
    }
}

/// Where Xen's unusable range (dom0's hole frames) began in the failing runs.
const HOLES: u64 = 0x2000_0000;
/// Frames of a `GuestWriter` window.
const WINDOW: u64 = 1024 * FRAME_SIZE;

#[test]
fn a_window_over_a_slot_with_a_4k_table_maps_every_page() {
    let mut t = Tables::new();
    // 101 hole frames in use (shared_info, grant frames, rings…): the first window starts
    // unaligned and ends 0x65000 into the slot at 0x20400000 with 4 KiB pages.
    let first = HOLES + 0x65 * FRAME_SIZE;
    t.identity_map(first, first + WINDOW);
    assert_eq!(t.first_unmapped(first, first + WINDOW), None);
    assert_eq!(slot_of(&t.table, HOLES + 0x40_0000), Slot::Table);
    // Those frames freed, a later window at another alignment covers that slot whole.
    let second = HOLES + 0x20_0000;
    t.identity_map(second, second + WINDOW);
    assert_eq!(t.first_unmapped(second, second + WINDOW), None);
}

#[test]
fn the_crate_reports_a_slot_with_a_table_as_already_mapped() {
    // Why `slot_of` must be asked first: map_to names the requested frame either way.
    let mut t = Tables::new();
    let slot = HOLES + 0x40_0000;
    t.identity_map(slot, slot + 0x65 * FRAME_SIZE);
    let page = Page::<Size2MiB>::containing_address(VirtAddr::new(slot));
    let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(slot));
    // SAFETY: the entries are only walked.
    let result = unsafe {
        t.table.map_to(
            page,
            frame,
            Flags::PRESENT | Flags::WRITABLE | Flags::HUGE_PAGE,
            &mut t.frames,
        )
    };
    assert!(matches!(result, Err(MapToError::PageAlreadyMapped(f)) if f == frame));
    assert_eq!(
        t.first_unmapped(slot, slot + HUGE_PAGE_SIZE),
        Some(slot + 0x65 * FRAME_SIZE)
    );
}

#[test]
fn a_huge_page_is_reused_and_pages_inside_it_stay_mapped() {
    let mut t = Tables::new();
    t.identity_map(HOLES, HOLES + HUGE_PAGE_SIZE);
    assert_eq!(slot_of(&t.table, HOLES), Slot::Huge { phys: HOLES });
    assert_eq!(
        plan(HOLES, HOLES + HUGE_PAGE_SIZE, slot_of(&t.table, HOLES)),
        Step::HugeAlreadyMapped(HOLES)
    );
    // A single ring page inside it, then the whole slot again: still one huge page.
    t.identity_map(HOLES + 0x7000, HOLES + 0x8000);
    t.identity_map(HOLES, HOLES + HUGE_PAGE_SIZE);
    assert!(matches!(
        t.table.translate(VirtAddr::new(HOLES + 0x1234)),
        TranslateResult::Mapped {
            frame: MappedFrame::Size2MiB(_),
            ..
        }
    ));
    assert_eq!(t.first_unmapped(HOLES, HOLES + HUGE_PAGE_SIZE), None);
}

#[test]
fn an_empty_slot_is_empty_and_a_partial_range_gets_4k_pages() {
    let t = Tables::new();
    assert_eq!(slot_of(&t.table, HOLES), Slot::Empty);
    assert_eq!(
        plan(HOLES, HOLES + HUGE_PAGE_SIZE - FRAME_SIZE, Slot::Empty),
        Step::Page(HOLES)
    );
    assert_eq!(
        plan(HOLES + FRAME_SIZE, HOLES + 2 * HUGE_PAGE_SIZE, Slot::Empty),
        Step::Page(HOLES + FRAME_SIZE)
    );
    assert_eq!(
        plan(HOLES, HOLES + HUGE_PAGE_SIZE, Slot::Table),
        Step::Page(HOLES)
    );
}
