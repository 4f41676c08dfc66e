//! Booting one VM and watching it: the [`Machine`] builder and the running [`Vm`].
//!
//! QEMU's stdout carries the serial console (`-serial stdio`) and its stderr QEMU's own
//! messages; one reader thread per pipe splits them into lines, appends them to
//! `target/keel/test-logs/<name>.log` as they arrive (so a hung boot still leaves a log) and
//! feeds the shared [`Transcript`] that [`Vm::wait_for`] blocks on. Dropping a [`Vm`] kills
//! QEMU, also while a failing test unwinds, and then prints where the log is.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::accel::AccelChoice;
use crate::console::{display_line, Line, LineSplitter, Pattern, Stream, Transcript, WaitOutcome};
use crate::error::{HarnessError, TAIL_LINES};
use crate::image::{self, ImageError};
use crate::paths;
use crate::prereq::{self, Tool};
use crate::qemu::{
    BootSource, DiskBus, DiskSpec, NicModel, NicSpec, SerialMode, VmConfig, QEMU_BINARY,
};
use crate::xen::{self, XenBoot, DEFAULT_XEN_MEMORY_MIB};

/// Size of scratch disks when a test does not care: 64 MiB.
pub const DEFAULT_DISK_BYTES: u64 = 64 << 20;

/// How long [`Drop`] and [`Vm::wait_exit`] wait for the reader threads to drain QEMU's
/// output after it has exited.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum DiskRequest {
    /// A sparse file of this size, created in the VM's scratch directory.
    Scratch { bus: DiskBus, bytes: u64 },
    /// An existing raw image.
    File { bus: DiskBus, path: PathBuf },
}

/// Describes a VM to boot. Defaults: the test image, 256 MiB, accelerator `auto`, no disks,
/// no NIC, `keel.debug_exit=0xf4` with QEMU's `isa-debug-exit` device.
#[derive(Debug, Clone)]
pub struct Machine {
    name: String,
    image: Option<PathBuf>,
    memory_mib: u32,
    accel: AccelChoice,
    disks: Vec<DiskRequest>,
    nic: Option<(NicModel, bool)>,
    cmdline: Vec<String>,
    extra_args: Vec<OsString>,
    debug_exit: bool,
    boot: BootSource,
    /// Boot under Xen with these extra modules after dom0 (see [`Machine::under_xen`]).
    xen_modules: Option<Vec<PathBuf>>,
    /// See [`Machine::xen_host`].
    xen_host: bool,
}

impl Machine {
    /// `name` names the console log (`target/keel/test-logs/<name>.log`); use one per test.
    pub fn new(name: impl Into<String>) -> Self {
        Machine {
            name: name.into(),
            image: None,
            memory_mib: 256,
            accel: AccelChoice::Auto,
            disks: Vec::new(),
            nic: None,
            cmdline: Vec::new(),
            extra_args: Vec::new(),
            debug_exit: true,
            boot: BootSource::Kernel,
            xen_modules: None,
            xen_host: false,
        }
    }

    /// Boots Debian's Xen 4.17 with the image as its PVH dom0 (the command line becomes
    /// dom0's). The VM gets at least [`DEFAULT_XEN_MEMORY_MIB`] (half for dom0) and TCG
    /// unless an accelerator is chosen afterwards: Xen does not run on a KVM without
    /// `vmx`/`svm`, which is what `auto` would otherwise fall back from.
    pub fn under_xen(mut self) -> Self {
        self.memory_mib = self.memory_mib.max(DEFAULT_XEN_MEMORY_MIB);
        self.accel = AccelChoice::Tcg;
        self.xen_modules.get_or_insert_with(Vec::new);
        self
    }

    /// Adds a module after dom0's kernel (Linux's initramfs); implies [`Machine::under_xen`].
    pub fn xen_module(self, path: impl Into<PathBuf>) -> Self {
        let mut machine = self.under_xen();
        if let Some(modules) = machine.xen_modules.as_mut() {
            modules.push(path.into());
        }
        machine
    }

