//! Physical memory, page tables and the heap.
//!
//! Keel runs in one address space with virtual = physical. After boot, [`init`] replaces the
//! trampoline's tables (4 GiB of write-back 2 MiB pages) with tables that map only RAM
//! (write-back, 2 MiB pages where possible, page 0 left unmapped to catch null pointers).
//! Device memory is mapped on demand by [`map_mmio`] as uncached, and firmware tables by
//! [`map_firmware`] as write-back. Page-table frames come from below 4 GiB while the boot
//! tables are live, since only that much is reachable then.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use keel_memory::identity::{self, Step};
use keel_memory::{align_down, align_up, FrameAllocator, Range, FRAME_SIZE};
use spin::Mutex;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::MapToError;
use x86_64::structures::paging::{
    FrameAllocator as PagingFrameAllocator, Mapper, OffsetPageTable, Page, PageTable,
    PageTableFlags as Flags, PhysFrame, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

const TWO_MIB: u64 = 2 << 20;
const FOUR_GIB: u64 = 4 << 30;

/// Physical addresses [`map_mmio`] and [`map_firmware`] can map: virtual = physical, so a
/// mapping must stay in the lower canonical half of the address space.
pub const MAPPABLE_BELOW: u64 = 1 << 47;

static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());
static PAGE_TABLES: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);

#[global_allocator]
static HEAP: CountingHeap = CountingHeap {
    talc: talc::TalcLock::new(talc::source::Manual),
    used: AtomicUsize::new(0),
    size: AtomicUsize::new(0),
};

/// The heap, counting the bytes it has handed out (dom0's `memory` data source in the
/// metering, docs/metering.md).
struct CountingHeap {
    talc: talc::TalcLock<spin::Mutex<()>, talc::source::Manual>,
    used: AtomicUsize,
    size: AtomicUsize,
}

// SAFETY: every call forwards to talc's allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.talc.alloc(layout) };
        if !ptr.is_null() {
            self.used.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.talc.dealloc(ptr, layout) };
        self.used.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let moved = unsafe { self.talc.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            self.used.fetch_add(new_size, Ordering::Relaxed);
            self.used.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        moved
    }
}

/// Heap bytes handed out and not yet freed, and the heap's size.
pub fn heap_usage() -> (usize, usize) {
    (
        HEAP.used.load(Ordering::Relaxed),
        HEAP.size.load(Ordering::Relaxed),
    )
}

/// How memory was set up, for the boot log.
pub struct MemoryReport {
    pub ram_bytes: u64,
    pub heap_bytes: u64,
    pub free_frame_bytes: u64,
}

/// Errors from mapping memory.
#[derive(Debug)]
pub enum MapError {
    /// No free frame for a page table.
    OutOfFrames,
    /// Part of the range is already mapped differently (inside a RAM huge page, say).
    Conflict { phys: u64 },
    /// The range reaches [`MAPPABLE_BELOW`] or beyond.
    OutOfReach { phys: u64, size: u64 },
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::OutOfFrames => write!(f, "no free memory for page tables"),
            MapError::Conflict { phys } => write!(f, "{phys:#x} is already mapped differently"),
            MapError::OutOfReach { phys, size } => write!(
                f,
                "{size:#x} bytes at {phys:#x} reach past the identity map's end {MAPPABLE_BELOW:#x}"
            ),
        }
    }
}

/// Why memory could not be set up (the boot cannot continue).
#[derive(Debug)]
pub enum InitError {
    /// No free frame for the top-level page table.
    NoPageTable,
    /// RAM could not be identity-mapped.
    MapRam { addr: u64 },
    /// No contiguous run of frames for the heap, not even a quarter of the wanted size.
    NoHeap { frames: u64 },
    /// The allocator refused the heap arena.
    HeapTooSmall { bytes: u64 },
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NoPageTable => write!(f, "no memory for the top-level page table"),
            InitError::MapRam { addr } => write!(f, "cannot map RAM at {addr:#x}"),
            InitError::NoHeap { frames } => {
                write!(
                    f,
                    "not enough contiguous memory for a heap of {frames} frames"
                )
            }
            InitError::HeapTooSmall { bytes } => {
                write!(f, "heap arena of {bytes:#x} bytes too small")
            }
        }
    }
}

/// Caching for a mapping.
#[derive(Clone, Copy)]
pub enum Cache {
    WriteBack,
    Uncached,
}

struct Frames;

