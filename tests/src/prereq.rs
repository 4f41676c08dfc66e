//! Host prerequisites (QEMU; GRUB, xorriso, mtools, iPXE, Xen and OVMF for the boot media;
//! busybox, python3-venv later), each keyed by the binary or file that must exist and the
//! Debian package that provides it. `.ci/run` installs the same list: keep them in step.
//!
//! [`ensure`] installs what is missing with `apt-get` when that can work (root on Debian);
//! otherwise it fails with one line holding the exact command to run. Nobody should ever
//! meet a raw "command not found". [`check`] only reports, for callers such as the test
//! harness that must not change the system.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};

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
}

impl Tool {
    /// What `cargo xtask image --iso` needs.
    pub const ISO: &'static [Tool] = &[
        Tool::GrubMkimage,
        Tool::GrubBios,
        Tool::GrubEfi,
        Tool::Xorriso,
        Tool::Mtools,
    ];
}

/// How to tell whether a tool is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// An executable of this name on `PATH`.
    Binary(&'static str),
    /// A file at this absolute path.
    File(&'static str),
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
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Binary(name) | Probe::File(name) => f.write_str(name),
        }
    }
}

/// Why prerequisites could not be satisfied.
#[derive(Debug)]
pub enum PrereqError {
    /// Missing and not installable from here; `command` is what a person should run.
    Missing { what: Vec<Probe>, command: String },
    /// `apt-get` ran and failed.
    InstallFailed {
        command: String,
        status: Option<ExitStatus>,
    },
    /// `apt-get` succeeded but the probe still fails.
    StillMissing {
        what: Vec<Probe>,
        packages: Vec<&'static str>,
    },
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

/// Whether the probe finds its binary or file on this host.
pub fn is_present(probe: Probe) -> bool {
    match probe {
        Probe::Binary(name) => {
            find_in_path(name, &std::env::var_os("PATH").unwrap_or_default()).is_some()
        }
        Probe::File(path) => Path::new(path).is_file(),
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

/// The tools among `tools` that are not present.
pub fn missing(tools: &[Tool]) -> Vec<Tool> {
    tools
        .iter()
        .copied()
        .filter(|tool| !is_present(tool.probe()))
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

/// Reports missing tools without installing anything.
pub fn check(tools: &[Tool]) -> Result<(), PrereqError> {
    let missing = missing(tools);
    if missing.is_empty() {
        return Ok(());
    }
    Err(PrereqError::Missing {
        what: missing.iter().map(|t| t.probe()).collect(),
        command: install_command(&packages_of(&missing), running_as_root()),
    })
}

/// Makes sure `tools` are present, installing them with apt-get when root on Debian.
pub fn ensure(tools: &[Tool]) -> Result<(), PrereqError> {
    let missing = missing(tools);
    if missing.is_empty() {
        return Ok(());
    }
    let packages = packages_of(&missing);
    let what: Vec<Probe> = missing.iter().map(|t| t.probe()).collect();
    let can_install = running_as_root()
        && Path::new("/etc/debian_version").exists()
        && is_present(Probe::Binary("apt-get"));
    if !can_install {
        return Err(PrereqError::Missing {
            command: install_command(&packages, running_as_root()),
            what,
        });
    }
    apt_update_once()?;
    let command = install_command(&packages, true);
    eprintln!("==> installing {} ({command})", packages.join(" "));
    run_apt(
        &["install", "-y", "--no-install-recommends"],
        &packages,
        &command,
    )?;
    let still: Vec<Probe> = what.iter().copied().filter(|p| !is_present(*p)).collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(PrereqError::StillMissing {
            what: still,
            packages,
        })
    }
}

fn packages_of(tools: &[Tool]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = tools.iter().map(|t| t.package()).collect();
    packages.dedup();
    packages
}

/// `apt-get update` runs at most once per process, before the first install.
fn apt_update_once() -> Result<(), PrereqError> {
    static UPDATED: AtomicBool = AtomicBool::new(false);
    if UPDATED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    eprintln!("==> apt-get update");
    run_apt(&["update"], &[], "apt-get update")
}

fn run_apt(args: &[&str], packages: &[&str], command: &str) -> Result<(), PrereqError> {
    let status = Command::new("apt-get")
        .args(args)
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(PrereqError::InstallFailed {
            command: command.to_string(),
            status: Some(status),
        }),
        Err(_) => Err(PrereqError::InstallFailed {
            command: command.to_string(),
            status: None,
        }),
    }
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
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn qemu_is_probed_by_binary_and_installed_from_qemu_system_x86() {
        assert_eq!(Tool::Qemu.probe(), Probe::Binary("qemu-system-x86_64"));
        assert_eq!(Tool::Qemu.package(), "qemu-system-x86");
    }

    #[test]
    fn boot_media_tools_match_the_ci_package_list() {
        // `.ci/run` installs "probe:package" pairs; every tool here must be among them.
        let ci = std::fs::read_to_string(crate::paths::workspace_root().join(".ci/run"))
            .unwrap_or_default();
        for tool in [
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
        ] {
            let pair = format!("{}:{}", tool.probe(), tool.package());
            assert!(ci.contains(&pair), ".ci/run lacks {pair}");
        }
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
    fn check_passes_for_present_tools_and_names_the_command_otherwise() {
        // `sh` exists everywhere these tests run; QEMU may or may not.
        assert!(is_present(Probe::Binary("sh")));
        assert!(!is_present(Probe::Binary("keel-no-such-binary")));
        assert!(is_present(Probe::File("/proc/self/status")));
        match check(&[Tool::Qemu]) {
            Ok(()) => assert!(is_present(Tool::Qemu.probe())),
            Err(error) => assert!(error
                .to_string()
                .contains("apt-get install -y --no-install-recommends qemu-system-x86")),
        }
    }
}
