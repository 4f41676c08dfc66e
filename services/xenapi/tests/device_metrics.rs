//! `VBD_metrics` and `VIF_metrics` filled from the metering's samples
//! (`XenApi::apply_metering`, docs/metering.md): a running guest with a disk and a VIF, its
//! blkback and netback counters sampled into the metering, the rates read back through the
//! XenAPI; the switch's counters no longer write the VIFs' rates once a metering is there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod guest_fake;
mod storage_fake;
mod switch_fake;

use std::cell::RefCell;
use std::rc::Rc;

use common::*;
use guest_fake::FakeGuests;
use keel_xenapi::handlers::vm_builtin::PVH_TEMPLATE_NAME;
use keel_xenapi::keel_metering::figures::{HostFigures, VbdFigures, VifFigures, VmFigures};
use keel_xenapi::keel_metering::Metering;
use keel_xenapi::{
    ApiError, ByteCounters, NetworkCounters, StorageBackend, Timestamp, Value, XenApi,
};
use storage_fake::FakeStorage;
use switch_fake::FakeSwitch;

const MIB: u64 = 1 << 20;
const KERNEL: &[u8] = b"\x7fELF kernel image for tests";

struct Host {
    api: XenApi,
    storage: FakeStorage,
    metering: Rc<RefCell<Metering>>,
    session: String,
    now: Timestamp,
}

impl Client for Host {
    fn call(&mut self, method: &str, args: Vec<Value>) -> Result<Value, ApiError> {
        call_driven(&mut self.api, &self.session, self.now, method, args)
    }
}

impl Host {
    fn new() -> Host {
        let storage = FakeStorage::two_srs(256 * MIB);
        let mut probe = api();
        let session = login(&mut probe);
        let host = call(&mut probe, "host.get_all", vec![s(&session)]).unwrap();
        let host = host.as_array().unwrap()[0].as_str().unwrap().to_string();
        let uuid = call(&mut probe, "host.get_uuid", vec![s(&session), s(&host)]).unwrap();
        let metering = Rc::new(RefCell::new(Metering::new(uuid.as_str().unwrap()).unwrap()));
        let mut config = config();
        config.storage = Some(Box::new(storage.clone()));
        config.guests = Some(Box::new(FakeGuests::with_memory(4096 * MIB)));
        config.network = Some(Box::new(FakeSwitch::default()));
        config.metering = Some(Box::new(metering.clone()));
        // Same entropy as the probe: the same host uuid.
        let mut api = api_with(config);
        let session = login(&mut api);
        Host {
            api,
            storage,
            metering,
            session,
            now: T0,
        }
    }

    fn vdi(&mut self, name: &str, bytes: &[u8], size: u64) -> String {
        let sr = text(&self.ok("SR.get_by_uuid", vec![s("sr-a")]));
        let vdi = text(&self.ok(
            "VDI.create",
            vec![record(&[
                ("SR", s(&sr)),
                ("name_label", s(name)),
                ("virtual_size", Value::Int(size as i64)),
            ])],
        ));
        if !bytes.is_empty() {
            let uuid = text(&self.get("VDI", &vdi, "uuid"));
            let mut data = bytes.to_vec();
            data.resize(512, 0);
            self.storage.clone().write("sr-a", &uuid, 0, &data).unwrap();
        }
        vdi
    }

