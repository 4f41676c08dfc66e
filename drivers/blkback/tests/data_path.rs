//! Data through the device: reads and writes by grant copy, indirect requests, flush and
//! barrier ordering against an out-of-order target, discard, target errors and back
//! pressure, notification hold-off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_blkback::fake::{Order, Submitted};
use keel_blkback::wire::{encode, op};
use keel_xen::grant_table::{gtf, GrantRef};

fn pattern(seed: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn partial_segments_write_then_read_back() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.data_page(1000, false);
    w.data_page(1001, false);
    w.fill(1000, 0, &pattern(1));
    w.fill(1001, 0, &pattern(2));
    // Sectors 2..=7 of page 1000 then 0..=3 of page 1001, to disk sector 10.
    fe.push_request(&write(1, 10, &[seg(1000, 2, 7), seg(1001, 0, 3)]));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(1, op::WRITE, 0)]);
    let disk = w.target.cache[10 * 512..20 * 512].to_vec();
    assert_eq!(disk[..3072], pattern(1)[1024..]);
    assert_eq!(disk[3072..], pattern(2)[..2048]);
    // Read it back into sectors 1..=5 of a third page, then 0..=4 of a fourth.
    w.data_page(1002, false);
    w.data_page(1003, false);
    fe.push_request(&read(2, 10, &[seg(1002, 1, 5), seg(1003, 0, 4)]));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(2, op::READ, 0)]);
    let stats = dev.stats();
    assert_eq!((stats.writes, stats.write_bytes), (1, 5120));
    assert_eq!((stats.reads, stats.read_bytes), (1, 5120));
    assert_eq!((stats.errors, stats.unsupported, stats.flushes), (0, 0, 0));
    let p2 = w.page(1002);
    let p3 = w.page(1003);
    assert_eq!(p2[..512], [0; 512], "sector 0 of the page untouched");
    assert_eq!(p2[512..3072], disk[..2560]);
    assert_eq!(p2[3072..], [0; 1024], "sectors 6..7 untouched");
    assert_eq!(p3[..2560], disk[2560..5120]);
}

#[test]
fn indirect_requests_carry_many_segments() {
    let mut w = World::new(4096);
    let mut dev = device_with(|c| c.limits.max_indirect_segments = 1024);
    let fe = w.connected(&mut dev);
    assert_eq!(
        w.be("feature-max-indirect-segments").as_deref(),
        Some("1024")
    );
    // 600 one-sector segments over 75 data pages, listed in two indirect pages (512 + 88).
    let segs: Vec<_> = (0..600u32)
        .map(|i| seg(5000 + i / 8, (i % 8) as u8, (i % 8) as u8))
        .collect();
    let mut expected = Vec::new();
    for g in 5000..5075u32 {
        w.data_page(g, false);
        w.fill(g, 0, &pattern(g as u8));
        expected.extend(pattern(g as u8));
    }
    w.data_page(90, false);
    w.data_page(91, false);
    let mut lists = [vec![0u8; 4096], vec![0u8; 4096]];
    for (i, s) in segs.iter().enumerate() {
        let at = (i % 512) * 8;
        lists[i / 512][at..at + 8].copy_from_slice(&s.encode());
    }
    w.fill(90, 0, &lists[0]);
    w.fill(91, 0, &lists[1]);
    let grefs = [GrantRef(90), GrantRef(91)];
    fe.push_request(&encode::indirect(op::WRITE, 9, 100, 600, &grefs));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(9, op::WRITE, 0)]);
    assert_eq!(w.target.cache[100 * 512..700 * 512], expected[..]);
    // And read back through the same lists into fresh pages.
    for g in 5000..5075u32 {
        w.fill(g, 0, &[0; 4096]);
    }
    fe.push_request(&encode::indirect(op::READ, 10, 100, 600, &grefs));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(10, op::READ, 0)]);
    let mut back = Vec::new();
    for g in 5000..5075u32 {
        back.extend(w.page(g));
    }
    assert_eq!(back, expected);
}

