//! netback against hostile frontends (principle 5; Xen's netback advisories are the list):
//! bad grants, oversized and never-ending packets, indices that run ahead, malformed
//! extras, floods and bad handshakes. Each is answered with an error or a disconnect with a
//! reason, and no page but the frontend's own granted ones and our copy buffer is touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_netback::wire::{rsp, txf, RxRequest, TxRequest, FATAL_SLOTS, LEGACY_SLOTS_MAX};
use keel_netback::{Config, Fault, Netback, XenbusState};
use keel_xen::grant_table::gtf;
use std::sync::atomic::Ordering;

fn req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> [u8; 12] {
    TxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    }
    .encode()
}

/// The frontend was disconnected for `want` and the reason is in xenstore.
fn assert_disconnected(w: &World, nb: &Netback, want: impl Fn(&Fault) -> bool) {
    assert_eq!(nb.state(), XenbusState::Closing);
    let fault = nb.fault().expect("a fault is recorded");
    assert!(want(fault), "unexpected fault {fault:?}");
    let reason = w.store.get(&nb.config().error_path()).expect("error node");
    assert!(reason.contains(&fault.describe().1), "{reason}");
    assert_eq!(nb.queue_count(), 0);
    assert!(w.rings.in_use.is_empty(), "rings unmapped");
    assert_eq!(nb.counters().fatal_errors, 1);
    assert!(w.other_guest_untouched());
}

#[test]
fn a_bad_grant_fails_that_packet_only() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(b"good", 0);
    // Grant 50 belongs to the other guest; 4000 exists nowhere.
    fe.send_raw(0, &[req(50, 0, 0, 1, 60), req(4000, 0, 0, 2, 60)]);
    fe.send(&w, 0, &frame, 0, &[], PAGE, 0);
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    let rsps = fe.tx_responses(0);
    assert_eq!(
        rsps.iter().map(|r| r.status).collect::<Vec<_>>(),
        [rsp::ERROR, rsp::ERROR, rsp::OKAY]
    );
    assert_eq!(sw.frames, vec![frame]);
    assert_eq!(nb.counters().from_guest_errors, 2);
    assert_eq!(nb.state(), XenbusState::Connected);
    assert!(w.other_guest_untouched());
}

#[test]
fn a_bad_or_read_only_receive_grant_is_an_error_for_that_frame() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    // The other guest's grant, then a read-only page of our own.
    fe.queues[0]
        .rx
        .queue_request(RxRequest { id: 1, gref: 50 }.encode())
        .unwrap();
    let (ro, ro_frame) = fe.grant_frame(&w, gtf::PERMIT_ACCESS | gtf::READONLY);
    fe.queues[0]
        .rx
        .queue_request(RxRequest { id: 2, gref: ro }.encode())
        .unwrap();
    fe.queues[0].rx.push_requests();
    fe.post_rx(&w, 0, 1);
    for _ in 0..3 {
        nb.push_rx(&tcp4(&[0xEE; 100], 0)).unwrap();
    }
    poll(&mut w, &mut nb, 0, &mut Switch::default());
    let rsps = fe.rx_responses(0);
    assert_eq!(
        rsps.iter().map(|r| r.status).collect::<Vec<_>>(),
        [rsp::ERROR, rsp::ERROR, 154]
    );
    assert_eq!(nb.counters().to_guest_errors, 2);
    assert_eq!(nb.counters().to_guest_frames, 1);
    assert!(w.other_guest_untouched());
    assert_eq!(w.fx.read_foreign_frame(ro_frame, 0, PAGE), vec![0; PAGE]);
}

#[test]
fn an_oversized_frame_without_gso_is_refused() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(&pattern(3000), 0);
    fe.send(&w, 0, &frame, 0, &[], PAGE, 0);
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert!(sw.frames.is_empty());
    assert!(fe.tx_responses(0).iter().all(|r| r.status == rsp::ERROR));
    assert_eq!(nb.counters().from_guest_errors, 1);
    assert_eq!(nb.state(), XenbusState::Connected);
}

#[test]
fn the_mtu_bounds_untagged_and_tagged_frames() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let tag = |f: &[u8]| {
        let mut t = f[..12].to_vec();
        t.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        t.extend_from_slice(&f[12..]);
        t
    };
    // IP packets of 1500 bytes fit, with or without a tag; 1501 do not.
    let full = tcp4(&pattern(1460), 0);
    let over = tcp4(&pattern(1461), 0);
    let (full_tagged, over_tagged) = (tag(&full), tag(&over));
    assert_eq!((full.len(), full_tagged.len()), (1514, 1518));
    for f in [&full, &over, &full_tagged, &over_tagged] {
        fe.send(&w, 0, f, 0, &[], PAGE, 0);
    }
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert!(
        sw.frames == [full, full_tagged],
        "only the fitting frames pass"
    );
    let statuses: Vec<_> = fe.tx_responses(0).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [rsp::OKAY, rsp::ERROR, rsp::OKAY, rsp::ERROR]);
}

