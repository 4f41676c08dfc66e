//! The host database on a booted Keel: a VM made with the Python SDK outlives a power cut
//! (SIGKILL of QEMU right after the SDK's last call returned) with its reference, UUID and
//! fields, the database VDI never shows, an `auto_poweron` VM is started at boot (here, with
//! no hypervisor, the start fails cleanly and says so), and a host without a disk says once
//! that nothing will persist.

use std::fs;
use std::path::{Path, PathBuf};

use keel_tests::credentials::test_credentials;
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::paths;
use keel_tests::python::run_script;
use keel_tests::{DiskBus, HarnessError, Machine, NicModel, Pattern, Vm, BOOT_DEADLINE};

const MIB: u64 = 1 << 20;

fn disk_dir(test: &str) -> PathBuf {
    let dir = paths::keel_dir().join("test-disks").join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating the disk directory");
    dir
}

fn boot(name: &str, disk: Option<&Path>) -> Result<Vm, HarnessError> {
    let mut machine = Machine::new(name)
        .memory_mib(256)
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word());
    if let Some(path) = disk {
        machine = machine.disk_file(path, DiskBus::Nvme);
    }
    let vm = machine.boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    Ok(vm)
}

fn lines_with(vm: &Vm, text: &str) -> Vec<String> {
    vm.serial_lines()
        .into_iter()
        .filter(|line| line.contains(text))
        .collect()
}

fn script(vm: &Vm, body: &str, extra: &[&str]) -> String {
    let port = vm.api_port().expect("an API port").to_string();
    let url = format!("http://127.0.0.1:{port}");
    let mut args = vec![url.as_str(), test_credentials().password.as_str()];
    args.extend_from_slice(extra);
    match run_script(&format!("{PY_HELPERS}{body}"), &args) {
        Ok(out) => out,
        Err(e) => panic!("{e}\nconsole: {}", vm.log_path().display()),
    }
}

