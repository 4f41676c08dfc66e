//! Formatting rules (blank devices only, unless forced by name) and recovery from damaged
//! metadata: a flipped bit anywhere in the metadata makes attach fall back to the previous
//! root or report `Corrupt`, never panic and never return a wrong tree.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_block::fakes::MemDisk;
use keel_block::BlockDevice;
use keel_storage::layout::{BLOCK_SIZE, METADATA_FIRST_BLOCK};
use keel_storage::{Corruption, Sr, SrError};

#[test]
fn foreign_data_is_refused_and_left_untouched() {
    let disk = mem_disk();
    // Something a partitioning tool might leave, deep in the checked area.
    disk.poke(700 * 1024, b"EFI PART");
    let writes = disk.stats().writes;
    let flushes = disk.stats().flushes;
    let result = Sr::format(disk.clone(), options());
    assert!(matches!(result, Err(SrError::ForeignData)));
    assert_eq!(
        (disk.stats().writes, disk.stats().flushes),
        (writes, flushes),
        "format wrote to a foreign device"
    );
    assert_eq!(disk.peek(700 * 1024, 8), b"EFI PART".to_vec());
    assert!(matches!(Sr::attach(disk.clone()), Err(SrError::NotAnSr)));
}

#[test]
fn data_at_the_backup_superblock_position_also_counts_as_foreign() {
    let disk = mem_disk();
    let last = disk.info().capacity_bytes() - 512;
    disk.poke(last, &[1]);
    assert!(matches!(
        Sr::format(disk.clone(), options()),
        Err(SrError::ForeignData)
    ));
    assert_eq!(disk.stats().writes, 0);
}

#[test]
fn an_existing_sr_is_refused_by_name() {
    let (sr, disk) = mem_sr();
    drop(sr);
    let writes = disk.stats().writes;
    let mut other = options();
    other.sr_uuid = keel_storage::Uuid([1; 16]);
    assert!(
        matches!(Sr::format(disk.clone(), other), Err(SrError::ExistingSr(uuid)) if uuid == SR_UUID)
    );
    assert_eq!(disk.stats().writes, writes);
}

#[test]
fn force_must_name_the_device_and_then_overwrites() {
    let (mut sr, disk) = mem_sr();
    let vdi = sr.create_vdi("old", 8192).unwrap();
    sr.write(vdi, 0, &pattern(1, 4096)).unwrap();
    sr.flush().unwrap();
    drop(sr);
    let writes = disk.stats().writes;
    let mut wrong = options();
    wrong.force = Some("some-other-disk".into());
    assert!(matches!(
        Sr::format(disk.clone(), wrong),
        Err(SrError::ForceMismatch)
    ));
    assert_eq!(disk.stats().writes, writes);
    let mut forced = options();
    forced.force = Some(disk.info().identity.clone());
    forced.sr_uuid = keel_storage::Uuid([2; 16]);
    let mut sr = Sr::format(disk.clone(), forced).unwrap();
    assert!(sr.list_vdis().is_empty());
    assert_eq!(sr.uuid(), keel_storage::Uuid([2; 16]));
    sr.check().unwrap();
    // The old SR's second root slot must not resurrect after another attach either.
    let mut sr = Sr::attach(sr.into_device()).unwrap();
    assert!(sr.list_vdis().is_empty());
    sr.check().unwrap();
}

#[test]
fn format_validates_options_before_touching_the_device() {
    let disk = MemDisk::with_geometry(512, 64);
    assert!(matches!(
        Sr::format(disk.clone(), options()),
        Err(SrError::DeviceTooSmall { .. })
    ));
    let mut bad = options();
    bad.extent_size = 5000;
    assert!(matches!(
        Sr::format(mem_disk(), bad),
        Err(SrError::InvalidExtentSize(5000))
    ));
    assert_eq!(disk.stats().writes, 0);
    assert!(matches!(
        Sr::format(MemDisk::with_geometry(520, 4096), options()),
        Err(SrError::UnsupportedSectorSize(520))
    ));
}

/// Two commits after setup, with a record of the state at each of the last two roots.
fn two_generations() -> (MemDisk, Observed, Observed) {
    let (mut sr, disk) = mem_sr();
    let vdi = sr.create_vdi("a", 40 * 1024).unwrap();
    sr.write(vdi, 0, &pattern(1, 20 * 1024)).unwrap();
    let snap = sr.snapshot_vdi(vdi).unwrap();
    sr.write(vdi, 8192, &pattern(2, 4096)).unwrap();
    sr.clone_vdi(snap, "c").unwrap();
    let previous = observe(&mut sr);
    sr.write(vdi, 24 * 1024, &pattern(3, 8192)).unwrap();
    sr.create_vdi("b", 4096).unwrap();
    let latest = observe(&mut sr);
    (disk, previous, latest)
}

