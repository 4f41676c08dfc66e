//! VBD and VBD_metrics through the API against an in-memory toolstack and storage manager:
//! records, `userdevice` and device names, CD drives and media, disks attached at start and
//! detached at shutdown, hot-plug and hot-unplug, `VDI_IN_USE`, `allowed_operations`,
//! events, and a VM's disks in `VM.clone`, `VM.copy`, `VM.snapshot` and `VM.destroy`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod guest_fake;
mod storage_fake;

use std::cell::RefCell;
use std::rc::Rc;

use common::*;
use guest_fake::FakeGuests;
use keel_xenapi::handlers::vm_builtin::PVH_TEMPLATE_NAME;
use keel_xenapi::keel_hostdb::Database;
use keel_xenapi::{ApiError, DatabaseSink, SaveFailed, StorageBackend, Timestamp, Value, XenApi};
use storage_fake::FakeStorage;

const MIB: u64 = 1 << 20;
const KERNEL: &[u8] = b"\x7fELF kernel image for tests";

/// Keeps the last database saved.
#[derive(Clone, Default)]
struct Disk(Rc<RefCell<Option<Database>>>);

impl DatabaseSink for Disk {
    fn save(&mut self, database: &Database) -> Result<(), SaveFailed> {
        *self.0.borrow_mut() = Some(database.clone());
        Ok(())
    }
}

struct Host {
    api: XenApi,
    storage: FakeStorage,
    guests: FakeGuests,
    disk: Disk,
    session: String,
    now: Timestamp,
}

fn boot(storage: &FakeStorage, saved: Option<Database>) -> Host {
    // A rebooted host draws other references than the first boot did.
    let seed = if saved.is_some() {
        0x0bad_cafe
    } else {
        0x1234_5678
    };
    let guests = FakeGuests::with_memory(4096 * MIB);
    let disk = Disk::default();
    let mut config = config();
    config.storage = Some(Box::new(storage.clone()));
    config.guests = Some(Box::new(guests.clone()));
    config.restore = saved;
    config.database_sink = Some(Box::new(disk.clone()));
    let mut api = XenApi::new(config, Box::new(TestEntropy(seed)), T0).expect("service");
    let session = login(&mut api);
    Host {
        api,
        storage: storage.clone(),
        guests,
        disk,
        session,
        now: T0,
    }
}

fn host() -> Host {
    boot(&FakeStorage::two_srs(256 * MIB), None)
}

impl Client for Host {
    fn call(&mut self, method: &str, args: Vec<Value>) -> Result<Value, ApiError> {
        call_driven(&mut self.api, &self.session, self.now, method, args)
    }
}

impl Host {
    fn flag(&mut self, class: &str, r: &str, field: &str) -> bool {
        self.get(class, r, field).as_bool().unwrap()
    }

    fn sr(&mut self, uuid: &str) -> String {
        text(&self.ok("SR.get_by_uuid", vec![s(uuid)])).to_string()
    }

    /// A VDI of `size` bytes in SR `sr_uuid`; returns its reference.
    fn vdi_in(&mut self, sr_uuid: &str, name: &str, size: u64) -> String {
        let sr = self.sr(sr_uuid);
        let args = record(&[
            ("SR", s(&sr)),
            ("name_label", s(name)),
            ("virtual_size", Value::Int(size as i64)),
        ]);
        text(&self.ok("VDI.create", vec![args])).to_string()
    }

    fn vdi(&mut self, name: &str) -> String {
        self.vdi_in("sr-a", name, 4 * MIB)
    }

    fn uuid(&mut self, class: &str, r: &str) -> String {
        text(&self.get(class, r, "uuid")).to_string()
    }

