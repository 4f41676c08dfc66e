//! The xenbus handshake against the in-memory store and `FakeXen`: features, single- and
//! multi-page rings, multiple queues, reconnection, unplug, fatal errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_blkback::fake::Order;
use keel_blkback::wire::vdisk;
use keel_blkback::XenbusState;
use keel_xen::grant_table::GrantRef;

#[test]
fn start_publishes_features_and_waits() {
    let mut w = World::new(2048);
    let mut dev = device();
    w.toolstack("w");
    w.start(&mut dev);
    assert_eq!(dev.state(), XenbusState::InitWait);
    assert_eq!(w.be("state").as_deref(), Some("2"));
    for (key, value) in [
        ("sectors", "2048"),
        ("sector-size", "512"),
        ("physical-sector-size", "4096"),
        ("info", "0"),
        ("feature-flush-cache", "1"),
        ("feature-barrier", "1"),
        ("feature-discard", "1"),
        ("discard-granularity", "4096"),
        ("discard-alignment", "0"),
        ("discard-secure", "0"),
        ("feature-max-indirect-segments", "256"),
        ("feature-persistent", "1"),
        ("max-ring-page-order", "4"),
        ("multi-queue-max-queues", "4"),
    ] {
        assert_eq!(w.be(key).as_deref(), Some(value), "{key}");
    }
    assert!(w
        .store
        .watches
        .iter()
        .any(|(p, _)| p == &format!("{FE}/state")));
    assert!(w
        .store
        .watches
        .iter()
        .any(|(p, _)| p == &format!("{BE}/online")));
    // Nothing connects before the frontend is Initialised.
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::InitWait);
    assert!(dev.ports().is_empty());
}

#[test]
fn read_only_mode_is_advertised_and_enforced_in_info() {
    let mut w = World::new(64);
    let mut dev = device();
    w.toolstack("r");
    w.store.set(&format!("{BE}/device-type"), "cdrom");
    w.start(&mut dev);
    let info: u32 = w.be("info").unwrap().parse().unwrap();
    assert_eq!(info, vdisk::READONLY | vdisk::CDROM | vdisk::REMOVABLE);
    assert_eq!(w.be("feature-flush-cache").as_deref(), Some("0"));
    assert_eq!(w.be("feature-discard").as_deref(), Some("0"));
    assert!(dev.offer().read_only);
}

#[test]
fn single_page_ring_connects_and_serves() {
    let mut w = World::new(64);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    assert_eq!(w.be("state").as_deref(), Some("4"));
    assert_eq!(dev.ports().len(), 1);
    assert_eq!(fe.size(), 32);
    w.data_page(1000, false);
    fe.push_request(&read(7, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(7, 0, 0)]);
    assert_eq!(w.xen.sent_notifications().len(), 1);
}

#[test]
fn multi_page_rings_on_several_queues() {
    let mut w = World::new(4096);
    let mut dev = device();
    w.toolstack("w");
    w.start(&mut dev);
    let rings = w.blkfront(3, Some(2));
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Connected);
    assert_eq!(dev.ports().len(), 3);
    assert_eq!(w.frames.in_use(), 12);
    for (q, (ring, _)) in rings.iter().enumerate() {
        assert_eq!(ring.size(), 128);
        let gref = 2000 + q as u32;
        w.data_page(gref, false);
        w.fill(gref, 0, &[q as u8 + 1; 4096]);
        ring.push_request(&write(q as u64, 8 * q as u64, &[seg(gref, 0, 7)]));
    }
    w.settle(&mut dev);
    for (q, (ring, port)) in rings.iter().enumerate() {
        // Each queue is answered on its own ring and channel.
        assert_eq!(ring.take_responses(), [(q as u64, 1, 0)]);
        assert!(w.xen.sent_notifications().contains(&(DOMID, *port)));
        let at = 8 * 512 * q;
        assert_eq!(w.target.cache[at..at + 4096], [q as u8 + 1; 4096]);
    }
    // Many laps of a 128-slot ring with the frontend draining responses as it goes.
    let (ring, _) = &rings[1];
    w.data_page(3000, false);
    for lap in 0..3u64 {
        for i in 0..128u64 {
            ring.push_request(&read(lap * 1000 + i, i, &[seg(3000, 0, 0)]));
        }
        w.settle(&mut dev);
        assert_eq!(ring.take_responses().len(), 128);
    }
}