/// `key value` lines of a script's output.
fn facts(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const PY_HELPERS: &str = r#"
import sys, XenAPI
SESSION = XenAPI.Session(sys.argv[1])
SESSION.xenapi.login_with_password("root", sys.argv[2], "2.21", "keel-tests")
x = SESSION.xenapi
TEMPLATE = "Keel Linux PVH (direct boot)"

def only(refs, what):
    assert len(refs) == 1, (what, refs)
    return refs[0]

def no_database_vdi():
    names = [r["name_label"] for r in x.VDI.get_all_records().values()]
    assert "keel-host-database" not in names, names
"#;

const CREATE_SCRIPT: &str = r#"
no_database_vdi()
template = only(x.VM.get_by_name_label(TEMPLATE), "template")
vm = x.VM.clone(template, "kept")
x.VM.provision(vm)
x.VM.set_is_a_template(vm, False)
x.VM.set_name_description(vm, "made before the power cut")
x.VM.set_other_config(vm, {"owner": "keel-tests", "note": "\u00e9t\u00e9 <&>"})
x.VM.add_tags(vm, "persisted")
x.VM.set_memory_limits(vm, str(128 << 20), str(128 << 20), str(128 << 20), str(128 << 20))
auto = x.VM.clone(template, "auto")
x.VM.provision(auto)
x.VM.set_is_a_template(auto, False)
x.VM.add_to_other_config(auto, "auto_poweron", "true")
pool = only(x.pool.get_all(), "pool")
x.pool.set_name_label(pool, "kept pool")
print("vm", vm)
print("uuid", x.VM.get_uuid(vm))
print("auto", auto)
print("dom0", only([r for r, v in x.VM.get_all_records().items() if v["is_control_domain"]], "dom0"))
print("template", template)
print("done yes", flush=True)
"#;

const VERIFY_SCRIPT: &str = r#"
vm_ref, uuid, auto_ref, dom0_ref, template_ref = sys.argv[3:8]
no_database_vdi()
vm = x.VM.get_by_uuid(uuid)
assert vm == vm_ref, (vm, vm_ref)
r = x.VM.get_record(vm)
assert r["name_label"] == "kept", r["name_label"]
assert r["name_description"] == "made before the power cut"
assert r["other_config"] == {"owner": "keel-tests", "note": "\u00e9t\u00e9 <&>"}, r["other_config"]
assert r["tags"] == ["persisted"], r["tags"]
assert r["memory_static_max"] == str(128 << 20), r["memory_static_max"]
assert r["power_state"] == "Halted", r["power_state"]
assert not r["is_a_template"]
x.VM_metrics.get_record(r["metrics"])
records = x.VM.get_all_records()
dom0 = only([k for k, v in records.items() if v["is_control_domain"]], "dom0")
assert dom0 == dom0_ref, (dom0, dom0_ref)
assert only(x.VM.get_by_name_label(TEMPLATE), "template") == template_ref
assert x.VM.get_other_config(auto_ref)["auto_poweron"] == "true"
assert x.pool.get_name_label(only(x.pool.get_all(), "pool")) == "kept pool"
# Still writable, and the change is kept too.
x.VM.set_name_label(vm, "kept twice")
print("ok verified", flush=True)
"#;

const VERIFY_AGAIN_SCRIPT: &str = r#"
assert x.VM.get_name_label(x.VM.get_by_uuid(sys.argv[3])) == "kept twice"
print("ok again", flush=True)
"#;

#[test]
fn vms_made_with_the_sdk_survive_a_power_cut() -> Result<(), HarnessError> {
    let dir = disk_dir("hostdb");
    let image = dir.join("nvme.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(128 * MIB))
        .expect("creating a disk image");

    let first = boot("hostdb_first", Some(&image))?;
    assert_eq!(
        lines_with(&first, "hostdb: database VDI").len(),
        1,
        "log: {}",
        first.log_path().display()
    );
    let made = facts(&script(&first, CREATE_SCRIPT, &[]));
    assert_eq!(
        made.get("done").map(String::as_str),
        Some("yes"),
        "{made:?}"
    );
    // Power cut right after the last call was answered (dropping the VM SIGKILLs QEMU).
    drop(first);

    let second = boot("hostdb_second", Some(&image))?;
    let loaded = lines_with(&second, "hostdb: loaded");
    assert_eq!(loaded.len(), 1, "log: {}", second.log_path().display());
    // The auto_poweron VM is started once the host is ready: with no hypervisor the start
    // fails cleanly and says so.
    let auto = second.wait_for(
        Pattern::contains(format!(
            "({}) has auto_poweron but cannot start",
            made["auto"]
        )),
        std::time::Duration::from_secs(30),
    )?;
    assert!(auto.contains("hostdb: VM auto"), "{auto}");
    let out = script(
        &second,
        VERIFY_SCRIPT,
        &[
            &made["vm"],
            &made["uuid"],
            &made["auto"],
            &made["dom0"],
            &made["template"],
        ],
    );
    assert!(out.contains("ok verified"), "{out}");
    drop(second);

    let third = boot("hostdb_third", Some(&image))?;
    let out = script(&third, VERIFY_AGAIN_SCRIPT, &[&made["uuid"]]);
    assert!(out.contains("ok again"), "{out}");
    Ok(())
}

#[test]
fn without_a_disk_keel_says_once_that_nothing_persists() -> Result<(), HarnessError> {
    let vm = boot("hostdb_no_disk", None)?;
    let said = lines_with(&vm, "nothing clients create will persist");
    assert_eq!(said.len(), 1, "{said:?}\nlog: {}", vm.log_path().display());
    assert!(said[0].contains("no SR"), "{said:?}");
    Ok(())
}

/// Xen and Keel under TCG, on a machine also building and testing.
const XEN_BOOT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(150);
/// From `VM.start` to the guest's marker on its console.
const GUEST_BOOT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

fn boot_xen(name: &str, disk: &Path) -> Result<Vm, HarnessError> {
    let vm = Machine::new(name)
        .under_xen()
        .memory_mib(1024)
        .disk_file(disk, DiskBus::VirtioBlk)
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word())
        .append("keel.log=debug")
        .boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), XEN_BOOT_DEADLINE)?;
    Ok(vm)
}