    /// A halted VM that can start (its kernel in a VDI), with no VBDs.
    fn vm(&mut self, name: &str) -> String {
        let found = self.ok("VM.get_by_name_label", vec![s(PVH_TEMPLATE_NAME)]);
        let template = sorted_strings(&found).remove(0);
        let vm = text(&self.ok("VM.clone", vec![s(&template), s(name)])).to_string();
        self.ok("VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]);
        let kernel = self.vdi("vmlinuz");
        let uuid = self.uuid("VDI", &kernel);
        let mut data = KERNEL.to_vec();
        data.resize(512, 0);
        self.storage.clone().write("sr-a", &uuid, 0, &data).unwrap();
        self.ok("VDI.resize", vec![s(&kernel), Value::Int(4 * MIB as i64)]);
        self.ok("VM.set_PV_kernel", vec![s(&vm), s(&format!("vdi:{uuid}"))]);
        vm
    }

    fn vbd(&mut self, vm: &str, vdi: &str, userdevice: &str, mode: &str, kind: &str) -> String {
        let args = record(&[
            ("VM", s(vm)),
            ("VDI", s(vdi)),
            ("userdevice", s(userdevice)),
            ("mode", s(mode)),
            ("type", s(kind)),
            ("bootable", Value::Bool(userdevice == "0")),
            ("unpluggable", Value::Bool(true)),
            ("empty", Value::Bool(false)),
            ("other_config", record(&[])),
            ("qos_algorithm_type", s("")),
            ("qos_algorithm_params", record(&[])),
        ]);
        let vbd = self.call("VBD.create", vec![args]);
        text(&vbd.unwrap_or_else(|e| panic!("VBD.create: {e:?}"))).to_string()
    }

    fn start(&mut self, vm: &str) {
        self.ok(
            "VM.start",
            vec![s(vm), Value::Bool(false), Value::Bool(false)],
        );
    }

    fn domid(&mut self, vm: &str) -> u32 {
        u32::try_from(self.get("VM", vm, "domid").as_int().unwrap()).unwrap()
    }

    fn allowed(&mut self, vbd: &str) -> Vec<String> {
        sorted_strings(&self.get("VBD", vbd, "allowed_operations"))
    }
}

#[test]
fn records_carry_every_xapi_field_and_both_sides_see_the_vbd() {
    let mut h = host();
    let vm = h.vm("web");
    let vdi = h.vdi("root");
    let from = h.api.last_event_id();
    let vbd = h.vbd(&vm, &vdi, "0", "RW", "Disk");
    let rec = h.ok("VBD.get_record", vec![s(&vbd)]);
    for name in [
        "uuid",
        "allowed_operations",
        "current_operations",
        "VM",
        "VDI",
        "device",
        "userdevice",
        "bootable",
        "mode",
        "type",
        "unpluggable",
        "storage_lock",
        "empty",
        "other_config",
        "currently_attached",
        "status_code",
        "status_detail",
        "runtime_properties",
        "qos_algorithm_type",
        "qos_algorithm_params",
        "qos_supported_algorithms",
        "metrics",
    ] {
        field(&rec, name);
    }
    assert_eq!(text(field(&rec, "device")), "xvda");
    assert_eq!(text(field(&rec, "userdevice")), "0");
    assert_eq!(field(&rec, "currently_attached"), &Value::Bool(false));
    assert_eq!(field(&rec, "empty"), &Value::Bool(false));
    assert_eq!(field(&rec, "bootable"), &Value::Bool(true));
    let metrics = text(field(&rec, "metrics")).to_string();
    let m = h.ok("VBD_metrics.get_record", vec![s(&metrics)]);
    for name in [
        "uuid",
        "io_read_kbs",
        "io_write_kbs",
        "last_updated",
        "other_config",
    ] {
        field(&m, name);
    }
    assert_eq!(sorted_strings(&h.get("VM", &vm, "VBDs")), vec![vbd.clone()]);
    assert_eq!(
        sorted_strings(&h.get("VDI", &vdi, "VBDs")),
        vec![vbd.clone()]
    );
    assert_eq!(
        sorted_strings(&h.ok("VBD.get_all", vec![])),
        vec![vbd.clone()]
    );
    let uuid = h.uuid("VBD", &vbd);
    assert_eq!(text(&h.ok("VBD.get_by_uuid", vec![s(&uuid)])), vbd);
    // The VBD's add and the VM's and VDI's changed VBDs were published.
    let events: Vec<(String, String)> = h
        .api
        .db()
        .events()
        .since(from)
        .unwrap()
        .map(|e| (e.class.to_string(), e.reference.clone()))
        .collect();
    for (class, r) in [("VBD", &vbd), ("VM", &vm), ("VDI", &vdi)] {
        assert!(
            events.iter().any(|(c, e)| c == class && e == r),
            "no {class} event in {events:?}"
        );
    }
    // Generated setters of the writable fields.
    h.ok("VBD.set_bootable", vec![s(&vbd), Value::Bool(false)]);
    h.ok("VBD.add_to_other_config", vec![s(&vbd), s("k"), s("v")]);
    assert!(!h.flag("VBD", &vbd, "bootable"));
    // Destroying it takes the metrics and both inverses.
    h.ok("VBD.destroy", vec![s(&vbd)]);
    assert!(sorted_strings(&h.get("VM", &vm, "VBDs")).is_empty());
    assert!(sorted_strings(&h.get("VDI", &vdi, "VBDs")).is_empty());
    assert_eq!(
        code(&h.err("VBD_metrics.get_record", vec![s(&metrics)])),
        "HANDLE_INVALID"
    );
}

#[test]
fn userdevices_name_devices_and_are_unique_per_vm() {
    let mut h = host();
    let vm = h.vm("web");
    let a = h.vdi("a");
    let b = h.vdi("b");
    let c = h.vdi("c");
    let first = h.vbd(&vm, &a, "autodetect", "RW", "Disk");
    assert_eq!(text(&h.get("VBD", &first, "userdevice")), "0");
    let third = h.vbd(&vm, &b, "2", "RW", "Disk");
    assert_eq!(text(&h.get("VBD", &third, "device")), "xvdc");
    let second = h.vbd(&vm, &c, "autodetect", "RO", "Disk");
    assert_eq!(text(&h.get("VBD", &second, "userdevice")), "1");
    assert_eq!(text(&h.get("VBD", &second, "device")), "xvdb");
    for bad in ["16", "01", "-1", "+1", "x", "", "99999999999999999999"] {
        let args = record(&[("VM", s(&vm)), ("VDI", s(&a)), ("userdevice", s(bad))]);
        assert_eq!(
            code(&h.err("VBD.create", vec![args])),
            "INVALID_DEVICE",
            "{bad:?}"
        );
    }
    let args = record(&[("VM", s(&vm)), ("VDI", s(&a)), ("userdevice", s("2"))]);
    assert_eq!(
        h.err("VBD.create", vec![args]).description(),
        ["DEVICE_ALREADY_EXISTS", "2"]
    );
    assert_eq!(
        code(&h.err("VBD.set_userdevice", vec![s(&third), s("1")])),
        "DEVICE_ALREADY_EXISTS"
    );
    h.ok("VBD.set_userdevice", vec![s(&third), s("15")]);
    assert_eq!(text(&h.get("VBD", &third, "device")), "xvdp");
    let free = h.ok("VM.get_allowed_VBD_devices", vec![s(&vm)]);
    let mut free: Vec<u32> = sorted_strings(&free)
        .iter()
        .map(|d| d.parse().unwrap())
        .collect();
    free.sort();
    assert_eq!(free, (2..15).collect::<Vec<u32>>());
    // A disk needs a VDI; a read-only VDI (a snapshot) is not attached read-write.
    let args = record(&[("VM", s(&vm)), ("userdevice", s("5"))]);
    assert_eq!(
        h.err("VBD.create", vec![args]).description(),
        ["VBD_NOT_REMOVABLE_MEDIA", "in constructor"]
    );
    let snap = text(&h.ok("VDI.snapshot", vec![s(&a)])).to_string();
    let args = record(&[("VM", s(&vm)), ("VDI", s(&snap)), ("mode", s("RW"))]);
    assert_eq!(code(&h.err("VBD.create", vec![args])), "VDI_READONLY");
    let ro = h.vbd(&vm, &snap, "6", "RO", "Disk");
    assert_eq!(
        code(&h.err("VBD.set_mode", vec![s(&ro), s("RW")])),
        "VDI_READONLY"
    );
    // xapi's internal VDIs are never attached.
    let sr = h.sr("sr-a");
    let args = record(&[
        ("SR", s(&sr)),
        ("name_label", s("statefile")),
        ("virtual_size", Value::Int(MIB as i64)),
        ("type", s("ha_statefile")),
    ]);
    let statefile = text(&h.ok("VDI.create", vec![args])).to_string();
    let args = record(&[
        ("VM", s(&vm)),
        ("VDI", s(&statefile)),
        ("userdevice", s("7")),
    ]);
    assert_eq!(
        h.err("VBD.create", vec![args]).description(),
        ["VDI_INCOMPATIBLE_TYPE", statefile.as_str(), "ha_statefile"]
    );
    // The control domain gets none.
    let host_ref = h.api.host_ref().to_string();
    let dom0 = text(&h.get("host", &host_ref, "control_domain")).to_string();
    let args = record(&[("VM", s(&dom0)), ("VDI", s(&a))]);
    assert_eq!(
        code(&h.err("VBD.create", vec![args])),
        "OPERATION_NOT_ALLOWED"
    );
}

#[test]
fn cd_drives_are_read_only_and_take_only_isos() {
    let mut h = host();
    let vm = h.vm("web");
    let disk = h.vdi("root");
    let iso = h.vdi("debian-12.iso");
    let other_iso = h.vdi("tools.ISO");
    let args = record(&[("VM", s(&vm)), ("type", s("CD")), ("mode", s("RW"))]);
    assert_eq!(
        code(&h.err("VBD.create", vec![args])),
        "VBD_CDS_MUST_BE_READONLY"
    );
    let args = record(&[
        ("VM", s(&vm)),
        ("VDI", s(&disk)),
        ("type", s("CD")),
        ("mode", s("RO")),
    ]);
    assert_eq!(code(&h.err("VBD.create", vec![args])), "VDI_IS_NOT_ISO");
    // An empty drive.
    let args = record(&[
        ("VM", s(&vm)),
        ("VDI", s("OpaqueRef:NULL")),
        ("userdevice", s("3")),
        ("type", s("CD")),
        ("mode", s("RO")),
        ("empty", Value::Bool(true)),
    ]);
    let cd = text(&h.ok("VBD.create", vec![args])).to_string();
    assert!(h.flag("VBD", &cd, "empty"));
    assert_eq!(h.allowed(&cd), ["insert"]);
    assert_eq!(code(&h.err("VBD.eject", vec![s(&cd)])), "VBD_IS_EMPTY");
    assert_eq!(
        code(&h.err("VBD.insert", vec![s(&cd), s(&disk)])),
        "VDI_IS_NOT_ISO"
    );
    h.ok("VBD.insert", vec![s(&cd), s(&iso)]);
    assert!(!h.flag("VBD", &cd, "empty"));
    assert_eq!(text(&h.get("VBD", &cd, "VDI")), iso);
    assert_eq!(
        sorted_strings(&h.get("VDI", &iso, "VBDs")),
        vec![cd.clone()]
    );
    assert_eq!(h.allowed(&cd), ["eject"]);
    assert_eq!(
        h.err("VBD.insert", vec![s(&cd), s(&other_iso)])
            .description(),
        ["VBD_NOT_EMPTY", cd.as_str()]
    );
    h.ok("VBD.eject", vec![s(&cd)]);
    assert!(h.flag("VBD", &cd, "empty"));
    assert_eq!(text(&h.get("VBD", &cd, "VDI")), "OpaqueRef:NULL");
    assert!(sorted_strings(&h.get("VDI", &iso, "VBDs")).is_empty());
    assert_eq!(
        code(&h.err("VBD.set_mode", vec![s(&cd), s("RW")])),
        "VBD_CDS_MUST_BE_READONLY"
    );
    // A disk is not removable media.
    let d = h.vbd(&vm, &disk, "0", "RW", "Disk");
    assert_eq!(
        code(&h.err("VBD.eject", vec![s(&d)])),
        "VBD_NOT_REMOVABLE_MEDIA"
    );
    assert_eq!(
        code(&h.err("VBD.insert", vec![s(&d), s(&iso)])),
        "VBD_NOT_REMOVABLE_MEDIA"
    );
    assert!(
        h.allowed(&d).is_empty(),
        "a halted VM's disk: nothing to do"
    );
}

#[test]
fn start_attaches_every_vbd_in_order_and_shutdown_detaches_them() {
    let mut h = host();
    let vm = h.vm("web");
    let root = h.vdi("root");
    let data = h.vdi_in("sr-b", "data", 8 * MIB);
    let iso = h.vdi("install.iso");
    let data_vbd = h.vbd(&vm, &data, "1", "RO", "Disk");
    let root_vbd = h.vbd(&vm, &root, "0", "RW", "Disk");
    let cd = h.vbd(&vm, &iso, "3", "RO", "CD");
    h.start(&vm);
    let domid = h.domid(&vm);
    let spec = h.guests.domain(domid).unwrap().spec;
    // (devid, device, sr/vdi, read_only, cdrom, bootable)
    type Seen<'a> = (u32, &'a str, Option<String>, bool, bool, bool);
    let disks: Vec<Seen> = spec
        .disks
        .iter()
        .map(|d| {
            (
                d.devid,
                d.device.as_str(),
                d.vdi
                    .as_ref()
                    .map(|v| format!("{}/{}", v.sr_uuid, v.vdi_uuid)),
                d.read_only,
                d.cdrom,
                d.bootable,
            )
        })
        .collect();
    let uuid = |h: &mut Host, r: &str| h.uuid("VDI", r);
    assert_eq!(
        disks,
        [
            (
                51712,
                "xvda",
                Some(format!("sr-a/{}", uuid(&mut h, &root))),
                false,
                false,
                true
            ),
            (
                51728,
                "xvdb",
                Some(format!("sr-b/{}", uuid(&mut h, &data))),
                true,
                false,
                false
            ),
            (
                51760,
                "xvdd",
                Some(format!("sr-a/{}", uuid(&mut h, &iso))),
                true,
                true,
                false
            ),
        ]
    );
    for vbd in [&root_vbd, &data_vbd, &cd] {
        assert!(h.flag("VBD", vbd, "currently_attached"));
    }
    assert_eq!(h.allowed(&root_vbd), ["unplug", "unplug_force"]);
    assert_eq!(h.allowed(&cd), ["eject", "unplug", "unplug_force"]);
    let refused = h.err("VBD.destroy", vec![s(&root_vbd)]).description();
    assert_eq!(refused[0], "OPERATION_NOT_ALLOWED");
    assert!(refused[1].contains("still attached"), "{refused:?}");
    // An attached disk is neither destroyed nor resized; one attached read-only still
    // exports, one attached read-write does not.
    assert_eq!(
        h.err("VDI.destroy", vec![s(&root)]).description(),
        ["VDI_IN_USE", root.as_str(), "destroy"]
    );
    assert_eq!(
        code(&h.err("VDI.resize", vec![s(&data), Value::Int(16 * MIB as i64)])),
        "VDI_IN_USE"
    );
    h.ok("VM.hard_shutdown", vec![s(&vm)]);
    for vbd in [&root_vbd, &data_vbd, &cd] {
        assert!(!h.flag("VBD", vbd, "currently_attached"));
    }
    h.ok("VDI.resize", vec![s(&data), Value::Int(16 * MIB as i64)]);
    assert!(h.allowed(&root_vbd).is_empty());
}

