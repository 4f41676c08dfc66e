//! The guest disk rows of `bench guests` (issue 13): the same Linux guest runs the same
//! `kbench` workloads (`keel_repositories::bench::standard_workloads`, O_DIRECT and Linux AIO
//! on `/dev/xvda` through `xen-blkfront`) on each stack, on a freshly booted host of the same
//! QEMU flags:
//!
//! - Keel: a [`VDI_MIB`] MiB thin VDI of the virtio-blk SR (as `bench guest-disk`), served by
//!   Keel's blkback;
//! - Linux dom0 + xl: a virtio-blk disk of the SR disk's size and QEMU flags (behind the
//!   IOMMU, `disable-legacy=on,iommu_platform=on`), handed whole to the guest as
//!   `phy:/dev/vdX` through Linux's blkback; the guest's initramfs comes in on a second disk.
//!
//! Each workload runs 1/[`OPS_DIVISOR`] of `bench guest-disk`'s ops (the same on both stacks),
//! sequential ones in 1 MiB requests. Around the run the guest prints its `/proc/stat` and
//! `/sys/block/xvda/stat`, and what blkfront negotiated; dom0's CPU time (Xen's accounting: the
//! usage ledger's `vcpu_seconds` on Keel, `xl list` on Linux) is read when the guest says it
//! starts and when it is done; Linux's blkback statistics and xenstore features too. That is
//! the profile the misses are explained with.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_repositories::bench::{standard_workloads, Figures, Pattern as Workload};
use keel_tests::guest;
use keel_tests::linux;
use keel_tests::reference::{self, ReferenceHost};
use keel_tests::Pattern;

use super::{
    failed, KeelHost, RunFigures, CALL_DEADLINE, GUEST_BOOT_DEADLINE, HOST_MEMORY_MIB,
    SR_DISK_BYTES,
};
use crate::commands::bench_guest_disk;
use crate::commands::vm::Session;
use crate::error::XtaskError;
use crate::load::{self, Param};

/// The disk guest's memory (as `bench guest-disk`: QD 32 of 1 MiB buffers fit).
pub const DISK_GUEST_MIB: u64 = 128;
/// Keel's guest disk: the workloads' 64 MiB region and some room (as `bench guest-disk`).
pub const VDI_MIB: u64 = 96;
/// Each workload runs this fraction of its ops (`KBENCH_OPS_DIVISOR`): 64 / 128 MiB per
/// sequential row at QD 1 / 32, 2000 / 8000 random requests, so that both stacks' runs fit
/// the bench's time.
pub const OPS_DIVISOR: u32 = 4;
/// The guest's sequential request size (issue 13: "sequential 1 MiB").
pub const SEQ_BLOCK: u32 = 1 << 20;
const DISK_GUEST: &str = "bench-disk";
/// Boot, the 10 s pause and every workload, under nested TCG on a loaded machine.
const KBENCH_DEADLINE: Duration = Duration::from_secs(1800);
/// What the guest prints before and after its workloads.
const START: &str = "kbench: start";
const END: &str = "kbench: end";
const DONE: &str = "keel-guest: kbench done";
/// xvda's device number (blkif's `202 << 8`): its backend directory and sysfs name.
const XVDA: u32 = 51712;
/// How long dom0's use with no guest running is measured, after [`IDLE_SETTLE`] of quiet
/// (the uploads and the VM's creation, or the initramfs's copy, just ended).
const IDLE_WINDOW: Duration = Duration::from_secs(20);
const IDLE_SETTLE: Duration = Duration::from_secs(15);

