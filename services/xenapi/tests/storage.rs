//! SR, PBD and VDI through the API against an in-memory storage manager: mirroring, VDI
//! lifecycle operations, their errors, and SR.scan.

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod storage_fake;

use common::*;
use keel_xenapi::{ApiError, CallOutcome, Timestamp, Value, XenApi};
use storage_fake::FakeStorage;

const MIB: u64 = 1 << 20;

fn storage_api(size: u64) -> (XenApi, FakeStorage, String) {
    let fake = FakeStorage::two_srs(size);
    let mut config = config();
    config.storage = Some(Box::new(fake.clone()));
    let mut api = api_with(config);
    let session = login(&mut api);
    (api, fake, session)
}

fn sr_by_uuid(api: &mut XenApi, session: &str, uuid: &str) -> String {
    call(api, "SR.get_by_uuid", vec![s(session), s(uuid)])
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn record(api: &mut XenApi, session: &str, class: &str, r: &str) -> Value {
    call(api, &format!("{class}.get_record"), vec![s(session), s(r)]).unwrap()
}

fn int(v: &Value) -> i64 {
    v.as_int().unwrap()
}

fn vdi_args(sr: &str, name: &str, size: &str) -> Value {
    Value::Struct(
        [
            ("SR".to_string(), s(sr)),
            ("name_label".to_string(), s(name)),
            ("name_description".to_string(), s("test disk")),
            // Over XML-RPC ints arrive as decimal strings.
            ("virtual_size".to_string(), s(size)),
            ("type".to_string(), s("user")),
            ("sharable".to_string(), Value::Bool(false)),
            ("read_only".to_string(), Value::Bool(false)),
            ("other_config".to_string(), Value::empty_struct()),
        ]
        .into_iter()
        .collect(),
    )
}

fn create_vdi(api: &mut XenApi, session: &str, sr: &str, name: &str, size: u64) -> String {
    call(
        api,
        "VDI.create",
        vec![s(session), vdi_args(sr, name, &size.to_string())],
    )
    .unwrap()
    .as_str()
    .unwrap()
    .to_string()
}

fn uuid_of(api: &mut XenApi, session: &str, class: &str, r: &str) -> String {
    call(api, &format!("{class}.get_uuid"), vec![s(session), s(r)])
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn srs_and_their_pbds_mirror_the_storage_manager() {
    let fake = FakeStorage::two_srs(64 * MIB);
    let existing = fake.add_vdi("sr-a", "boot disk", 8 * MIB);
    let mut config = config();
    config.storage = Some(Box::new(fake.clone()));
    let mut api = api_with(config);
    let session = login(&mut api);

    let srs = call(&mut api, "SR.get_all", vec![s(&session)]).unwrap();
    assert_eq!(srs.as_array().unwrap().len(), 2);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    let rec = record(&mut api, &session, "SR", &sr);
    assert_eq!(field(&rec, "type"), &s("keel"));
    assert_eq!(int(field(&rec, "physical_size")), 64 * MIB as i64);
    assert_eq!(int(field(&rec, "virtual_allocation")), 8 * MIB as i64);
    assert_eq!(field(&rec, "name_label"), &s("Local storage on nvme-a"));
    let pbds = field(&rec, "PBDs").as_array().unwrap().to_vec();
    assert_eq!(pbds.len(), 1);
    let pbd = record(&mut api, &session, "PBD", pbds[0].as_str().unwrap());
    assert_eq!(field(&pbd, "SR"), &s(&sr));
    assert_eq!(field(&pbd, "currently_attached"), &Value::Bool(true));
    assert_eq!(
        field(&pbd, "device_config")
            .as_struct()
            .unwrap()
            .get("device"),
        Some(&s("nvme-a"))
    );
    // The host lists its PBDs through the inverse field.
    let host = api.host_ref().to_string();
    let host_pbds = call(&mut api, "host.get_PBDs", vec![s(&session), s(&host)]).unwrap();
    assert!(host_pbds.as_array().unwrap().contains(&pbds[0]));
    // The VDI that existed before the service started has its object, by its own UUID.
    let vdi = call(&mut api, "VDI.get_by_uuid", vec![s(&session), s(&existing)]).unwrap();
    let vrec = record(&mut api, &session, "VDI", vdi.as_str().unwrap());
    assert_eq!(field(&vrec, "name_label"), &s("boot disk"));
    assert_eq!(field(&vrec, "SR"), &s(&sr));
    assert!(field(&rec, "VDIs").as_array().unwrap().contains(&vdi));
    assert_eq!(
        call(&mut api, "SR.get_supported_types", vec![s(&session)]).unwrap(),
        Value::string_array(["keel"])
    );
}

#[test]
fn without_storage_there_are_no_srs() {
    let mut api = api();
    let session = login(&mut api);
    let srs = call(&mut api, "SR.get_all", vec![s(&session)]).unwrap();
    assert_eq!(srs, Value::Array(vec![]));
}

#[test]
fn vdi_create_makes_a_vdi_with_the_record_fields() {
    let (mut api, fake, session) = storage_api(64 * MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    // 1000 bytes round up to two sectors.
    let vdi = create_vdi(&mut api, &session, &sr, "data", 1000);
    let rec = record(&mut api, &session, "VDI", &vdi);
    assert_eq!(field(&rec, "name_label"), &s("data"));
    assert_eq!(field(&rec, "name_description"), &s("test disk"));
    assert_eq!(int(field(&rec, "virtual_size")), 1024);
    assert_eq!(field(&rec, "SR"), &s(&sr));
    assert_eq!(field(&rec, "read_only"), &Value::Bool(false));
    assert_eq!(field(&rec, "is_a_snapshot"), &Value::Bool(false));
    assert_eq!(field(&rec, "type"), &s("user"));
    let uuid = field(&rec, "uuid").as_str().unwrap().to_string();
    let stored = fake
        .vdi("sr-a", &uuid)
        .expect("created in the storage manager");
    assert_eq!(stored.facts.name, "data");
    assert_eq!(stored.facts.virtual_size, 1024);
    assert_eq!(
        int(&call(
            &mut api,
            "SR.get_virtual_allocation",
            vec![s(&session), s(&sr)]
        )
        .unwrap()),
        1024
    );
    // An empty name still makes a VDI (the storage manager gets a placeholder).
    let unnamed = create_vdi(&mut api, &session, &sr, "", 512);
    assert_eq!(
        call(
            &mut api,
            "VDI.get_name_label",
            vec![s(&session), s(&unnamed)]
        )
        .unwrap(),
        s("")
    );
}

#[test]
fn vdi_create_refuses_bad_records() {
    let (mut api, _fake, session) = storage_api(64 * MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    let attempt = |api: &mut XenApi, args: Value| call(api, "VDI.create", vec![s(&session), args]);

    let mut no_sr = vdi_args(&sr, "x", "512");
    if let Value::Struct(m) = &mut no_sr {
        m.insert("SR".into(), s("OpaqueRef:nope"));
    }
    assert_eq!(
        attempt(&mut api, no_sr),
        Err(ApiError::handle_invalid("SR", "OpaqueRef:nope"))
    );
    assert!(matches!(
        attempt(&mut api, vdi_args(&sr, "x", "-5")),
        Err(ApiError::ValueNotSupported { .. })
    ));
    assert!(matches!(
        attempt(&mut api, vdi_args(&sr, "x", "0")),
        Err(ApiError::ValueNotSupported { .. })
    ));
    assert_eq!(
        attempt(&mut api, vdi_args(&sr, "x", "lots")),
        Err(ApiError::field_type("virtual_size"))
    );
    let mut bad_type = vdi_args(&sr, "x", "512");
    if let Value::Struct(m) = &mut bad_type {
        m.insert("type".into(), s("floppy"));
    }
    assert_eq!(
        attempt(&mut api, bad_type),
        Err(ApiError::field_type("type"))
    );
    let mut read_only = vdi_args(&sr, "x", "512");
    if let Value::Struct(m) = &mut read_only {
        m.insert("read_only".into(), Value::Bool(true));
    }
    assert!(matches!(
        attempt(&mut api, read_only),
        Err(ApiError::ValueNotSupported { .. })
    ));
    assert_eq!(
        call(&mut api, "VDI.create", vec![s(&session), s("not a record")]),
        Err(ApiError::field_type("args"))
    );
    let vdis = call(&mut api, "VDI.get_all", vec![s(&session)]).unwrap();
    assert_eq!(vdis, Value::Array(vec![]), "nothing was created");
}

#[test]
fn snapshot_clone_and_copy_link_their_sources() {
    let (mut api, fake, session) = storage_api(64 * MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    let vdi = create_vdi(&mut api, &session, &sr, "base", 4 * MIB);
    call(
        &mut api,
        "VDI.set_name_description",
        vec![s(&session), s(&vdi), s("the base")],
    )
    .unwrap();

    // Both the two- and the one-argument forms are accepted.
    let snap = call(
        &mut api,
        "VDI.snapshot",
        vec![s(&session), s(&vdi), Value::empty_struct()],
    )
    .unwrap();
    let snap = snap.as_str().unwrap().to_string();
    let srec = record(&mut api, &session, "VDI", &snap);
    assert_eq!(field(&srec, "is_a_snapshot"), &Value::Bool(true));
    assert_eq!(field(&srec, "read_only"), &Value::Bool(true));
    assert_eq!(field(&srec, "snapshot_of"), &s(&vdi));
    assert_eq!(field(&srec, "name_label"), &s("base"));
    assert_eq!(field(&srec, "name_description"), &s("the base"));
    assert_ne!(
        field(&srec, "snapshot_time"),
        &Value::DateTime("19700101T00:00:00Z".into())
    );
    let snapshots = call(&mut api, "VDI.get_snapshots", vec![s(&session), s(&vdi)]).unwrap();
    assert_eq!(snapshots, Value::Array(vec![s(&snap)]));

    let clone = call(&mut api, "VDI.clone", vec![s(&session), s(&snap)]).unwrap();
    let crec = record(&mut api, &session, "VDI", clone.as_str().unwrap());
    assert_eq!(field(&crec, "read_only"), &Value::Bool(false));
    assert_eq!(field(&crec, "is_a_snapshot"), &Value::Bool(false));
    assert_eq!(field(&crec, "parent"), &s(&snap));

    // A copy within the SR moves its data in steps, as a task (the synchronous call waits
    // for it).
    let task = call(
        &mut api,
        "Async.VDI.copy",
        vec![
            s(&session),
            s(&vdi),
            s(&sr),
            s("OpaqueRef:NULL"),
            s("OpaqueRef:NULL"),
        ],
    )
    .unwrap();
    let done = run_task(&mut api, &session, task.as_str().unwrap());
    assert_eq!(field(&done, "status"), &s("success"));
    let copy = field(&done, "result")
        .as_str()
        .unwrap()
        .trim_start_matches("<value>")
        .trim_end_matches("</value>")
        .to_string();
    let corec = record(&mut api, &session, "VDI", &copy);
    assert_eq!(field(&corec, "SR"), &s(&sr));
    assert_eq!(field(&corec, "parent"), &s("OpaqueRef:NULL"));
    assert_eq!(fake.vdis_in("sr-a"), 4);
    // Incremental copies are not supported.
    assert!(matches!(
        call(
            &mut api,
            "VDI.copy",
            vec![s(&session), s(&vdi), s(&sr), s(&snap)]
        ),
        Err(ApiError::ValueNotSupported { .. })
    ));
}

#[test]
fn destroying_a_vdi_unlinks_its_snapshots() {
    let (mut api, fake, session) = storage_api(64 * MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    let vdi = create_vdi(&mut api, &session, &sr, "base", MIB);
    let uuid = uuid_of(&mut api, &session, "VDI", &vdi);
    let snap = call(&mut api, "VDI.snapshot", vec![s(&session), s(&vdi)]).unwrap();
    call(&mut api, "VDI.destroy", vec![s(&session), s(&vdi)]).unwrap();
    assert!(fake.vdi("sr-a", &uuid).is_none());
    assert!(matches!(
        call(&mut api, "VDI.get_record", vec![s(&session), s(&vdi)]),
        Err(ApiError::HandleInvalid { .. })
    ));
    let of = call(
        &mut api,
        "VDI.get_snapshot_of",
        vec![s(&session), snap.clone()],
    )
    .unwrap();
    assert_eq!(of, s("OpaqueRef:NULL"));
    let vdis = call(&mut api, "SR.get_VDIs", vec![s(&session), s(&sr)]).unwrap();
    assert_eq!(vdis, Value::Array(vec![snap]));
}

#[test]
fn resize_grows_writable_vdis_only() {
    let (mut api, fake, session) = storage_api(64 * MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    let vdi = create_vdi(&mut api, &session, &sr, "base", MIB);
    let uuid = uuid_of(&mut api, &session, "VDI", &vdi);
    call(
        &mut api,
        "VDI.resize",
        vec![s(&session), s(&vdi), s("3000000")],
    )
    .unwrap();
    // Rounded up to whole sectors.
    assert_eq!(
        fake.vdi("sr-a", &uuid).unwrap().facts.virtual_size,
        3_000_320
    );
    assert_eq!(
        int(&call(&mut api, "VDI.get_virtual_size", vec![s(&session), s(&vdi)]).unwrap()),
        3_000_320
    );
    assert!(matches!(
        call(&mut api, "VDI.resize", vec![s(&session), s(&vdi), s("512")]),
        Err(ApiError::ValueNotSupported { .. })
    ));
    let snap = call(&mut api, "VDI.snapshot", vec![s(&session), s(&vdi)]).unwrap();
    let snap = snap.as_str().unwrap().to_string();
    assert_eq!(
        call(
            &mut api,
            "VDI.resize",
            vec![s(&session), s(&snap), s("4000000")]
        ),
        Err(ApiError::VdiReadOnly { vdi: snap })
    );
}

#[test]
fn a_full_sr_answers_sr_full() {
    let (mut api, fake, session) = storage_api(MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    let vdi = create_vdi(&mut api, &session, &sr, "big", MIB);
    let uuid = uuid_of(&mut api, &session, "VDI", &vdi);
    let mut fill = FakeStorage::clone(&fake);
    keel_xenapi::StorageBackend::write(&mut fill, "sr-a", &uuid, 0, &vec![1u8; MIB as usize])
        .unwrap();
    call(&mut api, "SR.scan", vec![s(&session), s(&sr)]).unwrap();
    match call(&mut api, "VDI.copy", vec![s(&session), s(&vdi), s(&sr)]) {
        Err(ApiError::SrFull { maximum, .. }) => assert_eq!(maximum, 0),
        other => panic!("expected SR_FULL, got {other:?}"),
    }
}

#[test]
fn scan_picks_up_new_vdis_and_forgets_vanished_ones() {
    let (mut api, fake, session) = storage_api(64 * MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-b");
    let gone = create_vdi(&mut api, &session, &sr, "gone", MIB);
    let gone_uuid = uuid_of(&mut api, &session, "VDI", &gone);
    let added = fake.add_vdi("sr-b", "added", 2 * MIB);
    fake.remove_vdi("sr-b", &gone_uuid);
    call(&mut api, "Async.SR.scan", vec![s(&session), s(&sr)]).unwrap();
    let vdis = call(&mut api, "SR.get_VDIs", vec![s(&session), s(&sr)]).unwrap();
    let vdis = vdis.as_array().unwrap().to_vec();
    assert_eq!(vdis.len(), 1);
    assert_eq!(
        uuid_of(&mut api, &session, "VDI", vdis[0].as_str().unwrap()),
        added
    );
    assert_eq!(
        int(&call(
            &mut api,
            "SR.get_virtual_allocation",
            vec![s(&session), s(&sr)]
        )
        .unwrap()),
        2 * MIB as i64
    );
}

#[test]
fn names_can_be_changed() {
    let (mut api, fake, session) = storage_api(64 * MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    let vdi = create_vdi(&mut api, &session, &sr, "old", MIB);
    let uuid = uuid_of(&mut api, &session, "VDI", &vdi);
    call(
        &mut api,
        "VDI.set_name_label",
        vec![s(&session), s(&vdi), s("new")],
    )
    .unwrap();
    // The storage manager has it too (so it survives a reboot).
    assert_eq!(fake.vdi("sr-a", &uuid).unwrap().facts.name, "new");
    call(
        &mut api,
        "SR.set_name_label",
        vec![s(&session), s(&sr), s("fast")],
    )
    .unwrap();
    assert_eq!(
        call(&mut api, "VDI.get_name_label", vec![s(&session), s(&vdi)]).unwrap(),
        s("new")
    );
    assert_eq!(
        call(&mut api, "SR.get_name_label", vec![s(&session), s(&sr)]).unwrap(),
        s("fast")
    );
    // A snapshot taken now carries the new name.
    let snap = call(&mut api, "VDI.snapshot", vec![s(&session), s(&vdi)]).unwrap();
    assert_eq!(
        call(&mut api, "VDI.get_name_label", vec![s(&session), snap]).unwrap(),
        s("new")
    );
}

#[test]
fn vdi_names_are_kept_by_the_storage_manager() {
    let (mut api, fake, session) = storage_api(64 * MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    let vdi = create_vdi(&mut api, &session, &sr, "old", MIB);
    let uuid = uuid_of(&mut api, &session, "VDI", &vdi);
    let rename = |api: &mut XenApi, label: &str| {
        call(
            api,
            "VDI.set_name_label",
            vec![s(&session), s(&vdi), s(label)],
        )
    };
    let label =
        |api: &mut XenApi| call(api, "VDI.get_name_label", vec![s(&session), s(&vdi)]).unwrap();
    let stored = || fake.vdi("sr-a", &uuid).unwrap().facts.name;
    // Labels the storage manager cannot hold as they are: shaped as at create, the object
    // keeps the label exactly.
    rename(&mut api, "").unwrap();
    assert_eq!((label(&mut api), stored()), (s(""), "vdi".to_string()));
    let long = "x".repeat(300);
    rename(&mut api, &long).unwrap();
    assert_eq!((label(&mut api), stored()), (s(&long), "x".repeat(255)));
    // A storage failure is reported and leaves both names as they were.
    rename(&mut api, "kept").unwrap();
    fake.0.borrow_mut().fail_renames = true;
    assert!(matches!(
        rename(&mut api, "lost"),
        Err(ApiError::SrBackendFailure { .. })
    ));
    assert_eq!((label(&mut api), stored()), (s("kept"), "kept".to_string()));
    fake.0.borrow_mut().fail_renames = false;
    // A rescan does not bring back an older name.
    call(&mut api, "SR.scan", vec![s(&session), s(&sr)]).unwrap();
    assert_eq!(label(&mut api), s("kept"));
    assert!(matches!(
        call(
            &mut api,
            "VDI.set_name_label",
            vec![s(&session), s("OpaqueRef:nope"), s("x")]
        ),
        Err(ApiError::HandleInvalid { .. })
    ));
    // The handler replaces the generated setter: listed once.
    let methods = call(&mut api, "system.listMethods", vec![]).unwrap();
    let listed = methods
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.as_str() == Some("VDI.set_name_label"))
        .count();
    assert_eq!(listed, 1);
}

#[test]
fn pbds_stay_plugged() {
    let (mut api, _fake, session) = storage_api(64 * MIB);
    let pbds = call(&mut api, "PBD.get_all", vec![s(&session)]).unwrap();
    let pbd = pbds.as_array().unwrap()[0].clone();
    call(&mut api, "PBD.plug", vec![s(&session), pbd.clone()]).unwrap();
    assert!(matches!(
        call(&mut api, "PBD.unplug", vec![s(&session), pbd]),
        Err(ApiError::OperationNotAllowed { .. })
    ));
}

fn run_task(api: &mut XenApi, session: &str, task: &str) -> Value {
    for _ in 0..10_000 {
        api.run_tasks(T0);
        let status = call(api, "task.get_status", vec![s(session), s(task)]).unwrap();
        if status != s("pending") {
            return record(api, session, "task", task);
        }
    }
    panic!("task {task} never finished");
}

#[test]
fn copy_to_another_sr_runs_as_a_task_and_keeps_holes() {
    let (mut api, fake, session) = storage_api(64 * MIB);
    let a = sr_by_uuid(&mut api, &session, "sr-a");
    let b = sr_by_uuid(&mut api, &session, "sr-b");
    let vdi = create_vdi(&mut api, &session, &a, "base", 6 * MIB);
    let uuid = uuid_of(&mut api, &session, "VDI", &vdi);
    let mut backend = fake.clone();
    let data: Vec<u8> = (0..MIB as usize).map(|i| (i % 249) as u8 + 1).collect();
    keel_xenapi::StorageBackend::write(&mut backend, "sr-a", &uuid, 5 * MIB, &data).unwrap();

    let task = call(
        &mut api,
        "Async.VDI.copy",
        vec![s(&session), s(&vdi), s(&b)],
    )
    .unwrap();
    let task = task.as_str().unwrap().to_string();
    // While it runs, the source is busy.
    api.run_tasks(T0);
    let progress = call(&mut api, "task.get_progress", vec![s(&session), s(&task)]).unwrap();
    assert!(progress.as_float().unwrap() > 0.0 && progress.as_float().unwrap() < 1.0);
    assert!(matches!(
        call(&mut api, "VDI.destroy", vec![s(&session), s(&vdi)]),
        Err(ApiError::VdiInUse { .. })
    ));
    let done = run_task(&mut api, &session, &task);
    assert_eq!(field(&done, "status"), &s("success"));
    let result = field(&done, "result").as_str().unwrap().to_string();
    let copy = result
        .trim_start_matches("<value>")
        .trim_end_matches("</value>")
        .to_string();
    let copy_uuid = uuid_of(&mut api, &session, "VDI", &copy);
    assert_eq!(fake.data("sr-b", &copy_uuid), fake.data("sr-a", &uuid));
    // Only the written megabyte took space.
    assert_eq!(fake.vdi("sr-b", &copy_uuid).unwrap().blocks.len(), 16);
    assert_eq!(
        call(&mut api, "VDI.get_SR", vec![s(&session), s(&copy)]).unwrap(),
        s(&b)
    );
    call(&mut api, "VDI.destroy", vec![s(&session), s(&vdi)]).unwrap();
}

#[test]
fn a_failing_cross_sr_copy_leaves_no_half_copy() {
    let (mut api, fake, session) = storage_api(64 * MIB);
    let a = sr_by_uuid(&mut api, &session, "sr-a");
    let b = sr_by_uuid(&mut api, &session, "sr-b");
    let vdi = create_vdi(&mut api, &session, &a, "base", 2 * MIB);
    let uuid = uuid_of(&mut api, &session, "VDI", &vdi);
    let mut backend = fake.clone();
    keel_xenapi::StorageBackend::write(
        &mut backend,
        "sr-a",
        &uuid,
        0,
        &vec![7u8; 2 * MIB as usize],
    )
    .unwrap();
    fake.0.borrow_mut().fail_writes_after = Some(1);
    let task = call(
        &mut api,
        "Async.VDI.copy",
        vec![s(&session), s(&vdi), s(&b)],
    )
    .unwrap();
    let done = run_task(&mut api, &session, task.as_str().unwrap());
    assert_eq!(field(&done, "status"), &s("failure"));
    assert_eq!(
        field(&done, "error_info").as_array().unwrap()[0],
        s("SR_BACKEND_FAILURE")
    );
    assert_eq!(fake.vdis_in("sr-b"), 0);
    let vdis = call(&mut api, "SR.get_VDIs", vec![s(&session), s(&b)]).unwrap();
    assert_eq!(vdis, Value::Array(vec![]));
    // The source is free again.
    fake.0.borrow_mut().fail_writes_after = None;
    call(&mut api, "VDI.destroy", vec![s(&session), s(&vdi)]).unwrap();
}

#[test]
fn storage_operations_publish_events() {
    let (mut api, _fake, session) = storage_api(64 * MIB);
    let sr = sr_by_uuid(&mut api, &session, "sr-a");
    let token = call(
        &mut api,
        "event.from",
        vec![
            s(&session),
            Value::string_array(["VDI"]),
            s(""),
            Value::Float(0.0),
        ],
    )
    .unwrap();
    let token = field(&token, "token").clone();
    let vdi = create_vdi(&mut api, &session, &sr, "watched", MIB);
    let events = match api.call(
        "event.from",
        vec![
            s(&session),
            Value::string_array(["VDI"]),
            token,
            Value::Float(0.0),
        ],
        Timestamp::from_unix_ms(1_700_000_001_000),
    ) {
        CallOutcome::Done(Ok(v)) => v,
        other => panic!("{:?}", matches!(other, CallOutcome::Pending(_))),
    };
    let events = field(&events, "events").as_array().unwrap().to_vec();
    assert!(events
        .iter()
        .any(|e| field(e, "operation") == &s("add") && field(e, "ref") == &s(&vdi)));
}
