//! VM, VM_metrics and console through the API against an in-memory toolstack and storage
//! manager: the control domain and templates, the power state machine and its errors,
//! `allowed_operations`, `Async.` tasks, events, guest exits and their `actions_after_*`,
//! and boot images named `vdi:<uuid>`.

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod guest_fake;
mod storage_fake;

use common::*;
use guest_fake::FakeGuests;
use keel_xenapi::classes_vm::VM_OPERATIONS;
use keel_xenapi::handlers::vm_builtin::PVH_TEMPLATE_NAME;
use keel_xenapi::{
    ApiError, CallOutcome, ExitReason, GuestError, ShutdownFailure, StorageBackend, Timestamp,
    Value, XenApi,
};
use storage_fake::FakeStorage;

const MIB: u64 = 1 << 20;
const KERNEL: &[u8] = b"\x7fELF kernel image for tests";
const RAMDISK: &[u8] = b"070701 initramfs for tests";

struct Host {
    api: XenApi,
    storage: FakeStorage,
    guests: FakeGuests,
    session: String,
    now: Timestamp,
}

fn host() -> Host {
    host_with_memory(4096 * MIB)
}

fn host_with_memory(bytes: u64) -> Host {
    let storage = FakeStorage::two_srs(256 * MIB);
    let guests = FakeGuests::with_memory(bytes);
    let mut config = config();
    config.storage = Some(Box::new(storage.clone()));
    config.guests = Some(Box::new(guests.clone()));
    let mut api = api_with(config);
    let session = login(&mut api);
    Host {
        api,
        storage,
        guests,
        session,
        now: T0,
    }
}

impl Client for Host {
    /// A call with the session first; a synchronous call running a job is driven to its end.
    fn call(&mut self, method: &str, args: Vec<Value>) -> Result<Value, ApiError> {
        call_driven(&mut self.api, &self.session, self.now, method, args)
    }
}

impl Host {
    fn power(&mut self, vm: &str) -> String {
        text(&self.get("VM", vm, "power_state")).to_string()
    }

    fn domid(&mut self, vm: &str) -> u32 {
        u32::try_from(self.get("VM", vm, "domid").as_int().unwrap()).unwrap()
    }

    fn allowed(&mut self, vm: &str) -> Vec<String> {
        let mut ops = strings(&self.get("VM", vm, "allowed_operations"));
        ops.sort();
        ops
    }

    /// A VDI in `sr-a` holding `bytes` (padded to whole sectors), as `import_raw_vdi` leaves
    /// it; returns its UUID.
    fn image_vdi(&mut self, name: &str, bytes: &[u8]) -> String {
        let size = (bytes.len() as u64).div_ceil(512) * 512;
        let sr = text(&self.ok("SR.get_by_uuid", vec![s("sr-a")])).to_string();
        let record = Value::Struct(
            [
                ("SR".to_string(), s(&sr)),
                ("name_label".to_string(), s(name)),
                ("virtual_size".to_string(), Value::Int(size as i64)),
            ]
            .into_iter()
            .collect(),
        );
        let vdi = text(&self.ok("VDI.create", vec![record])).to_string();
        let uuid = text(&self.get("VDI", &vdi, "uuid")).to_string();
        let mut data = bytes.to_vec();
        data.resize(size as usize, 0);
        let mut storage = self.storage.clone();
        storage.write("sr-a", &uuid, 0, &data).unwrap();
        uuid
    }

    fn template(&mut self) -> String {
        let found = self.ok("VM.get_by_name_label", vec![s(PVH_TEMPLATE_NAME)]);
        let refs = strings(&found);
        assert_eq!(refs.len(), 1, "one built-in PVH template");
        refs[0].clone()
    }

    /// What clients do on XCP: clone the template, provision, clear is_a_template; then
    /// point the kernel and ramdisk at VDIs.
    fn guest(&mut self, name: &str) -> String {
        let template = self.template();
        let vm = text(&self.ok("VM.clone", vec![s(&template), s(name)])).to_string();
        self.ok("VM.provision", vec![s(&vm)]);
        self.ok("VM.set_is_a_template", vec![s(&vm), Value::Bool(false)]);
        let kernel = self.image_vdi("vmlinuz", KERNEL);
        let ramdisk = self.image_vdi("initrd", RAMDISK);
        self.ok(
            "VM.set_PV_kernel",
            vec![s(&vm), s(&format!("vdi:{kernel}"))],
        );
        self.ok(
            "VM.set_PV_ramdisk",
            vec![s(&vm), s(&format!("vdi:{ramdisk}"))],
        );
        vm
    }

    fn running_guest(&mut self, name: &str) -> (String, u32) {
        let vm = self.guest(name);
        self.ok(
            "VM.start",
            vec![s(&vm), Value::Bool(false), Value::Bool(false)],
        );
        let domid = self.domid(&vm);
        (vm, domid)
    }

    /// Starts `method` as an `Async.` call; returns the task.
    fn start_async(&mut self, method: &str, vm: &str) -> String {
        text(&self.ok(&format!("Async.{method}"), vec![s(vm)])).to_string()
    }

    fn task_status(&mut self, task: &str) -> String {
        text(&self.get("task", task, "status")).to_string()
    }

    fn run_steps(&mut self, steps: usize) {
        for _ in 0..steps {
            self.api.run_tasks(self.now);
        }
    }

    fn run(&mut self) {
        for _ in 0..100 {
            if self.api.run_tasks(self.now) == 0 {
                return;
            }
        }
    }
}

#[test]
fn the_control_domain_is_a_running_vm_resident_on_the_host() {
    let mut h = host();
    let host_ref = h.api.host_ref().to_string();
    let dom0 = text(&h.get("host", &host_ref, "control_domain")).to_string();
    assert_eq!(h.get("VM", &dom0, "is_control_domain"), Value::Bool(true));
    assert_eq!(h.power(&dom0), "Running");
    assert_eq!(h.domid(&dom0), 0);
    assert_eq!(text(&h.get("VM", &dom0, "resident_on")), host_ref);
    assert_eq!(
        strings(&h.get("host", &host_ref, "resident_VMs")),
        vec![dom0.clone()]
    );
    assert!(h.allowed(&dom0).is_empty());
    assert_eq!(
        code(&h.err("VM.hard_shutdown", vec![s(&dom0)])),
        "OPERATION_NOT_ALLOWED"
    );
    assert_eq!(
        code(&h.err("VM.destroy", vec![s(&dom0)])),
        "OPERATION_NOT_ALLOWED"
    );
    let metrics = text(&h.get("VM", &dom0, "metrics")).to_string();
    assert!(h.call("VM_metrics.get_record", vec![s(&metrics)]).is_ok());
}

