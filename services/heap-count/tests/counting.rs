//! The allocator installed as a test binary installs it: what it counts, per thread.

use std::hint::black_box;
use std::thread;

use keel_heap_count::{freed_by, held_bytes, CountingAlloc};

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc;

/// The bytes asked for, not what the system allocator rounds them up to.
#[test]
fn an_allocation_counts_the_bytes_requested() {
    let before = held_bytes();
    let one: Vec<u8> = black_box(Vec::with_capacity(1));
    let odd: Vec<u8> = black_box(Vec::with_capacity(1000));
    assert_eq!(held_bytes() - before, 1001);
    assert_eq!(freed_by(|| drop(one)), 1);
    assert_eq!(freed_by(|| drop(odd)), 1000);
    assert_eq!(held_bytes(), before);
}

/// A grown buffer counts its new size instead of its old one, whether or not it moved.
#[test]
fn a_reallocation_counts_the_new_size_less_the_old() {
    let before = held_bytes();
    let mut grown: Vec<u8> = Vec::with_capacity(100);
    grown.push(1);
    grown.reserve_exact(299);
    assert_eq!(grown.capacity(), 300);
    assert_eq!(held_bytes() - before, 300);
    grown.shrink_to_fit();
    assert_eq!(held_bytes() - before, 1);
    assert_eq!(freed_by(|| drop(black_box(grown))), 1);
}

/// What `f` keeps is a negative figure: `freed_by` is what the heap gave back.
#[test]
fn what_is_kept_while_measuring_counts_against_what_is_freed() {
    let mut kept: Vec<Box<[u8; 64]>> = Vec::with_capacity(4);
    let freed = freed_by(|| {
        for _ in 0..4 {
            kept.push(Box::new([0; 64]));
        }
        drop(black_box(vec![0u8; 4096]));
    });
    assert_eq!(freed, -4 * 64);
    assert_eq!(
        freed_by(|| drop(kept)),
        (4 * 64 + 4 * size_of::<Box<[u8; 64]>>()) as i64
    );
}

/// Another thread's heap is not this thread's: each test of a binary reads its own, while
/// the others allocate beside it.
#[test]
fn another_threads_allocations_are_its_own() {
    const MIB: usize = 1 << 20;
    let before = held_bytes();
    let theirs = thread::spawn(|| {
        let before = held_bytes();
        let big: Vec<u8> = black_box(Vec::with_capacity(MIB));
        let held = held_bytes() - before;
        std::mem::forget(big);
        held
    })
    .join()
    .unwrap();
    assert_eq!(theirs, MIB as i64);
    // Spawning and joining allocate a little here (the thread's handle and result).
    let mine = held_bytes() - before;
    assert!(mine < 16 * 1024, "{mine} B counted on the spawning thread");
}