    /// Network-boots instead of `-kernel`: the NIC's iPXE ROM fetches `bootfile` from QEMU's
    /// TFTP server serving `tftp_root` (a PXE bundle from `cargo xtask image --pxe`). The
    /// bundle's own command line applies; [`Machine::append`] does not.
    pub fn boot_network(mut self, tftp_root: impl Into<PathBuf>, bootfile: &str) -> Self {
        self.boot = BootSource::Network {
            tftp_root: tftp_root.into(),
            bootfile: bootfile.to_string(),
        };
        self
    }

    /// Boots an ISO from the CD-ROM drive instead of `-kernel` (`cargo xtask image --iso`).
    pub fn boot_cdrom(mut self, iso: impl Into<PathBuf>) -> Self {
        self.boot = BootSource::Cdrom(iso.into());
        self
    }

    /// Makes the VM able to run the Xen that a boot medium carries ([`Machine::boot_network`],
    /// [`Machine::boot_cdrom`]): TCG and the machine [`Machine::under_xen`] gets (SVM with
    /// nested paging, an IOMMU, virtio behind it), without loading Xen through `-kernel`.
    pub fn xen_host(mut self) -> Self {
        self.accel = AccelChoice::Tcg;
        self.xen_host = true;
        self
    }

    /// Boots this image instead of the one from [`image::for_tests`].
    pub fn image(mut self, path: impl Into<PathBuf>) -> Self {
        self.image = Some(path.into());
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn accel(mut self, accel: AccelChoice) -> Self {
        self.accel = accel;
        self
    }

    /// Adds a sparse scratch disk of `bytes` on virtio-blk, deleted when the VM is dropped.
    pub fn virtio_blk_disk(mut self, bytes: u64) -> Self {
        self.disks.push(DiskRequest::Scratch {
            bus: DiskBus::VirtioBlk,
            bytes,
        });
        self
    }

    /// Adds a sparse scratch disk of `bytes` on NVMe, deleted when the VM is dropped.
    pub fn nvme_disk(mut self, bytes: u64) -> Self {
        self.disks.push(DiskRequest::Scratch {
            bus: DiskBus::Nvme,
            bytes,
        });
        self
    }

    /// Attaches an existing raw image (kept after the VM is dropped).
    pub fn disk_file(mut self, path: impl Into<PathBuf>, bus: DiskBus) -> Self {
        self.disks.push(DiskRequest::File {
            bus,
            path: path.into(),
        });
        self
    }

    /// Adds a NIC on user networking without any host port forward.
    pub fn nic(mut self, model: NicModel) -> Self {
        self.nic = Some((model, false));
        self
    }

    /// Adds a NIC and forwards a free host port to the management API; see [`Vm::api_port`].
    pub fn nic_with_api(mut self, model: NicModel) -> Self {
        self.nic = Some((model, true));
        self
    }

    /// Adds words to the kernel command line (`keel.log=debug`, ...).
    pub fn append(mut self, words: impl Into<String>) -> Self {
        self.cmdline.push(words.into());
        self
    }

    /// Adds a raw QEMU argument at the end of the command line.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Leaves out `isa-debug-exit` and `keel.debug_exit=`, to see the kernel's own
    /// `keel.panic=` behaviour.
    pub fn without_debug_exit(mut self) -> Self {
        self.debug_exit = false;
        self
    }

    /// Starts QEMU. Fails when there is no image, QEMU is missing, or QEMU cannot start.
    pub fn boot(self) -> Result<Vm, HarnessError> {
        let image = match (&self.boot, &self.image) {
            // The medium carries its own image.
            (BootSource::Network { .. } | BootSource::Cdrom(_), _) => PathBuf::new(),
            (BootSource::Kernel | BootSource::Xen(_), Some(path)) if path.is_file() => path.clone(),
            (BootSource::Kernel | BootSource::Xen(_), Some(path)) => {
                return Err(ImageError::Missing(path.clone()).into())
            }
            (BootSource::Kernel | BootSource::Xen(_), None) => image::for_tests()?,
        };
        prereq::check(&[Tool::Qemu])?;
        if matches!(self.boot, BootSource::Network { .. }) {
            prereq::check(&[Tool::IpxeRom])?;
        }
        let boot = match &self.xen_modules {
            Some(modules) => {
                prereq::check(&[Tool::Xen])?;
                let mut xen = XenBoot::new(xen::hypervisor_image()?, self.memory_mib);
                xen.modules = modules.clone();
                BootSource::Xen(xen)
            }
            None => self.boot.clone(),
        };
        let mut scratch = ScratchDir::none();
        let mut disks = Vec::new();
        for disk in &self.disks {
            match disk {
                DiskRequest::File { bus, path } => disks.push(DiskSpec {
                    path: path.clone(),
                    bus: *bus,
                }),
                DiskRequest::Scratch { bus, bytes } => {
                    let path = scratch.sparse_file(&self.name, disks.len(), *bytes)?;
                    disks.push(DiskSpec { path, bus: *bus });
                }
            }
        }
        let api_port = match self.nic {
            Some((_, true)) => Some(free_local_port()?),
            _ => None,
        };
        let mut config = VmConfig::new(image, self.accel.resolve(), SerialMode::Pipe);
        config.memory_mib = self.memory_mib;
        config.disks = disks;
        config.nic = self.nic.map(|(model, _)| NicSpec {
            model,
            api_host_port: api_port,
        });
        config.cmdline = self.cmdline.clone();
        config.extra_args = self.extra_args.clone();
        config.boot = boot;
        config.xen_host = self.xen_host;
        let monitor = matches!(config.boot, BootSource::Xen(_))
            .then(|| crate::xen_stall::monitor_socket(&self.name));
        if let Some(socket) = &monitor {
            config.extra_args.push("-monitor".into());
            config
                .extra_args
                .push(format!("unix:{},server,nowait", socket.display()).into());
        }
        if !self.debug_exit {
            config.debug_exit = None;
        }
        let mut command = Command::new(QEMU_BINARY);
        command.args(config.args());
        let mut vm = Vm::spawn(&self.name, command, &config.display_command())?;
        vm.scratch = scratch;
        vm.api_port = api_port;
        vm.monitor = monitor;
        Ok(vm)
    }
}

/// A console line together with when it arrived, measured from QEMU's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    pub text: String,
    pub since_start: Duration,
}

