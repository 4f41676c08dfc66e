//! A machine for the prerequisite logic to be tested on: probes answer from a set, every
//! command is recorded, and `apt-get install` and `rustup` change the state the way the real
//! ones do (an installed package makes its tools' probes succeed; an added target is listed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitStatus;

use super::{Probe, System, Tool};

/// One rustup toolchain's installed targets and components (with their host suffix, as
/// `rustup component list --installed` prints them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeToolchain {
    pub targets: BTreeSet<String>,
    pub components: BTreeSet<String>,
}

/// A recorded machine.
#[derive(Debug, Clone, Default)]
pub struct FakeSystem {
    pub root: bool,
    /// Probes that succeed, by their display text.
    pub present: BTreeSet<String>,
    /// Directories that exist.
    pub dirs: BTreeSet<String>,
    /// Every command run (`run` and `output`), as one line each.
    pub commands: Vec<String>,
    /// Commands that fail: a recorded line starting with one of these fails.
    pub failing: Vec<String>,
    /// Packages whose install succeeds without providing their probe (a renamed file).
    pub hollow_packages: Vec<&'static str>,
    /// rustup's toolchains by name; `None`: rustup is not installed.
    pub rustup: Option<BTreeMap<String, FakeToolchain>>,
    /// What `rustc --print sysroot` prints (without rustup).
    pub sysroot: Option<String>,
}

/// The host triple the fake's toolchains are for.
pub const FAKE_HOST: &str = "x86_64-unknown-linux-gnu";

impl FakeSystem {
    /// Debian as root with apt-get, none of Keel's tools, and no rustup.
    pub fn fresh_debian_as_root() -> Self {
        let mut system = FakeSystem {
            root: true,
            ..FakeSystem::default()
        };
        system.add_probe(Probe::File("/etc/debian_version"));
        system.add_probe(Probe::Binary("apt-get"));
        system
    }

    /// Adds rustup with `toolchain` installed with the minimal profile: the host's std,
    /// rustc and cargo, no other target and no other component.
    pub fn with_rustup_toolchain(mut self, toolchain: &str) -> Self {
        let minimal = FakeToolchain {
            targets: [FAKE_HOST.to_string()].into(),
            components: ["cargo", "rustc", "rust-std"]
                .iter()
                .map(|c| format!("{c}-{FAKE_HOST}"))
                .collect(),
        };
        self.rustup
            .get_or_insert_with(BTreeMap::new)
            .insert(toolchain.to_string(), minimal);
        self
    }

    pub fn add_probe(&mut self, probe: Probe) {
        self.present.insert(probe.to_string());
    }

    pub fn remove_probe(&mut self, probe: Probe) {
        self.present.remove(&probe.to_string());
    }

    /// Makes `tools` present, as if their packages had been installed earlier.
    pub fn install_tools(&mut self, tools: &[Tool]) {
        for tool in tools {
            self.add_probe(tool.probe());
        }
    }

    /// The toolchain named `name`, if rustup has it.
    pub fn toolchain(&self, name: &str) -> Option<&FakeToolchain> {
        self.rustup.as_ref()?.get(name)
    }

    fn record(&mut self, program: &str, args: &[&str]) -> Result<(), Option<ExitStatus>> {
        let line = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let fails = self.failing.iter().any(|prefix| line.starts_with(prefix));
        self.commands.push(line);
        if fails {
            // Exit status 100, as apt-get's.
            Err(Some(std::os::unix::process::ExitStatusExt::from_raw(
                100 << 8,
            )))
        } else {
            Ok(())
        }
    }

    fn apt_install(&mut self, packages: &[&str]) {
        for tool in Tool::ALL {
            if packages.contains(&tool.package()) && !self.hollow_packages.contains(&tool.package())
            {
                self.add_probe(tool.probe());
            }
        }
    }

