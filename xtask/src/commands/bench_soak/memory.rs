//! Keel's memory over a soak.
//!
//! The precise figure is Keel's own heap use, asked with xapi's
//! `host.query_data_source(session, host, "keel_heap_used_kib")` when Keel answers it. Until
//! it does (host_metrics' `memory_free` is the machine's, set at boot), the soak watches what
//! the host sees: the resident set of Keel's QEMU process. A heap that grows touches new
//! pages, and those stay resident: a leak shows as a resident set that keeps rising once the
//! warm-up (translated code, socket buffers, the heap's first use) is over. It is an upper
//! bound: QEMU's own buffers move it too.

use std::path::Path;

/// One reading: seconds into the soak, QEMU's resident set and (when Keel reports it) Keel's
/// heap use, in KiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub seconds: f64,
    pub rss_kib: u64,
    pub heap_kib: Option<u64>,
}

/// The data source the soak asks Keel for (`host.query_data_source`).
pub const HEAP_SOURCE: &str = "keel_heap_used_kib";

/// The number in a successful `host.query_data_source` answer (an XML-RPC double).
pub fn data_source_kib(answer: &[u8]) -> Option<u64> {
    data_source_value(answer).map(|number| number as u64)
}

/// The value in a successful `*.query_data_source` answer, if finite and not negative.
pub fn data_source_value(answer: &[u8]) -> Option<f64> {
    if !crate::load::succeeded(answer) {
        return None;
    }
    let text = String::from_utf8_lossy(answer);
    let value = text.split_once("<name>Value</name>")?.1.trim_start();
    let value = value.strip_prefix("<value>")?;
    let value = ["<double>", "<int>", "<i4>", "<i8>", "<string>"]
        .iter()
        .find_map(|tag| value.strip_prefix(tag))
        .unwrap_or(value);
    let number: f64 = value.get(..value.find('<')?)?.trim().parse().ok()?;
    (number.is_finite() && number >= 0.0).then_some(number)
}

/// What the verdict was taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Keel's heap use, as Keel reports it.
    Heap,
    /// The resident set of Keel's QEMU process.
    QemuResidentSet,
}

/// The QEMU process whose command line forwards host port `api_port` (unique per VM).
pub fn qemu_pid(proc_root: &Path, api_port: u16) -> Option<u32> {
    let needle = format!("hostfwd=tcp:127.0.0.1:{api_port}-");
    std::fs::read_dir(proc_root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(proc_root.join(pid.to_string()).join("cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
        })
}

/// `VmRSS` from `/proc/<pid>/status` text, in KiB.
pub fn rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads the resident set of `pid` now.
pub fn read_rss(proc_root: &Path, pid: u32) -> Option<u64> {
    rss_kib(&std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?)
}

/// What the samples say about memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub measure: Measure,
    /// The first reading after the warm-up (the first fifth of the run).
    pub warm_kib: u64,
    /// The last reading.
    pub end_kib: u64,
    /// The most the resident set may grow after the warm-up and still count as flat.
    pub allowed_kib: u64,
}

impl Verdict {
    pub fn growth_kib(&self) -> i64 {
        self.end_kib as i64 - self.warm_kib as i64
    }

    pub fn flat(&self) -> bool {
        self.growth_kib() <= self.allowed_kib as i64
    }
}

/// Growth allowed after the warm-up: 4 MiB or 2 % of the warm figure, whichever is more
/// (QEMU's own buffers move by a few MiB; a leak under this load grows without bound).
pub const ALLOWED_GROWTH_KIB: u64 = 4 << 10;

/// The verdict on samples taken over a run of `run_seconds`, on Keel's heap when every
/// sample after the warm-up has it, else on QEMU's resident set; `None` with fewer than two
/// samples after the warm-up.
pub fn verdict(samples: &[Sample], run_seconds: f64) -> Option<Verdict> {
    let warm_up = run_seconds / 5.0;
    let after: Vec<&Sample> = samples.iter().filter(|s| s.seconds >= warm_up).collect();
    if after.len() < 2 {
        return None;
    }
    let heap: Option<Vec<u64>> = after.iter().map(|s| s.heap_kib).collect();
    let (measure, figures) = match heap {
        Some(heap) => (Measure::Heap, heap),
        None => (
            Measure::QemuResidentSet,
            after.iter().map(|s| s.rss_kib).collect(),
        ),
    };
    let (first, last) = (*figures.first()?, *figures.last()?);
    Some(Verdict {
        measure,
        warm_kib: first,
        end_kib: last,
        allowed_kib: ALLOWED_GROWTH_KIB.max(first / 50),
    })
}

