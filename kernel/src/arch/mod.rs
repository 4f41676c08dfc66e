//! x86_64 CPU glue: descriptor tables, trap entry, and a few instructions.

pub mod gdt;
pub mod idt;

use core::arch::global_asm;

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear in ring 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

// The idle halt, at a known address. `sti` holds interrupts off for one instruction, so on
// a real CPU an interrupt pending at `sti` is taken only once `hlt` has begun (and ends it).
// QEMU's TCG emulation of nested SVM does not keep that promise: its VMRUN drops the
// interrupt shadow saved at a #VMEXIT, so when the exit lands between `sti` and `hlt`, Xen
// injects the event upcall there; the handler consumes the one event Keel waits for (the
// one-shot timer's VIRQ), returns to the `hlt`, and dom0 sleeps for good (seen: vCPU
// blocked at the `hlt`, no one-shot timer queued, no event pending). `trap_dispatch`
// therefore resumes an interrupt taken at either `hlt` below after it
// ([`resume_past_idle_halt`]), whatever the CPU's shadow does.
//
// `keel_idle_halt_late` is the boot check's entry: its `nop` ends the shadow, so an
// interrupt already pending is taken with its return address at the `hlt`.
global_asm!(
    r#"
    .section .text
    .global keel_idle_halt
keel_idle_halt:
    sti
    .global keel_idle_hlt
keel_idle_hlt:
    hlt
    ret

    .global keel_idle_halt_late
keel_idle_halt_late:
    sti
    nop
    .global keel_idle_hlt_late
keel_idle_hlt_late:
    hlt
    ret
    "#,
    options(att_syntax)
);

extern "C" {
    fn keel_idle_halt();
    fn keel_idle_halt_late();
    // Labels inside the routines above, never called: only their addresses are used.
    fn keel_idle_hlt();
    fn keel_idle_hlt_late();
}

/// Enables interrupts and halts until the next interrupt. An interrupt that arrives
/// between the two instructions ends the halt too: on a real CPU through `sti`'s one
/// instruction delay, under an emulator that loses that delay through
/// [`resume_past_idle_halt`].
#[inline]
pub fn enable_interrupts_and_halt() {
    // SAFETY: the IDT is loaded before the first call; the routine only enables
    // interrupts, halts and returns (a call: the compiler assumes memory may change, as
    // interrupt handlers do change it).
    unsafe { keel_idle_halt() };
}

/// The idle halt entered with the `sti` shadow already over: an interrupt pending when it
/// is called is taken with its return address at the `hlt`, the case an emulator that
/// loses the shadow produces. For the boot check that [`resume_past_idle_halt`] works.
pub fn halt_with_interrupt_before_hlt() {
    // SAFETY: as in `enable_interrupts_and_halt`.
    unsafe { keel_idle_halt_late() };
}

/// Called on the way out of every interrupt: if it interrupted the idle routine right
/// before its `hlt`, return past the `hlt`, so the executor looks at what the handler woke
/// instead of halting with nothing left to wake it.
pub fn resume_past_idle_halt(rip: &mut u64) {
    let halts = [
        keel_idle_hlt as *const () as u64,
        keel_idle_hlt_late as *const () as u64,
    ];
    if halts.contains(rip) {
        // `hlt` is one byte (f4).
        *rip += 1;
    }
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
