//! The XenAPI over real SRs (on in-memory disks): VDI lifecycle, raw import and export,
//! snapshots keeping their data, names kept by the SR, and everything still there after
//! attaching again.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_block::fakes::{CacheLoss, MemDisk, MemDiskConfig};
use keel_repositories::{provision, Repositories, Repository};
use keel_storage::Uuid;
use keel_xenapi::{
    hash_password, ApiError, CallOutcome, Config, Direction, Entropy, HashCost, HostFacts,
    StorageBackend, StorageError, Timestamp, TransferRequest, Value, XenApi,
};

const T0: Timestamp = Timestamp::from_unix_ms(1_700_000_000_000);
const MIB: u64 = 1 << 20;

struct Counter(u64);

impl Entropy for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 56) as u8;
        }
    }
}

fn disk(identity: &str) -> MemDisk {
    let mut config = MemDiskConfig::new(512, 64 * MIB / 512);
    config.identity = identity.into();
    MemDisk::new(config)
}

fn service(disks: &[MemDisk], format_uuid: u8) -> XenApi {
    let mut repositories = Repositories::default();
    for (i, d) in disks.iter().enumerate() {
        let (sr, _) = provision(d.clone(), None, Uuid([format_uuid + i as u8; 16]), MIB).unwrap();
        repositories.srs.push(Repository {
            sr,
            device: d.info_identity(),
            bus: "nvme".into(),
        });
    }
    let phc = hash_password(b"pw", b"0123456789abcdef", HashCost::TEST_ONLY).unwrap();
    let mut config = Config::new(phc, HostFacts::default());
    config.storage = Some(Box::new(repositories));
    XenApi::new(config, Box::new(Counter(1)), T0).unwrap()
}

trait Identity {
    fn info_identity(&self) -> String;
}

impl Identity for MemDisk {
    fn info_identity(&self) -> String {
        keel_block::BlockDevice::info(self).identity.clone()
    }
}

fn call(api: &mut XenApi, method: &str, params: Vec<Value>) -> Result<Value, ApiError> {
    match api.call(method, params, T0) {
        CallOutcome::Done(r) => r,
        CallOutcome::Pending(_) => panic!("{method} pending"),
    }
}

fn s(t: &str) -> Value {
    Value::str(t)
}

fn login(api: &mut XenApi) -> String {
    call(api, "session.login_with_password", vec![s("root"), s("pw")])
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn ref_of(v: Value) -> String {
    v.as_str().unwrap().to_string()
}

fn import(api: &mut XenApi, session: &str, vdi: &str, data: &[u8]) {
    let request = TransferRequest {
        session_id: session.into(),
        vdi: vdi.into(),
        ..TransferRequest::default()
    };
    let mut t = api
        .start_transfer(Direction::Import, &request, Some(data.len() as u64), T0)
        .unwrap();
    for piece in data.chunks(100_000) {
        api.import_data(&mut t, piece, T0).unwrap();
    }
    api.finish_transfer(t, T0).unwrap();
}

fn export(api: &mut XenApi, session: &str, vdi: &str) -> Vec<u8> {
    let request = TransferRequest {
        session_id: session.into(),
        vdi: vdi.into(),
        ..TransferRequest::default()
    };
    let mut t = api
        .start_transfer(Direction::Export, &request, None, T0)
        .unwrap();
    let mut out = Vec::new();
    while api.export_refill(&mut t, T0).unwrap() {
        out.extend_from_slice(t.output());
        let n = t.output().len();
        t.consume(n);
    }
    api.finish_transfer(t, T0).unwrap();
    out
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ (i % 253) as u8 ^ (i >> 12) as u8)
        .collect()
}

