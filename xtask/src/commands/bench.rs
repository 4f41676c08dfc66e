//! `cargo xtask bench boot`: boot the release image N times and time it to `keel: ready`.
//!
//! Each boot uses the harness's [`Machine`] (the integration tests' QEMU flags) with the
//! device set of `cargo xtask run`: a virtio-net NIC and a 64 MiB virtio-blk scratch disk.

use std::path::Path;

use keel_tests::image::Profile;
use keel_tests::kernel_lines::{ReadyLine, READY_PREFIX};
use keel_tests::machine::DEFAULT_DISK_BYTES;
use keel_tests::prereq::{self, Tool};
use keel_tests::{paths, AccelChoice, Machine, NicModel, Pattern, BOOT_DEADLINE};

use crate::bench_report::{cpu_model, qemu_version, record_section, BootBench};
use crate::commands::build::build_image;
use crate::error::XtaskError;
use crate::stats::summarize;
use crate::{date, progress};

const DEVICES: &str = "q35, 256 MiB, virtio-net, virtio-blk (64 MiB sparse scratch disk), same QEMU flags as the integration tests";

pub fn run(runs: u32, record: bool) -> Result<(), XtaskError> {
    prereq::ensure(&[Tool::Qemu])?;
    let (image, image_bytes) = build_image(Profile::Release)?;
    let accel = AccelChoice::Auto.resolve();
    let step = progress::step(format!("booting {runs} times ({accel})"));
    let (mut host_ms, mut kernel_ms) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let (host, kernel) = boot_once(&image, run)?;
        progress::note(format!(
            "boot {run}/{runs}: {host:.1} ms to ready (kernel reports {kernel:.1} ms)"
        ));
        host_ms.push(host);
        kernel_ms.push(kernel);
    }
    step.done();
    let samples = host_ms.len();
    let (Some(host_ms), Some(kernel_ms)) = (summarize(&host_ms), summarize(&kernel_ms)) else {
        // Only reachable with zero runs, which the argument parser refuses.
        return Err(XtaskError::BenchFailed("no boots were measured".into()));
    };
    let report = BootBench {
        runs: samples,
        accel,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        qemu_version: qemu_version(),
        image: shown_path(&image),
        image_bytes,
        devices: DEVICES.into(),
        host_ms,
        kernel_ms,
    };
    println!("{}", report.table());
    if record {
        let command = format!("cargo xtask bench boot --runs {runs} --record");
        let doc = record_section("boot", &report.markdown_section(&command, &date::now_utc()))?;
        println!("recorded in {}", doc.display());
    }
    Ok(())
}

/// One boot: (host ms from QEMU start to the ready line, kernel-reported ms).
fn boot_once(image: &Path, run: u32) -> Result<(f64, f64), XtaskError> {
    let vm = Machine::new(format!("bench-boot-{run}"))
        .image(image)
        .nic(NicModel::VirtioNet)
        .virtio_blk_disk(DEFAULT_DISK_BYTES)
        .boot()?;
    let line = vm.wait_for_line(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    let ready = ReadyLine::parse(&line.text)
        .ok_or_else(|| XtaskError::MalformedReadyLine(line.text.clone()))?;
    Ok((line.since_start.as_secs_f64() * 1000.0, ready.boot_ms))
}

/// The image path relative to the workspace when it is inside it.
fn shown_path(path: &Path) -> String {
    let root = paths::workspace_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}
