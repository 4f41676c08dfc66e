//! `cargo xtask bench guests [--runs N] [--record]`: Keel side by side with the reference
//! stack — Debian's Linux 6.1 as PVH dom0 of the same Xen with Xen's own toolstack
//! (`keel_tests::reference`) — in one invocation.
//!
//! Each run boots Keel and then the reference stack (alternating, so that a machine busy
//! with other work slows both alike), with the same QEMU flags and memory, and on each one
//! starts the same guest (Debian's kernel as shipped and the busybox guest initramfs of
//! `keel_tests::guest`, [`GUEST_MIB`] MiB, `keel_guest=idle`) once:
//!
//! - dom0 boot: QEMU start → `keel: ready` / `linux-dom0: ready`;
//! - `VM.start` vs `xl create`: the call's own duration (both answer once the domain is built
//!   and unpaused: running), and call → the guest's console marker (`keel-guest: ready`, in
//!   Keel's log / in `xenconsoled`'s log of the guest's console, polled every 0.1 s);
//! - `VM.clean_shutdown` (until the VM is `Halted`) vs `xl shutdown -w`;
//! - dom0 memory in use with 0 and 1 running guests (Linux: `free`'s "used"; Keel: its heap
//!   through `host.query_data_source keel_heap_used_kib`), and Xen's free memory;
//! - the host filled: [`LOADED_GUESTS`] more guests (the ELF `vmlinux` kernel, so that they
//!   are quicker to start) started and left idle at their console markers, dom0 memory at
//!   those 8 running guests (per-guest cost: (8 − 0) / 8), then the start call of one more
//!   guest, the same as the first (Debian's bzImage), beside them.
//!
//! Before those, each run boots each stack once more for the guest disk rows ([`disk`]): the
//! same guest with one disk runs `kbench` (sequential 1 MiB and random 4 KiB, read and write,
//! QD 1 and 32, O_DIRECT) on a thin VDI of Keel's virtio-blk SR / a whole virtio-blk disk of
//! Linux dom0, through each stack's blkback.
//!
//! Each row shows min/median/max per stack and the ratio of the medians (Keel / Linux), with
//! the goal of issue 13 beside it (lower is better, except the disk rows' throughput). A
//! benchmark, not a test.

pub(crate) mod disk;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_tests::credentials::test_credentials;
use keel_tests::guest::GUEST_READY;
use keel_tests::image::Profile;
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::prereq::{self, Tool};
use keel_tests::reference::{self, ReferenceHost};
use keel_tests::{DiskBus, Machine, NicModel, Pattern, Vm};

use crate::bench_report::{cpu_model, qemu_version, record_section, section_markers};
use crate::commands::bench_guest_net;
use crate::commands::bench_guests_net::{self, NET_ROWS};
use crate::commands::bench_soak::memory::{data_source_kib, data_source_value, HEAP_SOURCE};
use crate::commands::build::build_image;
use crate::commands::vm::Session;
use crate::error::XtaskError;
use crate::load::Param;
use crate::stats::{summarize, Summary};
use crate::{date, progress};

/// The guest's memory on both stacks (as `bench vm`).
pub const GUEST_MIB: u64 = 112;
/// Guests running beside the start measured on a filled host.
pub const LOADED_GUESTS: usize = 8;
/// QEMU's memory on both stacks: half to dom0 (Xen's split in the harness), the rest holds
/// the [`LOADED_GUESTS`] + 1 guests of [`GUEST_MIB`] with Xen's own per-domain memory (as
/// `bench vm`).
pub const HOST_MEMORY_MIB: u32 = 2560;
const SR_DISK_BYTES: u64 = 256 << 20;
const DOM0_BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// One guest's boot under nested TCG on a machine others use too.
const GUEST_BOOT_DEADLINE: Duration = Duration::from_secs(600);
const CALL_DEADLINE: Duration = Duration::from_secs(600);
/// How long Keel's heap figure may read unknown (its first 5 s average, a slow sample).
const HEAP_KNOWN_DEADLINE: Duration = Duration::from_secs(30);
/// The [`LOADED_GUESTS`] booting together under nested TCG.
const LOADED_BOOT_DEADLINE: Duration = Duration::from_secs(1200);
/// The name of the measured guest on both stacks.
const GUEST_NAME: &str = "bench-g1";

fn failed(why: impl Into<String>) -> XtaskError {
    XtaskError::BenchFailed(why.into())
}

/// The two stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    Keel,
    Linux,
}

impl Stack {
    fn label(self) -> &'static str {
        match self {
            Stack::Keel => "Keel",
            Stack::Linux => "Linux dom0 + xl",
        }
    }
}

/// What one boot of one stack measured (ms and KiB); a figure it did not reach is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFigures {
    pub dom0_boot_ms: Option<f64>,
    pub start_call_ms: Option<f64>,
    pub start_marker_ms: Option<f64>,
    pub shutdown_ms: Option<f64>,
    /// The start call again with the guest's kernel as the ELF `vmlinux` inside its bzImage:
    /// the same start without un-xz-ing the payload (a profile of the start row).
    pub start_elf_call_ms: Option<f64>,
    /// The start call again (the bzImage, as `start_call_ms`) with [`LOADED_GUESTS`] guests
    /// running.
    pub start_loaded_call_ms: Option<f64>,
    /// dom0's memory in use with 0, 1 and [`LOADED_GUESTS`] running guests.
    pub dom0_used_kib: [Option<u64>; 3],
    /// Xen's free memory with 0, 1 and [`LOADED_GUESTS`] running guests.
    pub xen_free_kib: [Option<u64>; 3],
    /// The guest disk rows (MB/s or IOPS, in `standard_workloads` order), from the stack's
    /// disk run ([`disk`]).
    pub disk: [Option<f64>; 8],
    /// The guest network rows (in [`bench_guests_net::NET_ROWS`] order), from the stack's
    /// network run.
    pub net: [Option<f64>; 4],
    /// The sending guest's vCPU during each network row (busy seconds, busy share), from
    /// the stack's network run.
    pub net_sender: [Option<(f64, f64)>; 4],
    /// Who used the CPUs around the start with [`LOADED_GUESTS`] running.
    pub loaded_cpu: Option<LoadedCpu>,
    /// Where Keel's start call went (its `guests: start N: …` log line), for the bzImage
    /// and the ELF kernel.
    pub start_split: [Option<String>; 2],
}

/// CPU use around the start with [`LOADED_GUESTS`] running, in CPUs (1.0: one whole CPU of
/// the machine's two): dom0's and the sum of the running guests', while they idle before
/// the call and during it. Keel: each domain's `cpu0` data source (Xen's accounting, the
/// last 5 s average; the call's is read as it returns); Linux: `xl list`'s times before and
/// after (the idle window: 5 s).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadedCpu {
    pub idle_dom0: f64,
    pub idle_guests: f64,
    pub call_dom0: f64,
    pub call_guests: f64,
}

/// The figures of one row: how to read them from a run and what the issue asks of them.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub key: &'static str,
    pub label: &'static str,
    /// `s` (from ms), `MiB` (from KiB) or `×` (as is).
    pub unit: &'static str,
    pub pick: fn(&RunFigures) -> Option<f64>,
    /// Issue 13's goal for the ratio Keel / Linux (lower is better), if it sets one.
    pub goal_ratio: Option<f64>,
    /// Issue 13's goal for Keel's own median (lower is better), if it sets one.
    pub goal_keel_max: Option<f64>,
    /// Issue 13's goal for the ratio Keel / Linux where higher is better (throughput), if it
    /// sets one.
    pub goal_ratio_min: Option<f64>,
    pub goal: &'static str,
}

/// What each of `guests` running guests added to a figure measured with 0 (index 0) and with
/// them (index `at`).
fn per_guest(figures: [Option<u64>; 3], at: usize, guests: usize) -> Option<f64> {
    Some((figures[at]? as f64 - figures[0]? as f64) / guests as f64)
}

/// A guest disk or network row: throughput, higher is better, issue 13's goal ≥ 1.2×.
const fn disk_row(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    pick: fn(&RunFigures) -> Option<f64>,
) -> Row {
    Row {
        key,
        label,
        unit,
        pick,
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: Some(1.2),
        goal: "≥ 1.2× Linux dom0's (ratio ≥ 1.20, higher is better)",
    }
}

