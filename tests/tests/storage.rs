//! Storage on a booted Keel: SRs on NVMe and virtio-blk disks (formatted when blank,
//! refused when foreign, attached on the next boot), the XenAPI storage flow driven by the
//! real Python SDK (create, import 64 MiB, snapshot, overwrite, clone, export and compare,
//! copy across SRs, VDI_IN_USE), and a SIGKILL of QEMU in the middle of an import.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keel_tests::credentials::test_credentials;
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::paths;
use keel_tests::python::{run_script, xenapi_python};
use keel_tests::{DiskBus, HarnessError, Machine, NicModel, Pattern, Vm, BOOT_DEADLINE};

const MIB: u64 = 1 << 20;

/// A fresh directory for one test's disk images (kept after the test, for post-mortems;
/// remade at the next run).
fn disk_dir(test: &str) -> PathBuf {
    let dir = paths::keel_dir().join("test-disks").join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating the disk directory");
    dir
}

fn sparse(path: &Path, bytes: u64) {
    fs::File::create(path)
        .and_then(|f| f.set_len(bytes))
        .expect("creating a disk image");
}

/// One `storage: SR <uuid> on <identity>: <how>; …` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SrLine {
    uuid: String,
    identity: String,
    how: String,
}

fn sr_lines(vm: &Vm) -> Vec<SrLine> {
    vm.serial_lines()
        .iter()
        .filter_map(|line| {
            let rest = line.split("storage: SR ").nth(1)?;
            let (uuid, rest) = rest.split_once(" on ")?;
            let (identity, rest) = rest.split_once(": ")?;
            let how = rest.split(';').next()?;
            Some(SrLine {
                uuid: uuid.into(),
                identity: identity.into(),
                how: how.into(),
            })
        })
        .collect()
}

fn boot(
    name: &str,
    disks: &[(&Path, DiskBus)],
    words: &[&str],
    api: bool,
) -> Result<Vm, HarnessError> {
    let mut machine = Machine::new(name).memory_mib(256);
    for (path, bus) in disks {
        machine = machine.disk_file(*path, *bus);
    }
    for word in words {
        machine = machine.append(*word);
    }
    if api {
        machine = machine
            .nic_with_api(NicModel::VirtioNet)
            .append(test_credentials().cmdline_word());
    }
    let vm = machine.boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    Ok(vm)
}

/// Waits for a clean power-off so every write reached the image files.
fn power_off(vm: Vm) {
    if let Err(e) = vm.wait_exit(Duration::from_secs(30)) {
        panic!("no power-off: {e}\nlog: {}", vm.log_path().display());
    }
}

#[test]
fn blank_disks_get_srs_foreign_ones_are_refused_and_srs_attach_again() -> Result<(), HarnessError> {
    let dir = disk_dir("storage_provisioning");
    let nvme = dir.join("nvme.img");
    let blk = dir.join("blk.img");
    sparse(&nvme, 64 * MIB);
    sparse(&blk, 64 * MIB);
    // Foreign data: a partition-table-like signature in the first sector.
    let mut foreign = fs::read(&blk).expect("reading the image");
    foreign[510] = 0x55;
    foreign[511] = 0xaa;
    foreign[4096..4096 + 12].copy_from_slice(b"foreign data");
    fs::write(&blk, &foreign).expect("writing the image");
    let disks = [
        (nvme.as_path(), DiskBus::Nvme),
        (blk.as_path(), DiskBus::VirtioBlk),
    ];

    let vm = boot("storage_first_boot", &disks, &["keel.test=poweroff"], false)?;
    let lines = sr_lines(&vm);
    assert_eq!(
        lines.len(),
        1,
        "{lines:?}\nlog: {}",
        vm.log_path().display()
    );
    assert_eq!(lines[0].identity, "nvme-keel0-n1");
    assert_eq!(lines[0].how, "created on a blank disk");
    let refused = vm
        .serial_lines()
        .into_iter()
        .find(|l| l.contains("holds data that is not a Keel SR"))
        .unwrap_or_else(|| panic!("no refusal line\nlog: {}", vm.log_path().display()));
    assert!(
        refused.contains("left untouched") && refused.contains("keel.format="),
        "{refused}"
    );
    let identity = refused
        .split("storage: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_default()
        .to_string();
    assert!(identity.starts_with("virtio-blk-"), "{refused}");
    power_off(vm);
    assert_eq!(
        fs::read(&blk).expect("reading the image"),
        foreign,
        "the foreign disk was written"
    );

    // Second boot: the SR is attached, not formatted again; the foreign disk still refused.
    let vm = boot(
        "storage_second_boot",
        &disks,
        &["keel.test=poweroff"],
        false,
    )?;
    let again = sr_lines(&vm);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (again[0].uuid.as_str(), again[0].how.as_str()),
        (lines[0].uuid.as_str(), "attached")
    );
    power_off(vm);

    // Third boot: keel.format names the foreign disk; it gets an SR, the NVMe one is kept.
    let word = format!("keel.format={identity}");
    let vm = boot(
        "storage_format_request",
        &disks,
        &["keel.test=poweroff", &word],
        false,
    )?;
    let mut third = sr_lines(&vm);
    third.sort_by(|a, b| a.identity.cmp(&b.identity));
    assert_eq!(
        third.len(),
        2,
        "{third:?}\nlog: {}",
        vm.log_path().display()
    );
    assert_eq!(third[0].how, "attached");
    assert_eq!(third[0].uuid, lines[0].uuid);
    assert_eq!(
        (third[1].identity.as_str(), third[1].how.as_str()),
        (identity.as_str(), "created as keel.format asked")
    );
    power_off(vm);
    Ok(())
}