#[test]
fn a_vdi_is_written_by_one_guest_at_a_time() {
    let mut h = host();
    let shared = h.vdi("shared");
    let first = h.vm("first");
    let second = h.vm("second");
    h.vbd(&first, &shared, "0", "RW", "Disk");
    let second_vbd = h.vbd(&second, &shared, "0", "RW", "Disk");
    h.start(&first);
    let e = h.err(
        "VM.start",
        vec![s(&second), Value::Bool(false), Value::Bool(false)],
    );
    assert_eq!(e.description(), ["VDI_IN_USE", shared.as_str(), "start"]);
    assert_eq!(text(&h.get("VM", &second, "power_state")), "Halted");
    // Read-only beside a writer is refused too; readers share.
    h.ok("VBD.set_mode", vec![s(&second_vbd), s("RO")]);
    assert_eq!(
        code(&h.err("VBD.assert_attachable", vec![s(&second_vbd)])),
        "VDI_IN_USE"
    );
    h.ok("VM.hard_shutdown", vec![s(&first)]);
    let first_vbd = sorted_strings(&h.get("VM", &first, "VBDs")).remove(0);
    h.ok("VBD.set_mode", vec![s(&first_vbd), s("RO")]);
    h.start(&first);
    h.start(&second);
    // One VM with the same VDI twice read-write.
    let third = h.vm("third");
    let other = h.vdi("other");
    h.vbd(&third, &other, "0", "RW", "Disk");
    h.vbd(&third, &other, "1", "RW", "Disk");
    assert_eq!(
        code(&h.err(
            "VM.start",
            vec![s(&third), Value::Bool(false), Value::Bool(false)]
        )),
        "VDI_IN_USE"
    );
}

