//! The Rust toolchain that `rust-toolchain.toml` pins, with its targets and components.
//!
//! rustup installs a toolchain file's targets and components only when it installs the
//! toolchain itself: a machine that already had Rust 1.95.0 lacks `x86_64-unknown-none`,
//! and the image build fails with "can't find crate for `core`". [`ensure_on`] adds what
//! is missing with `rustup target add` / `rustup component add` (per-user, no root needed)
//! before the image is built; without rustup it says which command to run.

use std::path::{Path, PathBuf};

use super::{PrereqError, System};
use crate::paths;

/// The `[toolchain]` table of `rust-toolchain.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    pub channel: String,
    pub targets: Vec<String>,
    pub components: Vec<String>,
}

/// The pinned toolchain file.
pub fn toolchain_file() -> PathBuf {
    paths::workspace_root().join("rust-toolchain.toml")
}

impl Toolchain {
    /// Reads the workspace's `rust-toolchain.toml`.
    pub fn pinned() -> Result<Toolchain, PrereqError> {
        let path = toolchain_file();
        let text = std::fs::read_to_string(&path).map_err(|error| PrereqError::ToolchainFile {
            path: path.clone(),
            why: error.to_string(),
        })?;
        Toolchain::parse(&text).ok_or(PrereqError::ToolchainFile {
            path,
            why: "no `channel` in its [toolchain] table".into(),
        })
    }

    /// The `channel`, `targets` and `components` of the `[toolchain]` table. The file is
    /// ours and keeps each key on one line (`key = "value"`, `key = ["a", "b"]`); anything
    /// else in it is ignored. `None` without a channel.
    pub fn parse(text: &str) -> Option<Toolchain> {
        let mut in_table = false;
        let (mut channel, mut targets, mut components) = (None, Vec::new(), Vec::new());
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.starts_with('[') {
                in_table = line == "[toolchain]";
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if !in_table {
                continue;
            }
            let strings = || -> Vec<String> {
                value
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(|item| item.trim().trim_matches('"').to_string())
                    .filter(|item| !item.is_empty())
                    .collect()
            };
            match key.trim() {
                "channel" => channel = strings().into_iter().next(),
                "targets" => targets = strings(),
                "components" => components = strings(),
                _ => {}
            }
        }
        Some(Toolchain {
            channel: channel?,
            targets,
            components,
        })
    }
}

/// Whether rustup's `--installed` listing has `component`: bare (`rust-src`) or, for
/// target-specific components, suffixed with one of the installed `targets`
/// (`clippy-x86_64-unknown-linux-gnu`), so that `rust-docs-…` never passes for `rust`.
fn listed(listing: &str, component: &str, targets: &str) -> bool {
    listing.lines().map(str::trim).any(|line| {
        line == component
            || line
                .strip_prefix(component)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|triple| targets.lines().any(|t| t.trim() == triple))
    })
}

/// The items of `wanted` for which `has` fails.
fn missing_from(wanted: &[String], has: impl Fn(&str) -> bool) -> Vec<String> {
    wanted.iter().filter(|item| !has(item)).cloned().collect()
}

/// `rustup target|component list --installed --toolchain NAME`; `None` when rustup does not
/// know the toolchain.
fn installed(system: &mut impl System, what: &str, toolchain: &str) -> Option<String> {
    system.output(
        "rustup",
        &[what, "list", "--installed", "--toolchain", toolchain],
    )
}

fn rustup_command(subcommand: &[&str], toolchain: &str, items: &[String]) -> Vec<String> {
    subcommand
        .iter()
        .map(|s| s.to_string())
        .chain(["--toolchain".to_string(), toolchain.to_string()])
        .chain(items.iter().cloned())
        .collect()
}

fn run_rustup(system: &mut impl System, args: &[String]) -> Result<(), PrereqError> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let command = format!("rustup {}", words.join(" "));
    eprintln!("==> {command}");
    system
        .run("rustup", &words)
        .map_err(|status| PrereqError::InstallFailed { command, status })
}

