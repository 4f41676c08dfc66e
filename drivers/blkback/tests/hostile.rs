//! A hostile frontend (Xen's advisories against backends are the list): bad grants, bad
//! segments, out-of-range sectors, unknown operations, a producer index running ahead,
//! requests after disconnect, floods. Each answers `BLKIF_RSP_ERROR`/`EOPNOTSUPP` or
//! disconnects with a reason; the disk, dom0 and other domains are untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_blkback::fake::Order;
use keel_blkback::wire::{encode, op};
use keel_blkback::XenbusState;
use keel_xen::fake::FOREIGN_FRAME_BASE;
use keel_xen::grant_table::{gtf, GrantRef};

#[test]
fn malformed_requests_answer_error_and_never_reach_the_disk() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.data_page(1000, false);
    let mut too_many = write(7, 0, &[seg(1000, 0, 7)]);
    too_many[1] = 12;
    let cases: Vec<([u8; 112], u8, i16)> = vec![
        (read(1, 250, &[seg(1000, 0, 7)]), op::READ, -1), // 250 + 8 > 256
        (read(2, u64::MAX - 3, &[seg(1000, 0, 7)]), op::READ, -1), // wraps
        (write(3, 0, &[seg(1000, 5, 4)]), op::WRITE, -1), // first > last
        (write(4, 0, &[seg(1000, 0, 8)]), op::WRITE, -1), // beyond the page
        (read(5, 0, &[seg(1000, 255, 255)]), op::READ, -1),
        (read(6, 0, &[]), op::READ, -1),                // no data
        (too_many, op::WRITE, -1),                      // 12 segments
        (encode::direct(4, 8, 0, 0, &[]), 4, -2),       // reserved op
        (encode::direct(0xFF, 9, 0, 0, &[]), 0xFF, -2), // unknown op
        (encode::discard(10, 255, 2, false), op::DISCARD, -1),
        (
            encode::discard(11, u64::MAX, u64::MAX, false),
            op::DISCARD,
            -1,
        ),
    ];
    w.target.cache.fill(0x5A);
    for (req, _, _) in &cases {
        fe.push_request(req);
    }
    w.settle(&mut dev);
    let got = fe.take_responses();
    let want: Vec<(u64, u8, i16)> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, op, status))| (i as u64 + 1, *op, *status))
        .collect();
    assert_eq!(got, want);
    assert!(w.target.submitted.is_empty());
    assert!(w.target.cache.iter().all(|b| *b == 0x5A));
    assert_eq!(w.page(1000), vec![0; 4096]);
    // The device is still up and serves a good request.
    fe.push_request(&read(20, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(20, op::READ, 0)]);
    assert_eq!(dev.state(), XenbusState::Connected);
}

#[test]
fn bad_grants_fail_the_request_only() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.target.cache[..4096].fill(0x11);
    w.data_page(1000, false);
    // Read-only grant: reading the disk into it would write the guest page.
    w.data_page(1001, true);
    // Granted to another domain than dom0.
    w.xen.add_foreign_grant(
        DOMID,
        GrantRef(1002),
        7,
        gtf::PERMIT_ACCESS,
        FOREIGN_FRAME_BASE + 0x30_0000,
    );
    // Domain 6's grant 1003: dom5 naming it reaches dom5's table only.
    let other = FOREIGN_FRAME_BASE + 0x40_0000;
    w.xen
        .add_foreign_grant(6, GrantRef(1003), 0, gtf::PERMIT_ACCESS, other);
    w.xen.write_foreign_frame(other, 0, &[0x66; 4096]);
    fe.push_request(&read(1, 0, &[seg(1000, 0, 7), seg(1001, 0, 7)]));
    fe.push_request(&read(2, 0, &[seg(1002, 0, 7)]));
    fe.push_request(&read(3, 0, &[seg(1003, 0, 7)]));
    fe.push_request(&write(4, 8, &[seg(1003, 0, 7)]));
    fe.push_request(&write(5, 8, &[seg(9999, 0, 7)]));
    w.settle(&mut dev);
    let mut got = fe.take_responses();
    got.sort();
    assert_eq!(
        got,
        [
            (1, op::READ, -1),
            (2, op::READ, -1),
            (3, op::READ, -1),
            (4, op::WRITE, -1),
            (5, op::WRITE, -1)
        ]
    );
    // Nothing of domain 6 was read or written, nothing reached the disk's sector 8.
    assert_eq!(w.xen.read_foreign_frame(other, 0, 4096), vec![0x66; 4096]);
    assert_eq!(w.target.cache[8 * 512..16 * 512], [0; 4096]);
    assert_eq!(
        w.xen
            .read_foreign_frame(FOREIGN_FRAME_BASE + 0x30_0000, 0, 8),
        vec![0; 8]
    );
    assert_eq!(dev.state(), XenbusState::Connected);
}

