//! `cargo xtask bench vm [--runs N] [--record]`: what a guest costs the toolstack.
//!
//! Boots Xen with Keel as its dom0 in QEMU the way the guest tests do (a virtio-blk SR, the
//! API, `keel.log=debug` so that guest console lines reach Keel's log), makes the guests
//! through the XenAPI as `cargo xtask vm demo` does, and measures:
//!
//! - `VM.start` → domain running: the call's own duration (Keel answers once the domain is
//!   built and unpaused), the toolstack's cost;
//! - `VM.start` → the guest's console marker (`guest d<N>: keel-guest: ready` in Keel's log),
//!   which adds Linux's boot;
//!
//! each with no other guest running and again beside [`BACKGROUND_GUESTS`] running ones; and
//! dom0's memory: Keel's heap use (`host.query_data_source keel_heap_used_kib`, when Keel
//! answers it) at 0, 1 and 8 running guests, beside Xen's own free memory (host_metrics).
//!
//! A benchmark, not a test: under nested TCG each guest takes tens of seconds to boot.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_tests::credentials::test_credentials;
use keel_tests::guest::GUEST_READY;
use keel_tests::image::Profile;
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::prereq::{self, Tool};
use keel_tests::{DiskBus, HarnessError, Machine, NicModel, Pattern, Vm};

use crate::bench_report::{cpu_model, qemu_version, record_section, section_markers};
use crate::commands::bench_soak::memory::{data_source_kib, HEAP_SOURCE};
use crate::commands::build::build_image;
use crate::commands::vm::Session;
use crate::error::XtaskError;
use crate::load::Param;
use crate::stats::{summarize, Summary};
use crate::{date, progress};

/// Guests running beside the measured one in the loaded figures.
pub const BACKGROUND_GUESTS: usize = 8;
/// Each guest's memory: Debian's xz kernel needs about 106 MiB to unpack and boot.
pub const GUEST_MIB: u64 = 112;
/// QEMU's memory: half for dom0 (Xen's default split in the harness), the rest holds the
/// 1 + 8 guests of [`GUEST_MIB`] with room for Xen's own per-domain structures.
pub const HOST_MEMORY_MIB: u32 = 2560;
const SR_DISK_BYTES: u64 = 256 << 20;
const XEN_BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// One guest's boot under nested TCG, beside up to eight others.
const GUEST_BOOT_DEADLINE: Duration = Duration::from_secs(900);
/// How often a start that has not reached its marker checks whether its domain was replaced.
const DOMAIN_CHECK: Duration = Duration::from_secs(5);

fn failed(why: impl Into<String>) -> XtaskError {
    XtaskError::BenchFailed(why.into())
}

/// One measured start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StartSample {
    /// `VM.start` call to its answer (domain built and running), ms.
    pub call_ms: f64,
    /// `VM.start` call to the guest's ready line in Keel's log, ms.
    pub marker_ms: f64,
    /// Times the guest crashed before its marker and `actions_after_crash` restarted it
    /// (the marker time then includes the crash and the new domain's boot).
    pub restarts: u32,
}

/// Keel's heap (when reported) and Xen's free memory with some guests running, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPoint {
    pub guests: usize,
    pub heap_kib: Option<u64>,
    pub xen_free_kib: u64,
}

/// Everything one `bench vm` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct VmBench {
    pub alone: Vec<StartSample>,
    pub loaded: Vec<StartSample>,
    /// At 0, 1 and [`BACKGROUND_GUESTS`] running guests.
    pub memory: Vec<MemoryPoint>,
    /// Crash-restarts before the marker over every start, the idle guests' included.
    pub restarts: u32,
    /// Why the run stopped before measuring everything (the figures are what came before).
    pub stopped: Option<String>,
    pub guest_mib: u64,
    pub host_memory_mib: u32,
    pub background: usize,
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub qemu_version: Option<String>,
}

fn summary_of(samples: &[StartSample], pick: fn(&StartSample) -> f64) -> Option<Summary> {
    summarize(&samples.iter().map(pick).collect::<Vec<_>>())
}

fn cell(summary: Option<Summary>) -> String {
    match summary {
        Some(s) => format!(
            "{:.2} | {:.2} | {:.2}",
            s.min / 1000.0,
            s.median / 1000.0,
            s.max / 1000.0
        ),
        None => "– | – | –".into(),
    }
}

