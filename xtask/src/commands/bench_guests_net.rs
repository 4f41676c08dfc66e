//! The guest network rows of `bench guests` (issue 13: "guest network through netback: TCP
//! guest → outside and guest ↔ guest, and small-packet rate"), measured the same way on a
//! booted Keel host ([`run_keel`]) and a booted reference host ([`run_linux`]).
//!
//! Two guests (Debian's kernel as shipped, the guest initramfs with `udp_pps` of `bench
//! guest-net`, [`NET_GUEST_MIB`] MiB, one vCPU) get one VIF each on the stack's management
//! network — Keel: its netback and switch on `xenbr0`; Linux dom0: `xen-netback` and the
//! bridge `xenbr0` — with static addresses [`ADDRESS_A`] and [`ADDRESS_B`] on QEMU's user
//! network, whose host end 10.0.2.2 is "outside": a sink and a counter on the host's
//! loopback, reached through each dom0's virtio-net uplink. `b` runs the `peer` steps of
//! [`guest_steps`] (`keel_tests::guest`), the same on both stacks:
//!
//! - TCP guest → outside: [`TCP_MIB`] MiB with busybox `nc`, timed by the sink here (first
//!   byte to the end, the host's clock);
//! - TCP guest → guest: [`TCP_MIB`] MiB from `b` to `a`'s `nc` sink, timed by `b`
//!   (`/proc/uptime`);
//! - 60-byte UDP frames as fast as `b`'s socket takes them for [`UDP_SECONDS`] s, to `a`
//!   (`udp_pps recv` counts) and to the outside (counted here): what arrived per second.
//!
//! Under QEMU 7.2's nested SVM the reference stack's networked guests were once seen to
//! triple-fault dom0 (`../shared/notes/linux-dom0-xl.md`); docs/xen.md, "Reference stack
//! networking under QEMU 7.2", has what was measured with the harness's flags.
//!
//! `cargo test -p xtask bench_guests_net -- --ignored --nocapture` boots each stack once and
//! prints both stacks' figures (10 min under TCG on 2 cores at load ~7, 27 min at load ~12).

// `bench guests` (its owner wires these rows in) is the caller; until then only the tests are.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use keel_tests::guest;
use keel_tests::reference::{self, ReferenceHost};
use keel_tests::reference_net;
use keel_tests::triple_fault::triple_faults;
use keel_tests::{Pattern, Vm};

use crate::commands::bench_guest_net::{send_rate, tcp_sink, udp_counter, udp_rate};
use crate::commands::bench_guests::disk::{
    keel_vcpu_seconds, parse_cpu_line, xl_time_used, CpuSplit,
};
use crate::commands::vm::Session;
use crate::error::XtaskError;
use crate::load::Param;

/// Each network guest's memory (as `bench guest-net`).
pub const NET_GUEST_MIB: u64 = 128;
/// MiB each TCP transfer sends (as `bench guest-net`: CPU-bound guests are what wedges nested
/// TCG most, docs/xen.md).
pub const TCP_MIB: u64 = 8;
/// Seconds each small-frame blast lasts.
pub const UDP_SECONDS: u64 = 5;
/// The receiving guest `a` and the sending guest `b`.
pub const ADDRESS_A: &str = "10.0.2.50";
pub const ADDRESS_B: &str = "10.0.2.51";
const MAC_A: &str = "02:00:00:00:00:0a";
const MAC_B: &str = "02:00:00:00:00:0b";
const NAME_A: &str = "bench-net-a";
const NAME_B: &str = "bench-net-b";
/// `a`'s TCP sink and UDP receiver ports.
const SINK_PORT: u16 = 5001;
const UDP_PORT: u16 = 5002;
/// Both guests' boots and every step, under nested TCG on a shared machine.
const RUN_DEADLINE: Duration = Duration::from_secs(1200);
const CALL_DEADLINE: Duration = Duration::from_secs(600);
/// How often dom0 is asked whether the guests are done (a tight loop in dom0 would take the
/// CPU the data path is measured with).
const POLL: Duration = Duration::from_secs(5);
/// Where the guests' initramfs goes in Linux dom0.
const LINUX_RAMDISK: &str = "/tmp/guest-net.cpio";

