//! `cargo xtask bench dom0`: QEMU start → ready as Xen's PVH dom0, for Keel, for Debian's
//! Linux 6.1 with a busybox initramfs, and for the floor (a PVH dom0 that prints one line and
//! shuts down, see [`floor`]). All three boot with the same QEMU and Xen flags (the
//! harness's [`Machine::under_xen`]: TCG, SVM + nested paging, an AMD IOMMU, 1 GiB with half
//! for dom0, a virtio-net NIC behind the IOMMU). Boots alternate between the systems so that
//! a slow spell on the host does not land on one of them only.
//!
//! Ready means: `keel: ready` (which includes the DHCP lease and the Xen self-tests), the
//! baseline's `/init` printing [`LINUX_DOM0_READY`] (userspace reached, nothing more), the
//! floor's [`floor::FLOOR_READY`].

mod floor;

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_tests::image::Profile;
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::prereq::{self, Tool};
use keel_tests::{linux, xen, Machine, NicModel, Pattern};

use crate::bench_report::{cpu_model, qemu_version, record_section, section_markers};
use crate::commands::build::build_image;
use crate::error::XtaskError;
use crate::stats::{summarize, Summary};
use crate::{date, progress};

/// What the baseline's `/init` prints once userspace runs.
pub const LINUX_DOM0_READY: &str = "linux-dom0: ready";

/// The baseline's `/init`: one line on the console, then nothing.
const LINUX_DOM0_INIT: &str = "#!/bin/busybox sh\n\
/bin/busybox echo \"linux-dom0: ready\"\n\
exec /bin/busybox sleep 3600\n";

/// Linux's command line: Xen's console, no kernel messages on it (Keel logs little too).
const LINUX_CMDLINE: &str = "console=hvc0 quiet";

/// Linux as PVH dom0 took 8.5 s under TCG when measured by hand; room for a loaded host.
const READY_DEADLINE: Duration = Duration::from_secs(240);

/// The goal from the issue: Keel within this much of the floor.
const GOAL_MS: f64 = 300.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Floor,
    Keel,
    Linux,
}

impl System {
    const ALL: [System; 3] = [System::Floor, System::Keel, System::Linux];

    fn name(self) -> &'static str {
        match self {
            System::Floor => "floor",
            System::Keel => "keel",
            System::Linux => "linux",
        }
    }

    fn label(self) -> &'static str {
        match self {
            System::Floor => "floor: one-line PVH dom0",
            System::Keel => "Keel",
            System::Linux => "Linux 6.1 + busybox initramfs",
        }
    }

    fn ready(self) -> Pattern {
        match self {
            System::Floor => Pattern::starts_with(floor::FLOOR_READY),
            System::Keel => Pattern::starts_with(READY_PREFIX),
            System::Linux => Pattern::contains(LINUX_DOM0_READY),
        }
    }
}

/// The three dom0 images.
struct Images {
    keel: PathBuf,
    floor: PathBuf,
    vmlinux: PathBuf,
    initramfs: PathBuf,
}

impl Images {
    fn machine(&self, system: System, run: u32) -> Machine {
        let name = format!("bench-dom0-{}-{run}", system.name());
        let image = match system {
            System::Floor => &self.floor,
            System::Keel => &self.keel,
            System::Linux => &self.vmlinux,
        };
        let machine = Machine::new(name)
            .image(image)
            .under_xen()
            .nic(NicModel::VirtioNet);
        match system {
            System::Linux => machine
                .append(LINUX_CMDLINE)
                .xen_module(self.initramfs.clone()),
            System::Floor | System::Keel => machine,
        }
    }
}

/// Writes the floor image under `target/keel/xen/`.
fn write_floor() -> Result<PathBuf, XtaskError> {
    let path = xen::unpacked_hypervisor_path().with_file_name("floor-dom0.elf");
    let io = |error| XtaskError::Io {
        what: format!("writing {}", path.display()),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&path, floor::image()).map_err(io)?;
    Ok(path)
}