/// Every row, in the order of the table.
pub const ROWS: &[Row] = &[
    Row {
        key: "dom0-boot",
        label: "dom0 boot: QEMU start → dom0 ready",
        unit: "s",
        pick: |r| r.dom0_boot_ms,
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "– (none set)",
    },
    Row {
        key: "start-running",
        label: "`VM.start` / `xl create` → domain running (the call)",
        unit: "s",
        pick: |r| r.start_call_ms,
        goal_ratio: Some(0.1),
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "≥ 10× faster (ratio ≤ 0.10)",
    },
    Row {
        key: "start-running-elf",
        label: "the same call with the kernel as an ELF `vmlinux` (nothing to un-xz)",
        unit: "s",
        pick: |r| r.start_elf_call_ms,
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "– (a profile of the row above)",
    },
    Row {
        key: "start-marker",
        label: "`VM.start` / `xl create` → guest console marker",
        unit: "s",
        pick: |r| r.start_marker_ms,
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "– (the same guest's own boot dominates)",
    },
    Row {
        key: "shutdown",
        label: "`VM.clean_shutdown` / `xl shutdown -w` → halted",
        unit: "s",
        pick: |r| r.shutdown_ms,
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "– (none set)",
    },
    Row {
        key: "dom0-mem-0",
        label: "dom0 memory in use, 0 guests",
        unit: "MiB",
        pick: |r| r.dom0_used_kib[0].map(|k| k as f64),
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "–",
    },
    Row {
        key: "dom0-mem-1",
        label: "dom0 memory in use, 1 running guest",
        unit: "MiB",
        pick: |r| r.dom0_used_kib[1].map(|k| k as f64),
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "–",
    },
    Row {
        key: "dom0-mem-per-guest",
        label: "dom0 memory per running guest (1 − 0)",
        unit: "MiB",
        pick: |r| per_guest(r.dom0_used_kib, 1, 1),
        goal_ratio: Some(0.1),
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "≤ 1/10 of Linux dom0's (ratio ≤ 0.10)",
    },
    Row {
        key: "xen-free-per-guest",
        label: "Xen's free memory taken per running guest",
        unit: "MiB",
        pick: |r| Some(-per_guest(r.xen_free_kib, 1, 1)?),
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "– (the guest's memory and Xen's own, not dom0's)",
    },
    Row {
        key: "start-running-loaded",
        label: "`VM.start` / `xl create` → domain running, with 8 guests running",
        unit: "s",
        pick: |r| r.start_loaded_call_ms,
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "– (see the next row)",
    },
    Row {
        key: "start-slowdown-loaded",
        label: "that start ÷ the start with no other guest (same stack, same run)",
        unit: "×",
        pick: |r| Some(r.start_loaded_call_ms? / r.start_call_ms?),
        goal_ratio: None,
        goal_keel_max: Some(1.2),
        goal_ratio_min: None,
        goal: "Keel ≤ 1.2×",
    },
    Row {
        key: "dom0-mem-loaded",
        label: "dom0 memory in use, 8 running guests",
        unit: "MiB",
        pick: |r| r.dom0_used_kib[2].map(|k| k as f64),
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "–",
    },
    Row {
        key: "dom0-mem-per-guest-loaded",
        label: "dom0 memory per running guest ((8 − 0) / 8)",
        unit: "MiB",
        pick: |r| per_guest(r.dom0_used_kib, 2, LOADED_GUESTS),
        goal_ratio: Some(0.1),
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "≤ 1/10 of Linux dom0's (ratio ≤ 0.10)",
    },
    Row {
        key: "dom0-mem-per-further-guest",
        label: "dom0 memory per further running guest ((8 − 1) / 7)",
        unit: "MiB",
        pick: |r| {
            let grown = r.dom0_used_kib[2]? as f64 - r.dom0_used_kib[1]? as f64;
            Some(grown / (LOADED_GUESTS - 1) as f64)
        },
        goal_ratio: None,
        goal_keel_max: None,
        goal_ratio_min: None,
        goal: "– (the first guest's fixed cost left out)",
    },
    disk_row(
        "disk-seq-write-qd1",
        "guest disk: seq-write 1 MiB, QD 1",
        "MB/s",
        |r| r.disk[0],
    ),
    disk_row(
        "disk-seq-write-qd32",
        "guest disk: seq-write 1 MiB, QD 32",
        "MB/s",
        |r| r.disk[1],
    ),
    disk_row(
        "disk-seq-read-qd1",
        "guest disk: seq-read 1 MiB, QD 1",
        "MB/s",
        |r| r.disk[2],
    ),
    disk_row(
        "disk-seq-read-qd32",
        "guest disk: seq-read 1 MiB, QD 32",
        "MB/s",
        |r| r.disk[3],
    ),
    disk_row(
        "disk-rand-write-qd1",
        "guest disk: rand-write 4 KiB, QD 1",
        "IOPS",
        |r| r.disk[4],
    ),
    disk_row(
        "disk-rand-write-qd32",
        "guest disk: rand-write 4 KiB, QD 32",
        "IOPS",
        |r| r.disk[5],
    ),
    disk_row(
        "disk-rand-read-qd1",
        "guest disk: rand-read 4 KiB, QD 1",
        "IOPS",
        |r| r.disk[6],
    ),
    disk_row(
        "disk-rand-read-qd32",
        "guest disk: rand-read 4 KiB, QD 32",
        "IOPS",
        |r| r.disk[7],
    ),
    disk_row(NET_ROWS[0].key, NET_ROWS[0].label, NET_ROWS[0].unit, |r| {
        r.net[0]
    }),
    disk_row(NET_ROWS[1].key, NET_ROWS[1].label, NET_ROWS[1].unit, |r| {
        r.net[1]
    }),
    disk_row(NET_ROWS[2].key, NET_ROWS[2].label, NET_ROWS[2].unit, |r| {
        r.net[2]
    }),
    disk_row(NET_ROWS[3].key, NET_ROWS[3].label, NET_ROWS[3].unit, |r| {
        r.net[3]
    }),
];

/// The disk rows' position in [`ROWS`] and in `standard_workloads`.
fn disk_index(row: &Row) -> Option<usize> {
    let first = ROWS.iter().position(|r| r.key.starts_with("disk-"))?;
    let at = ROWS.iter().position(|r| r.key == row.key)?;
    at.checked_sub(first)
        .filter(|_| row.key.starts_with("disk-"))
}

/// Why a row misses its goal, as measured; rows not listed say "not profiled yet".
pub const MEASURED_CAUSES: &[(&str, &str)] = &[];

/// Everything one `bench guests` measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestsBench {
    pub keel: Vec<RunFigures>,
    pub linux: Vec<RunFigures>,
    /// What went wrong in a run (the figures it reached are kept).
    pub problems: Vec<String>,
    /// What was seen besides the figures (Linux dom0's largest processes with a guest).
    pub notes: Vec<String>,
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub qemu_version: Option<String>,
    /// The last disk run's profile of each stack.
    pub keel_disk: Option<disk::DiskProfile>,
    pub linux_disk: Option<disk::DiskProfile>,
    /// The last network run's profile of each stack, each line naming its stack.
    pub net_profile: Vec<String>,
}

fn scaled(row: &Row, value: f64) -> f64 {
    match row.unit {
        "s" => value / 1000.0,
        "MiB" => value / 1024.0,
        _ => value,
    }
}

fn summary(row: &Row, runs: &[RunFigures]) -> Option<Summary> {
    let values: Vec<f64> = runs
        .iter()
        .filter_map(|r| (row.pick)(r))
        .map(|v| scaled(row, v))
        .collect();
    summarize(&values)
}

fn cell(summary: Option<Summary>) -> String {
    match summary {
        Some(s) => format!("{:.2} / {:.2} / {:.2}", s.min, s.median, s.max),
        None => "–".into(),
    }
}

/// Keel's median over Linux's (lower is better except on the disk rows); `None` without both
/// or when Linux's is zero.
pub fn ratio(keel: Option<Summary>, linux: Option<Summary>) -> Option<f64> {
    let (keel, linux) = (keel?, linux?);
    (linux.median != 0.0).then(|| keel.median / linux.median)
}

/// Whether a row meets its goal on the ratio Keel / Linux: `None` when it sets none or was
/// not measured on both.
pub fn meets(row: &Row, ratio: Option<f64>) -> Option<bool> {
    let ratio = ratio?;
    match (row.goal_ratio, row.goal_ratio_min) {
        (Some(max), _) => Some(ratio <= max),
        (None, Some(min)) => Some(ratio >= min),
        (None, None) => None,
    }
}

/// Whether a row meets its goal, on the ratio or on Keel's own median: `None` when it sets
/// none or what it is about was not measured.
pub fn met(row: &Row, keel: Option<Summary>, linux: Option<Summary>) -> Option<bool> {
    match row.goal_keel_max {
        Some(max) => Some(keel?.median <= max),
        None => meets(row, ratio(keel, linux)),
    }
}

/// Whether a row sets a goal at all.
fn has_goal(row: &Row) -> bool {
    row.goal_ratio.is_some() || row.goal_keel_max.is_some() || row.goal_ratio_min.is_some()
}