/// Per-guest growth between two memory points, KiB (negative when it shrank).
pub fn per_guest_kib(from: u64, to: u64, guests: usize) -> Option<f64> {
    (guests > 0).then(|| (to as f64 - from as f64) / guests as f64)
}

impl VmBench {
    /// The figures as a markdown table (also what the terminal shows).
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| Figure | Others running | Runs | min (s) | median (s) | max (s) |\n\
             |---|---|---|---|---|---|\n",
        );
        for (label, pick) in [
            (
                "`VM.start` → domain running (the call)",
                (|s: &StartSample| s.call_ms) as fn(&StartSample) -> f64,
            ),
            ("`VM.start` → guest console marker", |s: &StartSample| {
                s.marker_ms
            }),
        ] {
            for (others, samples) in [(0, &self.alone), (self.background, &self.loaded)] {
                out.push_str(&format!(
                    "| {label} | {others} | {} | {} |\n",
                    samples.len(),
                    cell(summary_of(samples, pick))
                ));
            }
        }
        out.push('\n');
        out.push_str(
            "| Running guests | Keel's heap (KiB) | Xen's free memory (KiB) |\n|---|---|---|\n",
        );
        for point in &self.memory {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                point.guests,
                point
                    .heap_kib
                    .map_or_else(|| "not reported".into(), |k| k.to_string()),
                point.xen_free_kib
            ));
        }
        out
    }

    /// Dom0 memory per running guest, as a sentence.
    pub fn memory_words(&self) -> String {
        let (Some(first), Some(last)) = (self.memory.first(), self.memory.last()) else {
            return "no memory figures".into();
        };
        let guests = last.guests.saturating_sub(first.guests);
        let xen = per_guest_kib(last.xen_free_kib, first.xen_free_kib, guests)
            .map(|k| {
                format!(
                    "Xen's free memory drops by {:.0} KiB per running guest ({} MiB of guest \
                     memory, so {:.0} KiB of Xen's own per-domain structures)",
                    k,
                    self.guest_mib,
                    k - (self.guest_mib * 1024) as f64
                )
            })
            .unwrap_or_default();
        match (first.heap_kib, last.heap_kib) {
            (Some(from), Some(to)) => format!(
                "Keel's heap grows by {:.0} KiB per running guest (0 → {guests} guests); {xen}",
                per_guest_kib(from, to, guests).unwrap_or(0.0)
            ),
            _ => format!(
                "Keel does not report its heap use yet (no `{HEAP_SOURCE}` data source for \
                 `host.query_data_source`), so dom0's memory per guest is not measured; {xen}"
            ),
        }
    }

    pub fn markdown_section(&self, command: &str, date: &str) -> String {
        let (begin, end) = section_markers("vm");
        let mut out = format!("{begin}\n## Guests (VM.start)\n\n");
        out.push_str(&format!("Recorded {date} with `{command}`.\n\n"));
        out.push_str(&format!(
            "- Host: QEMU TCG (nested: Xen 4.17 with Keel as PVH dom0, guests are PVH domains \
             of an emulated SVM machine), {} MiB, {} host cores{}{}\n",
            self.host_memory_mib,
            self.cores,
            self.cpu_model
                .as_deref()
                .map_or_else(String::new, |m| format!(", {m}")),
            self.qemu_version
                .as_deref()
                .map_or_else(String::new, |v| format!(", QEMU {v}")),
        ));
        out.push_str(&format!(
            "- Guests: Debian's Linux 6.1 kernel as shipped and the busybox guest initramfs \
             (`keel_tests::guest`), {} MiB each, uploaded as VDIs and cloned from the PVH \
             template through the XenAPI; the marker is `keel-guest: ready` on the guest's \
             console, read in Keel's log (`keel.log=debug`)\n",
            self.guest_mib
        ));
        out.push_str(&format!(
            "- \"Others running\": {} idle guests booted to their marker before the measured \
             start; the measured guest is destroyed (`VM.hard_shutdown`) after each run\n\n",
            self.background
        ));
        out.push_str(&self.table());
        out.push_str(&format!("\n{}.\n", self.memory_words()));
        if let Some(why) = &self.stopped {
            out.push_str(&format!(
                "\nThe run stopped before it measured everything ({why}); the figures are \
                 those measured before.\n"
            ));
        }
        if self.restarts > 0 {
            out.push_str(&format!(
                "\n{} guest boot(s) crashed before the marker (a triple fault in early boot) \
                 and were restarted by `actions_after_crash`; a measured start that was \
                 restarted counts the crash and the new domain's boot.\n",
                self.restarts
            ));
        }
        out.push_str(&end);
        out.push('\n');
        out
    }
}