// SAFETY: frames come from the free list and are handed out once.
unsafe impl PagingFrameAllocator<Size4KiB> for Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let phys = FRAMES.lock().allocate(1, FRAME_SIZE, FOUR_GIB)?;
        // SAFETY: identity-mapped, freshly allocated, below 4 GiB (mapped by either table).
        unsafe { core::ptr::write_bytes(phys as *mut u8, 0, FRAME_SIZE as usize) };
        PhysFrame::from_start_address(PhysAddr::new(phys)).ok()
    }
}

/// Builds the frame allocator from the RAM ranges and the ranges already in use, builds and
/// loads the real page tables, and creates the heap.
///
/// # Safety
/// Call once, early, with interrupts off; `ram` must describe real RAM and `in_use` every
/// range the boot still needs (image, boot structures, command line, modules).
pub unsafe fn init(ram: &[Range], in_use: &[Range]) -> Result<MemoryReport, InitError> {
    let mut frames = FRAMES.lock();
    for r in ram {
        if let Err(e) = frames.add_ram(*r) {
            log::warn!("memory: ignoring RAM {:#x}..{:#x}: {e}", r.start, r.end);
        }
    }
    // The first MiB holds firmware structures (BIOS data, EBDA, option ROMs).
    let mut reserved = [Range::new(0, 1 << 20)]
        .into_iter()
        .chain(in_use.iter().copied());
    for r in reserved.by_ref() {
        if let Err(e) = frames.reserve(r) {
            log::warn!(
                "memory: could not reserve {:#x}..{:#x}: {e}",
                r.start,
                r.end
            );
        }
    }
    drop(frames);

    let l4_phys = Frames.allocate_frame().ok_or(InitError::NoPageTable)?;
    // SAFETY: identity mapping; the frame is fresh, zeroed and exclusively ours.
    let l4 = unsafe { &mut *(l4_phys.start_address().as_u64() as *mut PageTable) };
    // SAFETY: virtual = physical (offset 0) for every frame the tables will use.
    let mut table = unsafe { OffsetPageTable::new(l4, VirtAddr::new(0)) };
    let rw = Flags::PRESENT | Flags::WRITABLE;
    // Pages left unmapped: page 0 (null pointers) and the stack's lowest page, so a stack
    // that overflows faults (a double fault on its own stack, printed) instead of writing
    // over the page tables and statics below it.
    let unmapped = [0, stack_guard_page()];
    let mut ram_bytes = 0;
    for r in ram {
        ram_bytes += r.len();
        let (start, end) = (align_down(r.start, TWO_MIB), align_up(r.end, TWO_MIB));
        let mut addr = start;
        while addr < end {
            if unmapped.iter().any(|u| align_down(*u, TWO_MIB) == addr) {
                // This 2 MiB uses 4 KiB pages, all but the unmapped ones.
                for page in (addr..addr + TWO_MIB).step_by(FRAME_SIZE as usize) {
                    if !unmapped.contains(&page) {
                        let _ = map_4k(&mut table, page, rw);
                    }
                }
            } else {
                let page = Page::<Size2MiB>::containing_address(VirtAddr::new(addr));
                let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(addr));
                // SAFETY: identity-mapping RAM; a page already mapped (overlapping
                // rounded ranges) is simply skipped.
                match unsafe { table.map_to(page, frame, rw | Flags::HUGE_PAGE, &mut Frames) } {
                    Ok(flush) => flush.ignore(),
                    Err(MapToError::PageAlreadyMapped(_)) => {}
                    Err(_) => return Err(InitError::MapRam { addr }),
                }
            }
            addr += TWO_MIB;
        }
    }
    // SAFETY: the new tables map the running kernel, its stack and all RAM identically.
    unsafe { Cr3::write(l4_phys, Cr3Flags::empty()) };
    *PAGE_TABLES.lock() = Some(table);

    // The heap gets half of the remaining RAM; the rest stays as frames for DMA buffers.
    let free = FRAMES.lock().free_bytes();
    let heap_frames = (free / 2 / FRAME_SIZE).max(1024);
    // One contiguous arena; if fragmentation prevents that, settle for a quarter of it.
    let allocate = |frames: u64| {
        FRAMES
            .lock()
            .allocate(frames, TWO_MIB, u64::MAX)
            .map(|b| (b, frames))
    };
    let (heap_base, heap_frames) = allocate(heap_frames)
        .or_else(|| allocate(heap_frames / 4))
        .ok_or(InitError::NoHeap {
            frames: heap_frames / 4,
        })?;
    let heap_bytes = heap_frames * FRAME_SIZE;
    // SAFETY: the range is RAM, mapped, and now owned by the heap alone.
    unsafe {
        HEAP.talc
            .lock()
            .claim(heap_base as *mut u8, heap_bytes as usize)
    }
    .ok_or(InitError::HeapTooSmall { bytes: heap_bytes })?;
    HEAP.size.store(heap_bytes as usize, Ordering::Relaxed);
    Ok(MemoryReport {
        ram_bytes,
        heap_bytes,
        free_frame_bytes: FRAMES.lock().free_bytes(),
    })
}