#[test]
fn import_snapshot_overwrite_export_and_attach_again() {
    let disks = [disk("nvme-keel0-n1"), disk("virtio-blk-00:03.0")];
    let mut api = service(&disks, 0x10);
    let session = login(&mut api);
    let srs = call(&mut api, "SR.get_all", vec![s(&session)]).unwrap();
    assert_eq!(srs.as_array().unwrap().len(), 2);
    let sr = call(
        &mut api,
        "SR.get_by_uuid",
        vec![s(&session), s(&Uuid([0x10; 16]).to_string())],
    )
    .map(ref_of)
    .unwrap();
    let record = Value::Struct(
        [
            ("SR".to_string(), s(&sr)),
            ("name_label".to_string(), s("disk")),
            ("virtual_size".to_string(), s(&(16 * MIB).to_string())),
        ]
        .into_iter()
        .collect(),
    );
    let vdi = call(&mut api, "VDI.create", vec![s(&session), record])
        .map(ref_of)
        .unwrap();
    let original = pattern(1, 12 * MIB as usize);
    import(&mut api, &session, &vdi, &original);
    let snap = call(&mut api, "VDI.snapshot", vec![s(&session), s(&vdi)])
        .map(ref_of)
        .unwrap();
    let overwrite = pattern(9, 3 * MIB as usize);
    // Overwrite the first 3 MiB of the VDI (the rest keeps the original).
    import(&mut api, &session, &vdi, &overwrite);
    let clone = call(&mut api, "VDI.clone", vec![s(&session), s(&snap)])
        .map(ref_of)
        .unwrap();

    let mut expected = original.clone();
    expected.resize(16 * MIB as usize, 0);
    let snapshot_data = export(&mut api, &session, &snap);
    assert_eq!(
        snapshot_data, expected,
        "the snapshot kept the imported data"
    );
    assert_eq!(export(&mut api, &session, &clone), expected);
    let mut changed = expected.clone();
    changed[..overwrite.len()].copy_from_slice(&overwrite);
    assert_eq!(export(&mut api, &session, &vdi), changed);
    let used = call(
        &mut api,
        "SR.get_physical_utilisation",
        vec![s(&session), s(&sr)],
    )
    .unwrap();
    // 12 MiB imported + 3 MiB rewritten copy-on-write.
    assert_eq!(used.as_int(), Some(15 * MIB as i64));

    let uuids: Vec<Value> = [&vdi, &snap, &clone]
        .iter()
        .map(|r| call(&mut api, "VDI.get_uuid", vec![s(&session), s(r)]).unwrap())
        .collect();
    drop(api);

    // "Reboot": attach the same disks again.
    let mut api = service(&disks, 0x40);
    let session = login(&mut api);
    let vdi = call(
        &mut api,
        "VDI.get_by_uuid",
        vec![s(&session), uuids[0].clone()],
    )
    .map(ref_of)
    .unwrap();
    let snap = call(
        &mut api,
        "VDI.get_by_uuid",
        vec![s(&session), uuids[1].clone()],
    )
    .map(ref_of)
    .unwrap();
    assert_eq!(
        call(
            &mut api,
            "VDI.get_is_a_snapshot",
            vec![s(&session), s(&snap)]
        )
        .unwrap(),
        Value::Bool(true)
    );
    assert_eq!(
        call(&mut api, "VDI.get_snapshot_of", vec![s(&session), s(&snap)]).unwrap(),
        s(&vdi)
    );
    assert_eq!(export(&mut api, &session, &snap), expected);
    assert_eq!(export(&mut api, &session, &vdi), changed);
}

