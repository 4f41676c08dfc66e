//! Behaviour of the in-memory disk double and the synchronous helpers: the write-cache and
//! power-cut model, fault injection, queueing and request validation.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_block::fakes::{CacheLoss, CompletionOrder, MemDisk, MemDiskConfig};
use keel_block::{sync, BlockDevice, BlockError, Request, RequestKind};

fn disk() -> MemDisk {
    MemDisk::with_geometry(512, 64)
}

fn sector(byte: u8) -> Vec<u8> {
    vec![byte; 512]
}

fn read_sector(dev: &mut MemDisk, lba: u64) -> Vec<u8> {
    let mut out = vec![0; 512];
    sync::read(dev, lba, &mut out).unwrap();
    out
}

#[test]
fn unwritten_sectors_read_as_zero_and_writes_read_back() {
    let mut dev = disk();
    assert_eq!(read_sector(&mut dev, 5), sector(0));
    sync::write(&mut dev, 5, &sector(7)).unwrap();
    assert_eq!(read_sector(&mut dev, 5), sector(7));
}

#[test]
fn unflushed_writes_are_lost_on_power_cut_and_flushed_ones_survive() {
    let mut dev = disk();
    sync::write(&mut dev, 1, &sector(1)).unwrap();
    sync::flush(&mut dev).unwrap();
    sync::write(&mut dev, 1, &sector(2)).unwrap();
    sync::write(&mut dev, 2, &sector(3)).unwrap();
    dev.power_cycle(CacheLoss::DropAll);
    assert_eq!(read_sector(&mut dev, 1), sector(1));
    assert_eq!(read_sector(&mut dev, 2), sector(0));
}

#[test]
fn keep_first_tears_a_multi_sector_write_at_sector_granularity() {
    let mut dev = disk();
    let mut data = sector(4);
    data.extend(sector(5));
    data.extend(sector(6));
    sync::write(&mut dev, 10, &data).unwrap();
    dev.power_cycle(CacheLoss::KeepFirst(2));
    assert_eq!(read_sector(&mut dev, 10), sector(4));
    assert_eq!(read_sector(&mut dev, 11), sector(5));
    assert_eq!(read_sector(&mut dev, 12), sector(0));
}

#[test]
fn random_loss_keeps_a_seed_determined_subset() {
    let run = |seed| {
        let mut dev = disk();
        for lba in 0..32 {
            sync::write(&mut dev, lba, &sector(9)).unwrap();
        }
        dev.power_cycle(CacheLoss::Random { seed });
        (0..32)
            .map(|lba| read_sector(&mut dev, lba)[0] == 9)
            .collect::<Vec<_>>()
    };
    let kept = run(42);
    assert_eq!(kept, run(42));
    assert!(kept.iter().any(|&k| k) && kept.iter().any(|&k| !k));
}

#[test]
fn power_cut_after_k_mutations_fails_the_kth_and_everything_after() {
    let mut dev = disk();
    dev.cut_power_after(2);
    sync::write(&mut dev, 0, &sector(1)).unwrap();
    sync::flush(&mut dev).unwrap();
    assert_eq!(
        sync::write(&mut dev, 1, &sector(2)),
        Err(BlockError::DeviceGone)
    );
    let mut out = sector(0);
    assert_eq!(
        sync::read(&mut dev, 0, &mut out),
        Err(BlockError::DeviceGone)
    );
    assert!(!dev.is_powered());
    dev.power_cycle(CacheLoss::KeepAll);
    assert_eq!(read_sector(&mut dev, 0), sector(1));
    assert_eq!(read_sector(&mut dev, 1), sector(0));
    assert_eq!(dev.stats().mutations, 2);
}

#[test]
fn a_failed_write_can_apply_a_prefix_of_its_sectors() {
    let mut dev = disk();
    dev.fail_write(1, 1);
    sync::write(&mut dev, 0, &sector(1)).unwrap();
    let mut data = sector(2);
    data.extend(sector(3));
    assert_eq!(
        sync::write(&mut dev, 4, &data),
        Err(BlockError::Io {
            first_failed_lba: 5
        })
    );
    assert_eq!(read_sector(&mut dev, 4), sector(2));
    assert_eq!(read_sector(&mut dev, 5), sector(0));
    // Only that one write fails.
    sync::write(&mut dev, 5, &sector(3)).unwrap();
}

