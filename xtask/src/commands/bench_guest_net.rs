//! `cargo xtask bench guest-net [--runs N] [--record]`: what a Linux guest's network gets
//! through netfront, Keel's netback and virtual switch.
//!
//! Keel boots as Xen's dom0 in QEMU (as the guest tests do) with the NIC on QEMU's user
//! network; two guests (Debian's kernel, the guest initramfs with `udp_pps`,
//! `tests/guest-tools/udp_pps.c`) get one VIF each on the management network (`xenbr0`,
//! the NIC untagged), static addresses 10.0.2.50 (`a`) and 10.0.2.51 (`b`). `b` runs the
//! `peer` steps (`keel_tests::guest`):
//!
//! - **TCP guest → outside**: 8 MiB with busybox `nc` to 10.0.2.2, QEMU's user-network
//!   host end, which QEMU connects to a sink here on 127.0.0.1 (guest → netback → switch →
//!   Keel's virtio-net driver → QEMU). Timed by the guest (`/proc/uptime`, from the first
//!   byte written to the sink's close) and by the sink (first byte to end).
//! - **TCP guest → guest**: 8 MiB from `b` to `a`'s `nc` sink (guest → netback → switch →
//!   netback → guest), timed by `b`.
//! - **Small frames**: 60-byte UDP frames (18-byte payload) as fast as `b`'s socket takes
//!   them for 5 s, to `a` (`udp_pps recv` counts) and to the outside (counted here).
//!   Packets per second are what arrived.
//!
//! Figures are medians over `--runs` host boots. Everything runs nested under TCG, so the
//! figures bound the data path's cost from above; they are for comparing Keel with itself
//! over time (and, with the guest benchmarks issue, with a Linux dom0).

use std::fs;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_tests::credentials::test_credentials;
use keel_tests::emulator;
use keel_tests::guest::{self, GUEST_VM_PY};
use keel_tests::image::Profile;
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::linux::{self, CpioEntry};
use keel_tests::prereq::{self, Tool};
use keel_tests::python::run_script;
use keel_tests::{paths, AccelChoice, DiskBus, Machine, NicModel, Pattern as Line};

use crate::bench_report::{cpu_model, qemu_version, record_section, section_markers};
use crate::commands::build::build_image;
use crate::error::XtaskError;
use crate::stats::summarize;
use crate::{date, progress};

const SR_DISK_BYTES: u64 = 256 << 20;
const XEN_BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// Both guests' boots and every step, under nested TCG on a shared machine.
const GUEST_RUN_DEADLINE: Duration = Duration::from_secs(1200);
/// MiB each TCP transfer sends (a guest sending flat out is CPU-bound, and CPU-bound
/// guests are what wedges nested TCG most, docs/xen.md: kept short).
const TCP_MIB: u64 = 8;
/// Seconds each small-frame blast lasts.
const UDP_SECONDS: u64 = 5;

