//! What a machine under Xen was doing when it stopped making progress.
//!
//! QEMU 7.2's TCG emulation of nested SVM sometimes wedges the whole machine: Keel, Xen and
//! the guests all go silent while QEMU keeps one emulated CPU spinning (docs/xen.md,
//! "Emulator stalls"). A test that times out under Xen cannot tell that apart from a Keel
//! bug by its console alone, so the harness asks both sides before it gives up:
//! - QEMU, through the machine's monitor socket: each emulated CPU's state (`info cpus`:
//!   halted or not) and registers (`info registers -a`: where it is, interrupts on or off);
//! - Xen, through its serial console: the debug keys `r` (each physical CPU's run queue) and
//!   `q` (every domain's vCPUs: running, runnable, blocked, event pending). CTRL-A three
//!   times switches the console's input to Xen and, after the keys, back to dom0.
//!
//! A Xen that answers its keys is alive and its dump says which vCPU waits for what; a Xen
//! that does not answer within [`XEN_ANSWER`] is wedged below Keel (a Keel bug cannot stop
//! Xen's own serial interrupt handler).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::machine::{file_name_for, Vm};

/// A console silent this long while a test waits on it gets the machine probed (a healthy
/// host under test prints more often: guests' consoles, Keel's log).
pub const SILENCE: Duration = Duration::from_secs(90);

/// How long Xen gets to answer a debug key: under a host loaded ten times over, Xen's
/// answer has taken more than 8 s; a wedged machine never answers.
pub const XEN_ANSWER: Duration = Duration::from_secs(30);

/// How long one monitor command may take.
const MONITOR_REPLY: Duration = Duration::from_secs(5);

/// CTRL-A three times: Xen's console input switches between dom0 and Xen.
const SWITCH_INPUT: &[u8] = b"\x01\x01\x01";

/// What Xen prints when Ctrl-A ×3 switches its console input (`… to Xen` or `… to DOM0`):
/// printed by Xen's own serial handler, so it also says Xen is alive.
const SWITCHED: &str = "*** Serial input to ";

/// Switches Xen's console input to Xen, checking which way Ctrl-A ×3 went (a probe that
/// found a wedged machine may have left it switched): `false` if the input cannot be sent.
fn switch_input_to_xen(vm: &Vm, before: usize) -> bool {
    for _ in 0..2 {
        let seen = vm.serial_lines().len().max(before);
        if vm.send_serial(SWITCH_INPUT).is_err() {
            return false;
        }
        match switch_message(vm, seen, Duration::from_secs(10)) {
            // Toward dom0: it was left with Xen; once more.
            Some(line) if !line.contains("to Xen") => continue,
            // To Xen, or Xen said nothing (wedged, or very slow): send the key all the same.
            _ => return true,
        }
    }
    true
}

/// The latest of Xen's input-switch messages among the serial lines from the `from`-th on,
/// waiting up to `wait` for one.
fn switch_message(vm: &Vm, from: usize, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let found = vm
            .serial_lines_from(from)
            .into_iter()
            .rev()
            .find(|l| l.contains(SWITCHED));
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A fresh path for the monitor socket of machine `name`.
pub fn monitor_socket(name: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "keel-mon-{}-{}-{unique}.sock",
        file_name_for(name),
        std::process::id()
    ))
}

/// The findings of [`probe`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StallReport {
    /// QEMU's `info cpus` and each CPU's instruction pointer and flags line, or why not.
    pub emulator: Vec<String>,
    /// Whether Xen printed its answer to the debug keys within [`XEN_ANSWER`].
    pub xen_answered: bool,
    /// Serial lines that arrived while the probe ran (Xen's dump, or anything the machine
    /// printed once poked).
    pub serial_lines_during_probe: usize,
}

