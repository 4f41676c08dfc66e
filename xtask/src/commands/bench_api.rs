//! `cargo xtask bench api`: how fast Keel's management API comes up and how many calls it
//! serves, against a Linux baseline on the same QEMU flags: Debian's 6.1 kernel with a
//! busybox initramfs that gets a DHCP lease and serves a file with busybox httpd.
//!
//! Boot to API-ready is QEMU start to the first successful answer: a root login for Keel
//! (which includes verifying the argon2 hash), a `GET /` for the baseline. Throughput is
//! `host.get_record` calls for Keel and static `GET`s for busybox httpd, through the same
//! port forward, sequentially and with 16 and 64 concurrent clients.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_tests::credentials::test_credentials;
use keel_tests::image::Profile;
use keel_tests::linux::{self, HTTP_INIT, NET_MODULES};
use keel_tests::prereq::{self, Tool};
use keel_tests::{AccelChoice, Machine, NicModel, Vm};

use crate::bench_report::record_section;
use crate::commands::build::build_image;
use crate::error::XtaskError;
use crate::load::{self, Connections, PhaseResult};
use crate::stats::{summarize, Summary};
use crate::{date, progress};

/// How long a system may take to answer its first request.
const READY_DEADLINE: Duration = Duration::from_secs(180);

/// (clients, requests per client) of the throughput phases.
const PHASES: [(usize, usize); 3] = [(1, 300), (16, 40), (64, 15)];

fn keel_machine(image: &Path, name: String) -> Machine {
    Machine::new(name)
        .image(image)
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word())
}

fn linux_machine(kernel: &Path, initrd: &Path, name: String) -> Machine {
    Machine::new(name)
        .image(kernel)
        .without_debug_exit()
        .append("console=ttyS0 quiet")
        .arg("-initrd")
        .arg(initrd.as_os_str().to_owned())
        .nic_with_api(NicModel::VirtioNet)
}

fn port_of(vm: &Vm) -> Result<u16, XtaskError> {
    vm.api_port()
        .ok_or_else(|| XtaskError::BenchFailed("the VM has no API port".into()))
}