fn failed(why: impl Into<String>) -> XtaskError {
    XtaskError::BenchFailed(why.into())
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> XtaskError {
    move |error| XtaskError::Io {
        what: what.into(),
        error,
    }
}

/// Makes the two VMs (one VIF each on `xenbr0`) and starts them; prints `guest NAME DOMID`.
const START_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password, port, kernel, initrd, a_steps, b_steps = sys.argv[1:8]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-bench-guest-net")
x = s.xenapi
k = upload_image(x, s._session, port, kernel, "guest kernel")
r = upload_image(x, s._session, port, initrd, "guest initramfs")
template = [ref for ref, rec in x.VM.get_all_records().items()
            if rec["is_a_template"] and rec["name_label"] == "Keel Linux PVH (direct boot)"]
mgmt = [n for n, rec in x.network.get_all_records().items() if rec["bridge"] == "xenbr0"][0]
vms = {}
for name, steps, mac in (("a", a_steps, "02:00:00:00:00:0a"), ("b", b_steps, "02:00:00:00:00:0b")):
    vm = guest_vm(x, template[0], "bench-" + name, k, r,
                  "console=hvc0 quiet loglevel=4 keel_guest=peer keel_steps=" + steps)
    x.VIF.create({"device": "0", "network": mgmt, "VM": vm, "MAC": mac, "MTU": "1500",
                  "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
                  "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": []})
    vms[name] = vm
for name in "ab":
    x.VM.start(vms[name], False, False)
    print("guest", name, x.VM.get_domid(vms[name]), flush=True)
"#;

/// Destroys the VMs (their VIFs leave the switch, and Keel logs each port's final counters).
const STOP_SCRIPT: &str = r#"
import sys, socket, XenAPI
socket.setdefaulttimeout(600)
url, password = sys.argv[1:3]
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-bench-guest-net")
x = s.xenapi
for vm, rec in x.VM.get_all_records().items():
    if rec["name_label"].startswith("bench-") and rec["power_state"] == "Running":
        x.VM.hard_shutdown(vm)
"#;

/// The guest initramfs with `udp_pps` as `/bin/udp_pps` (a second, concatenated cpio).
pub(crate) fn guest_initrd() -> Result<PathBuf, XtaskError> {
    let mut archive = fs::read(guest::initramfs()?).map_err(io("reading the guest initramfs"))?;
    let binary = fs::read(guest::udp_pps()?).map_err(io("reading udp_pps"))?;
    archive.extend(linux::cpio_newc(&[CpioEntry {
        path: "bin/udp_pps".into(),
        mode: 0o100755,
        data: binary,
    }]));
    let out = linux::artifact("guest-udp-pps.cpio");
    fs::write(&out, archive).map_err(io("writing the guest-net initramfs"))?;
    Ok(out)
}

/// One run's figures.
#[derive(Debug, Clone, Default, PartialEq)]
struct RunFigures {
    /// MB/s (10^6 bytes) guest → outside, timed by the guest and by the sink here.
    out_guest_mbs: f64,
    out_sink_mbs: f64,
    /// MB/s guest → guest, timed by the sender.
    guest_guest_mbs: f64,
    /// Small frames that arrived per second: guest → guest, guest → outside.
    pps_guest: f64,
    pps_out: f64,
    /// Keel's lines with each VIF port's final switch counters (drops by reason).
    switch_lines: Vec<String>,
}

/// `... send=16@10.0.2.2:40000 uptime 61.20 70.45` → MB/s for `mib` MiB.
pub(crate) fn send_rate(line: &str, mib: u64) -> Option<f64> {
    let mut words = line.split_whitespace().rev();
    let end: f64 = words.next()?.parse().ok()?;
    let start: f64 = words.next()?.parse().ok()?;
    (end > start).then(|| (mib << 20) as f64 / 1e6 / (end - start))
}

/// `... udp_pps received 12345 packets in 9.981 s` (or `sent`) → packets per second.
pub(crate) fn udp_rate(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "received" || *w == "sent")?;
    let packets: f64 = words.get(at + 1)?.parse().ok()?;
    let seconds: f64 = words.get(at + 4)?.parse().ok()?;
    (seconds > 0.0).then(|| packets / seconds)
}

/// A TCP sink on 127.0.0.1: sends (bytes, seconds from first byte to end) per connection.
pub(crate) fn tcp_sink() -> Result<(u16, mpsc::Receiver<(u64, f64)>), XtaskError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding the TCP sink"))?;
    let port = listener
        .local_addr()
        .map_err(io("the TCP sink's port"))?
        .port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = vec![0u8; 1 << 16];
            let (mut total, mut first) = (0u64, None);
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                total += n as u64;
            }
            let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
            if tx.send((total, secs)).is_err() {
                break;
            }
        }
    });
    Ok((port, rx))
}