/// One boot: milliseconds from QEMU start to the ready line, and that line.
fn boot_once(images: &Images, system: System, run: u32) -> Result<(f64, String), XtaskError> {
    let vm = images.machine(system, run).boot()?;
    let line = vm.wait_for_line(system.ready(), READY_DEADLINE)?;
    // Keel's line also says which Xen it ran on; the report names it.
    let xen = vm
        .serial_lines()
        .into_iter()
        .find_map(|l| {
            l.find("xen: Xen ").map(|at| {
                l[at + 9..]
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        })
        .unwrap_or_default();
    Ok((line.since_start.as_secs_f64() * 1000.0, xen))
}

/// Figures of one system.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    system: System,
    summary: Summary,
}

/// The measured figures and their context.
#[derive(Debug, Clone, PartialEq)]
struct Dom0Bench {
    runs: u32,
    rows: Vec<Row>,
    machine: String,
    xen_version: String,
}

impl Dom0Bench {
    fn median(&self, system: System) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.system == system)
            .map(|r| r.summary.median)
    }

    /// (difference in ms, ratio) of `system`'s median against the floor's.
    fn against_floor(&self, system: System) -> Option<(f64, f64)> {
        let floor = self.median(System::Floor)?;
        let own = self.median(system)?;
        (floor > 0.0).then(|| (own - floor, own / floor))
    }

    fn table(&self) -> String {
        let mut out = format!(
            "QEMU start -> ready as Xen {}'s PVH dom0, {} runs each: {}\n\n",
            self.xen_version, self.runs, self.machine
        );
        out.push_str(&format!(
            "{:<32}{:>10}{:>10}{:>10}{:>12}{:>8}\n",
            "ms", "min", "median", "max", "vs floor", "ratio"
        ));
        for row in &self.rows {
            let (diff, ratio) = self.against_floor(row.system).unwrap_or((0.0, 1.0));
            out.push_str(&format!(
                "{:<32}{:>10.0}{:>10.0}{:>10.0}{:>+12.0}{:>8.2}\n",
                row.system.label(),
                row.summary.min,
                row.summary.median,
                row.summary.max,
                diff,
                ratio
            ));
        }
        out.push_str(&format!("\n{}\n", self.goal_sentence()));
        out
    }

    fn goal_sentence(&self) -> String {
        match self.against_floor(System::Keel) {
            Some((diff, _)) if diff <= GOAL_MS => format!(
                "Goal met: Keel is {:.2} s from the floor (goal: within {:.1} s).",
                diff / 1000.0,
                GOAL_MS / 1000.0
            ),
            Some((diff, _)) => format!(
                "Goal missed: Keel is {:.2} s from the floor (goal: within {:.1} s).",
                diff / 1000.0,
                GOAL_MS / 1000.0
            ),
            None => "No comparison: the floor was not measured.".to_string(),
        }
    }

    /// The section for docs/benchmarks.md, with the markers `--record` replaces between.
    fn markdown_section(&self, command: &str, when: &str) -> String {
        let (begin, end) = section_markers("dom0");
        let mut out = format!("{begin}\n## Boot as Xen's dom0\n\n");
        out.push_str(&format!("Recorded {when} with `{command}`.\n\n"));
        out.push_str(&format!("- Machine: {}\n", self.machine));
        out.push_str(&format!(
            "- Xen {} (Debian's `xen-hypervisor-4.17-amd64`), the same QEMU and Xen flags for \
             all three: q35, 1024 MiB, `-cpu qemu64,+svm,+npt -smp 2 -device amd-iommu`, a \
             virtio-net NIC behind the IOMMU; Xen `dom0=pvh dom0_mem=512M,max:512M \
             dom0_max_vcpus=1 bootscrub=0 loglvl=all` on COM1\n",
            self.xen_version
        ));
        out.push_str(&format!(
            "- Ready: Keel's `keel: ready` (after its DHCP lease and the Xen self-tests); \
             Linux's `/init` printing `{LINUX_DOM0_READY}` (`{LINUX_CMDLINE}`, uncompressed \
             vmlinux); the floor's `{}`\n",
            floor::FLOOR_READY
        ));
        out.push_str(&format!(
            "- Runs: {} boots of each, alternating\n\n",
            self.runs
        ));
        out.push_str(
            "| dom0 | min | median | max | median − floor | median ÷ floor |\n\
             |---|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.rows {
            let (diff, ratio) = self.against_floor(row.system).unwrap_or((0.0, 1.0));
            out.push_str(&format!(
                "| {} | {:.2} s | {:.2} s | {:.2} s | {:+.2} s | {:.2} |\n",
                row.system.label(),
                row.summary.min / 1000.0,
                row.summary.median / 1000.0,
                row.summary.max / 1000.0,
                diff / 1000.0,
                ratio
            ));
        }
        out.push_str(&format!("\n{}\n", self.goal_sentence()));
        out.push_str(&end);
        out.push('\n');
        out
    }
}

fn machine_note() -> String {
    let mut note = format!(
        "TCG (software emulation), {} host cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if let Some(cpu) = cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()) {
        note.push_str(&format!(", {cpu}"));
    }
    if let Some(qemu) = qemu_version() {
        note.push_str(&format!("; {qemu}"));
    }
    note
}

