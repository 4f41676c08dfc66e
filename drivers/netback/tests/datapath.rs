//! netback against a well-behaved fake netfront: the handshake, both data directions by
//! grant copy, offloads, multi-queue, the rate limit and closing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_netback::wire::{rsp, rxf, txf, Extra, ExtraInfo, GsoType};
use keel_netback::{RateLimit, RxDrop, XenbusState};
use keel_xen::grant_table::{gtf, GrantRef};

#[test]
fn handshake_advertises_features_and_connects() {
    let (w, nb, fe) = connected(Options::default());
    let be = &nb.config().backend_path;
    assert_eq!(
        w.store.get(&format!("{be}/feature-rx-copy")).as_deref(),
        Some("1")
    );
    assert_eq!(
        w.store.get(&format!("{be}/feature-rx-flip")).as_deref(),
        Some("0")
    );
    assert_eq!(
        w.store.get(&format!("{be}/feature-sg")).as_deref(),
        Some("1")
    );
    assert_eq!(
        w.store
            .get(&format!("{be}/multi-queue-max-queues"))
            .as_deref(),
        Some("4")
    );
    assert_eq!(
        w.store.get(&format!("{be}/hotplug-status")).as_deref(),
        Some("connected")
    );
    assert_eq!(w.store.get(&format!("{be}/state")).as_deref(), Some("4"));
    assert!(nb.features().sg && nb.features().gso_tcpv4 && nb.features().gso_tcpv6);
    assert_eq!(nb.queue_count(), 1);
    // Both rings are mapped (Xen marks the grants in use).
    let q = &fe.queues[0];
    for gref in [q.tx_ref, q.rx_ref] {
        assert_ne!(
            w.fx.foreign_grant_flags(FE, GrantRef(gref)) & gtf::READING,
            0
        );
    }
    assert_eq!(nb.local_ports().len(), 1);
    assert!(nb.on_event(nb.local_ports()[0]));
    assert!(!nb.on_event(keel_xen::evtchn::Port(999)));
}

#[test]
fn a_frame_from_the_guest_reaches_the_switch() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(b"hello from the guest", 0);
    let ids = fe.send(&w, 0, &frame, 0, &[], PAGE, 100);
    let mut sw = Switch::default();
    let p = poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(p.tx_packets, 1);
    assert!(!p.more_work);
    assert_eq!(sw.frames, vec![frame.clone()]);
    let rsps = fe.tx_responses(0);
    assert_eq!(rsps.len(), 1);
    assert_eq!((rsps[0].id, rsps[0].status), (ids[0], rsp::OKAY));
    let c = nb.counters();
    assert_eq!(
        (c.from_guest_frames, c.from_guest_bytes),
        (1, frame.len() as u64)
    );
    // The frontend was notified on its channel.
    assert!(w
        .fx
        .sent_notifications()
        .iter()
        .any(|(dom, port)| *dom == FE && *port == fe.queues[0].ports.0));
    assert!(w.other_guest_untouched());
}

#[test]
fn scatter_gather_slots_are_joined_across_pages() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(&pattern(1400), 0);
    // First slot 100 bytes at offset 3996, then 500-byte slots: the copy buffer's page
    // boundaries and the guest's never line up.
    let ids = fe.send(&w, 0, &frame, 0, &[], 500, 3996);
    assert_eq!(ids.len(), 1 + (frame.len() - 100).div_ceil(500));
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(sw.frames, vec![frame]);
    let rsps = fe.tx_responses(0);
    assert_eq!(rsps.len(), ids.len());
    assert!(rsps.iter().all(|r| r.status == rsp::OKAY));
    assert_eq!(rsps.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
}

#[test]
fn blank_checksums_are_filled() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(b"offloaded checksum", 0x1234);
    assert!(!l4_checksum_ok(&frame));
    fe.send(&w, 0, &frame, txf::CSUM_BLANK, &[], PAGE, 0);
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(sw.frames.len(), 1);
    assert!(l4_checksum_ok(&sw.frames[0]));
    assert_eq!(sw.frames[0][..50], frame[..50]);
}