/// A running QEMU. Killed when dropped.
pub struct Vm {
    name: String,
    child: Mutex<Child>,
    transcript: Arc<Transcript>,
    log_path: PathBuf,
    started: Instant,
    command: String,
    scratch: ScratchDir,
    api_port: Option<u16>,
    /// QEMU's stdin: the serial console's input (Xen's debug keys, [`crate::xen_stall`]).
    serial_in: Mutex<Option<ChildStdin>>,
    /// The QEMU monitor's socket of a machine under Xen ([`crate::xen_stall`]).
    monitor: Option<PathBuf>,
    /// The console log, shared with the reader threads (one file offset for all writers).
    log: Arc<Mutex<File>>,
}

impl Vm {
    /// Starts `command` with piped output, logging to `target/keel/test-logs/<name>.log`.
    /// Separate from [`Machine::boot`] so that the process handling is testable with a
    /// stand-in for QEMU.
    pub(crate) fn spawn(name: &str, mut command: Command, shown: &str) -> Result<Vm, HarnessError> {
        let logs = paths::test_logs_dir();
        std::fs::create_dir_all(&logs).map_err(|error| HarnessError::Io {
            what: format!("creating {}", logs.display()),
            error,
        })?;
        let log_path = logs.join(format!("{}.log", file_name_for(name)));
        let mut log = File::create(&log_path).map_err(|error| HarnessError::Io {
            what: format!("creating {}", log_path.display()),
            error,
        })?;
        // The log starts with the command so that a failure can be reproduced by hand.
        let _ = writeln!(log, "# {shown}");
        let program = command.get_program().to_string_lossy().into_owned();
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| HarnessError::Spawn { program, error })?;
        let serial_in = Mutex::new(child.stdin.take());
        let transcript = Arc::new(Transcript::new());
        let log = Arc::new(Mutex::new(log));
        // A pipe that is missing cannot produce lines: mark it closed at once.
        match child.stdout.take() {
            Some(out) => start_reader(out, Stream::Serial, &transcript, &log),
            None => transcript.close(Stream::Serial),
        }
        match child.stderr.take() {
            Some(err) => start_reader(err, Stream::QemuStderr, &transcript, &log),
            None => transcript.close(Stream::QemuStderr),
        }
        Ok(Vm {
            name: name.to_string(),
            child: Mutex::new(child),
            transcript,
            log_path,
            started,
            command: shown.to_string(),
            scratch: ScratchDir::none(),
            api_port: None,
            serial_in,
            monitor: None,
            log,
        })
    }

    /// Waits up to `timeout` for the first serial line (since boot) matching `pattern` and
    /// returns it. Returns early with [`HarnessError::Exited`] if QEMU ends first.
    pub fn wait_for(
        &self,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        self.wait_for_line(pattern, timeout).map(|line| line.text)
    }

    /// Like [`Vm::wait_for`], also telling when the line arrived.
    pub fn wait_for_line(
        &self,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<ConsoleLine, HarnessError> {
        let pattern = pattern.into();
        let started = Instant::now();
        let deadline = started + timeout;
        // Probes in a row whose key Xen did not answer: two end the wait (one may be a Xen
        // slowed by a loaded host).
        let mut unanswered = 0;
        loop {
            // Under Xen, a console silent for [`xen_stall::SILENCE`] gets Xen asked whether
            // it is alive: a wedged machine (the emulator's) ends the wait at once.
            let slice_end = match self.monitor {
                Some(_) => deadline.min(Instant::now() + crate::xen_stall::SILENCE),
                None => deadline,
            };
            match self.transcript.wait_for(&pattern, slice_end) {
                WaitOutcome::Found(Line { text, at, .. }) => {
                    return Ok(ConsoleLine {
                        text,
                        since_start: at.saturating_duration_since(self.started),
                    })
                }
                WaitOutcome::TimedOut if Instant::now() < deadline => {
                    let silent = self
                        .transcript
                        .last_serial_at()
                        .is_none_or(|at| at.elapsed() >= crate::xen_stall::SILENCE);
                    if silent {
                        let decisive = unanswered >= 1;
                        let report = self.xen_stall_report_with(false, decisive);
                        if report.xen_answered || report.lines().is_empty() {
                            unanswered = 0;
                        } else {
                            unanswered += 1;
                            if unanswered >= 2 {
                                return Err(self.timeout_error(pattern, started.elapsed(), report));
                            }
                        }
                    }
                }
                WaitOutcome::TimedOut => {
                    // Say what the machine was doing (under Xen: Xen's view and QEMU's).
                    let report = self.xen_stall_report();
                    return Err(self.timeout_error(pattern, timeout, report));
                }
                WaitOutcome::Closed => {
                    let status = self.poll_exit(Instant::now() + DRAIN);
                    self.transcript.wait_closed(Instant::now() + DRAIN);
                    return Err(HarnessError::Exited {
                        pattern,
                        status,
                        tail: self.transcript.tail(TAIL_LINES),
                        log: self.log_path.clone(),
                    });
                }
            }
        }
    }

    fn timeout_error(
        &self,
        pattern: Pattern,
        waited: Duration,
        report: crate::xen_stall::StallReport,
    ) -> HarnessError {
        let mut tail = self.transcript.tail(TAIL_LINES);
        tail.extend(report.lines());
        HarnessError::Timeout {
            pattern,
            waited,
            tail,
            log: self.log_path.clone(),
        }
    }

    /// Waits up to `timeout` for QEMU to exit and returns its status.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        match self.poll_exit(Instant::now() + timeout) {
            Some(status) => {
                self.transcript.wait_closed(Instant::now() + DRAIN);
                Ok(status)
            }
            None => Err(HarnessError::StillRunning {
                waited: timeout,
                tail: self.transcript.tail(TAIL_LINES),
                log: self.log_path.clone(),
            }),
        }
    }

    /// Every serial line so far.
    pub fn serial_lines(&self) -> Vec<String> {
        self.transcript.serial_lines()
    }

    /// The last console lines (both streams), as error reports show them.
    pub fn tail(&self, lines: usize) -> Vec<String> {
        self.transcript.tail(lines)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The QEMU command line, shell-quoted.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The host port forwarded to the management API, with [`Machine::nic_with_api`].
    pub fn api_port(&self) -> Option<u16> {
        self.api_port
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Types `bytes` on the serial console (QEMU's stdin).
    pub fn send_serial(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut input = self
            .serial_in
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match input.as_mut() {
            Some(stdin) => stdin.write_all(bytes).and_then(|()| stdin.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// The QEMU monitor's socket (machines under Xen only).
    pub fn monitor_socket(&self) -> Option<&Path> {
        self.monitor.as_deref()
    }

    /// For a machine under Xen that stopped making progress: what each emulated CPU and Xen
    /// say ([`crate::xen_stall::StallReport`]), also written to the log. Empty otherwise.
    pub fn xen_stall_report(&self) -> crate::xen_stall::StallReport {
        self.xen_stall_report_with(true, true)
    }

    /// [`Vm::xen_stall_report`]; `full` also asks Xen for every domain's vCPUs (`q`); a
    /// report that is not `decisive` (a first unanswered probe while a wait goes on) is
    /// logged without the wedged verdict that [`crate::emulator`] counts.
    fn xen_stall_report_with(&self, full: bool, decisive: bool) -> crate::xen_stall::StallReport {
        if self.monitor.is_none() || !matches!(self.lock_child().try_wait(), Ok(None)) {
            return crate::xen_stall::StallReport::default();
        }
        let report = crate::xen_stall::probe(self, full);
        // Through the readers' own handle: a second one would be overwritten at their offset.
        if let Ok(mut log) = self.log.lock() {
            for line in report.lines() {
                let line = if decisive {
                    line
                } else {
                    line.replace(crate::emulator::WEDGED_MARKER, "did not answer (yet)")
                };
                let _ = writeln!(log, "# {line}");
            }
        }
        report
    }

    /// The serial lines from the `from`-th on.
    pub fn serial_lines_from(&self, from: usize) -> Vec<String> {
        self.transcript
            .serial_lines()
            .into_iter()
            .skip(from)
            .collect()
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Polls for QEMU's exit until `deadline`; `None` if it is still running.
    fn poll_exit(&self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Ok(Some(status)) = self.lock_child().try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        {
            let mut child = self.lock_child();
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.transcript.wait_closed(Instant::now() + DRAIN);
        if let Some(socket) = &self.monitor {
            let _ = std::fs::remove_file(socket);
        }
        if std::thread::panicking() {
            eprintln!(
                "keel-tests: console log of '{}': {}",
                self.name,
                self.log_path.display()
            );
        }
    }
}

fn start_reader(
    source: impl Read + Send + 'static,
    stream: Stream,
    transcript: &Arc<Transcript>,
    log: &Arc<Mutex<File>>,
) {
    let transcript = Arc::clone(transcript);
    let log = Arc::clone(log);
    std::thread::spawn(move || pump(source, stream, &transcript, &log));
}

/// Copies one of QEMU's outputs into the transcript and the log until end of file.
fn pump(mut source: impl Read, stream: Stream, transcript: &Transcript, log: &Mutex<File>) {
    let mut splitter = LineSplitter::default();
    let mut buffer = [0u8; 4096];
    let record = |text: String| {
        let shown = display_line(&Line {
            stream,
            text: text.clone(),
            at: Instant::now(),
        });
        if let Ok(mut log) = log.lock() {
            let _ = writeln!(log, "{shown}");
        }
        transcript.push(stream, text);
    };
    loop {
        match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => buffer
                .get(..n)
                .into_iter()
                .flat_map(|bytes| splitter.feed(bytes))
                .for_each(record),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if let Some(text) = splitter.finish() {
        record(text);
    }
    transcript.close(stream);
}

/// A per-VM temporary directory for scratch disks, removed on drop.
struct ScratchDir {
    path: Option<PathBuf>,
}

impl ScratchDir {
    fn none() -> Self {
        ScratchDir { path: None }
    }

    /// Creates a sparse raw file of `bytes` for disk number `index`.
    fn sparse_file(
        &mut self,
        vm_name: &str,
        index: usize,
        bytes: u64,
    ) -> Result<PathBuf, HarnessError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = match &self.path {
            Some(dir) => dir.clone(),
            None => {
                let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
                let dir = std::env::temp_dir().join(format!(
                    "keel-{}-{}-{unique}",
                    file_name_for(vm_name),
                    std::process::id()
                ));
                std::fs::create_dir_all(&dir).map_err(|error| HarnessError::Io {
                    what: format!("creating {}", dir.display()),
                    error,
                })?;
                self.path = Some(dir.clone());
                dir
            }
        };
        let path = dir.join(format!("disk{index}.img"));
        File::create(&path)
            .and_then(|file| file.set_len(bytes))
            .map_err(|error| HarnessError::Io {
                what: format!("creating {}", path.display()),
                error,
            })?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.path {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; QEMU binds it a moment later).
fn free_local_port() -> Result<u16, HarnessError> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| HarnessError::Io {
            what: "finding a free local port".into(),
            error,
        })
}

/// `name` with everything but letters, digits, `-`, `_` and `.` replaced by `_`.
pub fn file_name_for(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match cleaned.trim_start_matches('.') {
        "" => "vm".to_string(),
        trimmed => trimmed.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// A shell standing in for QEMU.
    fn fake(name: &str, script: &str) -> Vm {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        match Vm::spawn(name, command, script) {
            Ok(vm) => vm,
            Err(error) => panic!("could not start the fake: {error}"),
        }
    }

    fn process_alive(pid: u32) -> bool {
        // A zombie still has a /proc entry; its state letter is Z.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    #[test]
    fn file_names_are_sanitized() {
        assert_eq!(file_name_for("boot::ready"), "boot__ready");
        assert_eq!(file_name_for("../etc/passwd"), "_etc_passwd");
        assert_eq!(file_name_for(""), "vm");
        assert_eq!(file_name_for("bench-boot-3"), "bench-boot-3");
    }

    #[test]
    fn wait_for_returns_the_matching_line_and_exit_status_is_reported() {
        let vm = fake(
            "selftest-match",
            "printf 'hello\\r\\nkeel: ready (keel 0.1.0, boot 1.0 ms)\\n'; exit 3",
        );
        let line = vm.wait_for(Pattern::starts_with("keel: ready"), Duration::from_secs(10));
        assert_eq!(
            line.ok().as_deref(),
            Some("keel: ready (keel 0.1.0, boot 1.0 ms)")
        );
        let status = vm.wait_exit(Duration::from_secs(10));
        assert_eq!(status.ok().and_then(|s| s.code()), Some(3));
        assert_eq!(
            vm.serial_lines(),
            ["hello", "keel: ready (keel 0.1.0, boot 1.0 ms)"]
        );
    }

    #[test]
    fn log_file_has_the_command_serial_lines_and_qemu_messages() {
        let vm = fake("selftest-log", "echo to-serial; echo to-stderr >&2");
        assert!(vm.wait_exit(Duration::from_secs(10)).is_ok());
        let log = std::fs::read_to_string(vm.log_path()).unwrap_or_default();
        assert!(
            log.starts_with("# echo to-serial; echo to-stderr >&2\n"),
            "{log}"
        );
        assert!(log.contains("\nto-serial\n"), "{log}");
        assert!(log.contains("[qemu] to-stderr\n"), "{log}");
        assert!(vm.log_path().ends_with("test-logs/selftest-log.log"));
    }

    #[test]
    fn timeout_error_carries_the_last_40_lines() {
        let vm = fake(
            "selftest-timeout",
            "i=0; while [ $i -lt 60 ]; do echo line $i; i=$((i+1)); done; exec sleep 30",
        );
        let start = Instant::now();
        let error = vm.wait_for("never", Duration::from_millis(500));
        assert!(start.elapsed() < Duration::from_secs(10));
        match error {
            Err(HarnessError::Timeout { tail, log, .. }) => {
                assert_eq!(tail.len(), 40);
                assert_eq!(tail.first().map(String::as_str), Some("line 20"));
                assert_eq!(tail.last().map(String::as_str), Some("line 59"));
                assert_eq!(log, vm.log_path());
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn exit_before_the_line_is_reported_at_once_with_status() {
        let vm = fake("selftest-exited", "echo booting; exit 1");
        let start = Instant::now();
        match vm.wait_for("keel: ready", Duration::from_secs(60)) {
            Err(HarnessError::Exited { status, tail, .. }) => {
                assert_eq!(status.and_then(|s| s.code()), Some(1));
                assert_eq!(tail, ["booting"]);
            }
            other => panic!("expected an early exit, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn wait_exit_times_out_on_a_process_that_keeps_running() {
        let vm = fake("selftest-still-running", "exec sleep 30");
        assert!(matches!(
            vm.wait_exit(Duration::from_millis(200)),
            Err(HarnessError::StillRunning { .. })
        ));
    }

    #[test]
    fn drop_kills_the_process() {
        let vm = fake("selftest-drop", "echo up; exec sleep 30");
        assert!(vm.wait_for("up", Duration::from_secs(10)).is_ok());
        let pid = vm.lock_child().id();
        assert!(process_alive(pid));
        drop(vm);
        assert!(!process_alive(pid));
    }

    #[test]
    fn drop_kills_the_process_while_a_test_panics() {
        let (sender, receiver) = std::sync::mpsc::channel();
        let outcome = std::thread::spawn(move || {
            let vm = fake("selftest-panic", "exec sleep 30");
            let _ = sender.send(vm.lock_child().id());
            panic!("simulated test failure");
        })
        .join();
        assert!(outcome.is_err());
        let pid = receiver.recv();
        assert!(pid.is_ok_and(|pid| !process_alive(pid)));
    }

    #[test]
    fn killed_process_reports_its_signal() {
        let vm = fake("selftest-signal", "kill -9 $$");
        let status = vm.wait_exit(Duration::from_secs(10));
        assert_eq!(status.ok().and_then(|s| s.signal()), Some(9));
    }

    #[test]
    fn scratch_disks_are_sparse_and_removed_with_their_directory() {
        let mut scratch = ScratchDir::none();
        let path = scratch.sparse_file("selftest-scratch", 0, DEFAULT_DISK_BYTES);
        let path = match path {
            Ok(path) => path,
            Err(error) => panic!("{error}"),
        };
        let meta = std::fs::metadata(&path);
        assert_eq!(
            meta.as_ref().map(|m| m.len()).ok(),
            Some(DEFAULT_DISK_BYTES)
        );
        use std::os::unix::fs::MetadataExt;
        assert!(meta.is_ok_and(|m| m.blocks() * 512 < DEFAULT_DISK_BYTES / 2));
        let second = scratch.sparse_file("selftest-scratch", 1, 4096);
        assert_eq!(
            second.ok().and_then(|p| p.parent().map(Path::to_path_buf)),
            path.parent().map(Path::to_path_buf)
        );
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn boot_refuses_an_image_that_does_not_exist() {
        let result = Machine::new("selftest-no-image")
            .image("/nonexistent/keel.elf")
            .boot();
        assert!(
            matches!(result, Err(HarnessError::Image(ImageError::Missing(path))) if path == Path::new("/nonexistent/keel.elf"))
        );
    }
}
