//! `cargo xtask bench storage`: Keel's NVMe and virtio-blk drivers against Linux on the
//! same QEMU disks, and VDI import/export over HTTP.
//!
//! Both systems boot with the same QEMU flags and a fresh pair of 256 MiB sparse raw files
//! (NVMe `serial=keel0`, virtio-blk). Keel runs `keel.test=bench-storage` (the workloads of
//! `keel_repositories::bench`, through its own drivers, then powers off); Linux (Debian's 6.1
//! kernel, busybox initramfs, the `virtio_blk` and `nvme` modules) runs `kbench.c`, the same
//! workloads with `O_DIRECT` and Linux AIO, compiled statically here with `gcc`. Each line
//! is `bench-storage: DISK PATTERN bs= qd= ops= ns=`; the figures are MB/s for sequential
//! and IOPS for random workloads, as medians over `--runs` boots, and their ratio.
//!
//! The HTTP figures come from the Python client streaming 64 MiB into a VDI on the NVMe SR
//! with `PUT /import_raw_vdi` and back with `GET /export_raw_vdi`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_repositories::bench::{standard_workloads, Figures, Pattern};
use keel_tests::credentials::test_credentials;
use keel_tests::image::Profile;
use keel_tests::linux::{self, CpioEntry};
use keel_tests::prereq::{self, Tool};
use keel_tests::python::run_script;
use keel_tests::{paths, AccelChoice, DiskBus, Machine, NicModel, Pattern as Line};

use crate::bench_report::{cpu_model, qemu_version, record_section, section_markers};
use crate::commands::build::build_image;
use crate::error::XtaskError;
use crate::stats::summarize;
use crate::{date, progress};

/// The Linux side of the workloads.
const KBENCH_C: &str = include_str!("kbench.c");
/// The baseline's drivers: virtio-blk needs the virtio PCI transport too.
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "nvme"];
/// Size of each disk image.
const DISK_BYTES: u64 = 256 << 20;
/// How long one system may take for all its workloads.
const RUN_DEADLINE: Duration = Duration::from_secs(900);

/// `/init` of the Linux baseline: load the disk drivers, wait for both disks, run kbench.
const STORAGE_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m; done
for i in $(seq 1 200); do [ -b /dev/nvme0n1 ] && [ -b /dev/vda ] && break; sleep 0.1; done
/bin/kbench /dev/nvme0n1 nvme
/bin/kbench /dev/vda virtio-blk
echo "linux-baseline: done"
poweroff -f
"#;

/// The HTTP transfer measurement, with the XenAPI SDK and `http.client`.
const HTTP_SCRIPT: &str = r#"
import sys, time, os, http.client, urllib.parse, XenAPI
url, password, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
MiB = 1 << 20
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-bench")
x = s.xenapi
sr = [r for r, rec in x.SR.get_all_records().items()
      if x.PBD.get_device_config(rec["PBDs"][0])["bus"] == "nvme"][0]
vdi = x.VDI.create({"SR": sr, "name_label": "bench", "name_description": "",
    "virtual_size": str(64 * MiB), "type": "user", "sharable": False, "read_only": False,
    "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": []})
data = os.urandom(64 * MiB)
q = urllib.parse.urlencode({"session_id": s._session, "vdi": vdi})
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
start = time.time()
conn.putrequest("PUT", "/import_raw_vdi?" + q)
conn.putheader("Content-Length", str(len(data)))
conn.endheaders()
for i in range(0, len(data), MiB):
    conn.send(data[i:i + MiB])
r = conn.getresponse(); r.read()
assert r.status == 200, r.status
print("import-seconds", time.time() - start)
start = time.time()
conn.request("GET", "/export_raw_vdi?" + q)
r = conn.getresponse()
got = b""
while True:
    b = r.read(MiB)
    if not b:
        break
    got += b
assert r.status == 200 and got == data
print("export-seconds", time.time() - start)
x.VDI.destroy(vdi)
"#;

fn io_failure(what: impl Into<String>, message: impl Into<String>) -> XtaskError {
    XtaskError::Io {
        what: what.into(),
        error: std::io::Error::other(message.into()),
    }
}

fn bench_dir() -> PathBuf {
    paths::keel_dir().join("bench-storage")
}