/// Polls until `attempt` answers, returning the time since QEMU started.
fn time_to_first_answer(vm: &Vm, mut attempt: impl FnMut(u16) -> bool) -> Result<f64, XtaskError> {
    let port = port_of(vm)?;
    let start = Instant::now();
    while start.elapsed() < READY_DEADLINE {
        if attempt(port) {
            return Ok(vm.uptime().as_secs_f64() * 1000.0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(XtaskError::BenchFailed(format!(
        "no answer within {} s; console: {}",
        READY_DEADLINE.as_secs(),
        vm.log_path().display()
    )))
}

/// A cheap probe with a short timeout: QEMU's user networking accepts the host side of a
/// connection before the guest listens, and its retries towards the guest back off for
/// seconds, so a long-lived probe connection would measure slirp, not the guest.
fn answers_get(port: u16, path: &str) -> bool {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    load::one_shot(port, request.as_bytes(), Duration::from_millis(250))
        .is_ok_and(|(status, _)| status == 200)
}

fn keel_login(port: u16) -> Option<String> {
    let request = load::xmlrpc_request(
        "session.login_with_password",
        &["root", &test_credentials().password],
    );
    let (status, body) = load::one_shot(port, &request, Duration::from_secs(10)).ok()?;
    let text = String::from_utf8_lossy(&body);
    (status == 200 && text.contains("Success"))
        .then(|| load::first_ref(&body))
        .flatten()
}

/// Keel is API-ready when root can log in: probe cheaply until the server answers, then log in.
fn keel_ready(port: u16) -> bool {
    answers_get(port, "/") && keel_login(port).is_some()
}

fn linux_ready(port: u16) -> bool {
    answers_get(port, "/index.html")
}

struct Figures {
    keel_ready: Summary,
    linux_ready: Summary,
    keel_phases: Vec<PhaseResult>,
    keel_per_request: PhaseResult,
    linux_phases: Vec<PhaseResult>,
}

pub fn run(runs: u32, record: bool) -> Result<(), XtaskError> {
    prereq::ensure(&[Tool::Qemu])?;
    let (image, _) = build_image(Profile::Release)?;
    let step = progress::step("preparing the Linux baseline (Debian kernel, busybox initramfs)");
    let kernel = linux::kernel()?;
    let initrd = linux::initramfs("http.cpio", HTTP_INIT, NET_MODULES)?;
    step.done();
    let accel = AccelChoice::Auto.resolve();

    let step = progress::step(format!("boot to API-ready, {runs} boots each ({accel})"));
    let (mut keel_ms, mut linux_ms) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let vm = keel_machine(&image, format!("bench-api-keel-{run}")).boot()?;
        let ms = time_to_first_answer(&vm, keel_ready)?;
        progress::note(format!("keel {run}/{runs}: first login after {ms:.0} ms"));
        keel_ms.push(ms);
    }
    for run in 1..=runs {
        let vm = linux_machine(&kernel, &initrd, format!("bench-api-linux-{run}")).boot()?;
        let ms = time_to_first_answer(&vm, linux_ready)?;
        progress::note(format!("linux {run}/{runs}: first answer after {ms:.0} ms"));
        linux_ms.push(ms);
    }
    step.done();

    let step = progress::step("API throughput");
    let vm = keel_machine(&image, "bench-api-keel-load".into()).boot()?;
    time_to_first_answer(&vm, keel_ready)?;
    let port = port_of(&vm)?;
    let session = keel_login(port).ok_or_else(|| XtaskError::BenchFailed("login failed".into()))?;
    let (_, hosts) = load::one_shot(
        port,
        &load::xmlrpc_request("host.get_all", &[&session]),
        Duration::from_secs(10),
    )
    .map_err(|error| XtaskError::Io {
        what: "host.get_all".into(),
        error,
    })?;
    let host =
        load::first_ref(&hosts).ok_or_else(|| XtaskError::BenchFailed("no host ref".into()))?;
    let get_record = load::xmlrpc_request("host.get_record", &[&session, &host]);
    let keel_phases: Vec<PhaseResult> = PHASES
        .iter()
        .map(|&(c, n)| load::run_phase(port, c, n, &get_record, Connections::KeepAlive))
        .collect();
    let keel_per_request = load::run_phase(port, 16, 40, &get_record, Connections::PerRequest);
    drop(vm);

    let vm = linux_machine(&kernel, &initrd, "bench-api-linux-load".into()).boot()?;
    time_to_first_answer(&vm, linux_ready)?;
    let port = port_of(&vm)?;
    let get = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    // busybox httpd closes after every answer: one connection per request.
    let linux_phases: Vec<PhaseResult> = PHASES
        .iter()
        .map(|&(c, n)| load::run_phase(port, c, n, get, Connections::PerRequest))
        .collect();
    drop(vm);
    step.done();

    let (Some(keel_ready), Some(linux_ready)) = (summarize(&keel_ms), summarize(&linux_ms)) else {
        return Err(XtaskError::BenchFailed("no boots were measured".into()));
    };
    let figures = Figures {
        keel_ready,
        linux_ready,
        keel_phases,
        keel_per_request,
        linux_phases,
    };
    let section = markdown(&figures, runs, &accel.to_string());
    println!("{section}");
    if record {
        let command = format!("cargo xtask bench api --runs {runs} --record");
        let section = section.replacen(
            "RECORDED",
            &format!("Recorded {} with `{command}`.", date::now_utc()),
            1,
        );
        let doc = record_section("api", &section)?;
        println!("recorded in {}", doc.display());
    }
    Ok(())
}

fn markdown(f: &Figures, runs: u32, accel: &str) -> String {
    let (begin, end) = crate::bench_report::section_markers("api");
    let mut out = format!("{begin}\n## Management API\n\nRECORDED\n\n");
    out.push_str(&format!(
        "- Machine: {accel}, {} host cores; both systems on q35, 256 MiB, virtio-net with a user-net port forward\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    out.push_str("- Keel: `host.get_record` over XML-RPC with a logged-in session (keep-alive unless noted)\n");
    out.push_str("- Linux baseline: Debian 6.1 kernel, busybox initramfs (DHCP, `httpd` serving a 3-byte file; it closes after every answer)\n\n");
    out.push_str(&format!("### Boot to API-ready ({runs} boots each)\n\n"));
    out.push_str("| System | first answer | min | median | max |\n|---|---|---:|---:|---:|\n");
    out.push_str(&format!(
        "| Keel | root login (argon2 verify included) | {:.0} ms | {:.0} ms | {:.0} ms |\n",
        f.keel_ready.min, f.keel_ready.median, f.keel_ready.max
    ));
    out.push_str(&format!(
        "| Linux + busybox | `GET /index.html` | {:.0} ms | {:.0} ms | {:.0} ms |\n",
        f.linux_ready.min, f.linux_ready.median, f.linux_ready.max
    ));
    out.push_str(&format!(
        "\nRatio (Linux median / Keel median): **{:.1}×** faster (goal ≥ 20×).\n\n",
        f.linux_ready.median / f.keel_ready.median
    ));
    out.push_str("### Requests per second\n\n| Clients | Keel calls/s | p50 | p99 | Linux req/s | p50 | p99 | ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (k, l) in f.keel_phases.iter().zip(&f.linux_phases) {
        out.push_str(&format!(
            "| {} | {:.0} | {:.1} ms | {:.1} ms | {:.0} | {:.1} ms | {:.1} ms | {:.2}× |\n",
            k.clients,
            k.per_second(),
            k.percentile(50.0),
            k.percentile(99.0),
            l.per_second(),
            l.percentile(50.0),
            l.percentile(99.0),
            k.per_second() / l.per_second().max(f64::MIN_POSITIVE)
        ));
    }
    let p = &f.keel_per_request;
    out.push_str(&format!(
        "\nKeel with a new connection per call ({} clients): {:.0} calls/s, p50 {:.1} ms, p99 {:.1} ms.\n",
        p.clients,
        p.per_second(),
        p.percentile(50.0),
        p.percentile(99.0)
    ));
    let tally = |phases: &[&PhaseResult]| -> (usize, usize) {
        (
            phases.iter().map(|r| r.failures).sum(),
            phases.iter().map(|r| r.requests).sum(),
        )
    };
    let keel: Vec<&PhaseResult> = f.keel_phases.iter().chain([p]).collect();
    let linux: Vec<&PhaseResult> = f.linux_phases.iter().collect();
    let ((kf, kn), (lf, ln)) = (tally(&keel), tally(&linux));
    out.push_str(&format!(
        "Failed requests: Keel {kf} of {kn}, Linux {lf} of {ln}.\n"
    ));
    out.push_str(&end);
    out.push('\n');
    out
}