#[test]
fn a_grant_revoked_while_the_read_is_in_flight() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    let frame = w.data_page(1000, false);
    w.target.cache[..4096].fill(0x22);
    w.target.order = Order::Stalled;
    fe.push_request(&read(1, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(dev.in_flight(), 1);
    // The frontend ends access (the entry becomes invalid) before the disk answers.
    w.xen
        .add_foreign_grant(DOMID, GrantRef(1000), 0, gtf::INVALID, frame);
    w.target.order = Order::Fifo;
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(1, op::READ, -1)]);
    assert_eq!(w.page(1000), vec![0; 4096]);
    // Revoked while a write is queued behind a busy disk: the copy happened at take
    // time, so the write is whole or refused, never partial.
    let frame = w.data_page(1001, false);
    w.fill(1001, 0, &[0x33; 4096]);
    fe.push_request(&write(2, 8, &[seg(1001, 0, 7)]));
    w.xen
        .add_foreign_grant(DOMID, GrantRef(1001), 0, gtf::INVALID, frame);
    fe.push_request(&write(3, 16, &[seg(1001, 0, 7)]));
    w.settle(&mut dev);
    let mut got = fe.take_responses();
    got.sort();
    assert_eq!(got, [(2, op::WRITE, -1), (3, op::WRITE, -1)]);
    assert_eq!(dev.state(), XenbusState::Connected);
}

#[test]
fn a_producer_index_ahead_of_the_ring_disconnects_with_a_reason() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.data_page(1000, false);
    fe.push_request(&read(1, 0, &[seg(1000, 0, 7)]));
    fe.set_req_prod(1 + 32 + 5);
    w.settle(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closing);
    assert_eq!(w.be("state").as_deref(), Some("5"));
    let reason = w
        .store
        .get("/local/domain/0/error/backend/vbd/5/51712/error")
        .unwrap();
    assert!(
        reason.starts_with("71 ring protocol violation on queue 0: ProducerAhead"),
        "{reason}"
    );
    assert_eq!(w.be("error").as_deref(), Some(reason.as_str()));
    assert!(dev.ports().is_empty());
    assert_eq!(w.frames.in_use(), 0);
    // Requests after the disconnect are ignored.
    let submitted = w.target.submitted.len();
    fe.set_req_prod(2);
    fe.push_request(&read(2, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    w.watch(&mut dev);
    assert_eq!(w.target.submitted.len(), submitted);
    // The frontend closes; so does the backend.
    w.set_fe_state(6);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closed);
}

#[test]
fn a_flood_is_served_in_bounded_rounds() {
    let mut w = World::new(8192);
    let mut dev = device_with(|c| c.limits.max_requests_per_poll = 8);
    w.toolstack("w");
    w.start(&mut dev);
    let rings = w.blkfront(1, Some(4));
    w.watch(&mut dev);
    let fe = &rings[0].0;
    assert_eq!(fe.size(), 512);
    w.data_page(1000, false);
    for id in 0..512u64 {
        fe.push_request(&read(id, id, &[seg(1000, 0, 0)]));
    }
    let first = w.poll(&mut dev);
    assert_eq!(first.taken, 8);
    assert!(first.more, "a bounded call says there is more");
    let rounds = w.settle(&mut dev);
    assert!(
        rounds >= 63,
        "{rounds} rounds for 504 requests at 8 a round"
    );
    assert_eq!(fe.take_responses().len(), 512);
}

#[test]
fn buffers_in_flight_are_bounded() {
    let mut w = World::new(256);
    let mut dev = device_with(|c| c.limits.max_inflight_bytes = 8192);
    let fe = w.connected(&mut dev);
    w.target.order = Order::Stalled;
    w.data_page(1000, false);
    for id in 0..10u64 {
        fe.push_request(&write(id, id * 8, &[seg(1000, 0, 7)]));
    }
    w.settle(&mut dev);
    assert_eq!(dev.in_flight(), 2);
    w.target.order = Order::Fifo;
    w.settle(&mut dev);
    assert_eq!(fe.take_responses().len(), 10);
}

#[test]
fn a_huge_indirect_claim_is_refused_before_any_allocation() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    fe.push_request(&encode::indirect(
        op::READ,
        1,
        0,
        u16::MAX,
        &[GrantRef(1); 8],
    ));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(1, op::READ, -1)]);
}

#[test]
fn hostile_xenstore_values_are_fatal_not_fatal_to_keel() {
    for (key, value) in [
        ("ring-ref", "-1"),
        ("ring-ref", "4294967296"),
        ("ring-ref", "99999999999999999999999"),
        ("event-channel", "1 2"),
        ("state", "3\u{0}junk"),
    ] {
        let mut w = World::new(64);
        let mut dev = device();
        w.toolstack("w");
        w.start(&mut dev);
        w.blkfront(1, None);
        w.store.set(&format!("{FE}/{key}"), value);
        w.watch(&mut dev);
        assert_ne!(dev.state(), XenbusState::Connected, "{key}={value}");
        assert_eq!(w.frames.in_use(), 0);
    }
}

#[test]
fn copying_per_call_is_bounded() {
    let mut w = World::new(256);
    let mut dev = device_with(|c| c.limits.max_copy_bytes_per_poll = 8192);
    let fe = w.connected(&mut dev);
    w.data_page(1000, false);
    for id in 0..10u64 {
        fe.push_request(&write(id, id * 8, &[seg(1000, 0, 7)]));
    }
    let first = w.poll(&mut dev);
    assert_eq!((first.taken, first.copied), (2, 8192));
    assert!(first.more);
    w.settle(&mut dev);
    assert_eq!(fe.take_responses().len(), 10);
}

#[test]
fn a_producer_index_moved_back_disconnects() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.data_page(1000, false);
    w.target.order = Order::Stalled;
    for id in 0..5u64 {
        fe.push_request(&read(id, 0, &[seg(1000, 0, 7)]));
    }
    w.settle(&mut dev);
    fe.set_req_prod(3);
    w.poll(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closing);
    assert!(w.be("error").unwrap().contains("ProducerBehind"));
}