impl GuestsBench {
    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| Figure | Unit | Keel min / median / max | Linux dom0 + xl min / median / max | Keel / Linux | Goal | Met |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for row in ROWS {
            let (keel, linux) = (summary(row, &self.keel), summary(row, &self.linux));
            let ratio = ratio(keel, linux);
            let met = match met(row, keel, linux) {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {met} |\n",
                row.label,
                row.unit,
                cell(keel),
                cell(linux),
                ratio.map_or_else(|| "–".into(), |r| format!("{r:.2}")),
                row.goal
            ));
        }
        out
    }

    /// One line per row that misses its goal or could not be compared, with its cause.
    pub fn misses(&self) -> Vec<String> {
        let mut out = Vec::new();
        for row in ROWS {
            let (keel, linux) = (summary(row, &self.keel), summary(row, &self.linux));
            let cause = self.measured_cause(row).unwrap_or_else(|| {
                MEASURED_CAUSES
                    .iter()
                    .find(|(key, _)| *key == row.key)
                    .map_or("not profiled yet", |(_, cause)| cause)
                    .to_string()
            });
            match (has_goal(row), met(row, keel, linux)) {
                (true, Some(false)) => {
                    out.push(format!("- {} misses its goal: {cause}", row.label));
                }
                (true, None) => out.push(format!(
                    "- {} is not compared: {} not measured",
                    row.label,
                    match (keel, linux) {
                        (None, _) if row.goal_keel_max.is_some() => "Keel's figure",
                        (None, None) => "neither stack",
                        (None, _) => "Keel's figure",
                        _ => "Linux's figure",
                    }
                )),
                _ => {}
            }
        }
        out
    }

    /// A cause this run measured itself: for the start, how much of each stack's call the
    /// bzImage's decompression takes (the same call with the ELF kernel).
    fn measured_cause(&self, row: &Row) -> Option<String> {
        if let Some(index) = disk_index(row) {
            let median = |runs: &[RunFigures]| summary(row, runs).map(|s| s.median);
            return Some(disk::miss_cause(
                index,
                self.keel_disk.as_ref(),
                self.linux_disk.as_ref(),
                median(&self.keel)?,
                median(&self.linux)?,
            ));
        }
        if let Some(index) = NET_ROWS.iter().position(|n| n.key == row.key) {
            let sender = |runs: &[RunFigures]| runs.iter().rev().find_map(|r| r.net_sender[index]);
            return match (sender(&self.keel), sender(&self.linux)) {
                (Some((keel_s, keel)), Some((linux_s, linux))) => Some(format!(
                    "the sending guest's own vCPU was {:.0} % busy during the row on Keel and \
                     {:.0} % on Linux (its `/proc/stat`: busy {keel_s:.1} s against \
                     {linux_s:.1} s), so the row is bound by the sending guest's CPU under TCG \
                     and differs by what each byte costs it on each stack (the guest network \
                     profile below has dom0's share and each VIF's drops)",
                    100.0 * keel,
                    100.0 * linux
                )),
                _ if !self.net_profile.is_empty() => Some(
                    "not profiled beyond the guest network profile below (what the sender \
                     sent, each VIF's drops)"
                        .to_string(),
                ),
                _ => None,
            };
        }
        if row.key == "start-slowdown-loaded" {
            return self.loaded_cause();
        }
        if row.key != "start-running" {
            return None;
        }
        let elf = ROWS.iter().find(|r| r.key == "start-running-elf")?;
        let median = |row: &Row, runs: &[RunFigures]| summary(row, runs).map(|s| s.median);
        let (keel, keel_elf) = (median(row, &self.keel)?, median(elf, &self.keel)?);
        let (linux, linux_elf) = (median(row, &self.linux)?, median(elf, &self.linux)?);
        let share = |all: f64, elf: f64| 100.0 * (all - elf) / all;
        Some(format!(
            "with the guest's kernel as an ELF `vmlinux` instead of Debian's xz bzImage, Keel's \
             `VM.start` takes {keel_elf:.2} s instead of {keel:.2} s (un-xz-ing the payload: \
             {:.0} % of the call) and `xl create` {linux_elf:.2} s instead of {linux:.2} s \
             ({:.0} %); without it the ratio is {:.2}. Both stacks decompress the same 8 MB \
             into 66 MB under TCG{}",
            share(keel, keel_elf),
            share(linux, linux_elf),
            if linux_elf > 0.0 {
                keel_elf / linux_elf
            } else {
                f64::NAN
            },
            match self
                .keel
                .iter()
                .rev()
                .find(|r| r.start_split.iter().any(Option::is_some))
            {
                Some(run) => format!(
                    ". Where Keel's call went (its log, last run): with the bzImage {}; with \
                     the ELF {}",
                    run.start_split[0].as_deref().unwrap_or("–"),
                    run.start_split[1].as_deref().unwrap_or("–")
                ),
                None => "; what remains of Keel's call is not profiled".to_string(),
            }
        ))
    }

    /// What the CPUs did around the start with guests running (last run of each stack).
    fn loaded_cause(&self) -> Option<String> {
        let keel = self.keel.iter().rev().find_map(|r| r.loaded_cpu)?;
        let linux = self.linux.iter().rev().find_map(|r| r.loaded_cpu);
        let shares = |c: &LoadedCpu| {
            format!(
                "idle before the call the {LOADED_GUESTS} guests used {:.2} CPU and dom0 {:.2}; \
                 during the call the guests {:.2} and dom0 {:.2}",
                c.idle_guests, c.idle_dom0, c.call_guests, c.call_dom0
            )
        };
        Some(format!(
            "the machine has 2 CPUs and the call is dom0's work (most of it un-xz-ing the \
             kernel) on one vCPU; on Keel {}{} (Xen's accounting, the last run)",
            shares(&keel),
            linux.map_or_else(String::new, |l| format!(
                "; on Linux dom0 + xl {}",
                shares(&l)
            ))
        ))
    }

    pub fn markdown_section(&self, command: &str, date: &str) -> String {
        let (begin, end) = section_markers("guests");
        let mut out = format!("{begin}\n## Guests side by side with Linux dom0 + xl\n\n");
        out.push_str(&format!("Recorded {date} with `{command}`.\n\n"));
        out.push_str(&format!(
            "- Both stacks: QEMU TCG with the same flags (`keel_tests::Machine::under_xen`: \
             q35, `-cpu qemu64,+svm,+npt`, `amd-iommu`, `-smp 2`, {HOST_MEMORY_MIB} MiB, half \
             to dom0 with one vCPU, `sched=credit`, a virtio-net uplink behind the IOMMU), \
             Debian's Xen 4.17; {} host cores{}{}\n",
            self.cores,
            self.cpu_model
                .as_deref()
                .map_or_else(String::new, |m| format!(", {m}")),
            self.qemu_version
                .as_deref()
                .map_or_else(String::new, |v| format!(", {v}")),
        ));
        out.push_str(
            "- Keel: the release image as PVH dom0 with a 256 MiB virtio-blk SR; the guest is \
             uploaded as VDIs and cloned from the PVH template through the XenAPI\n\
             - Linux dom0 + xl (`keel_tests::reference`): Debian's Linux 6.1 (the guests' \
             kernel) as PVH dom0 with `xl`, `xenstored`, `xenconsoled` and blkback/netback/\
             bridge modules from Debian's packages; the guest's files sit in dom0's \
             initramfs, the ELF `vmlinux` of the profile row on a virtio-blk disk; `xl` runs \
             through a command server on the forwarded port\n",
        );
        out.push_str(&format!(
            "- Guest (both): Debian's Linux 6.1 `vmlinuz` as shipped and the busybox guest \
             initramfs (`keel_tests::guest`), {GUEST_MIB} MiB, 1 vCPU, no disk or network; \
             the marker is `keel-guest: ready` on its console. The 8-guest rows: \
             {LOADED_GUESTS} guests of the same size (the ELF `vmlinux`, quicker to start) \
             started one after the other and waited for until each is idle at its marker, \
             then dom0's memory, then one more start of the measured guest\n\
             - Guest disk rows: the same guest ({} MiB, the initramfs plus `kbench`) with \
             one disk as `xvda`, `kbench /dev/xvda` (O_DIRECT + Linux AIO through \
             `xen-blkfront`), each stack on its own freshly booted host of the same flags: on \
             Keel a {} MiB thin VDI of its 256 MiB virtio-blk SR, through Keel's blkback; on \
             Linux a 256 MiB virtio-blk disk with the SR disk's QEMU flags (behind the IOMMU, \
             `disable-legacy=on,iommu_platform=on`), whole as `phy:/dev/vdX`, through \
             Linux's blkback (the guest's initramfs comes in on a second disk). The workloads \
             of `bench guest-disk` (over the first 64 MiB, writes first) at 1/{} of its \
             requests, the same on both: 64 / 128 MiB per sequential row at QD 1 / 32 in \
             1 MiB requests, 2000 / 8000 random 4 KiB requests\n\
             - Runs: {} of Keel and {} of Linux, alternating, each on a freshly booted host; \
             ratios are of medians, lower is better for Keel on every row except the guest \
             disk rows (MB/s, IOPS: higher is better)\n\
             - Keel's dom0 memory is its heap (`host.query_data_source {HEAP_SOURCE}`) when \
             Keel reports it; Linux's is `free`'s \"used\" (MemTotal − MemFree − Buffers − \
             Cached − SReclaimable, so its initramfs in the page cache is not counted)\n\n",
            disk::DISK_GUEST_MIB,
            disk::VDI_MIB,
            disk::OPS_DIVISOR,
            self.keel.len(),
            self.linux.len()
        ));
        out.push_str(&self.table());
        let misses = self.misses();
        if !misses.is_empty() {
            out.push_str("\nMisses and figures not compared:\n\n");
            for miss in misses {
                out.push_str(&miss);
                out.push('\n');
            }
        }
        if self.keel_disk.is_some() || self.linux_disk.is_some() {
            out.push_str(
                "\nThe guest disk profile: the whole `kbench` run (all eight rows), last run of \
                 each stack; the guest's counters are read by the guest right before and after \
                 its workloads, dom0's vCPU time (Xen's accounting: Keel's usage ledger \
                 `vcpu_seconds`, sampled every 5 s; Linux's `xl list`) when the guest says it \
                 starts (10 s before its first request) and when it is done, so about 10–15 s \
                 of idle time are in dom0's and the guest's figures.\n\n",
            );
            out.push_str(&disk::profile_table(
                self.keel_disk.as_ref(),
                self.linux_disk.as_ref(),
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("{note}\n"));
            }
        }
        if !self.problems.is_empty() {
            out.push_str("\nWhat went wrong during the run (figures before it are kept):\n\n");
            for problem in &self.problems {
                out.push_str(&format!("- {problem}\n"));
            }
        }
        if !self.net_profile.is_empty() {
            out.push_str(
                "\nThe guest network profile (last run of each stack): what the sending guest \
                 itself sent, and each VIF's counters.\n\n",
            );
            for line in &self.net_profile {
                out.push_str(&format!("- {line}\n"));
            }
        }
        out.push_str(
            "\nReproduce every row with `cargo xtask bench guests --runs N` (`--record` rewrites \
             this section); `KEEL_BENCH_GUESTS_ONLY=disk`, `=net` or `=start` runs one group of \
             rows, `KEEL_BENCH_GUESTS_STACK=keel` or `=linux` one stack (figures without \
             ratios); the reference stack alone boots and starts one guest with \
             `cargo test -p keel-tests --test reference -- --ignored --nocapture`.\n",
        );
        out.push_str(
            "\nTCG distorts the absolute times (every instruction of Xen, both dom0s and the \
             guest is emulated, nested SVM included, on a machine shared with other work); the \
             ratios compare two stacks measured in the same invocation on the same emulator \
             and are what the goals are about.\n",
        );
        out.push_str(&end);
        out.push('\n');
        out
    }
}