/// Python helpers shared by the SDK scripts: deterministic data, streaming PUT and GET.
const PY_HELPERS: &str = r#"
import sys, time, hashlib, random, http.client, urllib.parse, XenAPI
MiB = 1 << 20

def ok(name):
    print("ok", name, flush=True)

def data(seed, n):
    rng = random.Random(seed)
    left = n
    while left:
        k = min(MiB, left)
        yield rng.randbytes(k)
        left -= k

def digest(parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()

def query(session, vdi, task=None):
    q = {"session_id": session, "vdi": vdi}
    if task:
        q["task_id"] = task
    return urllib.parse.urlencode(q)

def put(port, session, vdi, seed, n, task=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    conn.putrequest("PUT", "/import_raw_vdi?" + query(session, vdi, task))
    conn.putheader("Content-Length", str(n))
    conn.endheaders()
    for part in data(seed, n):
        conn.send(part)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body)
    conn.close()

def get(port, session, vdi):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    conn.request("GET", "/export_raw_vdi?" + query(session, vdi))
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read())
    h = hashlib.sha256()
    total = 0
    while True:
        b = r.read(MiB)
        if not b:
            break
        h.update(b)
        total += len(b)
    conn.close()
    return h.hexdigest(), total

def wait_task(x, task, seconds=600):
    deadline = time.time() + seconds
    while x.task.get_status(task) == "pending":
        assert time.time() < deadline, "task did not finish"
        time.sleep(0.2)
    return x.task.get_record(task)

def vdi_record(sr, name, size):
    return {"SR": sr, "name_label": name, "name_description": "", "virtual_size": str(size),
            "type": "user", "sharable": False, "read_only": False, "other_config": {},
            "xenstore_data": {}, "sm_config": {}, "tags": []}

url, password, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests")
x = s.xenapi
session = s._session
"#;

const FLOW_SCRIPT: &str = r#"
srs = x.SR.get_all_records()
by_bus = {}
for ref, rec in srs.items():
    assert rec["type"] == "keel", rec
    pbd = x.PBD.get_record(rec["PBDs"][0])
    assert pbd["currently_attached"] and pbd["SR"] == ref, pbd
    by_bus[pbd["device_config"]["bus"]] = ref
assert set(by_bus) == {"nvme", "virtio-blk"}, by_bus
nvme, blk = by_bus["nvme"], by_bus["virtio-blk"]
assert int(x.SR.get_physical_size(nvme)) > 128 * MiB
assert x.SR.get_VDIs(nvme) == []
ok("srs")

vdi = x.VDI.create(vdi_record(nvme, "imported", 64 * MiB))
assert x.VDI.get_SR(vdi) == nvme and int(x.VDI.get_virtual_size(vdi)) == 64 * MiB
ok("create")

task = x.task.create("upload", "64 MiB")
start = time.time()
put(port, session, vdi, 1, 64 * MiB, task)
seconds = time.time() - start
rec = x.task.get_record(task)
assert rec["status"] == "success" and float(rec["progress"]) == 1.0, rec
assert x.VDI.get_current_operations(vdi) == {}
print("import-mbps %.1f" % (64 / seconds), flush=True)
ok("import")