/// A UDP counter on 127.0.0.1: from the first datagram until 3 s without one, sends
/// (datagrams, seconds from the first to the last).
pub(crate) fn udp_counter() -> Result<(u16, mpsc::Receiver<(u64, f64)>), XtaskError> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(io("binding the UDP counter"))?;
    let port = socket
        .local_addr()
        .map_err(io("the UDP counter's port"))?
        .port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        if socket.recv(&mut buf).is_err() {
            return;
        }
        let (first, mut last, mut count) = (Instant::now(), Instant::now(), 1u64);
        let _ = socket.set_read_timeout(Some(Duration::from_secs(3)));
        while socket.recv(&mut buf).is_ok() {
            count += 1;
            last = Instant::now();
        }
        let _ = tx.send((count, last.duration_since(first).as_secs_f64()));
    });
    Ok((port, rx))
}

fn guest_run(
    image: &Path,
    kernel: &Path,
    initrd: &Path,
    name: &str,
) -> Result<RunFigures, XtaskError> {
    let dir = paths::keel_dir().join("bench-guest-net");
    fs::create_dir_all(&dir).map_err(io("creating the SR disk's directory"))?;
    let disk = dir.join("sr.img");
    let _ = fs::remove_file(&disk);
    fs::File::create(&disk)
        .and_then(|f| f.set_len(SR_DISK_BYTES))
        .map_err(io("creating the SR disk"))?;
    let (tcp_port, tcp_done) = tcp_sink()?;
    let (udp_port, udp_done) = udp_counter()?;
    let machine = Machine::new(name)
        .image(image)
        .under_xen()
        .memory_mib(1024)
        .disk_file(&disk, DiskBus::VirtioBlk)
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word())
        .append("keel.log=debug")
        .boot()?;
    machine.wait_for(Line::starts_with(READY_PREFIX), XEN_BOOT_DEADLINE)?;
    let port = machine
        .api_port()
        .ok_or_else(|| failed("no API port"))?
        .to_string();
    let url = format!("http://127.0.0.1:{port}");
    let a_steps = format!("ip=eth0@10.0.2.50/24,sink=5001,udprecv={UDP_SECONDS}@5002");
    let b_steps = format!(
        "ip=eth0@10.0.2.51/24,reach=10.0.2.50,reach=10.0.2.2,\
         send={TCP_MIB}@10.0.2.2:{tcp_port},send={TCP_MIB}@10.0.2.50:5001,\
         udpsend={UDP_SECONDS}@10.0.2.50:5002,udpsend={UDP_SECONDS}@10.0.2.2:{udp_port}"
    );
    let out = run_script(
        &format!("{GUEST_VM_PY}\n{START_SCRIPT}"),
        &[
            &url,
            &test_credentials().password,
            &port,
            path(kernel)?,
            path(initrd)?,
            &a_steps,
            &b_steps,
        ],
    )?;
    let domid = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("guest {name} ")))
            .map(str::to_string)
            .ok_or_else(|| failed(format!("no domid for {name}: {out}")))
    };
    let (a, b) = (domid("a")?, domid("b")?);
    let line = |domid: &str, step: &str| -> Result<String, XtaskError> {
        Ok(machine.wait_for(
            Line::contains(format!("guest d{domid}: keel-guest: peer {step}")),
            GUEST_RUN_DEADLINE,
        )?)
    };
    let log = machine.log_path().display().to_string();
    let bad = |what: &str, l: &str| failed(format!("{what}: {l} (console: {log})"));
    line(&b, "done")?;
    let out_line = line(&b, &format!("send={TCP_MIB}@10.0.2.2:"))?;
    let gg_line = line(&b, &format!("send={TCP_MIB}@10.0.2.50:"))?;
    let pps_line = line(&a, "udprecv udp_pps received")?;
    let (sink_bytes, sink_secs) = tcp_done
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| failed("the TCP sink saw no transfer"))?;
    if sink_bytes != TCP_MIB << 20 {
        return Err(failed(format!(
            "the TCP sink got {sink_bytes} bytes of {}",
            TCP_MIB << 20
        )));
    }
    let (udp_count, udp_secs) = udp_done
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| failed("the UDP counter saw nothing"))?;
    // Where frames were dropped: each VIF port's final switch counters.
    run_script(STOP_SCRIPT, &[&url, &test_credentials().password])?;
    let mut switch_lines = Vec::new();
    for domid in [&a, &b] {
        let l = machine.wait_for(
            Line::contains(format!("vifs: domain {domid} vif 0 off the switch")),
            Duration::from_secs(120),
        )?;
        let from = l.find("vifs: ").unwrap_or(0);
        switch_lines.push(l[from..].trim_end().to_string());
    }
    eprintln!("{name}: {}", switch_lines.join("; "));
    Ok(RunFigures {
        out_guest_mbs: send_rate(&out_line, TCP_MIB)
            .ok_or_else(|| bad("guest → outside", &out_line))?,
        out_sink_mbs: sink_bytes as f64 / 1e6 / sink_secs.max(f64::MIN_POSITIVE),
        guest_guest_mbs: send_rate(&gg_line, TCP_MIB)
            .ok_or_else(|| bad("guest → guest", &gg_line))?,
        pps_guest: udp_rate(&pps_line).ok_or_else(|| bad("small frames", &pps_line))?,
        pps_out: udp_count as f64 / udp_secs.max(f64::MIN_POSITIVE),
        switch_lines,
    })
}