#[test]
fn failed_flush_makes_nothing_durable_and_failed_read_reports_io() {
    let mut dev = disk();
    dev.fail_flush(0);
    dev.fail_read(0);
    sync::write(&mut dev, 3, &sector(8)).unwrap();
    assert!(matches!(sync::flush(&mut dev), Err(BlockError::Io { .. })));
    let mut out = sector(0);
    assert!(matches!(
        sync::read(&mut dev, 3, &mut out),
        Err(BlockError::Io { .. })
    ));
    dev.power_cycle(CacheLoss::DropAll);
    assert_eq!(read_sector(&mut dev, 3), sector(0));
}

#[test]
fn without_a_write_cache_writes_are_durable_at_once() {
    let mut config = MemDiskConfig::new(4096, 8);
    config.volatile_write_cache = false;
    let mut dev = MemDisk::new(config);
    assert!(!dev.info().volatile_write_cache);
    sync::write(&mut dev, 1, &vec![5; 4096]).unwrap();
    dev.power_cycle(CacheLoss::DropAll);
    assert_eq!(dev.peek(4096, 2), vec![5, 5]);
}

#[test]
fn requests_are_validated_against_the_geometry() {
    let mut dev = disk();
    let out_of_range = dev
        .submit(Request::Write {
            lba: 63,
            buffer: vec![0; 1024],
        })
        .unwrap_err();
    assert!(matches!(
        out_of_range.error,
        BlockError::OutOfRange {
            lba: 63,
            sectors: 2,
            ..
        }
    ));
    // The buffer comes back to its owner.
    assert_eq!(
        out_of_range.request.into_buffer().map(|b| b.len()),
        Some(1024)
    );
    let misaligned = dev
        .submit(Request::Read {
            lba: 0,
            buffer: vec![0; 100],
        })
        .unwrap_err();
    assert!(matches!(
        misaligned.error,
        BlockError::Misaligned { len: 100, .. }
    ));
    let empty = dev
        .submit(Request::Read {
            lba: 0,
            buffer: vec![],
        })
        .unwrap_err();
    assert!(matches!(empty.error, BlockError::Misaligned { len: 0, .. }));
    let overflow = dev
        .submit(Request::Discard {
            lba: u64::MAX,
            sectors: 2,
        })
        .unwrap_err();
    assert!(matches!(overflow.error, BlockError::OutOfRange { .. }));
    let mut config = MemDiskConfig::new(512, 64);
    config.supports_discard = false;
    config.max_transfer_sectors = 2;
    let mut small = MemDisk::new(config);
    let discard = small
        .submit(Request::Discard { lba: 0, sectors: 1 })
        .unwrap_err();
    assert_eq!(discard.error, BlockError::Unsupported(RequestKind::Discard));
    let big = small
        .submit(Request::Write {
            lba: 0,
            buffer: vec![0; 1536],
        })
        .unwrap_err();
    assert_eq!(
        big.error,
        BlockError::TooLarge {
            sectors: 3,
            max_sectors: 2
        }
    );
}

#[test]
fn several_requests_in_flight_complete_out_of_order_and_the_queue_has_a_depth() {
    let mut config = MemDiskConfig::new(512, 64);
    config.queue_depth = 2;
    config.completion_order = CompletionOrder::Lifo;
    let mut dev = MemDisk::new(config);
    let a = dev
        .submit(Request::Write {
            lba: 0,
            buffer: sector(1),
        })
        .unwrap();
    let b = dev
        .submit(Request::Write {
            lba: 1,
            buffer: sector(2),
        })
        .unwrap();
    let busy = dev.submit(Request::Flush).unwrap_err();
    assert_eq!(busy.error, BlockError::Busy);
    assert_eq!(dev.in_flight(), 2);
    // The synchronous helpers refuse to run while others' requests are in flight.
    assert_eq!(sync::flush(&mut dev), Err(BlockError::NotIdle));
    let first = dev.poll_completion().unwrap();
    let second = dev.poll_completion().unwrap();
    assert_eq!((first.id, second.id), (b, a));
    assert_eq!(first.result, Ok(()));
    assert_eq!(first.buffer, Some(sector(2)));
    assert!(dev.poll_completion().is_none());
    assert_eq!(read_sector(&mut dev, 0), sector(1));
}

#[test]
fn discard_reads_back_zeros_and_clones_share_the_medium() {
    let mut dev = disk();
    let other = dev.clone();
    sync::write(&mut dev, 2, &sector(4)).unwrap();
    sync::discard(&mut dev, 2, 1).unwrap();
    assert_eq!(other.peek(2 * 512, 4), vec![0; 4]);
    other.poke(2 * 512, &[1, 2]);
    assert_eq!(dev.peek(2 * 512, 3), vec![1, 2, 0]);
    other.flip_bits(2 * 512, 0x80);
    assert_eq!(dev.peek(2 * 512, 1), vec![0x81]);
    assert_eq!(dev.stats().discards, 1);
}