/// One network row: what it is, in what unit (higher is better on every one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRow {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
}

/// The rows, in the order of [`NetFigures::values`]. Issue 13's goal for each: Keel ≥ 1.2×
/// Linux dom0's.
pub const NET_ROWS: [NetRow; 4] = [
    NetRow {
        key: "net-tcp-out",
        label: "guest network: TCP guest → outside (8 MiB, sink-timed)",
        unit: "MB/s",
    },
    NetRow {
        key: "net-tcp-guest",
        label: "guest network: TCP guest → guest (8 MiB, sender-timed)",
        unit: "MB/s",
    },
    NetRow {
        key: "net-pps-guest",
        label: "guest network: 60-byte UDP frames guest → guest (arrived)",
        unit: "packets/s",
    },
    NetRow {
        key: "net-pps-out",
        label: "guest network: 60-byte UDP frames guest → outside (arrived)",
        unit: "packets/s",
    },
];

/// What one stack's network run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetFigures {
    /// One figure per [`NET_ROWS`] entry, `None` where the run did not reach it.
    pub values: [Option<f64>; 4],
    /// What explains the figures: the sender's own UDP rates, each VIF's drop counters.
    pub profile: Vec<String>,
    /// The sending guest's vCPU during each row: busy seconds and busy share (0..=1).
    pub sender: [Option<(f64, f64)>; 4],
}

fn failed(why: impl Into<String>) -> XtaskError {
    XtaskError::BenchFailed(why.into())
}

/// The `peer` steps of `a` (receives) and `b` (sends), for the host's TCP sink and UDP
/// counter ports.
pub fn guest_steps(tcp_port: u16, udp_port: u16) -> (String, String) {
    let outside = reference_net::QEMU_HOST_ADDRESS;
    let a = format!("ip=eth0@{ADDRESS_A}/24,sink={SINK_PORT},udprecv={UDP_SECONDS}@{UDP_PORT}");
    let b = format!(
        "ip=eth0@{ADDRESS_B}/24,reach={ADDRESS_A},reach={outside},\
         send={TCP_MIB}@{outside}:{tcp_port},send={TCP_MIB}@{ADDRESS_A}:{SINK_PORT},\
         udpsend={UDP_SECONDS}@{ADDRESS_A}:{UDP_PORT},udpsend={UDP_SECONDS}@{outside}:{udp_port}"
    );
    (a, b)
}

/// The guest's `keel_guest=` action running `steps`.
fn peer_action(steps: &str) -> String {
    format!("peer keel_steps={steps}")
}

/// The figures from the guests' `keel-guest: peer` lines (`a`'s and `b`'s) and what the
/// host's sink (bytes, seconds) and counter (datagrams, seconds) saw.
pub fn figures_of(
    a: &[String],
    b: &[String],
    sink: Option<(u64, f64)>,
    counter: Option<(u64, f64)>,
) -> NetFigures {
    let find = |lines: &[String], what: &str| lines.iter().find(|l| l.contains(what)).cloned();
    let tcp_out = sink
        .filter(|&(bytes, secs)| bytes == TCP_MIB << 20 && secs > 0.0)
        .map(|(bytes, secs)| bytes as f64 / 1e6 / secs);
    let tcp_guest =
        find(b, &format!("send={TCP_MIB}@{ADDRESS_A}:")).and_then(|l| send_rate(&l, TCP_MIB));
    let pps_guest = find(a, "udprecv udp_pps received").and_then(|l| udp_rate(&l));
    let pps_out = counter
        .filter(|&(_, secs)| secs > 0.0)
        .map(|(count, secs)| count as f64 / secs);
    let mut profile = Vec::new();
    if let Some((bytes, _)) = sink.filter(|&(bytes, _)| bytes != TCP_MIB << 20) {
        profile.push(format!(
            "the outside's TCP sink got {bytes} of {} bytes",
            TCP_MIB << 20
        ));
    }
    for l in b.iter().filter(|l| l.contains("udp_pps sent")) {
        let from = l.find("udpsend=").unwrap_or(0);
        profile.push(format!("sender: {}", l[from..].trim_end()));
    }
    // Whether the sending guest's own vCPU was the limit: its `/proc/stat` around each row.
    let outside = reference_net::QEMU_HOST_ADDRESS;
    let steps = [
        format!("peer send={TCP_MIB}@{outside}:"),
        format!("peer send={TCP_MIB}@{ADDRESS_A}:"),
        format!("peer udpsend={UDP_SECONDS}@{ADDRESS_A}:"),
        format!("peer udpsend={UDP_SECONDS}@{outside}:"),
    ];
    let mut sender = [None; 4];
    for ((row, step), slot) in NET_ROWS.iter().zip(&steps).zip(&mut sender) {
        let split = b
            .iter()
            .filter(|l| l.contains(step.as_str()))
            .find_map(|l| sender_cpu(l));
        let events = b
            .iter()
            .filter(|l| l.contains(step.as_str()))
            .find_map(|l| sender_events(l));
        if let Some(split) = split {
            let share = split.busy() / (split.busy() + split.idle + split.iowait).max(0.001);
            profile.push(format!(
                "sender's vCPU during {}: {} ({:.0} % busy){}",
                row.label,
                split.describe(),
                100.0 * share,
                events.map_or_else(String::new, |n| format!(", {n} VIF event interrupts"))
            ));
            *slot = Some((split.busy(), share));
        }
    }
    NetFigures {
        values: [tcp_out, tcp_guest, pps_guest, pps_out],
        profile,
        sender,
    }
}

