//! The console transcript: lines read from QEMU, and waiting for one with a deadline.
//!
//! Reader threads split QEMU's output into lines ([`LineSplitter`]) and push them into a
//! shared [`Transcript`]; tests block in [`Transcript::wait_for`] until a serial line matches,
//! the deadline passes, or QEMU closes its output (it exited), whichever comes first.

use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Which of QEMU's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The guest's serial console (QEMU's stdout).
    Serial,
    /// QEMU's own messages (its stderr).
    QemuStderr,
}

/// One complete line and when the harness received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
    pub at: Instant,
}

/// What a console line must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// The line contains this text anywhere.
    Contains(String),
    /// The line begins with this text.
    StartsWith(String),
}

impl Pattern {
    pub fn contains(text: impl Into<String>) -> Self {
        Pattern::Contains(text.into())
    }

    pub fn starts_with(text: impl Into<String>) -> Self {
        Pattern::StartsWith(text.into())
    }

    pub fn matches(&self, line: &str) -> bool {
        match self {
            Pattern::Contains(text) => line.contains(text.as_str()),
            Pattern::StartsWith(text) => line.starts_with(text.as_str()),
        }
    }
}

impl From<&str> for Pattern {
    fn from(text: &str) -> Self {
        Pattern::Contains(text.to_string())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Contains(text) => write!(f, "a line containing {text:?}"),
            Pattern::StartsWith(text) => write!(f, "a line starting with {text:?}"),
        }
    }
}

/// Splits a byte stream into lines: `\n` ends a line, a `\r` before it is dropped, and
/// bytes that are not UTF-8 are shown as U+FFFD rather than lost.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes and returns the lines they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                lines.push(Self::finish_line(std::mem::take(&mut self.pending)));
            } else {
                self.pending.push(byte);
            }
        }
        lines
    }

    /// The unterminated last line at the end of the stream, if any.
    pub fn finish(self) -> Option<String> {
        (!self.pending.is_empty()).then(|| Self::finish_line(self.pending))
    }

    fn finish_line(mut bytes: Vec<u8>) -> String {
        while bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    Found(Line),
    /// The deadline passed first.
    TimedOut,
    /// The serial stream ended (QEMU exited) without a matching line.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    lines: Vec<Line>,
    serial_closed: bool,
    stderr_closed: bool,
}

/// All lines seen so far, shared between reader threads and the test.
#[derive(Debug, Default)]
pub struct Transcript {
    state: Mutex<State>,
    changed: Condvar,
}

impl Transcript {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A reader thread that panicked leaves consistent data behind (pushes are atomic
        // under the lock), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn push(&self, stream: Stream, text: String) {
        self.lock().lines.push(Line {
            stream,
            text,
            at: Instant::now(),
        });
        self.changed.notify_all();
    }