#[test]
fn indirect_limits_and_bad_pages_answer_error() {
    let mut w = World::new(4096);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.data_page(90, false);
    w.data_page(5000, false);
    let one = seg(5000, 0, 7).encode();
    w.fill(90, 0, &one);
    // Fine: one segment.
    fe.push_request(&encode::indirect(op::READ, 1, 0, 1, &[GrantRef(90)]));
    // Over the advertised 256.
    fe.push_request(&encode::indirect(op::READ, 2, 0, 257, &[GrantRef(90)]));
    // Zero segments.
    fe.push_request(&encode::indirect(op::READ, 3, 0, 0, &[GrantRef(90)]));
    // Indirect page is not granted.
    fe.push_request(&encode::indirect(op::READ, 4, 0, 1, &[GrantRef(91)]));
    // Not a read or write inside.
    fe.push_request(&encode::indirect(
        op::WRITE_BARRIER,
        5,
        0,
        1,
        &[GrantRef(90)],
    ));
    w.settle(&mut dev);
    let got = fe.take_responses();
    assert_eq!(
        got,
        [
            (2, op::READ, -1),
            (3, op::READ, -1),
            (4, op::READ, -1),
            (5, op::WRITE_BARRIER, -1),
            (1, op::READ, 0),
        ]
    );
    // A segment inside the indirect page with last_sect 9.
    w.fill(90, 0, &seg(5000, 0, 9).encode());
    fe.push_request(&encode::indirect(op::READ, 6, 0, 1, &[GrantRef(90)]));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(6, op::READ, -1)]);
    let _ = w.target.submitted.len();
}

#[test]
fn completions_out_of_order_are_answered_as_they_finish() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.target.order = Order::Lifo;
    w.target.order = Order::Stalled;
    w.data_page(1000, false);
    for id in 0..4 {
        fe.push_request(&read(id, id * 8, &[seg(1000, 0, 7)]));
    }
    w.settle(&mut dev);
    assert_eq!(dev.in_flight(), 4);
    w.target.order = Order::Lifo;
    w.settle(&mut dev);
    let ids: Vec<u64> = fe.take_responses().iter().map(|r| r.0).collect();
    assert_eq!(ids, [3, 2, 1, 0]);
}

#[test]
fn a_flush_waits_for_every_earlier_write_and_makes_it_durable() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.target.order = Order::Stalled;
    w.data_page(1000, false);
    w.fill(1000, 0, &pattern(7));
    fe.push_request(&write(1, 0, &[seg(1000, 0, 7)]));
    fe.push_request(&flush(2));
    fe.push_request(&read(3, 64, &[seg(1000, 0, 0)]));
    w.settle(&mut dev);
    // The write and the later read are in the target; the flush waits for the write.
    assert!(matches!(
        w.target.submitted[..],
        [Submitted::Write { .. }, Submitted::Read { .. }]
    ));
    // Power cut now: nothing durable.
    assert_eq!(w.target.durable[..4096], [0; 4096]);
    w.target.order = Order::Fifo;
    w.settle(&mut dev);
    assert!(matches!(
        w.target.submitted[..],
        [
            Submitted::Write { .. },
            Submitted::Read { .. },
            Submitted::Flush { .. }
        ]
    ));
    assert_eq!(w.target.flushes_over_pending_writes, 0);
    let r = fe.take_responses();
    assert_eq!(
        r,
        [
            (1, op::WRITE, 0),
            (3, op::READ, 0),
            (2, op::FLUSH_DISKCACHE, 0)
        ]
    );
    // Acknowledged flush: the write is durable.
    assert_eq!(w.target.durable[..4096], pattern(7)[..]);
}