snap = x.VDI.snapshot(vdi, {})
assert x.VDI.get_is_a_snapshot(snap) and x.VDI.get_snapshot_of(snap) == vdi
assert x.VDI.get_read_only(snap)
assert snap in x.VDI.get_snapshots(vdi)
ok("snapshot")

put(port, session, vdi, 2, 8 * MiB)
clone = x.VDI.clone(snap, {})
assert not x.VDI.get_read_only(clone)
ok("overwrite-clone")

original = list(data(1, 64 * MiB))
expected_snapshot = digest(original)
expected_vdi = digest(list(data(2, 8 * MiB)) + original[8:])
start = time.time()
assert get(port, session, snap) == (expected_snapshot, 64 * MiB)
print("export-mbps %.1f" % (64 / (time.time() - start)), flush=True)
assert get(port, session, vdi) == (expected_vdi, 64 * MiB)
ok("export")

# A copy to the other SR runs as a task; a small VDI keeps the test quick.
small = x.VDI.create(vdi_record(nvme, "small", 8 * MiB))
put(port, session, small, 5, 8 * MiB)
task = x.Async.VDI.copy(small, blk)
rec = wait_task(x, task)
assert rec["status"] == "success", rec
copy = rec["result"].replace("<value>", "").replace("</value>", "")
assert x.VDI.get_SR(copy) == blk
assert get(port, session, copy) == (digest(data(5, 8 * MiB)), 8 * MiB)
ok("copy")

# An import in progress holds the VDI: destroy and resize are refused until it ends.
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
conn.putrequest("PUT", "/import_raw_vdi?" + query(session, clone))
conn.putheader("Content-Length", str(8 * MiB))
conn.endheaders()
conn.send(b"\0" * MiB)
deadline = time.time() + 30
while x.VDI.get_current_operations(clone) == {}:
    assert time.time() < deadline
    time.sleep(0.1)
for call in (lambda: x.VDI.destroy(clone), lambda: x.VDI.resize(clone, str(128 * MiB))):
    try:
        call()
        raise AssertionError("allowed while in use")
    except XenAPI.Failure as e:
        assert e.details[0] == "VDI_IN_USE", e.details
conn.close()
while x.VDI.get_current_operations(clone) != {}:
    assert time.time() < deadline, "the VDI stayed busy after the client left"
    time.sleep(0.1)
ok("in-use")

x.VDI.resize(vdi, str(96 * MiB))
assert int(x.VDI.get_virtual_size(vdi)) == 96 * MiB
x.VDI.set_name_label(vdi, "renamed")
assert x.VDI.get_by_name_label("renamed") == [vdi]
try:
    x.VDI.resize(snap, str(96 * MiB))
    raise AssertionError("resized a snapshot")
except XenAPI.Failure as e:
    assert e.details[0] == "VDI_READONLY", e.details
ok("resize-rename")

x.SR.scan(nvme)
used = int(x.SR.get_physical_utilisation(nvme))
assert used >= 72 * MiB, used
x.VDI.destroy(clone)
x.VDI.destroy(copy)
x.VDI.destroy(small)
assert clone not in x.SR.get_VDIs(nvme) and x.SR.get_VDIs(blk) == []
assert int(x.SR.get_physical_utilisation(blk)) == 0
ok("destroy")
"#;

#[test]
fn python_sdk_creates_imports_snapshots_clones_copies_and_exports_vdis() -> Result<(), HarnessError>
{
    let dir = disk_dir("storage_sdk_flow");
    let nvme = dir.join("nvme.img");
    let blk = dir.join("blk.img");
    sparse(&nvme, 256 * MIB);
    sparse(&blk, 128 * MIB);
    let disks = [
        (nvme.as_path(), DiskBus::Nvme),
        (blk.as_path(), DiskBus::VirtioBlk),
    ];
    let vm = boot("storage_sdk_flow", &disks, &[], true)?;
    let port = vm.api_port().expect("an API port").to_string();
    let url = format!("http://127.0.0.1:{port}");
    let script = format!("{PY_HELPERS}{FLOW_SCRIPT}");
    let out = match run_script(&script, &[&url, &test_credentials().password, &port]) {
        Ok(out) => out,
        Err(e) => panic!("{e}\nconsole: {}", vm.log_path().display()),
    };
    for check in [
        "srs",
        "create",
        "import",
        "snapshot",
        "overwrite-clone",
        "export",
        "copy",
        "in-use",
        "resize-rename",
        "destroy",
    ] {
        assert!(
            out.lines().any(|l| l == format!("ok {check}")),
            "{check} missing:\n{out}"
        );
    }
    for line in out
        .lines()
        .filter(|l| l.ends_with("mbps") || l.contains("-mbps "))
    {
        println!("{line}");
    }
    Ok(())
}

