//! Linux guests' netfront on Keel's netback and virtual switch, under the real Xen (TCG), on
//! ONE host boot with two guests booted at once (the lean initramfs's `peer` action,
//! `keel_tests::guest`; each guest runs the steps its command line names and prints
//! `keel-guest: peer <step> <outcome>`, which Keel copies to its log with `keel.log=debug`):
//!
//! | guest | VIFs | steps |
//! |---|---|---|
//! | `a` | `eth0` on `xenbr0` (the management network, the NIC untagged); `eth1` on a VLAN 10 network | a DHCP lease from QEMU's user network and a ping of its gateway 10.0.2.2 through the switch's uplink; then 10.0.2.50 and 10.0.10.60, a TCP server on 7000 |
//! | `b` | `eth0` on `xenbr0`, `locking_mode = "locked"`, `ipv4_allowed = [10.0.2.51]`; `eth1` on a VLAN 20 network; `eth2` on VLAN 10, hot-plugged, then unplugged | reaches `a` (ping, a TCP transfer with busybox `nc`); a spoofed IP, then a spoofed MAC get nothing through; its own again do; 10.0.10.61 on VLAN 20 cannot reach `a`'s 10.0.10.60; on the hot-plugged VLAN 10 VIF it can (ping, TCP); the unplugged VIF goes away in the guest |
//!
//! The host reaches `a`'s TCP server through a port forward. Keel has no NAT for guests and
//! needs none here: `a` is on the management network, the same L2 as QEMU's user network,
//! so QEMU's `hostfwd` (added through the QEMU monitor) reaches `a`'s own address
//! 10.0.2.50 through the switch's uplink. The switch's drops of `b`'s spoofed frames are
//! read from the line Keel logs when `b`'s locked VIF is unplugged (its port's final
//! counters). Last, `a` shuts down cleanly and its VIFs are detached with it.
//!
//! Two guests, not one per role: under nested TCG a guest's boot (and its `VM.start`, which
//! unpacks the kernel in Keel) costs far more than its steps.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use keel_tests::credentials::test_credentials;
use keel_tests::emulator::retry_after_emulator_fault;
use keel_tests::guest::{self, GUEST_VM_PY};
use keel_tests::guest_host::{fresh_disk, XEN_BOOT_DEADLINE};
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Machine, NicModel, Pattern, Vm};

/// From `VM.start` to a guest's step: four Linux guests boot at once inside an emulated SVM
/// guest of an emulated machine.
const GUEST_DEADLINE: Duration = Duration::from_secs(300);
/// A step after the guest is up (a `reach` retries up to ~3 minutes itself).
const STEP_DEADLINE: Duration = Duration::from_secs(200);

const A_STEPS: &str =
    "dhcp=eth0,reach=10.0.2.2,ip=eth0@10.0.2.50/24,ip=eth1@10.0.10.60/24,serve=7000";
const B_STEPS: &str = "ip=eth0@10.0.2.51/24,reach=10.0.2.50,tcp=10.0.2.50:7000,\
ip=eth0@10.0.2.52/24,ping=10.0.2.50,ip=eth0@10.0.2.51/24,\
mac=eth0@02:00:00:00:00:ee,ping=10.0.2.50,mac=eth0@02:00:00:00:00:0b,reach=10.0.2.50,\
ip=eth1@10.0.10.61/24,ping=10.0.10.60,waitif=eth2,down=eth1,ip=eth2@10.0.10.61/24,\
reach=10.0.10.60,tcp=10.0.10.60:7000,goneif=eth2";

/// Uploads the guest, makes two VLAN networks on the management PIF and the two VMs with
/// their VIFs, starts them all. Prints `guest NAME VM DOMID` and `vif NAME DEVICE VIF`.
const START_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, port, kernel, initrd = sys.argv[1:6]
steps = dict(zip("ab", sys.argv[6:8]))
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-network")
x = s.xenapi
k = upload_image(x, s._session, port, kernel, "guest kernel")
r = upload_image(x, s._session, port, initrd, "guest initramfs")
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
assert len(template) == 1, template
mgmt = [n for n, rec in x.network.get_all_records().items() if rec["bridge"] == "xenbr0"]
assert len(mgmt) == 1, mgmt
pif = [p for p, rec in x.PIF.get_all_records().items() if rec["management"]]
assert len(pif) == 1, pif
nets = {"mgmt": mgmt[0]}
for tag in (10, 20):
    net = x.network.create({"name_label": "tenant-%d" % tag, "name_description": "",
                            "MTU": "1500", "other_config": {}})
    x.VLAN.create(pif[0], str(tag), net)
    nets["vlan%d" % tag] = net
    print("network", tag, net, x.network.get_bridge(net), flush=True)
