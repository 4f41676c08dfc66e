//! A Linux guest's filesystem on a VDI, served by Keel's blkback to Linux's own
//! `xen-blkfront`, through what a cloud disk lives through: the guest's crash
//! (`VM.hard_shutdown`), a hot-plugged second disk coming and going, `fstrim` giving SR space
//! back, a host power cut right after the guest's `sync` returned, and a snapshot taken while
//! the guest writes.
//!
//! One host boot (and one more after the power cut) and four guest boots serve every step:
//! guests under nested TCG are slow. The guest runs the initramfs's `fs` action
//! (`keel_tests::guest`): it mounts `xvda` (making a filesystem the first time: busybox's
//! `mke2fs`, mounted by Debian's `ext4` module), checks the files earlier boots wrote against
//! their checksums, writes one more file and a 16 MiB scratch file, `sync`s and says so; then
//! it waits for `xvdb` to appear and go, removes the scratch file and runs `fstrim`. The test
//! reads what the guest printed from Keel's log of the guest's console
//! (`guest d<domid>: keel-guest: fs ...`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use keel_tests::guest_host::{
    boot_host_on, fresh_disk, setup, Host, DISK_SCRIPT, GUEST_BOOT_DEADLINE, MIB,
};
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Pattern};

/// `plug VM`: a new 32 MiB VDI attached to the running `VM` as userdevice 1 (`VBD.create`,
/// `VBD.plug`); prints the VBD, its device and whether it is attached. `unplug VBD`:
/// `VBD.unplug`, then prints whether it is still attached.
const HOTPLUG_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, mode, target = sys.argv[1:5]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-disks")
x = s.xenapi
if mode == "plug":
    vdi = x.VDI.create({"SR": x.SR.get_all()[0], "name_label": "hot disk", "name_description": "",
                        "virtual_size": str(32 << 20), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "xenstore_data": {},
                        "sm_config": {}, "tags": []})
    vbd = x.VBD.create({"VM": target, "VDI": vdi, "userdevice": "1", "bootable": False,
                        "mode": "RW", "type": "Disk", "unpluggable": True, "empty": False,
                        "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    x.VBD.plug(vbd)
    print("vbd", vbd, x.VBD.get_device(vbd))
else:
    vbd = target
    x.VBD.unplug(vbd)
print("attached", x.VBD.get_currently_attached(vbd), flush=True)
"#;

/// `VM.snapshot` of the running `VM`, a `VDI.clone` of the snapshot's disk attached to the
/// halted `OTHER` as its `xvda`; prints the snapshot's VDI and the clone.
const SNAPSHOT_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, vm, other = sys.argv[1:5]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-disks")
x = s.xenapi
snap = x.VM.snapshot(vm, "fs snapshot")
# The snapshot has every disk of the VM, the unplugged xvdb too; xvda is userdevice 0.
disks = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(snap)
         if x.VBD.get_type(b) == "Disk" and x.VBD.get_userdevice(b) == "0"]
assert len(disks) == 1, disks
assert x.VDI.get_is_a_snapshot(disks[0]), "the snapshot's disk is a snapshot"
clone = x.VDI.clone(disks[0], {})
vbd = x.VBD.create({"VM": other, "VDI": clone, "userdevice": "0", "bootable": False, "mode": "RW",
                    "type": "Disk", "unpluggable": True, "empty": False, "other_config": {},
                    "qos_algorithm_type": "", "qos_algorithm_params": {}})
print("snapshot", disks[0], "clone", clone, x.VBD.get_device(vbd), flush=True)
"#;

/// Prints the first SR's `physical_utilisation` (bytes of the device in use) after an
/// `SR.scan`, which re-reads the SR's sizes from the storage manager.
const SR_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password = sys.argv[1:3]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-disks")
sr = s.xenapi.SR.get_all()[0]
s.xenapi.SR.scan(sr)
print("used", s.xenapi.SR.get_physical_utilisation(sr), flush=True)
"#;

fn check<T>(result: Result<T, HarnessError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Waits for the guest of domain `domid` to print `keel-guest: fs WHAT` on its console.
fn fs_line(host: &Host, domid: &str, what: &str) -> String {
    let line = check(host.machine.wait_for(
        Pattern::contains(format!("guest d{domid}: keel-guest: fs {what}")),
        GUEST_BOOT_DEADLINE,
    ));
    eprintln!("guest_disks: {line}");
    line
}

/// The value of `name=` in a guest's `fs` line.
fn field(line: &str, name: &str) -> String {
    line.split(' ')
        .find_map(|w| w.strip_prefix(name).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_default()
        .to_string()
}

fn sr_used(host: &Host) -> u64 {
    let out = check(run_script(SR_SCRIPT, &[&host.url, &host.password]));
    out.lines()
        .find_map(|l| l.strip_prefix("used "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the script prints the SR's utilisation")
}

/// Starts `vm` and returns its new domain's id once the guest has synced its files, with its
/// `fs` line.
fn start(host: &Host, vm: &str) -> (String, String) {
    let started = check(host.call("start", vm, &[]));
    assert_eq!(started.power, "Running");
    let line = fs_line(host, &started.domid, "made=");
    assert!(line.ends_with(" synced"), "{line}");
    (started.domid, line)
}

#[test]
#[ignore = "boots Xen and a Linux guest under QEMU TCG (minutes); run with `cargo test -p keel-tests --test guest_disks -- --ignored`"]
fn a_linux_guest_filesystem_survives_crash_hot_plug_trim_power_cut_and_snapshot() {
    let disk = fresh_disk("guest_disks");
    let host = check(boot_host_on("guest_disks", &disk));
    let vms = check(setup(&host, &["fs-1", "fs-2"]));
    let (vm, other) = (vms[0].clone(), vms[1].clone());
    let out = check(run_script(
        DISK_SCRIPT,
        &[&host.url, &host.password, &vm, "64"],
    ));
    assert!(out.contains(" xvda"), "userdevice 0 is xvda: {out}");

    // First boot: a new filesystem, one file, synced.
    let (domid, first) = start(&host, &vm);
    assert_eq!(field(&first, "made"), "yes", "{first}");
    assert_eq!(field(&first, "files"), "0", "{first}");
    assert_eq!(field(&first, "check"), "none", "{first}");
    let marker1 = field(&first, "wrote");
    assert!(marker1.starts_with("keel-fs-"), "{first}");
    let full = sr_used(&host);

    // Hot-plug a second disk into the running guest, then hot-unplug it.
    let plugged = check(run_script(
        HOTPLUG_SCRIPT,
        &[&host.url, &host.password, "plug", &vm],
    ));
    let vbd = plugged
        .lines()
        .find_map(|l| l.strip_prefix("vbd "))
        .and_then(|l| l.split(' ').next())
        .expect("the script prints the VBD")
        .to_string();
    assert!(plugged.contains(" xvdb"), "userdevice 1 is xvdb: {plugged}");
    assert!(plugged.contains("attached True"), "{plugged}");
    let seen = fs_line(&host, &domid, "xvdb ");
    assert!(seen.contains("xvdb 65536 sectors"), "32 MiB: {seen}");
    let unplugged = check(run_script(
        HOTPLUG_SCRIPT,
        &[&host.url, &host.password, "unplug", &vbd],
    ));
    assert!(unplugged.contains("attached False"), "{unplugged}");
    fs_line(&host, &domid, "xvdb gone");

    // fstrim of the freed 16 MiB gives the SR its space back.
    let trimmed = fs_line(&host, &domid, "trimmed");
    assert!(
        !trimmed.contains("trimmed fstrim"),
        "fstrim failed: {trimmed}"
    );
    let after_trim = sr_used(&host);
    assert!(
        after_trim + 8 * MIB <= full,
        "fstrim of 16 MiB freed too little of the SR: {full} -> {after_trim}"
    );

    // The guest is killed (no unmount, no shutdown): its synced files are intact.
    let killed = check(host.call("hard_shutdown", &vm, &[]));
    assert_eq!(killed.power, "Halted");
    let (_, second) = start(&host, &vm);
    assert_eq!(field(&second, "made"), "no", "{second}");
    assert_eq!(field(&second, "before"), marker1, "{second}");
    assert_eq!(field(&second, "files"), "1", "{second}");
    assert_eq!(field(&second, "check"), "ok", "{second}");
    let marker2 = field(&second, "wrote");

    // Power cut right after the guest's sync returned: QEMU is killed with the guest running.
    drop(host);
    let host = check(boot_host_on("guest_disks_after_cut", &disk));
    let halted = check(host.call("get_power_state", &vm, &[]));
    assert_eq!(halted.power, "Halted", "a power cut halts the VM");
    let (_, third) = start(&host, &vm);
    assert_eq!(field(&third, "made"), "no", "{third}");
    assert_eq!(field(&third, "before"), marker2, "{third}");
    assert_eq!(field(&third, "files"), "2", "{third}");
    assert_eq!(field(&third, "check"), "ok", "{third}");
    let marker3 = field(&third, "wrote");

    // A snapshot taken while the guest keeps writing (from its third boot on it rewrites a
    // file with fsync in a loop) is a consistent disk: a clone of it mounts in a second
    // guest with every file the first had synced.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let snapped = check(run_script(
        SNAPSHOT_SCRIPT,
        &[&host.url, &host.password, &vm, &other],
    ));
    eprintln!("guest_disks: {}", snapped.trim());
    assert!(snapped.contains(" xvda"), "{snapped}");
    let (_, copy) = start(&host, &other);
    assert_eq!(field(&copy, "made"), "no", "the snapshot mounts: {copy}");
    assert_eq!(field(&copy, "before"), marker3, "{copy}");
    assert_eq!(field(&copy, "files"), "3", "{copy}");
    assert_eq!(field(&copy, "check"), "ok", "{copy}");
}