/// A start reads its kernel a piece per step; if another VM starts with the same disk
/// meanwhile, the first start fails at its end with `VDI_IN_USE` and its half-built domain
/// is given up (the backend's prepared start abandoned, its memory back).
#[test]
fn a_disk_taken_while_a_start_loads_fails_that_start_cleanly() {
    let mut h = host();
    let shared = h.vdi("shared");
    let slow = h.vm("slow");
    let quick = h.vm("quick");
    h.vbd(&slow, &shared, "0", "RW", "Disk");
    h.vbd(&quick, &shared, "0", "RW", "Disk");
    // The slow VM's kernel takes 64 steps to load, the quick one's 16.
    let named = text(&h.get("VM", &slow, "PV_kernel")).to_string();
    let kernel_uuid = named.trim_start_matches("vdi:").to_string();
    let kernel = text(&h.ok("VDI.get_by_uuid", vec![s(&kernel_uuid)])).to_string();
    h.ok("VDI.resize", vec![s(&kernel), Value::Int(16 * MIB as i64)]);
    let free_before = h.guests.free_memory_now();

    let task = text(&h.ok(
        "Async.VM.start",
        vec![s(&slow), Value::Bool(false), Value::Bool(false)],
    ))
    .to_string();
    h.api.run_tasks(h.now);
    assert_eq!(
        h.guests.0.borrow().prepared.len(),
        1,
        "the slow start began"
    );
    h.start(&quick);
    for _ in 0..100 {
        h.api.run_tasks(h.now);
    }
    assert_eq!(text(&h.get("task", &task, "status")), "failure");
    let error = h.get("task", &task, "error_info");
    assert_eq!(
        error.as_array().unwrap()[..2],
        [s("VDI_IN_USE"), s(&shared)]
    );
    assert_eq!(text(&h.get("VM", &slow, "power_state")), "Halted");
    assert!(h.guests.0.borrow().prepared.is_empty(), "abandoned");
    let quick_domid = h.domid(&quick);
    let quick_memory = h.guests.domain(quick_domid).unwrap().spec.max_memory_bytes;
    assert_eq!(h.guests.free_memory_now(), free_before - quick_memory);
}