/// The host under measurement.
struct Host {
    machine: Vm,
    session: Session,
    host: String,
    metrics: String,
}

impl Host {
    fn boot(image: PathBuf) -> Result<Host, XtaskError> {
        let dir = keel_tests::paths::keel_dir().join("bench-disks").join("vm");
        let _ = std::fs::remove_dir_all(&dir);
        let io = |what: &str| {
            let what = what.to_string();
            move |error| XtaskError::Io { what, error }
        };
        std::fs::create_dir_all(&dir).map_err(io("creating the SR disk's directory"))?;
        let disk = dir.join("sr.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(SR_DISK_BYTES))
            .map_err(io("creating the SR disk"))?;
        let machine = Machine::new("bench-vm")
            .image(image)
            .under_xen()
            .memory_mib(HOST_MEMORY_MIB)
            .disk_file(&disk, DiskBus::VirtioBlk)
            .nic_with_api(NicModel::VirtioNet)
            .append(test_credentials().cmdline_word())
            .append("keel.log=debug")
            .boot()?;
        machine.wait_for(Pattern::starts_with(READY_PREFIX), XEN_BOOT_DEADLINE)?;
        let port = machine.api_port().ok_or_else(|| failed("no API port"))?;
        let session = Session::login(port, &test_credentials().password, "xtask-bench-vm")?;
        let host = session.reference("host.get_all", &[])?;
        let metrics = session.reference("host.get_metrics", &[&host])?;
        Ok(Host {
            machine,
            session,
            host,
            metrics,
        })
    }

    fn memory(&self, guests: usize) -> Result<MemoryPoint, XtaskError> {
        let heap_kib = self
            .session
            .call(
                "host.query_data_source",
                &[Param::Str(&self.host), Param::Str(HEAP_SOURCE)],
            )
            .ok()
            .and_then(|answer| data_source_kib(&answer));
        let free = self
            .session
            .value("host_metrics.get_memory_free", &[&self.metrics])?;
        let free: u64 = free
            .parse()
            .map_err(|_| failed(format!("host_metrics.memory_free {free:?}")))?;
        Ok(MemoryPoint {
            guests,
            heap_kib,
            xen_free_kib: free / 1024,
        })
    }

    /// Starts `vm` and waits for its guest's marker.
    fn start(&self, vm: &str) -> Result<StartSample, XtaskError> {
        let called = self.machine.uptime();
        let started = Instant::now();
        self.session.start(vm)?;
        let call_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut domid = self.session.value("VM.get_domid", &[vm])?;
        let mut restarts = 0;
        let deadline = Instant::now() + GUEST_BOOT_DEADLINE;
        loop {
            let marker = Pattern::contains(format!("guest d{domid}: {GUEST_READY}"));
            match self.machine.wait_for_line(marker, DOMAIN_CHECK) {
                Ok(line) => {
                    let marker_ms = line.since_start.saturating_sub(called).as_secs_f64() * 1000.0;
                    return Ok(StartSample {
                        call_ms,
                        marker_ms,
                        restarts,
                    });
                }
                Err(HarnessError::Timeout { .. }) if Instant::now() < deadline => {}
                Err(error) => return Err(error.into()),
            }
            // A guest that crashed early is restarted as a new domain (actions_after_crash).
            let now = self.session.value("VM.get_domid", &[vm])?;
            if now == "-1" {
                let power = self.session.value("VM.get_power_state", &[vm])?;
                return Err(failed(format!(
                    "the guest of {vm} stopped before its marker ({power})"
                )));
            }
            if now != domid {
                progress::note(format!(
                    "domain {domid} crashed before its marker; restarted as domain {now}"
                ));
                restarts += 1;
                domid = now;
            }
        }
    }

    fn hard_shutdown(&self, vm: &str) -> Result<(), XtaskError> {
        self.session
            .call("VM.hard_shutdown", &[Param::Str(vm)])
            .map(|_| ())
            .map_err(Into::into)
    }
}

fn note_sample(what: &str, run: u32, runs: u32, s: &StartSample) {
    progress::note(format!(
        "{what} {run}/{runs}: VM.start {:.2} s, console marker {:.2} s{}",
        s.call_ms / 1000.0,
        s.marker_ms / 1000.0,
        if s.restarts > 0 {
            " (after a crash-restart)"
        } else {
            ""
        }
    ));
}

pub fn run(runs: u32, record: bool) -> Result<(), XtaskError> {
    prereq::ensure(&[Tool::Qemu, Tool::Xen])?;
    let (image, _) = build_image(Profile::Release)?;
    let step = progress::step(format!(
        "booting Xen + Keel in QEMU ({HOST_MEMORY_MIB} MiB, TCG)"
    ));
    let host = Host::boot(image)?;
    step.done();

    let step = progress::step(format!(
        "uploading the guest and making {} VMs of {GUEST_MIB} MiB",
        BACKGROUND_GUESTS + 1
    ));
    let (kernel, ramdisk) = host.session.upload_guest_assets()?;
    let assets = (kernel.as_str(), ramdisk.as_str());
    let probe = host
        .session
        .create_guest("bench-probe", assets, "idle", GUEST_MIB)?;
    let mut background = Vec::new();
    for i in 1..=BACKGROUND_GUESTS {
        background.push(host.session.create_guest(
            &format!("bench-idle-{i}"),
            assets,
            "idle",
            GUEST_MIB,
        )?);
    }
    step.done();

    let mut report = VmBench {
        alone: Vec::new(),
        loaded: Vec::new(),
        memory: Vec::new(),
        restarts: 0,
        stopped: None,
        guest_mib: GUEST_MIB,
        host_memory_mib: HOST_MEMORY_MIB,
        background: BACKGROUND_GUESTS,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        qemu_version: qemu_version(),
    };
    let measured = measure(&host, runs, &probe, &background, &mut report);
    if let Err(error) = &measured {
        // What QEMU and Xen say the machine was doing (docs/xen.md, "Emulator faults"):
        // a Xen that answers its debug keys while Keel does not points at Keel.
        let stall = host.machine.xen_stall_report();
        for line in stall.lines() {
            eprintln!("{line}");
        }
        // Minutes of measurements are worth keeping when a later step fails.
        if report.alone.is_empty() {
            return measured;
        }
        let xen = if stall.xen_answered {
            "Xen answered its debug keys"
        } else {
            "Xen did not answer its debug keys"
        };
        report.stopped = Some(format!("{error} ({xen})"));
    }
    println!("{}", report.table());
    println!("{}", report.memory_words());
    if record {
        let command = format!("cargo xtask bench vm --runs {runs} --record");
        let doc = record_section("vm", &report.markdown_section(&command, &date::now_utc()))?;
        println!("recorded in {}", doc.display());
    }
    measured
}

/// The starts alone, the idle guests, the starts beside them; fills `report` as it goes.
fn measure(
    host: &Host,
    runs: u32,
    probe: &str,
    background: &[String],
    report: &mut VmBench,
) -> Result<(), XtaskError> {
    report.memory.push(host.memory(0)?);
    let step = progress::step(format!("{runs} starts with no other guest"));
    for run in 1..=runs {
        let sample = host.start(probe)?;
        note_sample("alone", run, runs, &sample);
        report.restarts += sample.restarts;
        report.alone.push(sample);
        if run == 1 {
            report.memory.push(host.memory(1)?);
        }
        host.hard_shutdown(probe)?;
    }
    step.done();

    let step = progress::step(format!("booting {} idle guests", background.len()));
    for (i, vm) in background.iter().enumerate() {
        let sample = host.start(vm)?;
        report.restarts += sample.restarts;
        progress::note(format!(
            "idle guest {}: VM.start {:.2} s, marker {:.2} s",
            i + 1,
            sample.call_ms / 1000.0,
            sample.marker_ms / 1000.0
        ));
    }
    report.memory.push(host.memory(background.len())?);
    step.done();

    let step = progress::step(format!(
        "{runs} starts beside {} running guests",
        background.len()
    ));
    for run in 1..=runs {
        let sample = host.start(probe)?;
        note_sample("loaded", run, runs, &sample);
        report.restarts += sample.restarts;
        report.loaded.push(sample);
        host.hard_shutdown(probe)?;
    }
    step.done();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Command};