#[test]
fn a_runt_first_slot_is_refused() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(b"", 0);
    // First slot 10 bytes, the rest in a second slot.
    fe.send(&w, 0, &frame, 0, &[], 10, 0);
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert!(sw.frames.is_empty());
    assert!(fe.tx_responses(0).iter().all(|r| r.status == rsp::ERROR));
}

#[test]
fn a_fragment_larger_than_announced_is_refused() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let (g1, _) = fe.grant_frame(&w, gtf::PERMIT_ACCESS);
    let (g2, _) = fe.grant_frame(&w, gtf::PERMIT_ACCESS);
    fe.send_raw(
        0,
        &[req(g1, 0, txf::MORE_DATA, 1, 100), req(g2, 0, 0, 2, 200)],
    );
    poll(&mut w, &mut nb, 0, &mut Switch::default());
    let rsps = fe.tx_responses(0);
    assert_eq!(rsps.len(), 2);
    assert!(rsps.iter().all(|r| r.status == rsp::ERROR));
    assert_eq!(nb.state(), XenbusState::Connected);
}

#[test]
fn eighteen_to_nineteen_slots_drop_the_packet_but_keep_the_guest() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let n = LEGACY_SLOTS_MAX + 1; // slots after the first
    let mut slots = vec![req(8, 0, txf::MORE_DATA, 0, (n * 10 + 60) as u16)];
    for i in 0..n {
        let more = if i + 1 < n { txf::MORE_DATA } else { 0 };
        slots.push(req(8, 0, more, i as u16 + 1, 10));
    }
    fe.send_raw(0, &slots);
    let mut sw = Switch::default();
    poll(&mut w, &mut nb, 0, &mut sw);
    assert!(sw.frames.is_empty());
    let rsps = fe.tx_responses(0);
    assert_eq!(rsps.len(), n + 1);
    assert!(rsps.iter().all(|r| r.status == rsp::ERROR));
    assert_eq!(nb.state(), XenbusState::Connected);
}

#[test]
fn slots_that_never_end_disconnect_the_guest() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let slots: Vec<_> = (0..100)
        .map(|i| req(8, 0, txf::MORE_DATA, i, 100))
        .collect();
    fe.send_raw(0, &slots);
    let mut sw = Switch::default();
    let p = poll(&mut w, &mut nb, 0, &mut sw);
    assert!(p.disconnected);
    assert!(sw.frames.is_empty());
    assert_disconnected(
        &w,
        &nb,
        |f| matches!(f, Fault::TooManySlots { slots } if *slots == FATAL_SLOTS),
    );
    // Nothing more happens however much it sends.
    assert_eq!(poll(&mut w, &mut nb, 0, &mut sw), Default::default());
}

#[test]
fn a_disconnected_frontend_must_close_before_it_connects_again() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    fe.send_raw(0, &[req(8, 4000, 0, 1, 200)]);
    poll(&mut w, &mut nb, 0, &mut Switch::default());
    assert_eq!(nb.state(), XenbusState::Closing);
    // Claiming Connected again changes nothing...
    Frontend::set_state(&mut w, &mut nb, XenbusState::Connected);
    assert_eq!(nb.state(), XenbusState::Closing);
    assert!(w.rings.in_use.is_empty());
    // ...closing does, and then it may connect with fresh rings and channels.
    Frontend::set_state(&mut w, &mut nb, XenbusState::Closed);
    assert_eq!(nb.state(), XenbusState::Closed);
    let config = nb.config().clone();
    let _fresh = Frontend::setup(&mut w, &config, &Options::default());
    Frontend::set_state(&mut w, &mut nb, XenbusState::Connected);
    assert_eq!(nb.state(), XenbusState::Connected);
    assert_eq!(nb.fault(), None);
}

#[test]
fn a_packet_cut_off_at_the_published_index_disconnects() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    fe.send_raw(
        0,
        &[
            req(8, 0, txf::MORE_DATA, 1, 200),
            req(8, 0, txf::MORE_DATA, 2, 100),
        ],
    );
    poll(&mut w, &mut nb, 0, &mut Switch::default());
    assert_disconnected(&w, &nb, |f| matches!(f, Fault::IncompletePacket { .. }));
}

#[test]
fn a_tx_index_running_ahead_disconnects() {
    let (mut w, mut nb, fe) = connected(Options::default());
    fe.queues[0]
        .tx_header
        .req_prod
        .store(1000, Ordering::SeqCst);
    poll(&mut w, &mut nb, 0, &mut Switch::default());
    assert_disconnected(&w, &nb, |f| matches!(f, Fault::TxRingOverflow(_)));
}