/// Makes sure this machine's rustup has the pinned toolchain with its targets and components.
pub fn ensure() -> Result<Toolchain, PrereqError> {
    let toolchain = Toolchain::pinned()?;
    ensure_on(&mut super::Host, &toolchain)?;
    Ok(toolchain)
}

/// Makes sure `toolchain` has its targets and components, adding them with rustup.
pub fn ensure_on(system: &mut impl System, toolchain: &Toolchain) -> Result<(), PrereqError> {
    let name = toolchain.channel.as_str();
    if system.output("rustup", &["--version"]).is_none() {
        return check_without_rustup(system, toolchain);
    }
    let Some(targets) = installed(system, "target", name) else {
        // rustup lacks the toolchain itself: install it with everything the file asks for.
        let mut args = vec![
            "toolchain".to_string(),
            "install".into(),
            name.to_string(),
            "--profile".into(),
            "minimal".into(),
        ];
        for target in &toolchain.targets {
            args.extend(["--target".to_string(), target.clone()]);
        }
        for component in &toolchain.components {
            args.extend(["--component".to_string(), component.clone()]);
        }
        return run_rustup(system, &args);
    };
    let components = installed(system, "component", name).unwrap_or_default();
    let missing_targets = missing_from(&toolchain.targets, |target| {
        targets.lines().any(|line| line.trim() == target)
    });
    let missing_components = missing_from(&toolchain.components, |component| {
        listed(&components, component, &targets)
    });
    if !missing_targets.is_empty() {
        run_rustup(
            system,
            &rustup_command(&["target", "add"], name, &missing_targets),
        )?;
    }
    if !missing_components.is_empty() {
        run_rustup(
            system,
            &rustup_command(&["component", "add"], name, &missing_components),
        )?;
    }
    Ok(())
}