/// At most `rows` samples, evenly spread, the first and last always kept.
pub fn thin(samples: &[Sample], rows: usize) -> Vec<Sample> {
    if samples.len() <= rows || rows < 2 {
        return samples.to_vec();
    }
    (0..rows)
        .map(|i| samples[i * (samples.len() - 1) / (rows - 1)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: &[u64]) -> Vec<Sample> {
        rss.iter()
            .enumerate()
            .map(|(i, &rss_kib)| Sample {
                seconds: i as f64 * 10.0,
                rss_kib,
                heap_kib: None,
            })
            .collect()
    }

    #[test]
    fn rss_comes_from_the_vmrss_line() {
        let status = "Name:\tqemu-system-x86\nVmPeak:\t 999 kB\nVmRSS:\t  301224 kB\n";
        assert_eq!(rss_kib(status), Some(301_224));
        assert_eq!(rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn warm_up_growth_is_forgiven_and_later_growth_is_not() {
        // 100 s run: the warm-up is the first 20 s (samples at 0 and 10 s).
        let flat = samples(&[
            100_000, 200_000, 250_000, 251_000, 252_000, 253_000, 250_500, 252_000, 253_000,
            254_000, 254_500,
        ]);
        let v = verdict(&flat, 100.0);
        assert_eq!(v.map(|v| (v.warm_kib, v.end_kib)), Some((250_000, 254_500)));
        assert!(v.is_some_and(|v| v.flat()));

        let leaking = samples(&[
            100_000, 200_000, 250_000, 252_000, 254_000, 256_000, 258_000, 260_000, 262_000,
            264_000, 266_000,
        ]);
        let v = verdict(&leaking, 100.0);
        assert_eq!(v.map(|v| v.growth_kib()), Some(16_000));
        assert!(v.is_some_and(|v| !v.flat()));
    }

    #[test]
    fn keels_heap_decides_when_every_sample_after_the_warm_up_has_it() {
        let mut all = samples(&[100_000, 200_000, 250_000, 300_000, 350_000]);
        for (i, s) in all.iter_mut().enumerate() {
            s.heap_kib = (i > 0).then_some(20_000 + i as u64);
        }
        let v = verdict(&all, 50.0);
        assert_eq!(v.map(|v| v.measure), Some(Measure::Heap));
        assert!(v.is_some_and(|v| v.flat() && v.warm_kib == 20_001));
        // One reading without it: the resident set decides, and here it grows.
        all[3].heap_kib = None;
        let v = verdict(&all, 50.0);
        assert_eq!(v.map(|v| v.measure), Some(Measure::QemuResidentSet));
        assert!(v.is_some_and(|v| !v.flat()));
    }

    #[test]
    fn data_source_answers_are_read_as_kib() {
        let ok = b"<struct><member><name>Status</name><value>Success</value></member><member><name>Value</name><value><double>18432.0</double></value></member></struct>";
        assert_eq!(data_source_kib(ok), Some(18_432));
        let fault = b"<member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data><value>MESSAGE_METHOD_UNKNOWN</value></data></array></value></member>";
        assert_eq!(data_source_kib(fault), None);
        let nan = b"<name>Status</name><value>Success</value><name>Value</name><value><double>nan</double></value>";
        assert_eq!(data_source_kib(nan), None);
    }

    #[test]
    fn large_machines_get_two_percent() {
        let v = verdict(&samples(&[0, 0, 1_000_000, 1_019_000]), 60.0);
        assert_eq!(v.map(|v| v.allowed_kib), Some(20_000));
        assert!(v.is_some_and(|v| v.flat()));
    }

    #[test]
    fn too_few_samples_give_no_verdict() {
        assert_eq!(verdict(&samples(&[1, 2]), 100.0), None);
        assert_eq!(verdict(&[], 100.0), None);
    }

    #[test]
    fn thinning_keeps_the_ends() {
        let all = samples(&(0..100).collect::<Vec<_>>());
        let few = thin(&all, 5);
        assert_eq!(
            few.iter().map(|s| s.rss_kib).collect::<Vec<_>>(),
            [0, 24, 49, 74, 99]
        );
        assert_eq!(thin(&all[..3], 5).len(), 3);
    }

    #[test]
    fn this_process_is_found_by_its_command_line_only_when_it_matches() {
        assert_eq!(qemu_pid(Path::new("/proc"), 1), None);
        let me = std::process::id();
        assert!(read_rss(Path::new("/proc"), me).is_some_and(|kib| kib > 0));
    }
}