vifs = {"a": [("mgmt", "02:00:00:00:00:0a", "network_default", []),
              ("vlan10", "02:00:00:00:01:0a", "network_default", [])],
        "b": [("mgmt", "02:00:00:00:00:0b", "locked", ["10.0.2.51"]),
              ("vlan20", "02:00:00:00:01:0b", "network_default", [])]}
vms = {}
for name in "ab":
    vm = guest_vm(x, template[0], "net-" + name, k, r,
                  "console=hvc0 quiet loglevel=4 keel_guest=peer keel_steps=" + steps[name])
    for device, (net, mac, locking, ipv4) in enumerate(vifs[name]):
        vif = x.VIF.create({"device": str(device), "network": nets[net], "VM": vm, "MAC": mac,
                            "MTU": "1500", "other_config": {}, "qos_algorithm_type": "",
                            "qos_algorithm_params": {}, "locking_mode": locking,
                            "ipv4_allowed": ipv4, "ipv6_allowed": []})
        print("vif", name, device, vif, flush=True)
    vms[name] = vm
for name in "ab":
    x.VM.start(vms[name], False, False)
    print("guest", name, vms[name], x.VM.get_domid(vms[name]), flush=True)
print("vlan10", nets["vlan10"], flush=True)
"#;

/// One XenAPI step on a VIF or VM: `plug VM DEVICE NETWORK MAC` (a new VIF on a running
/// guest: `VIF.create` + `VIF.plug`), `unplug VIF`, `shutdown VM VIF`. Prints what the
/// XenAPI says afterwards.
const VIF_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, op = sys.argv[1:4]
rest = sys.argv[4:]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests-guest-network")
x = s.xenapi
if op == "plug":
    vm, device, net, mac = rest
    vif = x.VIF.create({"device": device, "network": net, "VM": vm, "MAC": mac, "MTU": "1500",
                        "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
                        "locking_mode": "network_default", "ipv4_allowed": [],
                        "ipv6_allowed": []})
    x.VIF.plug(vif)
    print("vif", vif)
    print("attached", x.VIF.get_currently_attached(vif), flush=True)
elif op == "unplug":
    x.VIF.unplug(rest[0])
    print("attached", x.VIF.get_currently_attached(rest[0]), flush=True)
elif op == "shutdown":
    vm, vif = rest
    x.VM.clean_shutdown(vm)
    print("shutdown", x.VM.get_power_state(vm), x.VIF.get_currently_attached(vif), flush=True)
"#;