    /// A running guest with a data disk (`userdevice` 0) and one VIF (device 0): the VM,
    /// its uuid, domid, VBD and VIF.
    fn running_guest(&mut self) -> (String, String, u32, String, String) {
        let found = self.ok("VM.get_by_name_label", vec![s(PVH_TEMPLATE_NAME)]);
        let template = text(&found.as_array().unwrap()[0]);
        let vm = text(&self.ok("VM.clone", vec![s(&template), s("metered")]));
        self.ok("VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]);
        let kernel = self.vdi("vmlinuz", KERNEL, MIB);
        let kernel_uuid = text(&self.get("VDI", &kernel, "uuid"));
        self.ok(
            "VM.set_PV_kernel",
            vec![s(&vm), s(&format!("vdi:{kernel_uuid}"))],
        );
        let disk = self.vdi("data", &[], 8 * MIB);
        let vbd = text(&self.ok(
            "VBD.create",
            vec![record(&[
                ("VM", s(&vm)),
                ("VDI", s(&disk)),
                ("userdevice", s("0")),
                ("mode", s("RW")),
                ("type", s("Disk")),
                ("bootable", Value::Bool(false)),
                ("unpluggable", Value::Bool(true)),
                ("empty", Value::Bool(false)),
                ("other_config", record(&[])),
                ("qos_algorithm_type", s("")),
                ("qos_algorithm_params", record(&[])),
            ])],
        ));
        let network = text(&self.ok(
            "network.create",
            vec![record(&[
                ("name_label", s("tenant-a")),
                ("name_description", s("")),
                ("other_config", Value::empty_struct()),
            ])],
        ));
        let vif = text(&self.ok(
            "VIF.create",
            vec![record(&[
                ("device", s("0")),
                ("network", s(&network)),
                ("VM", s(&vm)),
                ("MAC", s("")),
                ("MTU", s("1500")),
                ("other_config", Value::empty_struct()),
                ("qos_algorithm_type", s("")),
                ("qos_algorithm_params", Value::empty_struct()),
            ])],
        ));
        self.ok(
            "VM.start",
            vec![s(&vm), Value::Bool(false), Value::Bool(false)],
        );
        let domid = u32::try_from(self.get("VM", &vm, "domid").as_int().unwrap()).unwrap();
        let uuid = text(&self.get("VM", &vm, "uuid"));
        (vm, uuid, domid, vbd, vif)
    }

    /// One sample at `at_s` seconds after T0 of the guest's counters.
    fn sample(&mut self, at_s: u64, uuid: &str, disk: (u64, u64), net: (u64, u64)) {
        let host = HostFigures {
            cpu_busy_ns: vec![0],
            memory_total_bytes: 8 << 30,
            memory_free_bytes: 4 << 30,
            heap_used_bytes: 0,
            pifs: Vec::new(),
        };
        let guest = VmFigures {
            uuid: uuid.to_string(),
            instance: 1,
            vcpu_time_ns: vec![0],
            memory_actual_bytes: 128 * MIB,
            memory_target_bytes: 128 * MIB,
            vbds: vec![VbdFigures {
                device: "xvda".into(),
                read_bytes: disk.0,
                write_bytes: disk.1,
                provisioned_bytes: 8 * MIB,
                ..VbdFigures::default()
            }],
            vifs: vec![VifFigures {
                index: 0,
                rx_bytes: net.0,
                tx_bytes: net.1,
                ..VifFigures::default()
            }],
        };
        let report = self.metering.borrow_mut().sample(
            T0.unix_ms + at_s * 1000,
            &host,
            std::slice::from_ref(&guest),
        );
        assert!(report.vm_errors.is_empty(), "{report:?}");
    }

    fn kbs(&mut self, class: &str, metrics: &str) -> (Value, Value) {
        (
            self.get(class, metrics, "io_read_kbs"),
            self.get(class, metrics, "io_write_kbs"),
        )
    }
}

#[test]
fn vbd_and_vif_metrics_are_the_sampled_rates() {
    let mut h = Host::new();
    let (_vm, uuid, domid, vbd, vif) = h.running_guest();
    assert_eq!(text(&h.get("VBD", &vbd, "device")), "xvda");
    assert_eq!(h.get("VBD", &vbd, "currently_attached"), Value::Bool(true));
    let vbd_metrics = text(&h.get("VBD", &vbd, "metrics"));
    let vif_metrics = text(&h.get("VIF", &vif, "metrics"));
    let before = (
        h.kbs("VBD_metrics", &vbd_metrics),
        h.kbs("VIF_metrics", &vif_metrics),
    );
    // A first sample only sets the counters' baseline: nothing known, nothing written.
    h.sample(5, &uuid, (0, 0), (0, 0));
    h.api.apply_metering(h.now);
    assert_eq!(h.kbs("VBD_metrics", &vbd_metrics), before.0);
    assert_eq!(h.kbs("VIF_metrics", &vif_metrics), before.1);
    // 5 s later: 5 MiB read and 10 MiB written, 2.5 MiB received and 5 MiB sent.
    h.sample(10, &uuid, (5 * MIB, 10 * MIB), (5 * MIB / 2, 5 * MIB));
    h.now = h.now.plus_ms(10_000);
    h.api.apply_metering(h.now);
    assert_eq!(
        h.kbs("VBD_metrics", &vbd_metrics),
        (Value::Float(1024.0), Value::Float(2048.0))
    );
    assert_eq!(
        h.kbs("VIF_metrics", &vif_metrics),
        (Value::Float(512.0), Value::Float(1024.0))
    );
    assert_eq!(
        h.get("VBD_metrics", &vbd_metrics, "last_updated"),
        Value::DateTime(h.now.to_xapi_datetime())
    );
    // The switch's counters leave the VIF's rates to the metering (one writer).
    let counters = |rx: u64| NetworkCounters {
        pifs: Vec::new(),
        vifs: vec![(
            (domid, 0),
            ByteCounters {
                rx_bytes: rx,
                tx_bytes: rx,
            },
        )],
    };
    h.api.record_network_counters(&counters(0), h.now);
    h.now = h.now.plus_ms(1000);
    h.api.record_network_counters(&counters(100 * MIB), h.now);
    assert_eq!(
        h.kbs("VIF_metrics", &vif_metrics),
        (Value::Float(512.0), Value::Float(1024.0))
    );
    // Idle for 5 s: the rates fall to zero.
    h.sample(15, &uuid, (5 * MIB, 10 * MIB), (5 * MIB / 2, 5 * MIB));
    h.api.apply_metering(h.now);
    assert_eq!(
        h.kbs("VBD_metrics", &vbd_metrics),
        (Value::Float(0.0), Value::Float(0.0))
    );
    assert_eq!(
        h.kbs("VIF_metrics", &vif_metrics),
        (Value::Float(0.0), Value::Float(0.0))
    );
}
