//! Raw VDI import and export (the meaning behind `PUT /import_raw_vdi` and
//! `GET /export_raw_vdi`): checks, streaming, progress as acknowledgement, VDI_IN_USE.

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod storage_fake;

use common::*;
use keel_xenapi::transfer::DURABLE_EVERY;
use keel_xenapi::{ApiError, Direction, TransferRequest, Value, XenApi};
use storage_fake::FakeStorage;

const MIB: u64 = 1 << 20;

struct Setup {
    api: XenApi,
    fake: FakeStorage,
    session: String,
    vdi: String,
    uuid: String,
}

fn setup(vdi_size: u64) -> Setup {
    let fake = FakeStorage::two_srs(256 * MIB);
    let uuid = fake.add_vdi("sr-a", "target", vdi_size);
    let mut config = config();
    config.storage = Some(Box::new(fake.clone()));
    let mut api = api_with(config);
    let session = login(&mut api);
    let vdi = call(&mut api, "VDI.get_by_uuid", vec![s(&session), s(&uuid)])
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    Setup {
        api,
        fake,
        session,
        vdi,
        uuid,
    }
}

fn request(session: &str, vdi: &str) -> TransferRequest {
    TransferRequest {
        session_id: session.into(),
        vdi: vdi.into(),
        task_id: None,
        format: None,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect()
}

fn task_field(api: &mut XenApi, session: &str, task: &str, f: &str) -> Value {
    call(api, &format!("task.get_{f}"), vec![s(session), s(task)]).unwrap()
}

#[test]
fn import_streams_the_body_into_the_vdi_and_reports_through_a_task() {
    let mut t = setup(24 * MIB);
    let body = pattern(20 * MIB as usize + 1000);
    let mut transfer = t
        .api
        .start_transfer(
            Direction::Import,
            &request(&t.session, &t.vdi),
            Some(body.len() as u64),
            T0,
        )
        .unwrap();
    let task = transfer.task().to_string();
    assert_eq!(
        task_field(&mut t.api, &t.session, &task, "status"),
        s("pending")
    );
    let ops = call(
        &mut t.api,
        "VDI.get_current_operations",
        vec![s(&t.session), s(&t.vdi)],
    )
    .unwrap();
    assert_eq!(ops.as_struct().unwrap().get(&task), Some(&s("import")));

    // Odd-sized pieces, as TCP delivers them.
    let mut progress_seen = Vec::new();
    for piece in body.chunks(65_537) {
        t.api.import_data(&mut transfer, piece, T0).unwrap();
        let p = task_field(&mut t.api, &t.session, &task, "progress")
            .as_float()
            .unwrap();
        if progress_seen.last() != Some(&p) {
            progress_seen.push(p);
        }
    }
    // Progress moved only at flushes, and every value it took was durable by then.
    let state = t.fake.0.borrow();
    assert_eq!(state.flushes as usize, progress_seen.len() - 1);
    for (p, durable) in progress_seen.iter().skip(1).zip(&state.written_at_flush) {
        let acknowledged = (p * body.len() as f64).round() as u64;
        assert!(
            acknowledged <= *durable,
            "{acknowledged} acknowledged, {durable} durable"
        );
        assert_eq!(*durable % DURABLE_EVERY, 0);
    }
    drop(state);
    t.api.finish_transfer(transfer, T0).unwrap();
    assert_eq!(
        task_field(&mut t.api, &t.session, &task, "status"),
        s("success")
    );
    assert_eq!(
        task_field(&mut t.api, &t.session, &task, "progress"),
        Value::Float(1.0)
    );
    let data = t.fake.data("sr-a", &t.uuid);
    assert_eq!(&data[..body.len()], &body[..]);
    assert!(data[body.len()..].iter().all(|&b| b == 0));
    let ops = call(
        &mut t.api,
        "VDI.get_current_operations",
        vec![s(&t.session), s(&t.vdi)],
    )
    .unwrap();
    assert_eq!(ops, Value::empty_struct());
    // The final flush made everything durable.
    let state = t.fake.0.borrow();
    assert_eq!(state.written_at_flush.last(), Some(&state.written));
    drop(state);
    let used = call(
        &mut t.api,
        "VDI.get_physical_utilisation",
        vec![s(&t.session), s(&t.vdi)],
    )
    .unwrap();
    assert!(used.as_int().unwrap() >= body.len() as i64);
}

#[test]
fn a_partial_last_sector_keeps_the_bytes_after_the_body() {
    let mut t = setup(MIB);
    let mut backend = t.fake.clone();
    keel_xenapi::StorageBackend::write(&mut backend, "sr-a", &t.uuid, 0, &[0xee; 1024]).unwrap();
    let mut transfer = t
        .api
        .start_transfer(Direction::Import, &request(&t.session, &t.uuid), None, T0)
        .unwrap();
    t.api.import_data(&mut transfer, &[1u8; 700], T0).unwrap();
    t.api.finish_transfer(transfer, T0).unwrap();
    let data = t.fake.data("sr-a", &t.uuid);
    assert!(data[..700].iter().all(|&b| b == 1));
    assert!(data[700..1024].iter().all(|&b| b == 0xee));
}

#[test]
fn export_streams_the_whole_vdi() {
    let mut t = setup(3 * MIB + 512);
    let content = pattern(3 * MIB as usize + 512);
    let mut backend = t.fake.clone();
    keel_xenapi::StorageBackend::write(&mut backend, "sr-a", &t.uuid, 0, &content).unwrap();
    let mut transfer = t
        .api
        .start_transfer(Direction::Export, &request(&t.session, &t.vdi), None, T0)
        .unwrap();
    assert_eq!(transfer.size(), content.len() as u64);
    let mut out = Vec::new();
    while t.api.export_refill(&mut transfer, T0).unwrap() {
        // A small window, like a socket that takes a little at a time.
        let n = transfer.output().len().min(10_000);
        out.extend_from_slice(&transfer.output()[..n]);
        transfer.consume(n);
        assert!(transfer.output().len() <= keel_xenapi::transfer::READ_PIECE);
    }
    assert!(transfer.is_complete());
    let task = transfer.task().to_string();
    t.api.finish_transfer(transfer, T0).unwrap();
    assert_eq!(out, content);
    assert_eq!(
        task_field(&mut t.api, &t.session, &task, "status"),
        s("success")
    );
}

#[test]
fn a_busy_vdi_refuses_changes_and_other_transfers() {
    let mut t = setup(4 * MIB);
    let transfer = t
        .api
        .start_transfer(Direction::Import, &request(&t.session, &t.vdi), None, T0)
        .unwrap();
    let in_use = |op: &str| ApiError::VdiInUse {
        vdi: t.vdi.clone(),
        operation: op.into(),
    };
    assert_eq!(
        call(&mut t.api, "VDI.destroy", vec![s(&t.session), s(&t.vdi)]),
        Err(in_use("destroy"))
    );
    assert_eq!(
        call(
            &mut t.api,
            "VDI.resize",
            vec![s(&t.session), s(&t.vdi), s("8388608")]
        ),
        Err(in_use("resize"))
    );
    assert_eq!(
        t.api
            .start_transfer(Direction::Export, &request(&t.session, &t.vdi), None, T0)
            .err(),
        Some(in_use("export"))
    );
    // A snapshot is still allowed (it does not change the VDI).
    call(&mut t.api, "VDI.snapshot", vec![s(&t.session), s(&t.vdi)]).unwrap();
    t.api.fail_transfer(
        transfer,
        ApiError::InternalError {
            message: "client went away".into(),
        },
        T0,
    );
    call(&mut t.api, "VDI.destroy", vec![s(&t.session), s(&t.vdi)]).unwrap();
}

#[test]
fn a_failed_transfer_fails_its_task_and_frees_the_vdi() {
    let mut t = setup(4 * MIB);
    let mut transfer = t
        .api
        .start_transfer(Direction::Import, &request(&t.session, &t.vdi), None, T0)
        .unwrap();
    let task = transfer.task().to_string();
    t.fake.0.borrow_mut().fail_writes_after = Some(0);
    let error = t
        .api
        .import_data(&mut transfer, &vec![1u8; 2 * MIB as usize], T0)
        .unwrap_err();
    assert_eq!(error.code(), "SR_BACKEND_FAILURE");
    t.api.fail_transfer(transfer, error, T0);
    assert_eq!(
        task_field(&mut t.api, &t.session, &task, "status"),
        s("failure")
    );
    let info = task_field(&mut t.api, &t.session, &task, "error_info");
    assert_eq!(info.as_array().unwrap()[0], s("SR_BACKEND_FAILURE"));
    t.fake.0.borrow_mut().fail_writes_after = None;
    call(&mut t.api, "VDI.destroy", vec![s(&t.session), s(&t.vdi)]).unwrap();
}

#[test]
fn transfers_are_checked_before_any_data_moves() {
    let mut t = setup(MIB);
    let start = |api: &mut XenApi, d, r: &TransferRequest, len| api.start_transfer(d, r, len, T0);
    assert_eq!(
        start(
            &mut t.api,
            Direction::Import,
            &request("OpaqueRef:bogus", &t.vdi),
            None
        )
        .err(),
        Some(ApiError::SessionInvalid {
            reference: "OpaqueRef:bogus".into()
        })
    );
    assert_eq!(
        start(
            &mut t.api,
            Direction::Export,
            &request(&t.session, "nope"),
            None
        )
        .err(),
        Some(ApiError::handle_invalid("VDI", "nope"))
    );
    let mut vhd = request(&t.session, &t.vdi);
    vhd.format = Some("vhd".into());
    assert!(matches!(
        start(&mut t.api, Direction::Import, &vhd, None),
        Err(ApiError::ValueNotSupported { .. })
    ));
    assert!(matches!(
        start(
            &mut t.api,
            Direction::Import,
            &request(&t.session, &t.vdi),
            Some(MIB + 1)
        ),
        Err(ApiError::ValueNotSupported { .. })
    ));
    let snap = call(&mut t.api, "VDI.snapshot", vec![s(&t.session), s(&t.vdi)]).unwrap();
    let snap = snap.as_str().unwrap().to_string();
    assert_eq!(
        start(
            &mut t.api,
            Direction::Import,
            &request(&t.session, &snap),
            None
        )
        .err(),
        Some(ApiError::VdiReadOnly { vdi: snap.clone() })
    );
    // A snapshot can be exported.
    let export = start(
        &mut t.api,
        Direction::Export,
        &request(&t.session, &snap),
        None,
    )
    .unwrap();
    t.api
        .fail_transfer(export, ApiError::TooManyPendingTasks, T0);
    // A body longer than the VDI is refused as it arrives, too.
    let mut transfer = start(
        &mut t.api,
        Direction::Import,
        &request(&t.session, &t.vdi),
        None,
    )
    .unwrap();
    assert!(t
        .api
        .import_data(&mut transfer, &vec![0u8; MIB as usize + 1], T0)
        .is_err());
    t.api
        .fail_transfer(transfer, ApiError::TooManyPendingTasks, T0);
    assert_eq!(t.fake.0.borrow().writes, 0, "nothing was written");
}

#[test]
fn the_clients_task_reports_the_transfer_and_cancelling_it_stops_the_import() {
    let mut t = setup(32 * MIB);
    let task = call(
        &mut t.api,
        "task.create",
        vec![s(&t.session), s("upload"), s("")],
    )
    .unwrap()
    .as_str()
    .unwrap()
    .to_string();
    let mut req = request(&t.session, &t.vdi);
    req.task_id = Some(task.clone());
    let mut transfer = t
        .api
        .start_transfer(Direction::Import, &req, None, T0)
        .unwrap();
    assert_eq!(transfer.task(), task);
    t.api
        .import_data(&mut transfer, &vec![3u8; 9 * MIB as usize], T0)
        .unwrap();
    let progress = task_field(&mut t.api, &t.session, &task, "progress")
        .as_float()
        .unwrap();
    assert!(progress > 0.0, "8 MiB of 32 were made durable");
    call(&mut t.api, "task.cancel", vec![s(&t.session), s(&task)]).unwrap();
    let error = t
        .api
        .import_data(&mut transfer, &[3u8; 512], T0)
        .unwrap_err();
    assert_eq!(error, ApiError::TaskCancelled { task: task.clone() });
    t.api.fail_transfer(transfer, error, T0);
    assert_eq!(
        task_field(&mut t.api, &t.session, &task, "status"),
        s("cancelled")
    );
    // The VDI is usable again.
    call(
        &mut t.api,
        "VDI.resize",
        vec![s(&t.session), s(&t.vdi), s("67108864")],
    )
    .unwrap();
    // A finished task cannot carry a new transfer.
    assert_eq!(
        t.api
            .start_transfer(Direction::Export, &req, None, T0)
            .err(),
        Some(ApiError::handle_invalid("task", &task))
    );
}

#[test]
fn routes_are_recognised_by_path() {
    assert_eq!(
        Direction::from_path("/import_raw_vdi?session_id=x"),
        Some(Direction::Import)
    );
    assert_eq!(
        Direction::from_path("/export_raw_vdi"),
        Some(Direction::Export)
    );
    assert_eq!(Direction::from_path("/import_raw_vdi/x"), None);
    assert_eq!(Direction::Import.path(), "/import_raw_vdi");
}