#[test]
fn disks_are_hot_plugged_and_unplugged_on_a_running_guest() {
    let mut h = host();
    let vm = h.vm("web");
    let extra = h.vdi("extra");
    let vbd = h.vbd(&vm, &extra, "1", "RW", "Disk");
    assert_eq!(
        h.err("VBD.plug", vec![s(&vbd)]).description(),
        ["VM_BAD_POWER_STATE", vm.as_str(), "running", "halted"]
    );
    h.ok("VBD.destroy", vec![s(&vbd)]);
    h.start(&vm);
    let domid = h.domid(&vm);
    assert!(h.guests.domain(domid).unwrap().disks.is_empty());
    let vbd = h.vbd(&vm, &extra, "1", "RW", "Disk");
    assert_eq!(h.allowed(&vbd), ["plug"]);
    h.ok("VBD.plug", vec![s(&vbd)]);
    let attached = h.guests.domain(domid).unwrap().disks;
    assert_eq!(attached.keys().copied().collect::<Vec<_>>(), [51728]);
    assert!(h.flag("VBD", &vbd, "currently_attached"));
    assert_eq!(
        h.err("VBD.plug", vec![s(&vbd)]).description(),
        ["DEVICE_ALREADY_ATTACHED", vbd.as_str()]
    );
    // Another running guest cannot plug the same VDI.
    let other = h.vm("other");
    h.start(&other);
    let clash = h.vbd(&other, &extra, "0", "RO", "Disk");
    assert_eq!(code(&h.err("VBD.plug", vec![s(&clash)])), "VDI_IN_USE");
    h.ok("VBD.destroy", vec![s(&clash)]);
    // VBD.unplug waits for the toolstack to report the disk gone.
    let task = text(&h.ok("Async.VBD.unplug", vec![s(&vbd)])).to_string();
    h.api.run_tasks(h.now);
    assert_eq!(text(&h.get("task", &task, "status")), "pending");
    assert!(h.flag("VBD", &vbd, "currently_attached"));
    assert!(h.allowed(&vbd).is_empty(), "busy unplugging");
    assert_eq!(h.guests.domain(domid).unwrap().unplugged, [(51728, false)]);
    assert!(h.api.disk_detached(domid, 51728, h.now));
    h.api.run_tasks(h.now);
    assert_eq!(text(&h.get("task", &task, "status")), "success");
    assert!(!h.flag("VBD", &vbd, "currently_attached"));
    assert_eq!(h.allowed(&vbd), ["plug"]);
    assert!(!h.api.disk_detached(domid, 51728, h.now), "reported once");
    assert_eq!(
        code(&h.err("VBD.unplug", vec![s(&vbd)])),
        "DEVICE_ALREADY_DETACHED"
    );
    // Not unpluggable.
    h.ok("VBD.plug", vec![s(&vbd)]);
    h.ok("VBD.set_unpluggable", vec![s(&vbd), Value::Bool(false)]);
    assert!(h.allowed(&vbd).is_empty());
    assert_eq!(
        code(&h.err("VBD.unplug", vec![s(&vbd)])),
        "VBD_NOT_UNPLUGGABLE"
    );
    h.ok("VBD.set_unpluggable", vec![s(&vbd), Value::Bool(true)]);
    // A toolstack that never reports: the VBD is detached after the wait.
    let task = text(&h.ok("Async.VBD.unplug", vec![s(&vbd)])).to_string();
    h.now = h
        .now
        .plus_ms(keel_xenapi::handlers::vbd_unplug::UNPLUG_WAIT_MS);
    h.api.run_tasks(h.now);
    assert_eq!(text(&h.get("task", &task, "status")), "success");
    assert!(!h.flag("VBD", &vbd, "currently_attached"));
    h.ok("VBD.plug", vec![s(&vbd)]);
    // unplug_force, as an Async task.
    let task = text(&h.ok("Async.VBD.unplug_force", vec![s(&vbd)])).to_string();
    assert_eq!(text(&h.get("task", &task, "status")), "success");
    assert_eq!(
        h.guests.domain(domid).unwrap().unplugged,
        [(51728, false), (51728, false), (51728, true)]
    );
    h.ok("VBD.destroy", vec![s(&vbd)]);
}