/// Keel booted for one run, with the guest made.
struct KeelHost {
    machine: Vm,
    session: Session,
    host: String,
    metrics: String,
}

impl KeelHost {
    /// Boots Keel as `name` (its console log's name) on a fresh SR disk.
    fn boot(image: &PathBuf, name: &str, figures: &mut RunFigures) -> Result<KeelHost, XtaskError> {
        let dir = keel_tests::paths::keel_dir()
            .join("bench-disks")
            .join("guests");
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
        let machine = Machine::new(name)
            .image(image)
            .under_xen()
            .memory_mib(HOST_MEMORY_MIB)
            .disk_file(&disk, DiskBus::VirtioBlk)
            .nic_with_api(NicModel::VirtioNet)
            .append(test_credentials().cmdline_word())
            .append("keel.log=debug")
            .boot()?;
        let ready =
            machine.wait_for_line(Pattern::starts_with(READY_PREFIX), DOM0_BOOT_DEADLINE)?;
        figures.dom0_boot_ms = Some(ms(ready.since_start));
        let port = machine.api_port().ok_or_else(|| failed("no API port"))?;
        let session = Session::login(port, &test_credentials().password, "xtask-bench-guests")?;
        let host = session.reference("host.get_all", &[])?;
        let metrics = session.reference("host.get_metrics", &[&host])?;
        Ok(KeelHost {
            machine,
            session,
            host,
            metrics,
        })
    }

    /// (Keel's heap if reported, Xen's free memory), KiB.
    fn memory(&self) -> Result<(Option<u64>, u64), XtaskError> {
        let query = || {
            self.session
                .call(
                    "host.query_data_source",
                    &[Param::Str(&self.host), Param::Str(HEAP_SOURCE)],
                )
                .ok()
                .and_then(|answer| data_source_kib(&answer))
        };
        // Until the host RRD holds its first 5 s average the source is unknown, which
        // XML-RPC carries as 0.0 (it has no NaN), or the call fails; a heap in use is never
        // 0, so wait for a real figure (seen: the 0-guest reading of the first recorded run
        // as 0, of the 21:05 record as no figure).
        let asked = Instant::now();
        let mut heap = query();
        while heap.is_none_or(|kib| kib == 0) && asked.elapsed() < HEAP_KNOWN_DEADLINE {
            std::thread::sleep(Duration::from_secs(1));
            heap = query();
        }
        let heap = heap.filter(|kib| *kib > 0);
        let free = self
            .session
            .value("host_metrics.get_memory_free", &[&self.metrics])?;
        let free: u64 = free
            .parse()
            .map_err(|_| failed(format!("host_metrics.memory_free {free:?}")))?;
        Ok((heap, free / 1024))
    }