/// `/bin/kbench` of the disk guest: what blkfront negotiated, the guest's CPU and xvda's
/// counters (spaces squeezed: Keel's log splits a long console line), a 10 s pause (dom0's counters are read meanwhile), then the real binary on
/// 1/[`OPS_DIVISOR`] of the ops with 1 MiB sequential requests, a line every 30 s (a silent
/// console gets the harness probing Xen), and the counters again.
pub fn kbench_wrapper() -> String {
    format!(
        "#!/bin/sh\n\
         echo \"kbench: blkfront $(dmesg | grep 'blkfront: xvda' | tail -n 1 | sed 's/.*blkfront: xvda: //')\"\n\
         q=/sys/block/xvda/queue\n\
         echo \"kbench: queue max_hw_sectors_kb=$(cat $q/max_hw_sectors_kb) max_segments=$(cat $q/max_segments) nr_requests=$(cat $q/nr_requests) max_indirect_segments=$(cat /sys/module/xen_blkfront/parameters/max_indirect_segments 2>/dev/null)\"\n\
         echo \"{START} cpu $(head -n 1 /proc/stat | tr -s ' ') disk $(tr -s ' ' < /sys/block/xvda/stat)\"\n\
         sleep 10\n\
         (while sleep 30; do echo kbench: running; done) &\n\
         beat=$!\n\
         KBENCH_OPS_DIVISOR={OPS_DIVISOR} /bin/kbench.bin \"$@\" {SEQ_BLOCK}\n\
         status=$?\n\
         kill $beat\n\
         echo \"{END} cpu $(head -n 1 /proc/stat | tr -s ' ') disk $(tr -s ' ' < /sys/block/xvda/stat)\"\n\
         exit $status\n"
    )
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> XtaskError {
    move |error| XtaskError::Io {
        what: what.into(),
        error,
    }
}

/// The guest initramfs with `kbench` as `/bin/kbench.bin` behind [`kbench_wrapper`].
pub fn guest_initrd() -> Result<PathBuf, XtaskError> {
    bench_guest_disk::kbench_initrd(&kbench_wrapper(), "guest-kbench-guests.cpio")
}

/// The workloads the guest must report, in order: the table's with 1 MiB sequential requests
/// moving the same bytes, each 1/[`OPS_DIVISOR`] of its ops.
pub fn expected_workloads() -> Vec<(Workload, u32, u16, u32)> {
    standard_workloads()
        .iter()
        .map(|w| {
            let block = match w.pattern {
                Workload::SeqRead | Workload::SeqWrite => SEQ_BLOCK,
                Workload::RandRead | Workload::RandWrite => w.block_bytes,
            };
            let ops = (u64::from(w.block_bytes) * u64::from(w.ops) / u64::from(block)) as u32;
            (w.pattern, block, w.queue_depth, ops / OPS_DIVISOR)
        })
        .collect()
}

/// The guest's figures, checked against [`expected_workloads`]: MB/s for sequential rows,
/// IOPS for random ones, in the table's order.
pub fn row_figures(figures: &[Figures]) -> Result<Vec<f64>, String> {
    let expected = expected_workloads();
    if figures.len() != expected.len() {
        return Err(format!(
            "{} of {} guest workloads reported",
            figures.len(),
            expected.len()
        ));
    }
    figures
        .iter()
        .zip(&expected)
        .map(|(f, &(pattern, block, depth, ops))| {
            if f.pattern != pattern
                || f.block_bytes != block
                || f.queue_depth != depth
                || f.ops != ops
            {
                return Err(format!(
                    "the guest ran {} bs={} qd={} ops={} where {} bs={block} qd={depth} ops={ops} was expected",
                    f.pattern.name(),
                    f.block_bytes,
                    f.queue_depth,
                    f.ops,
                    pattern.name()
                ));
            }
            Ok(match pattern {
                Workload::SeqRead | Workload::SeqWrite => f.megabytes_per_second(),
                Workload::RandRead | Workload::RandWrite => f.iops(),
            })
        })
        .collect()
}

/// `/proc/stat`'s `cpu` line: user, nice, system, idle, iowait, irq, softirq, steal (in
/// USER_HZ ticks, 1/100 s).
pub fn parse_cpu_line(line: &str) -> Option<[u64; 8]> {
    let mut words = line.split_whitespace();
    if words.next()? != "cpu" {
        return None;
    }
    let mut out = [0u64; 8];
    for slot in &mut out {
        *slot = words.next()?.parse().ok()?;
    }
    Some(out)
}

/// Where a CPU's time went between two `/proc/stat` samples, seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSplit {
    pub user: f64,
    pub system: f64,
    pub irq: f64,
    pub softirq: f64,
    pub iowait: f64,
    pub idle: f64,
    pub steal: f64,
}

impl CpuSplit {
    pub fn between(before: &[u64; 8], after: &[u64; 8]) -> CpuSplit {
        let d = |i: usize| after[i].saturating_sub(before[i]) as f64 / 100.0;
        CpuSplit {
            user: d(0) + d(1),
            system: d(2),
            idle: d(3),
            iowait: d(4),
            irq: d(5),
            softirq: d(6),
            steal: d(7),
        }
    }

    pub fn busy(&self) -> f64 {
        self.user + self.system + self.irq + self.softirq
    }

    pub fn describe(&self) -> String {
        format!(
            "busy {:.1} s (user {:.1}, system {:.1}, irq {:.1}, softirq {:.1}), iowait {:.1}, idle {:.1}, steal {:.1}",
            self.busy(),
            self.user,
            self.system,
            self.irq,
            self.softirq,
            self.iowait,
            self.idle,
            self.steal
        )
    }
}

/// Requests and sectors between two `/sys/block/xvda/stat` samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockDelta {
    pub reads: u64,
    pub read_sectors: u64,
    pub writes: u64,
    pub write_sectors: u64,
}

/// `/sys/block/DEV/stat`: reads, read merges, read sectors, read ticks, writes, write merges,
/// write sectors, … (the first 7 fields are used).
pub fn parse_block_stat(text: &str) -> Option<[u64; 7]> {
    let mut words = text.split_whitespace();
    let mut out = [0u64; 7];
    for slot in &mut out {
        *slot = words.next()?.parse().ok()?;
    }
    Some(out)
}

impl BlockDelta {
    pub fn between(before: &[u64; 7], after: &[u64; 7]) -> BlockDelta {
        let d = |i: usize| after[i].saturating_sub(before[i]);
        BlockDelta {
            reads: d(0),
            read_sectors: d(2),
            writes: d(4),
            write_sectors: d(6),
        }
    }

    pub fn requests(&self) -> u64 {
        self.reads + self.writes
    }

    fn describe(&self) -> String {
        let kib = |sectors: u64, n: u64| sectors as f64 / 2.0 / n.max(1) as f64;
        format!(
            "{} reads of {:.0} KiB and {} writes of {:.0} KiB on average",
            self.reads,
            kib(self.read_sectors, self.reads),
            self.writes,
            kib(self.write_sectors, self.writes)
        )
    }
}