#[test]
fn vm_records_carry_every_xapi_field() {
    let mut h = host();
    let template = h.template();
    let record = h.ok("VM.get_record", vec![s(&template)]);
    for name in [
        "uuid",
        "allowed_operations",
        "current_operations",
        "name_label",
        "name_description",
        "power_state",
        "user_version",
        "is_a_template",
        "is_default_template",
        "suspend_VDI",
        "resident_on",
        "scheduled_to_be_resident_on",
        "affinity",
        "memory_overhead",
        "memory_target",
        "memory_static_max",
        "memory_dynamic_max",
        "memory_dynamic_min",
        "memory_static_min",
        "VCPUs_params",
        "VCPUs_max",
        "VCPUs_at_startup",
        "actions_after_softreboot",
        "actions_after_shutdown",
        "actions_after_reboot",
        "actions_after_crash",
        "consoles",
        "VIFs",
        "VBDs",
        "VUSBs",
        "crash_dumps",
        "VTPMs",
        "PV_bootloader",
        "PV_kernel",
        "PV_ramdisk",
        "PV_args",
        "PV_bootloader_args",
        "PV_legacy_args",
        "HVM_boot_policy",
        "HVM_boot_params",
        "HVM_shadow_multiplier",
        "platform",
        "PCI_bus",
        "other_config",
        "domid",
        "domarch",
        "last_boot_CPU_flags",
        "is_control_domain",
        "metrics",
        "guest_metrics",
        "last_booted_record",
        "recommendations",
        "xenstore_data",
        "ha_always_run",
        "ha_restart_priority",
        "is_a_snapshot",
        "snapshot_of",
        "snapshots",
        "snapshot_time",
        "transportable_snapshot_id",
        "blobs",
        "tags",
        "blocked_operations",
        "snapshot_info",
        "snapshot_metadata",
        "parent",
        "children",
        "bios_strings",
        "protection_policy",
        "is_snapshot_from_vmpp",
        "snapshot_schedule",
        "is_vmss_snapshot",
        "appliance",
        "start_delay",
        "shutdown_delay",
        "order",
        "VGPUs",
        "attached_PCIs",
        "suspend_SR",
        "version",
        "generation_id",
        "hardware_platform_version",
        "has_vendor_device",
        "requires_reboot",
        "reference_label",
        "domain_type",
        "NVRAM",
        "pending_guidances",
    ] {
        field(&record, name);
    }
    assert_eq!(field(&record, "is_a_template"), &Value::Bool(true));
    assert_eq!(field(&record, "is_default_template"), &Value::Bool(true));
    assert_eq!(field(&record, "domain_type"), &s("pvh"));
    assert_eq!(field(&record, "domid"), &Value::Int(-1));
    assert_eq!(field(&record, "power_state"), &s("Halted"));
    let mut ops = strings(field(&record, "allowed_operations"));
    ops.sort();
    // A built-in template is cloned or copied; it never runs and cannot be destroyed.
    assert!(ops.contains(&"clone".to_string()) && ops.contains(&"provision".to_string()));
    assert!(!ops.contains(&"start".to_string()) && !ops.contains(&"destroy".to_string()));
}

#[test]
fn a_template_clone_starts_and_shuts_down_cleanly() {
    let mut h = host();
    let vm = h.guest("web");
    assert_eq!(h.get("VM", &vm, "is_a_template"), Value::Bool(false));
    assert_eq!(h.get("VM", &vm, "is_default_template"), Value::Bool(false));
    h.ok("VM.set_PV_args", vec![s(&vm), s("console=hvc0 quiet")]);
    h.ok(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );

    assert_eq!(h.power(&vm), "Running");
    let domid = h.domid(&vm);
    let domain = h.guests.domain(domid).expect("domain built");
    assert!(domain.kernel.starts_with(KERNEL));
    assert!(domain.ramdisk.as_ref().unwrap().starts_with(RAMDISK));
    assert_eq!(domain.spec.cmdline, "console=hvc0 quiet");
    assert_eq!(domain.spec.max_memory_bytes, 256 * MIB);
    assert!(!domain.paused);
    let host_ref = h.api.host_ref().to_string();
    assert_eq!(text(&h.get("VM", &vm, "resident_on")), host_ref);
    assert!(strings(&h.get("host", &host_ref, "resident_VMs")).contains(&vm));
    let consoles = strings(&h.get("VM", &vm, "consoles"));
    assert_eq!(consoles.len(), 1);
    assert_eq!(h.get("console", &consoles[0], "protocol"), s("vt100"));
    assert_eq!(
        text(&h.get("console", &consoles[0], "location")),
        format!("http://192.0.2.10/console?ref={}", consoles[0])
    );
    let metrics = text(&h.get("VM", &vm, "metrics")).to_string();
    assert_eq!(h.get("VM_metrics", &metrics, "VCPUs_number"), Value::Int(1));

    let task = h.start_async("VM.clean_shutdown", &vm);
    h.run();
    assert_eq!(h.task_status(&task), "pending");
    assert_eq!(
        h.guests.domain(domid).unwrap().shutdown_request,
        Some(keel_xenapi::ShutdownRequest::PowerOff)
    );
    // While it runs the VM is busy with it, under the task's reference.
    let current = h.get("VM", &vm, "current_operations");
    assert_eq!(
        current.as_struct().unwrap().get(&task),
        Some(&s("clean_shutdown"))
    );
    assert_eq!(h.allowed(&vm), vec!["hard_reboot", "hard_shutdown"]);
    assert_eq!(
        code(&h.err("VM.clean_reboot", vec![s(&vm)])),
        "OTHER_OPERATION_IN_PROGRESS"
    );

    assert!(h.api.shutdown_acknowledged(domid, h.now));
    h.run();
    assert_eq!(h.power(&vm), "Running", "acknowledged, not yet stopped");
    h.api
        .domain_exited(domid, ExitReason::PowerOff, h.now)
        .unwrap();
    h.run();
    assert_eq!(h.task_status(&task), "success");
    assert_eq!(h.power(&vm), "Halted");
    assert_eq!(h.get("VM", &vm, "domid"), Value::Int(-1));
    assert!(strings(&h.get("VM", &vm, "consoles")).is_empty());
    assert!(h.guests.domain(domid).is_none(), "domain destroyed");
    assert_eq!(
        h.get("VM", &vm, "current_operations"),
        Value::empty_struct()
    );
    assert_eq!(strings(&h.get("host", &host_ref, "resident_VMs")).len(), 1);
}