#[test]
fn a_flush_with_data_is_a_preflush_and_a_durable_write() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.data_page(1000, false);
    w.data_page(1001, false);
    w.fill(1000, 0, &pattern(1));
    w.fill(1001, 0, &pattern(2));
    w.target.order = Order::Stalled;
    fe.push_request(&write(1, 0, &[seg(1000, 0, 7)]));
    // blkfront sends FUA writes as FLUSH_DISKCACHE with data.
    fe.push_request(&encode::direct(
        op::FLUSH_DISKCACHE,
        2,
        8,
        0,
        &[seg(1001, 0, 7)],
    ));
    w.settle(&mut dev);
    assert_eq!(w.target.submitted.len(), 1);
    w.target.order = Order::Fifo;
    w.settle(&mut dev);
    assert!(matches!(
        w.target.submitted[..],
        [
            Submitted::Write { fua: false, .. },
            Submitted::Flush { .. },
            Submitted::Write {
                sector: 8,
                fua: true,
                ..
            }
        ]
    ));
    assert_eq!(
        fe.take_responses(),
        [(1, op::WRITE, 0), (2, op::FLUSH_DISKCACHE, 0)]
    );
    assert_eq!(w.target.durable[..4096], pattern(1)[..]);
    assert_eq!(w.target.durable[4096..8192], pattern(2)[..]);
}

#[test]
fn a_barrier_orders_everything_around_it() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    for g in 1000..1003 {
        w.data_page(g, false);
        w.fill(g, 0, &pattern(g as u8));
    }
    w.target.order = Order::Stalled;
    fe.push_request(&write(1, 0, &[seg(1000, 0, 7)]));
    fe.push_request(&encode::direct(
        op::WRITE_BARRIER,
        2,
        8,
        0,
        &[seg(1001, 0, 7)],
    ));
    fe.push_request(&write(3, 16, &[seg(1002, 0, 7)]));
    w.settle(&mut dev);
    // Only the first write started; the barrier waits, the write after it is not taken.
    assert_eq!(w.target.submitted.len(), 1);
    // One completion at a time to watch the order.
    w.target.order = Order::Fifo;
    w.settle(&mut dev);
    let kinds: Vec<_> = w
        .target
        .submitted
        .iter()
        .map(|s| match s {
            Submitted::Write { sector, fua, .. } => {
                format!("w{sector}{}", if *fua { "F" } else { "" })
            }
            Submitted::Flush { .. } => "flush".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["w0", "flush", "w8F", "w16"]);
    assert_eq!(
        fe.take_responses(),
        [
            (1, op::WRITE, 0),
            (2, op::WRITE_BARRIER, 0),
            (3, op::WRITE, 0)
        ]
    );
    assert_eq!(
        w.target.durable[..8192],
        {
            let mut v = pattern(0xE8);
            v.extend(pattern(0xE9));
            v
        }[..]
    );
}

#[test]
fn flush_and_barrier_without_the_feature_are_not_supported() {
    let mut w = World::new(256);
    w.target.geometry.flush = false;
    w.target.geometry.discard = None;
    let mut dev = device();
    let fe = w.connected(&mut dev);
    assert_eq!(w.be("feature-flush-cache").as_deref(), Some("0"));
    assert_eq!(w.be("feature-barrier").as_deref(), Some("0"));
    fe.push_request(&flush(1));
    fe.push_request(&encode::direct(op::WRITE_BARRIER, 2, 0, 0, &[]));
    fe.push_request(&encode::discard(3, 0, 8, false));
    w.settle(&mut dev);
    assert_eq!(
        fe.take_responses(),
        [
            (1, op::FLUSH_DISKCACHE, -2),
            (2, op::WRITE_BARRIER, -2),
            (3, op::DISCARD, -2)
        ]
    );
    assert!(w.target.submitted.is_empty());
}

#[test]
fn discard_frees_the_range_and_checks_it() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.target.cache.fill(0xAA);
    fe.push_request(&encode::discard(1, 8, 16, false));
    fe.push_request(&encode::discard(2, 250, 16, false));
    fe.push_request(&encode::discard(3, 0, 8, true));
    fe.push_request(&encode::discard(4, 0, 0, false));
    w.settle(&mut dev);
    assert_eq!(
        fe.take_responses(),
        [
            (2, op::DISCARD, -1),
            (3, op::DISCARD, -2),
            (4, op::DISCARD, 0),
            (1, op::DISCARD, 0)
        ]
    );
    assert_eq!(w.target.cache[8 * 512..24 * 512], [0; 8192]);
    assert_eq!(w.target.cache[24 * 512], 0xAA);
}

