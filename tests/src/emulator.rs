//! Telling the emulator's failures from Keel's, and giving a test one more host when the
//! emulator, not Keel, ended its run.
//!
//! QEMU 7.2's TCG emulation of nested SVM fails in two ways that no guest, Xen or Keel can
//! cause (docs/xen.md, "Emulator faults"):
//! - a **triple fault reported in Xen's own code** ([`crate::triple_fault`]);
//! - a **wedged machine**: everything goes silent and Xen does not answer its own debug key
//!   on the serial console ([`crate::xen_stall`]: the harness probes a machine that stopped
//!   answering and writes `Xen did NOT answer` into its console log). Xen answers keys from
//!   its serial interrupt whatever dom0 does; a Keel bug leaves a Xen that answers.
//!
//! [`retry_after_emulator_fault`] runs a test's body on a host named after the test; if the
//! body fails and that host's console log shows one of these signatures, the failure is
//! named and counted on stderr and the body runs once more on a fresh host. Any other
//! failure, a real triple fault, or a second failure fails the test.

use std::any::Any;
use std::fmt::Display;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use crate::paths::test_logs_dir;
use crate::triple_fault::triple_faults;

/// The probe's line in a console log for a machine whose Xen did not answer.
pub const WEDGED_MARKER: &str = "Xen did NOT answer";

/// What a host's console log shows of the emulator's failures.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EmulatorFaults {
    /// Triple faults in Xen's own code.
    pub triple_faults: usize,
    /// Stall probes that found Xen not answering.
    pub wedged: usize,
}

impl EmulatorFaults {
    pub fn any(&self) -> bool {
        self.triple_faults > 0 || self.wedged > 0
    }
}

/// Reads the console logs of a test's hosts: `target/keel/test-logs/<test>.log` and
/// `<test>_<host>.log` (a test that boots several hosts names them so), not those of its
/// second run (`<test>_again…`). Panics on a triple fault that is not the emulator's: that is
/// a real fault of a guest or of Keel.
pub fn faults_of(test: &str) -> EmulatorFaults {
    let mut faults = EmulatorFaults::default();
    for host in hosts_of(test) {
        let found = faults_in_log(&host);
        faults.triple_faults += found.triple_faults;
        faults.wedged += found.wedged;
    }
    faults
}

/// The hosts whose console logs are test `test`'s (see [`faults_of`]).
fn hosts_of(test: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(test_logs_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".log")?;
            let ours = stem == test
                || stem
                    .strip_prefix(test)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .is_some_and(|host| !host.starts_with("again"));
            ours.then(|| stem.to_string())
        })
        .collect()
}

/// Removes the console logs an earlier run of `test` left, so that only this run's are read.
fn forget_earlier_logs(test: &str) {
    for host in hosts_of(test) {
        let _ = std::fs::remove_file(test_logs_dir().join(format!("{host}.log")));
    }
}