fn gso(kind: GsoType, size: u16) -> ExtraInfo {
    ExtraInfo {
        extra: Extra::Gso {
            size,
            kind,
            features: 0,
        },
        more: false,
    }
}

#[test]
fn tso_v4_super_frames_are_cut_to_the_mtu() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let data = pattern(30_000);
    let frame = tcp4(&data, 0);
    let ids = fe.send(
        &w,
        0,
        &frame,
        txf::CSUM_BLANK,
        &[gso(GsoType::TcpV4, 1448)],
        PAGE,
        0,
    );
    let mut sw = Switch::default();
    let p = poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(p.tx_packets, 1);
    assert_eq!(sw.frames.len(), data.len().div_ceil(1448));
    let mut joined = Vec::new();
    for (i, f) in sw.frames.iter().enumerate() {
        assert!(f.len() <= 1514, "segment {i} is {} bytes", f.len());
        assert!(l4_checksum_ok(f), "segment {i}");
        assert_eq!(keel_netback::packet::internet_checksum(&f[14..34]), 0);
        joined.extend_from_slice(&f[54..]);
    }
    assert_eq!(joined, data);
    // One response per slot: the first, a NULL for the extra, then the fragments.
    let rsps = fe.tx_responses(0);
    assert_eq!(rsps.len(), ids.len() + 1);
    assert_eq!(rsps[0].status, rsp::OKAY);
    assert_eq!(rsps[1].status, rsp::NULL);
    assert!(rsps[2..].iter().all(|r| r.status == rsp::OKAY));
    assert_eq!(nb.counters().from_guest_frames, sw.frames.len() as u64);
}

#[test]
fn tso_v6_super_frames_are_cut_to_the_mtu() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let data = pattern(10_000);
    let frame = tcp6(&data);
    fe.send(
        &w,
        0,
        &frame,
        txf::CSUM_BLANK,
        &[gso(GsoType::TcpV6, 1428)],
        PAGE,
        0,
    );
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(sw.frames.len(), data.len().div_ceil(1428));
    assert!(sw
        .frames
        .iter()
        .all(|f| l4_checksum_ok(f) && f.len() <= 1514));
}

#[test]
fn a_frame_for_the_guest_lands_in_its_posted_buffer() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    fe.post_rx(&w, 0, 4);
    let frame = tcp4(&pattern(1000), 0);
    nb.push_rx(&frame).unwrap();
    let mut sw = Switch::default();
    let p = poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(p.rx_frames, 1);
    let rsps = fe.rx_responses(0);
    assert_eq!(rsps.len(), 1);
    assert_eq!(rsps[0].status as usize, frame.len());
    assert_eq!(fe.received(&w, &rsps), vec![frame.clone()]);
    let c = nb.counters();
    assert_eq!(
        (c.to_guest_frames, c.to_guest_bytes),
        (1, frame.len() as u64)
    );
    assert!(w
        .fx
        .sent_notifications()
        .iter()
        .any(|(dom, port)| *dom == FE && *port == fe.queues[0].ports.1));
}

#[test]
fn large_frames_span_several_buffers_with_sg() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    fe.post_rx(&w, 0, 8);
    let big = tcp4(&pattern(9000), 0);
    nb.push_rx(&big).unwrap();
    poll(&mut w, &mut nb, 0, &mut Switch::default());
    let rsps = fe.rx_responses(0);
    assert_eq!(rsps.len(), big.len().div_ceil(PAGE));
    assert!(rsps[..rsps.len() - 1]
        .iter()
        .all(|r| r.flags & rxf::MORE_DATA != 0));
    assert_eq!(rsps.last().unwrap().flags & rxf::MORE_DATA, 0);
    assert_eq!(fe.received(&w, &rsps), vec![big]);
}

#[test]
fn without_sg_a_frame_must_fit_one_page() {
    let (_w, mut nb, _fe) = connected(Options {
        sg: false,
        ..Options::default()
    });
    assert_eq!(nb.push_rx(&vec![0u8; PAGE + 1]), Err(RxDrop::TooBig));
    assert_eq!(nb.push_rx(&[0u8; 10]), Err(RxDrop::Runt));
    assert_eq!(nb.counters().to_guest_dropped, 2);
}

