//! `cargo xtask bench soak`: N clients (default 64) for M minutes (default 10) against one
//! Keel: mixed API calls, `event.from` long-polls and VDI transfers (see [`clients`]). It
//! reports errors, p50/p99 latency per kind of work and Keel's memory over time (see
//! [`memory`]), and passes only with no error at all and flat memory.
//!
//! A benchmark, not a CI test: it takes minutes and its verdict depends on the machine.
//! Everything goes to 127.0.0.1 through QEMU's port forward.

pub mod clients;
pub mod memory;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_tests::credentials::test_credentials;
use keel_tests::image::Profile;
use keel_tests::prereq::{self, Tool};
use keel_tests::{AccelChoice, Machine, NicModel, Pattern as Line};

use crate::bench_report::{record_section, section_markers};
use crate::cli::SoakOptions;
use crate::commands::build::build_image;
use crate::error::XtaskError;
use crate::load::{self, xmlrpc_request};
use crate::{date, progress};

use clients::{Role, Tally, Target};
use memory::{Measure, Sample, Verdict};

/// Each transfer moves a VDI of this size in and out.
const TRANSFER_BYTES: usize = 4 << 20;
/// The SR's disk (NVMe, sparse).
const SR_DISK_BYTES: u64 = 1 << 30;
/// Longest `event.from` wait the watchers ask for.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// Client `i` starts `i` times this after the soak starts.
const RAMP_STEP: Duration = Duration::from_millis(50);
/// How long Keel may take to accept the first login.
const LOGIN_DEADLINE: Duration = Duration::from_secs(180);

fn failed(why: impl Into<String>) -> XtaskError {
    XtaskError::BenchFailed(why.into())
}

/// Every `OpaqueRef:…` in an answer, in order.
fn all_refs(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    text.split("OpaqueRef:")
        .skip(1)
        .map(|rest| format!("OpaqueRef:{}", rest.split('<').next().unwrap_or("")))
        .collect()
}

fn call(port: u16, request: &[u8], what: &str) -> Result<Vec<u8>, XtaskError> {
    match load::one_shot(port, request, Duration::from_secs(30)) {
        Ok((200, body)) if load::succeeded(&body) => Ok(body),
        Ok((status, body)) => Err(failed(format!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        ))),
        Err(error) => Err(failed(format!("{what}: {error}"))),
    }
}

