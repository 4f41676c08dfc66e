//! What the tests of Linux guests on Keel share: a Keel host booted under the real Xen 4.17
//! (TCG) with an SR disk and the management API forwarded ([`boot_host`], [`boot_host_on`]),
//! the guest kernel and initramfs uploaded and VMs made from the PVH template ([`setup`]),
//! one XenAPI call on a VM with its outcome ([`Host::call`]), a guest's console read through
//! the XenAPI console endpoint ([`Host::console`]), and SDK scripts for disks ([`DISK_SCRIPT`],
//! [`VBD_SCRIPT`]).
//!
//! One host boot should serve many steps: guests under nested TCG boot in 30 to 90 seconds.

#![allow(clippy::expect_used)] // a harness whose scripts misbehave fails the test using it

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::credentials::test_credentials;
use crate::guest::{self, GUEST_READY, GUEST_VM_PY};
use crate::kernel_lines::READY_PREFIX;
use crate::python::run_script;
use crate::{HarnessError, Machine, NicModel, Pattern, Vm};

/// Xen and Keel under TCG, on a machine also building and testing.
pub const XEN_BOOT_DEADLINE: Duration = Duration::from_secs(150);
/// From `VM.start` to the guest's marker on its console: Linux decompresses and boots
/// inside an emulated SVM guest of an emulated machine.
pub const GUEST_BOOT_DEADLINE: Duration = Duration::from_secs(300);
pub const MIB: u64 = 1 << 20;

/// Uploads the kernel and initramfs as VDIs and makes VMs from the template. Prints one
/// `vm <name> <ref>` line per VM made.
pub const SETUP_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(240)  # a host that stops answering fails the step, not the run
url, password, port, kernel, initrd = sys.argv[1:6]
names = sys.argv[6:]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guests")
x = s.xenapi
k = upload_image(x, s._session, port, kernel, "guest kernel")
r = upload_image(x, s._session, port, initrd, "guest initramfs")
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
assert len(template) == 1, template
for name in names:
    action = name.split("-")[0]
    vm = guest_vm(x, template[0], name, k, r, "console=hvc0 quiet loglevel=4 keel_guest=" + action)
    print("vm", name, vm, flush=True)
"#;

/// Runs one call on a VM and prints the VM's power state and domid afterwards, and the
/// host's free memory. `wait-halted` waits for the guest to stop by itself; `start-refused`
/// expects `VM.start` to fail and prints the error code; `start-watched` starts the VM as a
/// task and keeps calling the host meanwhile, printing how many answers came and the longest
/// wait between two (a start that held the host would show as one long wait); `set-FIELD
/// VALUE` calls `VM.set_FIELD(vm, VALUE)`.
pub const CALL_SCRIPT: &str = r#"
import sys, time, socket, XenAPI
socket.setdefaulttimeout(240)  # a host that stops answering fails the step, not the run
url, password, call, vm = sys.argv[1:5]
rest = sys.argv[5:]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guests")
x = s.xenapi
started = time.time()
if call == "start":
    x.VM.start(vm, False, False)
elif call == "start-refused":
    try:
        x.VM.start(vm, False, False)
        raise AssertionError("VM.start of a broken VM succeeded")
    except XenAPI.Failure as f:
        print("refused", f.details[0], flush=True)
elif call == "start-watched":
    task = x.Async.VM.start(vm, False, False)
    last, progress, answers, gaps = time.time(), 0.0, 0, []
    while x.task.get_status(task) == "pending":
        now, was = time.time(), progress
        progress = x.task.get_progress(task)
        gaps.append((now - last, was, progress))
        last, answers = now, answers + 1
        assert now - started < 240, "VM.start still pending"
    status = x.task.get_status(task)
    assert status == "success", (status, x.task.get_error_info(task))
    gaps.append((time.time() - last, progress, 1.0))
    gaps.sort(reverse=True)
    # The longest waits, with the task's progress before and after each.
    print("waits", " ".join("%.2f@%.2f-%.2f" % g for g in gaps[:4]), flush=True)
    print("watched %d %.2f" % (answers, gaps[0][0]), flush=True)
elif call == "wait-halted":
    while x.VM.get_power_state(vm) != "Halted":
        assert time.time() - started < 300, "still " + x.VM.get_power_state(vm)
        time.sleep(0.5)
elif call.startswith("set-"):
    getattr(x.VM, "set_" + call[4:])(vm, *rest)
else:
    getattr(x.VM, call)(vm)
print("took %.2f" % (time.time() - started))
host = x.host.get_all()[0]
print("free", x.host_metrics.get_memory_free(x.host.get_metrics(host)))
print("state", x.VM.get_power_state(vm), x.VM.get_domid(vm), flush=True)
"#;

