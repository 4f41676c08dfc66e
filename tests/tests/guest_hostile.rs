//! A hostile frontend in a real guest against Keel's blkback (issue 10, point 4), under the
//! real Xen 4.17 (TCG), driven through the XenAPI by the Python SDK.
//!
//! The hostile guest boots Debian's kernel with an initramfs that has no `xen-blkfront` but
//! `tests/guest-tools/hostile_blkfront.c` (`keel_tests::guest::hostile_initramfs`): the program
//! connects to Keel's blkback through the guest kernel's `/dev/xen/{xenbus,gntalloc,evtchn}`
//! and sends bad requests one at a time — grant references never granted, unused, granted to
//! another domain or revoked, `first_sect > last_sect`, `last_sect > 7`, too many segments,
//! no segments, sectors past the VDI's end (and an overflowing sector), an unknown op, an
//! indirect page never granted — then repeats them (with a full ring at once each round)
//! until the test hot-plugs a second disk into it, then moves the producer index far ahead of
//! the ring. A well-behaved guest, started right after the hostile one, boots and does its
//! disk work while the repeats run (the `fs` action: a filesystem made, files written,
//! `sync`); once the hostile frontend was disconnected, a disk is hot-plugged into the
//! well-behaved guest and unplugged, and it frees space and runs `fstrim` on its first disk.
//!
//! One host boot, two guest boots at once, no fixed waits (nested TCG: 5-8 minutes on the
//! shared 2-core machine, most of it the two `VM.start`s and boots).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use keel_tests::guest::{self, GUEST_VM_PY};
use keel_tests::guest_host::{boot_host, path, Host, GUEST_BOOT_DEADLINE, HOTPLUG_SCRIPT};
use keel_tests::python::run_script;
use keel_tests::Pattern;

/// Uploads the guest kernel, the guest initramfs and the hostile initramfs, makes the
/// well-behaved VM (`keel_guest=fs`) and the hostile one, and gives each a new 64 MiB VDI as
/// its first disk (`xvda`). Prints `good <ref>`, `hostile <ref>` and each VBD's device.
const SETUP_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, port, kernel, initrd, hostile_initrd, seconds = sys.argv[1:8]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-hostile")
x = s.xenapi
k = upload_image(x, s._session, port, kernel, "guest kernel")
r = upload_image(x, s._session, port, initrd, "guest initramfs")
h = upload_image(x, s._session, port, hostile_initrd, "hostile initramfs")
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
vms = {
    "good": guest_vm(x, template[0], "fs-1", k, r, "console=hvc0 quiet loglevel=4 keel_guest=fs"),
    "hostile": guest_vm(x, template[0], "hostile-1", k, h,
                        "console=hvc0 quiet loglevel=4 keel_guest=hostile keel_hostile_seconds=" + seconds),
}
for name, vm in vms.items():
    vdi = x.VDI.create({"SR": x.SR.get_all()[0], "name_label": name + " disk", "name_description": "",
                        "virtual_size": str(64 << 20), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}, "xenstore_data": {},
                        "sm_config": {}, "tags": []})
    vbd = x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": False, "mode": "RW",
                        "type": "Disk", "unpluggable": True, "empty": False, "other_config": {},
                        "qos_algorithm_type": "", "qos_algorithm_params": {}})
    print(name, vm, x.VBD.get_device(vbd), flush=True)
"#;

/// Keel still answers the XenAPI: a login and a few reads, printed.
const ALIVE_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(60)
url, password = sys.argv[1:3]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-hostile")
x = s.xenapi
vms = [r for r in x.VM.get_all_records().values() if not r["is_a_template"]]
print("alive", len(x.SR.get_all()), "SRs", len(vms), "VMs", flush=True)
"#;

/// The longest the hostile guest keeps repeating its bad requests after the first round: the
/// test ends the repeats earlier (a disk hot-plugged into the hostile guest) once the
/// well-behaved guest has done its disk work; this only bounds a test that went wrong.
const REPEAT_SECONDS: &str = "400";

/// The cases the program sends, each of which must be refused.
const BAD_CASES: &[&str] = &[
    "never-granted-ref",
    "unused-ref",
    "ref-granted-to-another-domain",
    "revoked-ref",
    "first-sect-after-last",
    "last-sect-past-page",
    "too-many-segments",
    "no-segments",
    "sector-at-end",
    "range-across-end",
    "sector-overflow",
    "unknown-op",
    "indirect-page-never-granted",
];