#[test]
fn copying_between_srs_and_errors_from_real_srs() {
    let disks = [disk("nvme-a"), disk("nvme-b")];
    let mut api = service(&disks, 0x20);
    let session = login(&mut api);
    let a = call(
        &mut api,
        "SR.get_by_uuid",
        vec![s(&session), s(&Uuid([0x20; 16]).to_string())],
    )
    .map(ref_of)
    .unwrap();
    let b = call(
        &mut api,
        "SR.get_by_uuid",
        vec![s(&session), s(&Uuid([0x21; 16]).to_string())],
    )
    .map(ref_of)
    .unwrap();
    let record = |sr: &str, size: u64| {
        Value::Struct(
            [
                ("SR".to_string(), s(sr)),
                ("virtual_size".to_string(), Value::Int(size as i64)),
            ]
            .into_iter()
            .collect(),
        )
    };
    let vdi = call(
        &mut api,
        "VDI.create",
        vec![s(&session), record(&a, 4 * MIB)],
    )
    .map(ref_of)
    .unwrap();
    let data = pattern(3, 4 * MIB as usize);
    import(&mut api, &session, &vdi, &data);
    let task = call(
        &mut api,
        "Async.VDI.copy",
        vec![s(&session), s(&vdi), s(&b)],
    )
    .map(ref_of)
    .unwrap();
    while api.has_running_tasks() {
        api.run_tasks(T0);
    }
    assert_eq!(
        call(&mut api, "task.get_status", vec![s(&session), s(&task)]).unwrap(),
        s("success")
    );
    let copies = call(&mut api, "SR.get_VDIs", vec![s(&session), s(&b)]).unwrap();
    let copy = copies.as_array().unwrap()[0].as_str().unwrap().to_string();
    assert_eq!(export(&mut api, &session, &copy), data);

    // The data area is about 62 MiB: a 100 MiB VDI is fine (thin), filling it is not.
    let big = call(
        &mut api,
        "VDI.create",
        vec![s(&session), record(&a, 100 * MIB)],
    )
    .map(ref_of)
    .unwrap();
    let request = TransferRequest {
        session_id: session.clone(),
        vdi: big.clone(),
        ..TransferRequest::default()
    };
    let mut t = api
        .start_transfer(Direction::Import, &request, None, T0)
        .unwrap();
    let chunk = vec![1u8; MIB as usize];
    let error = (0..100)
        .find_map(|_| api.import_data(&mut t, &chunk, T0).err())
        .expect("the SR fills up");
    assert_eq!(error.code(), "SR_FULL");
    api.fail_transfer(t, error, T0);
    // Snapshots are read-only.
    let snap = call(&mut api, "VDI.snapshot", vec![s(&session), s(&vdi)])
        .map(ref_of)
        .unwrap();
    assert_eq!(
        call(
            &mut api,
            "VDI.resize",
            vec![s(&session), s(&snap), Value::Int(8 << 20)]
        ),
        Err(ApiError::VdiReadOnly { vdi: snap })
    );
}

#[test]
fn vdi_names_survive_a_power_cut_and_attaching_again() {
    let disks = [disk("nvme-keel0-n1")];
    let mut api = service(&disks, 0x30);
    let session = login(&mut api);
    let sr = call(
        &mut api,
        "SR.get_by_uuid",
        vec![s(&session), s(&Uuid([0x30; 16]).to_string())],
    )
    .map(ref_of)
    .unwrap();
    let record = Value::Struct(
        [
            ("SR".to_string(), s(&sr)),
            ("name_label".to_string(), s("created as")),
            ("virtual_size".to_string(), s(&MIB.to_string())),
        ]
        .into_iter()
        .collect(),
    );
    let vdi = call(&mut api, "VDI.create", vec![s(&session), record])
        .map(ref_of)
        .unwrap();
    let snap = call(&mut api, "VDI.snapshot", vec![s(&session), s(&vdi)])
        .map(ref_of)
        .unwrap();
    for (r, label) in [(&vdi, "renamed"), (&snap, "renamed snapshot")] {
        call(
            &mut api,
            "VDI.set_name_label",
            vec![s(&session), s(r), s(label)],
        )
        .unwrap();
    }
    let uuids: Vec<Value> = [&vdi, &snap]
        .iter()
        .map(|r| call(&mut api, "VDI.get_uuid", vec![s(&session), s(r)]).unwrap())
        .collect();
    drop(api);

    // Power cut right after the calls returned: the disk's volatile cache is lost.
    disks[0].power_cycle(CacheLoss::DropAll);
    let mut api = service(&disks, 0x50);
    let session = login(&mut api);
    for (uuid, label) in uuids.iter().zip(["renamed", "renamed snapshot"]) {
        let r = call(&mut api, "VDI.get_by_uuid", vec![s(&session), uuid.clone()])
            .map(ref_of)
            .unwrap();
        assert_eq!(
            call(&mut api, "VDI.get_name_label", vec![s(&session), s(&r)]).unwrap(),
            s(label)
        );
    }
}

