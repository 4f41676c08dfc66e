//! The queued data path (`submit_io` / `poll_io` / `take_io_completion`): many requests in
//! flight on several VDIs, completions in any order, thin semantics kept (holes read as
//! zeros, writes allocate, snapshots stay intact), flush as a barrier, discard returning
//! space, and requests refused with their buffers handed back.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use keel_block::fakes::{CacheLoss, CompletionOrder, MemDisk, MemDiskConfig};
use keel_storage::{Sr, SrError, Uuid, VdiCompletion, VdiIo, VdiIoKind, MAX_QUEUED_IO};

/// A 1 MiB disk that finishes the newest request first and queues at most `depth`.
fn lifo_disk(depth: u16) -> MemDisk {
    let mut config = MemDiskConfig::new(512, 2048);
    config.completion_order = CompletionOrder::Lifo;
    config.queue_depth = depth;
    MemDisk::new(config)
}

fn lifo_sr(depth: u16) -> (Sr<MemDisk>, MemDisk) {
    let disk = lifo_disk(depth);
    let sr = Sr::format(disk.clone(), options()).unwrap();
    (sr, disk)
}

/// Polls until nothing is in flight; returns the completions in the order they came.
fn run_all(sr: &mut Sr<MemDisk>) -> Vec<VdiCompletion> {
    let mut done = Vec::new();
    for _ in 0..100_000 {
        sr.poll_io();
        while let Some(completion) = sr.take_io_completion() {
            done.push(completion);
        }
        if sr.io_in_flight() == 0 {
            return done;
        }
    }
    panic!("the queue never drained");
}

fn write(offset: u64, data: Vec<u8>) -> VdiIo {
    VdiIo::Write {
        offset,
        buffer: data,
    }
}