#[test]
fn an_rx_index_running_ahead_disconnects() {
    let (mut w, mut nb, fe) = connected(Options::default());
    nb.push_rx(&tcp4(b"x", 0)).unwrap();
    fe.queues[0]
        .rx_header
        .req_prod
        .store(u32::MAX, Ordering::SeqCst);
    poll(&mut w, &mut nb, 0, &mut Switch::default());
    assert_disconnected(&w, &nb, |f| matches!(f, Fault::RxRingOverflow(_)));
}

#[test]
fn a_slot_crossing_its_page_disconnects() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    fe.send_raw(0, &[req(8, 4000, 0, 1, 200)]);
    poll(&mut w, &mut nb, 0, &mut Switch::default());
    assert_disconnected(&w, &nb, |f| {
        matches!(
            f,
            Fault::CrossPage {
                offset: 4000,
                size: 200
            }
        )
    });
}

#[test]
fn malformed_extras_disconnect() {
    let gso_size_zero = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    let unknown_type = [9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let bad_gso_type = [1, 0, 0xa8, 5, 7, 0, 0, 0, 0, 0, 0, 0];
    let bad_extras: [Vec<[u8; 12]>; 5] = [
        vec![[0; 12]],
        vec![gso_size_zero],
        vec![unknown_type],
        vec![bad_gso_type],
        // `extra_info` with nothing after it.
        vec![],
    ];
    for extras in bad_extras {
        let (mut w, mut nb, mut fe) = connected(Options::default());
        let mut slots = vec![req(8, 0, txf::EXTRA_INFO, 1, 60)];
        slots.extend(extras);
        fe.send_raw(0, &slots);
        poll(&mut w, &mut nb, 0, &mut Switch::default());
        assert_disconnected(&w, &nb, |f| {
            matches!(f, Fault::BadExtra(_) | Fault::MissingExtra)
        });
    }
}

#[test]
fn a_flood_is_worked_off_in_bounded_polls() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(b"flood", 0);
    for _ in 0..256 {
        fe.send(&w, 0, &frame, 0, &[], PAGE, 0);
    }
    for _ in 0..64 {
        nb.push_rx(&frame).unwrap();
    }
    fe.post_rx(&w, 0, 256);
    let budget = nb.config().tx_budget;
    let mut sw = Switch::default();
    let mut polls = 0;
    loop {
        let p = poll(&mut w, &mut nb, 0, &mut sw);
        polls += 1;
        assert!(p.tx_packets <= budget && p.rx_frames <= nb.config().rx_budget);
        if !p.more_work {
            break;
        }
        let _ = fe.tx_responses(0);
    }
    assert_eq!(polls, 256 / budget + 1);
    assert_eq!(sw.frames.len(), 256);
    assert_eq!(nb.counters().to_guest_frames, 64);
}

#[test]
fn a_full_switch_drops_and_counts() {
    let (mut w, mut nb, mut fe) = connected(Options::default());
    let frame = tcp4(b"x", 0);
    for _ in 0..3 {
        fe.send(&w, 0, &frame, 0, &[], PAGE, 0);
    }
    let mut sw = Switch {
        capacity: Some(1),
        ..Switch::default()
    };
    poll(&mut w, &mut nb, 0, &mut sw);
    assert_eq!(sw.frames.len(), 1);
    assert_eq!(nb.counters().from_guest_dropped, 2);
    // The guest is answered all the same (the frame was taken).
    assert_eq!(fe.tx_responses(0).len(), 3);
}

fn handshake(setup: impl FnOnce(&mut World, &Config)) -> (World, Netback) {
    let mut w = World::new();
    let config = Config::new(FE, 0, 2);
    let mut nb = Netback::new(config.clone());
    nb.start(&mut w.env()).unwrap();
    let _fe = Frontend::setup(&mut w, &config, &Options::default());
    setup(&mut w, &config);
    Frontend::set_state(&mut w, &mut nb, XenbusState::Connected);
    (w, nb)
}

#[test]
fn bad_handshakes_are_refused_with_a_reason() {
    let (w, nb) = handshake(|w, c| {
        w.store
            .put(&format!("{}/multi-queue-num-queues", c.frontend_path), "64")
    });
    assert_disconnected(&w, &nb, |f| matches!(f, Fault::Handshake(_)));
    assert!(w
        .store
        .get(&nb.config().error_path())
        .unwrap()
        .contains("valid range is 1 - 2"));

    let (w, nb) = handshake(|w, c| {
        w.store
            .put(&format!("{}/tx-ring-ref", c.frontend_path), "50")
    });
    assert_disconnected(&w, &nb, |f| matches!(f, Fault::MapRing { gref: 50, .. }));

    let (w, nb) = handshake(|w, c| {
        w.store
            .put(&format!("{}/event-channel", c.frontend_path), "77")
    });
    assert_disconnected(&w, &nb, |f| matches!(f, Fault::Bind { port: 77, .. }));

    let (w, nb) = handshake(|w, c| {
        w.store
            .put(&format!("{}/request-rx-copy", c.frontend_path), "0")
    });
    assert_disconnected(&w, &nb, |f| matches!(f, Fault::Handshake(_)));
}

