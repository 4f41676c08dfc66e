//! A Linux guest's netfront reaches the outside network through Keel's netback and virtual
//! switch: a guest with one VIF on the management network (`xenbr0`, the NIC untagged)
//! asks QEMU's user network for a DHCP lease (its frames leave through the switch's uplink,
//! the answers come back to its VIF), then pings the gateway 10.0.2.2.
//!
//! Keel boots as Xen's dom0 under QEMU (TCG) with `keel.log=debug`, so the guest's console
//! lines appear in Keel's log. The guest is the lean initramfs's `net` action
//! (`keel_tests::guest`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use keel_tests::credentials::test_credentials;
use keel_tests::guest::{self, GUEST_VM_PY};
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Machine, NicModel, Pattern};

/// Xen and Keel under TCG, on a machine also building and testing.
const XEN_BOOT_DEADLINE: Duration = Duration::from_secs(150);
/// From `VM.start` to the guest's lease: Linux boots inside an emulated SVM guest of an
/// emulated machine, then DHCP.
const GUEST_NET_DEADLINE: Duration = Duration::from_secs(360);
const MIB: u64 = 1 << 20;

/// Uploads the guest, makes a VM of it with one VIF on the management network and starts
/// it. Prints the VIF's MAC and the VM's domid.
const START_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, port, kernel, initrd = sys.argv[1:6]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-network")
x = s.xenapi
k = upload_image(x, s._session, port, kernel, "guest kernel")
r = upload_image(x, s._session, port, initrd, "guest initramfs")
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
assert len(template) == 1, template
vm = guest_vm(x, template[0], "net-1", k, r, "console=hvc0 quiet loglevel=4 keel_guest=net")
networks = [n for n, rec in x.network.get_all_records().items() if rec["bridge"] == "xenbr0"]
assert len(networks) == 1, networks
vif = x.VIF.create({"device": "0", "network": networks[0], "VM": vm, "MAC": "", "MTU": "1500",
                    "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
                    "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": []})
x.VM.start(vm, False, False)
print("vm", vm)
print("vif", vif)
print("mac", x.VIF.get_MAC(vif))
print("domid", x.VM.get_domid(vm))
print("attached", x.VIF.get_currently_attached(vif), flush=True)
"#;

/// Hot-unplugs and plugs the VIF back while the guest runs, then shuts the guest down
/// cleanly (its VIF is detached with it). Prints what the XenAPI says after each step.
const UNPLUG_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, vm, vif = sys.argv[1:5]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-network")
x = s.xenapi
x.VIF.unplug(vif)
print("unplugged", x.VIF.get_currently_attached(vif), flush=True)
x.VIF.plug(vif)
print("plugged", x.VIF.get_currently_attached(vif), flush=True)
x.VM.clean_shutdown(vm)
print("shutdown", x.VM.get_power_state(vm), x.VIF.get_currently_attached(vif), flush=True)
"#;

#[test]
fn a_guest_gets_a_dhcp_lease_through_netback_and_the_switch() {
    run().unwrap_or_else(|e| panic!("{e}"));
}

fn run() -> Result<(), HarnessError> {
    let name = "guest_network_dhcp";
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
    let port = vm.api_port().expect("API port").to_string();
    let url = format!("http://127.0.0.1:{port}");
    let kernel = guest::kernel()?;
    let initrd = guest::initramfs()?;
    let out = run_script(
        &format!("{GUEST_VM_PY}\n{START_SCRIPT}"),
        &[
            &url,
            &test_credentials().password,
            &port,
            kernel.to_str().expect("UTF-8 path"),
            initrd.to_str().expect("UTF-8 path"),
        ],
    )?;
    eprintln!("guest_network: {}", out.trim().replace('\n', "; "));
    assert!(out.contains("attached True"), "the VIF is plugged: {out}");

    // The guest's own words, copied to Keel's log from its console.
    let lease = vm.wait_for(Pattern::contains("keel-guest: net "), GUEST_NET_DEADLINE)?;
    assert!(
        lease.contains("keel-guest: net lease 10.0.2."),
        "the guest got no lease through the switch: {lease}\nlog: {}",
        vm.log_path().display()
    );
    assert!(
        !lease.contains("lease 10.0.2.15 "),
        "the guest was given Keel's own address: {lease}"
    );
    let ping = vm.wait_for(
        Pattern::contains("keel-guest: net ping"),
        GUEST_NET_DEADLINE,
    )?;
    assert!(
        ping.contains("ping ok"),
        "the guest cannot reach the gateway: {ping}\nlog: {}",
        vm.log_path().display()
    );

    // Hot-unplug and plug while the guest runs, then a clean shutdown.
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .expect("the script prints it")
            .to_string()
    };
    let (vm_ref, vif_ref) = (field("vm "), field("vif "));
    let steps = run_script(
        UNPLUG_SCRIPT,
        &[&url, &test_credentials().password, &vm_ref, &vif_ref],
    )?;
    eprintln!("guest_network: {}", steps.trim().replace('\n', "; "));
    assert!(steps.contains("unplugged False"), "{steps}");
    assert!(steps.contains("plugged True"), "{steps}");
    assert!(steps.contains("shutdown Halted False"), "{steps}");
    Ok(())
}