    fn measure(&self, figures: &mut RunFigures) -> Result<(), XtaskError> {
        let (kernel, ramdisk) = self.session.upload_guest_assets()?;
        let vm = self.session.create_guest(
            GUEST_NAME,
            (kernel.as_str(), ramdisk.as_str()),
            "idle",
            GUEST_MIB,
        )?;
        let (heap, free) = self.memory()?;
        (figures.dom0_used_kib[0], figures.xen_free_kib[0]) = (heap, Some(free));
        let called = self.machine.uptime();
        let started = Instant::now();
        self.session.start(&vm)?;
        figures.start_call_ms = Some(ms(started.elapsed()));
        figures.start_split[0] = self.last_start_split();
        let domid = self.session.value("VM.get_domid", &[&vm])?;
        let marker = Pattern::contains(format!("guest d{domid}: {GUEST_READY}"));
        let line = self.machine.wait_for_line(marker, GUEST_BOOT_DEADLINE)?;
        figures.start_marker_ms = Some(ms(line.since_start.saturating_sub(called)));
        let (heap, free) = self.memory()?;
        (figures.dom0_used_kib[1], figures.xen_free_kib[1]) = (heap, Some(free));
        let started = Instant::now();
        self.session.call("VM.clean_shutdown", &[Param::Str(&vm)])?;
        while self.session.value("VM.get_power_state", &[&vm])? != "Halted" {
            if started.elapsed() > CALL_DEADLINE {
                return Err(failed("VM.clean_shutdown: the guest never halted"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        figures.shutdown_ms = Some(ms(started.elapsed()));
        // The profile: the same start with the kernel as an ELF (nothing to decompress).
        let elf = self.session.upload(
            &self.session.first_sr()?,
            &keel_tests::linux::vmlinux()?,
            "guest kernel (ELF vmlinux)",
        )?;
        let vm = self.session.create_guest(
            "bench-elf",
            (elf.as_str(), ramdisk.as_str()),
            "idle",
            GUEST_MIB,
        )?;
        let started = Instant::now();
        self.session.start(&vm)?;
        figures.start_elf_call_ms = Some(ms(started.elapsed()));
        figures.start_split[1] = self.last_start_split();
        self.session.call("VM.hard_shutdown", &[Param::Str(&vm)])?;
        self.measure_loaded((kernel.as_str(), elf.as_str(), ramdisk.as_str()), figures)
    }

    /// The host filled: [`LOADED_GUESTS`] guests started (the ELF kernel) and idle at their
    /// markers, dom0's memory, then the first guest's start again beside them.
    fn measure_loaded(
        &self,
        (kernel, elf, ramdisk): (&str, &str, &str),
        figures: &mut RunFigures,
    ) -> Result<(), XtaskError> {
        let (mut domids, mut domains) = (Vec::new(), Vec::new());
        for i in 1..=LOADED_GUESTS {
            let vm = self.session.create_guest(
                &format!("bench-bg{i}"),
                (elf, ramdisk),
                "idle",
                GUEST_MIB,
            )?;
            self.session.start(&vm)?;
            domids.push(self.session.value("VM.get_domid", &[&vm])?);
            domains.push(vm);
        }
        for domid in &domids {
            bench_guests_net::wait_for_guest_line(
                &self.machine,
                domid,
                GUEST_READY,
                LOADED_BOOT_DEADLINE,
            )?;
        }
        // The heap is sampled every 5 s: let one sample fall after the last marker.
        std::thread::sleep(Duration::from_secs(6));
        let (heap, free) = self.memory()?;
        (figures.dom0_used_kib[2], figures.xen_free_kib[2]) = (heap, Some(free));
        let vm = self
            .session
            .create_guest("bench-loaded", (kernel, ramdisk), "idle", GUEST_MIB)?;
        let idle = self.cpu_use(&domains)?;
        let started = Instant::now();
        self.session.start(&vm)?;
        figures.start_loaded_call_ms = Some(ms(started.elapsed()));
        let call = self.cpu_use(&domains)?;
        if let (Some(idle), Some(call)) = (idle, call) {
            figures.loaded_cpu = Some(LoadedCpu {
                idle_dom0: idle.0,
                idle_guests: idle.1,
                call_dom0: call.0,
                call_guests: call.1,
            });
        }
        Ok(())
    }

    /// The text of Keel's last `guests: start N: …` log line (where a start's time went).
    fn last_start_split(&self) -> Option<String> {
        self.machine
            .serial_lines()
            .iter()
            .rev()
            .find_map(|line| start_split(line))
    }

    /// dom0's and the sum of `guests`' `cpu0` data sources (the last 5 s average), if each
    /// is known.
    fn cpu_use(&self, guests: &[String]) -> Result<Option<(f64, f64)>, XtaskError> {
        let dom0 = self
            .session
            .reference("host.get_control_domain", &[&self.host])?;
        let read = |vm: &str| {
            self.session
                .call(
                    "VM.query_data_source",
                    &[Param::Str(vm), Param::Str("cpu0")],
                )
                .ok()
                .and_then(|answer| data_source_value(&answer))
        };
        let Some(dom0) = read(&dom0) else {
            return Ok(None);
        };
        let mut sum = 0.0;
        for vm in guests {
            match read(vm) {
                Some(share) => sum += share,
                None => return Ok(None),
            }
        }
        Ok(Some((dom0, sum)))
    }
}

/// Runs `measure` (a fresh host each time) and, if a guest or dom0 triple-faulted in it
/// (QEMU's nested SVM, seen on both stacks: nothing was measured), once more.
fn once_more_after_a_triple_fault<T>(
    what: &str,
    mut measure: impl FnMut() -> Result<T, XtaskError>,
) -> Result<T, XtaskError> {
    match measure() {
        Err(error) if emulator_trouble(&error.to_string()) => {
            progress::note(format!("{what}: {error}; once more on a fresh host"));
            measure()
        }
        outcome => outcome,
    }
}

/// Whether a failed run's error is a triple fault (a guest's, or dom0's in Xen's own code).
fn emulator_trouble(error: &str) -> bool {
    error.contains("triple-faulted") || error.contains("EMULATOR FAULT")
}

/// `… INFO  guests: start 3: 1700 ms in all: …` → `1700 ms in all: …`.
fn start_split(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("guests: start ")?;
    let (id, split) = rest.split_once(": ")?;
    (id.parse::<u64>().is_ok() && split.contains(" ms in all")).then(|| split.trim().to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn linux_measure(
    host: &ReferenceHost,
    vmlinux_mib: u64,
    figures: &mut RunFigures,
    notes: &mut Vec<String>,
) -> Result<(), XtaskError> {
    let config = host.write_guest_config(GUEST_NAME, "idle", GUEST_MIB)?;
    figures.dom0_used_kib[0] = Some(host.dom0_used_kib()?);
    figures.xen_free_kib[0] = Some(host.xen_free_kib()?);
    let started = Instant::now();
    host.run_ok(&format!("xl create {config}"), CALL_DEADLINE)?;
    figures.start_call_ms = Some(ms(started.elapsed()));
    host.wait_console(GUEST_NAME, GUEST_READY, GUEST_BOOT_DEADLINE)?;
    figures.start_marker_ms = Some(ms(started.elapsed()));
    figures.dom0_used_kib[1] = Some(host.dom0_used_kib()?);
    figures.xen_free_kib[1] = Some(host.xen_free_kib()?);
    let top = host.top_resident(6)?;
    progress::note(format!(
        "Linux dom0's largest processes with 1 guest (KiB): {}",
        top.join(", ")
    ));
    notes.clear();
    notes.push(format!(
        "Linux dom0's largest resident sets with 1 guest running (KiB, last run): {}.",
        top.join(", ")
    ));
    let started = Instant::now();
    host.run_ok(&format!("xl shutdown -w {GUEST_NAME}"), CALL_DEADLINE)?;
    figures.shutdown_ms = Some(ms(started.elapsed()));
    // The profile: the same start with the kernel as an ELF (nothing to decompress).
    let kernel = host.copy_vmlinux(vmlinux_mib)?;
    let config = host.write_config(
        "bench-elf",
        &reference::guest_config_with_kernel("bench-elf", "idle", GUEST_MIB, &kernel),
    )?;
    let started = Instant::now();
    host.run_ok(&format!("xl create {config}"), CALL_DEADLINE)?;
    figures.start_elf_call_ms = Some(ms(started.elapsed()));
    host.run_ok("xl destroy bench-elf", CALL_DEADLINE)?;
    linux_measure_loaded(host, &kernel, figures)
}

/// The host filled, as [`KeelHost::measure_loaded`]: [`LOADED_GUESTS`] guests with the ELF
/// `kernel` idle at their markers, dom0's memory, then the first guest's start again.
fn linux_measure_loaded(
    host: &ReferenceHost,
    kernel: &str,
    figures: &mut RunFigures,
) -> Result<(), XtaskError> {
    let names: Vec<String> = (1..=LOADED_GUESTS)
        .map(|i| format!("bench-bg{i}"))
        .collect();
    for name in &names {
        let config = host.write_config(
            name,
            &reference::guest_config_with_kernel(name, "idle", GUEST_MIB, kernel),
        )?;
        host.run_ok(&format!("xl create {config}"), CALL_DEADLINE)?;
    }
    for name in &names {
        host.wait_console(name, GUEST_READY, LOADED_BOOT_DEADLINE)?;
    }
    std::thread::sleep(Duration::from_secs(6));
    figures.dom0_used_kib[2] = Some(host.dom0_used_kib()?);
    figures.xen_free_kib[2] = Some(host.xen_free_kib()?);
    let config = host.write_guest_config("bench-loaded", "idle", GUEST_MIB)?;
    let idle_from = (Instant::now(), host.run_ok("xl list", CALL_DEADLINE)?);
    std::thread::sleep(Duration::from_secs(5));
    let call_from = (Instant::now(), host.run_ok("xl list", CALL_DEADLINE)?);
    let started = Instant::now();
    host.run_ok(&format!("xl create {config}"), CALL_DEADLINE)?;
    figures.start_loaded_call_ms = Some(ms(started.elapsed()));
    let call_to = (Instant::now(), host.run_ok("xl list", CALL_DEADLINE)?);
    let idle = xl_cpu_use(&idle_from, &call_from, &names);
    let call = xl_cpu_use(&call_from, &call_to, &names);
    if let (Some(idle), Some(call)) = (idle, call) {
        figures.loaded_cpu = Some(LoadedCpu {
            idle_dom0: idle.0,
            idle_guests: idle.1,
            call_dom0: call.0,
            call_guests: call.1,
        });
    }
    Ok(())
}

/// dom0's and the sum of `guests`' CPU use (in CPUs) between two `xl list`s taken at their
/// instants.
fn xl_cpu_use(
    (from_at, from): &(Instant, String),
    (to_at, to): &(Instant, String),
    guests: &[String],
) -> Option<(f64, f64)> {
    let wall = to_at.duration_since(*from_at).as_secs_f64();
    let used = |name: &str| disk::xl_time_used(from, to, name);
    if wall <= 0.0 {
        return None;
    }
    let mut guests_s = 0.0;
    for name in guests {
        guests_s += used(name)?;
    }
    Some((used("Domain-0")? / wall, guests_s / wall))
}

fn run_keel(image: &PathBuf, run: u32, figures: &mut RunFigures) -> Result<(), XtaskError> {
    let host = KeelHost::boot(image, &format!("bench-guests-keel-{run}"), figures)?;
    host.measure(figures)
}

fn run_linux(
    run: u32,
    figures: &mut RunFigures,
    notes: &mut Vec<String>,
) -> Result<(), XtaskError> {
    // dom0 gets the ELF kernel of the profile row on a virtio-blk disk (Keel has its SR on
    // one too).
    let (disk, vmlinux_mib) = reference::vmlinux_disk()?;
    let host = reference::boot_with_disk(
        &format!("bench-guests-linux-{run}"),
        HOST_MEMORY_MIB,
        Some(&disk),
    )?;
    figures.dom0_boot_ms = Some(ms(host.ready_after));
    linux_measure(&host, vmlinux_mib, figures, notes)
}

/// The guest network rows on a freshly booted Keel host; returns the run's profile.
fn net_run_keel(
    image: &PathBuf,
    initrd: &Path,
    run: u32,
    figures: &mut RunFigures,
) -> Result<Vec<String>, XtaskError> {
    let host = KeelHost::boot(
        image,
        &format!("bench-guests-keel-net-{run}"),
        &mut RunFigures::default(),
    )?;
    let net = bench_guests_net::run_keel(&host.machine, &host.session, initrd)?;
    figures.net = net.values;
    figures.net_sender = net.sender;
    Ok(net.profile)
}

/// The guest network rows on a freshly booted reference host; returns the run's profile.
fn net_run_linux(
    initrd: &Path,
    run: u32,
    figures: &mut RunFigures,
) -> Result<Vec<String>, XtaskError> {
    let host = reference::boot(&format!("bench-guests-linux-net-{run}"), HOST_MEMORY_MIB)?;
    let net = bench_guests_net::run_linux(&host, initrd)?;
    figures.net = net.values;
    figures.net_sender = net.sender;
    Ok(net.profile)
}

fn note_run(stack: Stack, run: u32, runs: u32, f: &RunFigures) {
    let s = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{:.2} s", v / 1000.0));
    let k = |v: Option<u64>| v.map_or_else(|| "–".into(), |v| format!("{v} KiB"));
    progress::note(format!(
        "{} {run}/{runs}: dom0 ready {}, start call {} (ELF kernel {}, with 8 running {}), marker {}, shutdown {}, dom0 used {} → {} → {}, Xen free {} → {} → {}",
        stack.label(),
        s(f.dom0_boot_ms),
        s(f.start_call_ms),
        s(f.start_elf_call_ms),
        s(f.start_loaded_call_ms),
        s(f.start_marker_ms),
        s(f.shutdown_ms),
        k(f.dom0_used_kib[0]),
        k(f.dom0_used_kib[1]),
        k(f.dom0_used_kib[2]),
        k(f.xen_free_kib[0]),
        k(f.xen_free_kib[1]),
        k(f.xen_free_kib[2]),
    ));
    if let Some(c) = f.loaded_cpu {
        progress::note(format!(
            "{} {run}/{runs}: CPUs used beside the start with {LOADED_GUESTS} guests: idle guests {:.2}, dom0 {:.2}; during the call guests {:.2}, dom0 {:.2}",
            stack.label(),
            c.idle_guests,
            c.idle_dom0,
            c.call_guests,
            c.call_dom0
        ));
    }
}

pub fn run(runs: u32, record: bool) -> Result<(), XtaskError> {
    // `KEEL_BENCH_GUESTS_ONLY=disk`, `=net` or `=start`: the guest disk, network or
    // start/memory rows alone (to reproduce them quickly).
    let only = std::env::var("KEEL_BENCH_GUESTS_ONLY").unwrap_or_default();
    // `KEEL_BENCH_GUESTS_STACK=keel` or `=linux`: one stack alone (to profile one side; no
    // ratio can be formed, so the run ends in an error after printing its figures).
    let one_stack = std::env::var("KEEL_BENCH_GUESTS_STACK").unwrap_or_default();
    if record && !(only.is_empty() && one_stack.is_empty()) {
        // The record is one section with every row: a partial run would replace it.
        return Err(failed(
            "--record writes every row of both stacks: run it without KEEL_BENCH_GUESTS_ONLY \
             and KEEL_BENCH_GUESTS_STACK",
        ));
    }
    prereq::ensure(&[Tool::Qemu, Tool::Xen])?;
    let (image, _) = build_image(Profile::Release)?;
    let step = progress::step("building the reference stack (Linux dom0 + xl)");
    reference::build()?;
    step.done();
    let step = progress::step("preparing the disk and network guests' initramfs");
    let disk_initrd = disk::guest_initrd()?;
    let net_initrd = bench_guest_net::guest_initrd()?;
    step.done();
    let mut report = GuestsBench {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        qemu_version: qemu_version(),
        ..GuestsBench::default()
    };
    let (disk_only, net_only, start_only) = (only == "disk", only == "net", only == "start");
    let skipped = |stack: Stack| match one_stack.as_str() {
        "keel" => stack != Stack::Keel,
        "linux" => stack != Stack::Linux,
        _ => false,
    };
    for run in 1..=runs {
        let mut figures = [RunFigures::default(), RunFigures::default()];
        // The guest disk rows first (a failure there shows early), each stack on a fresh host.
        for (stack, figures) in [Stack::Keel, Stack::Linux].into_iter().zip(&mut figures) {
            if net_only || start_only {
                break;
            }
            if skipped(stack) {
                continue;
            }
            let step = progress::step(format!("{} guest disk run {run}/{runs}", stack.label()));
            let what = format!("{} guest disk run {run}", stack.label());
            let outcome = once_more_after_a_triple_fault(&what, || match stack {
                Stack::Keel => disk::run_keel(&image, &disk_initrd, run, figures),
                Stack::Linux => disk::run_linux(&disk_initrd, run, figures),
            });
            let shown: Vec<String> = figures
                .disk
                .iter()
                .map(|v| v.map_or_else(|| "–".into(), |v| format!("{v:.1}")))
                .collect();
            progress::note(format!(
                "{} disk {run}/{runs} (MB/s ×4, IOPS ×4): {}",
                stack.label(),
                shown.join(" ")
            ));
            match outcome {
                Ok(profile) => {
                    progress::note(format!("{} disk profile: {profile:?}", stack.label()));
                    match stack {
                        Stack::Keel => report.keel_disk = Some(profile),
                        Stack::Linux => report.linux_disk = Some(profile),
                    }
                }
                Err(error) => {
                    let problem = format!("{} guest disk run {run}: {error}", stack.label());
                    progress::note(&problem);
                    report.problems.push(problem);
                }
            }
            step.done();
        }
        // The guest network rows, each stack on a fresh host.
        for (stack, figures) in [Stack::Keel, Stack::Linux].into_iter().zip(&mut figures) {
            if disk_only || start_only {
                break;
            }
            if skipped(stack) {
                continue;
            }
            let step = progress::step(format!("{} guest network run {run}/{runs}", stack.label()));
            let what = format!("{} guest network run {run}", stack.label());
            let outcome = once_more_after_a_triple_fault(&what, || match stack {
                Stack::Keel => net_run_keel(&image, &net_initrd, run, figures),
                Stack::Linux => net_run_linux(&net_initrd, run, figures),
            });
            let shown: Vec<String> = figures
                .net
                .iter()
                .map(|v| v.map_or_else(|| "–".into(), |v| format!("{v:.3}")))
                .collect();
            progress::note(format!(
                "{} network {run}/{runs} (TCP out, TCP guest-guest MB/s; frames guest-guest, out /s): {}",
                stack.label(),
                shown.join(" ")
            ));
            match outcome {
                Ok(profile) => {
                    for line in &profile {
                        progress::note(format!("{} network profile: {line}", stack.label()));
                    }
                    report.net_profile.retain(|l| !l.starts_with(stack.label()));
                    report
                        .net_profile
                        .extend(profile.iter().map(|l| format!("{}: {l}", stack.label())));
                }
                Err(error) => {
                    let problem = format!("{} guest network run {run}: {error}", stack.label());
                    progress::note(&problem);
                    report.problems.push(problem);
                }
            }
            step.done();
        }
        for (stack, mut figures) in [Stack::Keel, Stack::Linux].into_iter().zip(figures) {
            if !disk_only && !net_only && !skipped(stack) {
                let step = progress::step(format!("{} run {run}/{runs}", stack.label()));
                let what = format!("{} run {run}", stack.label());
                let outcome = once_more_after_a_triple_fault(&what, || match stack {
                    Stack::Keel => run_keel(&image, run, &mut figures),
                    Stack::Linux => run_linux(run, &mut figures, &mut report.notes),
                });
                note_run(stack, run, runs, &figures);
                if let Err(error) = outcome {
                    let problem = format!("{} run {run}: {error}", stack.label());
                    progress::note(&problem);
                    report.problems.push(problem);
                }
                step.done();
            }
            match stack {
                Stack::Keel => report.keel.push(figures),
                Stack::Linux => report.linux.push(figures),
            }
        }
    }
    println!("{}", report.table());
    for miss in report.misses() {
        println!("{miss}");
    }
    if record {
        let command = format!("cargo xtask bench guests --runs {runs} --record");
        let doc = record_section(
            "guests",
            &report.markdown_section(&command, &date::now_utc()),
        )?;
        println!("recorded in {}", doc.display());
    }
    let measured = |runs: &[RunFigures]| {
        runs.iter().any(|r| {
            r.start_call_ms.is_some()
                || r.disk.iter().any(Option::is_some)
                || r.net.iter().any(Option::is_some)
        })
    };
    if !measured(&report.keel) || !measured(&report.linux) {
        return Err(failed(format!(
            "nothing was measured on one stack: {}",
            report.problems.join("; ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Command};

    fn figures(start_s: f64, marker_s: f64, used: [u64; 3], free: [u64; 2]) -> RunFigures {
        RunFigures {
            dom0_boot_ms: Some(20_000.0),
            start_call_ms: Some(start_s * 1000.0),
            start_marker_ms: Some(marker_s * 1000.0),
            shutdown_ms: Some(1000.0),
            start_elf_call_ms: None,
            // 10 % slower on a filled host.
            start_loaded_call_ms: Some(start_s * 1100.0),
            dom0_used_kib: used.map(Some),
            xen_free_kib: [Some(free[0]), Some(free[1]), None],
            disk: [Some(30.0); 8],
            net: [Some(0.2), Some(0.1), Some(400.0), Some(1000.0)],
            net_sender: [None; 4],
            loaded_cpu: None,
            start_split: [None, None],
        }
    }

    const KEEL_NET: [Option<f64>; 4] = [Some(0.3), Some(0.15), Some(600.0), Some(1500.0)];

    fn bench() -> GuestsBench {
        GuestsBench {
            keel: vec![
                // Keel's disk and network rows 1.5× Linux's.
                RunFigures {
                    disk: [Some(45.0); 8],
                    net: KEEL_NET,
                    ..figures(1.0, 30.0, [10_240, 10_340, 11_040], [1_000_000, 884_000])
                },
                RunFigures {
                    disk: [Some(45.0); 8],
                    net: KEEL_NET,
                    ..figures(3.0, 34.0, [10_240, 10_440, 11_840], [1_000_000, 884_000])
                },
            ],
            linux: vec![
                figures(20.0, 33.0, [22_000, 23_600, 150_000], [1_000_000, 884_600]),
                figures(20.0, 35.0, [22_000, 23_600, 150_000], [1_000_000, 884_600]),
            ],
            problems: vec![],
            notes: vec![],
            cores: 2,
            cpu_model: Some("Test CPU".into()),
            qemu_version: Some("QEMU 7.2".into()),
            keel_disk: None,
            linux_disk: None,
            net_profile: vec!["Keel: sender sent 1000 frames/s".into()],
        }
    }

    #[test]
    fn bench_guests_parses_runs_and_record() {
        assert_eq!(
            parse(["bench", "guests"]),
            Ok(Command::BenchGuests {
                runs: 3,
                record: false
            })
        );
        assert_eq!(
            parse(["bench", "guests", "--runs", "2", "--record"]),
            Ok(Command::BenchGuests {
                runs: 2,
                record: true
            })
        );
        assert!(parse(["bench", "guests", "--runs", "0"]).is_err());
    }

    #[test]
    fn rows_show_both_stacks_the_ratio_of_medians_and_the_goal() {
        let table = bench().table();
        // Keel 1 and 3 s (median 2), Linux 20 s: 0.10, which meets "≤ 0.10".
        assert!(
            table.contains(
                "| `VM.start` / `xl create` → domain running (the call) | s | 1.00 / 2.00 / 3.00 | 20.00 / 20.00 / 20.00 | 0.10 | ≥ 10× faster (ratio ≤ 0.10) | yes |"
            ),
            "{table}"
        );
        // Per guest: Keel 100 and 200 KiB (median 150 KiB), Linux 1600 KiB: 0.09.
        assert!(
            table.contains("| dom0 memory per running guest (1 − 0) | MiB | 0.10 / 0.15 / 0.20 | 1.56 / 1.56 / 1.56 | 0.09 |"),
            "{table}"
        );
        assert!(
            table.contains("| Xen's free memory taken per running guest | MiB | 113.28 / 113.28 / 113.28 | 112.70 / 112.70 / 112.70 | 1.01 |"),
            "{table}"
        );
        // With 8 running: Keel (800 and 1600 KiB) / 8 = 0.10 and 0.20 MiB, Linux
        // 128000 / 8 KiB = 15.62 MiB.
        assert!(
            table.contains("| dom0 memory per running guest ((8 − 0) / 8) | MiB | 0.10 / 0.15 / 0.20 | 15.62 / 15.62 / 15.62 | 0.01 | ≤ 1/10 of Linux dom0's (ratio ≤ 0.10) | yes |"),
            "{table}"
        );
        // Leaving the first guest out: Keel 700 and 1400 KiB over 7, Linux 126400 KiB over 7.
        assert!(
            table.contains("| dom0 memory per further running guest ((8 − 1) / 7) | MiB | 0.10 / 0.15 / 0.20 | 17.63 / 17.63 / 17.63 | 0.01 |"),
            "{table}"
        );
        // The slowdown is each stack's own (1.1 on both), and its goal is on Keel's alone.
        assert!(
            table.contains("| that start ÷ the start with no other guest (same stack, same run) | × | 1.10 / 1.10 / 1.10 | 1.10 / 1.10 / 1.10 | 1.00 | Keel ≤ 1.2× | yes |"),
            "{table}"
        );
        let rows = table.lines().count();
        assert_eq!(rows, 2 + ROWS.len());
    }

    #[test]
    fn a_start_that_slows_on_a_filled_host_misses_whatever_linux_does() {
        let mut b = bench();
        for run in &mut b.keel {
            run.start_loaded_call_ms = run.start_call_ms.map(|ms| ms * 1.5);
        }
        for run in &mut b.linux {
            run.start_loaded_call_ms = run.start_call_ms.map(|ms| ms * 3.0);
        }
        let table = b.table();
        assert!(
            table.contains(
                "| × | 1.50 / 1.50 / 1.50 | 3.00 / 3.00 / 3.00 | 0.50 | Keel ≤ 1.2× | **no** |"
            ),
            "{table}"
        );
        assert_eq!(
            b.misses(),
            vec!["- that start ÷ the start with no other guest (same stack, same run) misses its goal: not profiled yet".to_string()]
        );
        for run in &mut b.keel {
            run.start_loaded_call_ms = None;
        }
        assert_eq!(
            b.misses(),
            vec!["- that start ÷ the start with no other guest (same stack, same run) is not compared: Keel's figure not measured".to_string()]
        );
    }

    #[test]
    fn a_missed_goal_is_listed_with_its_cause_and_a_missing_figure_is_named() {
        let mut slow = bench();
        for run in &mut slow.keel {
            run.start_call_ms = Some(15_000.0);
            run.start_loaded_call_ms = Some(15_000.0);
            run.dom0_used_kib = [None, None, None];
        }
        let table = slow.table();
        assert!(
            table.contains("| 0.75 | ≥ 10× faster (ratio ≤ 0.10) | **no** |"),
            "{table}"
        );
        let misses = slow.misses();
        assert_eq!(
            misses,
            vec![
                "- `VM.start` / `xl create` → domain running (the call) misses its goal: not profiled yet".to_string(),
                "- dom0 memory per running guest (1 − 0) is not compared: Keel's figure not measured".to_string(),
                "- dom0 memory per running guest ((8 − 0) / 8) is not compared: Keel's figure not measured".to_string(),
            ]
        );
        assert!(bench().misses().is_empty());
    }

    #[test]
    fn the_start_miss_names_the_share_of_decompression_the_elf_start_measured() {
        let mut b = bench();
        for run in &mut b.keel {
            run.start_call_ms = Some(8_000.0);
            run.start_elf_call_ms = Some(2_000.0);
        }
        for run in &mut b.linux {
            run.start_elf_call_ms = Some(10_000.0);
        }
        let misses = b.misses();
        assert_eq!(misses.len(), 1, "{misses:?}");
        for expected in [
            "Keel's `VM.start` takes 2.00 s instead of 8.00 s (un-xz-ing the payload: 75 % of the call)",
            "`xl create` 10.00 s instead of 20.00 s (50 %)",
            "without it the ratio is 0.20",
        ] {
            assert!(misses[0].contains(expected), "{expected}: {}", misses[0]);
        }
        let table = b.table();
        assert!(
            table.contains("| the same call with the kernel as an ELF `vmlinux` (nothing to un-xz) | s | 2.00 / 2.00 / 2.00 | 10.00 / 10.00 / 10.00 | 0.20 |"),
            "{table}"
        );
    }

    #[test]
    fn ratios_need_both_figures_and_goals_need_a_ratio() {
        let s = |m: f64| {
            Some(Summary {
                min: m,
                median: m,
                max: m,
            })
        };
        assert_eq!(ratio(s(1.0), s(4.0)), Some(0.25));
        assert_eq!(ratio(None, s(4.0)), None);
        assert_eq!(ratio(s(1.0), s(0.0)), None);
        let start = &ROWS[1];
        assert_eq!(meets(start, Some(0.05)), Some(true));
        assert_eq!(meets(start, Some(0.5)), Some(false));
        assert_eq!(meets(start, None), None);
        assert_eq!(meets(&ROWS[0], Some(0.5)), None);
    }

    #[test]
    fn disk_rows_are_throughput_higher_is_better_with_their_goal_at_1_2() {
        let mut b = bench();
        let table = b.table();
        assert!(
            table.contains("| guest disk: seq-write 1 MiB, QD 1 | MB/s | 45.00 / 45.00 / 45.00 | 30.00 / 30.00 / 30.00 | 1.50 | ≥ 1.2× Linux dom0's (ratio ≥ 1.20, higher is better) | yes |"),
            "{table}"
        );
        assert!(
            table.contains("| guest disk: rand-read 4 KiB, QD 32 | IOPS | 45.00 / 45.00 / 45.00 | 30.00 / 30.00 / 30.00 | 1.50 |"),
            "{table}"
        );
        // Keel at 33 against Linux's 30 is faster, but not 1.2× faster.
        for run in &mut b.keel {
            run.disk[4] = Some(33.0);
        }
        let table = b.table();
        assert!(
            table.contains("| guest disk: rand-write 4 KiB, QD 1 | IOPS | 33.00 / 33.00 / 33.00 | 30.00 / 30.00 / 30.00 | 1.10 | ≥ 1.2× Linux dom0's (ratio ≥ 1.20, higher is better) | **no** |"),
            "{table}"
        );
        let misses = b.misses();
        assert_eq!(misses.len(), 1, "{misses:?}");
        // 33 IOPS at QD 1: 30.3 ms a request; Linux's 30: 33.3 ms.
        assert!(
            misses[0].starts_with("- guest disk: rand-write 4 KiB, QD 1 misses its goal: each request of the row takes 30.3 ms on Keel, 33.3 ms on Linux (at QD 1)"),
            "{misses:?}"
        );
        // With profiles, dom0's CPU per request is named.
        let profile = |dom0_s: f64| disk::DiskProfile {
            dom0_cpu_s: Some(dom0_s),
            guest_requests: Some(disk::BlockDelta {
                reads: 500,
                read_sectors: 4000,
                writes: 500,
                write_sectors: 4000,
            }),
            ..disk::DiskProfile::default()
        };
        b.keel_disk = Some(profile(3.0));
        b.linux_disk = Some(profile(1.0));
        if let Some(p) = b.keel_disk.as_mut() {
            p.dom0_idle_share = Some(0.9);
        }
        if let Some(p) = b.linux_disk.as_mut() {
            p.dom0_idle_share = Some(0.02);
        }
        let misses = b.misses();
        assert!(
            misses[0].contains("dom0 spent 3000 µs of vCPU time per guest request on Keel, 1000 µs on Linux (with no guest running dom0 used 90 % of its vCPU on Keel, 2 % on Linux)"),
            "{misses:?}"
        );
        let section = b.markdown_section("cargo xtask bench guests --runs 2 --record", "now");
        assert!(
            section.contains("| dom0 vCPU time per guest request | 3000 µs | 1000 µs |"),
            "{section}"
        );
        assert!(section.contains("higher is better)"), "{section}");
        // Not measured on one stack: named, not met.
        for run in &mut b.linux {
            run.disk = [None; 8];
        }
        assert!(b.misses().contains(
            &"- guest disk: seq-read 1 MiB, QD 32 is not compared: Linux's figure not measured"
                .to_string()
        ));
    }

    #[test]
    fn network_rows_are_throughput_with_their_goal_and_profile() {
        let mut b = bench();
        // Keel's network figures 1.5× Linux's on the TCP rows, 0.5× on the frame rows.
        for run in &mut b.keel {
            run.net = [Some(0.3), Some(0.15), Some(200.0), Some(500.0)];
        }
        let met_of = |key: &str| {
            let row = ROWS.iter().find(|r| r.key == key).unwrap();
            assert_eq!(row.goal_ratio_min, Some(1.2), "{key}");
            met(row, summary(row, &b.keel), summary(row, &b.linux))
        };
        assert_eq!(met_of(NET_ROWS[0].key), Some(true));
        assert_eq!(met_of(NET_ROWS[1].key), Some(true));
        assert_eq!(met_of(NET_ROWS[2].key), Some(false));
        assert_eq!(met_of(NET_ROWS[3].key), Some(false));
        let section = b.markdown_section("cargo xtask bench guests --runs 2", "today");
        assert!(section.contains(NET_ROWS[2].label), "{section}");
        assert!(
            section.contains("- Keel: sender sent 1000 frames/s"),
            "{section}"
        );
        assert!(!section.contains("Not measured yet"), "{section}");
        assert_eq!(
            b.misses()
                .iter()
                .filter(|m| m.contains("misses its goal") && m.contains("frames"))
                .count(),
            2
        );
    }

    #[test]
    fn disk_rows_follow_the_workload_table() {
        let table = keel_repositories::bench::standard_workloads();
        let disk_rows: Vec<&Row> = ROWS.iter().filter(|r| r.key.starts_with("disk-")).collect();
        assert_eq!(disk_rows.len(), table.len());
        for (i, (row, w)) in disk_rows.iter().zip(&table).enumerate() {
            assert_eq!(disk_index(row), Some(i));
            assert!(row.label.contains(w.pattern.name()), "{}", row.label);
            assert!(
                row.label.ends_with(&format!("QD {}", w.queue_depth)),
                "{}",
                row.label
            );
            let mut figures = RunFigures::default();
            figures.disk[i] = Some(7.0);
            assert_eq!((row.pick)(&figures), Some(7.0), "{}", row.label);
        }
        assert_eq!(disk_index(&ROWS[0]), None);
    }

    #[test]
    fn the_section_names_the_command_both_stacks_and_what_tcg_distorts() {
        let mut b = bench();
        b.problems.push("Linux dom0 + xl run 2: timed out".into());
        let section =
            b.markdown_section("cargo xtask bench guests --runs 2 --record", "2026-12-03");
        for expected in [
            "<!-- cargo xtask bench guests: begin",
            "## Guests side by side with Linux dom0 + xl",
            "Recorded 2026-12-03 with `cargo xtask bench guests --runs 2 --record`.",
            "2 host cores, Test CPU, QEMU 7.2",
            "Runs: 2 of Keel and 2 of Linux, alternating",
            "- Linux dom0 + xl run 2: timed out",
            "TCG distorts the absolute times",
            "<!-- cargo xtask bench guests: end -->",
        ] {
            assert!(
                section.contains(expected),
                "missing {expected:?} in {section}"
            );
        }
    }

    #[test]
    fn xl_cpu_use_is_each_domains_time_over_the_wall_time() {
        let at = Instant::now();
        let list = |d0: f64, a: f64, b: f64| {
            format!(
                "Name ID Mem VCPUs State Time(s)\nDomain-0 0 1280 1 r----- {d0}\n\
                 bench-bg1 1 128 1 -b---- {a}\nbench-bg2 2 128 1 -b---- {b}\n"
            )
        };
        let from = (at, list(10.0, 1.0, 2.0));
        let to = (at + Duration::from_secs(4), list(12.0, 1.4, 2.2));
        let names = ["bench-bg1".to_string(), "bench-bg2".to_string()];
        let (dom0, guests) = xl_cpu_use(&from, &to, &names).unwrap();
        assert!((dom0 - 0.5).abs() < 1e-9 && (guests - 0.15).abs() < 1e-9);
        // A guest missing from a list: no figure rather than a wrong one.
        assert_eq!(xl_cpu_use(&from, &to, &["bench-bg3".to_string()]), None);
    }

    #[test]
    fn a_slow_start_beside_guests_names_who_used_the_cpus() {
        let mut b = bench();
        for run in &mut b.keel {
            run.start_loaded_call_ms = run.start_call_ms.map(|ms| ms * 1.5);
            run.loaded_cpu = Some(LoadedCpu {
                idle_dom0: 0.12,
                idle_guests: 0.4,
                call_dom0: 0.9,
                call_guests: 0.6,
            });
        }
        let misses = b.misses().join("\n");
        assert!(
            misses.contains(
                "on Keel idle before the call the 8 guests used 0.40 CPU and dom0 0.12; \
                 during the call the guests 0.60 and dom0 0.90"
            ),
            "{misses}"
        );
    }

    #[test]
    fn keels_start_log_line_is_the_split_of_its_call() {
        assert_eq!(
            start_split(
                "[  12.5] INFO  guests: start 3: 1700 ms in all: prepare 40 ms, kernel 900 ms (65000 KiB)"
            )
            .as_deref(),
            Some("1700 ms in all: prepare 40 ms, kernel 900 ms (65000 KiB)")
        );
        assert_eq!(start_split("INFO  guests: start failed: no memory"), None);
        assert_eq!(start_split("INFO  guests: start 3: VM booted"), None);
    }

    #[test]
    fn a_run_is_measured_once_more_only_after_a_triple_fault() {
        let mut calls = 0;
        let outcome = once_more_after_a_triple_fault("run", || {
            calls += 1;
            if calls == 1 {
                Err(failed("guest d2 triple-faulted before `done`"))
            } else {
                Ok(calls)
            }
        });
        assert_eq!((outcome.ok(), calls), (Some(2), 2));
        let mut calls = 0;
        let outcome: Result<(), XtaskError> = once_more_after_a_triple_fault("run", || {
            calls += 1;
            Err(failed("timed out"))
        });
        assert!(outcome.is_err());
        assert_eq!(calls, 1, "any other failure is not run again");
    }

    #[test]
    fn only_a_triple_fault_runs_the_network_rows_again() {
        assert!(emulator_trouble(
            "benchmark failed: guest d2 triple-faulted before `reach=10.0.2.2`: (XEN) d2v0 Triple fault"
        ));
        assert!(emulator_trouble(
            "EMULATOR FAULT: d0v0 triple fault at Xen's ..."
        ));
        assert!(!emulator_trouble(
            "timed out after 1200.0 s waiting for a line"
        ));
    }

    #[test]
    fn a_network_miss_names_how_busy_the_sending_guest_was_on_each_stack() {
        let mut b = bench();
        // Keel's TCP rows below Linux's; the sender 100 % busy on both.
        for run in &mut b.keel {
            run.net[0] = Some(0.1);
            run.net[1] = Some(0.01);
            run.net_sender[0] = Some((18.0, 1.0));
        }
        for run in &mut b.linux {
            run.net_sender[0] = Some((16.7, 0.995));
        }
        let misses = b.misses().join("\n");
        assert!(
            misses.contains(
                "TCP guest → outside (8 MiB, sink-timed) misses its goal: the sending guest's own \
                 vCPU was 100 % busy during the row on Keel and 100 % on Linux (its `/proc/stat`: \
                 busy 18.0 s against 16.7 s)"
            ),
            "{misses}"
        );
        // Without the sender's figures the row points at the profile.
        assert!(
            misses.contains(
                "TCP guest → guest (8 MiB, sender-timed) misses its goal: not profiled beyond"
            ),
            "{misses}"
        );
    }
}