const CUT_SCRIPT: &str = r#"
nvme = [r for r, rec in x.SR.get_all_records().items()][0]
acked = x.VDI.create(vdi_record(nvme, "acked", 16 * MiB))
put(port, session, acked, 3, 16 * MiB)
print("acked-vdi", x.VDI.get_uuid(acked), flush=True)
cut = x.VDI.create(vdi_record(nvme, "cut", 64 * MiB))
print("cut-vdi", x.VDI.get_uuid(cut), flush=True)
task = x.task.create("upload", "to be cut")
import threading
threading.Thread(target=lambda: put(port, session, cut, 4, 64 * MiB, task), daemon=True).start()
deadline = time.time() + 600
while True:
    progress = float(x.task.get_progress(task))
    if progress >= 0.25:
        break
    assert x.task.get_status(task) == "pending"
    assert time.time() < deadline
    time.sleep(0.05)
print("acked-bytes", int(round(progress * 64 * MiB)), flush=True)
time.sleep(600)
"#;

const VERIFY_SCRIPT: &str = r#"
acked_uuid, cut_uuid, acked_bytes = sys.argv[4], sys.argv[5], int(sys.argv[6])
acked = x.VDI.get_by_uuid(acked_uuid)
assert get(port, session, acked) == (digest(data(3, 16 * MiB)), 16 * MiB)
ok("acked-vdi")
cut = x.VDI.get_by_uuid(cut_uuid)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
conn.request("GET", "/export_raw_vdi?" + query(session, cut))
r = conn.getresponse()
assert r.status == 200
got = r.read(acked_bytes)
expected = b"".join(data(4, 64 * MiB))[:acked_bytes]
assert got == expected, "acknowledged import data lost"
ok("acked-prefix")
"#;

#[test]
fn a_sigkill_mid_import_loses_nothing_acknowledged() -> Result<(), HarnessError> {
    let dir = disk_dir("storage_sigkill");
    let nvme = dir.join("nvme.img");
    sparse(&nvme, 128 * MIB);
    let disks = [(nvme.as_path(), DiskBus::Nvme)];
    let vm = boot("storage_sigkill_before", &disks, &[], true)?;
    let first = sr_lines(&vm);
    let port = vm.api_port().expect("an API port").to_string();
    let url = format!("http://127.0.0.1:{port}");
    let python = xenapi_python()?;
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(format!("{PY_HELPERS}{CUT_SCRIPT}"))
        .args([
            url.as_str(),
            test_credentials().password.as_str(),
            port.as_str(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| HarnessError::Io {
            what: "starting python".into(),
            error,
        })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut facts = std::collections::BTreeMap::new();
    while !facts.contains_key("acked-bytes") {
        match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(line) => {
                if let Some((k, v)) = line.split_once(' ') {
                    facts.insert(k.to_string(), v.to_string());
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the import script stopped early ({facts:?})\nlog: {}",
                    vm.log_path().display()
                );
            }
        }
    }
    // SIGKILL QEMU in the middle of the import (dropping the VM kills it).
    drop(vm);
    let _ = child.kill();
    let _ = child.wait();

    let vm = boot("storage_sigkill_after", &disks, &[], true)?;
    let after = sr_lines(&vm);
    assert_eq!(
        after.len(),
        1,
        "{after:?}\nlog: {}",
        vm.log_path().display()
    );
    assert_eq!(after[0].uuid, first[0].uuid);
    assert!(after[0].how.starts_with("attached"), "{after:?}");
    let port = vm.api_port().expect("an API port").to_string();
    let url = format!("http://127.0.0.1:{port}");
    let out = run_script(
        &format!("{PY_HELPERS}{VERIFY_SCRIPT}"),
        &[
            &url,
            &test_credentials().password,
            &port,
            &facts["acked-vdi"],
            &facts["cut-vdi"],
            &facts["acked-bytes"],
        ],
    );
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!("{e}\nconsole: {}", vm.log_path().display()),
    };
    assert!(
        out.contains("ok acked-vdi") && out.contains("ok acked-prefix"),
        "{out}"
    );
    Ok(())
}
