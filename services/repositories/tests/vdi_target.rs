//! A VDI as blkback's `BlockTarget` over a real SR on the power-cut disk: many requests in
//! flight, thin reads, FUA writes and flushes durable across a power cut, discard returning
//! space, refusals answered, and two devices on one SR kept apart.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use keel_blkback::target::{BlockRequest, BlockTarget, Busy, Completion, IoError};
use keel_block::fakes::{CacheLoss, CompletionOrder, MemDisk, MemDiskConfig};
use keel_repositories::{provision, Repositories, Repository, VdiTarget};
use keel_storage::{Sr, Uuid, MAX_QUEUED_IO};

const MIB: u64 = 1 << 20;
const SR_UUID: Uuid = Uuid([0x33; 16]);

type Shared = Rc<RefCell<Repositories<MemDisk>>>;

/// A 64 MiB disk that completes newest first, an SR of 1 MiB extents on it, and a 16 MiB
/// VDI.
fn setup() -> (Shared, MemDisk, Uuid) {
    let mut config = MemDiskConfig::new(512, 64 * MIB / 512);
    config.completion_order = CompletionOrder::Lifo;
    config.queue_depth = 16;
    let disk = MemDisk::new(config);
    let (mut sr, _) = provision(disk.clone(), None, SR_UUID, MIB).unwrap();
    let vdi = sr.create_vdi("guest", 16 * MIB).unwrap();
    let shared = Rc::new(RefCell::new(Repositories {
        srs: vec![Repository {
            sr,
            device: "mem".into(),
            bus: "nvme".into(),
        }],
    }));
    (shared, disk, vdi)
}

fn run(target: &mut VdiTarget<MemDisk>) -> BTreeMap<u64, Completion> {
    let mut done = BTreeMap::new();
    for _ in 0..100_000 {
        while let Some(completion) = target.poll() {
            assert!(
                done.insert(completion.tag, completion).is_none(),
                "answered twice"
            );
        }
        if target.in_flight() == 0 {
            return done;
        }
    }
    panic!("requests never completed");
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}

#[test]
fn geometry_describes_the_vdi_and_the_sr() {
    let (shared, _, vdi) = setup();
    let target = VdiTarget::new(shared.clone(), SR_UUID, vdi, 1);
    let geometry = target.geometry();
    assert_eq!(geometry.sectors, 16 * MIB / 512);
    assert_eq!(geometry.physical_sector_size, 512);
    assert!(!geometry.read_only && geometry.flush && !geometry.cdrom);
    let discard = geometry.discard.unwrap();
    assert_eq!(discard.granularity as u64, MIB);
    assert!(!discard.secure);
    let snap = shared
        .borrow_mut()
        .sr_mut(SR_UUID)
        .unwrap()
        .snapshot_vdi(vdi)
        .unwrap();
    assert!(
        VdiTarget::new(shared.clone(), SR_UUID, snap, 2)
            .geometry()
            .read_only
    );
    let gone = VdiTarget::new(shared, SR_UUID, Uuid([7; 16]), 3).geometry();
    assert_eq!((gone.sectors, gone.read_only), (0, true));
}

#[test]
fn many_requests_in_flight_read_back_what_was_written_and_zeros_elsewhere() {
    let (shared, _, vdi) = setup();
    let mut target = VdiTarget::new(shared.clone(), SR_UUID, vdi, 1);
    // 32 writes of 44 KiB (11 pages, blkfront's largest direct request) spread over the disk.
    for i in 0..32u64 {
        target
            .submit(
                i,
                BlockRequest::Write {
                    sector: i * 1000,
                    buf: data(i as u8, 44 * 1024),
                    fua: false,
                },
            )
            .unwrap();
    }
    assert!(shared.borrow().io_in_flight() > 1);
    let done = run(&mut target);
    assert_eq!(done.len(), 32);
    assert!(done.values().all(|c| c.result == Ok(())));
    for i in 0..32u64 {
        target
            .submit(
                100 + i,
                BlockRequest::Read {
                    sector: i * 1000,
                    buf: vec![0xee; 44 * 1024],
                },
            )
            .unwrap();
    }
    // Never written: zeros.
    target
        .submit(
            999,
            BlockRequest::Read {
                sector: 31 * 1000 + 200,
                buf: vec![0xee; 4096],
            },
        )
        .unwrap();
    let done = run(&mut target);
    for i in 0..32u64 {
        let c = &done[&(100 + i)];
        assert_eq!(c.result, Ok(()));
        assert_eq!(c.buf, data(i as u8, 44 * 1024), "read {i}");
    }
    assert_eq!(done[&999].buf, vec![0; 4096]);
}

