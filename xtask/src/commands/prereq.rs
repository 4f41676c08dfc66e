//! `cargo xtask prereq`: install everything any `cargo xtask` command or test uses, from the
//! one list in `keel_tests::prereq` (`Tool::ALL`), and the pinned Rust toolchain's targets and
//! components. `.ci/run` calls this instead of keeping a package list of its own.

use keel_tests::prereq::{self, toolchain, Tool};

use crate::error::XtaskError;
use crate::progress;

pub fn run() -> Result<(), XtaskError> {
    let step = progress::step(format!(
        "system packages: {}",
        prereq::packages_of(Tool::ALL).join(" ")
    ));
    prereq::ensure(Tool::ALL)?;
    step.done();
    let step = progress::step("Rust toolchain from rust-toolchain.toml");
    let pinned = toolchain::ensure()?;
    progress::note(format!(
        "Rust {} with {}",
        pinned.channel,
        pinned
            .targets
            .iter()
            .chain(&pinned.components)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    ));
    step.done();
    Ok(())
}

#[cfg(test)]
mod tests {
    use keel_tests::paths::workspace_root;

    /// The CI script's commands, comments and blank lines left out.
    fn ci_commands() -> Vec<String> {
        std::fs::read_to_string(workspace_root().join(".ci/run"))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn ci_installs_through_this_command_before_it_needs_anything() {
        let commands = ci_commands();
        let position = |needle: &str| commands.iter().position(|line| line.contains(needle));
        let prereq = position("cargo xtask prereq");
        assert!(
            prereq.is_some(),
            ".ci/run does not run `cargo xtask prereq`"
        );
        for later in [
            "cargo fmt",
            "cargo clippy",
            "--target x86_64-unknown-none",
            "cargo xtask test",
        ] {
            assert!(
                position(later) > prereq,
                ".ci/run runs `{later}` before `cargo xtask prereq`"
            );
        }
    }

    #[test]
    fn ci_keeps_no_package_list_of_its_own() {
        for line in ci_commands() {
            assert!(
                !line.contains("apt-get install") && !line.contains("apt install"),
                ".ci/run installs packages itself: {line}"
            );
            for package in keel_tests::prereq::packages_of(keel_tests::prereq::Tool::ALL) {
                assert!(
                    !line.split_whitespace().any(|word| word.ends_with(package)),
                    ".ci/run names the package {package}: {line}"
                );
            }
        }
    }
}
