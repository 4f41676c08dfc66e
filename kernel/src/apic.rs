//! The local APIC, end-of-interrupt, and the one-shot timer that wakes the idle CPU.
//!
//! xAPIC (MMIO) mode, which QEMU's TCG, KVM and Xen's emulated LAPIC all provide. The legacy
//! 8259 PICs are masked: all interrupts arrive through the APIC. On a bare machine the
//! APIC's timer counts at a rate calibrated once against the TSC; under Xen the platform's
//! one-shot timer is used instead (no calibration, deadlines in Xen's own time), and the
//! APIC's timer stays masked.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

use crate::arch::idt::{self, SPURIOUS_VECTOR};
use crate::platform::{self, xen};
use crate::{memory, time};

/// Vector of the LAPIC timer.
pub const TIMER_VECTOR: u8 = 0x30;

const REG_EOI: usize = 0xb0;
const REG_SPURIOUS: usize = 0xf0;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;
const REG_ICR_LOW: usize = 0x300;
/// ICR destination shorthand "self".
const ICR_SELF: u32 = 1 << 18;
/// Vector of the boot check's self-interrupt ([`check_idle_halt_resumes`]).
const CHECK_VECTOR: u8 = 0x31;
/// The check's backstop: the timer that ends a halt the self-interrupt failed to end. A
/// halt that the interrupt does end takes well under a millisecond; the check fails only
/// past three quarters of the backstop, so a stalled emulator thread is not taken for it.
const CHECK_BACKSTOP_NS: u64 = 2_000_000_000;
const LVT_MASKED: u32 = 1 << 16;
const IA32_APIC_BASE: u32 = 0x1b;

static BASE: AtomicU64 = AtomicU64::new(0);
/// Timer ticks per millisecond (divide-by-16).
static TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);
/// Set when Xen's one-shot timer replaces the APIC's.
static XEN_TIMER: AtomicBool = AtomicBool::new(false);

/// The timer that ends the idle halt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The local APIC's, with its calibrated bus rate.
    Lapic { hz: u64 },
    /// Xen's one-shot timer (`VCPUOP_set_singleshot_timer`, delivered as `VIRQ_TIMER`).
    XenSingleShot,
}

impl core::fmt::Display for Timer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Timer::Lapic { hz } => write!(f, "timer {} MHz", hz / 1_000_000),
            Timer::XenSingleShot => write!(f, "timer: Xen one-shot (VIRQ_TIMER)"),
        }
    }
}

fn write(reg: usize, value: u32) {
    let base = BASE.load(Ordering::Relaxed);
    if base != 0 {
        // SAFETY: the LAPIC page was mapped uncached in `init`.
        unsafe { core::ptr::write_volatile((base as usize + reg) as *mut u32, value) };
    }
}

fn read(reg: usize) -> u32 {
    let base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        return 0;
    }
    // SAFETY: as in `write`.
    unsafe { core::ptr::read_volatile((base as usize + reg) as *const u32) }
}

/// Why the APIC could not be set up.
#[derive(Debug)]
pub enum ApicError {
    Map(memory::MapError),
    TimerDoesNotCount,
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApicError::Map(e) => write!(f, "cannot map its registers: {e}"),
            ApicError::TimerDoesNotCount => write!(f, "its timer does not count"),
        }
    }
}

/// Masks the 8259s, enables the local APIC at `base` and sets up the idle timer: under Xen
/// Xen's one-shot timer (falling back to the APIC's if Xen refuses), else the APIC's,
/// calibrated.
pub fn init(base: u64) -> Result<Timer, ApicError> {
    // SAFETY: masking all lines of the primary PIC; nothing in Keel uses it.
    unsafe { Port::<u8>::new(0x21).write(0xff) };
    // SAFETY: the same for the secondary PIC.
    unsafe { Port::<u8>::new(0xa1).write(0xff) };
    memory::map_mmio(base, 0x1000).map_err(ApicError::Map)?;
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; reading it changes nothing.
    let v = unsafe { msr.read() };
    // SAFETY: setting the global-enable bit of our own APIC at its current base.
    unsafe { msr.write(v | (1 << 11)) };
    BASE.store(base, Ordering::Relaxed);
    write(REG_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_TIMER_DIVIDE, 0x3); // divide by 16
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    if platform::is_xen() {
        match xen::timer::init() {
            Ok(()) => {
                XEN_TIMER.store(true, Ordering::Release);
                return Ok(Timer::XenSingleShot);
            }
            Err(e) => log::warn!("apic: Xen's one-shot timer unusable ({e}); using the APIC's"),
        }
    }

    // Count down from the top for 10 ms of TSC time.
    write(REG_TIMER_INITIAL, u32::MAX);
    let start = crate::arch::rdtsc();
    let span = time::ns_to_tsc(10_000_000);
    while crate::arch::rdtsc() - start < span {
        core::hint::spin_loop();
    }
    let elapsed = u64::from(u32::MAX - read(REG_TIMER_CURRENT));
    write(REG_TIMER_INITIAL, 0);
    if elapsed == 0 {
        return Err(ApicError::TimerDoesNotCount);
    }
    let per_ms = (elapsed / 10).max(1);
    TICKS_PER_MS.store(per_ms, Ordering::Relaxed);
    idt::set_handler(TIMER_VECTOR, |_| end_of_interrupt());
    write(REG_LVT_TIMER, u32::from(TIMER_VECTOR)); // one-shot, unmasked
    Ok(Timer::Lapic {
        hz: per_ms * 1000 * 16,
    })
}

/// Acknowledges the interrupt being handled.
pub fn end_of_interrupt() {
    write(REG_EOI, 0);
}

/// Arms the one-shot timer to fire after `ns` nanoseconds (clamped to what it can count).
pub fn arm_timer(ns: u64) {
    if XEN_TIMER.load(Ordering::Acquire) {
        xen::timer::arm(ns);
        return;
    }
    let per_ms = TICKS_PER_MS.load(Ordering::Relaxed);
    let ticks = (u128::from(ns) * u128::from(per_ms) / 1_000_000).clamp(1, u128::from(u32::MAX));
    write(REG_TIMER_INITIAL, ticks as u32);
}

/// How long the boot check's halt lasted, in nanoseconds, when the interrupt taken at the
/// `hlt` did not end it (the backstop timer did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaltNotResumed(pub u64);

/// Proves at boot that an interrupt taken right before the idle routine's `hlt` ends the
/// idle routine instead of leaving the CPU halted until some later interrupt (the lost
/// wake-up `arch::resume_past_idle_halt` prevents): with interrupts off, a self-interrupt
/// is made pending and a backstop timer armed, then the idle routine is entered past its
/// `sti` shadow, so the interrupt is taken with its return address at the `hlt`. Returns
/// how long the halt lasted. Call it with interrupts off, after [`init`]; they are off
/// again on return.
pub fn check_idle_halt_resumes() -> Result<u64, HaltNotResumed> {
    idt::set_handler(CHECK_VECTOR, |_| end_of_interrupt());
    x86_64::instructions::interrupts::disable();
    arm_timer(CHECK_BACKSTOP_NS);
    write(REG_ICR_LOW, ICR_SELF | u32::from(CHECK_VECTOR));
    let start = time::since_entry_ns();
    crate::arch::halt_with_interrupt_before_hlt();
    let took = time::since_entry_ns().saturating_sub(start);
    x86_64::instructions::interrupts::disable();
    if took < CHECK_BACKSTOP_NS / 4 * 3 {
        Ok(took)
    } else {
        Err(HaltNotResumed(took))
    }
}
