//! Host prerequisites: the Debian packages every `cargo xtask` command and test uses, each
//! keyed by the binary, file or Python module that must exist, and (in [`toolchain`]) the
//! Rust target and components that `rust-toolchain.toml` pins.
//!
//! [`Tool::ALL`] is the one list: `cargo xtask prereq` installs it, `.ci/run` calls that
//! command instead of keeping a list of its own, and `cargo xtask test` installs it before
//! running the tests. [`ensure`] installs what is missing with `apt-get` when that can work
//! (root on Debian); otherwise it fails with one line holding the exact command to run.
//! Nobody should ever meet a raw "command not found". [`check`] only reports, for callers
//! such as the test harness that must not change the system.
//!
//! The decisions (what is missing, whether installing can work, which commands to run, what
//! to say) are made against the [`System`] trait: [`Host`] is this machine, and
//! [`fake::FakeSystem`] a recorded one on which the install paths are tested.

pub mod fake;
pub mod toolchain;

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Something on the host that Keel's tooling needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `qemu-system-x86_64`, with SeaBIOS and the PVH loader.
    Qemu,
    /// `grub-mkimage`, which builds GRUB core images.
    GrubMkimage,
    /// GRUB's BIOS platform files (the ISO's BIOS boot).
    GrubBios,
    /// GRUB's UEFI platform files (the ISO's UEFI boot).
    GrubEfi,
    /// `xorriso`, which writes the ISO.
    Xorriso,
    /// `mformat`/`mcopy`, which write the ISO's FAT boot image for UEFI.
    Mtools,
    /// QEMU's iPXE option ROMs, which network-boot the PXE bundle.
    IpxeRom,
    /// Debian's Xen 4.17 hypervisor.
    Xen,
    /// UEFI firmware for QEMU.
    Ovmf,
    /// `xz`, which unpacks the ELF `vmlinux` from Debian's kernel for the dom0 benchmark.
    Xz,
    /// `python3 -m venv` with pip (Debian splits `ensurepip` out), for the `XenAPI` SDK venv.
    PythonVenv,
    /// `gcc`, which builds the Linux baseline's static `kbench` for `bench storage`.
    Gcc,
    /// The static C library that `gcc -static` links.
    StaticLibc,
    /// GRUB built for Xen PVH guests (pvgrub2), the kernel of a `PV_bootloader = "pygrub"`
    /// VM: the guest disk boot tests upload it (docs/guests.md, "Booting from the guest's own
    /// disk").
    GrubXenPvh,
    /// `mke2fs`, which makes the guest disk boot tests' ext4 image from a directory.
    Mke2fs,
}

impl Tool {
    /// Everything any `cargo xtask` command or test uses: what `cargo xtask prereq` and
    /// `cargo xtask test` install.
    pub const ALL: &'static [Tool] = &[
        Tool::Qemu,
        Tool::GrubMkimage,
        Tool::GrubBios,
        Tool::GrubEfi,
        Tool::Xorriso,
        Tool::Mtools,
        Tool::IpxeRom,
        Tool::Xen,
        Tool::Ovmf,
        Tool::Xz,
        Tool::PythonVenv,
        Tool::Gcc,
        Tool::StaticLibc,
        Tool::GrubXenPvh,
        Tool::Mke2fs,
    ];

    /// What `cargo xtask image --iso` needs.
    pub const ISO: &'static [Tool] = &[
        Tool::GrubMkimage,
        Tool::GrubBios,
        Tool::GrubEfi,
        Tool::Xorriso,
        Tool::Mtools,
    ];
}

/// Debian's prebuilt GRUB for Xen PVH guests (package `grub-xen-host`): an ELF32 with a
/// `XEN_ELFNOTE_PHYS32_ENTRY` note whose built-in config reads the guest disk's
/// `/boot/grub/grub.cfg`.
pub const GRUB_XEN_PVH_IMAGE: &str = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin";