#[test]
fn media_change_in_a_running_guests_cd_drive() {
    let mut h = host();
    let vm = h.vm("web");
    let iso = h.vdi("a.iso");
    let args = record(&[
        ("VM", s(&vm)),
        ("userdevice", s("3")),
        ("type", s("CD")),
        ("mode", s("RO")),
    ]);
    let cd = text(&h.ok("VBD.create", vec![args])).to_string();
    h.start(&vm);
    let domid = h.domid(&vm);
    assert_eq!(h.guests.domain(domid).unwrap().disks[&51760].vdi, None);
    h.ok("VBD.insert", vec![s(&cd), s(&iso)]);
    let uuid = h.uuid("VDI", &iso);
    let medium = h.guests.domain(domid).unwrap().disks[&51760].vdi.clone();
    assert_eq!(medium.map(|m| m.vdi_uuid), Some(uuid));
    h.ok("VBD.eject", vec![s(&cd)]);
    assert_eq!(h.guests.domain(domid).unwrap().disks[&51760].vdi, None);
}

#[test]
fn vm_destroy_takes_its_vbds_but_not_their_vdis() {
    let mut h = host();
    let vm = h.vm("web");
    let root = h.vdi("root");
    let vbd = h.vbd(&vm, &root, "0", "RW", "Disk");
    h.ok("VM.destroy", vec![s(&vm)]);
    assert_eq!(
        code(&h.err("VBD.get_record", vec![s(&vbd)])),
        "HANDLE_INVALID"
    );
    assert!(h.call("VDI.get_record", vec![s(&root)]).is_ok());
    assert!(sorted_strings(&h.get("VDI", &root, "VBDs")).is_empty());
}

/// The VDIs of a VM's VBDs, by userdevice.
fn vm_vdis(h: &mut Host, vm: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for vbd in sorted_strings(&h.get("VM", vm, "VBDs")) {
        let userdevice = text(&h.get("VBD", &vbd, "userdevice")).to_string();
        let vdi = text(&h.get("VBD", &vbd, "VDI")).to_string();
        out.push((userdevice, vdi));
    }
    out.sort();
    out
}

#[test]
fn clone_and_copy_take_the_disks_along() {
    let mut h = host();
    let vm = h.vm("web");
    let root = h.vdi("root");
    let iso = h.vdi("a.iso");
    let uuid = h.uuid("VDI", &root);
    h.storage
        .clone()
        .write("sr-a", &uuid, 0, &[0x5a; 512])
        .unwrap();
    h.vbd(&vm, &root, "0", "RW", "Disk");
    h.vbd(&vm, &iso, "3", "RO", "CD");
    let clone = text(&h.ok("VM.clone", vec![s(&vm), s("web-clone")])).to_string();
    let vdis = vm_vdis(&mut h, &clone);
    assert_eq!(vdis.len(), 2);
    assert_ne!(vdis[0].1, root, "the disk is a new VDI");
    assert_eq!(text(&h.get("VDI", &vdis[0].1, "parent")), root);
    assert_eq!(
        vdis[1],
        ("3".to_string(), iso.clone()),
        "the CD keeps its medium"
    );
    // A copy into the other SR: a job moving the data.
    let sr_b = h.sr("sr-b");
    let copy = text(&h.ok("VM.copy", vec![s(&vm), s("web-copy"), s(&sr_b)])).to_string();
    let vdis = vm_vdis(&mut h, &copy);
    assert_eq!(text(&h.get("VDI", &vdis[0].1, "SR")), sr_b);
    let copied = h.uuid("VDI", &vdis[0].1);
    let mut sector = [0u8; 512];
    h.storage
        .clone()
        .read("sr-b", &copied, 0, &mut sector)
        .unwrap();
    assert_eq!(sector, [0x5a; 512]);
    let busy = h.get("VM", &vm, "current_operations");
    assert!(busy.as_struct().unwrap().is_empty());
    // A copy with a NULL SR stays in each disk's SR.
    let same = text(&h.ok("VM.copy", vec![s(&vm), s("web-2"), s("OpaqueRef:NULL")])).to_string();
    let vdis = vm_vdis(&mut h, &same);
    let sr_a = h.sr("sr-a");
    assert_eq!(text(&h.get("VDI", &vdis[0].1, "SR")), sr_a);
    assert_ne!(vdis[0].1, root);
    // Running VMs are neither cloned nor copied.
    h.start(&vm);
    assert_eq!(
        code(&h.err("VM.clone", vec![s(&vm), s("x")])),
        "VM_BAD_POWER_STATE"
    );
}

#[test]
fn a_snapshot_of_a_running_guest_snapshots_its_disks() {
    let mut h = host();
    let vm = h.vm("web");
    let root = h.vdi("root");
    let scratch = h.vdi("scratch");
    h.vbd(&vm, &root, "0", "RW", "Disk");
    h.vbd(&vm, &scratch, "1", "RW", "Disk");
    h.start(&vm);
    let snap = text(&h.ok(
        "VM.snapshot",
        vec![s(&vm), s("before upgrade"), Value::Array(vec![s(&scratch)])],
    ))
    .to_string();
    assert!(h.flag("VM", &snap, "is_a_snapshot"));
    assert!(h.flag("VM", &snap, "is_a_template"));
    assert_eq!(text(&h.get("VM", &snap, "snapshot_of")), vm);
    assert_eq!(text(&h.get("VM", &snap, "power_state")), "Halted");
    assert_eq!(
        sorted_strings(&h.get("VM", &vm, "snapshots")),
        vec![snap.clone()]
    );
    let vdis = vm_vdis(&mut h, &snap);
    assert_eq!(vdis.len(), 1, "the ignored disk is left out");
    let taken = &vdis[0].1;
    assert!(h.flag("VDI", taken, "is_a_snapshot"));
    assert_eq!(text(&h.get("VDI", taken, "snapshot_of")), root);
    // The snapshot's VBDs are not attached; the guest's still are.
    let snap_vbd = sorted_strings(&h.get("VM", &snap, "VBDs")).remove(0);
    assert!(!h.flag("VBD", &snap_vbd, "currently_attached"));
    assert_eq!(text(&h.get("VBD", &snap_vbd, "mode")), "RW");
    assert_eq!(text(&h.get("VM", &vm, "power_state")), "Running");
    // Without the optional argument.
    let all = text(&h.ok("VM.snapshot", vec![s(&vm), s("all")])).to_string();
    assert_eq!(vm_vdis(&mut h, &all).len(), 2);
}

