//! The host database's XenAPI side: what a change saves, and what a new service built from
//! the saved database holds (stable references and UUIDs, the control domain and templates
//! not duplicated, running VMs halted, `auto_poweron` VMs started, old or odd records
//! tolerated).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod guest_fake;
mod storage_fake;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use common::*;
use guest_fake::FakeGuests;
use keel_xenapi::handlers::vm_builtin::PVH_TEMPLATE_NAME;
use keel_xenapi::keel_hostdb::{Database, FieldValue};
use keel_xenapi::{ApiError, DatabaseSink, SaveFailed, StorageBackend, Timestamp, Value, XenApi};
use storage_fake::FakeStorage;

const MIB: u64 = 1 << 20;

/// Records every save; fails the next `fail` saves.
#[derive(Clone, Default)]
struct Disk {
    saves: Rc<RefCell<Vec<Database>>>,
    attempts: Rc<RefCell<usize>>,
    fail: Rc<RefCell<usize>>,
}

impl Disk {
    fn last(&self) -> Database {
        self.saves.borrow().last().cloned().expect("a save")
    }
    fn saves(&self) -> usize {
        self.saves.borrow().len()
    }
}

impl DatabaseSink for Disk {
    fn save(&mut self, database: &Database) -> Result<(), SaveFailed> {
        *self.attempts.borrow_mut() += 1;
        let mut fail = self.fail.borrow_mut();
        if *fail > 0 {
            *fail -= 1;
            return Err(SaveFailed);
        }
        self.saves.borrow_mut().push(database.clone());
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

/// A host on `storage`, restored from `saved` if given, saving into a new `Disk`.
fn boot(storage: &FakeStorage, saved: Option<Database>, seed: u64, now: Timestamp) -> Host {
    let guests = FakeGuests::with_memory(4096 * MIB);
    let disk = Disk::default();
    let mut config = config();
    config.storage = Some(Box::new(storage.clone()));
    config.guests = Some(Box::new(guests.clone()));
    config.restore = saved;
    config.database_sink = Some(Box::new(disk.clone()));
    let mut api = XenApi::new(config, Box::new(TestEntropy(seed)), now).expect("service");
    let session = login(&mut api);
    Host {
        api,
        storage: storage.clone(),
        guests,
        disk,
        session,
        now,
    }
}

impl Client for Host {
    /// A call driven to its answer; every answer finds its change already saved (unless the
    /// test made the disk fail).
    fn call(&mut self, method: &str, args: Vec<Value>) -> Result<Value, ApiError> {
        let result = self.call_unchecked(method, args);
        if *self.disk.fail.borrow() == 0 {
            assert_eq!(
                self.disk.last(),
                self.api.export_database(),
                "{method} was answered before its change was saved"
            );
        }
        result
    }
}

impl Host {
    fn call_unchecked(&mut self, method: &str, args: Vec<Value>) -> Result<Value, ApiError> {
        call_driven(&mut self.api, &self.session, self.now, method, args)
    }

    fn refs_where(&mut self, field_name: &str) -> Vec<String> {
        let all = self.ok("VM.get_all_records", vec![]);
        all.as_struct()
            .unwrap()
            .iter()
            .filter(|(_, record)| field(record, field_name) == &Value::Bool(true))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// A VM cloned from the built-in template, as clients make one.
    fn vm(&mut self, name: &str) -> String {
        let template = strings(&self.ok("VM.get_by_name_label", vec![s(PVH_TEMPLATE_NAME)]));
        let vm = text(&self.ok("VM.clone", vec![s(&template[0]), s(name)]));
        self.ok("VM.provision", vec![s(&vm)]);
        self.ok("VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]);
        vm
    }

    /// A VM that can boot: kernel image in a VDI.
    fn bootable_vm(&mut self, name: &str) -> String {
        let vm = self.vm(name);
        let kernel = self.storage.add_vdi("sr-a", "vmlinuz", 4096);
        let mut image = b"\x7fELF kernel image for tests".to_vec();
        image.resize(4096, 0);
        self.storage
            .clone()
            .write("sr-a", &kernel, 0, &image)
            .unwrap();
        let sr = text(&self.ok("SR.get_by_uuid", vec![s("sr-a")]));
        self.ok("SR.scan", vec![s(&sr)]);
        self.ok(
            "VM.set_PV_kernel",
            vec![s(&vm), s(&format!("vdi:{kernel}"))],
        );
        vm
    }

    fn power(&mut self, vm: &str) -> String {
        text(&self.get("VM", vm, "power_state"))
    }

    fn run(&mut self) {
        for _ in 0..1000 {
            if self.api.run_tasks(self.now) == 0 {
                return;
            }
        }
        panic!("tasks never finished");
    }
}

fn other_config(pairs: &[(&str, &str)]) -> Value {
    Value::string_map(pairs.iter().copied())
}

/// The export without the fields that describe this boot rather than the host's objects.
fn comparable(mut database: Database) -> Database {
    for record in database
        .classes
        .get_mut("host")
        .into_iter()
        .flat_map(|c| c.values_mut())
    {
        record.remove("metrics");
    }
    database
}

#[test]
fn a_rebooted_host_has_the_same_objects_under_the_same_references() {
    let storage = FakeStorage::two_srs(256 * MIB);
    let mut first = boot(&storage, None, 1, T0);
    let vm = first.vm("web");
    first.ok("VM.set_name_description", vec![s(&vm), s("the web server")]);
    first.ok(
        "VM.set_other_config",
        vec![s(&vm), other_config(&[("owner", "ops"), ("tier", "1")])],
    );
    first.ok("VM.add_tags", vec![s(&vm), s("production")]);
    first.ok("VM.set_VCPUs_max", vec![s(&vm), Value::Int(2)]);
    let pool = first.api.pool_ref().to_string();
    first.ok("pool.set_name_label", vec![s(&pool), s("lab")]);
    let host = first.api.host_ref().to_string();
    first.ok("host.set_name_description", vec![s(&host), s("rack 3")]);
    let sr = text(&first.ok("SR.get_by_uuid", vec![s("sr-a")]));
    first.ok("pool.set_default_SR", vec![s(&pool), s(&sr)]);
    first.ok("SR.set_name_description", vec![s(&sr), s("fast disks")]);
    let data = first.storage.add_vdi("sr-a", "data", MIB);
    first.ok("SR.scan", vec![s(&sr)]);
    let vdi = text(&first.ok("VDI.get_by_uuid", vec![s(&data)]));
    first.ok("VDI.set_name_label", vec![s(&vdi), s("database files")]);
    first.ok("VDI.add_to_other_config", vec![s(&vdi), s("k"), s("v")]);
    let dom0 = first.refs_where("is_control_domain");
    first.ok(
        "VM.add_to_other_config",
        vec![s(&dom0[0]), s("note"), s("keel")],
    );
    first.ok(
        "message.create",
        vec![s("HELLO"), Value::Int(3), s("VM"), s("x"), s("body")],
    );
    // Every answered change is saved: the last save is the state now.
    let saved = first.disk.last();
    assert_eq!(saved, first.api.export_database());
    assert!(!saved.classes.contains_key("session"));
    assert!(!saved.classes.contains_key("task"));

    let mut second = boot(&storage, Some(saved.clone()), 2, T0);
    assert_eq!(
        comparable(second.api.export_database()),
        comparable(saved.clone())
    );
    // No second control domain or template.
    assert_eq!(second.refs_where("is_control_domain"), dom0);
    let templates = second.refs_where("is_default_template");
    assert_eq!(templates.len(), 1);
    assert_eq!(second.api.pool_ref(), pool);
    assert_eq!(second.api.host_ref(), host);
    assert_eq!(text(&second.get("VM", &vm, "name_label")), "web");
    assert_eq!(
        second.get("VM", &vm, "other_config"),
        other_config(&[("owner", "ops"), ("tier", "1")])
    );
    assert_eq!(strings(&second.get("VM", &vm, "tags")), ["production"]);
    assert_eq!(text(&second.get("pool", &pool, "name_label")), "lab");
    assert_eq!(text(&second.get("pool", &pool, "default_SR")), sr);
    assert_eq!(
        text(&second.get("SR", &sr, "name_description")),
        "fast disks"
    );
    assert_eq!(
        text(&second.get("VDI", &vdi, "name_label")),
        "database files"
    );
    assert_eq!(
        second.get("VDI", &vdi, "other_config"),
        other_config(&[("k", "v")])
    );
    assert_eq!(strings(&second.ok("message.get_all", vec![])).len(), 1);
    // The restored VM is whole: its metrics exist and it can be changed and destroyed.
    let metrics = text(&second.get("VM", &vm, "metrics"));
    second.ok("VM_metrics.get_record", vec![s(&metrics)]);
    second.ok("VM.destroy", vec![s(&vm)]);
    assert!(!second.disk.last().classes["VM"].contains_key(&vm));
}

#[test]
fn running_vms_come_back_halted_and_auto_poweron_ones_are_started() {
    let storage = FakeStorage::two_srs(256 * MIB);
    let mut first = boot(&storage, None, 3, T0);
    let plain = first.bootable_vm("plain");
    let auto_running = first.bootable_vm("auto-running");
    let auto_halted = first.bootable_vm("auto-halted");
    let auto_off = first.vm("auto-but-template");
    for vm in [&auto_running, &auto_halted, &auto_off] {
        first.ok(
            "VM.add_to_other_config",
            vec![s(vm), s("auto_poweron"), s("true")],
        );
    }
    first.ok(
        "VM.set_is_a_template",
        vec![s(&auto_off), Value::Bool(true)],
    );
    for vm in [&plain, &auto_running] {
        first.ok(
            "VM.start",
            vec![s(vm), Value::Bool(false), Value::Bool(false)],
        );
        assert_eq!(first.power(vm), "Running");
    }
    // Power cut: the last save is all there is.
    let saved = first.disk.last();

    let mut second = boot(&storage, Some(saved), 4, T0);
    let plan = second.api.host_boot().expect("restored").clone();
    let mut halted = plan.halted.clone();
    halted.sort();
    let mut expected = vec![plain.clone(), auto_running.clone()];
    expected.sort();
    assert_eq!(halted, expected);
    let mut auto = plan.auto_start.clone();
    auto.sort();
    let mut expected = vec![auto_running.clone(), auto_halted.clone()];
    expected.sort();
    assert_eq!(auto, expected);
    for vm in [&plain, &auto_running, &auto_halted] {
        assert_eq!(second.power(vm), "Halted");
        assert_eq!(second.get("VM", vm, "domid"), Value::Int(-1));
        assert!(strings(&second.get("VM", vm, "allowed_operations")).contains(&"start".into()));
    }
    // The reset states were saved at once.
    assert_eq!(second.disk.last(), second.api.export_database());
    assert!(second.guests.domids().is_empty());

    let started = second.api.start_auto_poweron_vms(second.now);
    let mut names: Vec<_> = started.iter().map(|a| a.name_label.clone()).collect();
    names.sort();
    assert_eq!(names, ["auto-halted", "auto-running"]);
    assert!(started.iter().all(|a| a.task.is_ok()));
    second.run();
    assert_eq!(second.power(&auto_running), "Running");
    assert_eq!(second.power(&auto_halted), "Running");
    assert_eq!(second.power(&plain), "Halted");
    assert_eq!(second.power(&auto_off), "Halted");
    assert_eq!(second.guests.domids().len(), 2);
    // Running states are saved like any change; a second call starts nothing.
    let last = second.disk.last();
    assert_eq!(
        last.get("VM", &auto_halted).unwrap()["power_state"],
        FieldValue::String("Running".into())
    );
    assert!(second.api.start_auto_poweron_vms(second.now).is_empty());
}

#[test]
fn saves_happen_only_for_kept_changes_and_a_failed_one_is_retried() {
    let storage = FakeStorage::two_srs(256 * MIB);
    let mut host = boot(&storage, None, 5, T0);
    // The new host's objects were saved once at start; a login saved nothing more.
    assert_eq!(host.disk.saves(), 1);
    host.ok("VM.get_all_records", vec![]);
    host.ok("event.get_current_id", vec![]);
    assert_eq!(host.disk.saves(), 1);
    let vm = host.vm("a");
    let after_create = host.disk.saves();
    // Writing the value a field already has changes nothing kept.
    host.ok("VM.set_name_label", vec![s(&vm), s("a")]);
    assert_eq!(host.disk.saves(), after_create);
    *host.disk.fail.borrow_mut() = 1;
    host.call_unchecked("VM.set_name_label", vec![s(&vm), s("b")])
        .unwrap();
    assert_ne!(host.disk.last(), host.api.export_database());
    assert_eq!(host.disk.saves(), after_create);
    // The next call of any kind retries the pending save.
    host.ok("VM.get_all", vec![]);
    assert_eq!(host.disk.saves(), after_create + 1);
    let last = host.disk.last();
    assert_eq!(
        last.get("VM", &vm).unwrap()["name_label"],
        FieldValue::String("b".into())
    );
    // A new host without a sink saves nothing and still works.
    let mut config = config();
    config.storage = Some(Box::new(storage.clone()));
    let api = XenApi::new(config, Box::new(TestEntropy(6)), T0).expect("service");
    assert!(api.host_boot().is_none());
}

#[test]
fn old_or_odd_records_are_tolerated() {
    let storage = FakeStorage::two_srs(256 * MIB);
    let mut first = boot(&storage, None, 7, T0);
    let vm = first.vm("odd");
    let gone_vdi = first.storage.add_vdi("sr-a", "scratch", MIB);
    let sr = text(&first.ok("SR.get_by_uuid", vec![s("sr-a")]));
    first.ok("SR.scan", vec![s(&sr)]);
    let gone_vdi_ref = text(&first.ok("VDI.get_by_uuid", vec![s(&gone_vdi)]));
    first.ok("VM.set_suspend_SR", vec![s(&vm), s(&sr)]);
    let mut saved = first.disk.last();
    {
        let record = saved.classes.get_mut("VM").unwrap().get_mut(&vm).unwrap();
        record.insert("field_of_a_newer_keel".into(), FieldValue::Int(1));
        record.remove("name_description");
        record.insert("VCPUs_max".into(), FieldValue::String("many".into()));
        record.insert(
            "power_state".into(),
            FieldValue::String("Levitating".into()),
        );
        record.insert("suspend_VDI".into(), FieldValue::Ref(gone_vdi_ref.clone()));
        record.insert("affinity".into(), FieldValue::Ref("OpaqueRef:gone".into()));
        record.insert("metrics".into(), FieldValue::Ref("OpaqueRef:gone".into()));
    }
    // A class this Keel does not know, and a VDI the storage manager no longer has.
    saved.insert("VM_appliance", "OpaqueRef:app", BTreeMap::new());
    first.storage.remove_vdi("sr-a", &gone_vdi);

    let mut second = boot(&storage, Some(saved), 8, T0);
    let record = second.ok("VM.get_record", vec![s(&vm)]);
    assert_eq!(text(field(&record, "name_label")), "odd");
    assert_eq!(text(field(&record, "name_description")), "");
    assert_eq!(field(&record, "VCPUs_max"), &Value::Int(0));
    assert_eq!(text(field(&record, "power_state")), "Halted");
    assert_eq!(text(field(&record, "suspend_VDI")), "OpaqueRef:NULL");
    assert_eq!(text(field(&record, "affinity")), "OpaqueRef:NULL");
    assert_eq!(text(field(&record, "suspend_SR")), sr);
    let metrics = text(field(&record, "metrics"));
    second.ok("VM_metrics.get_record", vec![s(&metrics)]);
    assert!(second
        .call("VDI.get_record", vec![s(&gone_vdi_ref)])
        .is_err());
    assert!(!second.disk.last().classes.contains_key("VM_appliance"));
}

/// A power cut after any answered call: every database the sequence saved boots into a
/// coherent host, and booting that host's own save again changes nothing.
#[test]
fn every_saved_state_boots_into_a_coherent_host() {
    let storage = FakeStorage::two_srs(256 * MIB);
    let mut first = boot(&storage, None, 9, T0);
    let a = first.bootable_vm("a");
    let b = first.vm("b");
    first.ok(
        "VM.add_to_other_config",
        vec![s(&a), s("auto_poweron"), s("true")],
    );
    first.ok(
        "VM.start",
        vec![s(&a), Value::Bool(false), Value::Bool(false)],
    );
    let task = text(&first.ok("Async.VM.hard_shutdown", vec![s(&a)]));
    first.run();
    assert_eq!(text(&first.get("task", &task, "status")), "success");
    first.ok("VM.set_name_label", vec![s(&b), s("b2")]);
    let c = text(&first.ok("VM.copy", vec![s(&b), s("c"), s("")]));
    first.ok("VM.destroy", vec![s(&b)]);
    first.ok(
        "VM.start",
        vec![s(&a), Value::Bool(false), Value::Bool(false)],
    );
    first.ok(
        "message.create",
        vec![s("NOTE"), Value::Int(1), s("VM"), s(&c), s("copied")],
    );
    let saves = first.disk.saves.borrow().clone();
    assert!(saves.len() >= 8, "{} saves", saves.len());
    for (index, saved) in saves.into_iter().enumerate() {
        let mut host = boot(&storage, Some(saved.clone()), 100 + index as u64, T0);
        let records = host.ok("VM.get_all_records", vec![]);
        let records = records.as_struct().unwrap();
        let flagged = |name: &str| {
            records
                .values()
                .filter(|r| field(r, name) == &Value::Bool(true))
                .count()
        };
        assert_eq!(flagged("is_control_domain"), 1, "save {index}");
        assert_eq!(flagged("is_default_template"), 1, "save {index}");
        for (vm, record) in records {
            let running = text(field(record, "power_state")) == "Running";
            assert_eq!(
                running,
                flagged_is_dom0(record),
                "save {index}: {vm} is {:?}",
                field(record, "power_state")
            );
            let metrics = text(field(record, "metrics"));
            host.ok("VM_metrics.get_record", vec![s(&metrics)]);
            // Every VM the save held is back under its reference.
            assert!(saved.get("VM", vm).is_some(), "save {index}: new VM {vm}");
        }
        assert_eq!(
            records.len(),
            saved.classes["VM"].len(),
            "save {index}: a VM went missing"
        );
        // Booting this host's own save again changes nothing.
        let again = boot(&storage, Some(host.disk.last()), 200 + index as u64, T0);
        assert_eq!(
            comparable(again.api.export_database()),
            comparable(host.disk.last()),
            "save {index}"
        );
    }
}

fn flagged_is_dom0(record: &Value) -> bool {
    field(record, "is_control_domain") == &Value::Bool(true)
}