/// Without rustup the targets can still be seen in the sysroot; components cannot (and
/// only `cargo fmt`/`cargo clippy` need them, which say so themselves).
fn check_without_rustup(
    system: &mut impl System,
    toolchain: &Toolchain,
) -> Result<(), PrereqError> {
    let sysroot = system
        .output("rustc", &["--print", "sysroot"])
        .map(|s| s.trim().to_string());
    let missing: Vec<String> = toolchain
        .targets
        .iter()
        .filter(|target| {
            sysroot.as_ref().is_none_or(|root| {
                !system.is_dir(&Path::new(root).join("lib/rustlib").join(target).join("lib"))
            })
        })
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PrereqError::Toolchain {
        what: format!(
            "the target {} and rustup is not installed",
            missing.join(", ")
        ),
        fix: format!(
            "install rustup (https://rustup.rs), then run `rustup target add --toolchain {} {}`",
            toolchain.channel,
            missing.join(" ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeSystem, FAKE_HOST};
    use super::*;

    fn pinned() -> Toolchain {
        Toolchain {
            channel: "1.95.0".into(),
            targets: vec!["x86_64-unknown-none".into()],
            components: vec!["clippy".into(), "rustfmt".into()],
        }
    }

    #[test]
    fn the_workspace_file_pins_the_kernel_target() {
        let toolchain = Toolchain::pinned().ok();
        assert!(toolchain
            .as_ref()
            .is_some_and(|t| t.targets.contains(&crate::image::KERNEL_TARGET.to_string())));
        assert!(toolchain.is_some_and(|t| t.channel.starts_with("1.")));
    }

    #[test]
    fn parse_reads_the_toolchain_table_only() {
        let text = "# pinned\n[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"x86_64-unknown-none\"] # the image\ncomponents = [\"clippy\", \"rustfmt\"]\nprofile = \"minimal\"\n[other]\ntargets = [\"nope\"]\n";
        assert_eq!(Toolchain::parse(text), Some(pinned()));
        assert_eq!(Toolchain::parse("[toolchain]\ntargets = []\n"), None);
        assert_eq!(
            Toolchain::parse("[toolchain]\nchannel = \"stable\"\ntargets = []\n"),
            Some(Toolchain {
                channel: "stable".into(),
                targets: Vec::new(),
                components: Vec::new()
            })
        );
    }

    #[test]
    fn components_match_with_their_host_suffix_only() {
        let listing = format!("cargo-{FAKE_HOST}\nrust-docs-{FAKE_HOST}\nrust-src\n");
        let targets = format!("{FAKE_HOST}\nx86_64-unknown-none\n");
        assert!(listed(&listing, "cargo", &targets));
        assert!(listed(&listing, "rust-src", &targets));
        assert!(!listed(&listing, "rust-std", &targets));
        assert!(!listed(&listing, "rust", &targets));
        assert!(!listed(&listing, "clippy", &targets));
        assert!(!listed(&listing, "cargo", "x86_64-unknown-none\n"));
    }

    #[test]
    fn an_installed_toolchain_without_the_target_gets_it_added() {
        // The state a fresh machine with a preinstalled Rust 1.95.0 is in.
        let mut system = FakeSystem::default().with_rustup_toolchain("1.95.0");
        assert!(ensure_on(&mut system, &pinned()).is_ok());
        let runs: Vec<&String> = system
            .commands
            .iter()
            .filter(|c| c.contains(" add "))
            .collect();
        assert_eq!(
            runs,
            [
                "rustup target add --toolchain 1.95.0 x86_64-unknown-none",
                "rustup component add --toolchain 1.95.0 clippy rustfmt",
            ]
        );
        let toolchain = system.toolchain("1.95.0").cloned().unwrap_or_default();
        assert!(toolchain.targets.contains("x86_64-unknown-none"));
        assert!(toolchain
            .components
            .contains(&format!("clippy-{FAKE_HOST}")));

        // A second time nothing is added.
        system.commands.clear();
        assert!(ensure_on(&mut system, &pinned()).is_ok());
        assert!(
            system.commands.iter().all(|c| !c.contains(" add ")),
            "{:?}",
            system.commands
        );
    }

    #[test]
    fn a_missing_toolchain_is_installed_with_the_files_targets_and_components() {
        let mut system = FakeSystem::default().with_rustup_toolchain("stable");
        assert!(ensure_on(&mut system, &pinned()).is_ok());
        assert_eq!(
            system.commands.last().map(String::as_str),
            Some("rustup toolchain install 1.95.0 --profile minimal --target x86_64-unknown-none --component clippy --component rustfmt")
        );
        assert!(system
            .toolchain("1.95.0")
            .is_some_and(|t| t.targets.contains("x86_64-unknown-none")));
    }

    #[test]
    fn a_failing_rustup_is_reported_with_its_command() {
        let mut system = FakeSystem::default().with_rustup_toolchain("1.95.0");
        system.failing.push("rustup target add".into());
        let error = ensure_on(&mut system, &pinned())
            .err()
            .map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e
                .starts_with("`rustup target add --toolchain 1.95.0 x86_64-unknown-none` failed")),
            "{error:?}"
        );
    }

    #[test]
    fn without_rustup_the_sysroot_decides_and_the_error_is_one_line() {
        let mut system = FakeSystem {
            sysroot: Some("/usr/lib/rust\n".into()),
            ..FakeSystem::default()
        };
        let error = ensure_on(&mut system, &pinned())
            .err()
            .map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| !e.contains('\n')
                && e == "Rust lacks the target x86_64-unknown-none and rustup is not installed: install rustup (https://rustup.rs), then run `rustup target add --toolchain 1.95.0 x86_64-unknown-none`"),
            "{error:?}"
        );
        assert!(system.commands.iter().all(|c| !c.contains("add")));

        system
            .dirs
            .insert("/usr/lib/rust/lib/rustlib/x86_64-unknown-none/lib".into());
        assert!(ensure_on(&mut system, &pinned()).is_ok());
    }
}
