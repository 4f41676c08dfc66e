//! Starts as the XenAPI drives them on the real host assembly (`XenHost` over `FakeXen`):
//! prepared, fed and finished a piece at a time; at most `MAX_PREPARED_STARTS` at once; and
//! every start given up — abandoned, failed while loading, refused when finishing — leaves
//! no domain and all of Xen's memory back.

// Helpers outside `#[test]` functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{page_host, PageHost};
use keel_domain_builder::elf_load::testimage::pvh_elf64;
use keel_toolstack::{guests, Guests, MAX_PREPARED_STARTS};
use keel_xen::fake::FakeXen;
use keel_xenapi::guest::{
    BootImage, BootSpec, GuestBackend, GuestError, PreparedStart, KERNEL_HEAD_BYTES,
};

const HOLES: u64 = 0x20000;
const HOLE_FRAMES: u64 = 4096;
const PAGES: usize = 8;

type Host = PageHost;

fn now_ns() -> u64 {
    1_000_000_000
}

fn host() -> (&'static FakeXen, Guests<Host>) {
    let xen: &'static FakeXen = Box::leak(Box::new(FakeXen::with_dom0_holes(HOLES, HOLE_FRAMES)));
    (xen, guests(&page_host(xen, PAGES, now_ns)))
}

/// A 100 KiB PVH kernel: its head and the rest.
fn kernel() -> Vec<u8> {
    pvh_elf64(0x100_0000, &[0x90; 100 << 10], 0x1000, Some(0x100_0000))
}

fn spec(i: usize, kernel: &[u8]) -> BootSpec {
    common::boot_spec(i, kernel.len(), None)
}

fn prepare(g: &mut Guests<Host>, i: usize, kernel: &[u8]) -> Result<PreparedStart, GuestError> {
    g.prepare_start(&spec(i, kernel), &kernel[..KERNEL_HEAD_BYTES])
}

#[test]
fn starts_beyond_the_bound_wait_and_abandoned_ones_leave_nothing() {
    let (xen, mut g) = host();
    let free_before = xen.free_pages();
    let kernel = kernel();
    let prepared: Vec<PreparedStart> = (0..MAX_PREPARED_STARTS)
        .map(|i| prepare(&mut g, i, &kernel).unwrap())
        .collect();
    assert_eq!(xen.domain_ids().len(), MAX_PREPARED_STARTS);
    // One more is told to wait, and nothing of it is created.
    assert_eq!(prepare(&mut g, 99, &kernel), Err(GuestError::StartsBusy));
    assert_eq!(xen.domain_ids().len(), MAX_PREPARED_STARTS);
    // Given up: the domain goes; then the waiting start gets its turn.
    g.abandon_start(prepared[0]);
    assert_eq!(xen.domain_ids().len(), MAX_PREPARED_STARTS - 1);
    let late = prepare(&mut g, 99, &kernel).unwrap();
    for p in prepared.into_iter().skip(1).chain([late]) {
        g.abandon_start(p);
    }
    // Abandoning twice, or an unknown start, is nothing.
    g.abandon_start(late);
    assert_eq!(xen.domain_ids(), Vec::<u16>::new());
    assert_eq!(xen.free_pages(), free_before, "Xen's memory back");
}

#[test]
fn a_start_fed_and_finished_runs_and_one_that_fails_midway_is_gone() {
    let (xen, mut g) = host();
    let free_before = xen.free_pages();
    let kernel = kernel();
    // Fed in pieces, then finished: a running guest.
    let p = prepare(&mut g, 1, &kernel).unwrap();
    for piece in kernel[KERNEL_HEAD_BYTES..].chunks(7000) {
        g.load_image(p, BootImage::Kernel, piece).unwrap();
    }
    let domid = g.start(p, spec(1, &kernel)).unwrap();
    assert_eq!(xen.domain_ids(), vec![domid as u16]);
    // A start the toolstack refuses when finishing (the VM already runs) gives its domain up.
    let p = prepare(&mut g, 1, &kernel).unwrap();
    g.load_image(p, BootImage::Kernel, &kernel[KERNEL_HEAD_BYTES..])
        .unwrap();
    assert!(matches!(
        g.start(p, spec(1, &kernel)),
        Err(GuestError::Failed(_))
    ));
    assert_eq!(xen.domain_ids(), vec![domid as u16]);
    // More bytes than announced: the load fails and the start is gone with its domain.
    let p = prepare(&mut g, 2, &kernel).unwrap();
    let too_much = vec![0u8; kernel.len()];
    assert!(g.load_image(p, BootImage::Kernel, &too_much).is_err());
    assert_eq!(xen.domain_ids(), vec![domid as u16]);
    assert!(matches!(
        g.load_image(p, BootImage::Kernel, &kernel[..1]),
        Err(GuestError::Failed(_))
    ));
    g.destroy(domid).unwrap();
    assert_eq!(xen.domain_ids(), Vec::<u16>::new());
    assert_eq!(xen.free_pages(), free_before, "Xen's memory back");
}
