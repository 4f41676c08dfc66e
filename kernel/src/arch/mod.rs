//! x86_64 CPU glue: descriptor tables, trap entry, and a few instructions.

pub mod gdt;
pub mod idt;

use core::arch::asm;

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear in ring 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Enables interrupts and halts in one step: `sti` delays interrupts by one instruction, so
/// an interrupt that arrives between the two still wakes the `hlt`.
#[inline]
pub fn enable_interrupts_and_halt() {
    // SAFETY: the IDT is loaded before the first call.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) };
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
