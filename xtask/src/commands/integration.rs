//! The QEMU integration tests, run as two queues of test binaries instead of one after the
//! other.
//!
//! `cargo test -p keel-tests` runs its test binaries one at a time, and most of them hold a
//! single test (one host boot with its guests), so one of the reference machine's two cores
//! sat idle for most of the suite. Here cargo only builds them (`--no-run`, its JSON
//! messages name each executable); then [`MAX_PARALLEL_VMS`] workers take binaries from
//! one queue, longest first ([`SLOW_FIRST`]), each running one test at a time
//! (`--test-threads=1`), so that at most two QEMUs run at once, as before. Each binary's
//! output is kept and printed in one piece when it ends; every binary runs even when
//! another failed, and the failures are listed at the end.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use keel_tests::image::{self, IMAGE_ENV};
use keel_tests::paths;

use crate::commands::test::MAX_PARALLEL_VMS;
use crate::error::XtaskError;
use crate::progress;

/// `KEEL_TEST_BINARIES=guests,boot`: run only these test binaries (by target name).
pub const ONLY_ENV: &str = "KEEL_TEST_BINARIES";

/// The package whose test binaries boot QEMU.
const PACKAGE: &str = "keel-tests";

/// Binaries known to take minutes (guests under nested TCG), started first so that the
/// short ones fill the other queue's gaps; the rest follow in cargo's order.
pub const SLOW_FIRST: &[&str] = &[
    "guests",
    "guest_disks",
    "guest_hostile",
    "guest_network",
    "metering",
    "hostdb",
    "guest_pvgrub",
    "boot_media",
    "storage",
    "intel_nic",
];

/// One test executable that cargo built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBinary {
    /// The target's name (`guests` for `tests/guests.rs`, the crate's for its unit tests).
    pub name: String,
    pub executable: PathBuf,
}

/// How one binary ended.
struct Outcome {
    name: String,
    success: bool,
    seconds: f64,
}

/// Builds the package's test binaries and runs them in [`MAX_PARALLEL_VMS`] queues with
/// `KEEL_IMAGE` set to `image`.
pub fn run(image: &Path, cores: usize) -> Result<(), XtaskError> {
    let mut binaries = build()?;
    if let Some(only) = std::env::var_os(ONLY_ENV) {
        let only = only.to_string_lossy().into_owned();
        binaries.retain(|b| only.split(',').any(|name| name.trim() == b.name));
    }
    let workers = cores.clamp(1, MAX_PARALLEL_VMS);
    let step = progress::step(format!(
        "QEMU integration tests: {} test binaries of {PACKAGE} in {workers} queues, one test at a time each",
        binaries.len()
    ));
    let queue = Mutex::new(VecDeque::from(slow_first(binaries)));
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .pop_front();
                let Some(binary) = next else {
                    return;
                };
                let outcome = run_binary(&binary, image);
                outcomes
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(outcome);
            });
        }
    });
    let outcomes = outcomes
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.success).collect();
    for outcome in &outcomes {
        progress::note(format!(
            "{:<24} {:>7.1} s  {}",
            outcome.name,
            outcome.seconds,
            if outcome.success { "ok" } else { "FAILED" }
        ));
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|o| o.name.as_str()).collect();
        return Err(XtaskError::CommandFailed {
            command: format!("the integration test binaries {}", names.join(", ")),
            status: None,
        });
    }
    step.done();
    Ok(())
}

/// `cargo test -p keel-tests --no-run --message-format=json`: builds every test binary of
/// the package and returns them.
fn build() -> Result<Vec<TestBinary>, XtaskError> {
    let args = [
        "test",
        "-p",
        PACKAGE,
        "--no-run",
        "--message-format=json-render-diagnostics",
    ];
    let shown = format!("cargo {}", args.join(" "));
    let step = progress::step(format!("building the integration tests: {shown}"));
    let output = Command::new(image::cargo_binary())
        .args(args)
        .current_dir(paths::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|_| XtaskError::CommandFailed {
            command: shown.clone(),
            status: None,
        })?;
    if !output.status.success() {
        return Err(XtaskError::CommandFailed {
            command: shown,
            status: Some(output.status),
        });
    }
    step.done();
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(test_binary)
        .collect())
}

