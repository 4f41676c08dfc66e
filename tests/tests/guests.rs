//! Linux guests on Keel under the real Xen 4.17 (TCG), driven through the XenAPI by the real
//! Python SDK the way a cloud's orchestration drives an XCP host: Debian's kernel as shipped
//! and the lean guest initramfs (`keel_tests::guest`) are uploaded as VDIs, a VM is cloned
//! from the built-in PVH template, pointed at them (`vdi:<uuid>`) and started.
//!
//! One host boot serves every step (guests under nested TCG are slow): each step's Python
//! script returns, and the test watches Keel's console for what the guest printed on its
//! own console (Keel copies guest console lines to its log with `keel.log=debug`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;
use std::time::Duration;

use keel_tests::credentials::test_credentials;
use keel_tests::guest::{self, GUEST_READY};
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Machine, NicModel, Pattern, Vm};

/// Xen and Keel under TCG, on a machine also building and testing.
const XEN_BOOT_DEADLINE: Duration = Duration::from_secs(150);
/// From `VM.start` to the guest's marker on its console: Linux decompresses and boots
/// inside an emulated SVM guest of an emulated machine.
const GUEST_BOOT_DEADLINE: Duration = Duration::from_secs(300);
const MIB: u64 = 1 << 20;

/// Uploads the kernel and initramfs as VDIs and makes VMs from the template. Prints one
/// `vm <name> <ref>` line per VM made.
const SETUP_SCRIPT: &str = r#"
import sys, os, http.client, urllib.parse, XenAPI
MiB = 1 << 20
url, password, port, kernel, initrd = sys.argv[1:6]
names = sys.argv[6:]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guests")
x = s.xenapi
sr = x.SR.get_all()[0]

def upload(path, name):
    data = open(path, "rb").read()
    size = (len(data) + MiB - 1) // MiB * MiB
    vdi = x.VDI.create({"SR": sr, "name_label": name, "name_description": "",
                        "virtual_size": str(size), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "xenstore_data": {},
                        "sm_config": {}, "tags": []})
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=600)
    q = urllib.parse.urlencode({"session_id": s._session, "vdi": vdi})
    conn.putrequest("PUT", "/import_raw_vdi?" + q)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    conn.send(data)
    conn.send(bytes(size - len(data)))
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read())
    return x.VDI.get_uuid(vdi)

k = upload(kernel, "guest kernel")
r = upload(initrd, "guest initramfs")
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
assert len(template) == 1, template
for name in names:
    action = name.split("-")[0]
    vm = x.VM.clone(template[0], name)
    x.VM.set_PV_kernel(vm, "vdi:" + k)
    x.VM.set_PV_ramdisk(vm, "vdi:" + r)
    x.VM.set_PV_args(vm, "console=hvc0 quiet loglevel=4 keel_guest=" + action)
    x.VM.set_memory_limits(vm, str(64 * MiB), str(128 * MiB), str(128 * MiB), str(128 * MiB))
    x.VM.provision(vm)
    x.VM.set_is_a_template(vm, False)  # a clone of a template is one until told otherwise
    print("vm", name, vm, flush=True)
"#;

/// Runs one lifecycle call on a VM and prints its power state (and domid) afterwards.
const CALL_SCRIPT: &str = r#"
import sys, time, XenAPI
url, password, call, vm = sys.argv[1:5]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guests")
x = s.xenapi
started = time.time()
if call == "start":
    x.VM.start(vm, False, False)
elif call == "wait-halted":
    while x.VM.get_power_state(vm) != "Halted":
        assert time.time() - started < 300, "still " + x.VM.get_power_state(vm)
        time.sleep(0.5)
else:
    getattr(x.VM, call)(vm)
print("took %.2f" % (time.time() - started))
print("state", x.VM.get_power_state(vm), x.VM.get_domid(vm), flush=True)
"#;

struct Host {
    vm: Vm,
    url: String,
    password: String,
}

impl Host {
    fn call(&self, call: &str, vm: &str) -> Result<(String, String), HarnessError> {
        let out = run_script(CALL_SCRIPT, &[&self.url, &self.password, call, vm])?;
        eprintln!("guests: VM.{call}: {}", out.trim().replace('\n', "; "));
        let state = out
            .lines()
            .find_map(|l| l.strip_prefix("state "))
            .expect("the script prints the state");
        let (power, domid) = state.split_once(' ').expect("state and domid");
        Ok((power.to_string(), domid.to_string()))
    }

    /// Waits for domain `domid`'s console to print `text` (through Keel's log).
    fn console(&self, domid: &str, text: &str, deadline: Duration) -> Result<String, HarnessError> {
        self.vm.wait_for(
            Pattern::contains(format!("guest d{domid}: {text}")),
            deadline,
        )
    }
}

fn boot_host(name: &str) -> Result<Host, HarnessError> {
    let dir = keel_tests::paths::keel_dir().join("test-disks").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("disk directory");
    let disk = dir.join("sr.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(256 * MIB))
        .expect("disk image");
    let vm = Machine::new(name)
        .under_xen()
        .memory_mib(1024)
        .disk_file(&disk, keel_tests::DiskBus::VirtioBlk)
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word())
        .append("keel.log=debug")
        .boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), XEN_BOOT_DEADLINE)?;
    let url = format!("http://127.0.0.1:{}", vm.api_port().expect("API port"));
    Ok(Host {
        vm,
        url,
        password: test_credentials().password.clone(),
    })
}

fn setup(host: &Host, names: &[&str]) -> Result<Vec<String>, HarnessError> {
    let kernel = guest::kernel()?;
    let initrd = guest::initramfs()?;
    let port = host.url.rsplit(':').next().unwrap_or_default().to_string();
    let mut args = vec![
        host.url.as_str(),
        host.password.as_str(),
        port.as_str(),
        path(&kernel),
        path(&initrd),
    ];
    args.extend_from_slice(names);
    let out = run_script(SETUP_SCRIPT, &args)?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("vm "))
        .map(|l| l.split(' ').nth(1).unwrap_or_default().to_string())
        .collect())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn a_linux_guest_starts_prints_on_its_console_and_shuts_down_cleanly() -> Result<(), HarnessError> {
    let host = boot_host("guests_lifecycle")?;
    let vms = setup(&host, &["idle-1"])?;
    let (state, domid) = host.call("start", &vms[0])?;
    assert_eq!(state, "Running");
    let line = host.console(&domid, GUEST_READY, GUEST_BOOT_DEADLINE)?;
    assert!(line.contains("keel_guest=idle"), "{line}");
    let (state, domid_after) = host.call("clean_shutdown", &vms[0])?;
    assert_eq!((state.as_str(), domid_after.as_str()), ("Halted", "-1"));
    Ok(())
}
