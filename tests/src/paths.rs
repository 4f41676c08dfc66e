//! Where Keel's build products and test artefacts live.
//!
//! Everything sits under the workspace's own `target/` directory, whatever `CARGO_TARGET_DIR`
//! says, so that the image is always at `target/keel/keel.elf` for people, docs and CI alike.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // This crate lives at `<root>/tests`; a manifest directory always has a parent.
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.join(".."), Path::to_path_buf)
}

/// The workspace's `target/` directory, used for the image build.
pub fn target_dir() -> PathBuf {
    workspace_root().join("target")
}

/// `target/keel/`: the image, the scratch disk and test logs.
pub fn keel_dir() -> PathBuf {
    target_dir().join("keel")
}

/// `target/keel/test-logs/`: one console log per booted VM.
pub fn test_logs_dir() -> PathBuf {
    keel_dir().join("test-logs")
}

/// The release image every command and test boots.
pub fn release_image() -> PathBuf {
    keel_dir().join("keel.elf")
}

/// The debug image (`cargo xtask build` without `--release`).
pub fn debug_image() -> PathBuf {
    keel_dir().join("keel-debug.elf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml"));
        assert!(manifest.is_ok_and(|text| text.contains("[workspace]")));
    }

    #[test]
    fn release_image_is_target_keel_keel_elf() {
        assert!(release_image().ends_with("target/keel/keel.elf"));
        assert!(debug_image().ends_with("target/keel/keel-debug.elf"));
        assert!(test_logs_dir().starts_with(workspace_root()));
    }
}
