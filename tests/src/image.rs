//! Building the Keel image and finding it for the tests.
//!
//! [`build`] is the one way the image gets built (`cargo xtask build/run/test/bench` and the
//! harness all call it): `cargo build -p keel-kernel --target x86_64-unknown-none` into the
//! workspace's `target/`, then a copy to `target/keel/keel.elf` (release) or
//! `target/keel/keel-debug.elf` (debug).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, OnceLock};

use crate::paths;

/// The environment variable that hands the tests a ready image.
pub const IMAGE_ENV: &str = "KEEL_IMAGE";

/// The kernel's target triple.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// The kernel package and binary names.
pub const KERNEL_PACKAGE: &str = "keel-kernel";
pub const KERNEL_BINARY: &str = "keel";

/// Cargo build profile of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir_name(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }

    /// Where the finished image is copied.
    pub fn image_path(self) -> PathBuf {
        match self {
            Profile::Debug => paths::debug_image(),
            Profile::Release => paths::release_image(),
        }
    }
}

/// Why no image is available.
#[derive(Debug, Clone)]
pub enum ImageError {
    /// `KEEL_IMAGE` names a file that does not exist.
    EnvImageMissing(PathBuf),
    /// An image path given explicitly does not exist.
    Missing(PathBuf),
    /// Cargo could not be started.
    CargoNotStarted(Arc<std::io::Error>),
    /// `cargo build` failed (its own output explains why).
    BuildFailed { command: String, status: ExitStatus },
    /// Copying the built binary into `target/keel/` failed.
    Copy {
        from: PathBuf,
        to: PathBuf,
        error: Arc<std::io::Error>,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::EnvImageMissing(path) => write!(
                f,
                "{IMAGE_ENV}={} does not exist: build it with `cargo xtask build --release` or run `cargo xtask test`",
                path.display()
            ),
            ImageError::Missing(path) => write!(
                f,
                "image {} does not exist: build it with `cargo xtask build --release`",
                path.display()
            ),
            ImageError::CargoNotStarted(error) => write!(f, "could not start cargo to build the image: {error}"),
            ImageError::BuildFailed { command, status } => {
                write!(f, "building the image failed: `{command}` ({status})")
            }
            ImageError::Copy { from, to, error } => {
                write!(f, "copying {} to {} failed: {error}", from.display(), to.display())
            }
        }
    }
}

impl std::error::Error for ImageError {}

/// The cargo arguments that build the image.
pub fn build_args(profile: Profile, target_dir: &Path) -> Vec<String> {
    let mut args = vec![
        "build".to_string(),
        "-p".into(),
        KERNEL_PACKAGE.into(),
        "--target".into(),
        KERNEL_TARGET.into(),
    ];
    if profile == Profile::Release {
        args.push("--release".into());
    }
    args.push("--target-dir".into());
    args.push(target_dir.to_string_lossy().into_owned());
    args
}

/// The cargo that runs us (set by cargo for `cargo run` and `cargo test`), else `cargo`.
pub fn cargo_binary() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Builds the image and copies it to [`Profile::image_path`]; returns that path.
pub fn build(profile: Profile) -> Result<PathBuf, ImageError> {
    let root = paths::workspace_root();
    let target_dir = paths::target_dir();
    let args = build_args(profile, &target_dir);
    let command = format!("cargo {}", args.join(" "));
    let status = Command::new(cargo_binary())
        .args(&args)
        .current_dir(&root)
        .status()
        .map_err(|e| ImageError::CargoNotStarted(Arc::new(e)))?;
    if !status.success() {
        return Err(ImageError::BuildFailed { command, status });
    }
    let built = target_dir
        .join(KERNEL_TARGET)
        .join(profile.dir_name())
        .join(KERNEL_BINARY);
    let image = profile.image_path();
    let copied =
        std::fs::create_dir_all(paths::keel_dir()).and_then(|()| std::fs::copy(&built, &image));
    match copied {
        Ok(_) => Ok(image),
        Err(error) => Err(ImageError::Copy {
            from: built,
            to: image,
            error: Arc::new(error),
        }),
    }
}

/// The image the integration tests boot: `KEEL_IMAGE` when set (as `cargo xtask test` does),
/// else the release image built once per test process by [`build`].
pub fn for_tests() -> Result<PathBuf, ImageError> {
    if let Some(path) = std::env::var_os(IMAGE_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ImageError::EnvImageMissing(path))
        };
    }
    static BUILT: OnceLock<Result<PathBuf, ImageError>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            eprintln!("keel-tests: {IMAGE_ENV} is not set; building the release image (`cargo xtask test` sets it)");
            build(Profile::Release)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_build_args_name_package_target_and_target_dir() {
        let args = build_args(Profile::Release, Path::new("/ws/target"));
        assert_eq!(
            args,
            [
                "build",
                "-p",
                "keel-kernel",
                "--target",
                "x86_64-unknown-none",
                "--release",
                "--target-dir",
                "/ws/target"
            ]
        );
    }

    #[test]
    fn debug_build_has_no_release_flag_and_its_own_image_name() {
        assert!(!build_args(Profile::Debug, Path::new("t")).contains(&"--release".to_string()));
        assert!(Profile::Debug.image_path().ends_with("keel/keel-debug.elf"));
        assert!(Profile::Release.image_path().ends_with("keel/keel.elf"));
    }

    #[test]
    fn missing_env_image_error_tells_how_to_get_one() {
        let text = ImageError::EnvImageMissing("/nope/keel.elf".into()).to_string();
        assert!(text.contains("KEEL_IMAGE=/nope/keel.elf does not exist"));
        assert!(text.contains("cargo xtask test"));
    }
}
