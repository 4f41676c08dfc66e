//! The metering's heap per running VM, with a counting allocator: the benchmark's guests
//! (1 vCPU, no disk or network: `cpu0`, `memory`, `memory_target`) sampled every 5 s, as
//! the kernel's sampling task does, for as long as `cargo xtask bench guests` keeps them.
//!
//! `cargo test -p keel-metering --test vm_memory -- --nocapture` prints the figures
//! (docs/benchmarks.md, "dom0 heap per running guest").

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_heap_count::{held_bytes, CountingAlloc};
use keel_metering::figures::{HostFigures, VmFigures};
use keel_metering::{Metering, ROWS_PER_SOURCE, STEP_MS};

/// Counts the bytes each thread holds (other tests of the binary run on other threads).
#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc;

const HOST: &str = "00000000-0000-4000-8000-000000000001";
const T0_MS: u64 = 1_700_000_000_000;

fn host() -> HostFigures {
    HostFigures {
        cpu_busy_ns: vec![0, 0],
        memory_total_bytes: 2 << 30,
        memory_free_bytes: 1 << 30,
        heap_used_bytes: 10 << 20,
        pifs: vec![],
    }
}

fn guest(i: usize, step: u64) -> VmFigures {
    VmFigures {
        uuid: format!("0a0b0c0d-0000-4000-8000-{i:012}"),
        instance: 1,
        vcpu_time_ns: vec![step * 1_000_000],
        memory_actual_bytes: 112 << 20,
        memory_target_bytes: 112 << 20,
        vbds: vec![],
        vifs: vec![],
    }
}

/// Heap the metering holds with `n` guests sampled for `minutes`.
fn held_after(n: usize, minutes: u64) -> i64 {
    let before = held_bytes();
    let mut metering = Metering::new(HOST).unwrap();
    for step in 0..minutes * 60_000 / STEP_MS {
        let vms: Vec<VmFigures> = (0..n).map(|i| guest(i, step)).collect();
        let report = metering.sample(T0_MS + step * STEP_MS, &host(), &vms);
        assert!(report.vm_errors.is_empty() && report.host_error.is_none());
    }
    let kept = held_bytes() - before;
    drop(metering);
    kept
}

fn per_guest(minutes: u64) -> i64 {
    (held_after(8, minutes) - held_after(0, minutes)) / 8
}

/// An RRD holds the rows it has closed: a guest sampled for five minutes (60 rows of the
/// 5 s archive, 5 of the minute ones) costs a fraction of the 3 × 18.6 KB its three data
/// sources may grow to, and after ten minutes the 5 s archive is full and stays so; its
/// MIN and MAX, equal to its AVERAGE row for row, hold nothing (56.6 KB from the first
/// sample before rows grew on demand, 14.2 KB after ten minutes before the 5 s MIN and MAX
/// were read from the AVERAGE).
#[test]
fn a_running_guests_rrd_costs_the_history_it_has() {
    let five = per_guest(5);
    let ten = per_guest(10);
    println!("metering heap per guest: {five} B after 5 min, {ten} B after 10 min");
    let bound = (3 * ROWS_PER_SOURCE * 8) as i64;
    assert!(five < bound / 8, "{five} B after 5 minutes (bound {bound})");
    assert!(ten < bound / 6, "{ten} B after 10 minutes (bound {bound})");
    assert!(five < ten, "grows with the history");
}