/// What [`Host::call`] saw after the call.
#[derive(Debug)]
pub struct After {
    pub power: String,
    pub domid: String,
    pub free_bytes: u64,
    pub refused: Option<String>,
    /// Seconds the call took (as the client timed it).
    pub took_s: f64,
    /// `start-watched`: the host's answers while the start ran, and the longest wait
    /// between two, in seconds.
    pub watched: Option<(u64, f64)>,
}

/// Reads a VM's console through its XenAPI `console` object: `location` names the
/// management port's `/console` endpoint, whose `GET` answers the output so far. Waits until
/// `text` appears (or the deadline) and prints the line holding it.
pub const CONSOLE_SCRIPT: &str = r#"
import sys, time, socket, urllib.request, urllib.parse, urllib.error, XenAPI
socket.setdefaulttimeout(60)
url, password, port, vm, text, seconds = sys.argv[1:7]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guests")
x = s.xenapi
deadline = time.time() + float(seconds)
seen = ""
while time.time() < deadline:
    consoles = x.VM.get_consoles(vm)
    if consoles:
        location = x.console.get_location(consoles[0])
        target = urllib.parse.urlsplit(location)
        assert target.path == "/console", location
        local = "http://127.0.0.1:%s%s?%s&session_id=%s" % (port, target.path, target.query, s._session)
        try:
            seen = urllib.request.urlopen(local).read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            assert e.code == 404, e  # the console is attached a moment after the domain exists
        for line in seen.splitlines():
            if text in line:
                print("line", line, flush=True)
                sys.exit(0)
    time.sleep(1)
print("console so far:", seen[-2000:])
sys.exit(1)
"#;

pub struct Host {
    /// The QEMU machine: dropping it ends the host (a power cut).
    pub machine: Vm,
    pub url: String,
    pub password: String,
}

impl Host {
    pub fn call(&self, call: &str, vm: &str, args: &[&str]) -> Result<After, HarnessError> {
        let mut argv = vec![self.url.as_str(), self.password.as_str(), call, vm];
        argv.extend_from_slice(args);
        let out = run_script(CALL_SCRIPT, &argv).inspect_err(|_| self.report_stall())?;
        eprintln!("guests: VM.{call}: {}", out.trim().replace('\n', "; "));
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::to_string)
        };
        let state = field("state ").expect("the script prints the state");
        let (power, domid) = state.split_once(' ').expect("state and domid");
        Ok(After {
            power: power.to_string(),
            domid: domid.to_string(),
            free_bytes: field("free ")
                .and_then(|f| f.parse().ok())
                .expect("the script prints free memory"),
            refused: field("refused "),
            took_s: field("took ")
                .and_then(|t| t.parse().ok())
                .expect("the script prints how long the call took"),
            watched: field("watched ").and_then(|w| {
                let (answers, longest) = w.split_once(' ')?;
                Some((answers.parse().ok()?, longest.parse().ok()?))
            }),
        })
    }

    /// After a failed step: what QEMU and Xen say the machine is doing
    /// ([`crate::xen_stall`]), on stderr and in the console log.
    pub fn report_stall(&self) {
        for line in self.machine.xen_stall_report().lines() {
            eprintln!("{line}");
        }
    }

    /// Waits until a guest whose command line ends in `keel_guest=ACTION` printed its ready
    /// line, as Keel's log shows it (for guests that stop at once, whose console is gone
    /// before a client could read it).
    pub fn logged_ready(&self, action: &str, deadline: Duration) -> Result<String, HarnessError> {
        // Only the ready line (`keel-guest: ready (<command line>)`) closes the command
        // line with a parenthesis.
        let line = self
            .machine
            .wait_for(Pattern::contains(format!("keel_guest={action})")), deadline)?;
        assert!(line.contains(GUEST_READY), "{line}");
        Ok(line)
    }

    /// Waits until `vm`'s console, read through the XenAPI console endpoint, shows `text`.
    pub fn console(
        &self,
        vm: &str,
        text: &str,
        deadline: Duration,
    ) -> Result<String, HarnessError> {
        let port = self.url.rsplit(':').next().unwrap_or_default().to_string();
        let seconds = deadline.as_secs().to_string();
        let out = run_script(
            CONSOLE_SCRIPT,
            &[&self.url, &self.password, &port, vm, text, &seconds],
        )
        .inspect_err(|_| self.report_stall())?;
        Ok(out
            .lines()
            .find_map(|l| l.strip_prefix("line "))
            .unwrap_or_default()
            .to_string())
    }
}

/// Boots a host named `name` on a new, empty 256 MiB SR disk image (its own directory under
/// `target/keel/test-disks/`).
pub fn boot_host(name: &str) -> Result<Host, HarnessError> {
    let disk = fresh_disk(name);
    boot_host_on(name, &disk)
}