#[test]
fn vbds_survive_a_host_reboot_detached() {
    let storage = FakeStorage::two_srs(256 * MIB);
    let mut h = boot(&storage, None);
    let vm = h.vm("web");
    let root = h.vdi("root");
    let vbd = h.vbd(&vm, &root, "0", "RW", "Disk");
    h.ok(
        "VBD.add_to_other_config",
        vec![s(&vbd), s("owner"), s("ops")],
    );
    h.start(&vm);
    let saved = h.disk.0.borrow().clone().expect("saved");
    let uuid = h.uuid("VBD", &vbd);
    let mut h = boot(&storage, Some(saved));
    assert_eq!(h.uuid("VBD", &vbd), uuid);
    assert!(!h.flag("VBD", &vbd, "currently_attached"));
    assert_eq!(text(&h.get("VBD", &vbd, "VDI")), root);
    assert_eq!(sorted_strings(&h.get("VM", &vm, "VBDs")), vec![vbd.clone()]);
    let other = h.get("VBD", &vbd, "other_config");
    assert_eq!(text(field(&other, "owner")), "ops");
    let metrics = text(&h.get("VBD", &vbd, "metrics")).to_string();
    assert!(h.call("VBD_metrics.get_record", vec![s(&metrics)]).is_ok());
    h.start(&vm);
    assert!(h.flag("VBD", &vbd, "currently_attached"));
}

#[test]
fn a_guest_that_reboots_itself_gets_its_disks_again() {
    let mut h = host();
    let vm = h.vm("web");
    let root = h.vdi("root");
    let vbd = h.vbd(&vm, &root, "0", "RW", "Disk");
    h.start(&vm);
    let old = h.domid(&vm);
    h.api
        .domain_exited(old, keel_xenapi::ExitReason::Reboot, h.now)
        .unwrap();
    for _ in 0..100 {
        if h.api.run_tasks(h.now) == 0 {
            break;
        }
    }
    let new = h.domid(&vm);
    assert_ne!(new, old);
    assert!(h.flag("VBD", &vbd, "currently_attached"));
    let disks = h.guests.domain(new).unwrap().disks;
    assert_eq!(disks.keys().copied().collect::<Vec<_>>(), [51712]);
    // A crash whose action is destroy leaves it detached.
    h.ok("VM.set_actions_after_crash", vec![s(&vm), s("destroy")]);
    h.api
        .domain_exited(new, keel_xenapi::ExitReason::Crash, h.now)
        .unwrap();
    assert!(!h.flag("VBD", &vbd, "currently_attached"));
    assert_eq!(h.allowed(&vbd), Vec::<String>::new());
}

#[test]
fn after_a_reboot_vbds_of_lost_vdis_point_at_nothing() {
    let storage = FakeStorage::two_srs(256 * MIB);
    let mut h = boot(&storage, None);
    let vm = h.vm("web");
    let root = h.vdi("root");
    let iso = h.vdi("tools.iso");
    let disk = h.vbd(&vm, &root, "0", "RW", "Disk");
    let cd = h.vbd(&vm, &iso, "3", "RO", "CD");
    let saved = h.disk.0.borrow().clone().expect("saved");
    // The VDIs are gone from the storage manager by the next boot.
    for vdi in [&root, &iso] {
        let uuid = h.uuid("VDI", vdi);
        for sr in storage.0.borrow_mut().srs.iter_mut() {
            sr.vdis.remove(&uuid);
        }
    }
    let mut h = boot(&storage, Some(saved));
    assert_eq!(text(&h.get("VBD", &disk, "VDI")), "OpaqueRef:NULL");
    assert_eq!(text(&h.get("VBD", &cd, "VDI")), "OpaqueRef:NULL");
    assert!(h.flag("VBD", &cd, "empty"), "the CD drive is empty");
    assert_eq!(h.allowed(&cd), ["insert"]);
    assert!(!h.flag("VBD", &disk, "empty"));
    // The disk refuses to start rather than start the guest without it.
    assert_eq!(
        code(&h.err(
            "VM.start",
            vec![s(&vm), Value::Bool(false), Value::Bool(false)]
        )),
        "HANDLE_INVALID"
    );
    // Each VBD keeps its metrics; none is left over.
    let count = sorted_strings(&h.ok("VBD_metrics.get_all", vec![])).len();
    assert_eq!(count, 2, "one metrics object per VBD, no orphans");
}