/// The test executable a line of cargo's JSON messages announces, if it is one of
/// [`PACKAGE`]'s (`"reason":"compiler-artifact"` with `"test":true` and an `"executable"`).
pub fn test_binary(line: &str) -> Option<TestBinary> {
    if !line.contains(r#""reason":"compiler-artifact""#) {
        return None;
    }
    // A test build (the profile's `test`), not the library the test binaries link.
    let profile = &line[line.find(r#""profile":{"#)?..];
    if !profile[..profile.find('}')?].contains(r#""test":true"#) {
        return None;
    }
    // Only this package's artifacts: its manifest directory ends in `/tests`.
    let manifest = json_string(line, "manifest_path")?;
    if !manifest.ends_with("/tests/Cargo.toml") {
        return None;
    }
    let target = &line[line.find(r#""target":{"#)?..];
    Some(TestBinary {
        name: json_string(target, "name")?,
        executable: PathBuf::from(json_string(line, "executable")?),
    })
}

/// The first `"key":"value"` string in `json`, unescaped (`\"` and `\\`).
fn json_string(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!(r#""{key}":""#))? + key.len() + 4;
    let mut value = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
    None
}

/// `binaries` with those of [`SLOW_FIRST`] first, in that order.
pub fn slow_first(mut binaries: Vec<TestBinary>) -> Vec<TestBinary> {
    binaries.sort_by_key(|b| {
        SLOW_FIRST
            .iter()
            .position(|slow| *slow == b.name)
            .unwrap_or(SLOW_FIRST.len())
    });
    binaries
}

/// Runs one binary to its end (cargo's working directory for a package's tests is the
/// package's own), then prints what it printed.
fn run_binary(binary: &TestBinary, image: &Path) -> Outcome {
    let started = Instant::now();
    progress::note(format!("started {}", binary.name));
    let result = Command::new(&binary.executable)
        .arg("--test-threads=1")
        .current_dir(paths::workspace_root().join("tests"))
        .env(IMAGE_ENV, OsString::from(image))
        .stdin(Stdio::null())
        .output();
    let seconds = started.elapsed().as_secs_f64();
    let success = match result {
        Ok(output) => {
            // One piece per binary, so that two queues do not interleave their lines.
            let mut text = format!(
                "\n==> {} ({}) finished in {seconds:.1} s\n",
                binary.name,
                binary.executable.display()
            );
            text.push_str(&String::from_utf8_lossy(&output.stdout));
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            eprintln!("{text}");
            output.status.success()
        }
        Err(error) => {
            eprintln!("xtask: cannot run {}: {error}", binary.executable.display());
            false
        }
    };
    Outcome {
        name: binary.name.clone(),
        success,
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARTIFACT: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#keel-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"guests","src_path":"/w/tests/tests/guests.rs","edition":"2021","doc":false,"doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":true},"features":[],"filenames":["/w/target/debug/deps/guests-a4d3"],"executable":"/w/target/debug/deps/guests-a4d3","fresh":true}"#;

    #[test]
    fn cargos_artifact_lines_name_the_test_executables() {
        assert_eq!(
            test_binary(ARTIFACT),
            Some(TestBinary {
                name: "guests".into(),
                executable: "/w/target/debug/deps/guests-a4d3".into(),
            })
        );
        // Another package's tests, a library build, other messages: none.
        let other = ARTIFACT.replace("/w/tests/Cargo.toml", "/w/xtask/Cargo.toml");
        assert_eq!(test_binary(&other), None);
        let not_test = ARTIFACT.replace(
            r#""overflow_checks":true,"test":true}"#,
            r#""overflow_checks":true,"test":false}"#,
        );
        assert_eq!(test_binary(&not_test), None);
        assert_eq!(
            test_binary(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }

    #[test]
    fn json_strings_are_unescaped() {
        assert_eq!(
            json_string(r#"{"a":"x\"y\\z","b":"2"}"#, "a").as_deref(),
            Some(r#"x"y\z"#)
        );
        assert_eq!(json_string(r#"{"a":1}"#, "a"), None);
    }

    #[test]
    fn slow_binaries_go_first_in_their_order() {
        let binary = |name: &str| TestBinary {
            name: name.into(),
            executable: PathBuf::from(name),
        };
        let ordered = slow_first(vec![
            binary("api"),
            binary("guest_disks"),
            binary("boot"),
            binary("guests"),
        ]);
        let names: Vec<&str> = ordered.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["guests", "guest_disks", "api", "boot"]);
    }
}