#[test]
fn queue_and_ring_limits_are_enforced_at_connect() {
    for (key, value, reason) in [
        (
            "multi-queue-num-queues",
            "5",
            "22 invalid number of queues 5",
        ),
        (
            "multi-queue-num-queues",
            "0",
            "22 invalid number of queues 0",
        ),
        ("ring-page-order", "5", "22 invalid ring-page-order 5"),
        (
            "ring-page-order",
            "x",
            "22 malformed /local/domain/5/device/vbd/51712/ring-page-order",
        ),
        ("protocol", "arm-abi", "22 unknown fe protocol arm-abi"),
    ] {
        let mut w = World::new(64);
        let mut dev = device();
        w.toolstack("w");
        w.start(&mut dev);
        w.blkfront(1, None);
        w.store.set(&format!("{FE}/{key}"), value);
        w.watch(&mut dev);
        assert_eq!(dev.state(), XenbusState::Closing, "{key}={value}");
        assert_eq!(
            w.store
                .get("/local/domain/0/error/backend/vbd/5/51712/error")
                .as_deref(),
            Some(reason)
        );
        assert_eq!(w.be("error").as_deref(), Some(reason));
        assert_eq!(w.frames.in_use(), 0);
        assert!(dev.ports().is_empty());
    }
}

#[test]
fn a_missing_or_bad_ring_ref_or_channel_is_fatal_and_cleans_up() {
    // Second queue's ring-ref names a grant the frontend never made.
    let mut w = World::new(64);
    let mut dev = device();
    w.toolstack("w");
    w.start(&mut dev);
    w.blkfront(2, Some(1));
    w.store.set(&format!("{FE}/queue-1/ring-ref1"), "4444");
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closing);
    assert!(w
        .be("error")
        .unwrap()
        .starts_with("14 mapping ring of queue 1"));
    assert_eq!(w.frames.in_use(), 0, "queue 0's pages were unmapped too");
    // Missing event channel.
    let mut w = World::new(64);
    let mut dev = device();
    w.toolstack("w");
    w.start(&mut dev);
    w.blkfront(1, None);
    w.store.nodes.remove(&format!("{FE}/event-channel"));
    w.watch(&mut dev);
    assert_eq!(
        w.be("error").as_deref(),
        Some("2 reading /local/domain/5/device/vbd/51712/event-channel")
    );
    // A channel that was not offered to us.
    let mut w = World::new(64);
    let mut dev = device();
    w.toolstack("w");
    w.start(&mut dev);
    w.blkfront(1, None);
    w.store.set(&format!("{FE}/event-channel"), "999");
    w.watch(&mut dev);
    assert!(w
        .be("error")
        .unwrap()
        .starts_with("22 binding event channel"));
    assert_eq!(w.frames.in_use(), 0);
    // No frames left in dom0.
    let mut w = World::new(64);
    let mut dev = device();
    w.toolstack("w");
    w.start(&mut dev);
    w.blkfront(1, None);
    w.frames.exhausted = true;
    w.watch(&mut dev);
    assert!(w.be("error").unwrap().starts_with("12 mapping ring"));
}

