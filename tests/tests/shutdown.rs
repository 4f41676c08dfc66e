//! How a boot ends: a panic exits QEMU with a failure status (through `isa-debug-exit`) or
//! follows `keel.panic=`, and `keel.test=poweroff` powers off through ACPI S5.

use std::time::Duration;

use keel_tests::kernel_lines::{PanicLine, READY_PREFIX};
use keel_tests::{HarnessError, Machine, Pattern, BOOT_DEADLINE};

/// How long QEMU may take to exit once the kernel has decided to stop.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

const TEST_PANIC_MESSAGE: &str = "test panic requested by keel.test=panic";

#[test]
fn test_panic_shows_message_and_location_and_exits_with_status_3() -> Result<(), HarnessError> {
    let vm = Machine::new("panic_debug_exit")
        .append("keel.test=panic")
        .boot()?;
    let line = vm.wait_for(Pattern::starts_with("keel: PANIC at "), BOOT_DEADLINE)?;
    let Some(panic) = PanicLine::parse(&line) else {
        panic!("panic line without a location: {line:?}");
    };
    assert!(
        panic.file.starts_with("kernel/") && panic.file.ends_with(".rs"),
        "{panic:?}"
    );
    assert!(panic.line > 0 && panic.column > 0, "{panic:?}");
    assert!(panic.message.contains(TEST_PANIC_MESSAGE), "{panic:?}");
    let status = vm.wait_exit(EXIT_DEADLINE)?;
    // isa-debug-exit turns the kernel's write of 1 into exit status (1 << 1) | 1.
    assert_eq!(status.code(), Some(3), "QEMU {status}");
    Ok(())
}

#[test]
fn panic_without_debug_exit_reboots_and_qemu_no_reboot_exits_0() -> Result<(), HarnessError> {
    let vm = Machine::new("panic_reboot")
        .without_debug_exit()
        .append("keel.test=panic")
        .boot()?;
    vm.wait_for(Pattern::contains(TEST_PANIC_MESSAGE), BOOT_DEADLINE)?;
    let status = vm.wait_exit(EXIT_DEADLINE)?;
    assert_eq!(status.code(), Some(0), "QEMU {status}");
    Ok(())
}

#[test]
fn panic_halt_keeps_the_machine_stopped() -> Result<(), HarnessError> {
    let vm = Machine::new("panic_halt")
        .without_debug_exit()
        .append("keel.panic=halt keel.test=panic")
        .boot()?;
    vm.wait_for(Pattern::contains(TEST_PANIC_MESSAGE), BOOT_DEADLINE)?;
    match vm.wait_exit(Duration::from_secs(5)) {
        Err(HarnessError::StillRunning { .. }) => Ok(()),
        Ok(status) => panic!("QEMU exited ({status}) although keel.panic=halt"),
        Err(other) => Err(other),
    }
}

#[test]
fn test_poweroff_exits_qemu_with_status_0() -> Result<(), HarnessError> {
    let vm = Machine::new("poweroff")
        .append("keel.test=poweroff")
        .boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    vm.wait_for(Pattern::starts_with("keel: powering off"), BOOT_DEADLINE)?;
    let status = vm.wait_exit(EXIT_DEADLINE)?;
    assert_eq!(status.code(), Some(0), "QEMU {status}");
    Ok(())
}

#[test]
fn test_fault_reports_the_page_fault_then_panics_with_status_3() -> Result<(), HarnessError> {
    let vm = Machine::new("fault_debug_exit")
        .append("keel.test=fault")
        .boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    let exception = vm.wait_for(Pattern::starts_with("keel: CPU exception "), BOOT_DEADLINE)?;
    assert!(
        exception.starts_with("keel: CPU exception 14 page fault"),
        "{exception:?}"
    );
    // The faulting address is 0: the register dump names it in CR2.
    let registers = vm.wait_for(Pattern::contains(" cr2 "), BOOT_DEADLINE)?;
    assert!(
        registers.ends_with("cr2 0x0000000000000000"),
        "{registers:?}"
    );
    let line = vm.wait_for(Pattern::starts_with("keel: PANIC at "), BOOT_DEADLINE)?;
    let Some(panic) = PanicLine::parse(&line) else {
        panic!("panic line without a location: {line:?}");
    };
    assert!(panic.message.starts_with("CPU exception 14 "), "{panic:?}");
    let status = vm.wait_exit(EXIT_DEADLINE)?;
    assert_eq!(status.code(), Some(3), "QEMU {status}");
    Ok(())
}

#[test]
fn a_stack_overflow_hits_the_guard_page_and_panics_with_status_3() -> Result<(), HarnessError> {
    let vm = Machine::new("stack_overflow")
        .append("keel.test=stack-overflow")
        .boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    // The page fault cannot push its frame onto the guard page: a double fault, on its own
    // stack, names the guard page.
    let line = vm.wait_for(Pattern::starts_with("keel: PANIC at "), BOOT_DEADLINE)?;
    let Some(panic) = PanicLine::parse(&line) else {
        panic!("panic line without a location: {line:?}");
    };
    assert!(
        panic
            .message
            .contains("the kernel stack overflowed into its guard page"),
        "{panic:?}"
    );
    let status = vm.wait_exit(EXIT_DEADLINE)?;
    assert_eq!(status.code(), Some(3), "QEMU {status}");
    Ok(())
}