#[test]
fn fua_writes_and_flushes_are_answered_only_once_durable() {
    let (shared, disk, vdi) = setup();
    let mut target = VdiTarget::new(shared.clone(), SR_UUID, vdi, 1);
    target
        .submit(
            1,
            BlockRequest::Write {
                sector: 8,
                buf: data(1, 4096),
                fua: true,
            },
        )
        .unwrap();
    target
        .submit(
            2,
            BlockRequest::Write {
                sector: 4096,
                buf: data(2, 4096),
                fua: false,
            },
        )
        .unwrap();
    let done = run(&mut target);
    assert_eq!(done[&1].result, Ok(()));
    assert_eq!(
        done[&1].buf,
        data(1, 4096),
        "the FUA write's buffer comes back"
    );
    target.submit(3, BlockRequest::Flush).unwrap();
    let done = run(&mut target);
    assert_eq!(done[&3].result, Ok(()));
    assert!(done[&3].buf.is_empty());
    // Power cut, everything cached lost: both are there.
    drop(target);
    drop(shared);
    disk.power_cycle(CacheLoss::DropAll);
    let mut sr = Sr::attach(disk).unwrap();
    let mut back = vec![0; 4096];
    sr.read(vdi, 8 * 512, &mut back).unwrap();
    assert_eq!(back, data(1, 4096));
    sr.read(vdi, 4096 * 512, &mut back).unwrap();
    assert_eq!(back, data(2, 4096));
}

#[test]
fn a_fua_write_is_durable_without_any_other_flush() {
    let (shared, disk, vdi) = setup();
    let mut target = VdiTarget::new(shared.clone(), SR_UUID, vdi, 1);
    target
        .submit(
            1,
            BlockRequest::Write {
                sector: 3 * 2048,
                buf: data(9, 8192),
                fua: true,
            },
        )
        .unwrap();
    let done = run(&mut target);
    assert_eq!(done[&1].result, Ok(()));
    drop(target);
    drop(shared);
    disk.power_cycle(CacheLoss::DropAll);
    let mut sr = Sr::attach(disk).unwrap();
    let mut back = vec![0; 8192];
    sr.read(vdi, 3 * MIB, &mut back).unwrap();
    assert_eq!(back, data(9, 8192));
}

#[test]
fn discard_returns_thin_space_and_secure_discard_is_not_supported() {
    let (shared, _, vdi) = setup();
    let mut target = VdiTarget::new(shared.clone(), SR_UUID, vdi, 1);
    target
        .submit(
            1,
            BlockRequest::Write {
                sector: 0,
                buf: data(1, 4 * MIB as usize),
                fua: false,
            },
        )
        .unwrap();
    run(&mut target);
    let used = |shared: &Shared| shared.borrow().sr(SR_UUID).unwrap().vdi_info(vdi).unwrap();
    assert_eq!(used(&shared).physical_utilisation, 4 * MIB);
    target
        .submit(
            2,
            BlockRequest::Discard {
                sector: 2048,
                sectors: 2 * 2048,
                secure: false,
            },
        )
        .unwrap();
    target
        .submit(
            3,
            BlockRequest::Discard {
                sector: 0,
                sectors: 8,
                secure: true,
            },
        )
        .unwrap();
    let done = run(&mut target);
    assert_eq!(done[&2].result, Ok(()));
    assert_eq!(done[&3].result, Err(IoError::NotSupported));
    assert_eq!(used(&shared).physical_utilisation, 2 * MIB);
    target
        .submit(
            4,
            BlockRequest::Read {
                sector: 2048,
                buf: vec![1; 4096],
            },
        )
        .unwrap();
    assert_eq!(run(&mut target)[&4].buf, vec![0; 4096]);
}