impl StallReport {
    /// The report as lines for an error message or a log.
    pub fn lines(&self) -> Vec<String> {
        if self.emulator.is_empty() && !self.xen_answered && self.serial_lines_during_probe == 0 {
            return Vec::new();
        }
        let mut lines = vec![format!(
            "stall probe: Xen {} its debug keys ('r', 'q'); {} serial lines during the probe",
            if self.xen_answered {
                "answered"
            } else {
                "did NOT answer"
            },
            self.serial_lines_during_probe
        )];
        lines.extend(
            self.emulator
                .iter()
                .map(|l| format!("stall probe: qemu: {l}")),
        );
        lines
    }
}

/// Asks QEMU and Xen what `vm` is doing (see the module's documentation); `full` also asks
/// Xen for every domain's vCPUs (`q`, a long dump) when it answers.
pub fn probe(vm: &Vm, full: bool) -> StallReport {
    let mut report = StallReport::default();
    if let Some(socket) = vm.monitor_socket() {
        report.emulator = emulator_state(socket);
    }
    let before = vm.serial_lines().len();
    let alive = |vm: &Vm| {
        vm.serial_lines_from(before)
            .iter()
            .any(|l| l.contains("'r' pressed") || l.contains(SWITCHED))
    };
    if switch_input_to_xen(vm, before) && vm.send_serial(b"r").is_ok() {
        let deadline = Instant::now() + XEN_ANSWER;
        while Instant::now() < deadline && !alive(vm) {
            std::thread::sleep(Duration::from_millis(200));
        }
        if full && alive(vm) {
            let _ = vm.send_serial(b"q");
            std::thread::sleep(Duration::from_secs(2));
        }
        // Back to dom0 (Xen says so when it is alive; a wedged one says nothing).
        let seen = vm.serial_lines().len();
        if vm.send_serial(SWITCH_INPUT).is_ok() && alive(vm) {
            switch_message(vm, seen, Duration::from_secs(5));
        }
    }
    // A late answer still counts: only a Xen that never answered is wedged.
    report.xen_answered = alive(vm);
    report.serial_lines_during_probe = vm.serial_lines().len().saturating_sub(before);
    report
}

/// `info cpus`, and from `info registers -a` each CPU's header, `RIP=` line and the line
/// with `RSP=` (where the stack is: a dom0 spinning in an interrupt handler says whether its
/// stack had run past its bottom).
fn emulator_state(socket: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    match monitor_command(socket, "info cpus") {
        Ok(out) => lines.extend(
            out.lines()
                .map(str::trim)
                .filter(|l| l.contains("CPU"))
                .map(String::from),
        ),
        Err(e) => lines.push(format!("monitor unreachable: {e}")),
    }
    if let Ok(out) = monitor_command(socket, "info registers -a") {
        lines.extend(
            out.lines()
                .map(str::trim)
                .filter(|l| l.starts_with("CPU#") || l.starts_with("RIP=") || l.contains("RSP="))
                .map(String::from),
        );
    }
    lines
}

/// Runs one human monitor command and returns what it printed.
fn monitor_command(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_millis(300)))?;
    // The banner ends with the first prompt.
    read_until_prompt(&mut stream)?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    read_until_prompt(&mut stream)
}

fn read_until_prompt(stream: &mut UnixStream) -> std::io::Result<String> {
    let deadline = Instant::now() + MONITOR_REPLY;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"(qemu) ") {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    // The monitor echoes with terminal escapes; keep the printable text.
    let text: String = String::from_utf8_lossy(&out)
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_report_says_nothing_and_a_silent_xen_is_named() {
        assert!(StallReport::default().lines().is_empty());
        let report = StallReport {
            emulator: vec!["* CPU #0: thread_id=7 (halted)".into()],
            xen_answered: false,
            serial_lines_during_probe: 0,
        };
        let lines = report.lines();
        assert!(lines[0].contains("did NOT answer"), "{lines:?}");
        assert!(lines[1].contains("(halted)"), "{lines:?}");
    }

    #[test]
    fn monitor_sockets_are_distinct_per_machine() {
        assert_ne!(monitor_socket("a b"), monitor_socket("a b"));
        assert!(monitor_socket("x")
            .to_string_lossy()
            .contains("keel-mon-x-"));
    }
}
