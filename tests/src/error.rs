//! What can go wrong while booting and watching a VM.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::console::Pattern;
use crate::image::ImageError;
use crate::prereq::PrereqError;

/// How many console lines an error report carries.
pub const TAIL_LINES: usize = 40;

/// A harness failure. Errors about a running VM carry the last [`TAIL_LINES`] console lines
/// and the path of the full log.
pub enum HarnessError {
    /// No image to boot.
    Image(ImageError),
    /// QEMU (or another prerequisite) is not installed.
    Prerequisite(PrereqError),
    /// A file or directory the harness needs could not be made.
    Io { what: String, error: std::io::Error },
    /// QEMU could not be started.
    Spawn {
        program: String,
        error: std::io::Error,
    },
    /// The deadline passed without a matching console line.
    Timeout {
        pattern: Pattern,
        waited: Duration,
        tail: Vec<String>,
        log: PathBuf,
    },
    /// QEMU's console ended (it exited) without a matching line.
    Exited {
        pattern: Pattern,
        status: Option<ExitStatus>,
        tail: Vec<String>,
        log: PathBuf,
    },
    /// QEMU did not exit within the deadline.
    StillRunning {
        waited: Duration,
        tail: Vec<String>,
        log: PathBuf,
    },
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Image(error) => write!(f, "{error}"),
            HarnessError::Prerequisite(error) => write!(f, "{error}"),
            HarnessError::Io { what, error } => write!(f, "{what}: {error}"),
            HarnessError::Spawn { program, error } => {
                write!(f, "could not start {program}: {error}")
            }
            HarnessError::Timeout {
                pattern,
                waited,
                tail,
                log,
            } => {
                write!(
                    f,
                    "timed out after {:.1} s waiting for {pattern}",
                    waited.as_secs_f64()
                )?;
                write_tail(f, tail, log)
            }
            HarnessError::Exited {
                pattern,
                status,
                tail,
                log,
            } => {
                match status {
                    Some(status) => write!(f, "QEMU exited ({status}) before {pattern} appeared")?,
                    None => write!(f, "QEMU closed its console before {pattern} appeared")?,
                }
                write_tail(f, tail, log)
            }
            HarnessError::StillRunning { waited, tail, log } => {
                write!(
                    f,
                    "QEMU was still running after {:.1} s",
                    waited.as_secs_f64()
                )?;
                write_tail(f, tail, log)
            }
        }
    }
}

fn write_tail(f: &mut fmt::Formatter<'_>, tail: &[String], log: &std::path::Path) -> fmt::Result {
    write!(
        f,
        "\nfull console log: {}\nlast {} console lines:",
        log.display(),
        tail.len()
    )?;
    for line in tail {
        write!(f, "\n  | {line}")?;
    }
    Ok(())
}

/// Same as Display: a test that returns `Err(HarnessError)` is reported by libtest with
/// `{:?}`, and the console tail is only useful when printed as lines.
impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for HarnessError {}

impl From<ImageError> for HarnessError {
    fn from(error: ImageError) -> Self {
        HarnessError::Image(error)
    }
}

impl From<PrereqError> for HarnessError {
    fn from(error: PrereqError) -> Self {
        HarnessError::Prerequisite(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_report_names_pattern_log_and_tail() {
        let error = HarnessError::Timeout {
            pattern: Pattern::starts_with("keel: ready"),
            waited: Duration::from_secs(60),
            tail: vec!["[    0.001000] INFO  hello".into(), "stuck".into()],
            log: "/t/keel/test-logs/boot.log".into(),
        };
        let text = format!("{error:?}");
        assert!(text.starts_with(
            "timed out after 60.0 s waiting for a line starting with \"keel: ready\""
        ));
        assert!(text.contains("full console log: /t/keel/test-logs/boot.log"));
        assert!(text.contains("last 2 console lines:\n  | [    0.001000] INFO  hello\n  | stuck"));
    }
}