/// A guest's `kbench: start|end cpu <cpu line> disk <stat>` line.
pub fn parse_guest_sample(line: &str) -> Option<([u64; 8], [u64; 7])> {
    // `… cpu cpu  U N S … disk R …`: the sample's words follow the first " cpu ".
    let (_, rest) = line.split_once(" cpu ")?;
    let (cpu, disk) = rest.split_once(" disk ")?;
    Some((parse_cpu_line(cpu)?, parse_block_stat(disk)?))
}

/// The CPU seconds `xl list` shows per domain name (its sixth column, `Time(s)`).
pub fn parse_xl_list(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let time = words.get(5)?.parse().ok()?;
            Some((words.first()?.to_string(), time))
        })
        .collect()
}

/// The CPU seconds domain `name` used between two `xl list` outputs, if both show it.
pub fn xl_time_used(before: &str, after: &str, name: &str) -> Option<f64> {
    let time = |text: &str| {
        parse_xl_list(text)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    };
    Some(time(after)? - time(before)?)
}

/// The fields of one CSV record (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = fields.last_mut() {
                    f.push('"');
                }
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => {
                if let Some(f) = fields.last_mut() {
                    f.push(c)
                }
            }
        }
    }
    fields
}

/// Σ `vcpu_seconds` of the usage ledger's CSV rows of VM `uuid` (one row per hour).
pub fn usage_vcpu_seconds(csv: &str, uuid: &str) -> Option<f64> {
    let mut lines = csv.lines();
    let header = csv_fields(lines.next()?);
    let column = |name: &str| header.iter().position(|h| h == name);
    let (id, seconds) = (column("vm_uuid")?, column("vcpu_seconds")?);
    let mut total = None;
    for fields in lines.map(csv_fields) {
        if fields.get(id).map(String::as_str) == Some(uuid) {
            let s: f64 = fields.get(seconds)?.parse().ok()?;
            total = Some(total.unwrap_or(0.0) + s);
        }
    }
    total
}

/// Linux blkback's `statistics/NAME VALUE` lines, as `(name, value)`.
pub fn parse_blkback(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("blkback ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// What one stack's disk run measured besides the figures (the whole kbench run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskProfile {
    /// The guest's `blkfront: xvda: …` line: what it negotiated with the backend.
    pub blkfront: Option<String>,
    /// xvda's queue limits in the guest.
    pub queue: Option<String>,
    pub guest_cpu: Option<CpuSplit>,
    pub guest_requests: Option<BlockDelta>,
    /// dom0's and the guest's vCPU time by Xen's accounting, s.
    pub dom0_cpu_s: Option<f64>,
    /// The share of a vCPU dom0 used before the guest started (no guest running).
    pub dom0_idle_share: Option<f64>,
    pub guest_vcpu_s: Option<f64>,
    /// Linux dom0's own `/proc/stat` split.
    pub dom0_split: Option<CpuSplit>,
    /// Linux blkback's statistics, the run's increase (`rd_req`, `wr_req`, `oo_req`, …).
    pub blkback: Vec<(String, u64)>,
    /// The backend's and frontend's negotiated xenstore nodes (Linux).
    pub features: Option<String>,
    /// Σ of the rows' own times, s.
    pub kbench_s: f64,
}

impl DiskProfile {
    /// Fills what the guest's console `lines` (its prefix removed) say.
    fn from_guest(lines: &[String], figures: &[Figures]) -> DiskProfile {
        let find = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
        };
        let start = lines
            .iter()
            .find(|l| l.starts_with(START))
            .and_then(|l| parse_guest_sample(l));
        let end = lines
            .iter()
            .find(|l| l.starts_with(END))
            .and_then(|l| parse_guest_sample(l));
        let (guest_cpu, guest_requests) = match (start, end) {
            (Some((c0, d0)), Some((c1, d1))) => (
                Some(CpuSplit::between(&c0, &c1)),
                Some(BlockDelta::between(&d0, &d1)),
            ),
            _ => (None, None),
        };
        DiskProfile {
            blkfront: find("kbench: blkfront "),
            queue: find("kbench: queue "),
            guest_cpu,
            guest_requests,
            kbench_s: figures.iter().map(|f| f.nanoseconds as f64 / 1e9).sum(),
            ..DiskProfile::default()
        }
    }

    /// dom0's CPU time per guest request, µs.
    pub fn dom0_us_per_request(&self) -> Option<f64> {
        let requests = self.guest_requests?.requests();
        let seconds = self.dom0_cpu_s?;
        (requests > 0).then(|| seconds * 1e6 / requests as f64)
    }
}

/// One cell of the profile table from one stack's profile.
type ProfileCell = dyn Fn(&DiskProfile) -> Option<String>;

