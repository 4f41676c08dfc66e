//! The real Python `XenAPI` SDK (PyPI, pinned) in a venv under `target/keel/`, for the tests
//! and benchmarks that drive Keel the way users do.
//!
//! Made once per machine and reused: a venv whose `python -c "import XenAPI"` works is kept.
//! A fresh Debian lacks the venv module: as root it is installed with apt-get, otherwise
//! the error names the exact command.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::HarnessError;
use crate::paths;
use crate::prereq;

/// The SDK version the tests run against.
pub const XENAPI_VERSION: &str = "26.21.1";

fn io_error(what: String, message: String) -> HarnessError {
    HarnessError::Io {
        what,
        error: std::io::Error::other(message),
    }
}

/// The venv's python, with the SDK importable. Safe to call from parallel tests.
pub fn xenapi_python() -> Result<PathBuf, HarnessError> {
    // Across threads and processes (test binaries run in parallel).
    crate::cache_lock::with_cache_lock(make_xenapi_python)
}

fn make_xenapi_python() -> Result<PathBuf, HarnessError> {
    let venv = paths::keel_dir().join(format!("pyenv-xenapi-{XENAPI_VERSION}"));
    let python = venv.join("bin/python3");
    if imports_sdk(&python) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    if !make_venv(&venv) {
        if !prereq::running_as_root() {
            let command = prereq::install_command(&["python3-venv"], false);
            return Err(io_error(
                format!("python venv at {}", venv.display()),
                format!("python3 cannot make a venv: install with `{command}`"),
            ));
        }
        let install = prereq::install_command(&["python3-venv"], true);
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("apt-get update -qq && {install}"))
            .status();
        if !status.is_ok_and(|s| s.success()) || !make_venv(&venv) {
            return Err(io_error(
                format!("python venv at {}", venv.display()),
                format!("`{install}` did not make `python3 -m venv` work"),
            ));
        }
    }
    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("XenAPI=={XENAPI_VERSION}"))
        .status();
    if !pip.is_ok_and(|s| s.success()) || !imports_sdk(&python) {
        return Err(io_error(
            format!("XenAPI {XENAPI_VERSION} in {}", venv.display()),
            "pip could not install it".into(),
        ));
    }
    Ok(python)
}

fn make_venv(venv: &Path) -> bool {
    Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .is_ok_and(|s| s.success())
        && venv.join("bin/python3").exists()
}

fn imports_sdk(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import XenAPI"])
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs `script` with the SDK's python, with `args` as `sys.argv[1:]`; returns stdout, or
/// an error holding stderr.
pub fn run_script(script: &str, args: &[&str]) -> Result<String, HarnessError> {
    let python = xenapi_python()?;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .map_err(|error| HarnessError::Io {
            what: format!("running {}", python.display()),
            error,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io_error(
            "python XenAPI script".into(),
            format!(
                "exited with {}\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}
