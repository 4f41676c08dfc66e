//! `cargo xtask bench guest-disk [--runs N] [--record]`: what blkback costs a Linux guest's
//! disk, against Keel reading the same kind of device itself.
//!
//! - **Guest**: Keel boots as Xen's dom0 in QEMU on a fresh 256 MiB virtio-blk SR (as the
//!   guest tests do); a Linux guest (Debian's kernel, the guest initramfs plus `kbench` of
//!   `bench storage`) gets a 96 MiB VDI as `xvda` and runs `kbench /dev/xvda` with its
//!   `keel_guest=kbench` action: O_DIRECT and Linux AIO through `xen-blkfront`, the ring,
//!   Keel's blkback, the thin VDI and SR, Keel's virtio-blk driver. Its lines reach Keel's
//!   log as `guest d<N>: bench-storage: xvda ...`.
//! - **Keel raw**: Keel without Xen runs the same workloads on the same QEMU virtio-blk
//!   device through its own driver (`keel.test=bench-storage`, the `bench storage` figures).
//!
//! Both run `keel_repositories::bench::standard_workloads`: sequential 512 KiB and random
//! 4 KiB, read and write, at QD 1 and 32, over the first 64 MiB. Figures are medians over
//! `--runs` of each, with the guest/Keel ratio.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_repositories::bench::{standard_workloads, Figures, Pattern};
use keel_tests::credentials::test_credentials;
use keel_tests::guest;
use keel_tests::guest_host::{setup_with, Host, DISK_SCRIPT};
use keel_tests::image::Profile;
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::linux::{self, CpioEntry};
use keel_tests::prereq::{self, Tool};
use keel_tests::python::run_script;
use keel_tests::{paths, AccelChoice, DiskBus, Machine, NicModel, Pattern as Line};

use crate::bench_report::{cpu_model, qemu_version, record_section, section_markers};
use crate::commands::bench_storage;
use crate::commands::build::build_image;
use crate::error::XtaskError;
use crate::stats::summarize;
use crate::{date, progress};

const SR_DISK_BYTES: u64 = 256 << 20;
/// The guest's disk: the workloads' 64 MiB region and some room.
const VDI_MIB: &str = "96";
const XEN_BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// The guest's boot and all its workloads, under nested TCG.
const GUEST_RUN_DEADLINE: Duration = Duration::from_secs(1800);

fn failed(why: impl Into<String>) -> XtaskError {
    XtaskError::BenchFailed(why.into())
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> XtaskError {
    move |error| XtaskError::Io {
        what: what.into(),
        error,
    }
}

/// The guest initramfs with `kbench` as `/bin/kbench` (a second, concatenated cpio archive).
fn guest_initrd() -> Result<PathBuf, XtaskError> {
    let mut archive = fs::read(guest::initramfs()?).map_err(io("reading the guest initramfs"))?;
    let binary = fs::read(bench_storage::kbench()?).map_err(io("reading kbench"))?;
    archive.extend(linux::cpio_newc(&[CpioEntry {
        path: "bin/kbench".into(),
        mode: 0o100755,
        data: binary,
    }]));
    let out = linux::artifact("guest-kbench.cpio");
    fs::write(&out, archive).map_err(io("writing the guest kbench initramfs"))?;
    Ok(out)
}

/// One guest run: Keel under Xen on a fresh SR, the guest's kbench on `xvda`.
fn guest_run(
    image: &Path,
    kernel: &Path,
    initrd: &Path,
    run: u32,
) -> Result<Vec<Figures>, XtaskError> {
    let dir = paths::keel_dir().join("bench-guest-disk");
    fs::create_dir_all(&dir).map_err(io("creating the SR disk's directory"))?;
    let disk = dir.join("sr.img");
    let _ = fs::remove_file(&disk);
    fs::File::create(&disk)
        .and_then(|f| f.set_len(SR_DISK_BYTES))
        .map_err(io("creating the SR disk"))?;
    let machine = Machine::new(format!("bench-guest-disk-{run}"))
        .image(image)
        .under_xen()
        .memory_mib(1024)
        .disk_file(&disk, DiskBus::VirtioBlk)
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word())
        .append("keel.log=debug")
        .boot()?;
    machine.wait_for(Line::starts_with(READY_PREFIX), XEN_BOOT_DEADLINE)?;
    let port = machine.api_port().ok_or_else(|| failed("no API port"))?;
    let host = Host {
        machine,
        url: format!("http://127.0.0.1:{port}"),
        password: test_credentials().password.clone(),
    };
    let vms = setup_with(&host, kernel, initrd, &["kbench-1"])?;
    let vm = vms.first().ok_or_else(|| failed("no VM was made"))?;
    run_script(DISK_SCRIPT, &[&host.url, &host.password, vm, VDI_MIB])?;
    let started = host.call("start", vm, &[])?;
    if started.power != "Running" {
        return Err(failed(format!("the guest is {}", started.power)));
    }
    let prefix = format!("guest d{}: ", started.domid);
    host.machine.wait_for(
        Line::contains(format!("{prefix}keel-guest: kbench done")),
        GUEST_RUN_DEADLINE,
    )?;
    let figures: Vec<Figures> = host
        .machine
        .serial_lines()
        .iter()
        .filter(|l| l.contains(&prefix))
        .filter_map(|l| Figures::parse(l))
        .collect();
    if figures.len() != standard_workloads().len() {
        return Err(failed(format!(
            "{} of {} guest workloads reported; console: {}",
            figures.len(),
            standard_workloads().len(),
            host.machine.log_path().display()
        )));
    }
    Ok(figures)
}