/// The seconds since Keel's boot that a line of its log starts with (`[   65.8] ...`).
fn timestamp(line: &str) -> f64 {
    line.trim_start()
        .strip_prefix('[')
        .and_then(|l| l.split(']').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no timestamp: {line}"))
}

fn alive(host: &Host) {
    let out =
        run_script(ALIVE_SCRIPT, &[&host.url, &host.password]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("alive"), "the XenAPI answers: {out}");
}

/// Waits for `what` on the console of guest `domid` (`guest d<domid>: WHAT`).
fn guest_line(host: &Host, domid: &str, what: &str) -> String {
    let line = host
        .machine
        .wait_for(
            Pattern::contains(format!("guest d{domid}: {what}")),
            GUEST_BOOT_DEADLINE,
        )
        .unwrap_or_else(|e| panic!("guest d{domid}: {what}: {e}"));
    eprintln!("hostile: {line}");
    line
}

fn hotplug(host: &Host, args: &[&str]) -> String {
    let mut argv = vec![host.url.as_str(), host.password.as_str()];
    argv.extend_from_slice(args);
    run_script(HOTPLUG_SCRIPT, &argv).unwrap_or_else(|e| panic!("{e}"))
}

///
/// An emulator fault (`keel_tests::emulator`) gets the test one more run on a fresh host.
#[test]
fn a_hostile_frontend_in_a_guest_harms_nobody() {
    keel_tests::emulator::retry_after_emulator_fault("guest_hostile", |name| {
        harms_nobody(name);
        Ok::<(), keel_tests::HarnessError>(())
    });
}

fn harms_nobody(name: &str) {
    let host = boot_host(name).unwrap_or_else(|e| panic!("{e}"));
    let kernel = guest::kernel().unwrap_or_else(|e| panic!("{e}"));
    let initrd = guest::initramfs().unwrap_or_else(|e| panic!("{e}"));
    let hostile_initrd = guest::hostile_initramfs().unwrap_or_else(|e| panic!("{e}"));
    let port = host.url.rsplit(':').next().unwrap_or_default().to_string();
    let out = run_script(
        &format!("{GUEST_VM_PY}\n{SETUP_SCRIPT}"),
        &[
            &host.url,
            &host.password,
            &port,
            path(&kernel),
            path(&initrd),
            path(&hostile_initrd),
            REPEAT_SECONDS,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let vm = |name: &str| {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("the script makes the {name} VM: {out}"));
        assert!(line.ends_with(" xvda"), "userdevice 0 is xvda: {line}");
        line.split(' ').next().unwrap_or_default().to_string()
    };
    let (good, hostile) = (vm("good"), vm("hostile"));

    // The hostile guest first, the well-behaved one right after: both boot at once. The
    // hostile one is the first domain, so the page it grants to "another domain" (its
    // domid + 1) is granted to the other guest.
    let bad_started = host
        .call("start", &hostile, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad_started.power, "Running");
    let good_started = host
        .call("start", &good, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(good_started.power, "Running");
    let prefix = format!("guest d{}: keel-hostile: ", bad_started.domid);
    let hostile_lines = || -> Vec<String> {
        host.machine
            .serial_lines()
            .into_iter()
            .filter(|l| l.contains(&prefix))
            .collect()
    };
    let repeating = host
        .machine
        .wait_for(
            Pattern::contains(format!("{prefix}repeating")),
            GUEST_BOOT_DEADLINE,
        )
        .unwrap_or_else(|e| {
            panic!(
                "the hostile frontend did not get going: {e}: {:#?}",
                hostile_lines()
            )
        });

    // The well-behaved guest makes a filesystem, writes and syncs while the repeats run.
    let synced = guest_line(&host, &good_started.domid, "keel-guest: fs made=");
    assert!(synced.contains(" made=yes "), "{synced}");
    assert!(synced.ends_with(" synced"), "{synced}");

    // Enough: a second disk in the hostile guest ends its repeats (the program watches its
    // device/vbd), then it sends the runaway index.
    let stop = hotplug(&host, &["plug", &hostile, "1", "1"]);
    assert!(stop.contains("attached True"), "{stop}");
    let finished = host.machine.wait_for(
        Pattern::contains(format!("{prefix}done")),
        GUEST_BOOT_DEADLINE,
    );
    let lines = hostile_lines();
    for l in &lines {
        eprintln!("hostile: {l}");
    }
    finished.unwrap_or_else(|e| panic!("the hostile frontend did not finish: {e}: {lines:#?}"));
    let case = |name: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("case {name} ")))
            .unwrap_or_else(|| panic!("no line for case {name}: {lines:#?}"))
            .clone()
    };
    let status = |line: &str| {
        line.split(' ')
            .find_map(|w| w.strip_prefix("status="))
            .and_then(|s| s.parse::<i32>().ok())
            .unwrap_or_else(|| panic!("no status: {line}"))
    };
    // The controls prove the program speaks the protocol: a good read is answered 0, before
    // and after the bad requests (the device stayed up through them).
    // The hostile guest's VDI is new: a read of it brings zeros, nothing of another VDI.
    for name in ["control-read", "control-read-after"] {
        let line = case(name);
        assert_eq!(status(&line), 0, "{lines:#?}");
        assert!(line.contains(" page=zeros"), "{line}");
    }
    // Every segment names one data page, filled with 0xa5 before each request: a refused
    // request leaves it as it was (nothing of dom0 or another VDI reaches the guest).
    for name in BAD_CASES {
        let line = case(name);
        let s = status(&line);
        assert!(s == -1 || s == -2, "BLKIF_RSP_ERROR or EOPNOTSUPP: {line}");
        assert!(line.contains(" page=untouched"), "{line}");
    }
    assert_eq!(
        status(&case("unknown-op")),
        -2,
        "EOPNOTSUPP for an unknown op"
    );
    // The repeats ran while the well-behaved guest did its disk work, and every answer was
    // again what the first round demands.
    let repeats = case("repeats");
    assert!(repeats.contains(" unexpected=0 "), "{repeats}");
    assert!(!repeats.contains(" rounds=0 "), "{repeats}");
    assert!(
        repeats.ends_with(" ended-by=hot-plug"),
        "the test ended the repeats: {repeats}"
    );
    // Each round also fills the whole ring at once (good and never-granted reads
    // alternating): every answer matches its request.
    let floods = case("floods");
    assert!(floods.contains(" unexpected=0"), "{floods}");
    assert!(
        timestamp(&repeating) < timestamp(&synced),
        "the well-behaved guest's disk work ({synced}) fell within the hostile guest's \
         repeats: {repeating} .. {repeats}"
    );
    // The runaway index: the backend disconnects (Closing or Closed) with a reason.
    let runaway = case("runaway-producer");
    assert!(
        runaway.contains("state=5") || runaway.contains("state=6"),
        "disconnected: {runaway}"
    );
    assert!(
        runaway.contains("error=71 ") && runaway.contains("ProducerAhead"),
        "the reason is in xenstore: {runaway}"
    );
    assert!(
        case("after-disconnect").contains("responses=0"),
        "requests after the disconnect are never read"
    );

    // After all that, Keel answers the XenAPI and serves the well-behaved guest: a disk
    // hot-plugged into it connects and goes, and its first disk takes the writes, flush and
    // discards of `rm`, `sync` and `fstrim`.
    alive(&host);
    let plugged = hotplug(&host, &["plug", &good, "1", "32"]);
    assert!(plugged.contains(" xvdb"), "userdevice 1 is xvdb: {plugged}");
    assert!(plugged.contains("attached True"), "{plugged}");
    let seen = guest_line(&host, &good_started.domid, "keel-guest: fs xvdb ");
    assert!(seen.contains("xvdb 65536 sectors"), "32 MiB: {seen}");
    let vbd = plugged
        .lines()
        .find_map(|l| l.strip_prefix("vbd "))
        .and_then(|l| l.split(' ').next())
        .expect("the script prints the VBD")
        .to_string();
    let unplugged = hotplug(&host, &["unplug", &vbd]);
    assert!(unplugged.contains("attached False"), "{unplugged}");
    guest_line(&host, &good_started.domid, "keel-guest: fs xvdb gone");
    let trimmed = guest_line(&host, &good_started.domid, "keel-guest: fs trimmed");
    assert!(trimmed.ends_with(" bytes trimmed"), "fstrim: {trimmed}");
    let stopped = host
        .call("hard_shutdown", &hostile, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stopped.power, "Halted");
    alive(&host);
}