#[test]
fn a_flipped_bit_in_any_metadata_block_falls_back_or_reports_corruption() {
    let (disk, _, _) = two_generations();
    let metadata_end = (METADATA_FIRST_BLOCK + 32) * BLOCK_SIZE as u64;
    let (mut fell_back, mut corrupt, mut unaffected) = (0, 0, 0);
    for block in 0..metadata_end / BLOCK_SIZE as u64 {
        for byte in [0u64, 9, 14, 20, 36, 41, 60, 300, 4095] {
            let (disk, previous, latest) = two_generations();
            disk.flip_bits(block * BLOCK_SIZE as u64 + byte, 0x04);
            match Sr::attach(disk.clone()) {
                Ok(mut sr) => {
                    sr.check()
                        .unwrap_or_else(|e| panic!("block {block} byte {byte}: {e:?}"));
                    let now = observe(&mut sr);
                    let report = sr.recovery();
                    if now == previous {
                        assert!(
                            report.fell_back || report.other_slot_damaged,
                            "block {block} byte {byte}: silent rollback"
                        );
                        fell_back += 1;
                    } else {
                        assert!(
                            now == latest,
                            "block {block} byte {byte}: neither of the last two states"
                        );
                        assert!(!report.fell_back, "block {block} byte {byte}");
                        unaffected += 1;
                    }
                }
                Err(SrError::Corrupt { .. }) => corrupt += 1,
                Err(other) => panic!("block {block} byte {byte}: unexpected {other:?}"),
            }
        }
    }
    let _ = disk;
    // Damage to the newest tree alone must be survivable, and some blocks are shared by both
    // trees (unchanged map chunks), where only `Corrupt` is honest.
    assert!(fell_back > 0, "no fallback ever happened");
    assert!(corrupt > 0, "no damage was ever fatal");
    assert!(unaffected > 0);
}

#[test]
fn a_damaged_primary_superblock_is_replaced_by_the_backup() {
    let (disk, _, latest) = two_generations();
    disk.flip_bits(100, 0x01);
    let mut sr = Sr::attach(disk.clone()).unwrap();
    assert!(observe(&mut sr) == latest);
    // Both copies damaged: typed corruption, not a panic.
    let backup = disk.info().capacity_bytes() - BLOCK_SIZE as u64;
    disk.flip_bits(backup + 100, 0x01);
    assert!(matches!(
        Sr::attach(disk.clone()),
        Err(SrError::Corrupt {
            what: Corruption::Superblock(_)
        })
    ));
}

#[test]
fn the_damaged_newest_root_is_overwritten_by_the_next_commit() {
    let (disk, previous, _) = two_generations();
    let sr = Sr::attach(disk.clone()).unwrap();
    let newest_slot = sr.recovery().slot;
    drop(sr);
    disk.flip_bits((1 + newest_slot as u64) * BLOCK_SIZE as u64 + 50, 0x20);
    let mut sr = Sr::attach(disk.clone()).unwrap();
    assert!(sr.recovery().other_slot_damaged);
    assert!(observe(&mut sr) == previous);
    let vdi = sr.create_vdi("after", 4096).unwrap();
    sr.write(vdi, 0, &pattern(9, 4096)).unwrap();
    sr.flush().unwrap();
    let now = observe(&mut sr);
    let mut sr = Sr::attach(disk).unwrap();
    assert!(!sr.recovery().other_slot_damaged && !sr.recovery().fell_back);
    assert!(observe(&mut sr) == now);
    sr.check().unwrap();
}

#[test]
fn garbage_in_every_metadata_block_never_panics() {
    let (disk, _, _) = two_generations();
    let metadata_end = (METADATA_FIRST_BLOCK + 32) * BLOCK_SIZE as u64;
    // Overwrite each block's payload with a byte pattern, keeping the magic, so parsing goes
    // as deep as it can.
    for block in 0..metadata_end / BLOCK_SIZE as u64 {
        let (disk, _, _) = two_generations();
        disk.poke(block * BLOCK_SIZE as u64 + 12, &[0xff; 200]);
        let _ = Sr::attach(disk);
    }
    drop(disk);
}
