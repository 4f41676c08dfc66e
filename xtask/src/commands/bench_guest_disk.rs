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
//! Both run `keel_repositories::bench::standard_workloads` (random 4 KiB and sequential,
//! read and write, at QD 1 and 32, over the first 64 MiB), except that the guest's sequential
//! requests are 1 MiB (issue 10 asks for 1 MiB; `kbench`'s third argument) and Keel's stay
//! the table's 512 KiB. Keel's virtio-blk driver takes 1 MiB (`MAX_TRANSFER_SECTORS`), but
//! the table is shared with the kernel's `keel.test=bench-storage`, which runs it on every
//! disk, and `bench storage`'s NVMe disk takes at most 512 KiB (QEMU's default MDTS of 7).
//! Each sequential pair moves the same bytes in the same time window; the rows say both sizes.
//! Figures are medians over `--runs` of each, with the guest/Keel ratio.

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
/// The guest's sequential request size (issue 10: "sequential 1 MiB").
const GUEST_SEQ_BLOCK: u32 = 1 << 20;

/// `/bin/kbench` of the guest: the real binary with the guest's sequential request size, so
/// the guest init's `kbench /dev/xvda xvda` runs the 1 MiB rows. A line every 30 s while it
/// runs: a random QD1 row takes minutes under nested TCG, and a console silent for 90 s gets
/// the harness asking Xen whether the machine is wedged (`keel_tests::xen_stall`), which a
/// loaded host can answer too late.
fn kbench_wrapper() -> String {
    format!(
        "#!/bin/sh\n(while sleep 30; do echo kbench: running; done) &\nbeat=$!\n/bin/kbench.bin \"$@\" {GUEST_SEQ_BLOCK}\nstatus=$?\nkill $beat\nexit $status\n"
    )
}

