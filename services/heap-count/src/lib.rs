//! A counting global allocator for host tests that measure what Keel's code keeps on the
//! heap (docs/benchmarks.md, "dom0 heap per running guest").
//!
//! What it counts: the bytes *requested* — `layout.size()` of every allocation, less that of
//! every deallocation, a `realloc` counting its new size less its old — not the allocator's
//! overhead, alignment padding or the pages it maps. That is what the image's heap counts for
//! the `keel_heap_used_kib` data source (`CountingHeap` in kernel/src/memory.rs, read by
//! `memory::heap_usage`), so a figure measured here is the figure the image reports for the
//! same code. Every call is forwarded unchanged to the [`System`] allocator; the counter only
//! observes.
//!
//! The count is per thread: each thread sees what it allocated less what it freed (memory
//! handed to another thread and freed there counts on both sides). Cargo runs a test binary's
//! tests on several threads at once, so a test reads only its own allocations; a test that
//! measures must keep the code it measures on its own thread.
//!
//! A test binary installs the allocator itself (a binary has one global allocator, and a
//! library must not choose it), then reads the count:
//!
//! ```
//! use keel_heap_count::{freed_by, held_bytes, CountingAlloc};
//!
//! #[global_allocator]
//! static HEAP: CountingAlloc = CountingAlloc;
//!
//! fn main() {
//!     let before = held_bytes();
//!     let device: Vec<u64> = Vec::with_capacity(512); // what the code under test keeps
//!     let grown = held_bytes() - before;
//!     let freed = freed_by(|| drop(device)); // what dropping it gives back
//!     assert_eq!((grown, freed), (4096, 4096));
//! }
//! ```
//!
//! [`held_bytes`] and [`freed_by`] panic when [`CountingAlloc`] is not the binary's global
//! allocator, rather than report a heap of 0 bytes that any bound would accept.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The global allocator that counts: declare `#[global_allocator] static HEAP: CountingAlloc =
/// CountingAlloc;` in the test file (see the crate's documentation).
pub struct CountingAlloc;

thread_local! {
    /// Bytes this thread allocated less bytes it freed.
    static HELD: Cell<i64> = const { Cell::new(0) };
}

/// Set by the first allocation [`CountingAlloc`] serves: a binary whose global allocator it
/// is not never sets it.
static INSTALLED: AtomicBool = AtomicBool::new(false);

fn count(bytes: usize, sign: i64) {
    // `try_with`: the allocator also runs while the thread's locals are torn down, when the
    // count is gone and nobody can read it any more.
    let _ = HELD.try_with(|held| held.set(held.get() + sign * bytes as i64));
}

// SAFETY: every call forwards to the system allocator with the caller's arguments unchanged
// and returns its answer; the counter only observes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, which `alloc`'s contract covers.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            if !INSTALLED.load(Ordering::Relaxed) {
                INSTALLED.store(true, Ordering::Relaxed);
            }
            count(layout.size(), 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout, which came from this
        // allocator and so from `System`.
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments, which `realloc`'s contract covers.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            count(new_size, 1);
            count(layout.size(), -1);
        }
        moved
    }
}

/// Bytes the calling thread holds: what it allocated less what it freed, since it started.
/// Only differences mean something (the test harness allocates on the thread too).
///
/// # Panics
///
/// When [`CountingAlloc`] is not the binary's `#[global_allocator]`.
pub fn held_bytes() -> i64 {
    assert!(
        INSTALLED.load(Ordering::Relaxed),
        "keel-heap-count: nothing counted; declare \
         `#[global_allocator] static HEAP: CountingAlloc = CountingAlloc;` in the test binary"
    );
    HELD.with(Cell::get)
}

/// Bytes the heap gives back (on the calling thread) while `f` runs: positive when `f`
/// frees more than it allocates, as `freed_by(|| drop(device))` measures what a device held.
///
/// # Panics
///
/// When [`CountingAlloc`] is not the binary's `#[global_allocator]`.
pub fn freed_by(f: impl FnOnce()) -> i64 {
    let before = held_bytes();
    f();
    before - held_bytes()
}
