//! Power off, reset, and the failure exit used under QEMU.

use core::sync::atomic::{AtomicU16, Ordering};

use spin::Once;
use x86_64::instructions::port::Port;

use crate::acpi::PowerControl;
use crate::arch::halt_forever;

static POWER: Once<PowerControl> = Once::new();
static DEBUG_EXIT_PORT: AtomicU16 = AtomicU16::new(0);

/// Records the QEMU debug-exit port (early, so that boot failures already use it).
pub fn set_debug_exit(port: Option<u16>) {
    DEBUG_EXIT_PORT.store(port.unwrap_or(0), Ordering::Relaxed);
}

/// Records the firmware's power registers.
pub fn set_control(power: PowerControl) {
    POWER.call_once(|| power);
}

/// Powers the machine off through ACPI S5 — also as Xen's dom0, which owns the platform's
/// power registers (Xen's own "power off" for dom0 only halts the machine). If S5 does not
/// take effect, Xen is asked to shut down, then the CPU halts.
pub fn power_off() -> ! {
    x86_64::instructions::interrupts::disable();
    if let Some(p) = POWER.get() {
        if let (Some(pm1a), Some(s5)) = (p.pm1a_control, p.s5) {
            // The registers were checked and mapped at discovery; a write can only be refused
            // for a value wider than the register (a PM1 control register narrower than 16
            // bits), and then the fallbacks below run.
            let written = pm1a.write(u64::from(s5.pm1a_control())).and_then(|()| {
                p.pm1b_control
                    .map_or(Ok(()), |pm1b| pm1b.write(u64::from(s5.pm1b_control())))
            });
            if let Err(e) = written {
                crate::console::emergency_write(format_args!("keel: ACPI S5 refused: {e}\n"));
            }
        }
    }
    // The write takes effect asynchronously under emulators; give it a moment before
    // declaring failure, so the console does not claim a failure that is about to vanish.
    let deadline = crate::time::since_entry_ns() + 1_000_000_000;
    while crate::time::since_entry_ns() < deadline {
        core::hint::spin_loop();
    }
    crate::console::emergency_write(format_args!("keel: ACPI power-off did not take effect\n"));
    crate::platform::shutdown(false);
    crate::console::emergency_write(format_args!("keel: halting\n"));
    halt_forever()
}

/// Resets the machine: through Xen when Keel is its dom0, else the FADT reset register,
/// then the keyboard controller, then a triple fault.
pub fn reboot() -> ! {
    x86_64::instructions::interrupts::disable();
    crate::platform::shutdown(true);
    if let Some((register, value)) = POWER.get().and_then(|p| p.reset) {
        // Checked and mapped at discovery; if refused, the next mechanism runs.
        let _ = register.write(u64::from(value));
    }
    // SAFETY: the keyboard controller's reset line; it resets the machine or does nothing.
    unsafe { Port::<u8>::new(0x64).write(0xfe) };
    // An empty IDT makes the next exception a triple fault.
    let empty = x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::new(0),
    };
    // SAFETY: nothing runs after this but the `int3` below, which is meant to fault.
    unsafe { x86_64::instructions::tables::lidt(&empty) };
    // SAFETY: with no IDT, the breakpoint becomes a triple fault: a reset.
    unsafe { core::arch::asm!("int3") };
    halt_forever()
}

/// Ends the run as a failure. Under QEMU's `isa-debug-exit` (configured with
/// `keel.debug_exit=PORT`) QEMU exits with status 3; otherwise `fallback` decides.
pub fn fail(fallback: keel_cmdline::PanicAction) -> ! {
    let port = DEBUG_EXIT_PORT.load(Ordering::Relaxed);
    if port != 0 {
        // SAFETY: the port was named on the command line for exactly this.
        unsafe { Port::<u32>::new(port).write(1) };
    }
    match fallback {
        keel_cmdline::PanicAction::Reboot => reboot(),
        keel_cmdline::PanicAction::Halt => halt_forever(),
    }
}