#[test]
fn read_only_devices_refuse_writes() {
    let mut w = World::new(256);
    let mut dev = device();
    w.toolstack("r");
    w.start(&mut dev);
    let rings = w.blkfront(1, None);
    w.watch(&mut dev);
    let fe = &rings[0].0;
    w.data_page(1000, false);
    w.target.cache[..4096].copy_from_slice(&pattern(3));
    fe.push_request(&write(1, 0, &[seg(1000, 0, 7)]));
    fe.push_request(&encode::direct(
        op::WRITE_BARRIER,
        2,
        0,
        0,
        &[seg(1000, 0, 7)],
    ));
    fe.push_request(&encode::discard(3, 0, 8, false));
    fe.push_request(&read(4, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(
        fe.take_responses(),
        [
            (1, op::WRITE, -1),
            (2, op::WRITE_BARRIER, -2),
            (3, op::DISCARD, -1),
            (4, op::READ, 0)
        ]
    );
    assert_eq!(w.target.cache[..4096], pattern(3)[..]);
    assert_eq!(w.page(1000), pattern(3));
    assert!(w
        .target
        .submitted
        .iter()
        .all(|s| matches!(s, Submitted::Read { .. })));
}

#[test]
fn target_errors_and_back_pressure() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.target.bad_sectors.push(40);
    w.target.queue_depth = 1;
    w.data_page(1000, false);
    for id in 0..6u64 {
        fe.push_request(&read(id, id * 8, &[seg(1000, 0, 7)]));
    }
    w.settle(&mut dev);
    let r = fe.take_responses();
    assert_eq!(
        r,
        [
            (0, op::READ, 0),
            (1, op::READ, 0),
            (2, op::READ, 0),
            (3, op::READ, 0),
            (4, op::READ, 0),
            (5, op::READ, -1)
        ]
    );
    assert_eq!(dev.in_flight(), 0);
}

#[test]
fn notifications_only_when_the_frontend_asks() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.data_page(1000, false);
    fe.push_request(&read(1, 0, &[seg(1000, 0, 0)]));
    w.settle(&mut dev);
    assert_eq!(w.xen.sent_notifications().len(), 1);
    // The frontend has not consumed (rsp_event still 1): no new event for the next one.
    fe.push_request(&read(2, 0, &[seg(1000, 0, 0)]));
    w.settle(&mut dev);
    assert_eq!(w.xen.sent_notifications().len(), 1);
    // After it consumes and re-arms, the next response notifies again.
    assert_eq!(fe.take_responses().len(), 2);
    fe.push_request(&read(3, 0, &[seg(1000, 0, 0)]));
    w.settle(&mut dev);
    assert_eq!(w.xen.sent_notifications().len(), 2);
    // The backend re-armed req_event after draining the ring.
    assert_eq!(fe.req_event(), 4);
}

