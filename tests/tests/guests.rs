//! Linux guests on Keel under the real Xen 4.17 (TCG), driven through the XenAPI by the real
//! Python SDK the way a cloud's orchestration drives an XCP host: Debian's kernel as shipped
//! and the lean guest initramfs (`keel_tests::guest`) are uploaded as VDIs, a VM is cloned
//! from the built-in PVH template, pointed at them (`vdi:<uuid>`) and started.
//!
//! One host boot serves every step (guests under nested TCG are slow): each step's Python
//! script returns, and the test watches Keel's console for what the guest printed on its
//! own console (Keel copies guest console lines to its log with `keel.log=debug`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use keel_tests::emulator::retry_after_emulator_fault;
use keel_tests::guest::GUEST_READY;
use keel_tests::guest_host::{
    boot_host, setup, Host, DISK_SCRIPT, GUEST_BOOT_DEADLINE, MIB, VBD_SCRIPT,
};
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Pattern};

/// The whole lifecycle on one host boot: two guests at once, pause and unpause, a clean
/// reboot (new domain, same VM), hard and clean shutdown, a guest that powers itself off,
/// one that crashes, a kernel that is not a kernel; Xen gets its memory back each time.
///
/// QEMU's emulation of nested SVM sometimes kills a domain with a triple fault reported in
/// Xen's own code or wedges the whole machine (`keel_tests::emulator`). A guest that meets
/// the fault is restarted by its `actions_after_crash`, which the steps below tolerate; if a
/// step fails all the same beside such a fault, the emulator is named and counted and the
/// test runs once more on a fresh host. Any other failure fails the test.
#[test]
fn linux_guests_run_their_whole_lifecycle_through_the_xenapi() {
    retry_after_emulator_fault("guests_lifecycle", lifecycle);
}

fn lifecycle(name: &str) -> Result<(), HarnessError> {
    let host = boot_host(name)?;
    let vms = setup(
        &host,
        &["idle-a", "idle-b", "poweroff-1", "crash-1", "broken-1"],
    )?;
    let [a, b, poweroff, crash, broken] = &vms[..] else {
        panic!("five VMs expected, got {vms:?}");
    };
    let pristine = host.call("get_power_state", a, &[])?;
    assert_eq!(pristine.power, "Halted");

    // Two guests at once, each with its own console.
    let started_a = host.call("start", a, &[])?;
    assert_eq!(started_a.power, "Running");
    // The second start runs while the first guest boots, and the host keeps answering: the
    // kernel (Debian's xz bzImage) is read and decompressed a piece per step. Held in one
    // step (as before) the decompression alone took over three quarters of the call;
    // measured stepped: 47 answers, the longest wait 3.99 s of a 25.91 s call.
    let started_b = host.call("start-watched", b, &[])?;
    assert_eq!(started_b.power, "Running");
    let (answers, longest) = started_b
        .watched
        .expect("start-watched reports its answers");
    assert!(
        answers >= 5 && longest < started_b.took_s / 3.0,
        "the host held during VM.start: {answers} answers, longest wait {longest:.2} s of {:.2} s",
        started_b.took_s
    );
    assert_ne!(started_a.domid, started_b.domid);
    assert!(
        started_b.free_bytes + 250 * MIB < pristine.free_bytes,
        "two 128 MiB guests use Xen's memory: {} -> {}",
        pristine.free_bytes,
        started_b.free_bytes
    );
    for vm in [a, b] {
        let line = host.console(vm, GUEST_READY, GUEST_BOOT_DEADLINE)?;
        assert!(line.contains("keel_guest=idle"), "{line}");
    }

    // Pause and unpause.
    assert_eq!(host.call("pause", b, &[])?.power, "Paused");
    assert_eq!(host.call("unpause", b, &[])?.power, "Running");

    // A clean reboot: the guest is asked, the VM gets a new domain.
    let rebooted = host.call("clean_reboot", a, &[])?;
    assert_eq!(rebooted.power, "Running");
    assert_ne!(
        rebooted.domid, started_a.domid,
        "a reboot makes a new domain"
    );
    host.console(a, GUEST_READY, GUEST_BOOT_DEADLINE)?;

    // Hard and clean shutdown.
    let hard = host.call("hard_shutdown", b, &[])?;
    assert_eq!((hard.power.as_str(), hard.domid.as_str()), ("Halted", "-1"));
    let clean = host.call("clean_shutdown", a, &[])?;
    assert_eq!(
        (clean.power.as_str(), clean.domid.as_str()),
        ("Halted", "-1")
    );
    // A guest that powers itself off is noticed (VIRQ_DOM_EXC) and destroyed.
    host.call("start", poweroff, &[])?;
    host.logged_ready("poweroff", GUEST_BOOT_DEADLINE)?;
    let stopped = host.call("wait-halted", poweroff, &[])?;
    assert_eq!(stopped.power, "Halted");
    // The first guests leave a little of Xen's memory with dom0 for good (measured: under
    // 1 MiB, some of it freed a moment after the destroy; dom0's own event-channel and
    // grant-mapping structures grow on first use). From then on every guest gives back
    // exactly what it took.
    let steady = stopped.free_bytes;
    assert!(
        pristine.free_bytes - steady < MIB,
        "Xen's free memory after the first guests: {} -> {steady}",
        pristine.free_bytes
    );

    // A guest that crashes obeys actions_after_crash.
    host.call("set-actions_after_crash", crash, &["destroy"])?;
    host.call("start", crash, &[])?;
    host.logged_ready("crash", GUEST_BOOT_DEADLINE)?;
    let crashed = host.call("wait-halted", crash, &[])?;
    assert_eq!(crashed.power, "Halted");

    // A kernel that is not a kernel is refused, and leaves nothing behind.
    let before_refused = host.call("set-PV_kernel", broken, &[&ramdisk_of(&host, broken)?])?;
    let refused = host.call("start-refused", broken, &[])?;
    assert_eq!(refused.refused.as_deref(), Some("BOOTLOADER_FAILED"));
    assert_eq!(refused.power, "Halted");

    // Xen's free memory moves by a few tens of pages at varying moments: dom0's own
    // structures (event channels, grant maps) grow on first use, and part of a destroyed
    // domain's memory comes back a moment after the destroy (seen: 16 KiB and 164 KiB). So a
    // later guest is held to a quarter of a MiB of the steady value (a guest's own memory is
    // 128 MiB), and a refused build must not take any: free memory after it is at least what
    // it was just before (only a late free can add to it).
    assert!(
        steady.saturating_sub(crashed.free_bytes) < MIB / 4,
        "Xen's free memory after a guest that crashed: {steady} -> {}",
        crashed.free_bytes
    );
    assert!(
        refused.free_bytes >= before_refused.free_bytes,
        "Xen's free memory after a kernel that was refused: {} -> {}",
        before_refused.free_bytes,
        refused.free_bytes
    );
    Ok(())
}