/// One row: a workload, medians of the guest through blkback and of Keel's own driver.
struct Row {
    pattern: Pattern,
    block_bytes: u32,
    depth: u16,
    /// The depth Keel's own driver used (its virtqueue may be shorter than asked).
    keel_depth: u16,
    guest: f64,
    keel: f64,
}

fn figure(f: &Figures) -> f64 {
    match f.pattern {
        Pattern::SeqRead | Pattern::SeqWrite => f.megabytes_per_second(),
        Pattern::RandRead | Pattern::RandWrite => f.iops(),
    }
}

fn rows(guest_runs: &[Vec<Figures>], keel_runs: &[Vec<Figures>]) -> Vec<Row> {
    let median = |v: &[f64]| summarize(v).map_or(0.0, |s| s.median);
    standard_workloads()
        .iter()
        .enumerate()
        .map(|(index, w)| {
            let guest: Vec<f64> = guest_runs
                .iter()
                .filter_map(|run| run.get(index).map(figure))
                .collect();
            let keel_figures: Vec<&Figures> = keel_runs
                .iter()
                .filter_map(|run| {
                    run.iter()
                        .filter(|f| !f.disk.starts_with("nvme"))
                        .nth(index)
                })
                .collect();
            let keel: Vec<f64> = keel_figures.iter().map(|f| figure(f)).collect();
            Row {
                pattern: w.pattern,
                block_bytes: w.block_bytes,
                depth: w.queue_depth,
                keel_depth: keel_figures
                    .first()
                    .map_or(w.queue_depth, |f| f.queue_depth),
                guest: median(&guest),
                keel: median(&keel),
            }
        })
        .collect()
}