fn path(p: &Path) -> Result<&str, XtaskError> {
    p.to_str()
        .ok_or_else(|| failed(format!("{} is not UTF-8", p.display())))
}

fn markdown(runs: &[RunFigures], accel: &str) -> String {
    let median = |f: fn(&RunFigures) -> f64| {
        let v: Vec<f64> = runs.iter().map(f).collect();
        summarize(&v).map_or(0.0, |s| s.median)
    };
    let (begin, end) = section_markers("guest-net");
    let mut out = format!("{begin}\n## Guest networks (netback)\n\n");
    out.push_str(&format!(
        "Recorded {} with `cargo xtask bench guest-net --runs {} --record`.\n\n",
        date::now_utc(),
        runs.len()
    ));
    out.push_str(&format!(
        "- Machine: {accel}, {} host cores{}, {}\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default(),
        qemu_version().unwrap_or_else(|| "QEMU".into())
    ));
    out.push_str("- Guests: two Debian 6.1 guests under Xen 4.17 with Keel as dom0 (nested TCG), 128 MiB, one VIF each on the management network (`xen-netfront`, Keel's netback and switch); Keel's uplink is virtio-net on QEMU's user network\n");
    out.push_str(&format!("- TCP: {TCP_MIB} MiB with busybox `nc`; outside = QEMU's user-network host end (10.0.2.2, a sink on the host's loopback)\n"));
    out.push_str(&format!("- Small frames: 60-byte UDP frames for {UDP_SECONDS} s (`tests/guest-tools/udp_pps.c`); what arrived per second\n\n"));
    out.push_str("| Path | Figure |\n|---|---:|\n");
    out.push_str(&format!(
        "| TCP guest → outside (guest-timed) | {:.2} MB/s |\n",
        median(|r| r.out_guest_mbs)
    ));
    out.push_str(&format!(
        "| TCP guest → outside (sink-timed) | {:.2} MB/s |\n",
        median(|r| r.out_sink_mbs)
    ));
    out.push_str(&format!(
        "| TCP guest → guest | {:.2} MB/s |\n",
        median(|r| r.guest_guest_mbs)
    ));
    out.push_str(&format!(
        "| 60-byte frames guest → guest | {:.0} packets/s |\n",
        median(|r| r.pps_guest)
    ));
    out.push_str(&format!(
        "| 60-byte frames guest → outside | {:.0} packets/s |\n",
        median(|r| r.pps_out)
    ));
    if let Some(last) = runs.last() {
        out.push_str(
            "\nThe VIF ports' final switch counters in the last run (`a` receives, `b` sends):\n\n",
        );
        for l in &last.switch_lines {
            out.push_str(&format!("- `{l}`\n"));
        }
    }
    out.push_str("\nEverything runs inside an emulated SVM guest of an emulated machine (nested TCG): the figures bound the data path's cost from above and compare Keel with itself over time; the Linux dom0 comparison comes with the guest benchmarks issue.\n");
    out.push_str(&end);
    out.push('\n');
    out
}