/// The profile table of both stacks (the last disk run of each).
pub fn profile_table(keel: Option<&DiskProfile>, linux: Option<&DiskProfile>) -> String {
    let cell =
        |p: Option<&DiskProfile>, f: &ProfileCell| p.and_then(f).unwrap_or_else(|| "–".into());
    let rows: [(&str, &ProfileCell); 10] = [
        ("kbench's time (Σ of the rows)", &|p| {
            Some(format!("{:.1} s", p.kbench_s))
        }),
        ("guest requests (its `/sys/block/xvda/stat`)", &|p| {
            p.guest_requests.map(|d| d.describe())
        }),
        ("guest CPU (its `/proc/stat`)", &|p| {
            p.guest_cpu.map(|c| c.describe())
        }),
        ("guest vCPU time (Xen's accounting)", &|p| {
            p.guest_vcpu_s.map(|s| format!("{s:.1} s"))
        }),
        ("dom0 vCPU time (Xen's accounting)", &|p| {
            p.dom0_cpu_s.map(|s| format!("{s:.1} s"))
        }),
        ("dom0's use before the guest started (no guest)", &|p| {
            p.dom0_idle_share
                .map(|s| format!("{:.0} % of its vCPU", s * 100.0))
        }),
        ("dom0 vCPU time per guest request", &|p| {
            p.dom0_us_per_request().map(|us| format!("{us:.0} µs"))
        }),
        ("dom0's own split (Linux `/proc/stat`)", &|p| {
            p.dom0_split.map(|c| c.describe())
        }),
        ("blkback's counters (Linux `statistics/`)", &|p| {
            (!p.blkback.is_empty()).then(|| {
                p.blkback
                    .iter()
                    .map(|(n, v)| format!("{n} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        }),
        (
            "what blkfront negotiated (guest's log; queue limits)",
            &|p| {
                let both = [p.blkfront.clone(), p.queue.clone()];
                let text: Vec<String> = both.into_iter().flatten().collect();
                (!text.is_empty()).then(|| text.join("; "))
            },
        ),
    ];
    let mut out = String::from("| Whole kbench run | Keel | Linux dom0 + xl |\n|---|---|---|\n");
    for (label, f) in rows {
        out.push_str(&format!(
            "| {label} | {} | {} |\n",
            cell(keel, f),
            cell(linux, f)
        ));
    }
    if let Some(features) = linux.and_then(|p| p.features.as_deref()) {
        out.push_str(&format!(
            "\nLinux's negotiated xenstore nodes: {}.\n",
            features
        ));
    }
    out
}

/// The guest's console lines after `prefix`, `\r` removed.
fn guest_lines<'a>(lines: impl Iterator<Item = &'a str>, prefix: &str) -> Vec<String> {
    lines
        .filter_map(|l| {
            let at = l.find(prefix)?;
            Some(l[at + prefix.len()..].trim_end_matches('\r').to_string())
        })
        .collect()
}

fn figures_of(lines: &[String]) -> Vec<Figures> {
    lines.iter().filter_map(|l| Figures::parse(l)).collect()
}

/// Checks the guest's figures into `figures.disk`; an error names the console.
fn record(
    figures: &mut RunFigures,
    measured: &[Figures],
    console: &Path,
) -> Result<(), XtaskError> {
    let values = row_figures(measured)
        .map_err(|why| failed(format!("{why}; console: {}", console.display())))?;
    for (slot, value) in figures.disk.iter_mut().zip(values) {
        *slot = Some(value);
    }
    Ok(())
}

/// Σ vCPU seconds of the usage ledger's rows of `uuids`, from 1 h before now to 2 h after.
pub(crate) fn keel_vcpu_seconds(
    session: &Session,
    uuids: &[&str],
) -> Result<Vec<Option<f64>>, XtaskError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let hour = now - now % 3600;
    let request = format!(
        "GET /usage?session_id={}&from={}&to={}&format=csv HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        session.id,
        hour - 3600,
        hour + 7200
    );
    let (status, body) =
        load::one_shot(session.port, request.as_bytes(), CALL_DEADLINE).map_err(|error| {
            XtaskError::Io {
                what: "GET /usage".into(),
                error,
            }
        })?;
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        return Err(failed(format!("GET /usage: HTTP {status}: {text}")));
    }
    Ok(uuids.iter().map(|u| usage_vcpu_seconds(&text, u)).collect())
}

/// A data source's value in a `VM.query_data_source` answer.
pub fn data_source_value(answer: &str) -> Option<f64> {
    let value = answer.split_once("<name>Value</name>")?.1.trim_start();
    let value = value.strip_prefix("<value>")?;
    let value = ["<double>", "<int>", "<i4>", "<string>"]
        .iter()
        .find_map(|tag| value.strip_prefix(tag))
        .unwrap_or(value);
    let number: f64 = value.get(..value.find('<')?)?.trim().parse().ok()?;
    number.is_finite().then_some(number)
}

/// dom0's vCPU use with no guest running: the mean of its `cpu0` data source (busy seconds
/// per second over the last 5 s) read at the end of each 5 s of [`IDLE_WINDOW`], after
/// [`IDLE_SETTLE`].
fn keel_idle_share(session: &Session, dom0: &str) -> Option<f64> {
    std::thread::sleep(IDLE_SETTLE);
    let mut readings = Vec::new();
    for _ in 0..IDLE_WINDOW.as_secs() / 5 {
        std::thread::sleep(Duration::from_secs(5));
        let answer = session
            .call(
                "VM.query_data_source",
                &[Param::Str(dom0), Param::Str("cpu0")],
            )
            .ok()?;
        readings.extend(data_source_value(&String::from_utf8_lossy(&answer)));
    }
    (!readings.is_empty()).then(|| readings.iter().sum::<f64>() / readings.len() as f64)
}

/// The guest disk run on Keel: a fresh host, the guest with a [`VDI_MIB`] MiB VDI of the SR.
pub fn run_keel(
    image: &Path,
    initrd: &Path,
    run: u32,
    figures: &mut RunFigures,
) -> Result<DiskProfile, XtaskError> {
    let host = KeelHost::boot(
        &image.to_path_buf(),
        &format!("bench-guests-keel-disk-{run}"),
        &mut RunFigures::default(),
    )?;
    measure_keel(&host, initrd, figures).map_err(|error| {
        // dom0 triple-faulting in Xen's own code (QEMU's nested SVM) is said as such, for
        // the caller to run again on a fresh host.
        match crate::commands::bench_guests_net::emulator_fault(&host.machine.serial_lines()) {
            Some(fault) => failed(format!("EMULATOR FAULT: {fault}; {error}")),
            None => error,
        }
    })
}

/// The disk rows on a booted Keel host.
fn measure_keel(
    host: &KeelHost,
    initrd: &Path,
    figures: &mut RunFigures,
) -> Result<DiskProfile, XtaskError> {
    let s = &host.session;
    let sr = s.first_sr()?;
    let kernel = s.upload(&sr, &guest::kernel()?, "guest kernel (Debian vmlinuz)")?;
    let ramdisk = s.upload(&sr, initrd, "guest initramfs with kbench")?;
    let vm = s.create_guest(
        DISK_GUEST,
        (kernel.as_str(), ramdisk.as_str()),
        "kbench",
        DISK_GUEST_MIB,
    )?;
    let size = (VDI_MIB << 20).to_string();
    let body = s.call(
        "VDI.create",
        &[Param::Struct(&[
            ("SR", Param::Str(&sr)),
            ("name_label", Param::Str("bench disk")),
            ("name_description", Param::Str("")),
            ("virtual_size", Param::Str(&size)),
            ("type", Param::Str("user")),
            ("sharable", Param::Bool(false)),
            ("read_only", Param::Bool(false)),
            ("other_config", Param::Struct(&[])),
            ("xenstore_data", Param::Struct(&[])),
            ("sm_config", Param::Struct(&[])),
            ("tags", Param::Strings(&[])),
        ])],
    )?;
    let vdi = load::first_ref(&body).ok_or_else(|| failed("VDI.create: no reference"))?;
    s.call(
        "VBD.create",
        &[Param::Struct(&[
            ("VM", Param::Str(&vm)),
            ("VDI", Param::Str(&vdi)),
            ("userdevice", Param::Str("0")),
            ("bootable", Param::Bool(false)),
            ("mode", Param::Str("RW")),
            ("type", Param::Str("Disk")),
            ("unpluggable", Param::Bool(true)),
            ("empty", Param::Bool(false)),
            ("other_config", Param::Struct(&[])),
            ("qos_algorithm_type", Param::Str("")),
            ("qos_algorithm_params", Param::Struct(&[])),
        ])],
    )?;
    let dom0 = s.reference("host.get_control_domain", &[&host.host])?;
    let dom0_uuid = s.value("VM.get_uuid", &[&dom0])?;
    let guest_uuid = s.value("VM.get_uuid", &[&vm])?;
    let idle_share = keel_idle_share(s, &dom0);
    s.start(&vm)?;
    let domid = s.value("VM.get_domid", &[&vm])?;
    let prefix = format!("guest d{domid}: ");
    host.machine.wait_for_line(
        Pattern::contains(format!("{prefix}{START}")),
        GUEST_BOOT_DEADLINE,
    )?;
    let before = keel_vcpu_seconds(s, &[&dom0_uuid, &guest_uuid])?;
    host.machine.wait_for_line(
        Pattern::contains(format!("{prefix}{DONE}")),
        KBENCH_DEADLINE,
    )?;
    // The ledger takes a sample every 5 s: let one fall after the end.
    std::thread::sleep(Duration::from_secs(6));
    let after = keel_vcpu_seconds(s, &[&dom0_uuid, &guest_uuid])?;
    let serial = host.machine.serial_lines();
    let lines = guest_lines(serial.iter().map(String::as_str), &prefix);
    let measured = figures_of(&lines);
    let mut profile = DiskProfile::from_guest(&lines, &measured);
    profile.dom0_idle_share = idle_share;
    let delta = |i: usize| Some(after.get(i).copied()?? - before.get(i).copied()??);
    profile.dom0_cpu_s = delta(0);
    profile.guest_vcpu_s = delta(1);
    record(figures, &measured, host.machine.log_path())?;
    Ok(profile)
}

/// The guest's initramfs as a raw disk for Linux dom0 (whole MiB); returns it and the
/// initramfs's length.
fn initrd_disk(initrd: &Path) -> Result<(PathBuf, u64), XtaskError> {
    let bytes = fs::read(initrd).map_err(io("reading the disk guest's initramfs"))?;
    let out = linux::artifact("guest-kbench-guests.img");
    let mut padded = bytes.clone();
    // Never the bench disk's size, so that dom0 tells them apart by size.
    let mut len = (bytes.len() as u64).div_ceil(1 << 20) << 20;
    if len == SR_DISK_BYTES {
        len += 1 << 20;
    }
    padded.resize(len as usize, 0);
    fs::write(&out, padded).map_err(io("writing the initramfs disk"))?;
    Ok((out, bytes.len() as u64))
}

/// The xl configuration of the disk guest: the kbench initramfs and `phy:DEVICE` as xvda.
pub fn disk_guest_config(ramdisk: &str, device: &str) -> String {
    let config = reference::guest_config(DISK_GUEST, "kbench", DISK_GUEST_MIB);
    let config = config.replace(
        &format!("ramdisk = \"{}\"", reference::GUEST_INITRD),
        &format!("ramdisk = \"{ramdisk}\""),
    );
    format!("{config}disk = [ \"phy:{device},xvda,w\" ]\n")
}

/// dom0's counters for the profile: `xl list`, its `/proc/stat` line, blkback's statistics of
/// domain `domid`'s xvda.
fn linux_sample(host: &ReferenceHost, domid: &str) -> Result<String, XtaskError> {
    Ok(host.run_ok(
        &format!(
            "xl list; head -n 1 /proc/stat; for f in /sys/bus/xen-backend/devices/vbd-{domid}-{XVDA}/statistics/*; do echo \"blkback ${{f##*/}} $(cat $f)\"; done"
        ),
        CALL_DEADLINE,
    )?)
}

/// The guest disk run on the reference stack: a fresh host with a bench disk of the SR
/// disk's size and the guest's initramfs on a second disk.
pub fn run_linux(
    initrd: &Path,
    run: u32,
    figures: &mut RunFigures,
) -> Result<DiskProfile, XtaskError> {
    let dir = keel_tests::paths::keel_dir()
        .join("bench-disks")
        .join("guests-linux");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(io("creating the bench disk's directory"))?;
    let disk = dir.join("disk.img");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(SR_DISK_BYTES))
        .map_err(io("creating the bench disk"))?;
    let (payload, initrd_bytes) = initrd_disk(initrd)?;
    let host = reference::boot_with_disks(
        &format!("bench-guests-linux-disk-{run}"),
        HOST_MEMORY_MIB,
        &[&disk, &payload],
    )?;
    let payload_sectors = fs::metadata(&payload)
        .map_err(io("reading the initramfs disk"))?
        .len()
        / 512;
    let device = host.disk_by_sectors(SR_DISK_BYTES / 512)?;
    let payload_device = host.disk_by_sectors(payload_sectors)?;
    let ramdisk = "/tmp/kbench.cpio";
    host.run_ok(
        &format!("head -c {initrd_bytes} {payload_device} > {ramdisk}"),
        CALL_DEADLINE,
    )?;
    let config = host.write_config(DISK_GUEST, &disk_guest_config(ramdisk, &device))?;
    // dom0's own use with no guest, over IDLE_WINDOW (Xen's accounting, as below).
    let dom0_time = |text: &str| {
        parse_xl_list(text)
            .into_iter()
            .find(|(n, _)| n == "Domain-0")
            .map(|(_, t)| t)
    };
    std::thread::sleep(IDLE_SETTLE);
    let idle_from = host.run_ok("xl list", CALL_DEADLINE)?;
    let idle_started = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let idle_to = host.run_ok("xl list", CALL_DEADLINE)?;
    let idle_share = match (dom0_time(&idle_from), dom0_time(&idle_to)) {
        (Some(a), Some(b)) => Some((b - a) / idle_started.elapsed().as_secs_f64()),
        _ => None,
    };
    host.run_ok(&format!("xl create {config}"), CALL_DEADLINE)?;
    let domid = host.run_ok(&format!("xl domid {DISK_GUEST}"), CALL_DEADLINE)?;
    let domid = domid.trim().to_string();
    host.wait_console(DISK_GUEST, START, GUEST_BOOT_DEADLINE)?;
    let before = linux_sample(&host, &domid)?;
    // Polled from here every 5 s: a tight loop in dom0 would cost dom0 the CPU measured.
    let log = reference::console_log(DISK_GUEST);
    let waited = Instant::now();
    loop {
        let reply = host.run(&format!("grep -c '{DONE}' {log}"), CALL_DEADLINE)?;
        if reply.output.trim().parse::<u32>().is_ok_and(|n| n > 0) {
            break;
        }
        if waited.elapsed() > KBENCH_DEADLINE {
            return Err(failed(format!(
                "the Linux guest's kbench did not finish within {} s; console: {}",
                KBENCH_DEADLINE.as_secs(),
                host.machine.log_path().display()
            )));
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let after = linux_sample(&host, &domid)?;
    let console = host.run_ok(&format!("cat {log}"), CALL_DEADLINE)?;
    let lines = guest_lines(console.lines(), "");
    let measured = figures_of(&lines);
    record(figures, &measured, host.machine.log_path())?;
    // What was negotiated, for the profile only (a failure here loses nothing measured).
    let features = host
        .run_ok(
            &format!(
                "xenstore-ls -f /local/domain/0/backend/vbd/{domid}/{XVDA} /local/domain/{domid}/device/vbd/{XVDA} 2>/dev/null | grep -E 'persistent|indirect|ring-page-order|queues|trusted' | sed 's|^/local/domain/||' | tr '\\n' ' '; echo"
            ),
            CALL_DEADLINE,
        )
        .unwrap_or_default();
    let mut profile = DiskProfile::from_guest(&lines, &measured);
    profile.dom0_idle_share = idle_share;
    let delta = |name: &str| xl_time_used(&before, &after, name);
    profile.dom0_cpu_s = delta("Domain-0");
    profile.guest_vcpu_s = delta(DISK_GUEST);
    let cpu = |text: &str| text.lines().find_map(parse_cpu_line);
    if let (Some(c0), Some(c1)) = (cpu(&before), cpu(&after)) {
        profile.dom0_split = Some(CpuSplit::between(&c0, &c1));
    }
    let counters_before = parse_blkback(&before);
    profile.blkback = parse_blkback(&after)
        .into_iter()
        .map(|(name, v)| {
            let was = counters_before
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, v)| *v);
            (name, v.saturating_sub(was))
        })
        .collect();
    profile.features = Some(features.trim().to_string()).filter(|f| !f.is_empty());
    Ok(profile)
}

/// Why a disk row misses, from this run: each stack's time per request in the row, and
/// where dom0's CPU went over the whole run (the profile table).
pub fn miss_cause(
    index: usize,
    keel: Option<&DiskProfile>,
    linux: Option<&DiskProfile>,
    keel_value: f64,
    linux_value: f64,
) -> String {
    let (pattern, block, depth, _) = expected_workloads()[index];
    let per_request_ms = |value: f64| match pattern {
        Workload::SeqRead | Workload::SeqWrite => {
            f64::from(block) / 1e6 / value.max(f64::MIN_POSITIVE) * 1000.0
        }
        Workload::RandRead | Workload::RandWrite => 1000.0 / value.max(f64::MIN_POSITIVE),
    } * f64::from(depth);
    let mut out = format!(
        "each request of the row takes {:.1} ms on Keel, {:.1} ms on Linux (at QD {depth})",
        per_request_ms(keel_value),
        per_request_ms(linux_value)
    );
    let us = |p: Option<&DiskProfile>| p.and_then(DiskProfile::dom0_us_per_request);
    if let (Some(k), Some(l)) = (us(keel), us(linux)) {
        out.push_str(&format!(
            "; over the whole run dom0 spent {k:.0} µs of vCPU time per guest request on Keel, {l:.0} µs on Linux"
        ));
    }
    let idle = |p: Option<&DiskProfile>| p.and_then(|p| p.dom0_idle_share);
    if let (Some(k), Some(l)) = (idle(keel), idle(linux)) {
        out.push_str(&format!(
            " (with no guest running dom0 used {:.0} % of its vCPU on Keel, {:.0} % on Linux)",
            k * 100.0,
            l * 100.0
        ));
    }
    let steal = |p: Option<&DiskProfile>| p.and_then(|p| p.guest_cpu).map(|c| c.iowait);
    if let (Some(k), Some(l)) = (steal(keel), steal(linux)) {
        out.push_str(&format!(
            ", and the guest waited on its disk (iowait) {k:.1} s on Keel, {l:.1} s on Linux"
        ));
    }
    out.push_str(" (the guest disk profile below)");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's lines of one run, each workload taking `ns`.
    fn guest_lines_of(ns: u64) -> Vec<String> {
        expected_workloads()
            .iter()
            .map(|(p, bs, qd, ops)| {
                format!(
                    "bench-storage: xvda {} bs={bs} qd={qd} ops={ops} ns={ns}",
                    p.name()
                )
            })
            .collect()
    }

    #[test]
    fn the_guest_runs_a_quarter_of_the_ops_with_1_mib_sequential_requests() {
        let expected = expected_workloads();
        assert_eq!(expected.len(), 8);
        assert_eq!(expected[0], (Workload::SeqWrite, 1 << 20, 1, 64));
        assert_eq!(expected[1], (Workload::SeqWrite, 1 << 20, 32, 128));
        assert_eq!(expected[4], (Workload::RandWrite, 4096, 1, 2000));
        assert_eq!(expected[7], (Workload::RandRead, 4096, 32, 8000));
        // kbench refuses a divisor that does not divide the ops, so every row must divide.
        for w in standard_workloads() {
            assert_eq!(w.ops % OPS_DIVISOR, 0, "{:?}", w.pattern);
        }
        let wrapper = kbench_wrapper();
        assert!(wrapper.starts_with("#!/bin/sh\n"));
        assert!(
            wrapper.contains("\nKBENCH_OPS_DIVISOR=4 /bin/kbench.bin \"$@\" 1048576\n"),
            "{wrapper}"
        );
        let kbench = include_str!("../bench_storage/kbench.c");
        assert!(kbench.contains("getenv(\"KBENCH_OPS_DIVISOR\")"));
    }

    #[test]
    fn the_wrapper_samples_the_guest_before_and_after_the_workloads() {
        let wrapper = kbench_wrapper();
        let at = |s: &str| {
            wrapper
                .find(s)
                .unwrap_or_else(|| panic!("no {s}: {wrapper}"))
        };
        assert!(at("kbench: start cpu") < at("sleep 10"));
        assert!(at("sleep 10") < at("/bin/kbench.bin"));
        assert!(at("/bin/kbench.bin") < at("kbench: end cpu"));
        // Squeezed: Keel's log splits a guest's console line past its length limit.
        assert!(wrapper.contains("disk $(tr -s ' ' < /sys/block/xvda/stat)"));
    }

    #[test]
    fn figures_are_checked_against_the_expected_workloads() {
        let lines = guest_lines_of(1_000_000_000);
        let figures = figures_of(&lines);
        let values = row_figures(&figures).expect("as expected");
        // 64 MiB in 1 s; 2000 requests in 1 s.
        assert!((values[0] - 67.108864).abs() < 1e-6, "{values:?}");
        assert!((values[4] - 2000.0).abs() < 1e-9, "{values:?}");
        let mut wrong = figures.clone();
        wrong[4].ops = 8000;
        let why = row_figures(&wrong).expect_err("the full op count is refused");
        assert!(
            why.contains("ops=8000") && why.contains("ops=2000"),
            "{why}"
        );
        assert_eq!(
            row_figures(&figures[..3]),
            Err("3 of 8 guest workloads reported".to_string())
        );
    }

    #[test]
    fn proc_stat_and_block_stat_samples_give_the_split_and_the_requests() {
        let start =
            "kbench: start cpu cpu  100 0 50 1000 10 5 5 2 0 0 disk   10 0 80 5 20 0 160 9 0 10 14";
        let end = "kbench: end cpu cpu  150 0 250 1500 410 25 45 12 0 0 disk   1010 3 8080 5 3020 0 24160 9 0 10 14";
        let (c0, d0) = parse_guest_sample(start).expect("start");
        let (c1, d1) = parse_guest_sample(end).expect("end");
        let split = CpuSplit::between(&c0, &c1);
        assert_eq!(split.user, 0.5);
        assert_eq!(split.system, 2.0);
        assert_eq!(split.iowait, 4.0);
        assert_eq!(split.steal, 0.1);
        assert!((split.busy() - 3.1).abs() < 1e-9, "{split:?}");
        let delta = BlockDelta::between(&d0, &d1);
        assert_eq!(
            delta,
            BlockDelta {
                reads: 1000,
                read_sectors: 8000,
                writes: 3000,
                write_sectors: 24000
            }
        );
        assert!(delta.describe().contains("1000 reads of 4 KiB"));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_guest_sample("kbench: start cpu cpu 1 2"), None);
    }

    #[test]
    fn the_profile_reads_the_guests_lines_and_dom0_counters() {
        let mut lines = vec![
            "kbench: blkfront flush diskcache: enabled; persistent grants: enabled; indirect descriptors: enabled;".to_string(),
            "kbench: queue max_hw_sectors_kb=128 max_segments=32".to_string(),
            "kbench: start cpu cpu 0 0 0 0 0 0 0 0 disk 0 0 0 0 0 0 0".to_string(),
        ];
        lines.extend(guest_lines_of(2_000_000_000));
        lines.push("kbench: end cpu cpu 0 0 100 0 0 0 0 0 disk 500 0 1000 0 500 0 1000".into());
        let figures = figures_of(&lines);
        let mut p = DiskProfile::from_guest(&lines, &figures);
        assert_eq!(p.kbench_s, 16.0);
        assert!(p
            .blkfront
            .as_deref()
            .is_some_and(|b| b.starts_with("flush diskcache")));
        assert_eq!(p.guest_requests.map(|d| d.requests()), Some(1000));
        p.dom0_cpu_s = Some(2.0);
        assert_eq!(p.dom0_us_per_request(), Some(2000.0));
        let xl = "Name  ID   Mem VCPUs State Time(s)\nDomain-0 0 1280 1 r----- 41.5\nbench-disk 1 128 1 -b---- 7.25\n";
        assert_eq!(
            parse_xl_list(xl),
            vec![("Domain-0".into(), 41.5), ("bench-disk".into(), 7.25)]
        );
        assert_eq!(
            parse_blkback("blkback rd_req 12\nblkback oo_req 0\nnoise\n"),
            vec![("rd_req".into(), 12), ("oo_req".into(), 0)]
        );
        let table = profile_table(Some(&p), None);
        assert!(
            table.contains("| dom0 vCPU time per guest request | 2000 µs | – |"),
            "{table}"
        );
        assert!(
            table.contains("| kbench's time (Σ of the rows) | 16.0 s | – |"),
            "{table}"
        );
    }

    #[test]
    fn a_data_source_answer_gives_its_double() {
        let answer = "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name><value><double>0.8125</double></value></member></struct></value></param></params></methodResponse>";
        assert_eq!(data_source_value(answer), Some(0.8125));
        assert_eq!(
            data_source_value("<name>Status</name><value>Failure</value>"),
            None
        );
    }

    #[test]
    fn usage_rows_of_a_vm_are_summed_and_quoted_fields_kept_whole() {
        let csv = "vm_uuid,vm_name,tenant,tags,period_start,period_end,vcpu_seconds,memory_gib_hours\r\n\
                   aa,\"Control domain, host\",,,2026-12-03T17:00:00Z,2026-12-03T18:00:00Z,12.500000,0.1\r\n\
                   bb,guest,,,2026-12-03T17:00:00Z,2026-12-03T18:00:00Z,3.000000,0.1\r\n\
                   aa,\"Control domain, host\",,,2026-12-03T18:00:00Z,2026-12-03T19:00:00Z,1.250000,0.1\r\n";
        assert_eq!(usage_vcpu_seconds(csv, "aa"), Some(13.75));
        assert_eq!(usage_vcpu_seconds(csv, "bb"), Some(3.0));
        assert_eq!(usage_vcpu_seconds(csv, "cc"), None);
        assert_eq!(csv_fields("a,\"b,\"\"c\"\"\",d"), vec!["a", "b,\"c\"", "d"]);
    }

    #[test]
    fn linux_gets_the_whole_virtio_disk_as_xvda_and_the_kbench_initramfs() {
        let config = disk_guest_config("/tmp/kbench.cpio", "/dev/vda");
        assert!(
            config.contains("ramdisk = \"/tmp/kbench.cpio\"\n"),
            "{config}"
        );
        assert!(
            config.ends_with("disk = [ \"phy:/dev/vda,xvda,w\" ]\n"),
            "{config}"
        );
        assert!(config.contains("keel_guest=kbench"));
        assert!(config.contains("memory = 128"));
        assert!(!config.contains('\'') && !config.contains('%'));
        assert_eq!(
            guest_lines(
                ["x guest d3: kbench: end\r", "other"].into_iter(),
                "guest d3: "
            ),
            vec!["kbench: end".to_string()]
        );
    }
}