/// Waits on Keel's console for guest `domid`'s line containing `what`. A guest that
/// triple-faults (seen under QEMU's nested SVM, on both stacks) is restarted under another
/// domain id and would leave the wait going until `deadline`: it fails the wait at once.
pub fn wait_for_guest_line(
    machine: &Vm,
    domid: &str,
    what: &str,
    deadline: Duration,
) -> Result<(), XtaskError> {
    let line = format!("guest d{domid}: {what}");
    let fault = format!("(XEN) d{domid}v0 Triple fault");
    let started = Instant::now();
    loop {
        let serial = machine.serial_lines();
        if serial.iter().any(|l| l.contains(&line)) {
            return Ok(());
        }
        if let Some(l) = serial.iter().find(|l| l.contains(&fault)) {
            return Err(failed(format!(
                "guest d{domid} triple-faulted before `{what}`: {}",
                l.trim()
            )));
        }
        if started.elapsed() > deadline {
            return Err(failed(format!(
                "no `{line}` within {} s",
                deadline.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// vCPU seconds of dom0, the receiving and the sending guest over the rows' `wall` seconds.
fn rows_cpu(wall: f64, [dom0, a, b]: [f64; 3], how: &str) -> String {
    let share = |s: f64| 100.0 * s / wall.max(0.001);
    format!(
        "vCPU time over the four rows ({wall:.1} s; {how}): dom0 {dom0:.1} s ({:.0} %), receiving guest {a:.1} s ({:.0} %), sending guest {b:.1} s ({:.0} %)",
        share(dom0),
        share(a),
        share(b)
    )
}

/// The VIF interrupts the sender took during a step, from its `... events <before> <after>`
/// line.
fn sender_events(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(" events ")?;
    let mut words = rest.split_whitespace();
    let before: u64 = words.next()?.parse().ok()?;
    let after: u64 = words.next()?.parse().ok()?;
    after.checked_sub(before)
}

/// The sender's CPU split in a `... cpu <cpu line> / <cpu line>` step line.
fn sender_cpu(line: &str) -> Option<CpuSplit> {
    let (_, rest) = line.split_once(" cpu ")?;
    let (before, after) = rest.split_once(" / ")?;
    Some(CpuSplit::between(
        &parse_cpu_line(before.trim())?,
        &parse_cpu_line(after.trim())?,
    ))
}

/// A result of the host's sink or counter, if it came within `wait`.
fn received(rx: &Receiver<(u64, f64)>, wait: Duration) -> Option<(u64, f64)> {
    rx.recv_timeout(wait).ok()
}

/// The `keel-guest: peer` lines of `console` (prefixes before them kept).
fn peer_lines<'a>(console: impl Iterator<Item = &'a str>) -> Vec<String> {
    console
        .filter(|l| l.contains("keel-guest: peer "))
        .map(str::to_string)
        .collect()
}

/// The network rows on a booted Keel host (`machine`, logged in as `session`, with an SR):
/// uploads the guest kernel and [`crate::commands::bench_guest_net::guest_initrd`], makes
/// the two VMs with a VIF each on `xenbr0`, starts them, waits for both to be done, then
/// shuts them down and destroys them (their VIF ports' final switch counters go into the
/// profile).
pub fn run_keel(machine: &Vm, session: &Session, initrd: &Path) -> Result<NetFigures, XtaskError> {
    let (tcp_port, tcp_done) = tcp_sink()?;
    let (udp_port, udp_done) = udp_counter()?;
    let (a_steps, b_steps) = guest_steps(tcp_port, udp_port);
    let s = session;
    let sr = s.first_sr()?;
    let kernel = s.upload(&sr, &guest::kernel()?, "guest kernel (Debian vmlinuz)")?;
    let ramdisk = s.upload(&sr, initrd, "guest initramfs with udp_pps")?;
    let network = management_network(s)?;
    let mut vms = Vec::new();
    for (name, steps, mac) in [(NAME_A, &a_steps, MAC_A), (NAME_B, &b_steps, MAC_B)] {
        let vm = s.create_guest(
            name,
            (kernel.as_str(), ramdisk.as_str()),
            &peer_action(steps),
            NET_GUEST_MIB,
        )?;
        s.call(
            "VIF.create",
            &[Param::Struct(&[
                ("device", Param::Str("0")),
                ("network", Param::Str(&network)),
                ("VM", Param::Str(&vm)),
                ("MAC", Param::Str(mac)),
                ("MTU", Param::Str("1500")),
                ("other_config", Param::Struct(&[])),
                ("qos_algorithm_type", Param::Str("")),
                ("qos_algorithm_params", Param::Struct(&[])),
                ("locking_mode", Param::Str("network_default")),
                ("ipv4_allowed", Param::Strings(&[])),
                ("ipv6_allowed", Param::Strings(&[])),
            ])],
        )?;
        vms.push(vm);
    }
    let mut domids = Vec::new();
    for vm in &vms {
        s.start(vm)?;
        domids.push(s.value("VM.get_domid", &[vm])?);
    }
    let (a, b) = (&domids[0], &domids[1]);
    let wait = |domid: &str, what: &str| {
        wait_for_guest_line(
            machine,
            domid,
            &format!("keel-guest: peer {what}"),
            RUN_DEADLINE,
        )
    };
    // dom0's and the guests' vCPU time over the rows (Xen's accounting, the usage ledger):
    // from the sender's last reachability check to the receiver's last count.
    let host = s.reference("host.get_all", &[])?;
    let dom0 = s.reference("host.get_control_domain", &[&host])?;
    let mut uuids = vec![s.value("VM.get_uuid", &[&dom0])?];
    for vm in &vms {
        uuids.push(s.value("VM.get_uuid", &[vm])?);
    }
    let uuids: Vec<&str> = uuids.iter().map(String::as_str).collect();
    wait(b, &format!("reach={}", reference_net::QEMU_HOST_ADDRESS))?;
    let from = (Instant::now(), keel_vcpu_seconds(s, &uuids)?);
    wait(b, "done")?;
    wait(a, "udprecv udp_pps received")?;
    // The ledger takes a sample every 5 s: let one fall after the end.
    std::thread::sleep(Duration::from_secs(6));
    let to = (Instant::now(), keel_vcpu_seconds(s, &uuids)?);
    let delta = |i: usize| Some(to.1.get(i).copied()?? - from.1.get(i).copied()??);
    let run_cpu = match (delta(0), delta(1), delta(2)) {
        (Some(dom0), Some(a), Some(b)) => Some(rows_cpu(
            to.0.duration_since(from.0).as_secs_f64(),
            [dom0, a, b],
            "the usage ledger, 5 s samples; 6 s idle after the end included",
        )),
        _ => None,
    };
    let serial = machine.serial_lines();
    let of = |domid: &str| {
        let prefix = format!("guest d{domid}: ");
        peer_lines(
            serial
                .iter()
                .map(String::as_str)
                .filter(|l| l.contains(&prefix)),
        )
    };
    let mut figures = figures_of(
        &of(a),
        &of(b),
        received(&tcp_done, Duration::from_secs(30)),
        received(&udp_done, Duration::from_secs(30)),
    );
    figures.profile.extend(run_cpu);
    for (vm, domid) in vms.iter().zip(&domids) {
        s.call("VM.hard_shutdown", &[Param::Str(vm)])?;
        let line = machine.wait_for(
            Pattern::contains(format!("vifs: domain {domid} vif 0 off the switch")),
            Duration::from_secs(120),
        )?;
        let from = line.find("vifs: ").unwrap_or(0);
        figures.profile.push(line[from..].trim_end().to_string());
        s.call("VM.destroy", &[Param::Str(vm)])?;
    }
    Ok(figures)
}

/// The network whose bridge is `xenbr0` (Keel's management network).
fn management_network(s: &Session) -> Result<String, XtaskError> {
    let body = s.call("network.get_all", &[])?;
    for network in crate::commands::vm::all_refs(&body) {
        if s.value("network.get_bridge", &[&network])? == reference_net::BRIDGE {
            return Ok(network);
        }
    }
    Err(failed(format!(
        "Keel has no network on {}",
        reference_net::BRIDGE
    )))
}

/// The network rows on a booted reference host: hands dom0 `initrd` (the same as Keel's
/// guests boot), writes the two guests' `xl` configurations with a VIF each on `xenbr0`,
/// `xl create`s them, polls their console logs every [`POLL`] until both are done, then reads
/// each VIF's counters in dom0 (into the profile) and destroys the guests.
///
/// A failure beside a triple fault of dom0 that Xen reports in its own code (the emulator's,
/// `keel_tests::triple_fault`) says so first, `EMULATOR FAULT: …`, for the caller to run again
/// on a fresh host.
pub fn run_linux(host: &ReferenceHost, initrd: &Path) -> Result<NetFigures, XtaskError> {
    measure_linux(host, initrd).map_err(|error| {
        match emulator_fault(&host.machine.serial_lines()) {
            Some(fault) => failed(format!("EMULATOR FAULT: {fault}; {error}")),
            None => error,
        }
    })
}

/// The first triple fault in `console` whose reported state is Xen's own, as a sentence.
pub fn emulator_fault(console: &[String]) -> Option<String> {
    triple_faults(console)
        .into_iter()
        .find(|f| f.emulator)
        .map(|f| {
            format!(
                "d{}v{} triple fault at Xen's {}",
                f.domain,
                f.vcpu,
                f.rip
                    .as_deref()
                    .unwrap_or("(no RIP line)")
                    .trim_start_matches("(XEN)")
                    .trim()
            )
        })
}

fn measure_linux(host: &ReferenceHost, initrd: &Path) -> Result<NetFigures, XtaskError> {
    let data = std::fs::read(initrd).map_err(|error| XtaskError::Io {
        what: format!("reading {}", initrd.display()),
        error,
    })?;
    reference_net::put_file(host, LINUX_RAMDISK, &data)?;
    let (tcp_port, tcp_done) = tcp_sink()?;
    let (udp_port, udp_done) = udp_counter()?;
    let (a_steps, b_steps) = guest_steps(tcp_port, udp_port);
    for (name, steps, mac) in [(NAME_A, &a_steps, MAC_A), (NAME_B, &b_steps, MAC_B)] {
        let config = host.write_config(
            name,
            &reference_net::net_guest_config(
                name,
                &peer_action(steps),
                NET_GUEST_MIB,
                LINUX_RAMDISK,
                mac,
            ),
        )?;
        host.run_ok(&format!("xl create {config}"), CALL_DEADLINE)?;
    }
    let console = |name: &str| -> Result<Vec<String>, XtaskError> {
        let log = reference::console_log(name);
        let out = host.run_ok(&format!("grep 'keel-guest: peer ' {log}"), CALL_DEADLINE)?;
        Ok(peer_lines(out.lines()))
    };
    let done = |lines: &[String], what: &str| lines.iter().any(|l| l.contains(what));
    let started = Instant::now();
    let reached = format!("peer reach={}", reference_net::QEMU_HOST_ADDRESS);
    // dom0's and the guests' vCPU time over the rows (`xl list`), as on Keel.
    let mut from: Option<(Instant, String)> = None;
    let (a, b) = loop {
        // grep fails until the first line is there.
        let a = console(NAME_A).unwrap_or_default();
        let b = console(NAME_B).unwrap_or_default();
        if from.is_none() && done(&b, &reached) {
            from = Some((Instant::now(), host.run_ok("xl list", CALL_DEADLINE)?));
        }
        if done(&b, "keel-guest: peer done") && done(&a, "udprecv udp_pps received") {
            break (a, b);
        }
        if started.elapsed() > RUN_DEADLINE {
            return Err(failed(format!(
                "the Linux dom0 network guests were not done within {} s (a: {a:?}, b: {b:?}); console: {}",
                RUN_DEADLINE.as_secs(),
                host.machine.log_path().display()
            )));
        }
        std::thread::sleep(POLL);
    };
    let mut figures = figures_of(
        &a,
        &b,
        received(&tcp_done, Duration::from_secs(30)),
        received(&udp_done, Duration::from_secs(30)),
    );
    if let Some((from_at, before)) = from {
        let after = host.run_ok("xl list", CALL_DEADLINE)?;
        let wall = from_at.elapsed().as_secs_f64();
        let used = |name: &str| xl_time_used(&before, &after, name);
        if let (Some(dom0), Some(a), Some(b)) = (used("Domain-0"), used(NAME_A), used(NAME_B)) {
            figures.profile.push(rows_cpu(
                wall,
                [dom0, a, b],
                "`xl list`, polled every few seconds",
            ));
        }
    }
    for name in [NAME_A, NAME_B] {
        let domid = host.run_ok(&format!("xl domid {name}"), CALL_DEADLINE)?;
        if let Ok(domid) = domid.trim().parse::<u32>() {
            let counters = reference_net::vif_statistics(host, domid)?;
            figures.profile.push(vif_summary(name, domid, &counters));
        }
        host.run_ok(&format!("xl destroy {name}"), CALL_DEADLINE)?;
    }
    Ok(figures)
}

/// One line of a Linux VIF's counters: frames each way and every non-zero drop or error.
/// netback's `rx` is what dom0 received from the guest, `tx` what it sent to it.
pub fn vif_summary(name: &str, domid: u32, counters: &[(String, u64)]) -> String {
    let get = |key: &str| {
        counters
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, v)| *v)
    };
    let losses: Vec<String> = counters
        .iter()
        .filter(|(k, v)| *v > 0 && (k.contains("drop") || k.contains("error")))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "vif{domid}.0 ({name}): from guest {} frames, to guest {} frames, {}",
        get("rx_packets"),
        get("tx_packets"),
        if losses.is_empty() {
            "dropped none".to_string()
        } else {
            format!("dropped {}", losses.join(" "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both stacks' network rows, one fresh host each, Linux first (a benchmark's pieces,
    /// not a CI test).
    #[test]
    #[ignore = "boots Linux dom0 and Keel under nested TCG with two guests each (10–30 min)"]
    fn both_stacks_carry_the_guests_traffic() {
        if let Err(e) = both_stacks() {
            panic!("{e}");
        }
    }

    fn shown(result: &Result<NetFigures, XtaskError>) -> String {
        match result {
            Ok(figures) => format!("{figures:?}"),
            Err(e) => format!("failed: {e}"),
        }
    }

    fn both_stacks() -> Result<(), XtaskError> {
        use keel_tests::credentials::test_credentials;
        use keel_tests::image::Profile;
        use keel_tests::kernel_lines::READY_PREFIX;
        use keel_tests::{DiskBus, Machine, NicModel};

        let initrd = crate::commands::bench_guest_net::guest_initrd()?;
        let memory = crate::commands::bench_guests::HOST_MEMORY_MIB;
        let host = reference::boot("bench-guests-net-linux", memory)?;
        let linux = run_linux(&host, &initrd);
        drop(host);
        eprintln!("Linux dom0 + xl: {}", shown(&linux));
        let (image, _) = crate::commands::build::build_image(Profile::Release)?;
        let dir = keel_tests::paths::keel_dir().join("bench-guests-net");
        std::fs::create_dir_all(&dir).map_err(|error| XtaskError::Io {
            what: "creating the SR disk's directory".into(),
            error,
        })?;
        let disk = dir.join("sr.img");
        let _ = std::fs::remove_file(&disk);
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(256 << 20))
            .map_err(|error| XtaskError::Io {
                what: "creating the SR disk".into(),
                error,
            })?;
        let machine = Machine::new("bench-guests-net-keel")
            .image(&image)
            .under_xen()
            .memory_mib(memory)
            .disk_file(&disk, DiskBus::VirtioBlk)
            .nic_with_api(NicModel::VirtioNet)
            .append(test_credentials().cmdline_word())
            .append("keel.log=debug")
            .boot()?;
        machine.wait_for(Pattern::starts_with(READY_PREFIX), CALL_DEADLINE)?;
        let port = machine.api_port().ok_or_else(|| failed("no API port"))?;
        let session = Session::login(port, &test_credentials().password, "bench-guests-net")?;
        let keel = run_keel(&machine, &session, &initrd);
        eprintln!("Keel: {}", shown(&keel));
        for (stack, figures) in [("Linux", linux?), ("Keel", keel?)] {
            for (row, value) in NET_ROWS.iter().zip(figures.values) {
                let value = value.ok_or_else(|| failed(format!("{stack}: no {}", row.key)))?;
                if value <= 0.0 {
                    return Err(failed(format!("{stack} {}: {value}", row.key)));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn both_guests_get_the_same_steps_on_either_stack() {
        let (a, b) = guest_steps(40000, 40001);
        assert_eq!(a, "ip=eth0@10.0.2.50/24,sink=5001,udprecv=5@5002");
        assert_eq!(
            b,
            "ip=eth0@10.0.2.51/24,reach=10.0.2.50,reach=10.0.2.2,send=8@10.0.2.2:40000,\
             send=8@10.0.2.50:5001,udpsend=5@10.0.2.50:5002,udpsend=5@10.0.2.2:40001"
        );
        // One kernel command-line word.
        assert!(!peer_action(&b).trim_start_matches("peer ").contains(' '));
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_guests_lines_and_the_hosts_counts_become_the_rows() {
        // As Linux dom0's console log has them (Keel's carry a `guest dN: ` prefix).
        let a = lines(
            "keel-guest: peer sink=5001 ok\nkeel-guest: peer udprecv udp_pps received 1607 packets in 5.000 s\n",
        );
        let b = lines(
            "keel-guest: peer send=8@10.0.2.2:41919 uptime 64.84 147.84\n\
             keel-guest: peer send=8@10.0.2.50:5001 uptime 148.07 220.13\n\
             keel-guest: peer udpsend=5@10.0.2.50:5002 udp_pps sent 2176 packets in 5.166 s (0 refused)\n\
             keel-guest: peer done\n",
        );
        let f = figures_of(&a, &b, Some((8 << 20, 82.5)), Some((2240, 5.6)));
        let [out, guest, pps_guest, pps_out] = f.values;
        assert!((out.unwrap() - 8.388608 / 82.5).abs() < 1e-9);
        assert!(
            (guest.unwrap() - 8.388608 / 72.06).abs() < 1e-6,
            "{guest:?}"
        );
        assert_eq!(pps_guest, Some(1607.0 / 5.0));
        assert_eq!(pps_out, Some(400.0));
        assert_eq!(
            f.profile,
            ["sender: udpsend=5@10.0.2.50:5002 udp_pps sent 2176 packets in 5.166 s (0 refused)"]
        );
    }

    #[test]
    fn the_senders_cpu_lines_say_how_busy_it_was_during_each_row() {
        let b = lines(
            "keel-guest: peer send=8@10.0.2.2:41919 uptime 64.84 74.84\n\
             keel-guest: peer send=8@10.0.2.2:41919 cpu cpu  100 0 200 1000 0 0 10 0 0 0 / cpu  150 0 1140 1000 0 0 20 0 0 0\n\
             keel-guest: peer send=8@10.0.2.2:41919 events 100 5100\n\
             keel-guest: peer udpsend=5@10.0.2.50:5002 udp_pps sent 2176 packets in 5.166 s (0 refused)\n\
             keel-guest: peer udpsend=5@10.0.2.50:5002 cpu cpu  0 0 0 0 0 0 0 0 0 0 / cpu  10 0 200 290 0 0 0 0 0 0\n",
        );
        let f = figures_of(&[], &b, None, None);
        // The uptime line still gives the row; the cpu line only the profile.
        assert_eq!(f.profile.len(), 3, "{:?}", f.profile);
        assert_eq!(
            f.profile[1],
            "sender's vCPU during guest network: TCP guest → outside (8 MiB, sink-timed): \
             busy 10.0 s (user 0.5, system 9.4, irq 0.0, softirq 0.1), iowait 0.0, idle 0.0, \
             steal 0.0 (100 % busy), 5000 VIF event interrupts"
        );
        assert!(f.profile[2].ends_with("(42 % busy)"), "{}", f.profile[2]);
        assert_eq!(sender_cpu("keel-guest: peer send=8@x:1 uptime 1 2"), None);
        assert_eq!(
            sender_events("keel-guest: peer send=8@x:1 events 9 3"),
            None
        );
    }

    #[test]
    fn the_rows_cpu_line_gives_each_domains_share_of_the_wall_time() {
        assert_eq!(
            rows_cpu(20.0, [5.0, 2.0, 19.0], "how"),
            "vCPU time over the four rows (20.0 s; how): dom0 5.0 s (25 %), receiving guest \
             2.0 s (10 %), sending guest 19.0 s (95 %)"
        );
    }

    #[test]
    fn a_short_transfer_or_a_missing_line_gives_no_figure() {
        let f = figures_of(&[], &[], Some((1000, 2.0)), None);
        assert_eq!(f.values, [None; 4]);
        assert_eq!(
            f.profile,
            ["the outside's TCP sink got 1000 of 8388608 bytes"]
        );
    }

    #[test]
    fn prefixed_console_lines_are_peer_lines() {
        let serial = "[ 70.1] DEBUG guest d2: keel-guest: peer done\n[ 70.2] INFO other\n";
        assert_eq!(
            peer_lines(serial.lines()),
            ["[ 70.1] DEBUG guest d2: keel-guest: peer done"]
        );
    }

    #[test]
    fn a_vif_summary_names_its_drops() {
        let counters = vec![
            ("rx_packets".to_string(), 4091),
            ("tx_packets".to_string(), 6604),
            ("tx_dropped".to_string(), 21),
            ("rx_errors".to_string(), 0),
        ];
        assert_eq!(
            vif_summary("bench-net-a", 1, &counters),
            "vif1.0 (bench-net-a): from guest 4091 frames, to guest 6604 frames, dropped tx_dropped=21"
        );
        assert!(vif_summary("b", 2, &counters[..2]).ends_with("dropped none"));
    }

    #[test]
    fn only_a_triple_fault_in_xens_own_code_is_the_emulators() {
        let console = lines(
            "(XEN) d0v0 Triple fault - invoking HVM shutdown action 1\n\
             (XEN) *** Dumping Dom0 vcpu#0 state: ***\n\
             (XEN) ----[ Xen-4.17.7  x86_64  debug=n  Not tainted ]----\n\
             (XEN) CPU:    0\n\
             (XEN) RIP:    e008:[<ffff82d0402044a5>]\n",
        );
        let fault = emulator_fault(&console).expect("the emulator's fault");
        assert!(fault.starts_with("d0v0 triple fault at Xen's "), "{fault}");
        assert!(fault.contains("ffff82d0402044a5"), "{fault}");
        let guest = lines(
            "(XEN) d3v0 Triple fault - invoking HVM shutdown action 1\n\
             (XEN) RIP:    0010:[<ffffffff81000000>]\n",
        );
        assert_eq!(emulator_fault(&guest), None);
        assert_eq!(emulator_fault(&[]), None);
    }

    #[test]
    fn every_row_has_a_unique_key_and_a_unit() {
        for (i, row) in NET_ROWS.iter().enumerate() {
            assert!(NET_ROWS[i + 1..].iter().all(|r| r.key != row.key));
            assert!(row.unit == "MB/s" || row.unit == "packets/s");
        }
    }
}