    fn sample(call_s: f64, marker_s: f64) -> StartSample {
        StartSample {
            call_ms: call_s * 1000.0,
            marker_ms: marker_s * 1000.0,
            restarts: 0,
        }
    }

    fn bench(heap: [Option<u64>; 3]) -> VmBench {
        VmBench {
            alone: vec![sample(6.0, 30.0), sample(8.0, 40.0), sample(7.0, 35.0)],
            loaded: vec![sample(9.0, 90.0)],
            memory: vec![
                MemoryPoint {
                    guests: 0,
                    heap_kib: heap[0],
                    xen_free_kib: 1_200_000,
                },
                MemoryPoint {
                    guests: 1,
                    heap_kib: heap[1],
                    xen_free_kib: 1_085_000,
                },
                MemoryPoint {
                    guests: 8,
                    heap_kib: heap[2],
                    xen_free_kib: 1_200_000 - 8 * 115_200,
                },
            ],
            restarts: 0,
            stopped: None,
            guest_mib: 112,
            host_memory_mib: 2560,
            background: 8,
            cores: 2,
            cpu_model: Some("Test CPU".into()),
            qemu_version: Some("7.2.0".into()),
        }
    }

    #[test]
    fn bench_vm_parses_runs_and_record() {
        assert_eq!(
            parse(["bench", "vm"]),
            Ok(Command::BenchVm {
                runs: 3,
                record: false
            })
        );
        assert_eq!(
            parse(["bench", "vm", "--runs", "1", "--record"]),
            Ok(Command::BenchVm {
                runs: 1,
                record: true
            })
        );
        assert!(parse(["bench", "vm", "--runs", "0"]).is_err());
        assert!(parse(["bench", "vm", "--guests", "3"]).is_err());
    }