#[test]
fn requests_outside_the_vdi_or_on_a_snapshot_are_answered_with_an_error() {
    let (shared, _, vdi) = setup();
    let mut target = VdiTarget::new(shared.clone(), SR_UUID, vdi, 1);
    target
        .submit(
            1,
            BlockRequest::Read {
                sector: 16 * MIB / 512,
                buf: vec![0; 512],
            },
        )
        .unwrap();
    target
        .submit(
            2,
            BlockRequest::Write {
                sector: u64::MAX / 2,
                buf: vec![0; 512],
                fua: false,
            },
        )
        .unwrap();
    let snap = shared
        .borrow_mut()
        .sr_mut(SR_UUID)
        .unwrap()
        .snapshot_vdi(vdi)
        .unwrap();
    let mut on_snapshot = VdiTarget::new(shared.clone(), SR_UUID, snap, 2);
    on_snapshot
        .submit(
            3,
            BlockRequest::Write {
                sector: 0,
                buf: vec![5; 512],
                fua: false,
            },
        )
        .unwrap();
    let done = run(&mut target);
    assert_eq!(done[&1].result, Err(IoError::Failed));
    assert_eq!(done[&1].buf.len(), 512, "the buffer comes back");
    assert_eq!(done[&2].result, Err(IoError::Failed));
    assert_eq!(run(&mut on_snapshot)[&3].result, Err(IoError::Failed));
}

#[test]
fn two_devices_on_one_sr_each_get_only_their_own_answers() {
    let (shared, _, vdi) = setup();
    let other = shared
        .borrow_mut()
        .sr_mut(SR_UUID)
        .unwrap()
        .create_vdi("other", 4 * MIB)
        .unwrap();
    let mut a = VdiTarget::new(shared.clone(), SR_UUID, vdi, 1);
    let mut b = VdiTarget::new(shared.clone(), SR_UUID, other, 2);
    // The same VDI served twice (a read-only attach beside a read-write one) too.
    let mut c = VdiTarget::new(shared.clone(), SR_UUID, vdi, 3);
    for tag in 0..8 {
        let write = |seed| BlockRequest::Write {
            sector: tag * 8,
            buf: data(seed, 4096),
            fua: false,
        };
        a.submit(tag, write(1)).unwrap();
        b.submit(tag, write(2)).unwrap();
        c.submit(
            tag,
            BlockRequest::Read {
                sector: 4096 + tag * 8,
                buf: vec![0; 4096],
            },
        )
        .unwrap();
    }
    // Poll them in turns: each takes only its own.
    let mut done = [BTreeMap::new(), BTreeMap::new(), BTreeMap::new()];
    for _ in 0..10_000 {
        for (i, target) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
            while let Some(completion) = target.poll() {
                assert!(done[i].insert(completion.tag, completion).is_none());
            }
        }
        if a.in_flight() + b.in_flight() + c.in_flight() == 0 {
            break;
        }
    }
    for (i, answers) in done.iter().enumerate() {
        assert_eq!(answers.len(), 8, "device {i}");
        assert!(answers.values().all(|c| c.result == Ok(())));
    }
    assert!(done[2].values().all(|c| c.buf == vec![0; 4096]));
}

#[test]
fn a_full_queue_hands_the_request_back_untouched() {
    let (shared, _, vdi) = setup();
    let mut target = VdiTarget::new(shared, SR_UUID, vdi, 1);
    // Writes into one unallocated extent wait for each other: the queue fills.
    for tag in 0..MAX_QUEUED_IO as u64 {
        target
            .submit(
                tag,
                BlockRequest::Write {
                    sector: 0,
                    buf: vec![1; 512],
                    fua: false,
                },
            )
            .unwrap();
    }
    let request = BlockRequest::Write {
        sector: 0,
        buf: vec![2; 512],
        fua: true,
    };
    let Busy(back) = target
        .submit(9999, request)
        .expect_err("the SR's queue is full");
    assert_eq!(
        back,
        BlockRequest::Write {
            sector: 0,
            buf: vec![2; 512],
            fua: true,
        }
    );
    assert_eq!(run(&mut target).len(), MAX_QUEUED_IO);
}