#[test]
fn persistent_grants_are_mapped_once_bounded_and_unmapped_at_close() {
    let mut w = World::new(256);
    let mut dev = device_with(|c| c.max_persistent_grants = 2);
    w.toolstack("w");
    w.start(&mut dev);
    let rings = w.blkfront(1, None);
    w.store.set(&format!("{FE}/feature-persistent"), "1");
    w.watch(&mut dev);
    let fe = &rings[0].0;
    assert_eq!(dev.persistent_grants(), Some(0));
    let ring_frames = w.frames.in_use();
    // Pages 1000 and 1001 live in the frontend's pool (shared memory once mapped);
    // 1002 is over the limit and moves by grant copy.
    for g in [1000, 1001] {
        w.data_page(g, false);
        w.front.add(DOMID, GrantRef(g));
    }
    w.data_page(1002, false);
    w.front.write(DOMID, GrantRef(1000), 0, &pattern(1));
    w.front.write(DOMID, GrantRef(1001), 0, &pattern(2));
    w.fill(1002, 0, &pattern(3));
    fe.push_request(&write(
        1,
        0,
        &[seg(1000, 0, 7), seg(1001, 0, 7), seg(1002, 0, 7)],
    ));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(1, op::WRITE, 0)]);
    let mut expected = pattern(1);
    expected.extend(pattern(2));
    expected.extend(pattern(3));
    assert_eq!(w.target.cache[..3 * 4096], expected[..]);
    assert_eq!(dev.persistent_grants(), Some(2));
    assert_eq!(w.frames.in_use(), ring_frames + 2);
    // Reusing the pool maps nothing new; the read lands in the mapped pages.
    w.front.write(DOMID, GrantRef(1000), 0, &[0; 4096]);
    fe.push_request(&read(2, 4, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(2, op::READ, 0)]);
    assert_eq!(w.front.read(DOMID, GrantRef(1000)), expected[2048..6144]);
    assert_eq!(w.frames.in_use(), ring_frames + 2);
    // A grant the frontend never made still fails only its request.
    fe.push_request(&read(3, 0, &[seg(4242, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(3, op::READ, -1)]);
    // Closing unmaps the pool: the frontend can take its pages back.
    w.set_fe_state(6);
    w.watch(&mut dev);
    assert_eq!(w.frames.in_use(), 0);
    assert_eq!(
        w.xen.foreign_grant_flags(DOMID, GrantRef(1000)),
        gtf::PERMIT_ACCESS
    );
    assert_eq!(dev.leaked_frames(), 0);
}

#[test]
fn without_the_frontend_asking_no_grant_is_kept_mapped() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    let ring_frames = w.frames.in_use();
    w.data_page(1000, false);
    fe.push_request(&read(1, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(1, op::READ, 0)]);
    assert_eq!(dev.persistent_grants(), None);
    assert_eq!(w.frames.in_use(), ring_frames);
}

#[test]
fn events_are_routed_by_port_and_indirect_can_be_withheld() {
    let mut w = World::new(256);
    let mut dev = device_with(|c| c.limits.max_indirect_segments = 0);
    let fe = w.connected(&mut dev);
    assert_eq!(w.be("feature-max-indirect-segments"), None);
    let port = dev.ports()[0];
    assert!(dev.owns_port(port));
    w.data_page(1000, false);
    w.fill(1000, 0, &seg(1000, 0, 7).encode());
    fe.push_request(&encode::indirect(op::READ, 1, 0, 1, &[GrantRef(1000)]));
    fe.push_request(&read(2, 0, &[seg(1000, 0, 7)]));
    let other = keel_xen::evtchn::Port(port.0 + 100);
    let idle = with_env(&mut w, |env| dev.on_event(env, other));
    assert_eq!(idle.taken, 0, "not this device's channel");
    let p = with_env(&mut w, |env| dev.on_event(env, port));
    assert_eq!(p.taken, 2);
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(1, op::READ, -2), (2, op::READ, 0)]);
    assert_eq!(dev.stats().unsupported, 1);
}