    /// Marks a stream as ended (its reader saw end of file).
    pub fn close(&self, stream: Stream) {
        let mut state = self.lock();
        match stream {
            Stream::Serial => state.serial_closed = true,
            Stream::QemuStderr => state.stderr_closed = true,
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Whether both of QEMU's outputs have ended.
    pub fn all_closed(&self) -> bool {
        let state = self.lock();
        state.serial_closed && state.stderr_closed
    }

    /// Waits until every stream has ended or `deadline` passes; returns whether all ended.
    pub fn wait_closed(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        loop {
            if state.serial_closed && state.stderr_closed {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = match self.changed.wait_timeout(state, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// The first serial line (since the start of the boot) matching `pattern`, waiting
    /// until `deadline` for it to appear.
    pub fn wait_for(&self, pattern: &Pattern, deadline: Instant) -> WaitOutcome {
        let mut scanned = 0;
        let mut state = self.lock();
        loop {
            let found = state.lines[scanned..]
                .iter()
                .find(|line| line.stream == Stream::Serial && pattern.matches(&line.text));
            if let Some(line) = found {
                return WaitOutcome::Found(line.clone());
            }
            scanned = state.lines.len();
            if state.serial_closed {
                return WaitOutcome::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return WaitOutcome::TimedOut;
            }
            state = match self.changed.wait_timeout(state, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// When the last serial line arrived (`None` before the first).
    pub fn last_serial_at(&self) -> Option<Instant> {
        self.lock()
            .lines
            .iter()
            .rev()
            .find(|line| line.stream == Stream::Serial)
            .map(|line| line.at)
    }

    /// Every serial line so far.
    pub fn serial_lines(&self) -> Vec<String> {
        self.lock()
            .lines
            .iter()
            .filter(|line| line.stream == Stream::Serial)
            .map(|line| line.text.clone())
            .collect()
    }

    /// The last `n` lines of both streams, QEMU's own marked as such, for error reports.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let state = self.lock();
        let start = state.lines.len().saturating_sub(n);
        state.lines[start..].iter().map(display_line).collect()
    }
}

/// A line as it appears in logs and error reports.
pub fn display_line(line: &Line) -> String {
    match line.stream {
        Stream::Serial => line.text.clone(),
        Stream::QemuStderr => format!("[qemu] {}", line.text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn splitter_handles_crlf_partial_lines_and_bad_utf8() {
        let mut splitter = LineSplitter::default();
        assert_eq!(splitter.feed(b"one\r\ntw"), vec!["one"]);
        assert_eq!(splitter.feed(b"o\n\nthr\xffee"), vec!["two", ""]);
        assert_eq!(splitter.finish(), Some("thr\u{fffd}ee".to_string()));
        assert_eq!(LineSplitter::default().finish(), None);
    }

    #[test]
    fn patterns_match_as_documented() {
        assert!(Pattern::from("ready").matches("keel: ready (keel 0.1.0)"));
        assert!(Pattern::starts_with("keel: ready").matches("keel: ready (keel 0.1.0)"));
        assert!(!Pattern::starts_with("keel: ready").matches("[ 0.1] INFO keel: ready"));
        assert!(!Pattern::contains("nvme").matches("virtio-blk"));
    }

    #[test]
    fn wait_finds_earlier_lines_and_ignores_qemu_stderr() {
        let transcript = Transcript::new();
        transcript.push(Stream::QemuStderr, "keel: ready (fake, from qemu)".into());
        transcript.push(
            Stream::Serial,
            "keel: ready (keel 0.1.0, boot 1.0 ms)".into(),
        );
        transcript.push(Stream::Serial, "later".into());
        let deadline = Instant::now() + Duration::from_secs(1);
        match transcript.wait_for(&Pattern::from("keel: ready"), deadline) {
            WaitOutcome::Found(line) => {
                assert_eq!(line.stream, Stream::Serial);
                assert_eq!(line.text, "keel: ready (keel 0.1.0, boot 1.0 ms)");
            }
            other => panic!("expected a match, got {other:?}"),
        }
    }

    #[test]
    fn wait_wakes_up_for_a_line_pushed_later() {
        let transcript = Arc::new(Transcript::new());
        let writer = Arc::clone(&transcript);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.push(Stream::Serial, "noise".into());
            std::thread::sleep(Duration::from_millis(50));
            writer.push(Stream::Serial, "the answer".into());
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let outcome = transcript.wait_for(&Pattern::from("answer"), deadline);
        assert!(matches!(outcome, WaitOutcome::Found(line) if line.text == "the answer"));
        assert!(thread.join().is_ok());
    }

    #[test]
    fn wait_times_out_at_the_deadline() {
        let transcript = Transcript::new();
        transcript.push(Stream::Serial, "something else".into());
        let start = Instant::now();
        let outcome =
            transcript.wait_for(&Pattern::from("never"), start + Duration::from_millis(100));
        assert_eq!(outcome, WaitOutcome::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn wait_returns_early_when_the_serial_stream_closes() {
        let transcript = Arc::new(Transcript::new());
        let writer = Arc::clone(&transcript);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.close(Stream::Serial);
        });
        let start = Instant::now();
        let outcome = transcript.wait_for(&Pattern::from("never"), start + Duration::from_secs(30));
        assert_eq!(outcome, WaitOutcome::Closed);
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(thread.join().is_ok());
    }

    #[test]
    fn tail_keeps_the_last_lines_of_both_streams() {
        let transcript = Transcript::new();
        for i in 0..50 {
            transcript.push(Stream::Serial, format!("line {i}"));
        }
        transcript.push(Stream::QemuStderr, "warning".into());
        let tail = transcript.tail(40);
        assert_eq!(tail.len(), 40);
        assert_eq!(tail[0], "line 11");
        assert_eq!(tail[39], "[qemu] warning");
        assert_eq!(transcript.serial_lines().len(), 50);
    }

    #[test]
    fn wait_closed_needs_both_streams() {
        let transcript = Transcript::new();
        transcript.close(Stream::Serial);
        assert!(!transcript.wait_closed(Instant::now() + Duration::from_millis(20)));
        transcript.close(Stream::QemuStderr);
        assert!(transcript.wait_closed(Instant::now() + Duration::from_millis(20)));
        assert!(transcript.all_closed());
    }
}