fn failed(why: impl Into<String>) -> XtaskError {
    XtaskError::BenchFailed(why.into())
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> XtaskError {
    move |error| XtaskError::Io {
        what: what.into(),
        error,
    }
}

/// The guest initramfs with `kbench` as `/bin/kbench.bin` behind [`kbench_wrapper`] as
/// `/bin/kbench` (a second, concatenated cpio archive).
fn guest_initrd() -> Result<PathBuf, XtaskError> {
    kbench_initrd(&kbench_wrapper(), "guest-kbench.cpio")
}

/// The guest initramfs with `kbench` as `/bin/kbench.bin` and `wrapper` (a shell script
/// running it) as `/bin/kbench`, appended as a second cpio archive; written as `artifact`.
pub(crate) fn kbench_initrd(wrapper: &str, artifact: &str) -> Result<PathBuf, XtaskError> {
    let mut archive = fs::read(guest::initramfs()?).map_err(io("reading the guest initramfs"))?;
    let binary = fs::read(bench_storage::kbench()?).map_err(io("reading kbench"))?;
    archive.extend(linux::cpio_newc(&[
        CpioEntry {
            path: "bin/kbench.bin".into(),
            mode: 0o100755,
            data: binary,
        },
        CpioEntry {
            path: "bin/kbench".into(),
            mode: 0o100755,
            data: wrapper.as_bytes().to_vec(),
        },
    ]));
    let out = linux::artifact(artifact);
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
    check_guest_figures(&figures).map_err(|why| {
        failed(format!(
            "{why}; console: {}",
            host.machine.log_path().display()
        ))
    })?;
    Ok(figures)
}

/// The guest's figures are the table's workloads in order, the sequential ones in
/// [`GUEST_SEQ_BLOCK`] requests moving the table's bytes.
fn check_guest_figures(figures: &[Figures]) -> Result<(), String> {
    let table = standard_workloads();
    if figures.len() != table.len() {
        return Err(format!(
            "{} of {} guest workloads reported",
            figures.len(),
            table.len()
        ));
    }
    for (f, w) in figures.iter().zip(&table) {
        let block = match w.pattern {
            Pattern::SeqRead | Pattern::SeqWrite => GUEST_SEQ_BLOCK,
            Pattern::RandRead | Pattern::RandWrite => w.block_bytes,
        };
        let bytes = |block: u32, ops: u32| u64::from(block) * u64::from(ops);
        if f.pattern != w.pattern
            || f.queue_depth != w.queue_depth
            || f.block_bytes != block
            || bytes(f.block_bytes, f.ops) != bytes(w.block_bytes, w.ops)
        {
            return Err(format!(
                "the guest ran {} bs={} qd={} ops={} where {} bs={block} qd={} moving {} bytes was expected",
                f.pattern.name(),
                f.block_bytes,
                f.queue_depth,
                f.ops,
                w.pattern.name(),
                w.queue_depth,
                bytes(w.block_bytes, w.ops)
            ));
        }
    }
    Ok(())
}

/// One row: a workload, medians of the guest through blkback and of Keel's own driver.
struct Row {
    pattern: Pattern,
    /// The guest's request size.
    block_bytes: u32,
    /// Keel's own driver's request size (the table's).
    keel_block_bytes: u32,
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
                block_bytes: guest_runs
                    .first()
                    .and_then(|run| run.get(index))
                    .map_or(w.block_bytes, |f| f.block_bytes),
                keel_block_bytes: keel_figures
                    .first()
                    .map_or(w.block_bytes, |f| f.block_bytes),
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

/// A request size as the rows print it: `1 MiB`, `512 KiB`, `4 KiB`.
fn size(bytes: u32) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

fn markdown(rows: &[Row], runs: u32, accel: &str, load: &str) -> String {
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
    out.push_str(&format!("- Workloads of `bench storage` over the first 64 MiB, writes first; random 4 KiB; sequential {} requests in the guest and the table's {} on Keel raw (a workload label in parentheses is Keel raw's request size): the same bytes per row, 256 MiB at QD 1 and 512 MiB at QD 32 (the 64 MiB region wraps). Keel raw keeps the table's size because the table is shared with the kernel's `keel.test=bench-storage`, which also runs it on `bench storage`'s NVMe disk (512 KiB at most: QEMU's default MDTS), though Keel's virtio-blk driver itself takes up to 1 MiB. In the guest a 1 MiB request reaches blkback as several ring requests (Linux `xen-blkfront` uses at most `max_indirect_segments` pages per request, 32 = 128 KiB by default, of the 256 Keel offers)\n", size(GUEST_SEQ_BLOCK), size(rows.iter().find(|r| matches!(r.pattern, Pattern::SeqRead | Pattern::SeqWrite)).map_or(512 << 10, |r| r.keel_block_bytes))));
    out.push_str(&format!("- Load: {load}\n\n"));
    out.push_str(
        "| Workload | QD | Guest (blkback) | Keel raw | Guest/Keel |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let unit = match r.pattern {
            Pattern::SeqRead | Pattern::SeqWrite => "MB/s",
            Pattern::RandRead | Pattern::RandWrite => "IOPS",
        };
        out.push_str(&format!(
            "| {} {}{} | {}{} | {:.1} {unit} | {:.1} {unit} | {:.3}× |\n",
            r.pattern.name(),
            size(r.block_bytes),
            if r.keel_block_bytes != r.block_bytes {
                format!(" ({})", size(r.keel_block_bytes))
            } else {
                String::new()
            },
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

/// The 1-minute load average of `/proc/loadavg`'s text.
fn load_average(loadavg: &str) -> Option<f64> {
    loadavg.split_whitespace().next()?.parse().ok()
}

/// The machine's load over the samples taken around each run, for the section.
fn load_line(samples: &[f64]) -> String {
    match summarize(samples) {
        Some(s) => format!(
            "1-minute load average {:.1} to {:.1} (median {:.1}) on the {} host cores, sampled before and after each run; other work shares the machine, so absolute figures vary between runs",
            s.min,
            s.max,
            s.median,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        None => "not sampled (no /proc/loadavg)".into(),
    }
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
    let mut load = Vec::new();
    let mut sample_load = || {
        if let Some(l) = fs::read_to_string("/proc/loadavg")
            .ok()
            .as_deref()
            .and_then(load_average)
        {
            load.push(l);
        }
    };
    for run in 1..=runs {
        sample_load();
        let step = progress::step(format!("Keel raw, run {run}/{runs} ({accel})"));
        keel_runs.push(bench_storage::keel_run(
            &image,
            &format!("bench-guest-disk-keel-{run}"),
        )?);
        step.done();
        let step = progress::step(format!("guest through blkback, run {run}/{runs}"));
        sample_load();
        guest_runs.push(guest_run(&image, &kernel, &initrd, run)?);
        step.done();
    }
    sample_load();
    let section = markdown(
        &rows(&guest_runs, &keel_runs),
        runs,
        &accel.to_string(),
        &load_line(&load),
    );
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

    /// One run's lines for `disk`: every standard workload, taking `ns` nanoseconds, the
    /// sequential ones in `seq_block` requests (`None`: the table's) moving the same bytes.
    fn run_with(disk: &str, ns: u64, seq_block: Option<u32>) -> Vec<Figures> {
        standard_workloads()
            .iter()
            .map(|w| {
                let block = match (w.pattern, seq_block) {
                    (Pattern::SeqRead | Pattern::SeqWrite, Some(b)) => b,
                    _ => w.block_bytes,
                };
                let ops = u64::from(w.block_bytes) * u64::from(w.ops) / u64::from(block);
                Figures::parse(&format!(
                    "guest d3: bench-storage: {disk} {} bs={block} qd={} ops={ops} ns={ns}",
                    w.pattern.name(),
                    w.queue_depth,
                ))
                .expect("a well-formed line")
            })
            .collect()
    }

    fn run_of(disk: &str, ns: u64) -> Vec<Figures> {
        run_with(disk, ns, None)
    }

    fn guest_run_of(ns: u64) -> Vec<Figures> {
        run_with("xvda", ns, Some(GUEST_SEQ_BLOCK))
    }

    #[test]
    fn the_guest_must_run_its_sequential_rows_in_1_mib_requests_moving_the_tables_bytes() {
        assert_eq!(check_guest_figures(&guest_run_of(1)), Ok(()));
        let why = check_guest_figures(&run_of("xvda", 1)).expect_err("512 KiB is refused");
        assert!(
            why.contains("bs=524288") && why.contains("bs=1048576"),
            "{why}"
        );
        let mut short = guest_run_of(1);
        short[1].ops -= 1;
        assert!(check_guest_figures(&short).is_err(), "fewer bytes moved");
        short.truncate(3);
        assert_eq!(
            check_guest_figures(&short),
            Err(format!(
                "3 of {} guest workloads reported",
                standard_workloads().len()
            ))
        );
    }

    #[test]
    fn the_guests_kbench_is_given_the_1_mib_sequential_size() {
        let wrapper = kbench_wrapper();
        assert!(wrapper.starts_with("#!/bin/sh\n"));
        assert!(
            wrapper.contains("\n/bin/kbench.bin \"$@\" 1048576\n"),
            "{wrapper}"
        );
    }

    #[test]
    fn kbench_takes_the_sequential_size_as_an_optional_third_argument() {
        let source = include_str!("bench_storage/kbench.c");
        assert!(source.contains("usage: kbench DEVICE NAME [SEQ_BLOCK]"));
        assert!(source.contains("argc != 3 && argc != 4"));
    }

    #[test]
    fn sequential_rows_name_both_request_sizes_and_compare_the_same_bytes() {
        // The guest moves its bytes in half as many 1 MiB requests in the same time as Keel's
        // 512 KiB ones: the same MB/s, ratio 1.
        let rows = rows(
            &[guest_run_of(1_000_000_000)],
            &[run_of("virtio-blk0", 1_000_000_000)],
        );
        let section = markdown(&rows, 2, "tcg", "1-minute load average 3.0");
        assert!(
            section.contains("| seq-write 1 MiB (512 KiB) | 1 |"),
            "{section}"
        );
        assert!(
            section.contains("| seq-read 1 MiB (512 KiB) | 32 |"),
            "{section}"
        );
        assert!(section.contains("| rand-read 4 KiB | 32 |"), "{section}");
        assert!(!section.contains("rand-read 4 KiB (4 KiB)"), "{section}");
        for row in rows
            .iter()
            .filter(|r| matches!(r.pattern, Pattern::SeqRead | Pattern::SeqWrite))
        {
            assert!(
                (row.guest / row.keel - 1.0).abs() < 1e-9,
                "{} vs {}",
                row.guest,
                row.keel
            );
        }
        assert!(section.contains(
            "sequential 1 MiB requests in the guest and the table's 512 KiB on Keel raw"
        ));
        assert!(
            section.contains("- Load: 1-minute load average 3.0\n"),
            "{section}"
        );
    }

    #[test]
    fn the_load_average_is_the_first_field_of_proc_loadavg() {
        assert_eq!(load_average("11.52 9.80 7.01 3/412 12345\n"), Some(11.52));
        assert_eq!(load_average(""), None);
        assert!(load_line(&[2.0, 12.0, 4.0]).contains("2.0 to 12.0 (median 4.0)"));
        assert!(load_line(&[]).starts_with("not sampled"));
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
        let section = markdown(&rows, 1, "tcg", "-");
        assert!(section.contains("cargo xtask bench guest-disk --runs 1 --record"));
        assert!(section.contains("0.250×"), "{section}");
    }
}
