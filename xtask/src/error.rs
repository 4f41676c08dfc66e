//! Every way an `xtask` command can fail, and the exit code for each.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;

use keel_image_builder::ImageError as MediaError;
use keel_tests::image::ImageError;
use keel_tests::prereq::PrereqError;
use keel_tests::HarnessError;

use crate::cli::CliError;

pub enum XtaskError {
    Usage(CliError),
    Prerequisite(PrereqError),
    Image(ImageError),
    /// Building boot media (`image`) failed.
    Media(MediaError),
    Harness(HarnessError),
    Io {
        what: String,
        error: std::io::Error,
    },
    /// A disk given to `run` does not exist.
    DiskMissing(PathBuf),
    /// A child command (cargo test, QEMU) failed.
    CommandFailed {
        command: String,
        status: Option<ExitStatus>,
    },
    /// The ready line did not have the promised `(keel VERSION, boot MS ms)` form.
    MalformedReadyLine(String),
    /// A benchmark could not measure what it measures (no answer, a failed login, ...).
    BenchFailed(String),
}

impl XtaskError {
    /// 2 for usage mistakes (as most tools do), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            XtaskError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for XtaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XtaskError::Usage(error) => write!(f, "{error} (see `cargo xtask help`)"),
            XtaskError::Prerequisite(error) => write!(f, "{error}"),
            XtaskError::Image(error) => write!(f, "{error}"),
            XtaskError::Media(error) => write!(f, "{error}"),
            XtaskError::Harness(error) => write!(f, "{error}"),
            XtaskError::Io { what, error } => write!(f, "{what}: {error}"),
            XtaskError::DiskMissing(path) => {
                write!(f, "disk image {} does not exist", path.display())
            }
            XtaskError::CommandFailed {
                command,
                status: Some(status),
            } => write!(f, "`{command}` failed ({status})"),
            XtaskError::CommandFailed {
                command,
                status: None,
            } => write!(f, "`{command}` could not be started"),
            XtaskError::MalformedReadyLine(line) => {
                write!(
                    f,
                    "the ready line lacks '(keel VERSION, boot MS ms)': {line:?}"
                )
            }
            XtaskError::BenchFailed(why) => write!(f, "benchmark failed: {why}"),
        }
    }
}

impl From<CliError> for XtaskError {
    fn from(error: CliError) -> Self {
        XtaskError::Usage(error)
    }
}

impl From<PrereqError> for XtaskError {
    fn from(error: PrereqError) -> Self {
        XtaskError::Prerequisite(error)
    }
}

impl From<ImageError> for XtaskError {
    fn from(error: ImageError) -> Self {
        XtaskError::Image(error)
    }
}

impl From<MediaError> for XtaskError {
    fn from(error: MediaError) -> Self {
        XtaskError::Media(error)
    }
}

impl From<HarnessError> for XtaskError {
    fn from(error: HarnessError) -> Self {
        XtaskError::Harness(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_point_at_help() {
        let error = XtaskError::from(CliError::NoCommand);
        assert_eq!(error.exit_code(), 2);
        assert_eq!(
            error.to_string(),
            "no command given (see `cargo xtask help`)"
        );
        assert_eq!(XtaskError::DiskMissing("x.img".into()).exit_code(), 1);
    }

    #[test]
    fn benchmark_failures_say_what_failed_not_that_a_ready_line_was_malformed() {
        let text = XtaskError::BenchFailed("login failed".into()).to_string();
        assert_eq!(text, "benchmark failed: login failed");
        assert_eq!(XtaskError::BenchFailed(String::new()).exit_code(), 1);
    }
}