/// A new, empty 256 MiB disk image for the host of test `name`.
pub fn fresh_disk(name: &str) -> PathBuf {
    let dir = crate::paths::keel_dir().join("test-disks").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("disk directory");
    let disk = dir.join("sr.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(256 * MIB))
        .expect("disk image");
    disk
}

/// Boots a host named `name` (its console log's name) on the SR disk image `disk` as it is:
/// after a power cut (dropping the last [`Host`]), the same image is the same host.
pub fn boot_host_on(name: &str, disk: &Path) -> Result<Host, HarnessError> {
    boot_host_with_nic(name, disk, NicModel::VirtioNet)
}

/// [`boot_host_on`] with `nic` as the host's network card (the switch's uplink).
pub fn boot_host_with_nic(name: &str, disk: &Path, nic: NicModel) -> Result<Host, HarnessError> {
    let vm = Machine::new(name)
        .under_xen()
        .memory_mib(1024)
        .disk_file(disk, crate::DiskBus::VirtioBlk)
        .nic_with_api(nic)
        .append(test_credentials().cmdline_word())
        .append("keel.log=debug")
        .boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), XEN_BOOT_DEADLINE)?;
    let url = format!("http://127.0.0.1:{}", vm.api_port().expect("API port"));
    Ok(Host {
        machine: vm,
        url,
        password: test_credentials().password.clone(),
    })
}

pub fn setup(host: &Host, names: &[&str]) -> Result<Vec<String>, HarnessError> {
    setup_with(host, &guest::kernel()?, &guest::initramfs()?, names)
}

/// [`setup`] with another kernel or initramfs (e.g. the guest initramfs with a benchmark
/// program added): uploads them and makes one VM per name, whose first word (before `-`)
/// is its `keel_guest=` action. Returns the VMs' references.
pub fn setup_with(
    host: &Host,
    kernel: &Path,
    initrd: &Path,
    names: &[&str],
) -> Result<Vec<String>, HarnessError> {
    let port = host.url.rsplit(':').next().unwrap_or_default().to_string();
    let mut args = vec![
        host.url.as_str(),
        host.password.as_str(),
        port.as_str(),
        path(kernel),
        path(initrd),
    ];
    args.extend_from_slice(names);
    let out = run_script(&format!("{GUEST_VM_PY}\n{SETUP_SCRIPT}"), &args)?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("vm "))
        .map(|l| l.split(' ').nth(1).unwrap_or_default().to_string())
        .collect())
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Gives `vm` a new `size`-MiB VDI of the first SR as its first disk (`VBD.create`, as
/// clients do before `VM.start`); prints the VDI's and the VBD's references.
pub const DISK_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(240)
url, password, vm, size = sys.argv[1:5]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guests")
x = s.xenapi
vdi = x.VDI.create({"SR": x.SR.get_all()[0], "name_label": "guest disk", "name_description": "",
                    "virtual_size": str(int(size) << 20), "type": "user", "sharable": False,
                    "read_only": False, "other_config": {}, "xenstore_data": {},
                    "sm_config": {}, "tags": []})
vbd = x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": False, "mode": "RW",
                    "type": "Disk", "unpluggable": True, "empty": False, "other_config": {},
                    "qos_algorithm_type": "", "qos_algorithm_params": {}})
print("vdi", vdi)
print("vbd", vbd, x.VBD.get_device(vbd), flush=True)
"#;

/// Prints whether a VBD is attached now.
pub const VBD_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(240)
url, password, vbd = sys.argv[1:4]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guests")
print("attached", s.xenapi.VBD.get_currently_attached(vbd), flush=True)
"#;

/// `plug VM USERDEVICE MIB`: a new VDI of `MIB` MiB attached to the running `VM` as
/// `USERDEVICE` (`VBD.create`, `VBD.plug`: a hot-plug); prints the VBD, its device and whether
/// it is attached. `unplug VBD`: `VBD.unplug` (a hot-unplug), then prints whether it is still
/// attached.
pub const HOTPLUG_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(240)
url, password, mode, target = sys.argv[1:5]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-hotplug")
x = s.xenapi
if mode == "plug":
    userdevice, mib = sys.argv[5:7]
    vdi = x.VDI.create({"SR": x.SR.get_all()[0], "name_label": "hot disk", "name_description": "",
                        "virtual_size": str(int(mib) << 20), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "xenstore_data": {},
                        "sm_config": {}, "tags": []})
    vbd = x.VBD.create({"VM": target, "VDI": vdi, "userdevice": userdevice, "bootable": False,
                        "mode": "RW", "type": "Disk", "unpluggable": True, "empty": False,
                        "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    x.VBD.plug(vbd)
    print("vbd", vbd, x.VBD.get_device(vbd))
else:
    vbd = target
    x.VBD.unplug(vbd)
print("attached", x.VBD.get_currently_attached(vbd), flush=True)
"#;