/// How to tell whether a tool is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// An executable of this name on `PATH`.
    Binary(&'static str),
    /// A file at this absolute path.
    File(&'static str),
    /// A module that `python3 -c "import NAME"` finds.
    PythonModule(&'static str),
}

impl Tool {
    pub fn probe(self) -> Probe {
        match self {
            Tool::Qemu => Probe::Binary("qemu-system-x86_64"),
            Tool::GrubMkimage => Probe::Binary("grub-mkimage"),
            Tool::GrubBios => Probe::File("/usr/lib/grub/i386-pc/boot_hybrid.img"),
            Tool::GrubEfi => Probe::File("/usr/lib/grub/x86_64-efi/multiboot2.mod"),
            Tool::Xorriso => Probe::Binary("xorriso"),
            Tool::Mtools => Probe::Binary("mformat"),
            Tool::IpxeRom => Probe::File("/usr/lib/ipxe/qemu/efi-virtio.rom"),
            Tool::Xen => Probe::File("/boot/xen-4.17-amd64.gz"),
            Tool::Ovmf => Probe::File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            Tool::Xz => Probe::Binary("xz"),
            Tool::PythonVenv => Probe::PythonModule("ensurepip"),
            Tool::Gcc => Probe::Binary("gcc"),
            Tool::StaticLibc => Probe::File("/usr/lib/x86_64-linux-gnu/libc.a"),
            Tool::GrubXenPvh => Probe::File(GRUB_XEN_PVH_IMAGE),
            Tool::Mke2fs => Probe::Binary("mke2fs"),
        }
    }

    /// The Debian package that provides it.
    pub fn package(self) -> &'static str {
        match self {
            Tool::Qemu => "qemu-system-x86",
            Tool::GrubMkimage => "grub-common",
            Tool::GrubBios => "grub-pc-bin",
            Tool::GrubEfi => "grub-efi-amd64-bin",
            Tool::Xorriso => "xorriso",
            Tool::Mtools => "mtools",
            Tool::IpxeRom => "ipxe-qemu",
            Tool::Xen => "xen-hypervisor-4.17-amd64",
            Tool::Ovmf => "ovmf",
            Tool::Xz => "xz-utils",
            Tool::PythonVenv => "python3-venv",
            Tool::Gcc => "gcc",
            Tool::StaticLibc => "libc6-dev",
            Tool::GrubXenPvh => "grub-xen-host",
            Tool::Mke2fs => "e2fsprogs",
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Binary(name) | Probe::File(name) => f.write_str(name),
            Probe::PythonModule(name) => write!(f, "python3 module {name}"),
        }
    }
}

/// Why prerequisites could not be satisfied.
#[derive(Debug)]
pub enum PrereqError {
    /// Missing and not installable from here; `command` is what a person should run.
    Missing { what: Vec<Probe>, command: String },
    /// An install command (`apt-get`, `rustup`) ran and failed.
    InstallFailed {
        command: String,
        status: Option<ExitStatus>,
    },
    /// `apt-get` succeeded but the probe still fails.
    StillMissing {
        what: Vec<Probe>,
        packages: Vec<&'static str>,
    },
    /// The pinned Rust toolchain lacks `what` (targets, components) and this process cannot
    /// add it; `fix` says what a person should do.
    Toolchain { what: String, fix: String },
    /// `rust-toolchain.toml` could not be read or has no `channel`.
    ToolchainFile { path: PathBuf, why: String },
}

impl fmt::Display for PrereqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrereqError::Missing { what, command } => {
                write!(f, "missing {}: install with `{command}`", join(what))
            }
            PrereqError::InstallFailed { command, status } => match status {
                Some(status) => write!(f, "`{command}` failed ({status})"),
                None => write!(f, "`{command}` could not be started"),
            },
            PrereqError::StillMissing { what, packages } => write!(
                f,
                "installed {} but {} is still missing",
                packages.join(" "),
                join(what)
            ),
            PrereqError::Toolchain { what, fix } => write!(f, "Rust lacks {what}: {fix}"),
            PrereqError::ToolchainFile { path, why } => {
                write!(f, "{}: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for PrereqError {}

fn join(what: &[Probe]) -> String {
    what.iter()
        .map(Probe::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the prerequisite logic needs to know about, and do to, a machine.
pub trait System {
    /// Whether the probe finds its binary, file or module.
    fn is_present(&self, probe: Probe) -> bool;
    /// Whether a directory exists (a Rust sysroot's target libraries).
    fn is_dir(&self, path: &Path) -> bool;
    /// Whether this process may install system packages (runs as root).
    fn is_root(&self) -> bool;
    /// Runs `program args` with its output on the terminal; `Err` carries its exit status,
    /// `None` when it could not be started.
    fn run(&mut self, program: &str, args: &[&str]) -> Result<(), Option<ExitStatus>>;
    /// Runs `program args` quietly; its standard output when it succeeded.
    fn output(&mut self, program: &str, args: &[&str]) -> Option<String>;
}

/// This machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct Host;

impl System for Host {
    fn is_present(&self, probe: Probe) -> bool {
        is_present(probe)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn is_root(&self) -> bool {
        running_as_root()
    }

    fn run(&mut self, program: &str, args: &[&str]) -> Result<(), Option<ExitStatus>> {
        match Command::new(program)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(Some(status)),
            Err(_) => Err(None),
        }
    }

    fn output(&mut self, program: &str, args: &[&str]) -> Option<String> {
        let output = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Whether the probe finds its binary, file or module on this host.
pub fn is_present(probe: Probe) -> bool {
    match probe {
        Probe::Binary(name) => {
            find_in_path(name, &std::env::var_os("PATH").unwrap_or_default()).is_some()
        }
        Probe::File(path) => Path::new(path).is_file(),
        Probe::PythonModule(name) => Command::new("python3")
            .args(["-c", &format!("import {name}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success()),
    }
}

/// The first executable file called `name` in the `PATH`-style list `path_var`.
pub fn find_in_path(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The tools among `tools` that are not present on this host.
pub fn missing(tools: &[Tool]) -> Vec<Tool> {
    missing_on(&Host, tools)
}

/// The tools among `tools` that are not present on `system`.
pub fn missing_on(system: &impl System, tools: &[Tool]) -> Vec<Tool> {
    tools
        .iter()
        .copied()
        .filter(|tool| !system.is_present(tool.probe()))
        .collect()
}

/// The install command for `packages`, with `sudo` when not already root.
pub fn install_command(packages: &[&str], as_root: bool) -> String {
    let sudo = if as_root { "" } else { "sudo " };
    format!(
        "{sudo}apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

/// Reports missing tools on this host without installing anything.
pub fn check(tools: &[Tool]) -> Result<(), PrereqError> {
    check_on(&Host, tools)
}

/// Reports missing tools on `system` without installing anything.
pub fn check_on(system: &impl System, tools: &[Tool]) -> Result<(), PrereqError> {
    let missing = missing_on(system, tools);
    if missing.is_empty() {
        return Ok(());
    }
    Err(PrereqError::Missing {
        what: missing.iter().map(|t| t.probe()).collect(),
        command: install_command(&packages_of(&missing), system.is_root()),
    })
}

/// Makes sure `tools` are present on this host, installing them with apt-get when root on
/// Debian. Callers pass everything they need in one call, so the package index is
/// refreshed at most once per command.
pub fn ensure(tools: &[Tool]) -> Result<(), PrereqError> {
    ensure_on(&mut Host, tools)
}

/// Whether `system` can install packages: root, on Debian, with apt-get.
pub fn can_install_packages(system: &impl System) -> bool {
    system.is_root()
        && system.is_present(Probe::File("/etc/debian_version"))
        && system.is_present(Probe::Binary("apt-get"))
}

/// Makes sure `tools` are present on `system`: `apt-get update`, then one `apt-get install`
/// of every missing package, then every probe again.
pub fn ensure_on(system: &mut impl System, tools: &[Tool]) -> Result<(), PrereqError> {
    let missing = missing_on(system, tools);
    if missing.is_empty() {
        return Ok(());
    }
    let packages = packages_of(&missing);
    let what: Vec<Probe> = missing.iter().map(|t| t.probe()).collect();
    if !can_install_packages(system) {
        return Err(PrereqError::Missing {
            command: install_command(&packages, system.is_root()),
            what,
        });
    }
    eprintln!("==> apt-get update");
    system
        .run("apt-get", &["update"])
        .map_err(|status| PrereqError::InstallFailed {
            command: "apt-get update".into(),
            status,
        })?;
    let command = install_command(&packages, true);
    eprintln!("==> installing {} ({command})", packages.join(" "));
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(packages.iter().copied());
    system
        .run("apt-get", &args)
        .map_err(|status| PrereqError::InstallFailed { command, status })?;
    let still: Vec<Probe> = what
        .iter()
        .copied()
        .filter(|p| !system.is_present(*p))
        .collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(PrereqError::StillMissing {
            what: still,
            packages,
        })
    }
}

/// The packages of `tools`, each once, in order.
pub fn packages_of(tools: &[Tool]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    for package in tools.iter().map(|t| t.package()) {
        if !packages.contains(&package) {
            packages.push(package);
        }
    }
    packages
}

/// Whether this process runs as root (real uid 0).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| uid_from_proc_status(&status))
        == Some(0)
}

/// The real uid from the `Uid:` line of `/proc/<pid>/status`.
pub fn uid_from_proc_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSystem;
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn qemu_is_probed_by_binary_and_installed_from_qemu_system_x86() {
        assert_eq!(Tool::Qemu.probe(), Probe::Binary("qemu-system-x86_64"));
        assert_eq!(Tool::Qemu.package(), "qemu-system-x86");
    }

    #[test]
    fn all_lists_every_tool_once() {
        // A match without a wildcard: a new tool fails to compile here until it is listed.
        let index = |tool: Tool| match tool {
            Tool::Qemu => 0,
            Tool::GrubMkimage => 1,
            Tool::GrubBios => 2,
            Tool::GrubEfi => 3,
            Tool::Xorriso => 4,
            Tool::Mtools => 5,
            Tool::IpxeRom => 6,
            Tool::Xen => 7,
            Tool::Ovmf => 8,
            Tool::Xz => 9,
            Tool::PythonVenv => 10,
            Tool::Gcc => 11,
            Tool::StaticLibc => 12,
            Tool::GrubXenPvh => 13,
            Tool::Mke2fs => 14,
        };
        let mut seen: Vec<usize> = Tool::ALL.iter().map(|&t| index(t)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..=14).collect::<Vec<_>>());
        assert!(Tool::ISO.iter().all(|t| Tool::ALL.contains(t)));
    }

    #[test]
    fn packages_are_listed_once_in_order() {
        assert_eq!(
            packages_of(&[Tool::Qemu, Tool::Xz, Tool::Qemu]),
            ["qemu-system-x86", "xz-utils"]
        );
        assert_eq!(packages_of(Tool::ALL).len(), Tool::ALL.len());
    }

    #[test]
    fn install_command_adds_sudo_only_for_non_root() {
        assert_eq!(
            install_command(&["qemu-system-x86"], true),
            "apt-get install -y --no-install-recommends qemu-system-x86"
        );
        assert_eq!(
            install_command(&["a", "b"], false),
            "sudo apt-get install -y --no-install-recommends a b"
        );
    }

    #[test]
    fn missing_error_is_one_line_with_the_command() {
        let error = PrereqError::Missing {
            what: vec![Probe::Binary("qemu-system-x86_64")],
            command: install_command(&["qemu-system-x86"], false),
        };
        let text = error.to_string();
        assert_eq!(
            text,
            "missing qemu-system-x86_64: install with `sudo apt-get install -y --no-install-recommends qemu-system-x86`"
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn root_on_debian_updates_once_installs_every_missing_package_at_once_and_rechecks() {
        let mut system = FakeSystem::fresh_debian_as_root();
        system.install_tools(&[Tool::Qemu, Tool::Xz]);
        let tools = [
            Tool::Qemu,
            Tool::GrubMkimage,
            Tool::Xen,
            Tool::Xz,
            Tool::PythonVenv,
        ];
        assert!(ensure_on(&mut system, &tools).is_ok());
        assert_eq!(
            system.commands,
            [
                "apt-get update",
                "apt-get install -y --no-install-recommends grub-common xen-hypervisor-4.17-amd64 python3-venv",
            ]
        );
        assert!(missing_on(&system, &tools).is_empty());
        // Nothing missing: nothing runs.
        system.commands.clear();
        assert!(ensure_on(&mut system, &tools).is_ok());
        assert!(system.commands.is_empty());
    }

    #[test]
    fn a_fresh_machine_gets_the_whole_list_in_one_install() {
        let mut system = FakeSystem::fresh_debian_as_root();
        assert!(ensure_on(&mut system, Tool::ALL).is_ok());
        let install = format!(
            "apt-get install -y --no-install-recommends {}",
            packages_of(Tool::ALL).join(" ")
        );
        assert_eq!(system.commands, ["apt-get update".to_string(), install]);
        assert!(check_on(&system, Tool::ALL).is_ok());
    }

    #[test]
    fn without_root_nothing_runs_and_the_error_names_the_sudo_command() {
        let mut system = FakeSystem::fresh_debian_as_root();
        system.root = false;
        let error = ensure_on(&mut system, &[Tool::Xorriso, Tool::Mtools]).err();
        assert!(system.commands.is_empty());
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some("missing xorriso, mformat: install with `sudo apt-get install -y --no-install-recommends xorriso mtools`")
        );
    }

    #[test]
    fn without_apt_get_nothing_runs_and_the_error_names_the_command() {
        let mut system = FakeSystem::fresh_debian_as_root();
        system.remove_probe(Probe::Binary("apt-get"));
        let error = ensure_on(&mut system, &[Tool::Ovmf]);
        assert!(matches!(error, Err(PrereqError::Missing { .. })));
        assert!(system.commands.is_empty());
    }

    #[test]
    fn check_never_installs() {
        let system = FakeSystem::fresh_debian_as_root();
        let error = check_on(&system, &[Tool::Qemu])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("missing qemu-system-x86_64: install with `apt-get install -y --no-install-recommends qemu-system-x86`")
        );
    }

    #[test]
    fn a_failed_install_and_a_package_that_does_not_provide_the_probe_are_told_apart() {
        let mut system = FakeSystem::fresh_debian_as_root();
        system.failing.push("apt-get install".into());
        let error = ensure_on(&mut system, &[Tool::Qemu]).err();
        assert!(
            matches!(&error, Some(PrereqError::InstallFailed { command, .. })
                if command == "apt-get install -y --no-install-recommends qemu-system-x86"),
            "{error:?}"
        );

        let mut system = FakeSystem::fresh_debian_as_root();
        system.hollow_packages.push("ovmf");
        let error = ensure_on(&mut system, &[Tool::Ovmf, Tool::Xz]).err();
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some("installed ovmf xz-utils but /usr/share/OVMF/OVMF_CODE_4M.fd is still missing")
        );
    }

    #[test]
    fn a_failed_update_stops_before_installing() {
        let mut system = FakeSystem::fresh_debian_as_root();
        system.failing.push("apt-get update".into());
        assert!(matches!(
            ensure_on(&mut system, &[Tool::Qemu]),
            Err(PrereqError::InstallFailed { ref command, .. }) if command == "apt-get update"
        ));
        assert_eq!(system.commands, ["apt-get update"]);
    }

    #[test]
    fn uid_comes_from_the_first_field_of_the_uid_line() {
        let status = "Name:\tcargo\nUid:\t1000\t1000\t1000\t1000\nGid:\t0\t0\t0\t0\n";
        assert_eq!(uid_from_proc_status(status), Some(1000));
        assert_eq!(uid_from_proc_status("Uid:\t0\t0\t0\t0\n"), Some(0));
        assert_eq!(uid_from_proc_status("Name:\tx\n"), None);
        assert_eq!(uid_from_proc_status("Uid:\tnobody\n"), None);
    }

    #[test]
    fn find_in_path_needs_an_executable_file() {
        let dir = std::env::temp_dir().join(format!("keel-prereq-test-{}", std::process::id()));
        let plain = dir.join("plain");
        let exec = dir.join("bin");
        assert!(std::fs::create_dir_all(&plain).is_ok() && std::fs::create_dir_all(&exec).is_ok());
        assert!(std::fs::write(plain.join("tool"), "").is_ok());
        assert!(std::fs::write(exec.join("tool"), "").is_ok());
        let made_executable =
            std::fs::set_permissions(exec.join("tool"), std::fs::Permissions::from_mode(0o755));
        assert!(made_executable.is_ok());
        std::fs::create_dir_all(plain.join("dir-tool")).ok();

        let path: OsString = std::env::join_paths([&plain, &exec]).unwrap_or_default();
        assert_eq!(find_in_path("tool", &path), Some(exec.join("tool")));
        assert_eq!(find_in_path("dir-tool", &path), None);
        assert_eq!(find_in_path("absent", &path), None);
        assert_eq!(find_in_path("tool", OsStr::new("")), None);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn host_probes_find_binaries_files_and_python_modules() {
        // `sh` exists everywhere these tests run; QEMU may or may not.
        assert!(is_present(Probe::Binary("sh")));
        assert!(!is_present(Probe::Binary("keel-no-such-binary")));
        assert!(is_present(Probe::File("/proc/self/status")));
        assert!(!is_present(Probe::PythonModule("keel_no_such_module")));
        match check(&[Tool::Qemu]) {
            Ok(()) => assert!(is_present(Tool::Qemu.probe())),
            Err(error) => assert!(error
                .to_string()
                .contains("apt-get install -y --no-install-recommends qemu-system-x86")),
        }
    }
}
