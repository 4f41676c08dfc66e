//! The image boots to `keel: ready`, and the ready line carries the version and boot time.

use keel_tests::kernel_lines::{LogLine, ReadyLine, READY_PREFIX};
use keel_tests::{HarnessError, Machine, Pattern, BOOT_DEADLINE};

#[test]
fn boots_to_ready_with_version_and_boot_time() -> Result<(), HarnessError> {
    let vm = Machine::new("boot_ready").boot()?;
    let line = vm.wait_for_line(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    let Some(ready) = ReadyLine::parse(&line.text) else {
        panic!(
            "ready line lacks '(keel VERSION, boot MS ms)': {:?}\nlog: {}",
            line.text,
            vm.log_path().display()
        );
    };
    assert_eq!(
        ready.version,
        env!("CARGO_PKG_VERSION"),
        "the image reports another version"
    );
    assert!(ready.boot_ms > 0.0, "boot time {} ms", ready.boot_ms);
    // Time since kernel entry cannot exceed the time since QEMU started.
    let host_ms = line.since_start.as_secs_f64() * 1000.0;
    assert!(
        ready.boot_ms <= host_ms,
        "kernel says {} ms, but QEMU started only {host_ms:.1} ms before the line arrived",
        ready.boot_ms
    );
    Ok(())
}

#[test]
fn log_lines_before_ready_have_the_documented_format() -> Result<(), HarnessError> {
    let vm = Machine::new("boot_log_format").boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    let lines = vm.serial_lines();
    let records: Vec<&String> = lines.iter().filter(|line| line.starts_with('[')).collect();
    assert!(
        !records.is_empty(),
        "no log lines before ready\nlog: {}",
        vm.log_path().display()
    );
    let mut previous = 0.0;
    for record in records {
        let Some(log) = LogLine::parse(record) else {
            panic!("log line not in the '[    s.micros] LEVEL message' form: {record:?}");
        };
        assert!(log.seconds >= previous, "time went backwards at {record:?}");
        previous = log.seconds;
    }
    Ok(())
}
