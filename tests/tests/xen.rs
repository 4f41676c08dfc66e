//! Keel as the PVH dom0 of the real Xen 4.17 hypervisor (Debian's), under QEMU's TCG.
//!
//! Two boots, because TCG emulating Xen emulating a guest is slow: one that checks everything
//! a working dom0 shows (Xen's figures, the event-channel and grant self-tests, DHCP through
//! vPCI and the IOMMU, and the management API with Xen's host figures), and one that checks
//! a failure under Xen is reported on Xen's console and ends the machine instead of hanging.

use std::time::Duration;

use keel_tests::credentials::test_credentials;
use keel_tests::kernel_lines::{PanicLine, READY_PREFIX};
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Machine, NicModel, Pattern};

/// Xen boots in about 1.3 s under TCG and Keel in well under a second more; the margin is
/// for a loaded 2-core machine emulating both.
const XEN_BOOT_DEADLINE: Duration = Duration::from_secs(150);

/// How long QEMU may take to exit once Keel has decided to stop.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// The text after the log prefix (`[    0.069188] INFO  `) of a line containing `marker`.
fn message<'a>(line: &'a str, marker: &str) -> &'a str {
    line.find(marker).map_or(line, |at| &line[at..])
}

/// `xen: physinfo: 2 CPUs at 2445 MHz, 1023 MiB total, 494 MiB free` → (cpus, total MiB).
fn physinfo(line: &str) -> Option<(u32, u64)> {
    let rest = message(line, "xen: physinfo: ").strip_prefix("xen: physinfo: ")?;
    let (cpus, rest) = rest.split_once(" CPUs at ")?;
    let (_, rest) = rest.split_once(" MHz, ")?;
    let (total, _) = rest.split_once(" MiB total, ")?;
    Some((cpus.parse().ok()?, total.parse().ok()?))
}

/// Checks the host record from the Python SDK: Xen's version and the machine's CPUs and
/// memory (not dom0's share).
const HOST_SCRIPT: &str = r#"
import sys, XenAPI
url, password, version, cpus, total_mib = sys.argv[1:6]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-xen")
host = s.xenapi.host.get_record(s.xenapi.host.get_all()[0])
assert host["software_version"]["xen"] == version, host["software_version"]
assert host["cpu_info"]["cpu_count"] == cpus, host["cpu_info"]
metrics = s.xenapi.host_metrics.get_record(host["metrics"])
assert int(metrics["memory_total"]) >> 20 == int(total_mib), metrics
print("ok host")
"#;

#[test]
fn dom0_boots_with_xen_figures_self_tests_dhcp_and_the_api() -> Result<(), HarnessError> {
    let vm = Machine::new("xen_dom0")
        .under_xen()
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word())
        .boot()?;
    let ready = vm.wait_for_line(Pattern::starts_with(READY_PREFIX), XEN_BOOT_DEADLINE)?;
    eprintln!(
        "xen_dom0: ready {:.1} s after QEMU started: {}",
        ready.since_start.as_secs_f64(),
        ready.text
    );
    // Everything below was logged before the ready line.
    let short = Duration::from_secs(1);
    let booted = vm.wait_for(Pattern::contains("as Xen's PVH dom0"), short)?;
    assert!(booted.contains("pvclock"), "{booted}");
    let version_line = vm.wait_for(Pattern::contains("xen: Xen 4.17."), short)?;
    let version = message(&version_line, "xen: Xen ")
        .trim_start_matches("xen: Xen ")
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(version_line.contains("hvm-3.0-x86_64"), "{version_line}");
    let physinfo_line = vm.wait_for(Pattern::contains("xen: physinfo: "), short)?;
    let Some((cpus, total_mib)) = physinfo(&physinfo_line) else {
        panic!("physinfo line not in the documented form: {physinfo_line:?}");
    };
    assert_eq!(cpus, 2, "QEMU gives Xen 2 CPUs: {physinfo_line}");
    assert!(
        total_mib > 512,
        "Xen's total is the machine's, more than dom0's 512 MiB: {physinfo_line}"
    );
    vm.wait_for(
        Pattern::contains("xen: event channel loopback ok (port "),
        short,
    )?;
    vm.wait_for(
        Pattern::contains("xen: grant self-map and copy ok (ref "),
        short,
    )?;
    vm.wait_for(Pattern::contains("net: address 10.0.2.15/24"), short)?;

    let Some(port) = vm.api_port() else {
        panic!("the machine forwards an API port");
    };
    let out = run_script(
        HOST_SCRIPT,
        &[
            &format!("http://127.0.0.1:{port}"),
            &test_credentials().password,
            &version,
            &cpus.to_string(),
            &total_mib.to_string(),
        ],
    )?;
    assert!(out.lines().any(|l| l == "ok host"), "{out}");
    Ok(())
}