    /// `rustup SUBCOMMAND ... --toolchain NAME ITEMS...`: the toolchain and the items.
    fn toolchain_and_items<'a>(args: &[&'a str]) -> (Option<&'a str>, Vec<&'a str>) {
        let mut toolchain = None;
        let mut items = Vec::new();
        let mut words = args.iter().copied();
        while let Some(word) = words.next() {
            if word == "--toolchain" {
                toolchain = words.next();
            } else if !word.starts_with('-') {
                items.push(word);
            }
        }
        (toolchain, items)
    }

    fn rustup(&mut self, args: &[&str]) -> Option<String> {
        let rustup = self.rustup.as_mut()?;
        let (name, items) = Self::toolchain_and_items(args.get(2..).unwrap_or_default());
        match args {
            ["--version", ..] => Some("rustup 1.29.0 (fake)\n".into()),
            ["target", "list", ..] | ["component", "list", ..] => {
                let toolchain = rustup.get(name?)?;
                let list = if args[0] == "target" {
                    &toolchain.targets
                } else {
                    &toolchain.components
                };
                Some(list.iter().map(|item| format!("{item}\n")).collect())
            }
            ["target", "add", ..] => {
                let toolchain = rustup.get_mut(name?)?;
                toolchain
                    .targets
                    .extend(items.iter().map(|t| t.to_string()));
                Some(String::new())
            }
            ["component", "add", ..] => {
                let toolchain = rustup.get_mut(name?)?;
                toolchain
                    .components
                    .extend(items.iter().map(|c| format!("{c}-{FAKE_HOST}")));
                Some(String::new())
            }
            ["toolchain", "install", channel, rest @ ..] => {
                let mut toolchain = FakeToolchain {
                    targets: [FAKE_HOST.to_string()].into(),
                    ..FakeToolchain::default()
                };
                let mut words = rest.iter();
                while let Some(word) = words.next() {
                    match *word {
                        "--target" => {
                            toolchain
                                .targets
                                .extend(words.next().map(|t| t.to_string()));
                        }
                        "--component" => {
                            toolchain
                                .components
                                .extend(words.next().map(|c| format!("{c}-{FAKE_HOST}")));
                        }
                        _ => {}
                    }
                }
                rustup.insert(channel.to_string(), toolchain);
                Some(String::new())
            }
            _ => None,
        }
    }
}

impl System for FakeSystem {
    fn is_present(&self, probe: Probe) -> bool {
        self.present.contains(&probe.to_string())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.dirs.contains(&path.to_string_lossy().into_owned())
    }

    fn is_root(&self) -> bool {
        self.root
    }

    fn run(&mut self, program: &str, args: &[&str]) -> Result<(), Option<ExitStatus>> {
        self.record(program, args)?;
        match program {
            "apt-get" if args.first() == Some(&"install") => {
                self.apt_install(args);
                Ok(())
            }
            "apt-get" => Ok(()),
            "rustup" => self.rustup(args).map(|_| ()).ok_or(None),
            _ => Err(None),
        }
    }

    fn output(&mut self, program: &str, args: &[&str]) -> Option<String> {
        self.record(program, args).ok()?;
        match program {
            "rustup" => self.rustup(args),
            "rustc" if args == ["--print", "sysroot"] => self.sysroot.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_a_package_makes_its_tools_present_unless_it_is_hollow() {
        let mut system = FakeSystem::fresh_debian_as_root();
        system.hollow_packages.push("ovmf");
        assert!(system
            .run("apt-get", &["install", "-y", "grub-common", "ovmf"])
            .is_ok());
        assert!(system.is_present(Tool::GrubMkimage.probe()));
        assert!(!system.is_present(Tool::Ovmf.probe()));
        assert!(!system.is_present(Tool::GrubBios.probe()));
    }

    #[test]
    fn rustup_lists_what_was_added() {
        let mut system = FakeSystem::default().with_rustup_toolchain("1.95.0");
        let targets = |s: &mut FakeSystem| {
            s.output(
                "rustup",
                &["target", "list", "--installed", "--toolchain", "1.95.0"],
            )
        };
        assert_eq!(
            targets(&mut system).as_deref(),
            Some("x86_64-unknown-linux-gnu\n")
        );
        assert!(system
            .run(
                "rustup",
                &[
                    "target",
                    "add",
                    "--toolchain",
                    "1.95.0",
                    "x86_64-unknown-none"
                ]
            )
            .is_ok());
        assert_eq!(
            targets(&mut system).as_deref(),
            Some("x86_64-unknown-linux-gnu\nx86_64-unknown-none\n")
        );
        assert_eq!(
            system.output(
                "rustup",
                &["target", "list", "--installed", "--toolchain", "1.94.0"]
            ),
            None
        );
        assert_eq!(FakeSystem::default().output("rustup", &["--version"]), None);
    }
}