#[test]
fn many_writes_and_reads_on_several_vdis_are_in_flight_at_once_and_complete_out_of_order() {
    let (mut sr, disk) = lifo_sr(8);
    let a = sr.create_vdi("a", 64 * 1024).unwrap();
    let b = sr.create_vdi("b", 64 * 1024).unwrap();
    // Some extents of `a` written and committed before: in-place targets, and a snapshot
    // whose contents must not change.
    sr.write(a, 0, &pattern(1, 16 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(a).unwrap();
    sr.write(a, 8 * 1024, &pattern(2, 4096)).unwrap();
    sr.flush().unwrap();
    let snap_before = read_all(&mut sr, snap);
    let mut model: BTreeMap<Uuid, Vec<u8>> = BTreeMap::new();
    model.insert(a, read_all(&mut sr, a));
    model.insert(b, read_all(&mut sr, b));

    // Disjoint writes: into holes, into extents shared with the snapshot, in place, across
    // extent boundaries, larger than one device request.
    let writes: Vec<(Uuid, u64, Vec<u8>)> = vec![
        (a, 512, pattern(10, 1024)),
        (a, 8 * 1024 + 512, pattern(11, 512)),
        (a, 20 * 1024 + 1024, pattern(12, 6 * 1024)),
        (a, 40 * 1024, pattern(13, 16 * 1024)),
        (b, 0, pattern(14, 512)),
        (b, 3 * 1024, pattern(15, 9 * 1024)),
        (b, 32 * 1024, pattern(16, 32 * 1024)),
    ];
    for (tag, (vdi, offset, data)) in writes.iter().enumerate() {
        sr.submit_io(*vdi, tag as u64, write(*offset, data.clone()))
            .unwrap();
        let bytes = model.get_mut(vdi).unwrap();
        bytes[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
    assert!(sr.io_in_flight() > 1, "requests must not run one at a time");
    assert!(
        sr.device_requests_in_flight() > 1,
        "the device queue must hold many requests"
    );
    // Reads of ranges no write touches go on meanwhile.
    sr.submit_io(
        b,
        100,
        VdiIo::Read {
            offset: 16 * 1024,
            buffer: vec![0xff; 4096],
        },
    )
    .unwrap();
    let done = run_all(&mut sr);
    assert_eq!(done.len(), writes.len() + 1);
    let tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    let mut sorted = tags.clone();
    sorted.sort_unstable();
    assert_ne!(
        tags, sorted,
        "a LIFO device completes out of order: {tags:?}"
    );
    for completion in &done {
        assert_eq!(completion.result, Ok(()), "tag {}", completion.tag);
        match completion.kind {
            VdiIoKind::Read => assert_eq!(completion.buffer.as_deref(), Some(&[0u8; 4096][..])),
            kind => assert_eq!(kind, VdiIoKind::Write),
        }
    }
    for (vdi, bytes) in &model {
        assert_eq!(&read_all(&mut sr, *vdi), bytes);
    }
    assert_eq!(read_all(&mut sr, snap), snap_before, "the snapshot changed");
    sr.check().unwrap();
    // Durable after a queued flush.
    sr.submit_io(a, 200, VdiIo::Flush).unwrap();
    let flushed = run_all(&mut sr);
    assert_eq!(flushed.len(), 1);
    assert_eq!(flushed[0].result, Ok(()));
    drop(sr);
    disk.power_cycle(CacheLoss::DropAll);
    let mut sr = Sr::attach(disk).unwrap();
    for (vdi, bytes) in &model {
        assert_eq!(&read_all(&mut sr, *vdi), bytes);
    }
}

#[test]
fn writes_into_one_unallocated_extent_in_flight_together_all_land() {
    // Each needs the extent copied-on-write; a later one must build on the earlier one's
    // fresh extent, not on the hole, or the earlier write is lost.
    for order in [CompletionOrder::Fifo, CompletionOrder::Lifo] {
        let mut config = MemDiskConfig::new(512, 2048);
        config.completion_order = order;
        let mut sr = Sr::format(MemDisk::new(config), options()).unwrap();
        let vdi = sr.create_vdi("v", 8 * 1024).unwrap();
        let mut expect = vec![0u8; 8 * 1024];
        for sector in 0..8u64 {
            let data = pattern(sector as u8 + 1, 512);
            expect[sector as usize * 512..][..512].copy_from_slice(&data);
            sr.submit_io(vdi, sector, write(sector * 512, data))
                .unwrap();
        }
        let done = run_all(&mut sr);
        assert!(done.iter().all(|c| c.result.is_ok()), "{order:?}");
        assert_eq!(read_all(&mut sr, vdi), expect, "{order:?}");
        assert_eq!(sr.physical_utilisation(), EXTENT, "{order:?}");
        sr.check().unwrap();
    }
}

#[test]
fn a_queued_flush_waits_for_the_writes_submitted_before_it() {
    let (mut sr, disk) = lifo_sr(32);
    let vdi = sr.create_vdi("v", 32 * 1024).unwrap();
    for i in 0..6u64 {
        sr.submit_io(vdi, i, write(i * 4096, pattern(i as u8 + 20, 4096)))
            .unwrap();
    }
    sr.submit_io(vdi, 99, VdiIo::Flush).unwrap();
    // Submitted after the flush: not covered by it.
    sr.submit_io(vdi, 7, write(7 * 4096, pattern(40, 4096)))
        .unwrap();
    let done = run_all(&mut sr);
    let flush_at = done.iter().position(|c| c.tag == 99).unwrap();
    for i in 0..6 {
        let at = done.iter().position(|c| c.tag == i).unwrap();
        assert!(at < flush_at, "write {i} completed after the flush");
    }
    assert!(done.iter().all(|c| c.result.is_ok()));
    drop(sr);
    disk.power_cycle(CacheLoss::DropAll);
    let mut sr = Sr::attach(disk).unwrap();
    let back = read_all(&mut sr, vdi);
    for i in 0..6usize {
        assert_eq!(back[i * 4096..][..4096], pattern(i as u8 + 20, 4096)[..]);
    }
}

#[test]
fn discard_unmaps_whole_extents_and_returns_their_space_but_snapshots_keep_theirs() {
    let (mut sr, _) = lifo_sr(32);
    let vdi = sr.create_vdi("v", 32 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(1, 32 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    let keep = read_all(&mut sr, snap);
    sr.write(vdi, 0, &pattern(2, 16 * 1024)).unwrap();
    sr.flush().unwrap();
    assert_eq!(sr.vdi_info(vdi).unwrap().physical_utilisation, 8 * EXTENT);
    let used = sr.physical_utilisation();
    // Extents 0..4 are the VDI's own (written after the snapshot); 4..8 are shared. The
    // range starts and ends mid-extent: those partial extents keep their data.
    sr.submit_io(
        vdi,
        1,
        VdiIo::Discard {
            offset: 512,
            len: 6 * EXTENT,
        },
    )
    .unwrap();
    sr.submit_io(vdi, 2, VdiIo::Flush).unwrap();
    let done = run_all(&mut sr);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert_eq!(sr.vdi_info(vdi).unwrap().physical_utilisation, 3 * EXTENT);
    // Extents 1..4 were the VDI's alone: freed. 4..6 are still the snapshot's.
    assert_eq!(sr.physical_utilisation(), used - 3 * EXTENT);
    let back = read_all(&mut sr, vdi);
    let e = EXTENT as usize;
    assert_eq!(back[..e], pattern(2, 16 * 1024)[..e]);
    assert!(back[e..6 * e].iter().all(|&b| b == 0));
    assert_eq!(back[6 * e..], pattern(1, 32 * 1024)[6 * e..]);
    assert_eq!(read_all(&mut sr, snap), keep);
    sr.check().unwrap();
}

#[test]
fn bad_requests_are_refused_with_their_buffers() {
    let (mut sr, _) = lifo_sr(32);
    let vdi = sr.create_vdi("v", 8 * 1024).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    let refused = sr.submit_io(snap, 1, write(0, vec![7; 512])).unwrap_err();
    assert_eq!(refused.error, SrError::ReadOnly(snap));
    assert_eq!(refused.io, write(0, vec![7; 512]));
    let refused = sr
        .submit_io(vdi, 1, write(8 * 1024, vec![7; 512]))
        .unwrap_err();
    assert!(matches!(refused.error, SrError::OutOfRange { .. }));
    let refused = sr
        .submit_io(
            vdi,
            1,
            VdiIo::Read {
                offset: 100,
                buffer: vec![0; 512],
            },
        )
        .unwrap_err();
    assert!(matches!(refused.error, SrError::Unaligned { .. }));
    let refused = sr
        .submit_io(
            Uuid([9; 16]),
            1,
            VdiIo::Discard {
                offset: 0,
                len: 512,
            },
        )
        .unwrap_err();
    assert_eq!(refused.error, SrError::VdiNotFound(Uuid([9; 16])));
    assert_eq!(sr.io_in_flight(), 0);
}

#[test]
fn a_full_queue_refuses_more_until_completions_are_taken() {
    let (mut sr, _) = lifo_sr(4);
    let vdi = sr.create_vdi("v", 64 * 1024).unwrap();
    // Reads of a hole complete at once; writes into one hole extent wait for each other.
    let mut accepted = 0;
    let refused = loop {
        match sr.submit_io(vdi, accepted, write(0, vec![1; 512])) {
            Ok(()) => accepted += 1,
            Err(refused) => break refused,
        }
        assert!(accepted <= MAX_QUEUED_IO as u64);
    };
    assert_eq!(accepted, MAX_QUEUED_IO as u64);
    assert_eq!(refused.error, SrError::QueueFull);
    assert_eq!(refused.io, write(0, vec![1; 512]));
    let done = run_all(&mut sr);
    assert_eq!(done.len(), MAX_QUEUED_IO);
    sr.submit_io(vdi, 0, write(0, vec![1; 512])).unwrap();
}

#[test]
fn device_failures_fail_the_request_and_leave_the_sr_consistent() {
    let (mut sr, disk) = lifo_sr(32);
    let vdi = sr.create_vdi("v", 32 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(1, 32 * 1024)).unwrap();
    sr.flush().unwrap();
    let before = read_all(&mut sr, vdi);
    let snap = sr.snapshot_vdi(vdi).unwrap();
    // Copy-on-write of extent 2: the write of the fresh extent's data fails.
    disk.fail_write(0, 0);
    sr.submit_io(vdi, 1, write(2 * EXTENT, pattern(5, 512)))
        .unwrap();
    let done = run_all(&mut sr);
    assert!(matches!(done[0].result, Err(SrError::Device(_))));
    // The failed copy-on-write mapped nothing and freed its extent.
    assert_eq!(read_all(&mut sr, vdi), before);
    assert_eq!(read_all(&mut sr, snap), before);
    sr.check().unwrap();
    // A failed read fails only its request.
    disk.fail_read(0);
    sr.submit_io(
        vdi,
        2,
        VdiIo::Read {
            offset: 0,
            buffer: vec![0; 512],
        },
    )
    .unwrap();
    let done = run_all(&mut sr);
    assert!(matches!(done[0].result, Err(SrError::Device(_))));
    assert!(done[0].buffer.is_some(), "the buffer comes back");
    assert_eq!(read_all(&mut sr, vdi), before);
}

#[test]
fn requests_of_several_users_are_told_apart_by_vdi() {
    let (mut sr, _) = lifo_sr(32);
    let a = sr.create_vdi("a", 8 * 1024).unwrap();
    let b = sr.create_vdi("b", 8 * 1024).unwrap();
    sr.submit_io(a, 1, write(0, pattern(1, 512))).unwrap();
    sr.submit_io(b, 1, write(0, pattern(2, 512))).unwrap();
    sr.submit_io(a, 2, write(512, pattern(3, 512))).unwrap();
    while sr.io_in_flight() > 0 {
        sr.poll_io();
    }
    let mut of_b = Vec::new();
    while let Some(c) = sr.take_io_completion_of(b) {
        of_b.push((c.vdi, c.tag));
    }
    assert_eq!(of_b, vec![(b, 1)]);
    let mut of_a: Vec<u64> = std::iter::from_fn(|| sr.take_io_completion_of(a))
        .map(|c| c.tag)
        .collect();
    of_a.sort_unstable();
    assert_eq!(of_a, vec![1, 2]);
    assert!(sr.take_io_completion().is_none());
}

#[test]
fn metadata_operations_wait_for_queued_writes_so_a_snapshot_sees_them_whole() {
    let (mut sr, _) = lifo_sr(2);
    let vdi = sr.create_vdi("v", 32 * 1024).unwrap();
    for i in 0..8u64 {
        sr.submit_io(vdi, i, write(i * 4096, pattern(i as u8 + 1, 4096)))
            .unwrap();
    }
    assert!(sr.io_in_flight() > 0);
    let snap = sr.snapshot_vdi(vdi).unwrap();
    assert_eq!(sr.io_in_flight(), 0);
    let expect: Vec<u8> = (0..8u8).flat_map(|i| pattern(i + 1, 4096)).collect();
    assert_eq!(read_all(&mut sr, snap), expect);
    // The completions of the drained requests are kept for their user.
    assert_eq!(std::iter::from_fn(|| sr.take_io_completion()).count(), 8);
}

#[test]
fn a_flood_of_small_writes_into_holes_holds_a_bounded_number_of_copy_on_writes() {
    use keel_storage::MAX_COPY_ON_WRITES;
    let (mut sr, _) = lifo_sr(32);
    let vdi = sr.create_vdi("v", 200 * EXTENT).unwrap();
    let mut most = 0;
    for i in 0..150u64 {
        sr.submit_io(vdi, i, write(i * EXTENT + 512, pattern(i as u8, 512)))
            .unwrap();
        most = most.max(sr.copy_on_writes_in_flight());
    }
    assert_eq!(most, MAX_COPY_ON_WRITES);
    let mut polls = 0;
    while sr.io_in_flight() > 0 {
        sr.poll_io();
        most = most.max(sr.copy_on_writes_in_flight());
        polls += 1;
        assert!(polls < 100_000);
    }
    assert_eq!(most, MAX_COPY_ON_WRITES);
    let done: Vec<VdiCompletion> = std::iter::from_fn(|| sr.take_io_completion()).collect();
    assert_eq!(done.len(), 150);
    assert!(done.iter().all(|c| c.result.is_ok()));
    for i in 0..150u64 {
        let mut back = vec![0; 1024];
        sr.read(vdi, i * EXTENT, &mut back).unwrap();
        assert_eq!(back[..512], [0; 512]);
        assert_eq!(back[512..], pattern(i as u8, 512)[..]);
    }
    sr.check().unwrap();
}

#[test]
fn completions_not_taken_count_against_the_queue() {
    let (mut sr, _) = lifo_sr(32);
    let vdi = sr.create_vdi("v", 8 * 1024).unwrap();
    let read = || VdiIo::Read {
        offset: 0,
        buffer: vec![0; 512],
    };
    for tag in 0..MAX_QUEUED_IO as u64 {
        sr.submit_io(vdi, tag, read()).unwrap();
    }
    while sr.io_in_flight() > 0 {
        sr.poll_io();
    }
    // All completed, none taken: still full, so a user that never takes its completions
    // cannot make the SR hold more and more of them.
    assert_eq!(
        sr.submit_io(vdi, 0, read()).unwrap_err().error,
        SrError::QueueFull
    );
    assert!(sr.take_io_completion().is_some());
    sr.submit_io(vdi, 0, read()).unwrap();
}

#[test]
fn requests_larger_than_the_device_takes_are_cut_into_pieces_and_put_back_together() {
    // 4 KiB per device request (metadata blocks need that much): every 16 KiB extent takes
    // four, copy-on-writes too.
    let mut config = MemDiskConfig::new(512, 4096);
    config.completion_order = CompletionOrder::Lifo;
    config.max_transfer_sectors = 8;
    config.queue_depth = 5;
    let disk = MemDisk::new(config);
    let mut format = options();
    format.extent_size = 16 * 1024;
    let mut sr = Sr::format(disk.clone(), format).unwrap();
    let vdi = sr.create_vdi("v", 64 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(1, 12 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    let mut model = read_all(&mut sr, vdi);
    let snap_before = model.clone();
    for (tag, (offset, len)) in [
        (1536u64, 5120usize),
        (9 * 1024, 7 * 1024),
        (20 * 1024, 3072),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(tag as u8 + 7, len);
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
        sr.submit_io(vdi, tag as u64, write(offset, data)).unwrap();
    }
    sr.submit_io(
        vdi,
        9,
        VdiIo::Read {
            offset: 0,
            buffer: vec![0xaa; 24 * 1024],
        },
    )
    .unwrap();
    let done = run_all(&mut sr);
    assert!(done.iter().all(|c| c.result.is_ok()));
    let read = done.iter().find(|c| c.tag == 9).unwrap();
    // Issued before the writes completed: each sector old or new.
    for (i, sector) in read.buffer.as_ref().unwrap().chunks(512).enumerate() {
        assert!(
            sector == &snap_before[i * 512..][..512] || sector == &model[i * 512..][..512],
            "sector {i}"
        );
    }
    assert_eq!(read_all(&mut sr, vdi), model);
    assert_eq!(read_all(&mut sr, snap), snap_before);
    assert!(disk.stats().writes > 20, "pieces, not whole requests");
    sr.check().unwrap();
}

#[test]
fn synchronous_calls_go_through_while_queued_users_fill_the_queue() {
    let (mut sr, _) = lifo_sr(32);
    let vdi = sr.create_vdi("v", 64 * 1024).unwrap();
    for tag in 0..MAX_QUEUED_IO as u64 {
        sr.submit_io(vdi, tag, write(0, vec![1; 512])).unwrap();
    }
    // An import or a database save meanwhile: it waits for its own request only.
    sr.write(vdi, 8192, &pattern(3, 4096)).unwrap();
    let mut back = vec![0; 4096];
    sr.read(vdi, 8192, &mut back).unwrap();
    assert_eq!(back, pattern(3, 4096));
    // The queued users' completions are all kept for them.
    while sr.io_in_flight() > 0 {
        sr.poll_io();
    }
    assert_eq!(
        std::iter::from_fn(|| sr.take_io_completion()).count(),
        MAX_QUEUED_IO
    );
}
