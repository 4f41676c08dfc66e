//! Time: the TSC, calibrated once against the PIT, as the monotonic clock.
//!
//! The TSC is read at kernel entry, so every timestamp (the log, `keel: ready`) counts from
//! there. Calibration gates PIT channel 2 for 10 ms and counts TSC cycles across it; this
//! needs no interrupts and works under QEMU (TCG and KVM). The Xen platform replaces it with
//! pvclock, since Xen keeps the PIT for itself.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

use crate::arch::rdtsc;

static ENTRY_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 10;

/// Why the TSC could not be calibrated.
#[derive(Debug)]
pub enum CalibrationError {
    /// PIT channel 2 never reached terminal count (no PIT, or access denied).
    PitSilent,
}

impl core::fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CalibrationError::PitSilent => write!(f, "PIT channel 2 never reached terminal count"),
        }
    }
}

/// Records the entry time; the first thing the kernel does.
pub fn mark_entry() {
    ENTRY_TSC.store(rdtsc(), Ordering::Relaxed);
}

/// TSC ticks per second (0 until calibrated).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since kernel entry (0 until calibrated).
pub fn since_entry_ns() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let ticks = rdtsc().saturating_sub(ENTRY_TSC.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000_000 / u128::from(hz)) as u64
}

/// Converts a duration in nanoseconds to TSC ticks.
pub fn ns_to_tsc(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(tsc_hz()) / 1_000_000_000) as u64
}

/// Calibrates the TSC against PIT channel 2.
pub fn calibrate_with_pit() -> Result<u64, CalibrationError> {
    let mut gate: Port<u8> = Port::new(0x61);
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel2: Port<u8> = Port::new(0x42);
    let count = PIT_HZ * CALIBRATION_MS / 1000;
    // SAFETY: the PIT and port 0x61 are legacy platform devices nobody else uses here.
    let ticks = unsafe {
        let saved = gate.read();
        // Gate on, speaker off.
        gate.write((saved & !0x02) | 0x01);
        // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
        command.write(0b1011_0000);
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8);
        // Restart counting with a rising edge on the gate.
        let g = gate.read();
        gate.write(g & !0x01);
        gate.write(g | 0x01);
        let start = rdtsc();
        let mut spins: u64 = 0;
        // OUT2 (bit 5) rises at terminal count. Bound the wait: 10 ms is far below 100M polls.
        while gate.read() & 0x20 == 0 {
            spins += 1;
            if spins > 100_000_000 {
                gate.write(saved);
                return Err(CalibrationError::PitSilent);
            }
        }
        let end = rdtsc();
        gate.write(saved);
        end - start
    };
    let hz = ticks * 1000 / CALIBRATION_MS;
    if hz == 0 {
        return Err(CalibrationError::PitSilent);
    }
    TSC_HZ.store(hz, Ordering::Relaxed);
    Ok(hz)
}

/// The executor's clock.
pub struct TscClock;

impl keel_executor::Clock for TscClock {
    fn now_ns(&self) -> u64 {
        since_entry_ns()
    }
}