#[test]
fn wrong_power_states_and_templates_are_refused_with_xapi_codes() {
    let mut h = host();
    let template = h.template();
    let e = h.err(
        "VM.start",
        vec![s(&template), Value::Bool(false), Value::Bool(false)],
    );
    assert_eq!(code(&e), "VM_IS_TEMPLATE");
    let vm = h.guest("db");
    let e = h.err("VM.pause", vec![s(&vm)]);
    assert_eq!(
        e.description(),
        vec!["VM_BAD_POWER_STATE", vm.as_str(), "running", "halted"]
    );
    assert_eq!(
        code(&h.err("VM.clean_shutdown", vec![s(&vm)])),
        "VM_BAD_POWER_STATE"
    );
    h.ok(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );
    let e = h.err(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );
    assert_eq!(
        e.description(),
        vec!["VM_BAD_POWER_STATE", vm.as_str(), "halted", "running"]
    );
    assert_eq!(
        code(&h.err("VM.destroy", vec![s(&vm)])),
        "VM_BAD_POWER_STATE"
    );
    assert_eq!(
        code(&h.err("VM.clone", vec![s(&vm), s("x")])),
        "VM_BAD_POWER_STATE"
    );
    assert_eq!(
        code(&h.err(
            "VM.set_memory_static_max",
            vec![s(&vm), Value::Int(1 << 30)]
        )),
        "VM_BAD_POWER_STATE"
    );
    assert_eq!(
        code(&h.err("VM.unpause", vec![s(&vm)])),
        "VM_BAD_POWER_STATE"
    );
    h.ok("VM.pause", vec![s(&vm)]);
    assert_eq!(h.power(&vm), "Paused");
    let domid = h.domid(&vm);
    assert!(h.guests.domain(domid).unwrap().paused);
    assert_eq!(
        code(&h.err("VM.clean_reboot", vec![s(&vm)])),
        "VM_BAD_POWER_STATE"
    );
    h.ok("VM.unpause", vec![s(&vm)]);
    assert_eq!(h.power(&vm), "Running");
    // blocked_operations wins over everything else.
    h.ok(
        "VM.add_to_blocked_operations",
        vec![s(&vm), s("hard_shutdown"), s("keep it up")],
    );
    let e = h.err("VM.hard_shutdown", vec![s(&vm)]);
    assert_eq!(
        e.description(),
        vec!["OPERATION_BLOCKED", vm.as_str(), "keep it up"]
    );
    assert!(!h.allowed(&vm).contains(&"hard_shutdown".to_string()));
    h.ok(
        "VM.remove_from_blocked_operations",
        vec![s(&vm), s("hard_shutdown")],
    );
    h.ok("VM.hard_shutdown", vec![s(&vm)]);
    assert_eq!(h.power(&vm), "Halted");
}

/// `allowed_operations` is exactly what `assert_operation_valid` lets through, in every
/// power state, for every operation xapi names.
#[test]
fn allowed_operations_tell_the_truth() {
    let mut h = host();
    let vm = h.guest("truth");
    let template = h.template();
    let check = |h: &mut Host, vm: &str| {
        let allowed = h.allowed(vm);
        for op in VM_OPERATIONS {
            let valid = h
                .call("VM.assert_operation_valid", vec![s(vm), s(op)])
                .is_ok();
            assert_eq!(
                allowed.contains(&op.to_string()),
                valid,
                "{op} in {}: allowed {allowed:?}",
                h.power(vm)
            );
        }
    };
    check(&mut h, &template);
    check(&mut h, &vm);
    h.ok(
        "VM.start",
        vec![s(&vm), Value::Bool(true), Value::Bool(false)],
    );
    assert_eq!(h.power(&vm), "Paused", "start_paused");
    check(&mut h, &vm);
    h.ok("VM.unpause", vec![s(&vm)]);
    check(&mut h, &vm);
    let ops = h.allowed(&vm);
    for op in [
        "clean_shutdown",
        "clean_reboot",
        "hard_shutdown",
        "hard_reboot",
        "pause",
    ] {
        assert!(ops.contains(&op.to_string()), "{op} allowed when running");
    }
    assert!(!ops.contains(&"start".to_string()));
}