#[test]
fn frontend_close_then_reinitialise_reconnects_like_grub_handing_over() {
    let mut w = World::new(64);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.data_page(1000, false);
    fe.push_request(&read(1, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses().len(), 1);
    // GRUB: Closed, waits for the backend's Closed, clears its keys, Initialising.
    w.set_fe_state(6);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closed);
    assert_eq!(w.frames.in_use(), 0);
    for key in ["ring-ref", "event-channel", "protocol"] {
        w.store.nodes.remove(&format!("{FE}/{key}"));
    }
    w.set_fe_state(1);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::InitWait);
    // The kernel's blkfront: a 4-page ring this time.
    let rings = w.blkfront(1, Some(2));
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Connected);
    let (ring, _) = &rings[0];
    ring.push_request(&read(2, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(ring.take_responses(), [(2, 0, 0)]);
}

/// GRUB for Xen PVH is a 32-bit program: its `protocol` is `x86_32-abi`, its slots 108
/// bytes (`id@4`, `sector@12`, `seg@20`), its responses 12.
#[test]
fn a_32_bit_frontend_like_grub_connects_and_is_served_in_its_layout() {
    let mut w = World::new(64);
    let mut dev = device();
    w.toolstack("w");
    w.start(&mut dev);
    let rings = w.blkfront(1, None);
    w.store.set(&format!("{FE}/protocol"), "x86_32-abi");
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Connected);
    w.data_page(1000, false);
    let ring_page = GrantRef(100);
    let slot = |i: usize| 64 + 108 * i;
    for (i, id) in [(0usize, 0x0102_0304_0506_0708u64), (1, 9)] {
        let mut b = [0u8; 108];
        b[0] = 0; // BLKIF_OP_READ
        b[1] = 1;
        b[2..4].copy_from_slice(&51712u16.to_le_bytes());
        b[4..12].copy_from_slice(&id.to_le_bytes());
        b[12..20].copy_from_slice(&(8 * i as u64).to_le_bytes());
        b[20..28].copy_from_slice(&seg(1000, 0, 7).encode());
        w.front.write(DOMID, ring_page, slot(i), &b);
    }
    rings[0].0.set_req_prod(2);
    w.settle(&mut dev);
    let page = w.front.read(DOMID, ring_page);
    assert_eq!(&page[8..12], &2u32.to_le_bytes(), "rsp_prod");
    for (i, id) in [(0usize, 0x0102_0304_0506_0708u64), (1, 9)] {
        let r = slot(i);
        assert_eq!(&page[r..r + 8], &id.to_le_bytes(), "response {i} id");
        assert_eq!(page[r + 8], 0, "response {i} operation");
        assert_eq!(
            &page[r + 10..r + 12],
            &0i16.to_le_bytes(),
            "response {i} status"
        );
    }
}

#[test]
fn unplug_closes_through_the_frontend() {
    let mut w = World::new(64);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.store.set(&format!("{BE}/online"), "0");
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closing);
    assert!(dev.ports().is_empty());
    // Requests after the disconnect are not even read.
    w.data_page(1000, false);
    fe.push_request(&read(1, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert!(fe.take_responses().is_empty());
    assert!(w.target.submitted.is_empty());
    w.set_fe_state(5);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closing);
    w.set_fe_state(6);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closed);
    // Offline: a frontend re-initialising does not bring it back.
    w.set_fe_state(1);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closed);
}

#[test]
fn a_vanished_frontend_closes_the_device() {
    let mut w = World::new(64);
    let mut dev = device();
    w.connected(&mut dev);
    w.store.nodes.retain(|k, _| !k.starts_with(FE));
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closed);
    assert_eq!(w.frames.in_use(), 0);
}

#[test]
fn close_orphans_requests_in_flight_and_drops_their_completions() {
    let mut w = World::new(64);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.target.order = Order::Stalled;
    w.data_page(1000, false);
    fe.push_request(&read(1, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(dev.in_flight(), 1);
    with_env(&mut w, |env| dev.close(env));
    assert_eq!(dev.state(), XenbusState::Closed);
    assert!(w.store.watches.is_empty());
    w.target.order = Order::Fifo;
    w.fill(1000, 0, &[0xEE; 4096]);
    w.settle(&mut dev);
    assert_eq!(dev.in_flight(), 0);
    // The read's data never reached the guest page.
    assert_eq!(w.page(1000), vec![0xEE; 4096]);
    assert!(fe.take_responses().is_empty());
    let _ = GrantRef(0);
}

#[test]
fn a_reconnect_seen_as_one_event_still_connects() {
    let mut w = World::new(64);
    let mut dev = device();
    w.connected(&mut dev);
    w.set_fe_state(6);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Closed);
    // The frontend went Initialising and Initialised before we looked.
    let rings = w.blkfront(1, Some(1));
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Connected);
    w.data_page(1000, false);
    rings[0].0.push_request(&read(1, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(rings[0].0.take_responses(), [(1, 0, 0)]);
}

#[test]
fn a_frontend_directory_written_after_the_backend_starts_is_waited_for() {
    let mut w = World::new(64);
    let mut dev = device();
    w.toolstack("w");
    w.store.nodes.retain(|k, _| !k.starts_with(FE));
    w.start(&mut dev);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::InitWait);
    w.set_fe_state(1);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::InitWait);
    w.blkfront(1, None);
    w.watch(&mut dev);
    assert_eq!(dev.state(), XenbusState::Connected);
}
