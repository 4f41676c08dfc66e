//! Bad `keel.*` options are reported on the console with the documented line, and the boot
//! still reaches ready with the defaults.

use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::{HarnessError, Machine, Pattern, BOOT_DEADLINE};

#[test]
fn malformed_option_is_reported_and_boot_reaches_ready() -> Result<(), HarnessError> {
    let vm = Machine::new("cmdline_malformed")
        .append("keel.log=loud")
        .boot()?;
    let line = vm.wait_for(Pattern::starts_with("keel: bad option"), BOOT_DEADLINE)?;
    assert_eq!(
        line,
        "keel: bad option 'keel.log=loud': expected one of error|warn|info|debug|trace; using default 'info'"
    );
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    Ok(())
}

#[test]
fn unknown_option_is_reported_and_boot_reaches_ready() -> Result<(), HarnessError> {
    let vm = Machine::new("cmdline_unknown")
        .append("keel.nosuch=1")
        .boot()?;
    let line = vm.wait_for(Pattern::starts_with("keel: unknown option"), BOOT_DEADLINE)?;
    let known = line.strip_prefix("keel: unknown option 'keel.nosuch=1': known options are ");
    let Some(known) = known else {
        panic!("unexpected unknown-option line: {line:?}");
    };
    for option in ["keel.log", "keel.panic", "keel.debug_exit", "keel.test"] {
        assert!(
            known.split(", ").any(|name| name == option),
            "{option} missing from {known:?}"
        );
    }
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    Ok(())
}