/// The boot stack's lowest whole page (the stack grows down to it).
pub fn stack_guard_page() -> u64 {
    extern "C" {
        static boot_stack_bottom: u8;
    }
    // Only the symbol's address is taken, never its contents.
    let bottom = core::ptr::addr_of!(boot_stack_bottom) as u64;
    align_up(bottom, FRAME_SIZE)
}

fn map_4k(table: &mut OffsetPageTable<'static>, phys: u64, flags: Flags) -> Result<(), MapError> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(phys));
    let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(phys));
    // SAFETY: identity mapping of memory or device registers the caller owns.
    match unsafe { table.map_to(page, frame, flags, &mut Frames) } {
        Ok(flush) => {
            flush.flush();
            Ok(())
        }
        Err(MapToError::PageAlreadyMapped(f)) if f == frame => Ok(()),
        Err(MapToError::FrameAllocationFailed) => Err(MapError::OutOfFrames),
        Err(_) => Err(MapError::Conflict { phys }),
    }
}

fn map_range(phys: u64, size: u64, cache: Cache) -> Result<NonNull<u8>, MapError> {
    let mut flags = Flags::PRESENT | Flags::WRITABLE;
    if let Cache::Uncached = cache {
        flags |= Flags::NO_CACHE | Flags::WRITE_THROUGH;
    }
    // Checked before any address is built: `VirtAddr::new` panics on a non-canonical one.
    let end = phys
        .checked_add(size)
        .filter(|&end| end <= MAPPABLE_BELOW)
        .ok_or(MapError::OutOfReach { phys, size })?;
    let mut guard = PAGE_TABLES.lock();
    let table = guard.as_mut().ok_or(MapError::Conflict { phys })?;
    let mut addr = align_down(phys, FRAME_SIZE);
    while addr < end {
        // What the slot holds decides the page size: a 2 MiB page over a slot that has a
        // 4 KiB table would be refused as "already mapped" and leave the table's holes
        // unmapped (keel_memory::identity).
        let step = identity::plan(addr, end, identity::slot_of(&*table, addr));
        match step {
            Step::Huge(at) => {
                let page = Page::<Size2MiB>::containing_address(VirtAddr::new(at));
                let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(at));
                // SAFETY: identity mapping of a range the caller owns, into an empty slot.
                match unsafe { table.map_to(page, frame, flags | Flags::HUGE_PAGE, &mut Frames) } {
                    Ok(flush) => flush.flush(),
                    Err(MapToError::FrameAllocationFailed) => return Err(MapError::OutOfFrames),
                    Err(_) => return Err(MapError::Conflict { phys: at }),
                }
            }
            Step::HugeAlreadyMapped(_) => {}
            Step::Page(at) => match map_4k(table, at, flags) {
                Ok(()) => {}
                // Already inside a RAM huge page: the identity mapping exists.
                Err(MapError::Conflict { .. }) if matches!(cache, Cache::WriteBack) => {}
                Err(e) => return Err(e),
            },
        }
        addr = step.next();
    }
    NonNull::new(phys as *mut u8).ok_or(MapError::Conflict { phys })
}

/// Maps device registers uncached and returns their (identity) address.
pub fn map_mmio(phys: u64, size: u64) -> Result<NonNull<u8>, MapError> {
    map_range(phys, size, Cache::Uncached)
}

/// Maps firmware memory (ACPI tables, BIOS area) write-back.
pub fn map_firmware(phys: u64, size: u64) -> Result<NonNull<u8>, MapError> {
    map_range(phys, size, Cache::WriteBack)
}

/// Allocates physically contiguous, zeroed, identity-mapped memory (for DMA).
pub fn allocate_frames(count: u64) -> Option<u64> {
    let phys = FRAMES.lock().allocate(count, FRAME_SIZE, u64::MAX)?;
    // SAFETY: freshly allocated RAM, mapped by `init`.
    unsafe { core::ptr::write_bytes(phys as *mut u8, 0, (count * FRAME_SIZE) as usize) };
    Some(phys)
}

/// Returns frames from [`allocate_frames`].
pub fn free_frames(phys: u64, count: u64) {
    if let Err(e) = FRAMES
        .lock()
        .free(Range::new(phys, phys + count * FRAME_SIZE))
    {
        log::error!("memory: bad free of {count} frames at {phys:#x}: {e}");
    }
}