pub fn run(runs: u32, record: bool) -> Result<(), XtaskError> {
    prereq::ensure(&[Tool::Qemu, Tool::Xen])?;
    let (image, _) = build_image(Profile::Release)?;
    let step = progress::step("preparing the guests (Debian kernel, initramfs with udp_pps)");
    let kernel = guest::kernel()?;
    let initrd = guest_initrd()?;
    step.done();
    let accel = AccelChoice::Auto.resolve();
    let mut figures = Vec::new();
    for run in 1..=runs {
        let step = progress::step(format!("two guests through netback, run {run}/{runs}"));
        let name = format!("bench-guest-net-{run}");
        let f = match guest_run(&image, &kernel, &initrd, &name) {
            // A wedged emulator (docs/xen.md) gets one more run on a fresh host.
            Err(e) if emulator::faults_of(&name).wedged > 0 => {
                eprintln!("{name}: EMULATOR FAULT (the machine wedged), once more: {e}");
                guest_run(&image, &kernel, &initrd, &format!("{name}_again"))?
            }
            other => other?,
        };
        step.done();
        eprintln!("{f:?}");
        figures.push(f);
    }
    let section = markdown(&figures, &accel.to_string());
    println!("{section}");
    if record {
        let doc = record_section("guest-net", &section)?;
        println!("recorded in {}", doc.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_lines_become_rates() {
        let send =
            "[ 70.1] DEBUG guest d2: keel-guest: peer send=16@10.0.2.2:40000 uptime 61.20 69.20";
        let mbs = send_rate(send, 16).expect("a rate");
        assert!((mbs - 16.0 * 1048576.0 / 1e6 / 8.0).abs() < 1e-9, "{mbs}");
        assert_eq!(send_rate("peer send=16@x:1 uptime 5.0 5.0", 16), None);
        let recv = "guest d1: keel-guest: peer udprecv udp_pps received 5000 packets in 10.000 s";
        assert_eq!(udp_rate(recv), Some(500.0));
        let sent = "keel-guest: peer udpsend=10@10.0.2.2:5 udp_pps sent 800 packets in 4.000 s (0 refused)";
        assert_eq!(udp_rate(sent), Some(200.0));
        assert_eq!(udp_rate("udp_pps received many packets"), None);
    }

    #[test]
    fn the_section_names_its_command_and_medians() {
        let runs = [
            RunFigures {
                out_guest_mbs: 1.0,
                out_sink_mbs: 1.5,
                guest_guest_mbs: 2.0,
                pps_guest: 100.0,
                pps_out: 50.0,
                switch_lines: Vec::new(),
            },
            RunFigures {
                out_guest_mbs: 3.0,
                out_sink_mbs: 2.5,
                guest_guest_mbs: 4.0,
                pps_guest: 300.0,
                pps_out: 70.0,
                switch_lines: Vec::new(),
            },
            RunFigures {
                out_guest_mbs: 2.0,
                out_sink_mbs: 2.0,
                guest_guest_mbs: 3.0,
                pps_guest: 200.0,
                pps_out: 60.0,
                switch_lines: vec!["vifs: domain 1 vif 0 off the switch: dropped none".into()],
            },
        ];
        let section = markdown(&runs, "tcg");
        assert!(section.contains("cargo xtask bench guest-net --runs 3 --record"));
        assert!(section.contains("## Guest networks (netback)"));
        assert!(
            section.contains("| TCP guest → guest | 3.00 MB/s |"),
            "{section}"
        );
        assert!(section.contains("| 60-byte frames guest → guest | 200 packets/s |"));
        assert!(section.contains("- `vifs: domain 1 vif 0 off the switch: dropped none`"));
    }
}