/// What the guests serve on TCP 7000: busybox's `seq 1 40000` (228,894 bytes: a few 64 KiB TSO packets).
fn payload() -> Vec<u8> {
    (1..=40_000)
        .flat_map(|n| format!("{n}\n").into_bytes())
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// The line `guest` (domid) printed for the step that begins with `step`.
fn step(vm: &Vm, domid: &str, step: &str, deadline: Duration) -> String {
    let pattern = format!("guest d{domid}: keel-guest: peer {step}");
    match vm.wait_for(Pattern::contains(pattern.clone()), deadline) {
        Ok(line) => line.trim_end().to_string(),
        Err(e) => panic!("{pattern}: {e}"),
    }
}

/// Asks QEMU's monitor to forward `host_port` on 127.0.0.1 to `guest` (an address on the
/// user network) and answers what the monitor said.
fn add_forward(monitor_port: u16, host_port: u16, guest: &str) -> String {
    let mut monitor = TcpStream::connect(("127.0.0.1", monitor_port)).expect("QEMU monitor");
    monitor
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(monitor.try_clone().unwrap());
    let prompt = |reader: &mut BufReader<TcpStream>| {
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("(qemu)") {
            let mut buf = Vec::new();
            match reader.read_until(b' ', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => seen.extend(buf),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    };
    prompt(&mut reader);
    writeln!(
        monitor,
        "hostfwd_add net0 tcp:127.0.0.1:{host_port}-{guest}"
    )
    .unwrap();
    prompt(&mut reader)
}

/// Reads what the forwarded port serves (retrying while the guest's `nc` is between
/// connections).
fn fetch(port: u16, expected: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..20 {
        got.clear();
        if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) {
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let _ = conn.read_to_end(&mut got);
        }
        if got == expected {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    got
}

#[test]
fn guests_on_networks_vlans_locking_port_forward_and_hot_plug() {
    let started = Instant::now();
    // A wedged emulator or a triple fault in Xen's own code gets one more run on a fresh
    // host (docs/xen.md); any other failure fails the test.
    retry_after_emulator_fault("guest_network", run);
    eprintln!(
        "guest_network: whole test {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

fn run(name: &str) -> Result<(), HarnessError> {
    let disk = fresh_disk(name);
    let monitor_port = free_port();
    let vm = Machine::new(name)
        .under_xen()
        .memory_mib(1024)
        .disk_file(&disk, keel_tests::DiskBus::VirtioBlk)
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word())
        .append("keel.log=debug")
        .arg("-monitor")
        .arg(format!("tcp:127.0.0.1:{monitor_port},server=on,wait=off"))
        .boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), XEN_BOOT_DEADLINE)?;
    let booted = Instant::now();
    let port = vm.api_port().expect("API port").to_string();
    let url = format!("http://127.0.0.1:{port}");
    let password = test_credentials().password.clone();
    let kernel = guest::kernel()?;
    let initrd = guest::initramfs()?;
    let out = run_script(
        &format!("{GUEST_VM_PY}\n{START_SCRIPT}"),
        &[
            &url,
            &password,
            &port,
            kernel.to_str().expect("UTF-8 path"),
            initrd.to_str().expect("UTF-8 path"),
            A_STEPS,
            B_STEPS,
        ],
    )?;
    eprintln!(
        "guest_network: started {:.0} s after Keel was ready: {}",
        booted.elapsed().as_secs_f64(),
        out.trim().replace('\n', "; ")
    );
    let words = |prefix: &str| -> Vec<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("the script prints {prefix}: {out}"))
            .split(' ')
            .map(str::to_string)
            .collect()
    };
    let guest = |name: &str| {
        let w = words(&format!("guest {name} "));
        (w[0].clone(), w[1].clone())
    };
    let ((a_vm, a), (b_vm, b)) = (guest("a"), guest("b"));
    let a_vif = words("vif a 0 ")[0].clone();
    let b_vif = words("vif b 0 ")[0].clone();
    let vlan10 = words("vlan10 ")[0].clone();
    let vif_step = |args: &[&str]| -> Result<String, HarnessError> {
        let mut argv = vec![url.as_str(), password.as_str()];
        argv.extend_from_slice(args);
        let out = run_script(VIF_SCRIPT, &argv)?;
        eprintln!(
            "guest_network: {args:?}: {}",
            out.trim().replace('\n', "; ")
        );
        Ok(out)
    };
    let log = vm.log_path().display().to_string();

    // a: a lease from QEMU's user network through the switch's uplink, and the gateway.
    let lease = step(&vm, &a, "dhcp=eth0 lease", GUEST_DEADLINE);
    assert!(
        lease.contains("lease 10.0.2.") && !lease.contains("lease 10.0.2.15/"),
        "a got no lease of its own through the switch: {lease}\nlog: {log}"
    );
    let gateway = step(&vm, &a, "reach=10.0.2.2 ", STEP_DEADLINE);
    assert!(gateway.contains(" ok "), "{gateway}\nlog: {log}");
    let serving = step(&vm, &a, "serve=7000 md5", STEP_DEADLINE);

    // The host reaches a's TCP server through a port forward to a's own address.
    let forward = free_port();
    let said = add_forward(monitor_port, forward, "10.0.2.50:7000");
    assert!(!said.contains("rror"), "hostfwd_add: {said}");
    let expected = payload();
    let got = fetch(forward, &expected);
    assert!(
        got == expected,
        "the host read {} bytes of {} through the port forward ({serving})\nlog: {log}",
        got.len(),
        expected.len()
    );

    // b, locked to its MAC and 10.0.2.51: through with its own, nothing with another.
    let own = step(&vm, &b, "reach=10.0.2.50 ", STEP_DEADLINE);
    assert!(own.contains(" ok "), "{own}\nlog: {log}");
    let tcp = step(&vm, &b, "tcp=10.0.2.50:7000 ", STEP_DEADLINE);
    assert!(
        tcp.contains(" same bytes="),
        "TCP between two guests on one network: {tcp}\nlog: {log}"
    );
    let spoofed_ip = step(&vm, &b, "ping=10.0.2.50 ", STEP_DEADLINE);
    assert!(
        spoofed_ip.ends_with("unreachable"),
        "a spoofed IP got through: {spoofed_ip}\nlog: {log}"
    );
    let spoofed_mac = step(&vm, &b, "mac=eth0@02:00:00:00:00:ee ", STEP_DEADLINE);
    assert!(spoofed_mac.ends_with("02:00:00:00:00:ee"), "{spoofed_mac}");
    step(&vm, &b, "mac=eth0@02:00:00:00:00:0b ", STEP_DEADLINE);
    let lines = vm.serial_lines();
    let pings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&format!("guest d{b}: keel-guest: peer ping=10.0.2.50 ")))
        .collect();
    assert_eq!(pings.len(), 2, "{pings:?}");
    assert!(
        pings[1].trim_end().ends_with("unreachable"),
        "a spoofed MAC got through: {}\nlog: {log}",
        pings[1]
    );
    step(&vm, &b, "ip=eth1@", STEP_DEADLINE);
    let back = vm
        .serial_lines()
        .into_iter()
        .filter(|l| l.contains(&format!("guest d{b}: keel-guest: peer reach=10.0.2.50 ")))
        .nth(1)
        .expect("b's second reach");
    assert!(
        back.contains(" ok "),
        "b with its own addresses again: {back}"
    );

    // Two VLANs, one subnet: b's 10.0.10.61 on VLAN 20 cannot reach a's 10.0.10.60 on
    // VLAN 10. Then a VIF on VLAN 10 hot-plugged into the running b can.
    let across = step(&vm, &b, "ping=10.0.10.60 ", STEP_DEADLINE);
    assert!(
        across.ends_with("unreachable"),
        "VLAN 20 reached VLAN 10: {across}\nlog: {log}"
    );
    let plugged = vif_step(&["plug", &b_vm, "2", &vlan10, "02:00:00:00:02:0b"])?;
    assert!(plugged.contains("attached True"), "{plugged}");
    let b_vif2 = plugged
        .lines()
        .find_map(|l| l.strip_prefix("vif "))
        .expect("the new VIF")
        .to_string();
    let appeared = step(&vm, &b, "waitif=eth2 ", STEP_DEADLINE);
    assert!(appeared.ends_with("present"), "{appeared}\nlog: {log}");
    let same_vlan = step(&vm, &b, "reach=10.0.10.60 ", STEP_DEADLINE);
    assert!(same_vlan.contains(" ok "), "{same_vlan}\nlog: {log}");
    let tcp = step(&vm, &b, "tcp=10.0.10.60:7000 ", STEP_DEADLINE);
    assert!(
        tcp.contains(" same bytes="),
        "TCP on VLAN 10: {tcp}\nlog: {log}"
    );
    let unplugged = vif_step(&["unplug", &b_vif2])?;
    assert!(unplugged.contains("attached False"), "{unplugged}");
    let gone = step(&vm, &b, "goneif=eth2 ", STEP_DEADLINE);
    assert!(gone.ends_with(" gone"), "{gone}\nlog: {log}");

    // The switch counted b's spoofed frames: its locked port's final counters.
    let unplugged = vif_step(&["unplug", &b_vif])?;
    assert!(unplugged.contains("attached False"), "{unplugged}");
    let counted = vm.wait_for(
        Pattern::contains(format!("vifs: domain {b} vif 0 off the switch")),
        STEP_DEADLINE,
    )?;
    for reason in ["spoofed_mac=", "spoofed_ip="] {
        assert!(counted.contains(reason), "no {reason}: {counted}");
    }

    // A clean shutdown takes a's VIFs with it.
    let down = vif_step(&["shutdown", &a_vm, &a_vif])?;
    assert!(down.contains("shutdown Halted False"), "{down}");
    eprintln!(
        "guest_network: from Keel ready to the end {:.0} s",
        booted.elapsed().as_secs_f64()
    );
    Ok(())
}
