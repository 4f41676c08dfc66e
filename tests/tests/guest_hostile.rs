//! A hostile frontend in a real guest against Keel's blkback (issue 10, point 4), under the
//! real Xen 4.17 (TCG), driven through the XenAPI by the Python SDK.
//!
//! The hostile guest boots Debian's kernel with an initramfs that has no `xen-blkfront` but
//! `tests/guest-tools/hostile_blkfront.c` (`keel_tests::guest::hostile_initramfs`): the program
//! connects to Keel's blkback through the guest kernel's `/dev/xen/{xenbus,gntalloc,evtchn}`
//! and sends bad requests one at a time — grant references never granted, unused, granted to
//! another domain or revoked, `first_sect > last_sect`, `last_sect > 7`, too many segments,
//! no segments, sectors past the VDI's end (and an overflowing sector), an unknown op, an
//! indirect page never granted — repeats them for a while (with a full ring at once each
//! round), then moves the producer index far ahead of the ring. A well-behaved guest (the
//! `disk` action: a marker and 4 MiB written with fsync and read back) does its disk work
//! while the repeats run, and once more after a reboot.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use keel_tests::guest;
use keel_tests::guest_host::{boot_host, path, setup, Host, DISK_SCRIPT, GUEST_BOOT_DEADLINE};
use keel_tests::python::run_script;
use keel_tests::Pattern;

/// Uploads the hostile initramfs and makes a VM of it with the kernel `setup` uploaded.
/// Prints `vm <ref>`.
const HOSTILE_VM_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, port, initrd, seconds = sys.argv[1:6]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-hostile")
x = s.xenapi
k = x.VDI.get_uuid(x.VDI.get_by_name_label("guest kernel")[0])
r = upload_image(x, s._session, port, initrd, "hostile initramfs")
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
vm = guest_vm(x, template[0], "hostile-1", k, r,
              "console=hvc0 quiet loglevel=4 keel_guest=hostile keel_hostile_seconds=" + seconds)
print("vm", vm, flush=True)
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

/// How long the hostile guest keeps repeating its bad requests after the first round: long
/// enough for the well-behaved guest, started once the hostile one is connected, to boot and
/// do its disk work meanwhile.
const REPEAT_SECONDS: &str = "200";

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

fn give_disk(host: &Host, vm: &str) {
    let out = run_script(DISK_SCRIPT, &[&host.url, &host.password, vm, "64"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains(" xvda"), "userdevice 0 is xvda: {out}");
}

/// The well-behaved guest's disk line of domain `domid`, checked.
fn disk_works(host: &Host, domid: &str, before: &str) -> String {
    let line = host
        .machine
        .wait_for(
            Pattern::contains(format!("guest d{domid}: keel-guest: disk ")),
            GUEST_BOOT_DEADLINE,
        )
        .unwrap_or_else(|e| panic!("the well-behaved guest's disk: {e}"));
    eprintln!("hostile: well-behaved guest: {line}");
    let field = |name: &str| {
        line.split(' ')
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_default()
            .to_string()
    };
    let wrote = field("wrote=");
    assert!(wrote.starts_with("keel-disk-"), "{line}");
    assert_eq!(field("read="), wrote, "read back what was written: {line}");
    assert_eq!(field("4MiB="), "same", "4 MiB read back the same: {line}");
    assert_eq!(field("before="), before, "the disk kept its marker: {line}");
    wrote
}

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

#[test]
#[ignore = "boots Xen and two Linux guests under QEMU TCG (minutes); run with `cargo test -p keel-tests --test guest_hostile -- --ignored`"]
fn a_hostile_frontend_in_a_guest_harms_nobody() {
    let host = boot_host("guest_hostile").unwrap_or_else(|e| panic!("{e}"));
    let vms = setup(&host, &["disk-1"]).unwrap_or_else(|e| panic!("{e}"));
    let good = vms[0].clone();
    let initrd = guest::hostile_initramfs().unwrap_or_else(|e| panic!("{e}"));
    let port = host.url.rsplit(':').next().unwrap_or_default().to_string();
    let out = run_script(
        &format!("{}\n{HOSTILE_VM_SCRIPT}", guest::GUEST_VM_PY),
        &[
            &host.url,
            &host.password,
            &port,
            path(&initrd),
            REPEAT_SECONDS,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hostile = out
        .lines()
        .find_map(|l| l.strip_prefix("vm "))
        .expect("the script prints the VM")
        .to_string();
    give_disk(&host, &good);
    give_disk(&host, &hostile);

    // The hostile guest first; once it is connected and repeating its bad requests, the
    // well-behaved one boots and does its disk work. The hostile one is the first domain,
    // so the page it grants to "another domain" (its domid + 1) is granted to the other guest.
    let bad_started = host
        .call("start", &hostile, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad_started.power, "Running");
    let prefix = format!("guest d{}: keel-hostile: ", bad_started.domid);
    let repeating = host
        .machine
        .wait_for(
            Pattern::contains(format!("{prefix}repeating")),
            GUEST_BOOT_DEADLINE,
        )
        .unwrap_or_else(|e| {
            let seen: Vec<String> = host
                .machine
                .serial_lines()
                .into_iter()
                .filter(|l| l.contains(&prefix))
                .collect();
            panic!("the hostile frontend did not get going: {e}: {seen:#?}")
        });
    let good_started = host
        .call("start", &good, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let good_line_at = timestamp(
        &host
            .machine
            .wait_for(
                Pattern::contains(format!("guest d{}: keel-guest: disk ", good_started.domid)),
                GUEST_BOOT_DEADLINE,
            )
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let marker = disk_works(&host, &good_started.domid, "");

    let finished = host.machine.wait_for(
        Pattern::contains(format!("{prefix}done")),
        GUEST_BOOT_DEADLINE,
    );
    let lines: Vec<String> = host
        .machine
        .serial_lines()
        .into_iter()
        .filter(|l| l.contains(&prefix))
        .collect();
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
    assert!(repeats.contains(" unexpected=0"), "{repeats}");
    assert!(!repeats.contains(" rounds=0 "), "{repeats}");
    // Each round also fills the whole ring at once (good and never-granted reads
    // alternating): every answer matches its request.
    let floods = case("floods");
    assert!(floods.contains(" unexpected=0"), "{floods}");
    assert!(
        timestamp(&repeating) < good_line_at && good_line_at < timestamp(&repeats),
        "the well-behaved guest's disk work ({good_line_at} s) fell within the hostile \
         guest's repeats: {repeating} .. {repeats}"
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

    // Keel answers the XenAPI, and the well-behaved guest's disk works after all that: a new
    // boot finds its marker and writes and reads back again.
    alive(&host);
    let rebooted = host
        .call("clean_reboot", &good, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rebooted.power, "Running");
    disk_works(&host, &rebooted.domid, &marker);
    let stopped = host
        .call("hard_shutdown", &hostile, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stopped.power, "Halted");
    alive(&host);
}
