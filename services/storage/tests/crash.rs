//! Crash injection: every operation is run with the power cut after each of its device
//! mutations (writes, flushes) in turn, under three models of what the volatile cache loses.
//! After each cut the SR is re-attached and must pass the consistency check (checksums,
//! reference counts recomputed from all maps, no extent used twice), show either the state
//! before the operation or the state after it (never a mix, and never less than what was
//! acknowledged), and keep working.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_block::fakes::{CacheLoss, MemDisk};
use keel_storage::{Sr, SrError, Uuid, VdiInfo};

/// VDIs made by the setup: a writable disk with data, a snapshot of it, a clone of the
/// snapshot with its own writes, and a VDI whose extents were all written in place.
struct Fixture {
    base: Uuid,
    snap: Uuid,
    clone: Uuid,
    solo: Uuid,
}

fn setup(sr: &mut Sr<MemDisk>) -> Fixture {
    let base = sr.create_vdi("base", 40 * 1024).unwrap();
    sr.write(base, 0, &pattern(1, 24 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(base).unwrap();
    sr.write(base, 4096, &pattern(2, 4096)).unwrap();
    let clone = sr.clone_vdi(snap, "clone").unwrap();
    sr.write(clone, 8192, &pattern(3, 2048)).unwrap();
    let solo = sr.create_vdi("solo", 16 * 1024).unwrap();
    sr.write(solo, 0, &pattern(4, 16 * 1024)).unwrap();
    sr.flush().unwrap();
    // Two more commits so the solo extents are referenced by no older root either: later
    // writes to them go in place.
    sr.resize_vdi(base, 44 * 1024).unwrap();
    sr.resize_vdi(base, 40 * 1024).unwrap();
    Fixture {
        base,
        snap,
        clone,
        solo,
    }
}

fn fresh() -> (Sr<MemDisk>, MemDisk, Fixture) {
    let (mut sr, disk) = mem_sr();
    let fixture = setup(&mut sr);
    (sr, disk, fixture)
}

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// The operation is all or nothing.
    Atomic,
    /// Data overwritten in place may be torn at sector granularity if not acknowledged.
    SectorAtomic,
}

fn infos(observed: &Observed) -> Vec<VdiInfo> {
    observed.iter().map(|(info, _)| info.clone()).collect()
}

fn assert_sector_mix(now: &Observed, before: &Observed, after: &Observed, what: &str) {
    let now_infos = infos(now);
    assert!(
        now_infos == infos(before) || now_infos == infos(after),
        "{what}: VDI set is neither before nor after"
    );
    for (info, data) in now {
        let old = before
            .iter()
            .find(|(i, _)| i.uuid == info.uuid)
            .map(|(_, d)| d);
        let new = after
            .iter()
            .find(|(i, _)| i.uuid == info.uuid)
            .map(|(_, d)| d);
        for (index, sector) in data.chunks(512).enumerate() {
            let matches = |other: Option<&Vec<u8>>| {
                other.and_then(|d| d.chunks(512).nth(index)) == Some(sector)
            };
            assert!(
                matches(old) || matches(new),
                "{what}: sector {index} of {} is garbage",
                info.uuid
            );
        }
    }
}

/// After recovery the SR must accept new work and keep it across another attach.
fn still_works(sr: Sr<MemDisk>, disk: &MemDisk, what: &str) {
    let mut sr = sr;
    let fresh = sr.create_vdi("after-crash", 12 * 1024).expect(what);
    sr.write(fresh, 0, &pattern(77, 12 * 1024)).expect(what);
    for info in sr.list_vdis() {
        if !info.read_only && info.uuid != fresh {
            sr.write(info.uuid, 0, &pattern(78, 1024)).expect(what);
        }
    }
    sr.flush().expect(what);
    sr.check()
        .unwrap_or_else(|e| panic!("{what}: check after new work: {e:?}"));
    drop(sr);
    disk.power_cycle(CacheLoss::DropAll);
    let mut sr = Sr::attach(disk.clone()).expect(what);
    sr.check()
        .unwrap_or_else(|e| panic!("{what}: check after second attach: {e:?}"));
    assert_eq!(read_all(&mut sr, fresh), pattern(77, 12 * 1024), "{what}");
}

type Op<'a> = &'a dyn Fn(&mut Sr<MemDisk>, &Fixture) -> Result<(), SrError>;

fn crash_matrix(name: &str, expect: Expect, op: Op<'_>) {
    crash_matrix_after(name, expect, &|_, _| Ok(()), op)
}

/// Like `crash_matrix`, with `prepare` run (uncut) on the fixture before the operation.
fn crash_matrix_after(name: &str, expect: Expect, prepare: Op<'_>, op: Op<'_>) {
    let fresh = || {
        let (mut sr, disk, fixture) = fresh();
        prepare(&mut sr, &fixture).unwrap_or_else(|e| panic!("{name}: prepare failed: {e:?}"));
        (sr, disk, fixture)
    };
    // Reference run: the states before and after, and how many mutations the operation makes.
    let (mut sr, disk, fixture) = fresh();
    let before = observe(&mut sr);
    let start = disk.stats().mutations;
    op(&mut sr, &fixture).unwrap_or_else(|e| panic!("{name}: reference run failed: {e:?}"));
    let total = disk.stats().mutations - start;
    let after = observe(&mut sr);
    assert!(total > 0, "{name}: the operation wrote nothing");
    assert_ne!(before, after, "{name}: the operation changed nothing");
    for k in 0..=total {
        for loss in [
            CacheLoss::DropAll,
            CacheLoss::KeepAll,
            CacheLoss::Random { seed: k * 7 + 1 },
        ] {
            let what = format!("{name}: cut after {k}/{total} mutations, {loss:?}");
            let (mut sr, disk, fixture) = fresh();
            disk.cut_power_after(k);
            let result = op(&mut sr, &fixture);
            if k < total {
                assert!(
                    result.is_err(),
                    "{what}: the operation did not notice the power cut"
                );
            } else {
                assert_eq!(result, Ok(()), "{what}");
            }
            drop(sr);
            disk.power_cycle(loss);
            let mut sr =
                Sr::attach(disk.clone()).unwrap_or_else(|e| panic!("{what}: attach failed: {e:?}"));
            sr.check()
                .unwrap_or_else(|e| panic!("{what}: check failed: {e:?}"));
            let now = observe(&mut sr);
            if result.is_ok() {
                assert!(now == after, "{what}: acknowledged operation lost");
            } else if expect == Expect::Atomic {
                assert!(
                    now == before || now == after,
                    "{what}: neither before nor after"
                );
            } else {
                assert_sector_mix(&now, &before, &after, &what);
            }
            still_works(sr, &disk, &what);
        }
    }
}

#[test]
fn crash_during_create() {
    crash_matrix("create", Expect::Atomic, &|sr, _| {
        sr.create_vdi("new", 32 * 1024).map(drop)
    });
}

#[test]
fn crash_during_copy_on_write_writes_and_flush() {
    // Only extents shared with the snapshot or unallocated: into part of a shared extent,
    // across two holes, and from a shared extent into a hole.
    crash_matrix("cow write+flush", Expect::Atomic, &|sr, f| {
        sr.write(f.base, 1024, &pattern(10, 3 * 1024))?;
        sr.write(f.base, 30 * 1024, &pattern(11, 4096))?;
        sr.write(f.base, 22 * 1024, &pattern(16, 4096))?;
        sr.write(f.clone, 0, &pattern(12, 512))?;
        sr.flush()
    });
}

#[test]
fn crash_while_both_sides_of_a_clone_break_sharing() {
    // Extent 1 of base was base's alone until the clone (the last commit). After base copies
    // it away the twin is its only in-memory user, yet the committed root still gives it to
    // base too: the twin must copy as well rather than overwrite what base's durable map
    // points at.
    fn twin(sr: &Sr<MemDisk>) -> Uuid {
        sr.list_vdis()
            .into_iter()
            .find(|v| v.name == "twin")
            .map(|v| v.uuid)
            .unwrap()
    }
    crash_matrix_after(
        "both sides of a clone",
        Expect::Atomic,
        &|sr, f| sr.clone_vdi(f.base, "twin").map(drop),
        &|sr, f| {
            sr.write(f.base, 4096, &pattern(20, 512))?;
            let twin = twin(sr);
            sr.write(twin, 4096, &pattern(21, 512))?;
            sr.flush()
        },
    );
}

#[test]
fn crash_during_in_place_writes_and_flush() {
    crash_matrix("in-place write+flush", Expect::SectorAtomic, &|sr, f| {
        sr.write(f.solo, 512, &pattern(13, 9 * 1024))?;
        // And a hole in the same flush.
        sr.write(f.base, 36 * 1024, &pattern(14, 1024))?;
        sr.flush()
    });
}

#[test]
fn crash_during_unflushed_write_then_snapshot() {
    crash_matrix("write+snapshot", Expect::Atomic, &|sr, f| {
        sr.write(f.base, 28 * 1024, &pattern(15, 2048))?;
        sr.snapshot_vdi(f.base).map(drop)
    });
}

#[test]
fn crash_during_snapshot() {
    crash_matrix("snapshot", Expect::Atomic, &|sr, f| {
        sr.snapshot_vdi(f.clone).map(drop)
    });
}

#[test]
fn crash_during_clone() {
    crash_matrix("clone", Expect::Atomic, &|sr, f| {
        sr.clone_vdi(f.base, "another").map(drop)
    });
}

#[test]
fn crash_during_destroy() {
    crash_matrix("destroy base", Expect::Atomic, &|sr, f| {
        sr.destroy_vdi(f.base)
    });
    crash_matrix("destroy snapshot", Expect::Atomic, &|sr, f| {
        sr.destroy_vdi(f.snap)
    });
}

#[test]
fn crash_during_resize() {
    crash_matrix("shrink", Expect::Atomic, &|sr, f| {
        sr.resize_vdi(f.base, 6 * 1024)
    });
    crash_matrix_after(
        "grow over a shared tail",
        Expect::Atomic,
        &|sr, f| sr.resize_vdi(f.clone, 22 * 1024 + 512),
        &|sr, f| sr.resize_vdi(f.clone, 64 * 1024),
    );
}

#[test]
fn crash_during_rename() {
    crash_matrix("rename", Expect::Atomic, &|sr, f| {
        sr.rename_vdi(f.base, "renamed")
    });
    // A snapshot, to a name long enough to change the catalog's length.
    crash_matrix("rename snapshot", Expect::Atomic, &|sr, f| {
        sr.rename_vdi(f.snap, &"s".repeat(255))
    });
    // Unflushed writes become durable with the rename's commit.
    crash_matrix("write+rename", Expect::Atomic, &|sr, f| {
        sr.write(f.clone, 12 * 1024, &pattern(17, 2048))?;
        sr.rename_vdi(f.clone, "clone, renamed")
    });
}

#[test]
fn crash_during_copy() {
    crash_matrix("copy", Expect::Atomic, &|sr, f| {
        sr.copy_vdi(f.clone, "copy").map(drop)
    });
}

#[test]
fn crash_during_format_leaves_a_blank_device_or_an_empty_sr() {
    let disk = mem_disk();
    let start = disk.stats().mutations;
    Sr::format(disk.clone(), options()).unwrap();
    let total = disk.stats().mutations - start;
    for k in 0..total {
        for loss in [
            CacheLoss::DropAll,
            CacheLoss::KeepAll,
            CacheLoss::Random { seed: k + 3 },
        ] {
            let disk = mem_disk();
            disk.cut_power_after(k);
            assert!(Sr::format(disk.clone(), options()).is_err());
            disk.power_cycle(loss);
            match Sr::attach(disk.clone()) {
                Ok(mut sr) => {
                    assert!(sr.list_vdis().is_empty());
                    sr.check().unwrap();
                    still_works(sr, &disk, "format");
                }
                Err(error) => assert_eq!(error, SrError::NotAnSr, "cut after {k}, {loss:?}"),
            }
        }
    }
}

/// The queued path under power cuts: writes on three VDIs (copy-on-write of shared extents,
/// into holes, in place) and two flushes, all submitted before anything completes, on a
/// device that finishes the newest request first. The power is cut after each of the run's
/// device mutations in turn; after re-attach every write a successful flush covered (those
/// submitted before it) is there, every other written sector is old or new, and nothing
/// else changed.
#[test]
fn crash_during_queued_writes_and_flushes_in_flight_together() {
    use keel_block::fakes::{CompletionOrder, MemDiskConfig};
    use keel_storage::{VdiCompletion, VdiIo};

    const FIRST_FLUSH: u64 = 100;
    const SECOND_FLUSH: u64 = 200;

    fn lifo_fresh() -> (Sr<MemDisk>, MemDisk, Fixture) {
        let mut config = MemDiskConfig::new(512, 2048);
        config.completion_order = CompletionOrder::Lifo;
        config.queue_depth = 8;
        let disk = MemDisk::new(config);
        let mut sr = Sr::format(disk.clone(), options()).unwrap();
        let fixture = setup(&mut sr);
        (sr, disk, fixture)
    }

    /// (phase, VDI, offset, data): phase 0 is covered by the first flush, 1 by the second.
    fn writes(f: &Fixture) -> Vec<(u64, Uuid, u64, Vec<u8>)> {
        vec![
            (0, f.base, 1024, pattern(10, 3 * 1024)),
            (0, f.solo, 512, pattern(11, 2048)),
            (0, f.base, 30 * 1024, pattern(12, 4096)),
            (0, f.clone, 0, pattern(13, 512)),
            (1, f.solo, 8 * 1024, pattern(14, 4096)),
            (1, f.base, 36 * 1024, pattern(15, 1024)),
            (1, f.clone, 12 * 1024, pattern(16, 2048)),
            (1, f.base, 16 * 1024, pattern(17, 2048)),
        ]
    }

    fn run(sr: &mut Sr<MemDisk>, f: &Fixture) -> Vec<VdiCompletion> {
        for (tag, (phase, vdi, offset, data)) in writes(f).into_iter().enumerate() {
            if phase == 1 && tag == 4 {
                sr.submit_io(f.base, FIRST_FLUSH, VdiIo::Flush).unwrap();
            }
            let io = VdiIo::Write {
                offset,
                buffer: data,
            };
            // After a power cut a copy-on-write may be refused at once (the commit that
            // would free extents fails): that is a failed request too.
            if let Err(refused) = sr.submit_io(vdi, tag as u64, io) {
                assert!(matches!(refused.error, SrError::Device(_)));
            }
        }
        sr.submit_io(f.base, SECOND_FLUSH, VdiIo::Flush).unwrap();
        assert!(
            sr.io_in_flight() > 2,
            "the requests must be in flight together"
        );
        let mut done = Vec::new();
        while sr.io_in_flight() > 0 {
            sr.poll_io();
            done.extend(std::iter::from_fn(|| sr.take_io_completion()));
        }
        done
    }

    let flush_ok = |done: &[VdiCompletion], tag: u64| {
        done.iter()
            .any(|c| c.tag == tag && c.kind == keel_storage::VdiIoKind::Flush && c.result.is_ok())
    };

    let (mut sr, disk, fixture) = lifo_fresh();
    let before = observe(&mut sr);
    let start = disk.stats().mutations;
    let done = run(&mut sr, &fixture);
    assert!(
        done.iter().all(|c| c.result.is_ok()),
        "reference run: {done:?}"
    );
    let total = disk.stats().mutations - start;
    let after = observe(&mut sr);
    assert_ne!(before, after);
    let names = |o: &Observed| -> Vec<(Uuid, String)> {
        o.iter().map(|(i, _)| (i.uuid, i.name.clone())).collect()
    };

    for k in 0..=total {
        for loss in [
            CacheLoss::DropAll,
            CacheLoss::KeepAll,
            CacheLoss::Random { seed: k * 5 + 3 },
        ] {
            let what = format!("queued: cut after {k}/{total} mutations, {loss:?}");
            let (mut sr, disk, fixture) = lifo_fresh();
            disk.cut_power_after(k);
            let done = run(&mut sr, &fixture);
            if k < total {
                assert!(
                    done.iter().any(|c| c.result.is_err()) || done.len() < 10,
                    "{what}: nothing noticed the power cut"
                );
            }
            // A flush acknowledges the writes submitted before it.
            let durable_phases = if flush_ok(&done, SECOND_FLUSH) {
                2
            } else if flush_ok(&done, FIRST_FLUSH) {
                1
            } else {
                0
            };
            drop(sr);
            disk.power_cycle(loss);
            let mut sr =
                Sr::attach(disk.clone()).unwrap_or_else(|e| panic!("{what}: attach: {e:?}"));
            sr.check()
                .unwrap_or_else(|e| panic!("{what}: check failed: {e:?}"));
            let now = observe(&mut sr);
            assert_eq!(names(&now), names(&before), "{what}: the VDI set changed");
            let writes = writes(&fixture);
            for ((info, data), (_, old)) in now.iter().zip(&before) {
                let new = &after.iter().find(|(i, _)| i.uuid == info.uuid).unwrap().1;
                for (index, sector) in data.chunks(512).enumerate() {
                    let at = index as u64 * 512;
                    let covering = writes.iter().find(|(_, vdi, offset, w)| {
                        *vdi == info.uuid && (*offset..*offset + w.len() as u64).contains(&at)
                    });
                    let old_sector = &old[index * 512..][..512];
                    let new_sector = &new[index * 512..][..512];
                    match covering {
                        None => assert_eq!(
                            sector, old_sector,
                            "{what}: sector {index} of {} changed unwritten",
                            info.name
                        ),
                        Some((phase, ..)) if *phase < durable_phases => assert_eq!(
                            sector, new_sector,
                            "{what}: acknowledged write to sector {index} of {} lost",
                            info.name
                        ),
                        Some(_) => assert!(
                            sector == old_sector || sector == new_sector,
                            "{what}: sector {index} of {} is garbage",
                            info.name
                        ),
                    }
                }
            }
            still_works(sr, &disk, &what);
        }
    }
}
