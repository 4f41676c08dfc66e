//! The data source calls and the metering's view of the VMs (metrics.rs) against a real
//! `keel_metering::Metering` fed with figures: `host.get_data_sources`,
//! `host.query_data_source`, `VM.*_data_source`, `host_metrics`/`VM_metrics` filled from the
//! samples, the VMs the kernel samples, the session check of the HTTP handlers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod guest_fake;

use std::cell::RefCell;
use std::rc::Rc;

use common::*;
use keel_xenapi::keel_metering::figures::{HostFigures, VmFigures};
use keel_xenapi::keel_metering::Metering;
use keel_xenapi::{ApiError, Value, XenApi};

const T0_MS: u64 = 1_700_000_000_000;
const GIB: u64 = 1 << 30;

use guest_fake::FakeGuests;

struct Fixture {
    api: XenApi,
    metering: Rc<RefCell<Metering>>,
    session: String,
    host: String,
    dom0_uuid: String,
}

fn fixture() -> Fixture {
    fixture_with(None)
}

/// The fixture, with a guest backend (a host under Xen) if given.
fn fixture_with(guests: Option<FakeGuests>) -> Fixture {
    let mut probe = api();
    let session = login(&mut probe);
    let host = call(&mut probe, "host.get_all", vec![s(&session)]).unwrap();
    let host = host.as_array().unwrap()[0].as_str().unwrap().to_string();
    let host_uuid = call(&mut probe, "host.get_uuid", vec![s(&session), s(&host)]).unwrap();
    let metering = Rc::new(RefCell::new(
        Metering::new(host_uuid.as_str().unwrap()).unwrap(),
    ));
    let mut config = config();
    config.metering = Some(Box::new(metering.clone()));
    if let Some(guests) = guests {
        config.guests = Some(Box::new(guests));
    }
    // Same entropy, same references and uuids as the probe.
    let mut api = api_with(config);
    let session = login(&mut api);
    let vms = api.metered_vms();
    assert_eq!(vms.len(), 1, "only the control domain runs: {vms:?}");
    let dom0 = &vms[0];
    assert!(dom0.is_control_domain);
    assert_eq!(dom0.domid, 0);
    Fixture {
        dom0_uuid: dom0.uuid.clone(),
        api,
        metering,
        session,
        host,
    }
}

/// Three samples 5 s apart: the host's CPU 0 busy half the time, CPU 1 idle; dom0's vCPU
/// busy a quarter of the time.
fn sample(f: &Fixture) {
    for step in 0..3u64 {
        let host = HostFigures {
            cpu_busy_ns: vec![step * 2_500_000_000, 0],
            memory_total_bytes: 8 * GIB,
            memory_free_bytes: 3 * GIB,
            heap_used_bytes: 0,
            pifs: Vec::new(),
        };
        let dom0 = VmFigures {
            uuid: f.dom0_uuid.clone(),
            instance: 1,
            vcpu_time_ns: vec![step * 1_250_000_000],
            memory_actual_bytes: GIB,
            memory_target_bytes: GIB,
            ..VmFigures::default()
        };
        let report = f
            .metering
            .borrow_mut()
            .sample(T0_MS + step * 5_000, &host, &[dom0]);
        assert_eq!(report.host_error, None);
        assert!(report.vm_errors.is_empty(), "{report:?}");
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| field(r, "name_label").as_str().unwrap().to_string())
        .collect()
}

#[test]
fn host_data_sources_and_queries() {
    let mut f = fixture();
    let (session, host) = (f.session.clone(), f.host.clone());
    // Nothing sampled yet: no sources, and a query names the missing source.
    let empty = call(
        &mut f.api,
        "host.get_data_sources",
        vec![s(&session), s(&host)],
    )
    .unwrap();
    assert_eq!(empty, Value::Array(Vec::new()));
    sample(&f);
    let list = call(
        &mut f.api,
        "host.get_data_sources",
        vec![s(&session), s(&host)],
    )
    .unwrap();
    let names = names(&list);
    for want in [
        "cpu0",
        "cpu1",
        "cpu_avg",
        "memory_total_kib",
        "memory_free_kib",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let cpu0 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| field(r, "name_label") == &s("cpu0"));
    let cpu0 = cpu0.unwrap();
    assert_eq!(field(cpu0, "enabled"), &Value::Bool(true));
    assert_eq!(field(cpu0, "max"), &Value::Float(1.0));
    let busy = call(
        &mut f.api,
        "host.query_data_source",
        vec![s(&session), s(&host), s("cpu0")],
    )
    .unwrap();
    assert!((busy.as_float().unwrap() - 0.5).abs() < 1e-9, "{busy:?}");
    let free = call(
        &mut f.api,
        "host.query_data_source",
        vec![s(&session), s(&host), s("memory_free_kib")],
    )
    .unwrap();
    assert_eq!(free.as_float(), Some((3 * GIB / 1024) as f64));
    assert!(matches!(
        call(
            &mut f.api,
            "host.query_data_source",
            vec![s(&session), s(&host), s("loadavg")],
        ),
        Err(ApiError::InternalError { .. })
    ));
    call(
        &mut f.api,
        "host.record_data_source",
        vec![s(&session), s(&host), s("cpu1")],
    )
    .unwrap();
    // A bad session is refused before anything is read.
    assert!(matches!(
        call(
            &mut f.api,
            "host.get_data_sources",
            vec![s("OpaqueRef:nonsense"), s(&host)],
        ),
        Err(ApiError::SessionInvalid { .. })
    ));
}

