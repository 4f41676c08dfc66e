//! `GuestMemory` windows against `FakeXen`: hole frames come back only when nothing of the
//! guest is mapped there any more.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_domain_builder::fake::FakeHoles;
use keel_domain_builder::guest_memory::GuestMemory;
use keel_domain_builder::MapError;
use keel_xen::domctl::{create_domain, set_max_mem, set_paging_mempool_size, CreateDomain};
use keel_xen::fake::FakeXen;
use keel_xen::memory::populate_physmap;
use keel_xen::XenError;

const HOLES: u64 = 0x20000;
const HOLE_FRAMES: u64 = 64;

/// A guest with frame 0x100 populated and 0x101 not.
fn guest(xen: &FakeXen) -> u16 {
    let domid = create_domain(xen, 0, &CreateDomain::pvh([7; 16], 1)).unwrap();
    set_max_mem(xen, domid, 1024).unwrap();
    set_paging_mempool_size(xen, domid, 1 << 20).unwrap();
    populate_physmap(xen, domid, 0, &[0x100]).unwrap();
    domid
}

/// A batch that maps one frame and fails the next: the mapped frame comes down again, and
/// when that unmap fails even retried, the run stays out of the free space (it would be
/// handed out while Xen still shows the guest's page there).
#[test]
fn a_frame_of_a_failed_batch_that_will_not_unmap_keeps_its_run() {
    let xen = FakeXen::with_dom0_holes(HOLES, HOLE_FRAMES);
    let domid = guest(&xen);
    let mut holes = FakeHoles::new(&xen);
    {
        let memory = GuestMemory::new(&xen, &mut holes, domid);
        // The next call is the batch; then come the unmap of its mapped entry and the retry.
        xen.fail_call(1, XenError::EBUSY);
        xen.fail_call(2, XenError::EBUSY);
        let mapped = memory.map(0x100, 2).map(|w| w.frames());
        assert_eq!(mapped, Err(MapError::Xen(XenError::EINVAL)));
        assert_eq!(memory.leaked_frames(), 1);
    }
    assert_eq!(xen.foreign_mapping_count(), 1);
    assert_eq!(holes.free_frames(), HOLE_FRAMES - 2);
}

/// The same batch with a working unmap gives every frame back.
#[test]
fn a_failed_batch_gives_its_run_back() {
    let xen = FakeXen::with_dom0_holes(HOLES, HOLE_FRAMES);
    let domid = guest(&xen);
    let mut holes = FakeHoles::new(&xen);
    {
        let memory = GuestMemory::new(&xen, &mut holes, domid);
        let mapped = memory.map(0x100, 2).map(|w| w.frames());
        assert_eq!(mapped, Err(MapError::Xen(XenError::EINVAL)));
        assert_eq!(memory.leaked_frames(), 0);
    }
    assert_eq!(xen.foreign_mapping_count(), 0);
    assert_eq!(holes.free_frames(), HOLE_FRAMES);
}