/// Uploads the guest kernel and initramfs, makes `plain` and `auto` (with
/// `other_config:auto_poweron=true`) from the template and starts both.
const GUESTS_SCRIPT: &str = r#"
port, kernel, initrd, cmdline = sys.argv[3:7]
k = upload_image(x, SESSION._session, port, kernel, "guest kernel")
r = upload_image(x, SESSION._session, port, initrd, "guest initramfs")
template = only(x.VM.get_by_name_label(TEMPLATE), "template")
for name in ["plain", "auto"]:
    vm = guest_vm(x, template, name, k, r, cmdline)
    if name == "auto":
        x.VM.add_to_other_config(vm, "auto_poweron", "true")
    x.VM.start(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running"
    print(name, vm, x.VM.get_domid(vm), flush=True)
"#;

/// After the host boot: `plain` is halted; `auto` is (being) started by the host.
const AFTER_SCRIPT: &str = r#"
import time
plain, auto = sys.argv[3:5]
assert x.VM.get_power_state(plain) == "Halted", x.VM.get_power_state(plain)
assert x.VM.get_domid(plain) == "-1", x.VM.get_domid(plain)
deadline = time.time() + 300
while x.VM.get_power_state(auto) != "Running":
    assert time.time() < deadline, "auto_poweron VM still " + x.VM.get_power_state(auto)
    time.sleep(0.5)
print("auto", x.VM.get_domid(auto), flush=True)
"#;

/// Under Xen, with real guests: a power cut with two guests running; at the next host boot
/// the plain one is `Halted` and the `auto_poweron` one runs again (its console says so).
///
/// An emulator fault (`keel_tests::emulator`) gets the test one more pair of hosts.
#[test]
fn after_a_power_cut_running_vms_are_halted_and_auto_poweron_ones_boot() {
    keel_tests::emulator::retry_after_emulator_fault("hostdb_xen", power_cut_with_guests);
}

fn power_cut_with_guests(name: &str) -> Result<(), HarnessError> {
    let dir = disk_dir(name);
    let image = dir.join("sr.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(256 * MIB))
        .expect("creating a disk image");
    let kernel = keel_tests::guest::kernel()?;
    let initrd = keel_tests::guest::initramfs()?;
    let cmdline = keel_tests::guest::cmdline("idle");

    let first = boot_xen(&format!("{name}_first"), &image)?;
    let port = first.api_port().expect("an API port").to_string();
    let out = script(
        &first,
        &format!("{}\n{GUESTS_SCRIPT}", keel_tests::guest::GUEST_VM_PY),
        &[
            &port,
            kernel.to_str().expect("UTF-8 path"),
            initrd.to_str().expect("UTF-8 path"),
            &cmdline,
        ],
    );
    let made = facts(&out);
    for name in ["plain", "auto"] {
        let (_, domid) = made[name].split_once(' ').expect("ref and domid");
        first.wait_for(
            Pattern::contains(format!(
                "guest d{domid}: {}",
                keel_tests::guest::GUEST_READY
            )),
            GUEST_BOOT_DEADLINE,
        )?;
    }
    // Power cut with both guests running.
    drop(first);

    let second = boot_xen(&format!("{name}_second"), &image)?;
    let halted = lines_with(&second, "that were running when the host went down");
    assert!(
        halted.iter().any(|l| l.contains("2 VMs")),
        "{halted:?}\nlog: {}",
        second.log_path().display()
    );
    let plain = made["plain"].split(' ').next().expect("ref");
    let auto = made["auto"].split(' ').next().expect("ref");
    let out = script(&second, AFTER_SCRIPT, &[plain, auto]);
    let domid = facts(&out)["auto"].clone();
    second.wait_for(
        Pattern::contains(format!(
            "guest d{domid}: {}",
            keel_tests::guest::GUEST_READY
        )),
        GUEST_BOOT_DEADLINE,
    )?;
    Ok(())
}