#[test]
fn frames_wait_for_buffers_and_the_queue_is_bounded() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let limit = nb.config().rx_queue_frames;
    let frame = tcp4(b"queued", 0);
    for _ in 0..limit {
        nb.push_rx(&frame).unwrap();
    }
    assert_eq!(nb.push_rx(&frame), Err(RxDrop::QueueFull));
    assert_eq!(nb.counters().to_guest_dropped, 1);
    // No buffers posted: nothing moves.
    let p = poll(&mut w, &mut nb, 0, &mut Switch::default());
    assert_eq!(p.rx_frames, 0);
    assert!(!p.more_work);
    // The guest posts 10 and notifies: 10 frames go.
    fe.post_rx(&w, 0, 10);
    let p = poll(&mut w, &mut nb, 0, &mut Switch::default());
    assert_eq!(p.rx_frames, 10);
    let rsps = fe.rx_responses(0);
    assert_eq!(fe.received(&w, &rsps).len(), 10);
}

#[test]
fn a_frontend_without_rx_notify_is_polled_while_frames_wait() {
    let mut w = World::new();
    let config = keel_netback::Config::new(FE, 0, 1);
    let mut nb = keel_netback::Netback::new(config.clone());
    nb.start(&mut w.env()).unwrap();
    let mut fe = Frontend::setup(&mut w, &config, &Options::default());
    w.store
        .0
        .remove(&format!("{}/feature-rx-notify", config.frontend_path));
    Frontend::set_state(&mut w, &mut nb, XenbusState::Connected);
    assert_eq!(nb.state(), XenbusState::Connected);
    nb.push_rx(&tcp4(b"waiting", 0)).unwrap();
    let p = poll(&mut w, &mut nb, 1_000, &mut Switch::default());
    assert_eq!(
        p.wake_at_ns,
        Some(1_000 + keel_netback::RX_UNNOTIFIED_POLL_NS)
    );
    fe.post_rx(&w, 0, 1);
    let p = poll(&mut w, &mut nb, 2_000, &mut Switch::default());
    assert_eq!((p.rx_frames, p.wake_at_ns), (1, None));
}

#[test]
fn multi_queue_with_split_channels() {
    let (mut w, mut nb, mut fe) = connected(Options {
        queues: 4,
        split: true,
        ..Options::default()
    });
    assert_eq!(nb.queue_count(), 4);
    assert_eq!(nb.local_ports().len(), 8);
    for q in 0..4 {
        fe.post_rx(&w, q, 64);
        let f = tcp4(&[q as u8; 64], 0);
        fe.send(&w, q, &f, 0, &[], PAGE, 0);
    }
    // 64 flows: different source ports spread over the queues, each flow on one queue.
    for port in 0..64u16 {
        let mut f = tcp4(b"flow", 0);
        f[34..36].copy_from_slice(&(1000 + port).to_be_bytes());
        nb.push_rx(&f).unwrap();
        nb.push_rx(&f).unwrap();
    }
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(sw.frames.len(), 4);
    let mut used = 0;
    let mut total = 0;
    for q in 0..4 {
        assert_eq!(fe.tx_responses(q).len(), 1);
        let rsps = fe.rx_responses(q);
        let got = fe.received(&w, &rsps);
        total += got.len();
        if !got.is_empty() {
            used += 1;
        }
        // Both frames of a flow went to the same queue, in order.
        assert_eq!(got.len() % 2, 0);
        for pair in got.chunks(2) {
            assert_eq!(pair[0], pair[1]);
        }
    }
    assert_eq!(total, 128);
    assert!(used >= 3, "flows spread over {used} queues");
}

