//! VDI operations on a healthy SR: data, holes, snapshots, clones, destroy, resize, copy,
//! space accounting, typed errors, persistence across attach, and a file-backed device.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::file_disk::{FileDisk, TempPath};
use common::*;
use keel_block::fakes::MemDisk;
use keel_storage::{FormatOptions, Space, Sr, SrError, Uuid};

#[test]
fn written_data_reads_back_and_holes_read_as_zeros() {
    let (mut sr, _) = mem_sr();
    let vdi = sr.create_vdi("disk", 64 * 1024).unwrap();
    assert_eq!(read_all(&mut sr, vdi), vec![0; 64 * 1024]);
    let data = pattern(1, 6 * 512);
    // Straddles the boundary between extents 0 and 1.
    sr.write(vdi, 3 * 1024, &data).unwrap();
    let mut back = vec![0; data.len()];
    sr.read(vdi, 3 * 1024, &mut back).unwrap();
    assert_eq!(back, data);
    let all = read_all(&mut sr, vdi);
    assert_eq!(&all[..3 * 1024], &vec![0; 3 * 1024][..]);
    assert_eq!(
        &all[3 * 1024 + data.len()..],
        &vec![0; all.len() - 3 * 1024 - data.len()][..]
    );
    sr.check().unwrap();
}

#[test]
fn physical_utilisation_grows_only_with_written_extents() {
    let (mut sr, _) = mem_sr();
    let vdi = sr.create_vdi("thin", 10 * 1024 * 1024).unwrap();
    assert_eq!(sr.physical_utilisation(), 0);
    assert_eq!(sr.vdi_info(vdi).unwrap().physical_utilisation, 0);
    assert_eq!(sr.virtual_allocation(), 10 * 1024 * 1024);
    sr.write(vdi, 5 * EXTENT, &pattern(2, 512)).unwrap();
    sr.write(vdi, 5 * EXTENT + 1024, &pattern(3, 512)).unwrap();
    assert_eq!(sr.physical_utilisation(), EXTENT);
    sr.write(vdi, 9 * 1024 * 1024, &pattern(4, 8192)).unwrap();
    assert_eq!(sr.physical_utilisation(), 3 * EXTENT);
    assert_eq!(sr.vdi_info(vdi).unwrap().physical_utilisation, 3 * EXTENT);
    assert!(sr.physical_size() > 200 * EXTENT && sr.physical_size() < 1024 * 1024);
}

