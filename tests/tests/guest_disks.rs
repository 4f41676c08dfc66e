//! A Linux guest's filesystem on a VDI, served by Keel's blkback to Linux's own
//! `xen-blkfront`, through what a cloud disk lives through: a hot-plugged second disk coming
//! and going, `fstrim` giving the SR its space back, the guest's crash (`VM.hard_shutdown`)
//! and restart, a snapshot taken while the guest writes, and a host power cut (SIGKILL of
//! QEMU) right after the guest's `sync` returned.
//!
//! Each guest runs the initramfs's `fs` action (`keel_tests::guest`): it mounts `xvda`
//! (making a filesystem the first time), checks the files earlier boots wrote against their
//! checksums, writes one more file and a 16 MiB scratch file, `sync`s and says so; with two
//! files or more already there it then keeps rewriting a file with fsync; it waits for `xvdb`
//! to appear and go, removes the scratch file and runs `fstrim`. The test reads what the
//! guests printed from Keel's log of their consoles (`guest d<domid>: keel-guest: fs ...`).
//!
//! Guests under nested TCG take 30–60 s to boot, so the steps run on two guests at once and
//! share boots:
//!
//! - guest A, on a new VDI: makes its filesystem; a disk is hot-plugged and unplugged and its
//!   `fstrim` returns SR space; it is killed (`hard_shutdown`) and restarted: its synced files
//!   are intact; the host is killed right after that boot's `sync`, and after the host's
//!   restart the VDI (exported through the XenAPI, its journal replayed by `e2fsck`, read by
//!   `debugfs`) holds every file with its checksum.
//! - guest C, on a filesystem made by the test with two files already there, so that it
//!   rewrites a file with fsync from its first boot: `VM.snapshot` while it writes; a clone of
//!   the snapshot's disk mounts in guest D with every file C had synced.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_tests::guest::{self, GUEST_VM_PY};
use keel_tests::guest_host::{
    boot_host_on, fresh_disk, path, Host, GUEST_BOOT_DEADLINE, HOTPLUG_SCRIPT, MIB,
};
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Pattern};

/// Uploads the guest kernel, the initramfs and the prepared filesystem (C's disk), makes the
/// VMs `fs-a`, `fs-c` and `fs-d` (all `keel_guest=fs`), gives A a new 32 MiB VDI and C the
/// prepared one as `xvda` (D gets the snapshot's clone later). Prints `vm NAME REF`,
/// `vdi NAME REF` and `device NAME DEVICE`.
const SETUP_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, port, kernel, initrd, prepared = sys.argv[1:7]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-disks")
x = s.xenapi
k = upload_image(x, s._session, port, kernel, "guest kernel")
r = upload_image(x, s._session, port, initrd, "guest initramfs")
# The prepared filesystem is a 32 MiB VDI of which only the start holds data: that start is
# sent (an import shorter than the VDI leaves the rest unwritten: zeros).
c_disk = x.VDI.create({"SR": x.SR.get_all()[0], "name_label": "prepared filesystem",
                       "name_description": "", "virtual_size": str(32 << 20), "type": "user",
                       "sharable": False, "read_only": False, "other_config": {},
                       "xenstore_data": {}, "sm_config": {}, "tags": []})
data = open(prepared, "rb").read()
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=600)
conn.request("PUT", "/import_raw_vdi?" + urllib.parse.urlencode({"session_id": s._session, "vdi": c_disk}),
             body=data, headers={"Content-Length": str(len(data))})
response = conn.getresponse()
assert response.status == 200, (response.status, response.read())
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
vms = {}
for name in ["a", "c", "d"]:
    vms[name] = guest_vm(x, template[0], "fs-" + name, k, r,
                         "console=hvc0 quiet loglevel=4 keel_guest=fs")
    print("vm", name, vms[name])
a_disk = x.VDI.create({"SR": x.SR.get_all()[0], "name_label": "guest disk", "name_description": "",
                       "virtual_size": str(32 << 20), "type": "user", "sharable": False,
                       "read_only": False, "other_config": {}, "xenstore_data": {},
                       "sm_config": {}, "tags": []})