/// Deterministic pseudo-random mixes of writes, flushes, barriers and reads against a
/// target that completes in changing orders: every request is answered once, and an
/// acknowledged flush or barrier means every write pushed before it is durable.
#[test]
fn random_mixes_keep_flush_and_barrier_promises() {
    for seed in 1..=12u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut w = World::new(4096);
        let mut dev = device_with(|c| c.limits.max_requests_per_poll = 4);
        let fe = w.connected(&mut dev);
        w.target.queue_depth = 3;
        let mut writes: Vec<(u64, u64, u8)> = Vec::new(); // (id, sector, byte)
        let mut fences: Vec<(u64, usize)> = Vec::new(); // (id, writes pushed before it)
        let mut answered = std::collections::BTreeSet::new();
        let mut id = 0u64;
        let mut outstanding = 0u32;
        for _ in 0..300 {
            let roll = next() % 10;
            if outstanding < fe.size() {
                id += 1;
                outstanding += 1;
                let gref = 10_000 + (id % 64) as u32;
                w.data_page(gref, false);
                match roll {
                    0..=4 => {
                        let sector = id * 8;
                        let byte = (next() % 250) as u8 + 1;
                        w.fill(gref, 0, &[byte; 4096]);
                        fe.push_request(&write(id, sector, &[seg(gref, 0, 7)]));
                        writes.push((id, sector, byte));
                    }
                    5 => {
                        fe.push_request(&flush(id));
                        fences.push((id, writes.len()));
                    }
                    6 => {
                        fe.push_request(&encode::direct(op::WRITE_BARRIER, id, 0, 0, &[]));
                        fences.push((id, writes.len()));
                    }
                    _ => fe.push_request(&read(id, (next() % 500) * 8, &[seg(gref, 0, 7)])),
                }
            }
            w.target.order = match next() % 3 {
                0 => Order::Fifo,
                1 => Order::Lifo,
                _ => Order::Stalled,
            };
            w.poll(&mut dev);
            for (rid, _, status) in fe.take_responses() {
                assert_eq!(status, 0, "seed {seed} id {rid}");
                assert!(answered.insert(rid), "seed {seed}: id {rid} answered twice");
                outstanding -= 1;
                if let Some((_, before)) = fences.iter().find(|(f, _)| *f == rid) {
                    for (wid, sector, byte) in &writes[..*before] {
                        let at = *sector as usize * 512;
                        assert!(
                            w.target.durable[at..at + 4096].iter().all(|b| b == byte),
                            "seed {seed}: write {wid} not durable at fence {rid}"
                        );
                    }
                }
            }
        }
        w.target.order = Order::Fifo;
        w.settle(&mut dev);
        for (rid, _, status) in fe.take_responses() {
            assert_eq!(status, 0);
            assert!(answered.insert(rid));
        }
        assert_eq!(
            answered.len() as u64,
            id,
            "seed {seed}: every request answered"
        );
        assert_eq!(dev.in_flight(), 0);
    }
}

#[test]
fn latency_is_the_time_from_the_ring_to_the_answer_summed_per_direction() {
    let mut w = World::new(256);
    let mut dev = device();
    let fe = w.connected(&mut dev);
    w.data_page(1000, false);
    w.data_page(1001, false);
    w.now_us = 1_000;
    // Taken at 1 ms, held by the disk, answered at 4.5 ms: 3.5 ms.
    w.target.order = Order::Stalled;
    fe.push_request(&write(1, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    assert!(fe.take_responses().is_empty());
    w.now_us = 4_500;
    w.target.order = Order::Fifo;
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(1, op::WRITE, 0)]);
    // A read taken at 10 ms and answered at 10.25 ms, one taken then and answered at
    // 12.25 ms: 0.25 + 2 ms.
    w.now_us = 10_000;
    w.target.order = Order::Stalled;
    fe.push_request(&read(2, 0, &[seg(1000, 0, 7)]));
    w.settle(&mut dev);
    w.now_us = 10_250;
    w.target.order = Order::Fifo;
    w.settle(&mut dev);
    w.target.order = Order::Stalled;
    fe.push_request(&read(3, 8, &[seg(1001, 0, 7)]));
    w.settle(&mut dev);
    w.now_us = 12_250;
    w.target.order = Order::Fifo;
    w.settle(&mut dev);
    assert_eq!(fe.take_responses(), [(2, op::READ, 0), (3, op::READ, 0)]);
    // A refused request (past the end) and a flush add no latency.
    fe.push_request(&write(4, 1 << 20, &[seg(1000, 0, 7)]));
    fe.push_request(&flush(5));
    w.now_us = 20_000;
    w.settle(&mut dev);
    let stats = dev.stats();
    assert_eq!((stats.writes, stats.write_latency_us), (1, 3_500));
    assert_eq!((stats.reads, stats.read_latency_us), (2, 2_250));
    assert_eq!((stats.errors, stats.flushes), (1, 1));
}