#[test]
fn a_snapshot_keeps_its_contents_when_the_source_is_written() {
    let (mut sr, _) = mem_sr();
    let vdi = sr.create_vdi("base", 32 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(1, 32 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    let info = sr.vdi_info(snap).unwrap();
    assert!(info.read_only && info.is_snapshot);
    assert_eq!((info.snapshot_of, info.parent), (Some(vdi), Some(vdi)));
    assert_eq!(info.name, "base");
    // Sharing costs no data extents.
    assert_eq!(sr.physical_utilisation(), 8 * EXTENT);
    sr.write(vdi, 1024, &pattern(9, 2048)).unwrap();
    sr.flush().unwrap();
    assert_eq!(read_all(&mut sr, snap), pattern(1, 32 * 1024));
    let mut expected = pattern(1, 32 * 1024);
    expected[1024..3072].copy_from_slice(&pattern(9, 2048));
    assert_eq!(read_all(&mut sr, vdi), expected);
    assert_eq!(
        sr.physical_utilisation(),
        9 * EXTENT,
        "one extent copied on write"
    );
    assert_eq!(sr.write(snap, 0, &[0; 512]), Err(SrError::ReadOnly(snap)));
    assert_eq!(sr.resize_vdi(snap, 64 * 1024), Err(SrError::ReadOnly(snap)));
    sr.check().unwrap();
}

#[test]
fn clones_are_writable_and_independent_of_their_source() {
    let (mut sr, _) = mem_sr();
    let vdi = sr.create_vdi("golden", 16 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(5, 16 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    let clone = sr.clone_vdi(snap, "vm-disk").unwrap();
    let info = sr.vdi_info(clone).unwrap();
    assert!(!info.read_only && !info.is_snapshot);
    assert_eq!((info.parent, info.name.as_str()), (Some(snap), "vm-disk"));
    sr.write(clone, 0, &pattern(6, 4096)).unwrap();
    sr.write(vdi, 8192, &pattern(7, 4096)).unwrap();
    let mut clone_expected = pattern(5, 16 * 1024);
    clone_expected[..4096].copy_from_slice(&pattern(6, 4096));
    let mut vdi_expected = pattern(5, 16 * 1024);
    vdi_expected[8192..12288].copy_from_slice(&pattern(7, 4096));
    assert_eq!(read_all(&mut sr, clone), clone_expected);
    assert_eq!(read_all(&mut sr, vdi), vdi_expected);
    assert_eq!(read_all(&mut sr, snap), pattern(5, 16 * 1024));
    sr.check().unwrap();
}

#[test]
fn destroy_frees_only_extents_nobody_else_references() {
    let (mut sr, _) = mem_sr();
    let vdi = sr.create_vdi("a", 16 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(1, 16 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    sr.write(vdi, 0, &pattern(2, 4096)).unwrap();
    assert_eq!(sr.physical_utilisation(), 5 * EXTENT);
    sr.destroy_vdi(vdi).unwrap();
    // The snapshot still holds all four of its extents; the copied one is free.
    assert_eq!(sr.physical_utilisation(), 4 * EXTENT);
    assert_eq!(read_all(&mut sr, snap), pattern(1, 16 * 1024));
    sr.destroy_vdi(snap).unwrap();
    assert_eq!(sr.physical_utilisation(), 0);
    assert!(sr.list_vdis().is_empty());
    assert_eq!(sr.destroy_vdi(snap), Err(SrError::VdiNotFound(snap)));
    sr.check().unwrap();
}

#[test]
fn resize_grows_with_zeros_and_shrinking_frees_extents() {
    let (mut sr, _) = mem_sr();
    let vdi = sr.create_vdi("r", 16 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(3, 16 * 1024)).unwrap();
    sr.resize_vdi(vdi, 32 * 1024).unwrap();
    let all = read_all(&mut sr, vdi);
    assert_eq!(&all[..16 * 1024], &pattern(3, 16 * 1024)[..]);
    assert_eq!(&all[16 * 1024..], &vec![0; 16 * 1024][..]);
    // Shrink to the middle of an extent, then grow: the old tail must read as zeros.
    sr.resize_vdi(vdi, 5 * 1024).unwrap();
    assert_eq!(sr.physical_utilisation(), 2 * EXTENT);
    assert_eq!(
        sr.read(vdi, 5 * 1024, &mut [0; 512]),
        Err(SrError::OutOfRange {
            offset: 5 * 1024,
            len: 512,
            virtual_size: 5 * 1024
        })
    );
    sr.resize_vdi(vdi, 12 * 1024).unwrap();
    let all = read_all(&mut sr, vdi);
    assert_eq!(&all[..5 * 1024], &pattern(3, 16 * 1024)[..5 * 1024]);
    assert_eq!(&all[5 * 1024..], &vec![0; 7 * 1024][..]);
    assert_eq!(sr.vdi_info(vdi).unwrap().virtual_size, 12 * 1024);
    sr.check().unwrap();
}

#[test]
fn growing_past_a_snapshot_shared_tail_leaves_the_snapshot_alone() {
    let (mut sr, _) = mem_sr();
    let vdi = sr.create_vdi("r", 8 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(3, 8 * 1024)).unwrap();
    sr.resize_vdi(vdi, 6 * 1024).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    sr.resize_vdi(vdi, 8 * 1024).unwrap();
    assert_eq!(&read_all(&mut sr, vdi)[6 * 1024..], &[0; 2048][..]);
    assert_eq!(
        read_all(&mut sr, snap),
        pattern(3, 8 * 1024)[..6 * 1024].to_vec()
    );
    sr.check().unwrap();
}

#[test]
fn copy_makes_an_independent_copy_in_new_extents() {
    let (mut sr, _) = mem_sr();
    let vdi = sr.create_vdi("src", 64 * 1024).unwrap();
    sr.write(vdi, 8192, &pattern(4, 8192)).unwrap();
    let copy = sr.copy_vdi(vdi, "dst").unwrap();
    assert_eq!(sr.physical_utilisation(), 4 * EXTENT);
    let info = sr.vdi_info(copy).unwrap();
    assert_eq!(
        (info.name.as_str(), info.virtual_size, info.parent),
        ("dst", 64 * 1024, None)
    );
    assert_eq!(read_all(&mut sr, copy), read_all(&mut sr, vdi));
    sr.write(vdi, 8192, &pattern(5, 512)).unwrap();
    assert_eq!(&read_all(&mut sr, copy)[8192..16384], &pattern(4, 8192)[..]);
    sr.check().unwrap();
}

#[test]
fn a_full_sr_refuses_with_sr_full_and_changes_nothing() {
    let (mut sr, disk) = mem_sr();
    let extents = sr.physical_size() / EXTENT;
    let a = sr.create_vdi("a", extents * EXTENT).unwrap();
    let b = sr.create_vdi("b", 4 * EXTENT).unwrap();
    sr.write(a, 0, &pattern(1, (extents - 2) as usize * EXTENT as usize))
        .unwrap();
    sr.write(b, 0, &pattern(2, 512)).unwrap();
    sr.flush().unwrap();
    let before = observe(&mut sr);
    let writes = disk.stats().writes;
    // Needs three new extents, only one is free: refused up front, nothing written.
    assert_eq!(
        sr.write(b, EXTENT, &pattern(3, 3 * EXTENT as usize)),
        Err(SrError::SrFull { space: Space::Data })
    );
    assert_eq!(
        sr.copy_vdi(a, "c"),
        Err(SrError::SrFull { space: Space::Data })
    );
    assert_eq!(disk.stats().writes, writes);
    let snap = sr.snapshot_vdi(b).unwrap();
    // Breaking the snapshot's sharing needs extents too.
    sr.write(a, (extents - 2) * EXTENT, &pattern(4, 512))
        .unwrap();
    assert_eq!(
        sr.write(b, 0, &pattern(5, 512)),
        Err(SrError::SrFull { space: Space::Data })
    );
    sr.flush().unwrap();
    sr.destroy_vdi(snap).unwrap();
    let mut after = observe(&mut sr);
    let entry = after.iter_mut().find(|(info, _)| info.uuid == a).unwrap();
    entry.1[((extents - 2) * EXTENT) as usize..][..512].copy_from_slice(&[0; 512]);
    entry.0.physical_utilisation -= EXTENT;
    assert_eq!(after, before);
    sr.check().unwrap();
    // After destroying, the freed space is usable again (pins are released by commits).
    sr.destroy_vdi(b).unwrap();
    sr.write(a, (extents - 1) * EXTENT, &pattern(6, 4096))
        .unwrap();
    let mut sr = Sr::attach(sr.into_device()).unwrap();
    sr.check().unwrap();
    assert_eq!(&read_all(&mut sr, a)[..512], &pattern(1, 512)[..]);
}

#[test]
fn metadata_space_is_bounded_and_exhaustion_is_typed() {
    let (mut sr, _) = mem_sr();
    let mut created = 0;
    let error = loop {
        match sr.create_vdi("v", 4096) {
            Ok(_) => created += 1,
            Err(error) => break error,
        }
        assert!(created < 100, "metadata area never filled");
    };
    assert_eq!(
        error,
        SrError::SrFull {
            space: Space::Metadata
        }
    );
    assert_eq!(sr.list_vdis().len(), created);
    // Still fully usable: writes and flushes never need more than the bound.
    for vdi in sr.list_vdis() {
        sr.write(vdi.uuid, 0, &pattern(1, 4096)).unwrap();
    }
    sr.flush().unwrap();
    sr.check().unwrap();
    let mut sr = Sr::attach(sr.into_device()).unwrap();
    assert_eq!(sr.list_vdis().len(), created);
    sr.check().unwrap();
}

#[test]
fn bad_requests_get_typed_errors() {
    let (mut sr, _) = mem_sr();
    let vdi = sr.create_vdi("v", 8192).unwrap();
    let missing = Uuid([1; 16]);
    assert_eq!(
        sr.read(missing, 0, &mut [0; 512]),
        Err(SrError::VdiNotFound(missing))
    );
    assert_eq!(
        sr.write(missing, 0, &[0; 512]),
        Err(SrError::VdiNotFound(missing))
    );
    assert_eq!(sr.snapshot_vdi(missing), Err(SrError::VdiNotFound(missing)));
    assert_eq!(
        sr.clone_vdi(missing, "x"),
        Err(SrError::VdiNotFound(missing))
    );
    assert_eq!(
        sr.copy_vdi(missing, "x"),
        Err(SrError::VdiNotFound(missing))
    );
    assert_eq!(
        sr.resize_vdi(missing, 512),
        Err(SrError::VdiNotFound(missing))
    );
    assert_eq!(
        sr.write(vdi, 8192, &[0; 512]),
        Err(SrError::OutOfRange {
            offset: 8192,
            len: 512,
            virtual_size: 8192
        })
    );
    assert!(matches!(
        sr.write(vdi, u64::MAX - 511, &[0; 512]),
        Err(SrError::OutOfRange { .. })
    ));
    assert!(matches!(
        sr.write(vdi, 100, &[0; 512]),
        Err(SrError::Unaligned { .. })
    ));
    assert!(matches!(
        sr.read(vdi, 0, &mut [0; 100]),
        Err(SrError::Unaligned { .. })
    ));
    assert_eq!(sr.create_vdi("", 512), Err(SrError::InvalidName));
    assert_eq!(
        sr.create_vdi(&"n".repeat(256), 512),
        Err(SrError::InvalidName)
    );
    assert_eq!(sr.create_vdi("v", 0), Err(SrError::InvalidSize(0)));
    assert_eq!(sr.create_vdi("v", 1000), Err(SrError::InvalidSize(1000)));
    assert_eq!(
        sr.create_vdi("v", 1 << 60),
        Err(SrError::InvalidSize(1 << 60))
    );
    assert_eq!(sr.resize_vdi(vdi, 0), Err(SrError::InvalidSize(0)));
    assert_eq!(sr.list_vdis().len(), 1);
    sr.write(vdi, 0, &[]).unwrap();
}

#[test]
fn everything_persists_across_attach() {
    let (mut sr, disk) = mem_sr();
    let vdi = sr.create_vdi("keep", 20 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(8, 20 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    sr.write(vdi, 4096, &pattern(9, 4096)).unwrap();
    sr.flush().unwrap();
    let before = observe(&mut sr);
    let generation = sr.generation();
    drop(sr);
    disk.power_cycle(keel_block::fakes::CacheLoss::DropAll);
    let mut sr = Sr::attach(disk.clone()).unwrap();
    assert_eq!(sr.generation(), generation);
    assert!(!sr.recovery().fell_back);
    assert_eq!(observe(&mut sr), before);
    assert_eq!(sr.vdi_info(snap).unwrap().snapshot_of, Some(vdi));
    sr.check().unwrap();
}

#[test]
fn a_rename_survives_attach_and_changes_nothing_else() {
    let (mut sr, disk) = mem_sr();
    let vdi = sr.create_vdi("old", 20 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(8, 20 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    sr.flush().unwrap();
    let mut expected = observe(&mut sr);
    let generation = sr.generation();
    sr.rename_vdi(vdi, "new name").unwrap();
    // Snapshots can be renamed too: read-only covers their data, not their name.
    let long = "é".repeat(127) + "x"; // 255 bytes, the longest allowed
    sr.rename_vdi(snap, &long).unwrap();
    assert_eq!(sr.generation(), generation + 2, "each rename commits");
    for (info, _) in &mut expected {
        info.name = if info.uuid == vdi { "new name" } else { &long }.to_string();
    }
    assert_eq!(observe(&mut sr), expected);
    sr.check().unwrap();
    // Durable on return: nothing flushed after the renames, the cache is lost.
    drop(sr);
    disk.power_cycle(keel_block::fakes::CacheLoss::DropAll);
    let mut sr = Sr::attach(disk.clone()).unwrap();
    assert_eq!(observe(&mut sr), expected);
    sr.check().unwrap();
}

#[test]
fn bad_renames_are_refused_and_change_nothing() {
    let (mut sr, disk) = mem_sr();
    let vdi = sr.create_vdi("keep", 8192).unwrap();
    let before = observe(&mut sr);
    let generation = sr.generation();
    let writes = disk.stats().writes;
    assert_eq!(sr.rename_vdi(vdi, ""), Err(SrError::InvalidName));
    assert_eq!(
        sr.rename_vdi(vdi, &"n".repeat(256)),
        Err(SrError::InvalidName)
    );
    let missing = Uuid([1; 16]);
    assert_eq!(
        sr.rename_vdi(missing, "x"),
        Err(SrError::VdiNotFound(missing))
    );
    assert_eq!(
        disk.stats().writes,
        writes,
        "a refused rename writes nothing"
    );
    assert_eq!(sr.generation(), generation);
    assert_eq!(observe(&mut sr), before);
    let mut sr = Sr::attach(sr.into_device()).unwrap();
    assert_eq!(observe(&mut sr), before);
    sr.check().unwrap();
}

#[test]
fn a_rename_that_would_overflow_the_metadata_area_is_refused() {
    // 36 metadata blocks admit at most 12 blocks of worst-case metadata: 11 one-chunk VDIs
    // and a one-block catalog. Lengthening their names eventually needs a second catalog
    // block, which the bound refuses.
    let mut options = options();
    options.metadata_blocks = Some(36);
    let disk = mem_disk();
    let mut sr = Sr::format(disk.clone(), options).unwrap();
    while sr.create_vdi("v", 4096).is_ok() {
        assert!(sr.list_vdis().len() < 100, "metadata area never filled");
    }
    let long = "n".repeat(255);
    let mut renamed = 0;
    let error = loop {
        let Some(next) = sr.list_vdis().into_iter().find(|info| info.name == "v") else {
            panic!("every rename fitted: the bound was never reached");
        };
        let before = observe(&mut sr);
        let generation = sr.generation();
        match sr.rename_vdi(next.uuid, &long) {
            Ok(()) => renamed += 1,
            Err(error) => {
                assert_eq!(observe(&mut sr), before);
                assert_eq!(sr.generation(), generation);
                break error;
            }
        }
    };
    assert_eq!(
        error,
        SrError::SrFull {
            space: Space::Metadata
        }
    );
    assert!(renamed > 0, "renames within the bound succeed");
    sr.check().unwrap();
    let mut sr = Sr::attach(disk).unwrap();
    let names = sr
        .list_vdis()
        .into_iter()
        .filter(|v| v.name == long)
        .count();
    assert_eq!(names, renamed);
    sr.check().unwrap();
}

#[test]
fn a_flush_without_map_changes_only_flushes_the_device() {
    let (mut sr, disk) = mem_sr();
    let vdi = sr.create_vdi("v", 8192).unwrap();
    sr.write(vdi, 0, &pattern(1, 512)).unwrap();
    sr.flush().unwrap();
    let generation = sr.generation();
    sr.write(vdi, 512, &pattern(2, 512)).unwrap();
    sr.flush().unwrap();
    assert_eq!(
        sr.generation(),
        generation,
        "in-place write needs no commit"
    );
    disk.power_cycle(keel_block::fakes::CacheLoss::DropAll);
    let mut sr = Sr::attach(disk).unwrap();
    assert_eq!(&read_all(&mut sr, vdi)[512..1024], &pattern(2, 512)[..]);
}

#[test]
fn device_errors_are_reported_and_leave_the_sr_consistent() {
    let (mut sr, disk) = mem_sr();
    let vdi = sr.create_vdi("v", 16 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(1, 4096)).unwrap();
    sr.flush().unwrap();
    let before = observe(&mut sr);
    // A failing write while filling a fresh extent: no mapping, extent returned.
    disk.fail_write(0, 1);
    assert!(matches!(
        sr.write(vdi, 8192, &pattern(2, 1024)),
        Err(SrError::Device(_))
    ));
    assert_eq!(observe(&mut sr), before);
    sr.check().unwrap();
    // A failing metadata write during create: nothing created, SR still usable.
    disk.fail_write(0, 0);
    assert!(matches!(sr.create_vdi("w", 4096), Err(SrError::Device(_))));
    assert_eq!(observe(&mut sr), before);
    sr.check().unwrap();
    // The root write itself failing leaves the outcome unknown: re-attach is required.
    let writes_per_commit_before_root = 2; // one catalog block, then the root (create maps nothing)
    disk.fail_write(writes_per_commit_before_root - 1, 0);
    assert!(matches!(sr.create_vdi("w", 4096), Err(SrError::Device(_))));
    assert_eq!(sr.write(vdi, 0, &[0; 512]), Err(SrError::NeedsReattach));
    let mut sr = Sr::attach(sr.into_device()).unwrap();
    assert_eq!(observe(&mut sr), before);
    sr.check().unwrap();
    // A read error is reported, not hidden.
    disk.fail_read(0);
    assert!(matches!(
        sr.read(vdi, 0, &mut [0; 512]),
        Err(SrError::Device(_))
    ));
}

#[test]
fn works_on_4k_sector_devices() {
    let disk = MemDisk::with_geometry(4096, 512);
    let mut options = options();
    options.extent_size = 8192;
    let mut sr = Sr::format(disk, options).unwrap();
    let vdi = sr.create_vdi("v", 64 * 1024).unwrap();
    sr.write(vdi, 4096, &pattern(1, 8192)).unwrap();
    assert!(matches!(
        sr.write(vdi, 512, &[0; 512]),
        Err(SrError::Unaligned { .. })
    ));
    let mut sr = Sr::attach(sr.into_device()).unwrap();
    // Nothing flushed after the last metadata op: the write was not acknowledged, but the
    // create was.
    assert_eq!(sr.list_vdis().len(), 1);
    sr.check().unwrap();
}

#[test]
fn file_backed_sr_survives_reopening() {
    let temp = TempPath::new("reopen");
    let uuid;
    let snap;
    {
        let disk = FileDisk::open(&temp.0, 512, 4096).unwrap();
        let mut options = FormatOptions::new(SR_UUID);
        options.extent_size = 16 * 1024;
        let mut sr = Sr::format(disk, options).unwrap();
        uuid = sr.create_vdi("file", 256 * 1024).unwrap();
        sr.write(uuid, 0, &pattern(3, 64 * 1024)).unwrap();
        snap = sr.snapshot_vdi(uuid).unwrap();
        sr.write(uuid, 16 * 1024, &pattern(4, 4096)).unwrap();
        sr.flush().unwrap();
        sr.check().unwrap();
    }
    let disk = FileDisk::open(&temp.0, 512, 4096).unwrap();
    let mut sr = Sr::attach(disk).unwrap();
    let mut expected = pattern(3, 64 * 1024);
    expected[16 * 1024..20 * 1024].copy_from_slice(&pattern(4, 4096));
    assert_eq!(&read_all(&mut sr, uuid)[..64 * 1024], &expected[..]);
    assert_eq!(
        &read_all(&mut sr, snap)[..64 * 1024],
        &pattern(3, 64 * 1024)[..]
    );
    sr.check().unwrap();
}