for name, vdi in [("a", a_disk), ("c", c_disk)]:
    vbd = x.VBD.create({"VM": vms[name], "VDI": vdi, "userdevice": "0", "bootable": False,
                        "mode": "RW", "type": "Disk", "unpluggable": True, "empty": False,
                        "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
    print("vdi", name, vdi)
    print("device", name, x.VBD.get_device(vbd), flush=True)
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

/// Prints the bytes of the SR that `VDI` uses (`physical_utilisation`) after an `SR.scan`,
/// which re-reads the sizes from the storage manager.
const USAGE_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, vdi = sys.argv[1:4]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-disks")
s.xenapi.SR.scan(s.xenapi.VDI.get_SR(vdi))
print("used", s.xenapi.VDI.get_physical_utilisation(vdi), flush=True)
"#;

/// Writes `VDI`'s data to the file `OUT` through `GET /export_raw_vdi`; prints its size.
const EXPORT_SCRIPT: &str = r#"
import sys, socket, http.client, urllib.parse, XenAPI
socket.setdefaulttimeout(600)
url, password, port, vdi, out = sys.argv[1:6]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-disks")
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=600)
conn.request("GET", "/export_raw_vdi?" + urllib.parse.urlencode({"session_id": s._session, "vdi": vdi}))
r = conn.getresponse()
assert r.status == 200, (r.status, r.read())
size = 0
with open(out, "wb") as f:
    while True:
        chunk = r.read(1 << 20)
        if not chunk:
            break
        f.write(chunk)
        size += len(chunk)
print("exported", size, flush=True)
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

fn script(host: &Host, script: &str, args: &[&str]) -> String {
    let mut argv = vec![host.url.as_str(), host.password.as_str()];
    argv.extend_from_slice(args);
    check(run_script(script, &argv))
}

/// The word after `key ` on a line of a script's output.
fn printed(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|l| l.strip_prefix(' ')))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("the script prints {key}: {out}"))
        .to_string()
}

fn vdi_used(host: &Host, vdi: &str) -> u64 {
    printed(&script(host, USAGE_SCRIPT, &[vdi]), "used")
        .parse()
        .expect("a number of bytes")
}

/// Starts `vm`; its new domain's id.
fn start(host: &Host, vm: &str) -> String {
    let started = check(host.call("start", vm, &[]));
    assert_eq!(started.power, "Running");
    started.domid
}

/// Runs a host tool; its status and output.
fn tool(program: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (e2fsprogs) on the test host: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A file's contents through `debugfs` (read-only).
fn debugfs_cat(image: &Path, file: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("debugfs (e2fsprogs) on the test host: {e}"));
    out.stdout
}

/// The md5 of a file on the test host, as `md5sum` prints it.
fn md5(file: &Path) -> String {
    let (status, out) = tool("md5sum", &[path(file)]);
    assert_eq!(status, Some(0), "{out}");
    out.split(' ').next().unwrap_or_default().to_string()
}

/// A filesystem as the guest's `fs` action leaves it after two boots: `files/` with two
/// 256 KiB files, `sums` (their `md5sum` lines as the guest writes them, under `/mnt`) and
/// `marker` naming the second. Made with the test host's `mke2fs -t ext4 -d` into a 32 MiB
/// image. Returns the image and the marker.
fn prepared_filesystem(dir: &Path) -> (PathBuf, String) {
    let root = dir.join("prepared");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("files")).expect("prepared tree");
    let mut sums = String::new();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut marker = String::new();
    for name in ["keel-fs-host0001", "keel-fs-host0002"] {
        let data: Vec<u8> = (0..256 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let file = root.join("files").join(name);
        std::fs::write(&file, &data).expect("prepared file");
        sums.push_str(&format!("{}  /mnt/files/{name}\n", md5(&file)));
        marker = name.to_string();
    }
    std::fs::write(root.join("sums"), sums).expect("sums");
    std::fs::write(root.join("marker"), format!("{marker}\n")).expect("marker");
    let image = dir.join("prepared.img");
    let _ = std::fs::remove_file(&image);
    let (status, out) = tool(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-d",
            path(&root),
            path(&image),
            "32M",
        ],
    );
    assert_eq!(status, Some(0), "mke2fs -d: {out}");
    // 4 KiB blocks make 32 MiB one block group: what mke2fs writes sits at the start, and
    // only that start (whole MiBs) is uploaded.
    let data = std::fs::read(&image).expect("prepared image");
    let used = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let prefix = used.div_ceil(MIB as usize) * MIB as usize;
    std::fs::write(&image, &data[..prefix]).expect("prepared image prefix");
    (image, marker)
}