pub fn run(runs: u32, record: bool) -> Result<(), XtaskError> {
    prereq::ensure(&[Tool::Qemu, Tool::Xen, Tool::Xz])?;
    let (keel, _) = build_image(Profile::Release)?;
    let step = progress::step(
        "preparing the floor and the Linux baseline (Debian 6.1 vmlinux, busybox initramfs)",
    );
    let images = Images {
        keel,
        floor: write_floor()?,
        vmlinux: linux::vmlinux()?,
        initramfs: linux::initramfs("dom0.cpio", LINUX_DOM0_INIT, &[])?,
    };
    step.done();
    shown(&images.vmlinux);

    let step = progress::step(format!("booting each dom0 {runs} times under Xen (TCG)"));
    let mut samples: Vec<(System, Vec<f64>)> = System::ALL.iter().map(|s| (*s, vec![])).collect();
    let mut xen_version = String::new();
    for run in 1..=runs {
        for (system, times) in samples.iter_mut() {
            let (ms, xen) = boot_once(&images, *system, run)?;
            progress::note(format!(
                "{} {run}/{runs}: ready after {ms:.0} ms",
                system.name()
            ));
            if !xen.is_empty() {
                xen_version = xen;
            }
            times.push(ms);
        }
    }
    step.done();

    let rows = samples
        .iter()
        .map(|(system, times)| {
            summarize(times)
                .map(|summary| Row {
                    system: *system,
                    summary,
                })
                .ok_or_else(|| XtaskError::BenchFailed("no boots were measured".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let report = Dom0Bench {
        runs,
        rows,
        machine: machine_note(),
        xen_version: if xen_version.is_empty() {
            "4.17".into()
        } else {
            xen_version
        },
    };
    println!("{}", report.table());
    if record {
        let command = format!("cargo xtask bench dom0 --runs {runs} --record");
        let doc = record_section("dom0", &report.markdown_section(&command, &date::now_utc()))?;
        println!("recorded in {}", doc.display());
    }
    Ok(())
}

/// Notes which kernel the baseline boots.
fn shown(vmlinux: &Path) {
    progress::note(format!("Linux baseline: {}", vmlinux.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(median: f64) -> Summary {
        Summary {
            min: median - 10.0,
            median,
            max: median + 10.0,
        }
    }

    fn bench(floor: f64, keel: f64, linux: f64) -> Dom0Bench {
        Dom0Bench {
            runs: 3,
            rows: vec![
                Row {
                    system: System::Floor,
                    summary: summary(floor),
                },
                Row {
                    system: System::Keel,
                    summary: summary(keel),
                },
                Row {
                    system: System::Linux,
                    summary: summary(linux),
                },
            ],
            machine: "TCG".into(),
            xen_version: "4.17.7".into(),
        }
    }

    #[test]
    fn keel_and_linux_are_compared_with_the_floor() {
        let b = bench(1300.0, 1500.0, 8450.0);
        assert_eq!(
            b.against_floor(System::Keel),
            Some((200.0, 1500.0 / 1300.0))
        );
        assert_eq!(b.against_floor(System::Floor), Some((0.0, 1.0)));
        let section = b.markdown_section("cargo xtask bench dom0 --runs 3 --record", "today");
        let (begin, end) = section_markers("dom0");
        assert!(section.starts_with(&format!("{begin}\n## Boot as Xen's dom0\n")));
        assert!(section.ends_with(&format!("{end}\n")));
        assert!(section.contains("| Keel | 1.49 s | 1.50 s | 1.51 s | +0.20 s | 1.15 |"));
        assert!(section.contains(
            "| Linux 6.1 + busybox initramfs | 8.44 s | 8.45 s | 8.46 s | +7.15 s | 6.50 |"
        ));
        assert!(section.contains("Goal met: Keel is 0.20 s from the floor"));
        assert!(b.table().contains("Goal met"));
    }

    #[test]
    fn a_keel_more_than_300_ms_behind_misses_the_goal() {
        let b = bench(1300.0, 1700.0, 8450.0);
        assert!(b.goal_sentence().starts_with("Goal missed: Keel is 0.40 s"));
    }

    #[test]
    fn every_system_has_its_ready_marker() {
        assert!(System::Floor.ready().matches("keel-floor: ready"));
        assert!(System::Keel
            .ready()
            .matches("keel: ready (keel 0.1.0, boot 1.0 ms)"));
        assert!(System::Linux.ready().matches("linux-dom0: ready"));
        assert!(LINUX_DOM0_INIT.contains(LINUX_DOM0_READY));
    }
}