/// A fresh pair of sparse disk images.
fn fresh_disks() -> Result<(PathBuf, PathBuf), XtaskError> {
    let dir = bench_dir();
    fs::create_dir_all(&dir).map_err(|error| XtaskError::Io {
        what: format!("creating {}", dir.display()),
        error,
    })?;
    let make = |name: &str| -> Result<PathBuf, XtaskError> {
        let path = dir.join(name);
        let _ = fs::remove_file(&path);
        fs::File::create(&path)
            .and_then(|f| f.set_len(DISK_BYTES))
            .map_err(|error| XtaskError::Io {
                what: format!("creating {}", path.display()),
                error,
            })?;
        Ok(path)
    };
    Ok((make("nvme.img")?, make("blk.img")?))
}

fn with_disks(machine: Machine, nvme: &Path, blk: &Path) -> Machine {
    machine
        .disk_file(nvme, DiskBus::Nvme)
        .disk_file(blk, DiskBus::VirtioBlk)
}

/// `nvme` or `virtio-blk` from a disk name of either system.
fn bus_of(disk: &str) -> &'static str {
    if disk.starts_with("nvme") {
        "nvme"
    } else {
        "virtio-blk"
    }
}

/// Boots `machine`, waits for `done`, and returns its `bench-storage:` lines.
fn measure(machine: Machine, done: &str) -> Result<Vec<Figures>, XtaskError> {
    let vm = machine.boot()?;
    vm.wait_for(Line::contains(done), RUN_DEADLINE)?;
    let figures: Vec<Figures> = vm
        .serial_lines()
        .iter()
        .filter_map(|l| Figures::parse(l))
        .collect();
    let expected = 2 * standard_workloads().len();
    if figures.len() != expected {
        return Err(io_failure(
            "storage benchmark",
            format!(
                "{} of {expected} workloads reported; console: {}",
                figures.len(),
                vm.log_path().display()
            ),
        ));
    }
    Ok(figures)
}

/// One boot of Keel running the workloads through its own drivers on fresh disks (also
/// `bench guest-disk`'s baseline).
pub(crate) fn keel_run(image: &Path, name: &str) -> Result<Vec<Figures>, XtaskError> {
    let (nvme, blk) = fresh_disks()?;
    let machine = Machine::new(name)
        .image(image)
        .append("keel.test=bench-storage");
    measure(with_disks(machine, &nvme, &blk), "keel: powering off")
}

/// The static kbench binary (built once per source change).
pub(crate) fn kbench() -> Result<PathBuf, XtaskError> {
    let dir = bench_dir();
    let source = dir.join("kbench.c");
    let binary = dir.join("kbench");
    fs::create_dir_all(&dir).map_err(|error| XtaskError::Io {
        what: format!("creating {}", dir.display()),
        error,
    })?;
    if fs::read_to_string(&source).ok().as_deref() == Some(KBENCH_C) && binary.exists() {
        return Ok(binary);
    }
    fs::write(&source, KBENCH_C).map_err(|error| XtaskError::Io {
        what: format!("writing {}", source.display()),
        error,
    })?;
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .map_err(|error| XtaskError::Io {
            what: "running gcc (the Linux baseline's kbench is C)".into(),
            error,
        })?;
    if !status.success() {
        return Err(XtaskError::CommandFailed {
            command: format!(
                "gcc -static -O2 -o {} {}",
                binary.display(),
                source.display()
            ),
            status: Some(status),
        });
    }
    Ok(binary)
}

/// The baseline's initramfs: busybox, the disk modules, `/init`, plus kbench as a second
/// (concatenated) cpio archive, which the kernel unpacks after the first.
fn linux_initrd() -> Result<PathBuf, XtaskError> {
    let base = linux::initramfs("storage.cpio", STORAGE_INIT, MODULES)?;
    let mut archive = fs::read(&base).map_err(|error| XtaskError::Io {
        what: format!("reading {}", base.display()),
        error,
    })?;
    let binary = fs::read(kbench()?).map_err(|error| XtaskError::Io {
        what: "reading kbench".into(),
        error,
    })?;
    archive.extend(linux::cpio_newc(&[CpioEntry {
        path: "bin/kbench".into(),
        mode: 0o100755,
        data: binary,
    }]));
    let out = linux::artifact("storage-kbench.cpio");
    fs::write(&out, archive).map_err(|error| XtaskError::Io {
        what: format!("writing {}", out.display()),
        error,
    })?;
    Ok(out)
}

/// One row of the report: a workload on one bus, medians over the runs.
struct Row {
    bus: &'static str,
    pattern: Pattern,
    block_bytes: u32,
    asked_depth: u16,
    keel_depth: u16,
    keel: f64,
    linux: f64,
}

impl Row {
    fn unit(&self) -> &'static str {
        match self.pattern {
            Pattern::SeqRead | Pattern::SeqWrite => "MB/s",
            Pattern::RandRead | Pattern::RandWrite => "IOPS",
        }
    }
}