/// Checks a VDI exported after the power cut: its journal replayed (what a mount does), the
/// marker names `marker`, and `files/` holds `files` files, each with the checksum `sums`
/// recorded when it was written.
fn check_exported(image: &Path, marker: &str, files: usize) {
    let (status, out) = tool("e2fsck", &["-E", "journal_only", "-y", path(image)]);
    assert!(
        matches!(status, Some(0 | 1)),
        "e2fsck journal replay: {status:?} {out}"
    );
    // The guest made ext4 with a journal (Debian's mkfs.ext4 in the initramfs), not ext2.
    let (_, stats) = tool("debugfs", &["-R", "stats", path(image)]);
    let features = stats
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_default();
    assert!(
        features.contains("has_journal") && features.contains("extent"),
        "{features}"
    );
    let found = String::from_utf8_lossy(&debugfs_cat(image, "/marker"))
        .trim()
        .to_string();
    assert_eq!(found, marker, "the marker synced before the power cut");
    let sums = String::from_utf8_lossy(&debugfs_cat(image, "/sums")).into_owned();
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines.len(), files, "{sums}");
    let scratch = image.with_extension("file");
    for line in lines {
        let (sum, name) = line.split_once("  ").expect("md5sum line");
        let inside = name.strip_prefix("/mnt").expect("written under /mnt");
        std::fs::write(&scratch, debugfs_cat(image, inside)).expect("scratch file");
        assert_eq!(md5(&scratch), sum, "{inside} after the power cut");
    }
}

///
/// An emulator fault (`keel_tests::emulator`) gets the test one more run on fresh hosts.
#[test]
fn a_linux_guest_filesystem_survives_crash_hot_plug_trim_power_cut_and_snapshot() {
    keel_tests::emulator::retry_after_emulator_fault("guest_disks", |name| {
        survives(name);
        Ok::<(), HarnessError>(())
    });
}