fn faults_in_log(host: &str) -> EmulatorFaults {
    let log = test_logs_dir().join(format!("{host}.log"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut faults = EmulatorFaults::default();
    for fault in triple_faults(&lines) {
        assert!(
            fault.emulator,
            "a real triple fault of domain {} (not the emulator's): {:?}; see {}",
            fault.domain,
            fault.rip,
            log.display()
        );
        eprintln!(
            "{host}: emulator fault counted: domain {} vCPU {} triple-faulted in Xen's code ({})",
            fault.domain,
            fault.vcpu,
            fault.rip.as_deref().unwrap_or_default()
        );
        faults.triple_faults += 1;
    }
    faults.wedged = lines.iter().filter(|l| l.contains(WEDGED_MARKER)).count();
    if faults.wedged > 0 {
        eprintln!(
            "{host}: emulator fault counted: the machine wedged (Xen did not answer its debug key)"
        );
    }
    faults
}

/// Runs `body(test)`; on a failure beside an emulator fault in host `test`'s console log,
/// says so and runs `body("<test>_again")` once more (see the module's documentation).
pub fn retry_after_emulator_fault<E: Display>(test: &str, body: impl Fn(&str) -> Result<(), E>) {
    forget_earlier_logs(test);
    let first = catch_unwind(AssertUnwindSafe(|| body(test)));
    let failure = match first {
        Ok(Ok(())) => return,
        Ok(Err(e)) => Failure::Error(e.to_string()),
        Err(panic) => Failure::Panic(panic),
    };
    let faults = faults_of(test);
    if !faults.any() {
        match failure {
            Failure::Error(e) => panic!("{e}"),
            Failure::Panic(panic) => resume_unwind(panic),
        }
    }
    eprintln!(
        "{test}: EMULATOR FAULT: the run failed beside {} triple fault(s) in Xen's own code and \
         {} wedged machine(s) (QEMU TCG nested SVM, not Keel's); running once more on a fresh \
         host. Failure: {}",
        faults.triple_faults,
        faults.wedged,
        failure.text()
    );
    let again = format!("{test}_again");
    forget_earlier_logs(&again);
    if let Err(e) = body(&again) {
        panic!("{e}");
    }
    faults_of(&again);
}

enum Failure {
    Error(String),
    Panic(Box<dyn Any + Send>),
}

impl Failure {
    fn text(&self) -> String {
        match self {
            Failure::Error(e) => e.clone(),
            Failure::Panic(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn write_log(host: &str, text: &str) {
        let dir = test_logs_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{host}.log")), text).unwrap();
    }

    #[test]
    fn a_failure_beside_a_wedged_machine_runs_once_more() {
        // A stale log of an earlier run is not this run's.
        write_log(
            "emulator_unit_wedged_again_host",
            "(XEN) d1v0 Triple fault\n",
        );
        let runs = Cell::new(Vec::new());
        retry_after_emulator_fault("emulator_unit_wedged", |host| {
            let log = if host == "emulator_unit_wedged" {
                "[ 1.0] keel\n# stall probe: Xen did NOT answer its debug keys\n"
            } else {
                "[ 1.0] keel\n"
            };
            write_log(host, log);
            let mut seen = runs.take();
            seen.push(host.to_string());
            let first = seen.len() == 1;
            runs.set(seen);
            if first {
                Err("timed out")
            } else {
                Ok(())
            }
        });
        assert_eq!(
            runs.take(),
            ["emulator_unit_wedged", "emulator_unit_wedged_again"]
        );
    }

    #[test]
    fn a_tests_hosts_are_read_but_not_its_second_runs() {
        let wedged = "# stall probe: stall probe: Xen did NOT answer its debug keys\n";
        write_log("emulator_unit_multi_first", "[ 1.0] keel\n");
        write_log("emulator_unit_multi_second", wedged);
        write_log("emulator_unit_multi_again_first", wedged);
        write_log("emulator_unit_multiple", wedged);
        assert_eq!(faults_of("emulator_unit_multi").wedged, 1);
        assert_eq!(faults_of("emulator_unit_multi_again").wedged, 1);
    }

    #[test]
    #[should_panic(expected = "timed out")]
    fn a_failure_without_an_emulator_fault_fails_at_once() {
        // A stale wedged log of an earlier run does not count.
        write_log(
            "emulator_unit_plain_second",
            "# Xen did NOT answer its debug keys\n",
        );
        retry_after_emulator_fault("emulator_unit_plain", |host| {
            assert_eq!(host, "emulator_unit_plain", "no second run");
            write_log(host, "[ 1.0] keel\n(XEN) all fine\n");
            Err("timed out")
        });
    }

    #[test]
    #[should_panic(expected = "still broken")]
    fn a_second_failure_fails_the_test() {
        retry_after_emulator_fault("emulator_unit_twice", |host| {
            write_log(host, "# stall probe: Xen did NOT answer its debug keys\n");
            Err("still broken")
        });
    }
}
