//! The disk rules: attach an SR, format a blank disk, refuse (untouched) anything else unless
//! `keel.format=` names the disk.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_block::fakes::{MemDisk, MemDiskConfig};
use keel_repositories::{provision, Provisioned, Refusal};
use keel_storage::Uuid;

const EXTENT: u64 = 64 * 1024;
const FIRST: Uuid = Uuid([1; 16]);
const SECOND: Uuid = Uuid([2; 16]);

fn disk(identity: &str, sectors: u64) -> MemDisk {
    let mut config = MemDiskConfig::new(512, sectors);
    config.identity = identity.into();
    MemDisk::new(config)
}

/// 8 MiB.
fn blank() -> MemDisk {
    disk("nvme-keel0-n1", 16 * 1024)
}

#[test]
fn a_blank_disk_gets_a_new_sr_and_is_attached_on_the_next_boot() {
    let dev = blank();
    let (mut sr, how) = provision(dev.clone(), None, FIRST, EXTENT).unwrap();
    assert_eq!(how, Provisioned::FormattedBlank);
    assert_eq!(sr.uuid(), FIRST);
    let vdi = sr.create_vdi("a", 1 << 20).unwrap();
    drop(sr);

    let (sr, how) = provision(dev, None, SECOND, EXTENT).unwrap();
    assert!(matches!(how, Provisioned::Attached(_)), "{how:?}");
    assert_eq!(sr.uuid(), FIRST, "the existing SR keeps its identity");
    assert!(sr.vdi_info(vdi).is_ok());
}

#[test]
fn foreign_data_is_refused_and_left_untouched() {
    let dev = blank();
    dev.poke(4096 * 7, b"an ext4 superblock, say");
    let before = dev.stats();
    let refusal = provision(dev.clone(), None, FIRST, EXTENT).err();
    assert_eq!(refusal, Some(Refusal::ForeignData));
    assert_eq!(dev.stats().writes, before.writes, "nothing was written");
    assert_eq!(dev.stats().flushes, before.flushes);
    assert_eq!(dev.peek(4096 * 7, 23), b"an ext4 superblock, say");
}

#[test]
fn a_format_request_for_another_disk_changes_nothing() {
    let dev = blank();
    dev.poke(0, b"MBR");
    let refusal = provision(dev.clone(), Some("nvme-other-n1"), FIRST, EXTENT).err();
    assert_eq!(refusal, Some(Refusal::ForeignData));
    assert_eq!(dev.peek(0, 3), b"MBR");
}

#[test]
fn a_format_request_naming_the_disk_overwrites_whatever_it_holds() {
    let dev = blank();
    dev.poke(0, b"MBR");
    let (sr, how) = provision(dev.clone(), Some("nvme-keel0-n1"), FIRST, EXTENT).unwrap();
    assert_eq!(how, Provisioned::FormattedOnRequest);
    drop(sr);
    // Also an existing SR: a new, empty one replaces it.
    let (mut sr, _) = provision(dev.clone(), None, FIRST, EXTENT).unwrap();
    sr.create_vdi("old", 1 << 20).unwrap();
    drop(sr);
    let (sr, how) = provision(dev, Some("nvme-keel0-n1"), SECOND, EXTENT).unwrap();
    assert_eq!(how, Provisioned::FormattedOnRequest);
    assert_eq!(sr.uuid(), SECOND);
    assert!(sr.list_vdis().is_empty());
}

#[test]
fn a_damaged_sr_is_refused_untouched() {
    let dev = blank();
    let (sr, _) = provision(dev.clone(), None, FIRST, EXTENT).unwrap();
    drop(sr);
    // Break both superblocks' checksums.
    dev.flip_bits(100, 0x01);
    let backup = 16 * 1024 * 512 - 4096;
    dev.flip_bits(backup + 100, 0x01);
    let writes = dev.stats().writes;
    match provision(dev.clone(), None, SECOND, EXTENT) {
        Err(Refusal::Unattachable(_)) => {}
        other => panic!("expected a refusal, got {:?}", other.map(|(_, how)| how)),
    }
    assert_eq!(dev.stats().writes, writes);
}

#[test]
fn a_disk_too_small_for_an_sr_is_refused() {
    let dev = disk("virtio-tiny", 64);
    assert_eq!(
        provision(dev, None, FIRST, EXTENT).err(),
        Some(Refusal::TooSmall {
            capacity_bytes: 64 * 512
        })
    );
}

#[test]
fn a_failing_disk_is_reported_not_formatted() {
    let dev = blank();
    dev.fail_read(0);
    match provision(dev.clone(), None, FIRST, EXTENT) {
        Err(Refusal::Failed(_)) => {}
        other => panic!("expected a failure, got {:?}", other.map(|(_, how)| how)),
    }
    assert_eq!(dev.stats().writes, 0);
}