/// Logs in as root once the API answers.
fn login(port: u16) -> Result<String, XtaskError> {
    let request = xmlrpc_request(
        "session.login_with_password",
        &["root", &test_credentials().password, "1.0", "keel-soak"],
    );
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = load::one_shot(port, &request, Duration::from_secs(10)) {
            if load::succeeded(&body) {
                if let Some(session) = load::first_ref(&body) {
                    return Ok(session);
                }
            }
        }
        if start.elapsed() > LOGIN_DEADLINE {
            return Err(failed("root could not log in"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Finds the host, its metrics and an SR that takes VDIs.
fn discover(port: u16, session: String) -> Result<Target, XtaskError> {
    let body = call(
        port,
        &xmlrpc_request("host.get_all", &[&session]),
        "host.get_all",
    )?;
    let host = load::first_ref(&body).ok_or_else(|| failed("no host"))?;
    let body = call(
        port,
        &xmlrpc_request("host.get_metrics", &[&session, &host]),
        "host.get_metrics",
    )?;
    let metrics = load::first_ref(&body).ok_or_else(|| failed("no host_metrics"))?;
    let body = call(
        port,
        &xmlrpc_request("SR.get_all", &[&session]),
        "SR.get_all",
    )?;
    let mut target = Target {
        port,
        session,
        host,
        metrics,
        sr: String::new(),
        transfer_bytes: TRANSFER_BYTES,
        event_wait: EVENT_WAIT,
        started: Instant::now(),
    };
    let mut why = String::from("no SR");
    for sr in all_refs(&body) {
        target.sr = sr;
        // One round trip proves the SR takes VDIs.
        match clients::transfer_once(&target, u64::MAX, 0) {
            Ok(()) => return Ok(target),
            Err(e) => why = e,
        }
    }
    Err(failed(format!("no SR takes a VDI transfer: {why}")))
}

/// Reads QEMU's resident set and, while Keel answers it, Keel's heap use every `interval`
/// until `stop`.
fn sample_memory(
    pid: u32,
    target: Target,
    interval: Duration,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
) {
    let ask_heap = xmlrpc_request(
        "host.query_data_source",
        &[&target.session, &target.host, memory::HEAP_SOURCE],
    );
    let mut heap_reported = true;
    loop {
        let heap_kib = heap_reported
            .then(|| load::one_shot(target.port, &ask_heap, Duration::from_secs(30)).ok())
            .flatten()
            .and_then(|(_, body)| memory::data_source_kib(&body));
        // Keel either reports it from the start or not at all.
        heap_reported &= heap_kib.is_some();
        if let Some(rss_kib) = memory::read_rss(Path::new("/proc"), pid) {
            let sample = Sample {
                seconds: target.started.elapsed().as_secs_f64(),
                rss_kib,
                heap_kib,
            };
            samples
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(sample);
        }
        let next = Instant::now() + interval;
        while Instant::now() < next {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Everything one soak measured.
pub struct Soak {
    pub clients: usize,
    pub minutes: u32,
    pub accel: String,
    pub seconds: f64,
    /// Per role, in [`Role`] order.
    pub tallies: Vec<(Role, Tally)>,
    pub samples: Vec<Sample>,
    pub memory: Option<Verdict>,
    /// Whether Keel still answered after the load stopped.
    pub alive_after: bool,
}

impl Soak {
    pub fn errors(&self) -> usize {
        self.tallies.iter().map(|(_, t)| t.errors).sum::<usize>() + usize::from(!self.alive_after)
    }

    pub fn passed(&self) -> bool {
        self.errors() == 0 && self.memory.is_some_and(|m| m.flat())
    }
}

pub fn run(options: &SoakOptions) -> Result<(), XtaskError> {
    prereq::ensure(&[Tool::Qemu])?;
    let (image, _) = build_image(Profile::Release)?;
    let accel = AccelChoice::Auto.resolve();
    let step = progress::step(format!("booting Keel with an NVMe SR ({accel})"));
    let vm = Machine::new("bench-soak")
        .image(&image)
        .nic_with_api(NicModel::VirtioNet)
        .nvme_disk(SR_DISK_BYTES)
        .append(test_credentials().cmdline_word())
        .boot()?;
    vm.wait_for(
        Line::starts_with(keel_tests::kernel_lines::READY_PREFIX),
        keel_tests::BOOT_DEADLINE,
    )?;
    let port = vm
        .api_port()
        .ok_or_else(|| failed("the VM has no API port"))?;
    let pid = memory::qemu_pid(Path::new("/proc"), port)
        .ok_or_else(|| failed("QEMU's process was not found in /proc"))?;
    let target = discover(port, login(port)?)?;
    step.done();

    let run_for = Duration::from_secs(u64::from(options.minutes) * 60);
    let step = progress::step(format!(
        "{} clients for {} min (console: {})",
        options.clients,
        options.minutes,
        vm.log_path().display()
    ));
    let started = Instant::now();
    let target = Target { started, ..target };
    let deadline = started + run_for;
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let interval = (run_for / 60).clamp(Duration::from_secs(2), Duration::from_secs(10));
    let sampler = {
        let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
        let target = target.clone();
        std::thread::spawn(move || sample_memory(pid, target, interval, stop, samples))
    };
    let threads: Vec<_> = (0..options.clients)
        .map(|index| {
            let role = Role::of(index, options.clients);
            let target = target.clone();
            (
                role,
                std::thread::spawn(move || {
                    // Clients arrive one after another, not as one burst of SYNs: QEMU's
                    // user networking resets some connections of a 64-connection burst
                    // whatever the guest (bench api's Linux baseline loses some too).
                    let arrival = started + RAMP_STEP * index as u32;
                    std::thread::sleep(arrival.saturating_duration_since(Instant::now()));
                    clients::run_client(role, index, &target, deadline)
                }),
            )
        })
        .collect();
    let mut tallies: Vec<(Role, Tally)> = Vec::new();
    for (role, thread) in threads {
        let tally = thread.join().unwrap_or_else(|_| Tally {
            clients: 1,
            operations: 1,
            errors: 1,
            first_errors: vec!["the client thread panicked".into()],
            ..Tally::default()
        });
        match tallies.iter_mut().find(|(r, _)| *r == role) {
            Some((_, all)) => all.merge(tally),
            None => tallies.push((role, tally)),
        }
    }
    tallies.sort_by_key(|(role, _)| *role);
    let seconds = started.elapsed().as_secs_f64();
    // One last reading after the load, then Keel must still answer.
    std::thread::sleep(interval.min(Duration::from_secs(3)));
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let alive_after = call(
        port,
        &xmlrpc_request("host.get_record", &[&target.session, &target.host]),
        "host.get_record after the soak",
    )
    .is_ok();
    drop(vm);
    step.done();

    let samples = samples
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let soak = Soak {
        clients: options.clients,
        minutes: options.minutes,
        accel: accel.to_string(),
        seconds,
        memory: memory::verdict(&samples, seconds),
        samples,
        tallies,
        alive_after,
    };
    let section = markdown(&soak);
    println!("{section}");
    if options.record {
        let command = format!(
            "cargo xtask bench soak --clients {} --minutes {} --record",
            options.clients, options.minutes
        );
        let section = section.replacen(
            "RECORDED",
            &format!("Recorded {} with `{command}`.", date::now_utc()),
            1,
        );
        let doc = record_section("soak", &section)?;
        println!("recorded in {}", doc.display());
    }
    if soak.passed() {
        Ok(())
    } else {
        Err(failed(format!(
            "the soak failed: {} errors, memory {}",
            soak.errors(),
            memory_words(soak.memory)
        )))
    }
}

fn memory_words(verdict: Option<Verdict>) -> String {
    let on = |v: &Verdict| match v.measure {
        Measure::Heap => "Keel's heap",
        Measure::QemuResidentSet => "QEMU's resident set",
    };
    match verdict {
        Some(v) if v.flat() => format!(
            "flat ({} {:+.1} MiB after the warm-up)",
            on(&v),
            v.growth_kib() as f64 / 1024.0
        ),
        Some(v) => format!(
            "growing ({} {:+.1} MiB after the warm-up, {:.1} MiB allowed)",
            on(&v),
            v.growth_kib() as f64 / 1024.0,
            v.allowed_kib as f64 / 1024.0
        ),
        None => "not measured (too few samples)".into(),
    }
}

/// The `docs/benchmarks.md` section (`RECORDED` stands for the date line).
pub fn markdown(soak: &Soak) -> String {
    let (begin, end) = section_markers("soak");
    let mut out = format!("{begin}\n## Soak\n\nRECORDED\n\n");
    out.push_str(&format!(
        "- Machine: {}, {} host cores; Keel on q35, 256 MiB, virtio-net with a user-net port forward, a 1 GiB NVMe disk as its SR\n",
        soak.accel,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    out.push_str(&format!(
        "- Load: {} clients for {} min ({:.0} s measured), one logged-in session, XML-RPC over keep-alive connections, clients starting {} ms apart; one client in eight long-polls `event.from` (VDI, SR, task; {} s waits), one in eight moves {} MiB VDIs in and out and compares them\n",
        soak.clients,
        soak.minutes,
        soak.seconds,
        RAMP_STEP.as_millis(),
        EVENT_WAIT.as_secs(),
        TRANSFER_BYTES >> 20
    ));
    let heap = soak.samples.iter().any(|s| s.heap_kib.is_some());
    out.push_str(if heap {
        "- Memory: Keel's heap use (`host.query_data_source` `keel_heap_used_kib`) and the resident set of its QEMU process; flat means the heap grows by at most 4 MiB (or 2 %) after the first fifth of the run\n\n"
    } else {
        "- Memory: the resident set of Keel's QEMU process (Keel does not report its heap use yet: no `keel_heap_used_kib` data source); flat means it grows by at most 4 MiB (or 2 %) after the first fifth of the run\n\n"
    });
    out.push_str("| Work | clients | operations | errors | per second | p50 | p99 |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (role, tally) in &soak.tallies {
        let mut sorted = tally.clone();
        let (p50, p99) = (sorted.percentile(50.0), sorted.percentile(99.0));
        let per_second =
            (tally.operations - tally.errors) as f64 / soak.seconds.max(f64::MIN_POSITIVE);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {per_second:.1} | {p50:.1} ms | {p99:.1} ms |\n",
            role.name(),
            tally.clients,
            tally.operations,
            tally.errors,
        ));
    }
    let events: usize = soak.tallies.iter().map(|(_, t)| t.events).sum();
    out.push_str(&format!(
        "\n`event.from` delivered {events} events; a long-poll's latency is how long it waited for one.\n"
    ));
    if !soak.alive_after {
        out.push_str("\n**Keel did not answer `host.get_record` after the load stopped.**\n");
    }
    let errors: Vec<&String> = soak
        .tallies
        .iter()
        .flat_map(|(_, t)| &t.first_errors)
        .collect();
    if !errors.is_empty() {
        out.push_str("\nFirst errors:\n\n");
        for error in errors {
            out.push_str(&format!("- `{}`\n", error.replace('`', "'")));
        }
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    if heap {
        out.push_str("\n| Time | Keel's heap | QEMU resident set |\n|---:|---:|---:|\n");
    } else {
        out.push_str("\n| Time | QEMU resident set |\n|---:|---:|\n");
    }
    for sample in memory::thin(&soak.samples, 11) {
        let heap_cell = match (heap, sample.heap_kib) {
            (false, _) => String::new(),
            (true, Some(kib)) => format!(" {:.1} MiB |", mib(kib)),
            (true, None) => " – |".into(),
        };
        out.push_str(&format!(
            "| {:.0} s |{heap_cell} {:.1} MiB |\n",
            sample.seconds,
            mib(sample.rss_kib)
        ));
    }
    out.push_str(&format!(
        "\nVerdict: **{}** — {} errors, memory {}.\n",
        if soak.passed() { "passed" } else { "failed" },
        soak.errors(),
        memory_words(soak.memory)
    ));
    out.push_str(&end);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soak(errors: usize, growth_kib: u64) -> Soak {
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                seconds: f64::from(i) * 6.0,
                rss_kib: 300_000 + if i >= 5 { growth_kib } else { 0 },
                heap_kib: None,
            })
            .collect();
        let calls = Tally {
            clients: 48,
            operations: 1000,
            errors,
            latencies_ms: (1..=1000).map(f64::from).collect(),
            first_errors: (0..errors.min(1))
                .map(|_| "host.get_record: HTTP 500".into())
                .collect(),
            events: 0,
        };
        Soak {
            clients: 64,
            minutes: 1,
            accel: "tcg".into(),
            seconds: 60.0,
            memory: memory::verdict(&samples, 60.0),
            samples,
            tallies: vec![(Role::Calls, calls)],
            alive_after: true,
        }
    }

    #[test]
    fn passes_only_with_no_errors_and_flat_memory() {
        assert!(soak(0, 1024).passed());
        assert!(!soak(1, 0).passed());
        assert!(!soak(0, 64 << 10).passed());
        let mut dead = soak(0, 0);
        dead.alive_after = false;
        assert!(!dead.passed());
        assert_eq!(dead.errors(), 1);
    }

    #[test]
    fn the_section_has_figures_errors_memory_and_the_verdict() {
        let text = markdown(&soak(1, 0));
        let (begin, end) = section_markers("soak");
        assert!(text.starts_with(&begin) && text.ends_with(&format!("{end}\n")));
        assert!(
            text.contains("| mixed API calls | 48 | 1000 | 1 | "),
            "{text}"
        );
        assert!(text.contains(" | 500.0 ms | 990.0 ms |"), "{text}");
        assert!(text.contains("- `host.get_record: HTTP 500`"));
        assert!(text.contains("| 0 s | 293.0 MiB |"));
        assert!(text.contains(
            "Verdict: **failed** — 1 errors, memory flat (QEMU's resident set +0.0 MiB after the warm-up)."
        ));
        let mut with_heap = soak(0, 0);
        for (i, sample) in with_heap.samples.iter_mut().enumerate() {
            sample.heap_kib = Some(10_240 + i as u64);
        }
        with_heap.memory = memory::verdict(&with_heap.samples, 60.0);
        let text = markdown(&with_heap);
        assert!(
            text.contains("| Time | Keel's heap | QEMU resident set |"),
            "{text}"
        );
        assert!(text.contains("| 0 s | 10.0 MiB | 293.0 MiB |"), "{text}");
        assert!(
            text.contains("memory flat (Keel's heap +0.0 MiB after the warm-up)"),
            "{text}"
        );
        assert!(markdown(&soak(0, 0)).contains("Verdict: **passed**"));
    }

    #[test]
    fn every_reference_in_an_answer_is_found() {
        let body =
            b"<array><data><value>OpaqueRef:a</value><value>OpaqueRef:b-1</value></data></array>";
        assert_eq!(all_refs(body), ["OpaqueRef:a", "OpaqueRef:b-1"]);
        assert!(all_refs(b"<array/>").is_empty());
    }
}
