//! The console behind the `log` facade, with timestamps since kernel entry: COM1 on a bare
//! machine, Xen's `console_io` under Xen (Xen owns COM1 there, and dom0's console writes
//! reach Xen's serial line).
//!
//! Every line goes out whole under one lock, so lines from different places never mix;
//! under Xen a line is formatted into a buffer first and leaves in one hypercall.
//! [`emergency_write`] is for the panic and exception paths: it takes the lock only if it is
//! free and otherwise writes anyway, because a report that might interleave beats a deadlock.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use keel_cmdline::LogLevel;
use keel_xen::console::{BufferedConsole, XenConsole};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};

use crate::platform::xen::hypercall::Xen;
use crate::platform::{self, Kind};
use crate::time;

const COM1: u16 = 0x3f8;

/// Bytes of one formatted line handed to Xen in one hypercall (longer lines take more).
const XEN_LINE_BUFFER: usize = 256;

enum Sink {
    Serial(Uart16550Tty<PioBackend>),
    Xen(XenConsole<Xen>),
}

impl Sink {
    fn write(&mut self, args: fmt::Arguments) {
        match self {
            Sink::Serial(port) => {
                let _ = port.write_fmt(args);
            }
            Sink::Xen(console) => {
                let mut line = BufferedConsole::<_, XEN_LINE_BUFFER>::new(console);
                let _ = line.write_fmt(args);
                // A refused write is counted by the console; there is nowhere to report it.
                let _ = line.finish();
            }
        }
    }
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);
static READY: AtomicBool = AtomicBool::new(false);
static MAX_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Picks the console for this platform and installs the logger. Platform detection
/// happens here, first of all, because it decides where the first line goes. A bare
/// machine without a working COM1 (the UART fails its loopback self-test) simply has no
/// console.
pub fn init() {
    let sink = match platform::detect() {
        Kind::Xen => Some(Sink::Xen(XenConsole::new(Xen))),
        // SAFETY: COM1's I/O ports belong to this driver alone on a bare machine.
        Kind::Bare => unsafe { Uart16550Tty::new_port(COM1, Config::default()) }
            .ok()
            .map(Sink::Serial),
    };
    if let Some(sink) = sink {
        *SINK.lock() = Some(sink);
        READY.store(true, Ordering::Release);
    }
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Trace);
}

pub fn set_level(level: LogLevel) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Writes a line without a timestamp or level (used for the fixed `keel:` lines tools read).
pub fn write_line(args: fmt::Arguments) {
    if let Some(sink) = SINK.lock().as_mut() {
        sink.write(format_args!("{args}\n"));
    }
}

/// Writes from the panic or exception path, whether or not the lock is free.
pub fn emergency_write(args: fmt::Arguments) {
    if !READY.load(Ordering::Acquire) {
        return;
    }
    if SINK.is_locked() {
        // SAFETY: one CPU: the holder was interrupted by this fault or panicked while
        // writing, and will not run again before we finish.
        unsafe { SINK.force_unlock() };
    }
    if let Some(sink) = SINK.lock().as_mut() {
        sink.write(args);
    }
}

struct Logger;
static LOGGER: Logger = Logger;

fn level_of(level: log::Level) -> LogLevel {
    match level {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        level_of(metadata.level()) as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let micros = time::since_entry_ns() / 1_000;
        if let Some(sink) = SINK.lock().as_mut() {
            sink.write(format_args!(
                "[{:5}.{:06}] {:<5} {}\n",
                micros / 1_000_000,
                micros % 1_000_000,
                record.level(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}
