//! `cargo xtask test`: everything the tests use (installed as root, else the command to run),
//! host unit tests, then the QEMU integration tests on the release image (two queues of test binaries:
//! [`crate::commands::integration`]).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use keel_tests::image::{self, Profile, IMAGE_ENV};
use keel_tests::paths;
use keel_tests::prereq::{self, Tool};

use crate::commands::build::build_image;
use crate::error::XtaskError;
use crate::progress;

/// At most this many QEMUs at once: the reference machine has 2 cores.
pub const MAX_PARALLEL_VMS: usize = 2;

/// Runs both suites even when the first fails, so that one run shows every failure; fails
/// with the first failure when any suite failed.
pub fn run() -> Result<(), XtaskError> {
    // QEMU, Xen, the boot media tools, OVMF, the Python venv: the tests only check for them
    // (they must not change the system), so this is where they get installed.
    prereq::ensure(Tool::ALL)?;
    let unit = cargo("host unit tests", &unit_test_args(), None);
    if let Err(error) = &unit {
        eprintln!("xtask: {error}; continuing with the QEMU integration tests");
    }
    let (image, _) = build_image(Profile::Release)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let integration = crate::commands::integration::run(&image, cores).and_then(|()| {
        let doc = ["test", "-p", "keel-tests", "--doc"].map(String::from);
        cargo("the harness's documentation tests", &doc, None)
    });
    unit?;
    integration?;
    eprintln!("==> all tests passed");
    Ok(())
}

/// `cargo test` at the workspace root: the default members, which never boot QEMU.
/// `--no-fail-fast`: one failing test binary must not hide the results of the others.
pub fn unit_test_args() -> Vec<String> {
    vec!["test".into(), "--no-fail-fast".into()]
}

/// Runs cargo at the workspace root, with `KEEL_IMAGE` set when an image is given.
fn cargo(label: &str, args: &[String], image: Option<&Path>) -> Result<(), XtaskError> {
    let shown = format!("cargo {}", args.join(" "));
    let step = progress::step(format!("{label}: {shown}"));
    let mut command = Command::new(image::cargo_binary());
    command.args(args).current_dir(paths::workspace_root());
    if let Some(image) = image {
        command.env(IMAGE_ENV, OsString::from(image));
    }
    let status = command.status().map_err(|_| XtaskError::CommandFailed {
        command: shown.clone(),
        status: None,
    })?;
    if !status.success() {
        return Err(XtaskError::CommandFailed {
            command: shown,
            status: Some(status),
        });
    }
    step.done();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_tests_are_the_default_members() {
        assert_eq!(unit_test_args(), ["test", "--no-fail-fast"]);
    }
}
