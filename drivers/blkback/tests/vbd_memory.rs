//! The heap a guest's disk (VBD) holds in dom0, with a counting allocator: a connected
//! blkback idle, and the same after a burst of 32 requests of 11 pages each (grant copy),
//! once every request is answered. What a device holds is what the heap gives back when it
//! is dropped.
//!
//! `cargo test -p keel-blkback --test vbd_memory -- --nocapture` prints the figures
//! (docs/benchmarks.md, "dom0 heap per running guest").

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_blkback::wire::op;
use keel_heap_count::{freed_by, CountingAlloc};

/// Counts the bytes each thread holds (other tests of the binary run on other threads).
#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc;

/// Requests' buffers live as long as their requests: an idle disk holds its rings' state
/// only, whatever it served.
#[test]
fn an_idle_vbd_holds_what_it_held_before_traffic() {
    let mut w = World::new(4096);
    let mut dev = device();
    w.connected(&mut dev);
    let idle = freed_by(|| drop(dev));

    let mut w = World::new(4096);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    let segs: Vec<_> = (0..11).map(|i| seg(1000 + i, 0, 7)).collect();
    for i in 0..11 {
        w.data_page(1000 + i, false);
    }
    for id in 0..32u64 {
        fe.push_request(&write(id, id * 88, &segs));
    }
    w.settle(&mut dev);
    assert_eq!(fe.take_responses().len(), 32);
    for id in 0..32u64 {
        fe.push_request(&read(100 + id, id * 88, &segs));
    }
    w.settle(&mut dev);
    let answers = fe.take_responses();
    assert_eq!(answers.len(), 32);
    assert!(answers
        .iter()
        .all(|(_, o, status)| *o == op::READ && *status == 0));
    let after = freed_by(|| drop(dev));
    println!("blkback heap per VBD: {idle} B connected, {after} B idle after traffic");
    assert!(idle > 0);
    assert!(
        after <= idle + 4096,
        "{after} B held by an idle VBD ({idle} B before any)"
    );
}