#[test]
fn the_rate_limit_holds_packets_until_credit_returns() {
    let rate = RateLimit {
        credit_bytes: 3000,
        timeslice_us: 10_000,
    };
    let (mut w, mut nb, mut fe) = connected(Options {
        rate: Some(rate),
        ..Options::default()
    });
    let frame = tcp4(&pattern(1400), 0);
    for _ in 0..5 {
        fe.send(&w, 0, &frame, 0, &[], PAGE, 0);
    }
    let mut sw = Switch::default();
    // The first window starts at 0 with a full credit: two 1454-byte frames fit.
    let p = poll(&mut w, &mut nb, 1, &mut sw);
    assert_eq!(p.tx_packets, 2);
    assert_eq!(p.wake_at_ns, Some(10_000_000));
    let p = poll(&mut w, &mut nb, 5_000_000, &mut sw);
    assert_eq!(p.tx_packets, 0);
    let p = poll(&mut w, &mut nb, 10_000_000, &mut sw);
    assert_eq!(p.tx_packets, 2);
    let p = poll(&mut w, &mut nb, 20_000_000, &mut sw);
    assert_eq!(p.tx_packets, 1);
    assert_eq!(p.wake_at_ns, None);
    assert_eq!(sw.frames.len(), 5);
    assert_eq!(fe.tx_responses(0).len(), 5);
}

#[test]
fn the_rate_node_is_read_and_watched() {
    let (mut w, mut nb, _fe) = connected(Options::default());
    assert_eq!(nb.rate(), None);
    let path = nb.config().rate_path();
    w.store.put(&path, "51200,50000");
    nb.on_watch(&mut w.env(), &path, 0);
    assert_eq!(nb.rate(), RateLimit::from_xapi_kbps(1000));
    w.store.0.remove(&path);
    nb.on_watch(&mut w.env(), &path, 0);
    assert_eq!(nb.rate(), None);
}

#[test]
fn multicast_subscriptions_are_kept_and_not_forwarded() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let group = [0x01, 0x00, 0x5e, 0, 0, 1];
    let add = ExtraInfo {
        extra: Extra::McastAdd(group),
        more: false,
    };
    fe.send(&w, 0, &tcp4(b"", 0), 0, &[add], PAGE, 0);
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert!(sw.frames.is_empty());
    assert_eq!(nb.multicast_addresses(), &[group]);
    let rsps = fe.tx_responses(0);
    assert_eq!(rsps[0].status, rsp::OKAY);
    let del = ExtraInfo {
        extra: Extra::McastDel(group),
        more: false,
    };
    fe.send(&w, 0, &tcp4(b"", 0), 0, &[del], PAGE, 0);
    poll(&mut w, &mut nb, 0, &mut sw);
    assert!(nb.multicast_addresses().is_empty());
}

#[test]
fn closing_unmaps_rings_and_reconnecting_works() {
    let (mut w, mut nb, fe) = connected(Options::default());
    nb.push_rx(&tcp4(b"lost", 0)).unwrap();
    Frontend::set_state(&mut w, &mut nb, XenbusState::Closing);
    assert_eq!(nb.state(), XenbusState::Closing);
    assert_eq!(nb.queue_count(), 0);
    assert!(w.rings.in_use.is_empty(), "ring frames given back");
    let q = &fe.queues[0];
    for gref in [q.tx_ref, q.rx_ref] {
        assert_eq!(
            w.fx.foreign_grant_flags(FE, GrantRef(gref)) & (gtf::READING | gtf::WRITING),
            0
        );
    }
    assert_eq!(nb.counters().to_guest_dropped, 1);
    Frontend::set_state(&mut w, &mut nb, XenbusState::Closed);
    assert_eq!(nb.state(), XenbusState::Closed);
    assert_eq!(nb.push_rx(&tcp4(b"x", 0)), Err(RxDrop::NotConnected));
    // The frontend comes back (driver reload) with fresh rings.
    Frontend::set_state(&mut w, &mut nb, XenbusState::Initialising);
    assert_eq!(nb.state(), XenbusState::InitWait);
    let config = nb.config().clone();
    let mut fe2 = Frontend::setup(&mut w, &config, &Options::default());
    Frontend::set_state(&mut w, &mut nb, XenbusState::Connected);
    assert_eq!(nb.state(), XenbusState::Connected);
    fe2.send(&w, 0, &tcp4(b"again", 0), 0, &[], PAGE, 0);
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(sw.frames.len(), 1);
}

#[test]
fn the_toolstack_can_close_a_vif() {
    let (mut w, mut nb, _fe) = connected(Options::default());
    nb.close(&mut w.env());
    assert_eq!(nb.state(), XenbusState::Closing);
    assert!(w.rings.in_use.is_empty());
    let p = poll(&mut w, &mut nb, 0, &mut Switch::default());
    assert_eq!(p, keel_netback::Progress::default());
}