/// The test on hosts named `name` (before the power cut) and `<name>_after_cut`.
fn survives(name: &str) {
    let disk = fresh_disk(name);
    let dir = disk.parent().expect("the disk's directory").to_path_buf();
    let (prepared, prepared_marker) = prepared_filesystem(&dir);
    let host = check(boot_host_on(name, &disk));
    let port = host.url.rsplit(':').next().unwrap_or_default().to_string();
    let kernel = check(guest::kernel());
    let initrd = check(guest::initramfs());
    let out = script(
        &host,
        &format!("{GUEST_VM_PY}\n{SETUP_SCRIPT}"),
        &[&port, path(&kernel), path(&initrd), path(&prepared)],
    );
    let vm = |name: &str| printed(&out, &format!("vm {name}"));
    let (a, c, d) = (vm("a"), vm("c"), vm("d"));
    let a_vdi = printed(&out, "vdi a");
    assert_eq!(printed(&out, "device a"), "xvda", "userdevice 0 is xvda");

    // A and C boot at once. The XenAPI calls are made one at a time: a `VM.start` with
    // another call in flight (`VBD.unplug`, `VM.snapshot`) page-faulted Keel twice (a 64 KiB
    // copy into a guest-memory window of the domain builder; docs/blkback.md).
    let a_domid = start(&host, &a);
    let c_domid = start(&host, &c);
    let first = fs_line(&host, &a_domid, "made=");
    assert!(first.ends_with(" synced"), "{first}");
    assert_eq!(field(&first, "made"), "yes", "{first}");
    assert_eq!(field(&first, "files"), "0", "{first}");
    assert_eq!(field(&first, "check"), "none", "{first}");
    let marker1 = field(&first, "wrote");
    assert!(marker1.starts_with("keel-fs-"), "{first}");

    // C finds the prepared files and keeps rewriting one with fsync.
    let c_first = fs_line(&host, &c_domid, "made=");
    assert!(c_first.ends_with(" synced"), "{c_first}");
    assert_eq!(field(&c_first, "made"), "no", "{c_first}");
    assert_eq!(field(&c_first, "before"), prepared_marker, "{c_first}");
    assert_eq!(field(&c_first, "files"), "2", "{c_first}");
    assert_eq!(field(&c_first, "check"), "ok", "{c_first}");
    let c_marker = field(&c_first, "wrote");
    // A snapshot while it writes; its disk's clone goes to D (checked below). Then C is
    // killed while it writes.
    std::thread::sleep(Duration::from_secs(2));
    let snapped = script(&host, SNAPSHOT_SCRIPT, &[&c, &d]);
    eprintln!("guest_disks: {}", snapped.trim());
    assert!(snapped.contains(" xvda"), "{snapped}");
    let killed = check(host.call("hard_shutdown", &c, &[]));
    assert_eq!(killed.power, "Halted");

    // Hot-plug a second disk into A, then hot-unplug it.
    let full = vdi_used(&host, &a_vdi);
    let plugged = script(&host, HOTPLUG_SCRIPT, &["plug", &a, "1", "32"]);
    assert!(plugged.contains(" xvdb"), "userdevice 1 is xvdb: {plugged}");
    assert!(plugged.contains("attached True"), "{plugged}");
    let seen = fs_line(&host, &a_domid, "xvdb ");
    assert!(seen.contains("xvdb 65536 sectors"), "32 MiB: {seen}");
    let vbd = printed(&plugged, "vbd");
    let unplugged = script(&host, HOTPLUG_SCRIPT, &["unplug", &vbd]);
    assert!(unplugged.contains("attached False"), "{unplugged}");
    fs_line(&host, &a_domid, "xvdb gone");

    // fstrim of the freed 16 MiB gives the SR its space back.
    let trimmed = fs_line(&host, &a_domid, "trimmed");
    assert!(trimmed.ends_with(" bytes trimmed"), "fstrim: {trimmed}");
    let after_trim = vdi_used(&host, &a_vdi);
    assert!(
        after_trim + 8 * MIB <= full,
        "fstrim of 16 MiB freed too little of the VDI: {full} -> {after_trim}"
    );

    // A is killed (no unmount, no shutdown) and restarted on the same host, and D boots the
    // snapshot's clone, at once.
    let killed = check(host.call("hard_shutdown", &a, &[]));
    assert_eq!(killed.power, "Halted");
    let d_domid = start(&host, &d);
    let a2_domid = start(&host, &a);
    let copy = fs_line(&host, &d_domid, "made=");
    assert!(copy.ends_with(" synced"), "{copy}");
    assert_eq!(field(&copy, "made"), "no", "the snapshot mounts: {copy}");
    assert_eq!(field(&copy, "before"), c_marker, "{copy}");
    assert_eq!(field(&copy, "files"), "3", "{copy}");
    assert_eq!(field(&copy, "check"), "ok", "{copy}");
    let second = fs_line(&host, &a2_domid, "made=");
    assert!(second.ends_with(" synced"), "{second}");
    assert_eq!(field(&second, "made"), "no", "{second}");
    assert_eq!(field(&second, "before"), marker1, "{second}");
    assert_eq!(field(&second, "files"), "1", "{second}");
    assert_eq!(field(&second, "check"), "ok", "{second}");
    let a_marker2 = field(&second, "wrote");

    // Power cut right after A's sync returned: QEMU is killed with the guests running (if D's
    // line came later, as long after as that took: said here).
    let synced = check(host.machine.wait_for_line(
        Pattern::contains(format!("wrote={a_marker2} synced")),
        GUEST_BOOT_DEADLINE,
    ));
    eprintln!(
        "guest_disks: the power cut comes {:.1} s after A's sync returned",
        host.machine
            .uptime()
            .saturating_sub(synced.since_start)
            .as_secs_f64()
    );
    drop(host);
    let host = check(boot_host_on(&format!("{name}_after_cut"), &disk));
    let halted = check(host.call("get_power_state", &a, &[]));
    assert_eq!(halted.power, "Halted", "a power cut halts the VM");
    let image = dir.join("a-after-cut.img");
    let port = host.url.rsplit(':').next().unwrap_or_default().to_string();
    let exported = script(&host, EXPORT_SCRIPT, &[&port, &a_vdi, path(&image)]);
    assert_eq!(printed(&exported, "exported"), (32 * MIB).to_string());
    check_exported(&image, &a_marker2, 2);
}