fn markdown(rows: &[Row], runs: u32, accel: &str) -> String {
    let (begin, end) = section_markers("guest-disk");
    let mut out = format!("{begin}\n## Guest disks (blkback)\n\n");
    out.push_str(&format!(
        "Recorded {} with `cargo xtask bench guest-disk --runs {runs} --record`.\n\n",
        date::now_utc()
    ));
    out.push_str(&format!(
        "- Machine: {accel}, {} host cores{}, {}\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default(),
        qemu_version().unwrap_or_else(|| "QEMU".into())
    ));
    out.push_str("- Guest: Debian 6.1 under Xen 4.17 with Keel as dom0 (nested TCG), 128 MiB, `kbench /dev/xvda` (O_DIRECT + Linux AIO) on a 96 MiB thin VDI of a virtio-blk SR, through `xen-blkfront` and Keel's blkback\n");
    out.push_str("- Keel raw: Keel alone (no Xen) on the same kind of QEMU virtio-blk disk, its own driver (`keel.test=bench-storage`)\n");
    out.push_str("- Workloads of `bench storage` over the first 64 MiB, writes first; sequential 512 KiB requests, random 4 KiB\n\n");
    out.push_str(
        "| Workload | QD | Guest (blkback) | Keel raw | Guest/Keel |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let unit = match r.pattern {
            Pattern::SeqRead | Pattern::SeqWrite => "MB/s",
            Pattern::RandRead | Pattern::RandWrite => "IOPS",
        };
        out.push_str(&format!(
            "| {} {} KiB | {}{} | {:.1} {unit} | {:.1} {unit} | {:.3}× |\n",
            r.pattern.name(),
            r.block_bytes / 1024,
            r.depth,
            if r.keel_depth != r.depth {
                format!(" ({})", r.keel_depth)
            } else {
                String::new()
            },
            r.guest,
            r.keel,
            r.guest / r.keel.max(f64::MIN_POSITIVE)
        ));
    }
    out.push_str("\nA QD in parentheses is what Keel's own driver could use: `virtio-drivers`' virtqueue has 16 entries.\n");
    out.push_str("The guest runs inside an emulated SVM guest of an emulated machine (nested TCG), so the ratio bounds blkback's cost from above; Keel raw is not nested.\n");
    out.push_str(&end);
    out.push('\n');
    out
}

pub fn run(runs: u32, record: bool) -> Result<(), XtaskError> {
    prereq::ensure(&[Tool::Qemu, Tool::Xen])?;
    let (image, _) = build_image(Profile::Release)?;
    let step = progress::step("preparing the guest (Debian kernel, initramfs with kbench)");
    let kernel = guest::kernel()?;
    let initrd = guest_initrd()?;
    step.done();
    let accel = AccelChoice::Auto.resolve();
    let (mut guest_runs, mut keel_runs) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let step = progress::step(format!("Keel raw, run {run}/{runs} ({accel})"));
        keel_runs.push(bench_storage::keel_run(
            &image,
            &format!("bench-guest-disk-keel-{run}"),
        )?);
        step.done();
        let step = progress::step(format!("guest through blkback, run {run}/{runs}"));
        guest_runs.push(guest_run(&image, &kernel, &initrd, run)?);
        step.done();
    }
    let section = markdown(&rows(&guest_runs, &keel_runs), runs, &accel.to_string());
    println!("{section}");
    if record {
        let doc = record_section("guest-disk", &section)?;
        println!("recorded in {}", doc.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One run's lines for `disk`: every standard workload, taking `ns` nanoseconds.
    fn run_of(disk: &str, ns: u64) -> Vec<Figures> {
        standard_workloads()
            .iter()
            .map(|w| {
                Figures::parse(&format!(
                    "guest d3: bench-storage: {disk} {} bs={} qd={} ops={} ns={ns}",
                    w.pattern.name(),
                    w.block_bytes,
                    w.queue_depth,
                    w.ops
                ))
                .expect("a well-formed line")
            })
            .collect()
    }

    #[test]
    fn the_guest_is_compared_with_keels_virtio_blk_figures_not_its_nvme_ones() {
        let guest = vec![run_of("xvda", 4_000_000_000)];
        let mut keel_run = run_of("nvme0", 1_000_000);
        keel_run.extend(run_of("virtio-blk0", 1_000_000_000));
        let rows = rows(&guest, &[keel_run]);
        assert_eq!(rows.len(), standard_workloads().len());
        for row in &rows {
            assert!(
                (row.guest / row.keel - 0.25).abs() < 1e-9,
                "the guest took 4x as long as Keel's virtio-blk: {} vs {}",
                row.guest,
                row.keel
            );
        }
        let section = markdown(&rows, 1, "tcg");
        assert!(section.contains("cargo xtask bench guest-disk --runs 1 --record"));
        assert!(section.contains("0.250×"), "{section}");
    }
}