fn figure(f: &Figures) -> f64 {
    match f.pattern {
        Pattern::SeqRead | Pattern::SeqWrite => f.megabytes_per_second(),
        Pattern::RandRead | Pattern::RandWrite => f.iops(),
    }
}

/// Medians per (bus, workload) over the runs of both systems.
fn rows(keel: &[Vec<Figures>], linux: &[Vec<Figures>]) -> Vec<Row> {
    let mut out = Vec::new();
    for bus in ["nvme", "virtio-blk"] {
        for (index, w) in standard_workloads().iter().enumerate() {
            let pick = |runs: &[Vec<Figures>]| -> (Vec<f64>, u16) {
                let mut values = Vec::new();
                let mut depth = 0;
                for run in runs {
                    if let Some(f) = run.iter().filter(|f| bus_of(&f.disk) == bus).nth(index) {
                        values.push(figure(f));
                        depth = f.queue_depth;
                    }
                }
                (values, depth)
            };
            let (k, keel_depth) = pick(keel);
            let (l, _) = pick(linux);
            let median = |v: &[f64]| summarize(v).map_or(0.0, |s| s.median);
            out.push(Row {
                bus,
                pattern: w.pattern,
                block_bytes: w.block_bytes,
                asked_depth: w.queue_depth,
                keel_depth,
                keel: median(&k),
                linux: median(&l),
            });
        }
    }
    out
}

