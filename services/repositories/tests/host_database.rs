//! The host database's VDI through the XenAPI storage backend: never listed, unreachable by
//! UUID, its name refused; and the XenAPI above it shows no trace of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_block::fakes::{MemDisk, MemDiskConfig};
use keel_hostdb::{find_database_vdi, find_or_create_database_vdi, DEFAULT_VOLUME_BYTES, VDI_NAME};
use keel_repositories::{provision, Repositories, Repository};
use keel_storage::Uuid;
use keel_xenapi::{
    hash_password, CallOutcome, Config, Entropy, HashCost, HostFacts, StorageBackend, StorageError,
    Timestamp, Value, XenApi,
};

const T0: Timestamp = Timestamp::from_unix_ms(1_700_000_000_000);
const MIB: u64 = 1 << 20;

struct Counter(u64);

impl Entropy for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.0 >> 56) as u8;
        }
    }
}

/// One SR holding the host database VDI and one ordinary VDI; returns their UUIDs as text.
fn repositories() -> (Repositories<MemDisk>, String, String, String) {
    let mut config = MemDiskConfig::new(512, 64 * MIB / 512);
    config.identity = "disk0".into();
    let disk = MemDisk::new(config);
    let (mut sr, _) = provision(disk, None, Uuid([7; 16]), MIB).unwrap();
    let database = find_or_create_database_vdi(&mut sr, DEFAULT_VOLUME_BYTES)
        .unwrap()
        .uuid();
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
        database.to_string(),
        guest.to_string(),
    )
}

fn not_found(result: Result<impl core::fmt::Debug, StorageError>, vdi: &str) {
    match result {
        Err(StorageError::VdiNotFound(named)) => assert_eq!(named, vdi),
        other => panic!("expected VdiNotFound, got {other:?}"),
    }
}

#[test]
fn the_database_vdi_is_invisible_and_unreachable() {
    let (mut repos, sr, database, guest) = repositories();
    let listed: Vec<String> = repos
        .vdis(&sr)
        .unwrap()
        .into_iter()
        .map(|v| v.uuid)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&guest));
    let mut buf = [0u8; 512];
    not_found(repos.read(&sr, &database, 0, &mut buf), &database);
    not_found(repos.write(&sr, &database, 0, &buf), &database);
    not_found(repos.resize_vdi(&sr, &database, 16 * MIB), &database);
    not_found(repos.set_vdi_name(&sr, &database, "mine"), &database);
    not_found(repos.snapshot_vdi(&sr, &database), &database);
    not_found(repos.clone_vdi(&sr, &database, "copy"), &database);
    not_found(repos.copy_vdi(&sr, &database, "copy"), &database);
    not_found(repos.destroy_vdi(&sr, &database), &database);
    // Still there, untouched, and still the only candidate.
    let only = find_database_vdi(&repos.srs[0].sr).unwrap();
    assert_eq!(only.map(|u| u.to_string()), Some(database.clone()));
    // The guest's VDI works as before.
    repos.write(&sr, &guest, 0, &buf).unwrap();
    repos.read(&sr, &guest, 0, &mut buf).unwrap();
}

#[test]
fn the_reserved_name_is_refused() {
    let (mut repos, sr, _, guest) = repositories();
    assert_eq!(
        repos.create_vdi(&sr, VDI_NAME, MIB).unwrap_err(),
        StorageError::InvalidName
    );
    assert_eq!(
        repos.set_vdi_name(&sr, &guest, VDI_NAME).unwrap_err(),
        StorageError::InvalidName
    );
    assert_eq!(
        repos.clone_vdi(&sr, &guest, VDI_NAME).unwrap_err(),
        StorageError::InvalidName
    );
    assert_eq!(
        repos.copy_vdi(&sr, &guest, VDI_NAME).unwrap_err(),
        StorageError::InvalidName
    );
    // Nothing was made: the database is still unambiguous.
    assert!(find_database_vdi(&repos.srs[0].sr).unwrap().is_some());
    assert_eq!(repos.vdis(&sr).unwrap().len(), 1);
    // Other names still work.
    repos.create_vdi(&sr, "keel-host-database-2", MIB).unwrap();
}

fn call(
    api: &mut XenApi,
    method: &str,
    params: Vec<Value>,
) -> Result<Value, keel_xenapi::ApiError> {
    match api.call(method, params, T0) {
        CallOutcome::Done(r) => r,
        CallOutcome::Pending(_) => panic!("{method} pending"),
    }
}

#[test]
fn the_xenapi_shows_no_trace_of_it() {
    let (repos, _, database, _) = repositories();
    let phc = hash_password(b"pw", b"0123456789abcdef", HashCost::TEST_ONLY).unwrap();
    let mut config = Config::new(phc, HostFacts::default());
    config.storage = Some(Box::new(repos));
    let mut api = XenApi::new(config, Box::new(Counter(1)), T0).unwrap();
    let session = call(
        &mut api,
        "session.login_with_password",
        vec![Value::str("root"), Value::str("pw")],
    )
    .unwrap();
    let session = session.as_str().unwrap().to_string();
    let vdis = call(&mut api, "VDI.get_all", vec![Value::str(&session)]).unwrap();
    assert_eq!(vdis.as_array().unwrap().len(), 1);
    assert!(call(
        &mut api,
        "VDI.get_by_uuid",
        vec![Value::str(&session), Value::str(&database)]
    )
    .is_err());
    let by_name = call(
        &mut api,
        "VDI.get_by_name_label",
        vec![Value::str(&session), Value::str(VDI_NAME)],
    )
    .unwrap();
    assert_eq!(by_name, Value::Array(Vec::new()));
}
