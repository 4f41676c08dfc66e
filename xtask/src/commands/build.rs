//! `cargo xtask build [--release]`: build the image and say where it is.

use std::path::PathBuf;

use keel_tests::image::{self, Profile};
use keel_tests::prereq::toolchain;

use crate::error::XtaskError;
use crate::progress;

/// Builds the image with progress output; returns its path and size in bytes. The pinned
/// toolchain's targets come first: rustup does not add them to a toolchain it already had.
pub fn build_image(profile: Profile) -> Result<(PathBuf, u64), XtaskError> {
    toolchain::ensure()?;
    let name = match profile {
        Profile::Release => "release",
        Profile::Debug => "debug",
    };
    let step = progress::step(format!("building the image ({name})"));
    let path = image::build(profile)?;
    step.done();
    let size = std::fs::metadata(&path)
        .map_err(|error| XtaskError::Io {
            what: format!("reading {}", path.display()),
            error,
        })?
        .len();
    Ok((path, size))
}

pub fn run(release: bool) -> Result<(), XtaskError> {
    let profile = if release {
        Profile::Release
    } else {
        Profile::Debug
    };
    let (path, size) = build_image(profile)?;
    println!("{}: {}", path.display(), format_size(size));
    Ok(())
}

/// `1.23 MiB (1289748 bytes)`.
pub fn format_size(bytes: u64) -> String {
    // Precision loss above 2^53 bytes is irrelevant for an image size.
    format!(
        "{:.2} MiB ({bytes} bytes)",
        bytes as f64 / f64::from(1u32 << 20)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_show_mib_and_exact_bytes() {
        assert_eq!(format_size(0), "0.00 MiB (0 bytes)");
        assert_eq!(format_size(1_289_748), "1.23 MiB (1289748 bytes)");
    }
}