#[test]
fn a_panic_under_xen_reaches_xens_console_and_ends_the_machine() -> Result<(), HarnessError> {
    let vm = Machine::new("xen_dom0_panic")
        .under_xen()
        .append("keel.test=panic")
        .boot()?;
    let line = vm.wait_for(Pattern::starts_with("keel: PANIC at "), XEN_BOOT_DEADLINE)?;
    let Some(panic) = PanicLine::parse(&line) else {
        panic!("panic line without a location: {line:?}");
    };
    assert!(
        panic
            .message
            .contains("test panic requested by keel.test=panic"),
        "{panic:?}"
    );
    // The debug-exit port is passed through to dom0: QEMU ends with the failure status.
    let status = vm.wait_exit(EXIT_DEADLINE)?;
    assert_eq!(status.code(), Some(3), "QEMU {status}");
    Ok(())
}

#[test]
fn poweroff_as_dom0_enters_acpi_s5_and_ends_the_machine_cleanly() -> Result<(), HarnessError> {
    let vm = Machine::new("xen_dom0_poweroff")
        .under_xen()
        .append("keel.test=poweroff")
        .boot()?;
    vm.wait_for(
        Pattern::starts_with("keel: powering off"),
        XEN_BOOT_DEADLINE,
    )?;
    // dom0 owns the power registers: its S5 write powers the machine off and QEMU exits 0.
    // (Xen's SCHEDOP_shutdown(poweroff) for dom0 only halts the machine: a hang here would
    // mean the S5 write did not reach the platform.)
    let status = vm.wait_exit(EXIT_DEADLINE)?;
    assert_eq!(status.code(), Some(0), "QEMU {status}");
    assert!(
        !vm.serial_lines()
            .iter()
            .any(|l| l.contains("did not take effect")),
        "power-off fell back: {}",
        vm.log_path().display()
    );
    Ok(())
}

#[test]
fn physinfo_lines_parse() {
    assert_eq!(
        physinfo(
            "[    0.06] INFO  xen: physinfo: 2 CPUs at 2445 MHz, 1023 MiB total, 494 MiB free"
        ),
        Some((2, 1023))
    );
    assert_eq!(physinfo("xen: physinfo: two CPUs"), None);
}

/// The harness's stall probe (`keel_tests::xen_stall`) on a live machine: QEMU names both
/// emulated CPUs, Xen answers its debug key, and the console input goes back to dom0.
#[test]
fn the_stall_probe_finds_a_live_xen_answering_and_gives_the_input_back() -> Result<(), HarnessError>
{
    let vm = Machine::new("xen_stall_probe").under_xen().boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), XEN_BOOT_DEADLINE)?;
    let report = vm.xen_stall_report();
    assert!(report.xen_answered, "{:?}", report.lines());
    assert!(
        report
            .emulator
            .iter()
            .filter(|l| l.contains("CPU #"))
            .count()
            == 2,
        "{:?}",
        report.emulator
    );
    let switches: Vec<String> = vm
        .serial_lines()
        .into_iter()
        .filter(|l| l.contains("*** Serial input to "))
        .collect();
    assert!(
        switches.last().is_some_and(|l| l.contains("to DOM0")),
        "{switches:?}"
    );
    Ok(())
}