fn http_seconds(out: &str, key: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

fn markdown(rows: &[Row], http: (f64, f64), runs: u32, accel: &str) -> String {
    let (begin, end) = section_markers("storage");
    let mut out = format!("{begin}\n## Storage\n\n");
    out.push_str(&format!(
        "Recorded {} with `cargo xtask bench storage --runs {runs} --record`.\n\n",
        date::now_utc()
    ));
    out.push_str(&format!(
        "- Machine: {accel}, {} host cores{}, {}; both systems on q35, 256 MiB\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default(),
        qemu_version().unwrap_or_else(|| "QEMU".into())
    ));
    out.push_str("- Disks: fresh 256 MiB sparse raw files for each boot, `-device nvme,serial=keel0` and `virtio-blk-pci`, QEMU's default cache (write-back, host page cache)\n");
    out.push_str("- Keel: its own NVMe driver and virtio-blk through `virtio-drivers`, polled, `keel.test=bench-storage`\n");
    out.push_str("- Linux: Debian 6.1, busybox initramfs, `kbench` (O_DIRECT + Linux AIO, same workloads and offsets)\n");
    out.push_str("- Workloads over the first 64 MiB of each disk, writes first; sequential: 512 KiB requests (NVMe's transfer limit here); random: 4 KiB\n\n");
    out.push_str("| Disk | Workload | QD (Keel) | Keel | Linux | Keel/Linux |\n|---|---|---:|---:|---:|---:|\n");
    for r in rows {
        let unit = r.unit();
        out.push_str(&format!(
            "| {} | {} {} KiB | {}{} | {:.0} {unit} | {:.0} {unit} | {:.2}× |\n",
            r.bus,
            r.pattern.name(),
            r.block_bytes / 1024,
            r.asked_depth,
            if r.keel_depth != r.asked_depth {
                format!(" ({})", r.keel_depth)
            } else {
                String::new()
            },
            r.keel,
            r.linux,
            r.keel / r.linux.max(f64::MIN_POSITIVE)
        ));
    }
    out.push_str("\nA QD in parentheses is what Keel's driver could use: `virtio-drivers`' virtqueue has 16 entries.\n\n");
    out.push_str(&format!(
        "VDI data over HTTP (64 MiB, Python client through the user-net port forward, NVMe SR): import **{:.1} MB/s**, export **{:.1} MB/s**.\n",
        http.0, http.1
    ));
    out.push_str(&end);
    out.push('\n');
    out
}

pub fn run(runs: u32, record: bool) -> Result<(), XtaskError> {
    prereq::ensure(&[Tool::Qemu])?;
    let (image, _) = build_image(Profile::Release)?;
    let step = progress::step("preparing the Linux baseline (Debian kernel, busybox, kbench)");
    let kernel = linux::kernel()?;
    let initrd = linux_initrd()?;
    step.done();
    let accel = AccelChoice::Auto.resolve();

    let (mut keel, mut linux_runs) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let step = progress::step(format!("Keel, run {run}/{runs} ({accel})"));
        keel.push(keel_run(&image, &format!("bench-storage-keel-{run}"))?);
        step.done();
        let step = progress::step(format!("Linux, run {run}/{runs}"));
        let (nvme, blk) = fresh_disks()?;
        let machine = Machine::new(format!("bench-storage-linux-{run}"))
            .image(&kernel)
            .without_debug_exit()
            .append("console=ttyS0 quiet")
            .arg("-initrd")
            .arg(initrd.as_os_str().to_owned());
        linux_runs.push(measure(
            with_disks(machine, &nvme, &blk),
            "linux-baseline: done",
        )?);
        step.done();
    }

    let step = progress::step("VDI import and export over HTTP");
    let (nvme, blk) = fresh_disks()?;
    let machine = Machine::new("bench-storage-http")
        .image(&image)
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word());
    let vm = with_disks(machine, &nvme, &blk).boot()?;
    vm.wait_for(
        Line::starts_with(keel_tests::kernel_lines::READY_PREFIX),
        keel_tests::BOOT_DEADLINE,
    )?;
    let port = vm
        .api_port()
        .ok_or_else(|| io_failure("HTTP benchmark", "no API port"))?
        .to_string();
    let url = format!("http://127.0.0.1:{port}");
    let out = run_script(HTTP_SCRIPT, &[&url, &test_credentials().password, &port])?;
    let mb = 64.0 * 1048576.0 / 1e6;
    let import = http_seconds(&out, "import-seconds").map_or(0.0, |s| mb / s);
    let export = http_seconds(&out, "export-seconds").map_or(0.0, |s| mb / s);
    drop(vm);
    step.done();

    let rows = rows(&keel, &linux_runs);
    let section = markdown(&rows, (import, export), runs, &accel.to_string());
    println!("{section}");
    if record {
        let doc = record_section("storage", &section)?;
        println!("recorded in {}", doc.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C table must list the same workloads as Keel's, in the same order.
    #[test]
    fn kbench_runs_the_same_workloads_as_keel() {
        let table: Vec<(String, u32, u32)> = KBENCH_C
            .lines()
            .filter_map(|l| {
                let l = l.trim().strip_prefix("{\"")?;
                let (name, rest) = l.split_once('"')?;
                let fields: Vec<&str> = rest
                    .trim_start_matches(',')
                    .trim_end_matches("},")
                    .split(',')
                    .map(str::trim)
                    .collect();
                let ops: u32 = fields.get(4)?.parse().ok()?;
                let depth: u32 = fields.get(3)?.parse().ok()?;
                Some((name.to_string(), depth, ops))
            })
            .collect();
        let keel: Vec<(String, u32, u32)> = standard_workloads()
            .iter()
            .map(|w| {
                (
                    w.pattern.name().to_string(),
                    u32::from(w.queue_depth),
                    w.ops,
                )
            })
            .collect();
        assert_eq!(table, keel);
    }

    #[test]
    fn rows_take_medians_per_bus_and_keep_the_depth_keel_used() {
        let line = |disk: &str, pattern: &str, bs: u32, qd: u16, ns: u64| {
            Figures::parse(&format!(
                "bench-storage: {disk} {pattern} bs={bs} qd={qd} ops=100 ns={ns}"
            ))
            .unwrap()
        };
        let run = |scale: u64| -> Vec<Figures> {
            let mut all = Vec::new();
            for disk in ["nvme-keel0-n1", "virtio-blk-00:02.0"] {
                for w in standard_workloads() {
                    let qd = if disk.starts_with("virtio") {
                        w.queue_depth.min(16)
                    } else {
                        w.queue_depth
                    };
                    all.push(line(
                        disk,
                        w.pattern.name(),
                        w.block_bytes,
                        qd,
                        1_000_000_000 * scale,
                    ));
                }
            }
            all
        };
        let rows = rows(&[run(1), run(2), run(4)], &[run(1)]);
        assert_eq!(rows.len(), 2 * standard_workloads().len());
        // Median of 100, 50 and 25 IOPS.
        let random = rows
            .iter()
            .find(|r| r.pattern == Pattern::RandRead && r.bus == "nvme")
            .unwrap();
        assert!((random.keel - 50.0).abs() < 1e-9);
        assert!((random.linux - 100.0).abs() < 1e-9);
        let capped = rows
            .iter()
            .find(|r| r.bus == "virtio-blk" && r.asked_depth == 32)
            .unwrap();
        assert_eq!(capped.keel_depth, 16);
        let table = markdown(&rows, (10.0, 5.0), 3, "tcg");
        assert!(
            table.contains("| virtio-blk | seq-write 512 KiB | 32 (16) |"),
            "{table}"
        );
        assert!(table.contains("import **10.0 MB/s**"));
    }
}