/// xorshift64*: deterministic noise for the random-ring test.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_ring_contents_never_panic_and_never_leak() {
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let mut disconnects = 0;
    let (mut delivered, mut refused) = (0, 0);
    for round in 0..300 {
        let (mut w, mut nb, mut fe) = connected(Options::default());
        // Some real data pages to point at, half of them read-only.
        let grants: Vec<u32> = (0..8)
            .map(|i| {
                let flags = if i % 2 == 0 { gtf::READONLY } else { 0 };
                let (g, frame) = fe.grant_frame(&w, gtf::PERMIT_ACCESS | flags);
                w.fx.write_foreign_frame(frame, 0, &pattern(PAGE));
                g
            })
            .collect();
        let mut sw = Switch::default();
        for step in 0..6 {
            let n = noise.below(40) as usize;
            let slots: Vec<[u8; 12]> = (0..n)
                .map(|_| {
                    let mut s = [0u8; 12];
                    for b in s.iter_mut() {
                        *b = noise.next() as u8;
                    }
                    // Mostly plausible requests, so the checks past the first are reached.
                    if noise.below(150) != 0 {
                        let gref = grants[noise.below(8) as usize];
                        let mut flags = (noise.next() as u16) & (txf::MORE_DATA | txf::CSUM_BLANK);
                        if noise.below(300) == 0 {
                            flags |= txf::EXTRA_INFO;
                        }
                        let size = noise.below(3000) as u16;
                        let spill = if noise.below(300) == 0 { 8 } else { 1 };
                        let offset = noise.below(u64::from(4096 - size) + spill) as u16;
                        s = req(gref, offset, flags, noise.next() as u16, size);
                    }
                    s
                })
                .collect();
            // Usually end the batch's last packet; sometimes leave it open.
            let mut slots = slots;
            if let Some(last) = slots.last_mut() {
                if noise.below(20) != 0 {
                    let mut r = keel_netback::wire::TxRequest::parse(last);
                    r.flags &= !(txf::MORE_DATA | txf::EXTRA_INFO);
                    *last = r.encode();
                }
            }
            if nb.state() == XenbusState::Connected {
                let free = fe.queues[0].tx.free_requests() as usize;
                fe.send_raw(0, &slots[..n.min(free)]);
                if noise.below(60) == 0 {
                    let h = fe.queues[0].tx_header;
                    h.req_prod
                        .fetch_add(noise.below(600) as u32, Ordering::SeqCst);
                }
                fe.post_rx(&w, 0, noise.below(3) as usize);
                for _ in 0..noise.below(4) {
                    let len = 14 + noise.below(9000) as usize;
                    let _ = nb.push_rx(&pattern(len));
                }
            }
            let p = poll(&mut w, &mut nb, step * 1_000_000, &mut sw);
            assert!(p.tx_packets <= nb.config().tx_budget);
            // The frontend's own view breaks once it moved req_prod by hand; drain what it
            // can.
            while let Ok(Some(_)) = fe.queues[0].tx.take_response() {}
            while let Ok(Some(_)) = fe.queues[0].rx.take_response() {}
        }
        assert!(sw.frames.iter().all(|f| f.len() <= 1518), "round {round}");
        delivered += sw.frames.len();
        refused += nb.counters().from_guest_errors;
        if nb.state() != XenbusState::Connected {
            disconnects += 1;
            assert!(nb.fault().is_some());
            assert!(w.rings.in_use.is_empty(), "round {round}: rings kept");
        }
        assert!(w.other_guest_untouched());
    }
    // The noise reaches every outcome: frames through, packets refused, guests cut off.
    eprintln!("{disconnects} disconnects, {delivered} frames, {refused} refused");
    assert!(
        (30..270).contains(&disconnects),
        "{disconnects} disconnects"
    );
    assert!(delivered > 100 && refused > 100);
}

#[test]
fn a_ring_frame_that_cannot_be_unmapped_is_never_reused() {
    let (mut w, mut nb, _fe) = connected(Options::default());
    assert_eq!(w.rings.in_use.len(), 2);
    w.fx.fail_next(
        keel_xen::hypercall::HypercallOp::GrantTableOp,
        keel_xen::XenError::EINVAL,
    );
    nb.close(&mut w.env());
    assert_eq!(nb.queue_count(), 0);
    // One unmap failed: its frame stays allocated (FakeRings panics on a double free).
    assert_eq!(w.rings.in_use.len(), 1);
}
