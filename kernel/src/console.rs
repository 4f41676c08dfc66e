//! The console: COM1 behind the `log` facade, with timestamps since kernel entry.
//!
//! Every line goes out whole under one lock, so lines from different places never mix.
//! [`emergency_write`] is for the panic and exception paths: it takes the lock only if it is
//! free and otherwise writes anyway, because a report that might interleave beats a deadlock.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use keel_cmdline::LogLevel;
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};

use crate::time;

const COM1: u16 = 0x3f8;

static SERIAL: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);
static READY: AtomicBool = AtomicBool::new(false);
static MAX_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Initialises COM1 (115200 8N1) and installs the logger. A machine without a working COM1
/// (the UART fails its loopback self-test) simply has no serial console.
pub fn init() {
    // SAFETY: COM1's I/O ports belong to this driver alone.
    if let Ok(port) = unsafe { Uart16550Tty::new_port(COM1, Config::default()) } {
        *SERIAL.lock() = Some(port);
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
    if let Some(port) = SERIAL.lock().as_mut() {
        let _ = writeln!(port, "{args}");
    }
}

/// Writes from the panic or exception path, whether or not the lock is free.
pub fn emergency_write(args: fmt::Arguments) {
    if !READY.load(Ordering::Acquire) {
        return;
    }
    if SERIAL.is_locked() {
        // SAFETY: one CPU: the holder was interrupted by this fault or panicked while
        // writing, and will not run again before we finish.
        unsafe { SERIAL.force_unlock() };
    }
    if let Some(port) = SERIAL.lock().as_mut() {
        let _ = port.write_fmt(args);
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
        if let Some(port) = SERIAL.lock().as_mut() {
            let _ = writeln!(
                port,
                "[{:5}.{:06}] {:<5} {}",
                micros / 1_000_000,
                micros % 1_000_000,
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}