#[test]
fn renames_on_real_srs_report_typed_errors() {
    let d = disk("nvme-a");
    let (sr, _) = provision(d.clone(), None, Uuid([0x60; 16]), MIB).unwrap();
    let mut repositories = Repositories::default();
    repositories.srs.push(Repository {
        sr,
        device: d.info_identity(),
        bus: "nvme".into(),
    });
    let sr = Uuid([0x60; 16]).to_string();
    let vdi = repositories.create_vdi(&sr, "v", MIB).unwrap().uuid;
    let missing = Uuid([1; 16]).to_string();
    assert_eq!(
        repositories.set_vdi_name(&sr, &missing, "x"),
        Err(StorageError::VdiNotFound(missing.clone()))
    );
    assert_eq!(
        repositories.set_vdi_name(&missing, &vdi, "x"),
        Err(StorageError::SrNotFound(missing))
    );
    assert_eq!(
        repositories.set_vdi_name(&sr, &vdi, ""),
        Err(StorageError::InvalidName)
    );
    repositories.set_vdi_name(&sr, &vdi, "w").unwrap();
    let names: Vec<String> = repositories
        .vdis(&sr)
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["w"]);
}

/// The SRs are handed to several users (the XenAPI, the host database, disk backends), each
/// with a handle on the same repositories: what one does, the others see, and queued I/O
/// submitted through one is served by polling through another.
#[test]
fn users_sharing_the_repositories_see_each_others_work() {
    use std::cell::RefCell;
    use std::rc::Rc;

    use keel_storage::VdiIo;

    let d = disk("nvme-shared");
    let (sr, _) = provision(d.clone(), None, Uuid([0x42; 16]), MIB).unwrap();
    let sr_uuid = sr.uuid();
    let shared = Rc::new(RefCell::new(Repositories {
        srs: vec![Repository {
            sr,
            device: "nvme-shared".into(),
            bus: "nvme".into(),
        }],
    }));
    let mut api_side: Box<dyn StorageBackend> = Box::new(shared.clone());
    let created = api_side
        .create_vdi(&sr_uuid.to_string(), "guest disk", 4 * MIB)
        .unwrap();
    let vdi = keel_repositories::parse_uuid(&created.uuid).unwrap();
    // A disk backend's side: queued writes and a flush, by typed UUIDs.
    let backend_side = shared.clone();
    {
        let mut repositories = backend_side.borrow_mut();
        let sr = repositories.sr_mut(sr_uuid).unwrap();
        sr.submit_io(
            vdi,
            1,
            VdiIo::Write {
                offset: MIB,
                buffer: vec![0xab; 8192],
            },
        )
        .unwrap();
        sr.submit_io(vdi, 2, VdiIo::Flush).unwrap();
    }
    while shared.borrow().io_in_flight() > 0 {
        shared.borrow_mut().poll_io();
    }
    let tags: Vec<u64> = std::iter::from_fn(|| {
        backend_side
            .borrow_mut()
            .sr_mut(sr_uuid)
            .unwrap()
            .take_io_completion_of(vdi)
    })
    .map(|c| {
        assert_eq!(c.result, Ok(()));
        c.tag
    })
    .collect();
    assert_eq!(tags, vec![1, 2]);
    let mut back = vec![0; 8192];
    api_side
        .read(&sr_uuid.to_string(), &created.uuid, MIB, &mut back)
        .unwrap();
    assert_eq!(back, vec![0xab; 8192]);
    assert!(shared.borrow().sr(sr_uuid).is_some());
    assert!(shared.borrow().sr(Uuid([1; 16])).is_none());
}
