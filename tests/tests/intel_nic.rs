//! Keel on an Intel NIC instead of virtio-net: QEMU's `e1000` (82540EM) and `e1000e`
//! (82574L) as the only network card, booted alone (fast) and, for the e1000e, as Xen's dom0
//! (the NIC then does DMA through the IOMMU). Each boot must bind `keel-e1000`, get a DHCP
//! lease from QEMU's user network and answer the real Python `XenAPI` SDK through the port
//! forward. Under Xen, a Linux guest on the management network then gets its own lease and
//! reaches the gateway through netback, the switch and the e1000e uplink.

use std::time::Duration;

use keel_tests::credentials::test_credentials;
use keel_tests::emulator::retry_after_emulator_fault;
use keel_tests::guest::{self, GUEST_VM_PY};
use keel_tests::guest_host::{boot_host_with_nic, fresh_disk, path, GUEST_BOOT_DEADLINE};
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Machine, NicModel, Pattern, Vm, BOOT_DEADLINE};

/// Under Xen: Xen boots in about 1.3 s under TCG and Keel in well under a second more; the
/// margin is for a loaded 2-core machine emulating both (as tests/xen.rs).
const XEN_BOOT_DEADLINE: Duration = Duration::from_secs(150);

/// Logs in, reads the host record over the NIC, logs out.
const SCRIPT: &str = r#"
import sys, XenAPI
s = XenAPI.Session(sys.argv[1])
s.xenapi.login_with_password("root", sys.argv[2])
hosts = s.xenapi.host.get_all()
assert len(hosts) == 1, hosts
record = s.xenapi.host.get_record(hosts[0])
assert record["address"] == "10.0.2.15", record["address"]
print("ok host", record["name_label"])
s.xenapi.session.logout()
"#;

/// Checks the lines `keel-e1000` and the stack log, then the XenAPI over the NIC.
fn check(vm: &Vm, driver: &str, part: &str, deadline: Duration) -> Result<(), HarnessError> {
    vm.wait_for(Pattern::starts_with(READY_PREFIX), deadline)?;
    // Everything below was logged before the ready line.
    let short = Duration::from_secs(1);
    let bound = vm.wait_for(
        Pattern::contains(format!("net: {driver} ({part}) at ")),
        short,
    )?;
    assert!(bound.contains("link up"), "{bound}");
    // QEMU's first NIC has 52:54:00:12:34:56, read from the NIC's receive address registers.
    vm.wait_for(Pattern::contains(" MAC 52:54:00:12:34:56, DHCP"), short)?;
    vm.wait_for(Pattern::contains("net: address 10.0.2.15/24"), short)?;
    let Some(port) = vm.api_port() else {
        panic!("the machine forwards an API port");
    };
    let out = run_script(
        SCRIPT,
        &[
            &format!("http://127.0.0.1:{port}"),
            &test_credentials().password,
        ],
    );
    match out {
        Ok(out) => assert!(out.lines().any(|l| l.starts_with("ok host")), "{out}"),
        Err(e) => panic!("{e}\nconsole: {}", vm.log_path().display()),
    }
    Ok(())
}

fn boot(name: &str, model: NicModel, xen: bool) -> Result<Vm, HarnessError> {
    let mut machine = Machine::new(name)
        .nic_with_api(model)
        .append(test_credentials().cmdline_word());
    if xen {
        machine = machine.under_xen();
    }
    machine.boot()
}

#[test]
fn e1000e_gets_a_lease_and_answers_the_xenapi() -> Result<(), HarnessError> {
    let vm = boot("intel_e1000e", NicModel::E1000e, false)?;
    check(&vm, "e1000e", "82574L", BOOT_DEADLINE)
}

#[test]
fn e1000_gets_a_lease_and_answers_the_xenapi() -> Result<(), HarnessError> {
    let vm = boot("intel_e1000", NicModel::E1000, false)?;
    check(&vm, "e1000", "82540EM", BOOT_DEADLINE)
}

#[test]
fn e1000e_under_xen_does_dma_through_the_iommu() -> Result<(), HarnessError> {
    let vm = boot("intel_e1000e_xen", NicModel::E1000e, true)?;
    check(&vm, "e1000e", "82574L", XEN_BOOT_DEADLINE)
}

/// Makes a guest (`keel_guest=net`: DHCP on `eth0`, then a ping of the gateway) with one VIF
/// on the management network (`xenbr0`, the uplink's), starts it and prints its domid.
const GUEST_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(240)
url, password, port, kernel, initrd = sys.argv[1:6]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-intel-nic")
x = s.xenapi
k = upload_image(x, s._session, port, kernel, "guest kernel")
r = upload_image(x, s._session, port, initrd, "guest initramfs")
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
mgmt = [n for n, rec in x.network.get_all_records().items() if rec["bridge"] == "xenbr0"]
assert len(template) == 1 and len(mgmt) == 1, (template, mgmt)
vm = guest_vm(x, template[0], "net-e1000e", k, r,
              "console=hvc0 quiet loglevel=4 keel_guest=net")
x.VIF.create({"device": "0", "network": mgmt[0], "VM": vm, "MAC": "02:00:00:00:00:e1",
              "MTU": "1500", "other_config": {}, "qos_algorithm_type": "",
              "qos_algorithm_params": {}, "locking_mode": "network_default",
              "ipv4_allowed": [], "ipv6_allowed": []})
x.VM.start(vm, False, False)
print("domid", x.VM.get_domid(vm), flush=True)
"#;

/// The switch on an e1000e uplink: a Linux guest's netfront gets a DHCP lease from QEMU's
/// user network and pings its gateway through netback, the switch and Keel's e1000e driver.
#[test]
fn a_guest_reaches_the_outside_through_an_e1000e_uplink() {
    retry_after_emulator_fault("intel_e1000e_guest", |name| {
        let disk = fresh_disk(name);
        let host = boot_host_with_nic(name, &disk, NicModel::E1000e)?;
        host.machine.wait_for(
            Pattern::contains("net: e1000e (82574L) at "),
            Duration::from_secs(1),
        )?;
        let port = host.url.rsplit(':').next().unwrap_or_default().to_string();
        let out = run_script(
            &format!("{GUEST_VM_PY}\n{GUEST_SCRIPT}"),
            &[
                &host.url,
                &host.password,
                &port,
                path(&guest::kernel()?),
                path(&guest::initramfs()?),
            ],
        )?;
        let domid = out
            .lines()
            .find_map(|l| l.strip_prefix("domid "))
            .map(|d| d.trim().to_string())
            .unwrap_or_default();
        let lease = host.machine.wait_for(
            Pattern::contains(format!("guest d{domid}: keel-guest: net ")),
            GUEST_BOOT_DEADLINE,
        )?;
        assert!(lease.contains("net lease 10.0.2."), "{lease}");
        let ping = host.machine.wait_for(
            Pattern::contains(format!("guest d{domid}: keel-guest: net ping")),
            GUEST_BOOT_DEADLINE,
        )?;
        assert!(ping.contains("net ping ok"), "{ping}");
        Ok::<(), HarnessError>(())
    });
}