#[test]
fn a_cancelled_vm_copy_leaves_no_vm_and_no_vdi_behind() {
    let mut h = host();
    let vm = h.vm("web");
    let first = h.vdi_in("sr-a", "first", 8 * MIB);
    let second = h.vdi_in("sr-a", "second", 16 * MIB);
    h.vbd(&vm, &first, "0", "RW", "Disk");
    h.vbd(&vm, &second, "1", "RW", "Disk");
    let sr_b = h.sr("sr-b");
    let vms = sorted_strings(&h.ok("VM.get_all", vec![])).len();
    let task = text(&h.ok("Async.VM.copy", vec![s(&vm), s("copy"), s(&sr_b)])).to_string();
    // Part of the way: the first disk copied, the second under way.
    for _ in 0..4 {
        h.api.run_tasks(h.now);
    }
    assert_eq!(text(&h.get("task", &task, "status")), "pending");
    assert!(!sorted_strings(&h.get("SR", &sr_b, "VDIs")).is_empty());
    h.ok("task.cancel", vec![s(&task)]);
    for _ in 0..20 {
        h.api.run_tasks(h.now);
    }
    assert_eq!(text(&h.get("task", &task, "status")), "cancelled");
    assert!(sorted_strings(&h.get("SR", &sr_b, "VDIs")).is_empty());
    assert_eq!(sorted_strings(&h.ok("VM.get_all", vec![])).len(), vms);
    let busy = h.get("VM", &vm, "current_operations");
    assert!(busy.as_struct().unwrap().is_empty());
    assert!(h
        .get("VM", &vm, "allowed_operations")
        .as_array()
        .unwrap()
        .contains(&s("copy")));
}

#[test]
fn revert_puts_back_the_snapshots_disks_and_configuration() {
    let mut h = host();
    let vm = h.vm("web");
    let root = h.vdi("root");
    let iso = h.vdi("tools.iso");
    let root_uuid = h.uuid("VDI", &root);
    let mut storage = h.storage.clone();
    storage.write("sr-a", &root_uuid, 0, &[0xaa; 512]).unwrap();
    h.vbd(&vm, &root, "0", "RW", "Disk");
    h.vbd(&vm, &iso, "3", "RO", "CD");
    h.ok("VM.set_PV_args", vec![s(&vm), s("console=hvc0 before")]);
    let snap = text(&h.ok("VM.snapshot", vec![s(&vm), s("before")])).to_string();
    // Changes after the snapshot.
    storage.write("sr-a", &root_uuid, 0, &[0xbb; 512]).unwrap();
    h.ok("VM.set_PV_args", vec![s(&vm), s("console=hvc0 after")]);
    assert_eq!(
        code(&h.err("VM.revert", vec![s(&vm)])),
        "OPERATION_NOT_ALLOWED",
        "only to a snapshot"
    );
    h.start(&vm);
    assert_eq!(
        code(&h.err("VM.revert", vec![s(&snap)])),
        "VM_BAD_POWER_STATE"
    );
    h.ok("VM.hard_shutdown", vec![s(&vm)]);
    h.ok("VM.revert", vec![s(&snap)]);
    assert_eq!(text(&h.get("VM", &vm, "PV_args")), "console=hvc0 before");
    assert_eq!(text(&h.get("VM", &vm, "name_label")), "web");
    assert!(!h.flag("VM", &vm, "is_a_template"));
    assert!(!h.flag("VM", &vm, "is_a_snapshot"));
    let vdis = vm_vdis(&mut h, &vm);
    assert_eq!(vdis.len(), 2);
    let (_, disk) = &vdis[0];
    assert_ne!(disk, &root);
    assert_eq!(vdis[1], ("3".to_string(), iso.clone()));
    let uuid = h.uuid("VDI", disk);
    let mut sector = [0u8; 512];
    storage.read("sr-a", &uuid, 0, &mut sector).unwrap();
    assert_eq!(sector, [0xaa; 512], "the data as it was at the snapshot");
    // The replaced disk is gone; the ISO and the snapshot's own disk stay.
    assert_eq!(
        code(&h.err("VDI.get_record", vec![s(&root)])),
        "HANDLE_INVALID"
    );
    assert!(h.call("VDI.get_record", vec![s(&iso)]).is_ok());
    assert_eq!(vm_vdis(&mut h, &snap).len(), 2);
    // It starts with the reverted disk.
    h.start(&vm);
}

#[test]
fn vbd_metrics_follow_the_disk_backends_counters() {
    use keel_xenapi::DiskIoSample;
    let mut h = host();
    let vm = h.vm("web");
    let root = h.vdi("root");
    let vbd = h.vbd(&vm, &root, "0", "RW", "Disk");
    h.start(&vm);
    let domid = h.domid(&vm);
    let metrics = text(&h.get("VBD", &vbd, "metrics")).to_string();
    let sample = |read: u64, write: u64| DiskIoSample {
        domid,
        devid: 51712,
        read_bytes: read,
        write_bytes: write,
    };
    h.api.record_disk_io(&[sample(0, 0)], h.now);
    h.now = h.now.plus_ms(2000);
    h.api
        .record_disk_io(&[sample(4 << 20, 1 << 20), sample(1, 1)], h.now);
    let rec = h.ok("VBD_metrics.get_record", vec![s(&metrics)]);
    assert_eq!(field(&rec, "io_read_kbs"), &Value::Float(2048.0));
    assert_eq!(field(&rec, "io_write_kbs"), &Value::Float(512.0));
    // A disk that is not attached (an unknown devid) changes nothing.
    h.api.record_disk_io(
        &[DiskIoSample {
            domid,
            devid: 51728,
            read_bytes: 9,
            write_bytes: 9,
        }],
        h.now,
    );
    assert_eq!(h.ok("VBD_metrics.get_record", vec![s(&metrics)]), rec);
}