#[test]
fn async_start_is_a_task_and_every_change_arrives_through_event_from() {
    let mut h = host();
    let vm = h.guest("evented");
    let start = h.ok(
        "event.from",
        vec![
            Value::string_array(["vm", "task"]),
            s(""),
            Value::Float(0.0),
        ],
    );
    let token = text(field(&start, "token")).to_string();

    let task = text(&h.ok(
        "Async.VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    ))
    .to_string();
    assert_eq!(h.task_status(&task), "pending");
    assert_eq!(h.power(&vm), "Halted");
    h.run();
    assert_eq!(h.task_status(&task), "success");
    assert_eq!(h.power(&vm), "Running");

    let found = h.ok(
        "event.from",
        vec![
            Value::string_array(["vm", "task"]),
            s(&token),
            Value::Float(0.0),
        ],
    );
    let events = field(&found, "events").as_array().unwrap();
    let vm_states: Vec<String> = events
        .iter()
        .filter(|e| text(field(e, "class")) == "vm" && text(field(e, "ref")) == vm)
        .map(|e| text(field(field(e, "snapshot"), "power_state")).to_string())
        .collect();
    assert_eq!(vm_states.last().map(String::as_str), Some("Running"));
    // The VM was seen busy with the task, then free with the running operations allowed.
    let busy = events.iter().any(|e| {
        text(field(e, "ref")) == vm
            && field(field(e, "snapshot"), "current_operations")
                .as_struct()
                .is_some_and(|m| m.contains_key(&task))
    });
    assert!(busy, "current_operations published");
    assert!(events
        .iter()
        .any(|e| text(field(e, "class")) == "task" && text(field(e, "ref")) == task));
    let last = events
        .iter()
        .rev()
        .find(|e| text(field(e, "ref")) == vm)
        .unwrap();
    let allowed = strings(field(field(last, "snapshot"), "allowed_operations"));
    assert!(allowed.contains(&"clean_shutdown".to_string()));
}

#[test]
fn a_start_loading_its_images_is_work_and_a_shutdown_awaiting_its_guest_is_waiting() {
    let mut h = host();
    let vm = h.guest("paced");
    let task = text(&h.ok(
        "Async.VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    ))
    .to_string();
    // Every step of the start reads and hands on image bytes (or starts the domain): the
    // server is told to step it again at once, not at its idle pace.
    let mut steps = 0;
    while h.api.has_running_tasks() {
        let round = h.api.step_tasks(h.now);
        assert!(round.worked, "step {steps} of VM.start did no work");
        steps += 1;
        assert!(steps < 1000, "VM.start never finished");
    }
    assert_eq!(h.task_status(&task), "success");
    // A clean shutdown asks once, then waits for the guest: those steps are not work.
    let task = h.start_async("VM.clean_shutdown", &vm);
    assert!(h.api.step_tasks(h.now).worked, "asking the guest is work");
    for _ in 0..3 {
        h.now = h.now.plus_ms(100);
        let round = h.api.step_tasks(h.now);
        assert_eq!((round.running, round.worked), (1, false));
    }
    let domid = h.domid(&vm);
    h.api.shutdown_acknowledged(domid, h.now);
    assert!(
        h.api.step_tasks(h.now).worked,
        "the acknowledgement moves it on"
    );
    assert_eq!(h.task_status(&task), "pending");
}

#[test]
fn an_unacknowledged_clean_shutdown_fails_and_leaves_the_guest_running() {
    let mut h = host();
    let (vm, domid) = h.running_guest("deaf");
    let task = h.start_async("VM.clean_shutdown", &vm);
    h.run();
    h.now = h.now.plus_ms(59_000);
    h.run();
    assert_eq!(h.task_status(&task), "pending");
    h.now = h.now.plus_ms(2_000);
    h.run();
    assert_eq!(h.task_status(&task), "failure");
    let info = strings(&h.get("task", &task, "error_info"));
    assert_eq!(
        info,
        vec!["VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT".to_string(), vm.clone()]
    );
    assert_eq!(h.power(&vm), "Running");
    assert!(h.guests.domain(domid).is_some(), "no silent hard stop");
    assert_eq!(
        h.get("VM", &vm, "current_operations"),
        Value::empty_struct()
    );
    // An acknowledged one that never stops times out the same way.
    let task = h.start_async("VM.clean_shutdown", &vm);
    h.run();
    h.api.shutdown_acknowledged(domid, h.now);
    h.run();
    h.now = h.now.plus_ms(600_001);
    h.run();
    let info = strings(&h.get("task", &task, "error_info"));
    assert_eq!(
        info,
        vec!["VM_SHUTDOWN_TIMEOUT".to_string(), vm.clone(), "600".into()]
    );
    assert_eq!(h.power(&vm), "Running");
    // The toolstack may give up first; the task fails at once, the guest keeps running.
    let task = h.start_async("VM.clean_reboot", &vm);
    h.run();
    assert!(h
        .api
        .shutdown_failed(domid, ShutdownFailure::NotAcknowledged, h.now));
    h.run();
    let info = strings(&h.get("task", &task, "error_info"));
    assert_eq!(info[0], "VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT");
    assert_eq!(h.power(&vm), "Running");
    assert!(h.allowed(&vm).contains(&"clean_shutdown".to_string()));
}

#[test]
fn a_hard_shutdown_takes_over_from_a_clean_one_and_host_memory_follows() {
    let mut h = host();
    let host_ref = h.api.host_ref().to_string();
    let metrics = text(&h.get("host", &host_ref, "metrics")).to_string();
    let (vm, domid) = h.running_guest("stubborn");
    assert_eq!(
        h.get("host_metrics", &metrics, "memory_free"),
        Value::Int((4096 * MIB - 256 * MIB) as i64)
    );
    let task = h.start_async("VM.clean_shutdown", &vm);
    h.run();
    h.ok("VM.hard_shutdown", vec![s(&vm)]);
    assert_eq!(h.power(&vm), "Halted");
    assert!(h.guests.domain(domid).is_none());
    h.run();
    assert_eq!(h.task_status(&task), "cancelled");
    assert_eq!(
        h.get("VM", &vm, "current_operations"),
        Value::empty_struct()
    );
    assert!(h.allowed(&vm).contains(&"start".to_string()));
    assert_eq!(
        h.get("host_metrics", &metrics, "memory_free"),
        Value::Int((4096 * MIB) as i64)
    );
    // The guest stopping late changes nothing any more.
    h.api
        .domain_exited(domid, ExitReason::PowerOff, h.now)
        .unwrap();
    assert_eq!(h.power(&vm), "Halted");

    // hard_reboot takes over from clean_reboot the same way.
    h.ok(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );
    let second = h.domid(&vm);
    let task = h.start_async("VM.clean_reboot", &vm);
    h.run();
    h.ok("VM.hard_reboot", vec![s(&vm)]);
    h.run();
    assert_eq!(h.task_status(&task), "cancelled");
    assert_eq!(h.power(&vm), "Running");
    assert_ne!(h.domid(&vm), second);
    assert_eq!(h.guests.domids().len(), 1);
}

#[test]
fn clean_and_hard_reboots_boot_a_new_domain() {
    let mut h = host();
    let (vm, domid) = h.running_guest("rebooter");
    let task = h.start_async("VM.clean_reboot", &vm);
    h.run();
    assert_eq!(
        h.guests.domain(domid).unwrap().shutdown_request,
        Some(keel_xenapi::ShutdownRequest::Reboot)
    );
    h.api.shutdown_acknowledged(domid, h.now);
    h.api
        .domain_exited(domid, ExitReason::Reboot, h.now)
        .unwrap();
    h.run();
    assert_eq!(h.task_status(&task), "success");
    assert_eq!(h.power(&vm), "Running");
    let second = h.domid(&vm);
    assert_ne!(second, domid);
    assert_eq!(h.guests.domids(), vec![second]);

    h.ok("VM.hard_reboot", vec![s(&vm)]);
    let third = h.domid(&vm);
    assert_ne!(third, second);
    assert_eq!(h.guests.domids(), vec![third]);
    assert_eq!(h.power(&vm), "Running");
}

#[test]
fn guests_that_stop_by_themselves_are_handled_as_their_actions_say() {
    let mut h = host();
    // Powered off by itself; actions_after_shutdown = destroy.
    let (vm, domid) = h.running_guest("halts");
    h.api
        .domain_exited(domid, ExitReason::PowerOff, h.now)
        .unwrap();
    assert_eq!(h.power(&vm), "Halted");
    assert!(h.guests.domain(domid).is_none());

    // Crashed; actions_after_crash = restart (the template's): a task boots it again.
    let (vm, domid) = h.running_guest("crashes");
    h.api
        .domain_exited(domid, ExitReason::Crash, h.now)
        .unwrap();
    h.run();
    assert_eq!(h.power(&vm), "Running");
    assert_ne!(h.domid(&vm), domid);

    // Rebooted by itself with actions_after_reboot = destroy: it halts.
    let (vm, domid) = h.running_guest("no-reboots");
    h.ok("VM.set_actions_after_reboot", vec![s(&vm), s("destroy")]);
    h.api
        .domain_exited(domid, ExitReason::Reboot, h.now)
        .unwrap();
    h.run();
    assert_eq!(h.power(&vm), "Halted");

    // Crashed with preserve: the domain stays for inspection, the VM shows Paused, and
    // hard_shutdown cleans up.
    let (vm, domid) = h.running_guest("preserved");
    h.ok("VM.set_actions_after_crash", vec![s(&vm), s("preserve")]);
    h.api
        .domain_exited(domid, ExitReason::Crash, h.now)
        .unwrap();
    assert_eq!(h.power(&vm), "Paused");
    assert!(h.guests.domain(domid).is_some());
    h.ok("VM.hard_shutdown", vec![s(&vm)]);
    assert_eq!(h.power(&vm), "Halted");
    assert!(h.guests.domain(domid).is_none());

    // A domain that vanished is not destroyed again; exits of unknown domains are ignored.
    let (vm, domid) = h.running_guest("vanishes");
    h.guests.0.borrow_mut().domains.remove(&domid);
    h.api
        .domain_exited(domid, ExitReason::Vanished, h.now)
        .unwrap();
    assert_eq!(h.power(&vm), "Halted");
    assert!(!h.guests.calls().contains(&format!("destroy {domid}")));
    h.api.domain_exited(999, ExitReason::Crash, h.now).unwrap();
}

#[test]
fn boot_images_must_be_readable_vdis() {
    let mut h = host();
    let vm = h.guest("images");
    let start = |h: &mut Host| {
        h.err(
            "VM.start",
            vec![s(&vm), Value::Bool(false), Value::Bool(false)],
        )
    };
    for (kernel, expect) in [
        ("", "PV_kernel is empty"),
        ("/boot/vmlinuz", "vdi:<VDI uuid>"),
        ("vdi:00000000-0000-4000-8000-00000000dead", "does not exist"),
    ] {
        h.ok("VM.set_PV_kernel", vec![s(&vm), s(kernel)]);
        let e = start(&mut h);
        assert_eq!(code(&e), "BOOTLOADER_FAILED", "{kernel}");
        assert!(e.params()[1].contains(expect), "{kernel}: {e:?}");
        assert_eq!(h.power(&vm), "Halted");
    }
    h.ok("VM.set_PV_ramdisk", vec![s(&vm), s("initrd.img")]);
    let kernel = h.image_vdi("vmlinuz", KERNEL);
    h.ok(
        "VM.set_PV_kernel",
        vec![s(&vm), s(&format!("vdi:{kernel}"))],
    );
    let e = start(&mut h);
    assert!(e.params()[1].starts_with("PV_ramdisk"), "{e:?}");
    h.ok("VM.set_PV_ramdisk", vec![s(&vm), s("")]);

    // Unreadable: the VDI disappears from the storage manager after the start was accepted.
    let task = text(&h.ok(
        "Async.VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    ))
    .to_string();
    h.storage.remove_vdi("sr-a", &kernel);
    h.run();
    assert_eq!(h.task_status(&task), "failure");
    let info = strings(&h.get("task", &task, "error_info"));
    assert_eq!(info[0], "BOOTLOADER_FAILED");
    assert!(info[2].contains("reading VDI"), "{info:?}");
    assert_eq!(h.power(&vm), "Halted");
    assert_eq!(
        h.get("VM", &vm, "current_operations"),
        Value::empty_struct()
    );

    // A kernel the builder rejects.
    let junk = h.image_vdi("junk", b"not an elf");
    h.ok("VM.set_PV_kernel", vec![s(&vm), s(&format!("vdi:{junk}"))]);
    let e = start(&mut h);
    assert_eq!(code(&e), "BOOTLOADER_FAILED");
    assert!(h.guests.domids().is_empty());
}

/// `PV_bootloader = "pygrub"` (all an XCP client sets) boots GRUB for Xen PVH from the VDI the
/// host's `other_config:keel_pvgrub` names, with the VM's own disks and `PV_args`; whatever
/// is missing is a BOOTLOADER_FAILED naming it.
#[test]
fn pygrub_boots_the_hosts_grub_with_the_vms_own_disk() {
    const GRUB: &[u8] = b"\x7fELF GRUB for Xen PVH, for tests";
    let mut h = host();
    let host_ref = h.api.host_ref().to_string();
    let vm = h.guest("pygrub");
    h.ok("VM.set_PV_kernel", vec![s(&vm), s("")]);
    h.ok("VM.set_PV_ramdisk", vec![s(&vm), s("")]);
    h.ok("VM.set_PV_args", vec![s(&vm), s("console=hvc0 for-grub")]);
    let start_fails = |h: &mut Host, expect: &str| {
        let e = h.err(
            "VM.start",
            vec![s(&vm), Value::Bool(false), Value::Bool(false)],
        );
        assert_eq!(code(&e), "BOOTLOADER_FAILED", "{expect}: {e:?}");
        assert!(e.params()[1].contains(expect), "{expect}: {e:?}");
        assert_eq!(h.power(&vm), "Halted");
    };
    h.ok("VM.set_PV_bootloader", vec![s(&vm), s("eliloader")]);
    start_fails(&mut h, "Keel knows");
    h.ok("VM.set_PV_bootloader", vec![s(&vm), s("pygrub")]);
    start_fails(&mut h, "no VBD with a VDI");

    let disk = h.image_vdi("guest disk", &[0; 4096]);
    let disk_ref = text(&h.ok("VDI.get_by_uuid", vec![s(&disk)])).to_string();
    let record = |pairs: &[(&str, Value)]| {
        Value::Struct(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    };
    let vbd = record(&[
        ("VM", s(&vm)),
        ("VDI", s(&disk_ref)),
        ("userdevice", s("0")),
        ("mode", s("RW")),
        ("type", s("Disk")),
        ("bootable", Value::Bool(true)),
        ("unpluggable", Value::Bool(true)),
        ("empty", Value::Bool(false)),
        ("other_config", record(&[])),
        ("qos_algorithm_type", s("")),
        ("qos_algorithm_params", record(&[])),
    ]);
    h.ok("VBD.create", vec![vbd]);
    start_fails(&mut h, "other_config:keel_pvgrub");
    h.ok(
        "host.add_to_other_config",
        vec![
            s(&host_ref),
            s("keel_pvgrub"),
            s("vdi:00000000-0000-4000-8000-00000000dead"),
        ],
    );
    start_fails(&mut h, "does not exist");

    let grub = h.image_vdi("grub-i386-xen_pvh.bin", GRUB);
    h.ok(
        "host.remove_from_other_config",
        vec![s(&host_ref), s("keel_pvgrub")],
    );
    h.ok(
        "host.add_to_other_config",
        vec![s(&host_ref), s("keel_pvgrub"), s(&format!("vdi:{grub}"))],
    );
    // The VM's own kernel fields are not read: a stale PV_ramdisk is no error.
    h.ok("VM.set_PV_ramdisk", vec![s(&vm), s("/boot/initrd.img")]);
    h.ok(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );
    let domid = h.domid(&vm);
    let domain = h.guests.domain(domid).unwrap();
    assert_eq!(&domain.kernel[..GRUB.len()], GRUB);
    assert_eq!(domain.kernel.len(), 512, "the VDI's whole content");
    assert_eq!(domain.ramdisk, None);
    let spec = domain.spec;
    assert_eq!(spec.cmdline, "console=hvc0 for-grub");
    assert_eq!(spec.disks.len(), 1);
    assert_eq!(spec.disks[0].device, "xvda");
    assert!(spec.disks[0].bootable);
    assert_eq!(spec.disks[0].vdi.as_ref().unwrap().vdi_uuid, disk);
}

#[test]
fn memory_is_checked_against_the_host_and_the_constraints() {
    let mut h = host_with_memory(128 * MIB);
    let vm = h.guest("big");
    let e = h.err(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );
    assert_eq!(
        e.description(),
        vec![
            "HOST_NOT_ENOUGH_FREE_MEMORY".to_string(),
            (256 * MIB).to_string(),
            (128 * MIB).to_string()
        ]
    );
    let e = h.err(
        "VM.set_memory_limits",
        vec![
            s(&vm),
            Value::Int(64 << 20),
            Value::Int(32 << 20),
            Value::Int(32 << 20),
            Value::Int(32 << 20),
        ],
    );
    assert_eq!(code(&e), "MEMORY_CONSTRAINT_VIOLATION");
    h.ok("VM.set_memory", vec![s(&vm), Value::Int(96 << 20)]);
    assert_eq!(h.get("VM", &vm, "memory_static_max"), Value::Int(96 << 20));
    assert_eq!(h.get("VM", &vm, "memory_dynamic_min"), Value::Int(96 << 20));
    h.ok(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );
    let domid = h.domid(&vm);
    // Live: the dynamic range moves the balloon target; the static range needs a halt.
    h.ok(
        "VM.set_memory_dynamic_range",
        vec![s(&vm), Value::Int(64 << 20), Value::Int(80 << 20)],
    );
    assert_eq!(h.guests.domain(domid).unwrap().memory_target, 80 << 20);
    assert_eq!(h.get("VM", &vm, "memory_target"), Value::Int(80 << 20));
}

#[test]
fn vcpus_are_checked_and_changed_live() {
    let mut h = host();
    let vm = h.guest("cpus");
    assert_eq!(
        code(&h.err("VM.set_VCPUs_at_startup", vec![s(&vm), Value::Int(2)])),
        "VALUE_NOT_SUPPORTED"
    );
    h.ok("VM.set_VCPUs_max", vec![s(&vm), Value::Int(4)]);
    h.ok("VM.set_VCPUs_at_startup", vec![s(&vm), Value::Int(2)]);
    assert_eq!(
        code(&h.err("VM.set_VCPUs_max", vec![s(&vm), Value::Int(1)])),
        "VALUE_NOT_SUPPORTED"
    );
    h.ok(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );
    let domid = h.domid(&vm);
    assert_eq!(h.guests.domain(domid).unwrap().spec.max_vcpus, 4);
    assert_eq!(h.guests.domain(domid).unwrap().vcpus_online, 2);
    h.ok("VM.set_VCPUs_number_live", vec![s(&vm), Value::Int(3)]);
    assert_eq!(h.guests.domain(domid).unwrap().vcpus_online, 3);
    let metrics = text(&h.get("VM", &vm, "metrics")).to_string();
    assert_eq!(h.get("VM_metrics", &metrics, "VCPUs_number"), Value::Int(3));
    assert_eq!(
        code(&h.err("VM.set_VCPUs_max", vec![s(&vm), Value::Int(8)])),
        "VM_BAD_POWER_STATE"
    );
}

#[test]
fn vms_are_created_copied_and_destroyed_with_their_metrics() {
    let mut h = host();
    let record = Value::Struct(
        [
            ("name_label".to_string(), s("made")),
            ("memory_static_max".to_string(), s("134217728")),
            ("memory_dynamic_max".to_string(), s("134217728")),
            ("memory_dynamic_min".to_string(), s("134217728")),
            ("memory_static_min".to_string(), s("67108864")),
            ("VCPUs_max".to_string(), s("2")),
            ("VCPUs_at_startup".to_string(), s("1")),
            ("actions_after_crash".to_string(), s("preserve")),
            ("power_state".to_string(), s("Running")),
            ("PV_args".to_string(), s("console=hvc0")),
        ]
        .into_iter()
        .collect(),
    );
    let vm = text(&h.ok("VM.create", vec![record])).to_string();
    assert_eq!(
        h.power(&vm),
        "Halted",
        "power_state is not the client's to set"
    );
    assert_eq!(h.get("VM", &vm, "actions_after_crash"), s("preserve"));
    assert_eq!(h.get("VM", &vm, "VCPUs_max"), Value::Int(2));
    assert_eq!(h.get("VM", &vm, "domain_type"), s("pvh"));
    h.ok("VM.set_domain_type", vec![s(&vm), s("hvm")]);
    h.ok("VM.set_PV_kernel", vec![s(&vm), s("vdi:whatever")]);
    let e = h.err(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );
    assert_eq!(e.params()[0], "domain_type");
    h.ok("VM.set_domain_type", vec![s(&vm), s("pvh")]);
    let bad = Value::Struct(
        [
            ("memory_static_max".to_string(), s("1")),
            ("memory_dynamic_max".to_string(), s("2")),
        ]
        .into_iter()
        .collect(),
    );
    assert_eq!(
        code(&h.err("VM.create", vec![bad])),
        "MEMORY_CONSTRAINT_VIOLATION"
    );
    let sr = text(&h.ok("SR.get_by_uuid", vec![s("sr-b")])).to_string();
    let copy = text(&h.ok("VM.copy", vec![s(&vm), s("made 2"), s(&sr)])).to_string();
    assert_eq!(h.get("VM", &copy, "PV_args"), s("console=hvc0"));
    assert_ne!(h.get("VM", &copy, "uuid"), h.get("VM", &vm, "uuid"));
    assert_ne!(h.get("VM", &copy, "metrics"), h.get("VM", &vm, "metrics"));
    let metrics = text(&h.get("VM", &vm, "metrics")).to_string();
    h.ok("VM.destroy", vec![s(&vm)]);
    assert_eq!(
        code(&h.err("VM.get_record", vec![s(&vm)])),
        "HANDLE_INVALID"
    );
    assert_eq!(
        code(&h.err("VM_metrics.get_record", vec![s(&metrics)])),
        "HANDLE_INVALID"
    );
    let template = h.template();
    assert_eq!(
        code(&h.err("VM.destroy", vec![s(&template)])),
        "OPERATION_NOT_ALLOWED"
    );
}

#[test]
fn without_a_toolstack_vms_exist_but_do_not_run() {
    let mut api = api();
    let session = login(&mut api);
    let all = call(&mut api, "VM.get_all", vec![s(&session)]).unwrap();
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "control domain and template"
    );
    let template = call(
        &mut api,
        "VM.get_by_name_label",
        vec![s(&session), s(PVH_TEMPLATE_NAME)],
    )
    .unwrap();
    let template = template.as_array().unwrap()[0]
        .as_str()
        .unwrap()
        .to_string();
    let vm = call(
        &mut api,
        "VM.clone",
        vec![s(&session), s(&template), s("x")],
    )
    .unwrap();
    let vm = vm.as_str().unwrap().to_string();
    call(
        &mut api,
        "VM.set_is_a_template",
        vec![s(&session), s(&vm), Value::Bool(false)],
    )
    .unwrap();
    let e = call(
        &mut api,
        "VM.start",
        vec![s(&session), s(&vm), Value::Bool(false), Value::Bool(false)],
    )
    .unwrap_err();
    assert_eq!(code(&e), "OPERATION_NOT_ALLOWED");
}

#[test]
fn a_failing_builder_leaves_the_vm_halted_with_its_reason() {
    let mut h = host();
    let vm = h.guest("unlucky");
    h.guests.0.borrow_mut().fail_next_start =
        Some(GuestError::Failed("out of grant frames".into()));
    let e = h.err(
        "VM.start",
        vec![s(&vm), Value::Bool(false), Value::Bool(false)],
    );
    assert_eq!(code(&e), "INTERNAL_ERROR");
    assert!(e.params()[0].contains("out of grant frames"));
    assert_eq!(h.power(&vm), "Halted");
    assert!(h.allowed(&vm).contains(&"start".to_string()));
}

/// Xen Orchestra lives on `event.from(["*"], token, 60)`: a guest stopping by itself wakes
/// a pending call with the VM's new record, its console's deletion and its metrics.
#[test]
fn a_pending_event_from_wakes_when_a_guest_stops_by_itself() {
    let mut h = host();
    let (vm, domid) = h.running_guest("watched");
    let console = strings(&h.get("VM", &vm, "consoles")).remove(0);
    let snapshot = h.ok(
        "event.from",
        vec![Value::string_array(["*"]), s(""), Value::Float(0.0)],
    );
    let token = text(field(&snapshot, "token")).to_string();
    let params = vec![
        s(&h.session),
        Value::string_array(["*"]),
        s(&token),
        Value::Float(60.0),
    ];
    let wait = match h.api.call("event.from", params, h.now) {
        CallOutcome::Pending(w) => w,
        CallOutcome::Done(r) => panic!("answered at once: {r:?}"),
    };
    let before = h.api.last_event_id();
    h.api
        .domain_exited(domid, ExitReason::PowerOff, h.now)
        .unwrap();
    assert!(h.api.last_event_id() > before, "the server knows to poll");
    let found = match h.api.resume(wait, h.now) {
        CallOutcome::Done(r) => r.unwrap(),
        CallOutcome::Pending(_) => panic!("still pending after the guest stopped"),
    };
    let events = field(&found, "events").as_array().unwrap();
    let of = |class: &str, r: &str, op: &str| {
        events.iter().any(|e| {
            text(field(e, "class")) == class
                && text(field(e, "ref")) == r
                && text(field(e, "operation")) == op
        })
    };
    assert!(of("console", &console, "del"));
    let last_vm = events
        .iter()
        .rev()
        .find(|e| text(field(e, "ref")) == vm)
        .unwrap();
    let record = field(last_vm, "snapshot");
    assert_eq!(field(record, "power_state"), &s("Halted"));
    assert_eq!(field(record, "domid"), &Value::Int(-1));
    assert!(strings(field(record, "allowed_operations")).contains(&"start".to_string()));
    let metrics = text(&h.get("VM", &vm, "metrics")).to_string();
    assert!(of("vm_metrics", &metrics, "mod"));
}

/// Images are read and handed to the backend a bounded piece per step with the task's
/// progress moving; `task.cancel` stops the start at its next step, gives the backend's
/// half-built domain up, and leaves the VM halted and free; so does `task.destroy`.
#[test]
fn a_start_reads_its_images_in_steps_and_can_be_cancelled() {
    let mut h = host();
    let vm = h.guest("big-kernel");
    let mut kernel = KERNEL.to_vec();
    kernel.resize(9 << 20, 0x90);
    let uuid = h.image_vdi("big vmlinuz", &kernel);
    h.ok("VM.set_PV_kernel", vec![s(&vm), s(&format!("vdi:{uuid}"))]);
    let start = |h: &mut Host| {
        text(&h.ok(
            "Async.VM.start",
            vec![s(&vm), Value::Bool(false), Value::Bool(false)],
        ))
        .to_string()
    };
    let task = start(&mut h);
    h.api.run_tasks(h.now);
    let progress = h.get("task", &task, "progress").as_float().unwrap();
    assert!(progress > 0.0 && progress < 1.0, "{progress}");
    assert_eq!(h.task_status(&task), "pending");
    h.ok("task.cancel", vec![s(&task)]);
    h.run();
    assert_eq!(h.task_status(&task), "cancelled");
    assert_eq!(h.power(&vm), "Halted");
    assert_eq!(
        h.get("VM", &vm, "current_operations"),
        Value::empty_struct()
    );
    assert!(h.guests.domids().is_empty());
    let free_memory = h.guests.free_memory_now();
    {
        let backend = h.guests.0.borrow();
        assert!(
            backend.prepared.is_empty(),
            "the prepared start was abandoned"
        );
        assert!(backend.calls.iter().any(|c| c.starts_with("abandon_start")));
    }

    // A task destroyed mid-start: nobody waits for it, and nothing of it stays.
    let task = start(&mut h);
    h.api.run_tasks(h.now);
    h.api.run_tasks(h.now);
    assert_eq!(h.guests.0.borrow().prepared.len(), 1);
    h.ok("task.destroy", vec![s(&task)]);
    assert!(h.guests.0.borrow().prepared.is_empty());
    assert_eq!(h.guests.free_memory_now(), free_memory);
    assert_eq!(
        h.get("VM", &vm, "current_operations"),
        Value::empty_struct()
    );

    let task = start(&mut h);
    h.run();
    assert_eq!(h.task_status(&task), "success");
    let domid = h.domid(&vm);
    let domain = h.guests.domain(domid).unwrap();
    assert_eq!(domain.kernel, kernel, "the whole image, in order");
    // No step hands the backend more than a bounded piece: no whole image in one call.
    let largest = h.guests.0.borrow().largest_piece;
    assert!(largest <= 256 << 10, "{largest} bytes in one step");
}

/// A backend that builds one guest at a time: a second start waits for its turn (its task
/// pending, nothing prepared) and then runs.
#[test]
fn a_start_waits_while_the_backend_is_building_as_many_as_it_does_at_once() {
    let mut h = host();
    h.guests.0.borrow_mut().max_prepared = Some(1);
    let mut kernel = KERNEL.to_vec();
    kernel.resize(2 << 20, 0x90);
    let uuid = h.image_vdi("vmlinuz 2 MiB", &kernel);
    let vms = [h.guest("first"), h.guest("second")];
    let mut tasks = Vec::new();
    for vm in &vms {
        h.ok("VM.set_PV_kernel", vec![s(vm), s(&format!("vdi:{uuid}"))]);
        let task = h.ok(
            "Async.VM.start",
            vec![s(vm), Value::Bool(false), Value::Bool(false)],
        );
        tasks.push(text(&task).to_string());
    }
    for _ in 0..3 {
        h.api.run_tasks(h.now);
    }
    assert_eq!(h.guests.0.borrow().prepared.len(), 1, "one start at a time");
    assert_eq!(h.task_status(&tasks[1]), "pending");
    h.run();
    for (vm, task) in vms.iter().zip(&tasks) {
        assert_eq!(h.task_status(task), "success");
        assert_eq!(h.power(vm), "Running");
        let domid = h.domid(vm);
        assert_eq!(h.guests.domain(domid).unwrap().kernel, kernel);
    }
}

/// A restart on a full host waits for Xen to return the old domain's memory (it does so
/// shortly after the destroy), and gives up with `HOST_NOT_ENOUGH_FREE_MEMORY` if it never
/// comes back.
#[test]
fn a_restart_waits_for_the_old_domains_memory() {
    let mut h = host_with_memory(256 * MIB);
    let (vm, domid) = h.running_guest("tight");
    h.guests.hold_returned_memory();
    h.api
        .domain_exited(domid, ExitReason::Crash, h.now)
        .unwrap();
    h.run_steps(3);
    assert_eq!(h.power(&vm), "Halted", "waiting for memory");
    h.guests.release_returned_memory();
    h.run();
    assert_eq!(h.power(&vm), "Running");

    let domid = h.domid(&vm);
    h.guests.hold_returned_memory();
    h.ok("VM.set_actions_after_reboot", vec![s(&vm), s("restart")]);
    h.api
        .domain_exited(domid, ExitReason::Reboot, h.now)
        .unwrap();
    h.run_steps(3);
    h.now = h.now.plus_ms(30_000);
    h.run();
    assert_eq!(h.power(&vm), "Halted");
    let restarts = h.ok("task.get_by_name_label", vec![s("VM.restart")]);
    let last = strings(&restarts)
        .into_iter()
        .find(|t| h.task_status(t) == "failure")
        .expect("a failed restart");
    let info = strings(&h.get("task", &last, "error_info"));
    assert_eq!(info[0], "HOST_NOT_ENOUGH_FREE_MEMORY");
    assert_eq!(
        h.get("VM", &vm, "current_operations"),
        Value::empty_struct()
    );
}