#[test]
fn the_first_watch_before_the_frontend_exists_changes_nothing() {
    let mut w = World::new();
    let config = keel_netback::Config::new(FE, 0, 1);
    let mut nb = keel_netback::Netback::new(config.clone());
    nb.start(&mut w.env()).unwrap();
    nb.on_watch(&mut w.env(), &config.frontend_state_path(), 0);
    assert_eq!(nb.state(), XenbusState::InitWait);
    // Initialising (the toolstack wrote it) changes nothing either.
    w.store.put(&config.frontend_state_path(), "1");
    nb.on_watch(&mut w.env(), &config.frontend_state_path(), 0);
    assert_eq!(nb.state(), XenbusState::InitWait);
}

#[test]
fn a_guest_mss_beyond_the_mtu_still_gives_mtu_frames() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(&pattern(20_000), 0);
    fe.send(&w, 0, &frame, 0, &[gso(GsoType::TcpV4, 8960)], PAGE, 0);
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert!(sw.frames.len() >= 20_000 / 1464);
    assert!(sw.frames.iter().all(|f| f.len() <= 1514));
    assert_eq!(sw.frames[0].len(), 1514);
}

/// `GNTTABOP_copy` hypercalls issued so far.
fn copy_calls(w: &World) -> usize {
    w.fx.call_log()
        .iter()
        .filter(|(op, cmd)| {
            *op == keel_xen::hypercall::HypercallOp::GrantTableOp as u32 && *cmd == 5
        })
        .count()
}

#[test]
fn copies_are_batched_across_packets_in_order() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    // 60 frames of 1500 bytes: 90 000 bytes, more than the 64 KiB buffer holds at once.
    let frames: Vec<Vec<u8>> = (0..60u8)
        .map(|i| {
            let mut f = tcp4(&pattern(1446), 0);
            f[60] = i;
            f
        })
        .collect();
    for f in &frames {
        fe.send(&w, 0, f, 0, &[], 1000, 0);
    }
    let before = copy_calls(&w);
    let mut sw = Switch::default();
    let p = poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(p.tx_packets, 60);
    assert_eq!(sw.frames, frames, "every frame, in order");
    assert_eq!(copy_calls(&w) - before, 2, "one copy per buffer-full");
    assert!(fe.tx_responses(0).iter().all(|r| r.status == rsp::OKAY));

    // The same the other way, with frames that straddle the buffer's pages.
    fe.post_rx(&w, 0, 120);
    let odd: Vec<Vec<u8>> = (0..60).map(|i| tcp4(&pattern(1000 + 37 * i), 0)).collect();
    for f in &odd {
        nb.push_rx(f).unwrap();
    }
    // Frames are packed back to back until the next would not fit.
    let (mut batches, mut pos) = (1, 0);
    for f in &odd {
        if pos + f.len() > keel_netback::BUFFER_PAGES * PAGE {
            batches += 1;
            pos = 0;
        }
        pos += f.len();
    }
    assert!(batches >= 2);
    let before = copy_calls(&w);
    let p = poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(p.rx_frames, 60);
    assert_eq!(copy_calls(&w) - before, batches);
    let rsps = fe.rx_responses(0);
    assert_eq!(fe.received(&w, &rsps), odd);
}

#[test]
fn a_failed_copy_hypercall_fails_its_batch_only() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(b"batch", 0);
    for _ in 0..3 {
        fe.send(&w, 0, &frame, 0, &[], PAGE, 0);
    }
    w.fx.fail_next(
        keel_xen::hypercall::HypercallOp::GrantTableOp,
        keel_xen::XenError::EFAULT,
    );
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert!(sw.frames.is_empty());
    assert!(fe.tx_responses(0).iter().all(|r| r.status == rsp::ERROR));
    assert_eq!(nb.counters().from_guest_errors, 3);
    assert_eq!(nb.state(), XenbusState::Connected);
    fe.send(&w, 0, &frame, 0, &[], PAGE, 0);
    poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(sw.frames.len(), 1);
}
