//! Time: the monotonic clock, counted from kernel entry, from one of two sources.
//!
//! The TSC is read at kernel entry, so every timestamp (the log, `keel: ready`) counts from
//! there. Until a source is set up, time reads 0.
//!
//! - Bare machine: the TSC, calibrated once against PIT channel 2 (gated for 10 ms, TSC
//!   cycles counted across it); this needs no interrupts and works under QEMU (TCG and KVM).
//! - Xen: Xen keeps the PIT, so the clock is Xen's pvclock: system time from vCPU 0's
//!   `vcpu_time_info` in shared_info (the TSC scaled by the multiplier and shift Xen
//!   publishes, re-read under its version lock on every reading). The entry TSC is turned
//!   into system time once, so that Xen time and entry-relative time share one origin.
//!   The TSC frequency Xen publishes is kept for TSC-based waits (the APIC calibration).

use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};

use keel_xen::shared_info::VcpuTimeInfo;
use keel_xen::time::TornRead;
use x86_64::instructions::port::Port;

use crate::arch::rdtsc;

static ENTRY_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Which source [`since_entry_ns`] reads.
static SOURCE: AtomicU8 = AtomicU8::new(SOURCE_NONE);
const SOURCE_NONE: u8 = 0;
const SOURCE_TSC: u8 = 1;
const SOURCE_PVCLOCK: u8 = 2;

/// vCPU 0's time parameters in shared_info (Xen only).
static PVCLOCK: AtomicPtr<VcpuTimeInfo> = AtomicPtr::new(core::ptr::null_mut());
/// Xen system time at kernel entry.
static PVCLOCK_ENTRY_NS: AtomicU64 = AtomicU64::new(0);

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

/// Busy-waits `us` microseconds (drivers' short register delays; the executor is held).
pub fn spin_us(us: u32) {
    let end = since_entry_ns() + u64::from(us) * 1000;
    while since_entry_ns() < end {
        core::hint::spin_loop();
    }
}

/// Nanoseconds since kernel entry (0 until a source is set up).
pub fn since_entry_ns() -> u64 {
    match SOURCE.load(Ordering::Acquire) {
        SOURCE_TSC => tsc_since_entry_ns(),
        SOURCE_PVCLOCK => match xen_system_time_ns() {
            Some(now) => now.saturating_sub(PVCLOCK_ENTRY_NS.load(Ordering::Relaxed)),
            // A torn read lasts microseconds at most; the TSC estimate bridges it.
            None => tsc_since_entry_ns(),
        },
        _ => 0,
    }
}

fn tsc_since_entry_ns() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let ticks = rdtsc().saturating_sub(ENTRY_TSC.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000_000 / u128::from(hz)) as u64
}

fn pvclock() -> Option<&'static VcpuTimeInfo> {
    let info = PVCLOCK.load(Ordering::Acquire);
    // SAFETY: only `use_pvclock` stores here, a `&'static` into the mapped shared_info.
    unsafe { info.cast_const().as_ref() }
}

/// Xen's system time (nanoseconds since the hypervisor booted), under Xen.
pub fn xen_system_time_ns() -> Option<u64> {
    pvclock()?.system_time_ns(rdtsc()).ok()
}

/// Why the pvclock cannot serve as the clock.
#[derive(Debug)]
pub enum PvclockError {
    /// The version word stayed odd (Xen never finished an update).
    Torn,
    /// The multiplier is 0: no TSC frequency can be derived.
    NoFrequency,
}

impl core::fmt::Display for PvclockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PvclockError::Torn => write!(f, "vcpu_time_info never became consistent"),
            PvclockError::NoFrequency => write!(f, "vcpu_time_info has no TSC multiplier"),
        }
    }
}

impl From<TornRead> for PvclockError {
    fn from(_: TornRead) -> Self {
        PvclockError::Torn
    }
}

/// Makes Xen's pvclock (vCPU 0's `vcpu_time_info`) the clock; returns the TSC frequency.
pub fn use_pvclock(info: &'static VcpuTimeInfo) -> Result<u64, PvclockError> {
    let snapshot = info.snapshot()?;
    log::debug!(
        "pvclock: {snapshot:?} at tsc {} (entry tsc {})",
        rdtsc(),
        ENTRY_TSC.load(Ordering::Relaxed)
    );
    let hz = snapshot.tsc_hz().ok_or(PvclockError::NoFrequency)?;
    let entry_ns = snapshot.system_time_at(ENTRY_TSC.load(Ordering::Relaxed));
    PVCLOCK_ENTRY_NS.store(entry_ns, Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
    PVCLOCK.store(core::ptr::from_ref(info).cast_mut(), Ordering::Release);
    SOURCE.store(SOURCE_PVCLOCK, Ordering::Release);
    Ok(hz)
}

/// Converts a duration in nanoseconds to TSC ticks.
pub fn ns_to_tsc(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(tsc_hz()) / 1_000_000_000) as u64
}

/// Port 0x61: PIT channel 2's gate (bit 0), the speaker (bit 1), OUT2 (bit 5).
const PIT_GATE: u16 = 0x61;
const PIT_COMMAND: u16 = 0x43;
const PIT_CHANNEL2: u16 = 0x42;

/// Reads one of the PIT ports above.
fn pit_port(port: u16) -> u8 {
    // SAFETY: the PIT and port 0x61 are legacy platform devices nobody else uses here; a
    // port read touches no memory.
    unsafe { Port::<u8>::new(port).read() }
}

/// Writes one of the PIT ports above.
fn set_pit_port(port: u16, value: u8) {
    // SAFETY: as in `pit_port`.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Calibrates the TSC against PIT channel 2.
pub fn calibrate_with_pit() -> Result<u64, CalibrationError> {
    let count = PIT_HZ * CALIBRATION_MS / 1000;
    let saved = pit_port(PIT_GATE);
    // Gate on, speaker off.
    set_pit_port(PIT_GATE, (saved & !0x02) | 0x01);
    // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
    set_pit_port(PIT_COMMAND, 0b1011_0000);
    set_pit_port(PIT_CHANNEL2, count as u8);
    set_pit_port(PIT_CHANNEL2, (count >> 8) as u8);
    // Restart counting with a rising edge on the gate.
    let g = pit_port(PIT_GATE);
    set_pit_port(PIT_GATE, g & !0x01);
    set_pit_port(PIT_GATE, g | 0x01);
    let start = rdtsc();
    let mut spins: u64 = 0;
    // OUT2 (bit 5) rises at terminal count. Bound the wait: 10 ms is far below 100M polls.
    while pit_port(PIT_GATE) & 0x20 == 0 {
        spins += 1;
        if spins > 100_000_000 {
            set_pit_port(PIT_GATE, saved);
            return Err(CalibrationError::PitSilent);
        }
    }
    let end = rdtsc();
    set_pit_port(PIT_GATE, saved);
    let ticks = end - start;
    let hz = ticks * 1000 / CALIBRATION_MS;
    if hz == 0 {
        return Err(CalibrationError::PitSilent);
    }
    TSC_HZ.store(hz, Ordering::Relaxed);
    SOURCE.store(SOURCE_TSC, Ordering::Release);
    Ok(hz)
}

/// The executor's clock: nanoseconds since entry from whichever source is set up (the
/// calibrated TSC on bare metal, the pvclock under Xen).
pub struct KernelClock;

impl keel_executor::Clock for KernelClock {
    fn now_ns(&self) -> u64 {
        since_entry_ns()
    }
}