    #[test]
    fn the_table_has_min_median_max_per_figure_and_load() {
        let table = bench([None; 3]).table();
        assert!(
            table.contains(
                "| `VM.start` → domain running (the call) | 0 | 3 | 6.00 | 7.00 | 8.00 |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| `VM.start` → guest console marker | 0 | 3 | 30.00 | 35.00 | 40.00 |"),
            "{table}"
        );
        assert!(
            table.contains("| `VM.start` → guest console marker | 8 | 1 | 90.00 | 90.00 | 90.00 |"),
            "{table}"
        );
        assert!(table.contains("| 8 | not reported | 278400 |"), "{table}");
    }

    #[test]
    fn memory_per_guest_comes_from_the_heap_when_keel_reports_it() {
        let words = bench([Some(10_000), Some(10_100), Some(10_800)]).memory_words();
        assert!(
            words.contains("grows by 100 KiB per running guest"),
            "{words}"
        );
        assert!(words.contains("drops by 115200 KiB"), "{words}");
        // 115200 KiB per guest, of which 112 MiB are the guest's own.
        assert!(words.contains("so 512 KiB of Xen's own"), "{words}");
        let words = bench([None; 3]).memory_words();
        assert!(words.contains("does not report its heap"), "{words}");
    }

    #[test]
    fn per_guest_growth_needs_guests_and_may_be_negative() {
        assert_eq!(per_guest_kib(100, 900, 8), Some(100.0));
        assert_eq!(per_guest_kib(900, 100, 8), Some(-100.0));
        assert_eq!(per_guest_kib(1, 2, 0), None);
    }

    #[test]
    fn the_section_names_the_command_the_machine_and_the_guests() {
        let section = bench([None; 3])
            .markdown_section("cargo xtask bench vm --runs 3 --record", "2026-12-03");
        for expected in [
            "<!-- cargo xtask bench vm: begin",
            "## Guests (VM.start)",
            "<!-- cargo xtask bench vm: end -->",
            "Recorded 2026-12-03 with `cargo xtask bench vm --runs 3 --record`.",
            "2560 MiB, 2 host cores, Test CPU, QEMU 7.2.0",
            "112 MiB each",
            "| Running guests | Keel's heap (KiB) | Xen's free memory (KiB) |",
        ] {
            assert!(
                section.contains(expected),
                "missing {expected:?} in {section}"
            );
        }
        assert!(!section.contains("restarted"), "{section}");
        let crashed = VmBench {
            restarts: 1,
            ..bench([None; 3])
        }
        .markdown_section("c", "d");
        assert!(crashed.contains("1 guest boot(s) crashed"), "{crashed}");
        let stopped = VmBench {
            stopped: Some("VM.start: no answer".into()),
            loaded: Vec::new(),
            ..bench([None; 3])
        };
        let section = stopped.markdown_section("c", "d");
        assert!(
            section.contains("stopped before it measured everything (VM.start: no answer)"),
            "{section}"
        );
        assert!(
            section.contains("| `VM.start` → guest console marker | 8 | 0 | – | – | – |"),
            "{section}"
        );
    }
}