/// `PV_ramdisk` of `vm` (the initramfs VDI), to use as a kernel that is not a kernel.
fn ramdisk_of(host: &Host, vm: &str) -> Result<String, HarnessError> {
    let out = run_script(
        r#"
import sys, XenAPI
url, password, vm = sys.argv[1:4]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guests")
print(s.xenapi.VM.get_PV_ramdisk(vm))
"#,
        &[&host.url, &host.password, vm],
    )?;
    Ok(out.trim().to_string())
}

/// A guest's own disk through blkback: a VDI attached as `xvda` is found by Linux's
/// blkfront, a marker and 4 MiB of random data written with fsync read back the same after
/// the page cache is dropped, and after a clean shutdown and a new start (a new domain) the
/// guest finds its marker on the disk.
#[test]
fn a_linux_guest_keeps_its_disk_through_blkback() {
    retry_after_emulator_fault("guests_disk", |name| {
        keeps_its_disk(name);
        Ok::<(), HarnessError>(())
    });
}

fn keeps_its_disk(name: &str) {
    let host = boot_host(name).unwrap_or_else(|e| panic!("{e}"));
    let vms = setup(&host, &["disk-1"]).unwrap_or_else(|e| panic!("{e}"));
    let vm = &vms[0];
    let out = run_script(DISK_SCRIPT, &[&host.url, &host.password, vm, "64"])
        .unwrap_or_else(|e| panic!("{e}"));
    let vbd = out
        .lines()
        .find_map(|l| l.strip_prefix("vbd "))
        .and_then(|l| l.split(' ').next())
        .expect("the script prints the VBD")
        .to_string();
    assert!(out.contains(" xvda"), "userdevice 0 is xvda: {out}");
    let attached = |host: &Host| {
        run_script(VBD_SCRIPT, &[&host.url, &host.password, &vbd])
            .unwrap_or_else(|e| panic!("{e}"))
            .contains("attached True")
    };

    let mut markers = Vec::new();
    for boot in 0..2 {
        let started = host
            .call("start", vm, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(started.power, "Running");
        assert!(attached(&host), "the VBD is attached while the guest runs");
        let line = host
            .machine
            .wait_for(
                // Keel's log of this domain's console (each boot is a new domain).
                Pattern::contains(format!("guest d{}: keel-guest: disk ", started.domid)),
                GUEST_BOOT_DEADLINE,
            )
            .unwrap_or_else(|e| panic!("boot {boot}: {e}"));
        eprintln!("guests: disk boot {boot}: {line}");
        let field = |name: &str| {
            line.split(' ')
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_default()
                .to_string()
        };
        assert!(line.contains("xvda 131072 sectors"), "64 MiB: {line}");
        let wrote = field("wrote=");
        assert!(wrote.starts_with("keel-disk-"), "{line}");
        assert_eq!(field("read="), wrote, "read back what was written: {line}");
        assert_eq!(field("4MiB="), "same", "4 MiB read back the same: {line}");
        assert_eq!(
            field("before="),
            markers.last().cloned().unwrap_or_default(),
            "the disk holds what the guest's last boot wrote: {line}"
        );
        markers.push(wrote);
        let stopped = host
            .call("clean_shutdown", vm, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stopped.power, "Halted");
        assert!(
            !attached(&host),
            "the VBD is detached once the guest is halted"
        );
    }
}
