//! The metering's VDIs (`keel-usage-journal`, `keel-rrd-archive`, docs/metering.md) through
//! the XenAPI storage backend: reserved as the host database's is — never listed,
//! unreachable by UUID, their names refused for clients' VDIs — while a read-only or
//! snapshot VDI of that name (which the kernel would not take for a journal) stays visible.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_block::fakes::{MemDisk, MemDiskConfig};
use keel_repositories::{provision, Repositories, Repository};
use keel_storage::Uuid;
use keel_xenapi::keel_metering::{is_metering_volume, RRD_VOLUME_NAME, USAGE_VOLUME_NAME};
use keel_xenapi::{StorageBackend, StorageError};

const MIB: u64 = 1 << 20;

/// One SR holding both metering VDIs, a snapshot of the journal and a guest's VDI.
fn repositories() -> (Repositories<MemDisk>, String, [String; 2], String, String) {
    let mut config = MemDiskConfig::new(512, 64 * MIB / 512);
    config.identity = "disk0".into();
    let (mut sr, _) = provision(MemDisk::new(config), None, Uuid([9; 16]), MIB).unwrap();
    let journal = sr.create_vdi(USAGE_VOLUME_NAME, 2 * MIB).unwrap();
    let archive = sr.create_vdi(RRD_VOLUME_NAME, 2 * MIB).unwrap();
    let snapshot = sr.snapshot_vdi(journal).unwrap();
    let guest = sr.create_vdi("guest disk", MIB).unwrap();
    let sr_uuid = sr.uuid().to_string();
    let mut repositories = Repositories::default();
    repositories.srs.push(Repository {
        sr,
        device: "disk0".into(),
        bus: "nvme".into(),
    });
    (
        repositories,
        sr_uuid,
        [journal.to_string(), archive.to_string()],
        snapshot.to_string(),
        guest.to_string(),
    )
}

fn not_found(result: Result<impl core::fmt::Debug, StorageError>, vdi: &str) {
    match result {
        Err(StorageError::VdiNotFound(named)) => assert_eq!(named, vdi),
        other => panic!("expected VdiNotFound for {vdi}, got {other:?}"),
    }
}

#[test]
fn the_metering_vdis_are_invisible_and_unreachable() {
    let (mut repos, sr, reserved, snapshot, guest) = repositories();
    let mut listed: Vec<String> = repos
        .vdis(&sr)
        .unwrap()
        .into_iter()
        .map(|v| v.uuid)
        .collect();
    listed.sort();
    let mut expected = vec![snapshot.clone(), guest.clone()];
    expected.sort();
    assert_eq!(listed, expected, "only the snapshot and the guest's VDI");
    let mut buf = [0u8; 512];
    for vdi in &reserved {
        not_found(repos.read(&sr, vdi, 0, &mut buf), vdi);
        not_found(repos.write(&sr, vdi, 0, &buf), vdi);
        not_found(repos.resize_vdi(&sr, vdi, 16 * MIB), vdi);
        not_found(repos.set_vdi_name(&sr, vdi, "mine"), vdi);
        not_found(repos.snapshot_vdi(&sr, vdi), vdi);
        not_found(repos.clone_vdi(&sr, vdi, "copy"), vdi);
        not_found(repos.copy_vdi(&sr, vdi, "copy"), vdi);
        not_found(repos.destroy_vdi(&sr, vdi), vdi);
    }
    // Still there under their names, as the kernel finds them.
    let names: Vec<String> = repos.srs[0]
        .sr
        .list_vdis()
        .into_iter()
        .filter(|i| is_metering_volume(&i.name) && !i.is_snapshot)
        .map(|i| i.uuid.to_string())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(reserved.iter().all(|r| names.contains(r)));
    // The snapshot (not a journal the kernel would use) and the guest's VDI work as before.
    repos.read(&sr, &snapshot, 0, &mut buf).unwrap();
    repos.write(&sr, &guest, 0, &buf).unwrap();
}

#[test]
fn the_metering_names_are_refused() {
    let (mut repos, sr, _, _, guest) = repositories();
    for name in [USAGE_VOLUME_NAME, RRD_VOLUME_NAME] {
        assert_eq!(
            repos.create_vdi(&sr, name, MIB).unwrap_err(),
            StorageError::InvalidName
        );
        assert_eq!(
            repos.set_vdi_name(&sr, &guest, name).unwrap_err(),
            StorageError::InvalidName
        );
        assert_eq!(
            repos.clone_vdi(&sr, &guest, name).unwrap_err(),
            StorageError::InvalidName
        );
        assert_eq!(
            repos.copy_vdi(&sr, &guest, name).unwrap_err(),
            StorageError::InvalidName
        );
    }
    assert_eq!(repos.vdis(&sr).unwrap().len(), 2);
    repos.create_vdi(&sr, "keel-usage-journal-2", MIB).unwrap();
}