#[test]
fn vm_data_sources_and_metrics_records() {
    let mut f = fixture();
    sample(&f);
    let session = f.session.clone();
    let dom0 = call(
        &mut f.api,
        "VM.get_by_uuid",
        vec![s(&session), s(&f.dom0_uuid)],
    )
    .unwrap();
    let dom0 = dom0.as_str().unwrap().to_string();
    let list = call(
        &mut f.api,
        "VM.get_data_sources",
        vec![s(&session), s(&dom0)],
    )
    .unwrap();
    assert_eq!(names(&list), ["cpu0", "memory", "memory_target"]);
    let cpu = call(
        &mut f.api,
        "VM.query_data_source",
        vec![s(&session), s(&dom0), s("cpu0")],
    )
    .unwrap();
    assert!((cpu.as_float().unwrap() - 0.25).abs() < 1e-9, "{cpu:?}");
    assert!(matches!(
        call(
            &mut f.api,
            "VM.query_data_source",
            vec![s(&session), s(&dom0), s("vbd_xvda_read")],
        ),
        Err(ApiError::InternalError { .. })
    ));
    // A template never ran here: no sources, and queries fail.
    let templates = call(&mut f.api, "VM.get_all", vec![s(&session)]).unwrap();
    let template = templates
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .find(|vm| vm != &dom0)
        .unwrap();
    let none = call(
        &mut f.api,
        "VM.get_data_sources",
        vec![s(&session), s(&template)],
    )
    .unwrap();
    assert_eq!(none, Value::Array(Vec::new()));

    // host_metrics and VM_metrics follow the samples.
    let now = T0;
    f.api.apply_metering(now);
    let metrics = call(&mut f.api, "host_metrics.get_all", vec![s(&session)]).unwrap();
    let metrics = metrics.as_array().unwrap()[0].as_str().unwrap().to_string();
    let free = call(
        &mut f.api,
        "host_metrics.get_memory_free",
        vec![s(&session), s(&metrics)],
    )
    .unwrap();
    assert_eq!(free.as_int(), Some((3 * GIB) as i64));
    let total = call(
        &mut f.api,
        "host_metrics.get_memory_total",
        vec![s(&session), s(&metrics)],
    )
    .unwrap();
    assert_eq!(total.as_int(), Some((8 * GIB) as i64));
    // The control domain's `memory` is Keel's heap, which moves all the time: its kept
    // VM_metrics record is not rewritten from it.
    let vm_metrics = call(&mut f.api, "VM.get_metrics", vec![s(&session), s(&dom0)]).unwrap();
    let actual = call(
        &mut f.api,
        "VM_metrics.get_memory_actual",
        vec![s(&session), vm_metrics],
    )
    .unwrap();
    assert_ne!(actual.as_int(), Some(GIB as i64));
}

#[test]
fn sessions_and_vm_lists_for_the_http_handlers() {
    let mut f = fixture();
    assert!(f.api.session_is_valid(&f.session));
    assert!(!f.api.session_is_valid("OpaqueRef:nonsense"));
    // A template is a VM the host knows (it is not destroyed) but does not meter.
    let known = f.api.vm_uuids();
    assert!(known.contains(&f.dom0_uuid));
    assert!(known.len() > 1);
    let session = f.session.clone();
    call(&mut f.api, "session.logout", vec![s(&session)]).unwrap();
    assert!(!f.api.session_is_valid(&session));
}

/// Under Xen, `host_metrics.memory_free` is Xen's free memory at the moment (what a client
/// checks right after `VM.start`), never a sample taken before the guest started.
#[test]
fn under_xen_memory_free_is_xens_figure_now_not_the_last_sample() {
    let guests = FakeGuests::with_memory(5 * GIB);
    let f = fixture_with(Some(guests.clone()));
    sample(&f);
    let mut f = f;
    guests.0.borrow_mut().free_memory = 2 * GIB;
    f.api.apply_metering(T0);
    let session = f.session.clone();
    let metrics = call(&mut f.api, "host_metrics.get_all", vec![s(&session)]).unwrap();
    let metrics = metrics.as_array().unwrap()[0].as_str().unwrap().to_string();
    let free = call(
        &mut f.api,
        "host_metrics.get_memory_free",
        vec![s(&session), s(&metrics)],
    )
    .unwrap();
    assert_eq!(
        free.as_int(),
        Some((2 * GIB) as i64),
        "not the sampled 3 GiB"
    );
    let total = call(
        &mut f.api,
        "host_metrics.get_memory_total",
        vec![s(&session), s(&metrics)],
    )
    .unwrap();
    assert_eq!(
        total.as_int(),
        Some((8 * GIB) as i64),
        "the total still comes from the samples"
    );
}
