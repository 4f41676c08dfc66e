//! The bootable GRUB ISO (BIOS and UEFI), built reproducibly from Debian's GRUB tools.
//!
//! `grub-mkrescue` would do this in one call, but it stamps the current time into the image
//! in three places that `SOURCE_DATE_EPOCH` does not reach (the ISO volume date, which is also
//! the UUID GRUB searches for, the embedded search command in both core images, and the FAT
//! boot image). So the same steps run here with the timestamp under our control:
//!
//! 1. `grub-mkimage` builds a BIOS El Torito core and a UEFI `BOOTX64.EFI`, each with every
//!    module the menu needs built in (no module directory on the ISO) and an early config
//!    that finds the ISO by its volume UUID and reads `/boot/grub/grub.cfg`.
//! 2. `mformat`/`mcopy` (mtools) put `BOOTX64.EFI` into a small FAT image with a fixed
//!    serial number and the epoch as every date.
//! 3. `xorriso` writes the ISO 9660 image with the El Torito BIOS and EFI entries, a hybrid
//!    MBR (so the file can also be written to a USB stick), the epoch as volume date, file
//!    dates and GPT GUID seed.
//!
//! Every tool's output is a function of its inputs and the epoch: see
//! `tests/tests/boot_media.rs` for the byte-for-byte check.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::ImageError;
use crate::output::{set_times, temporary_path, utc, write_file};
use crate::scripts::{grub_cfg, KERNEL_FILE, XEN_FILE};
use crate::Media;

/// GRUB's BIOS platform files (package `grub-pc-bin`).
pub const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
/// GRUB's UEFI platform files (package `grub-efi-amd64-bin`).
pub const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
/// The ISO's volume label.
pub const VOLUME_LABEL: &str = "KEEL";
/// Serial number of the FAT boot image ("KEEL").
const FAT_SERIAL: &str = "4b45454c";

/// Modules built into both core images: reading the ISO, the menu, multiboot 1 (Keel) and
/// 2 (Xen), the serial console.
const MODULES: &[&str] = &[
    "iso9660",
    "part_msdos",
    "part_gpt",
    "normal",
    "configfile",
    "search",
    "search_fs_uuid",
    "multiboot",
    "multiboot2",
    "gzio",
    "serial",
    "terminal",
    "echo",
    "test",
    "boot",
    "sleep",
    "halt",
    "reboot",
];
const BIOS_MODULES: &[&str] = &["biosdisk"];
const EFI_MODULES: &[&str] = &["fat", "efi_gop", "efi_uga"];

/// The host programs and GRUB files the ISO needs, found before anything is written.
#[derive(Debug, Clone)]
pub struct IsoTools {
    grub_mkimage: PathBuf,
    xorriso: PathBuf,
    mformat: PathBuf,
    mcopy: PathBuf,
}

/// Something the ISO build needs: how to find it and the Debian package that has it.
struct Requirement {
    what: &'static str,
    package: &'static str,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: "grub-mkimage",
        package: "grub-common",
    },
    Requirement {
        what: "xorriso",
        package: "xorriso",
    },
    Requirement {
        what: "mformat",
        package: "mtools",
    },
    Requirement {
        what: "mcopy",
        package: "mtools",
    },
];

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl IsoTools {
    /// Finds every tool and both GRUB platforms, or names the first missing one with the
    /// package to install.
    pub fn find() -> Result<IsoTools, ImageError> {
        let mut found = Vec::new();
        for requirement in REQUIREMENTS {
            let path = find_in_path(requirement.what).ok_or(ImageError::MissingTool {
                what: requirement.what.to_string(),
                package: requirement.package,
            })?;
            found.push(path);
        }
        for (dir, file, package) in [
            (GRUB_BIOS_DIR, "boot_hybrid.img", "grub-pc-bin"),
            (GRUB_EFI_DIR, "multiboot2.mod", "grub-efi-amd64-bin"),
        ] {
            let path = Path::new(dir).join(file);
            if !path.is_file() {
                return Err(ImageError::MissingTool {
                    what: path.display().to_string(),
                    package,
                });
            }
        }
        let mut found = found.into_iter();
        let mut next = || found.next().unwrap_or_default();
        Ok(IsoTools {
            grub_mkimage: next(),
            xorriso: next(),
            mformat: next(),
            mcopy: next(),
        })
    }
}

/// The ISO volume UUID GRUB searches for, `YYYY-MM-DD-hh-mm-ss-00`, and xorriso's
/// `--modification-date` that produces it, `YYYYMMDDhhmmss00`.
pub fn volume_dates(epoch: u64) -> (String, String) {
    let (y, mo, d, h, mi, s) = utc(epoch);
    (
        format!("{y:04}-{mo:02}-{d:02}-{h:02}-{mi:02}-{s:02}-00"),
        format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}00"),
    )
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, ImageError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "keel-iso-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|error| ImageError::Write {
            path: path.clone(),
            error,
        })?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mkdir(path: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(path).map_err(|error| ImageError::Write {
        path: path.to_path_buf(),
        error,
    })
}

/// Runs a tool with a fixed environment; on failure, reports its last line of output.
fn run(program: &Path, args: &[&str], epoch: u64) -> Result<(), ImageError> {
    let shown = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(program)
        .args(args)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .map_err(|_| ImageError::ToolFailed {
            command: shown.clone(),
            status: None,
            detail: String::new(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string();
    Err(ImageError::ToolFailed {
        command: shown,
        status: Some(output.status),
        detail,
    })
}

/// Sets the time of `root` and everything below it to `epoch`.
fn set_tree_times(root: &Path, epoch: u64) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(root).map_err(|error| ImageError::Write {
        path: root.to_path_buf(),
        error,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            set_tree_times(&path, epoch)?;
        } else {
            set_times(&path, epoch)?;
        }
    }
    set_times(root, epoch)
}

/// Builds the ISO at `out` (written to a temporary name first, then renamed).
pub fn write_iso(media: &Media, tools: &IsoTools, out: &Path) -> Result<(), ImageError> {
    let epoch = media.epoch;
    let scratch = Scratch::new()?;
    let tree = scratch.0.join("iso");
    let boot = tree.join("boot");
    let grub = boot.join("grub");
    mkdir(&grub.join("i386-pc"))?;

    write_file(&boot.join(KERNEL_FILE), media.kernel.boot_bytes(), epoch)?;
    if let Some(xen) = &media.xen {
        write_file(&boot.join(XEN_FILE), xen.bytes(), epoch)?;
    }
    write_file(
        &grub.join("grub.cfg"),
        grub_cfg(&media.config).as_bytes(),
        epoch,
    )?;

    // The early config both core images carry: find this ISO, then read its menu.
    let (uuid, modification_date) = volume_dates(epoch);
    let early = scratch.0.join("early.cfg");
    let early_text =
        format!("search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n");
    write_file(&early, early_text.as_bytes(), epoch)?;
    let early = early.to_string_lossy().into_owned();

    let bios_core = grub.join("i386-pc").join("eltorito.img");
    let bios_core_arg = bios_core.to_string_lossy().into_owned();
    let mut args = vec![
        "-O",
        "i386-pc-eltorito",
        "-d",
        GRUB_BIOS_DIR,
        "-p",
        "/boot/grub",
        "-c",
        &early,
        "-o",
        &bios_core_arg,
    ];
    args.extend(MODULES.iter().chain(BIOS_MODULES));
    run(&tools.grub_mkimage, &args, epoch)?;

    let efi_tree = scratch.0.join("efi");
    let efi_boot_dir = efi_tree.join("EFI").join("BOOT");
    mkdir(&efi_boot_dir)?;
    let efi_binary = efi_boot_dir.join("BOOTX64.EFI");
    let efi_binary_arg = efi_binary.to_string_lossy().into_owned();
    let mut args = vec![
        "-O",
        "x86_64-efi",
        "-d",
        GRUB_EFI_DIR,
        "-p",
        "/boot/grub",
        "-c",
        &early,
        "-o",
        &efi_binary_arg,
    ];
    args.extend(MODULES.iter().chain(EFI_MODULES));
    run(&tools.grub_mkimage, &args, epoch)?;
    set_tree_times(&efi_tree, epoch)?;

    // The FAT image: the EFI binary plus 256 KiB, in whole 64-sector cylinders.
    let efi_size = std::fs::metadata(&efi_binary)
        .map(|m| m.len())
        .map_err(|error| ImageError::Write {
            path: efi_binary.clone(),
            error,
        })?;
    let sectors = (efi_size + (256 << 10)).div_ceil(512).div_ceil(64) * 64;
    let efi_image = grub.join("efi.img");
    let efi_image_arg = efi_image.to_string_lossy().into_owned();
    let sectors_arg = sectors.to_string();
    run(
        &tools.mformat,
        &[
            "-C",
            "-i",
            &efi_image_arg,
            "-T",
            &sectors_arg,
            "-h",
            "2",
            "-s",
            "32",
            "-N",
            FAT_SERIAL,
            "-v",
            "KEEL_EFI",
            "::",
        ],
        epoch,
    )?;
    let efi_source = efi_tree.join("EFI").to_string_lossy().into_owned();
    run(
        &tools.mcopy,
        &["-s", "-m", "-i", &efi_image_arg, &efi_source, "::/"],
        epoch,
    )?;
    set_tree_times(&tree, epoch)?;

    let temporary = temporary_path(out);
    let temporary_arg = temporary.to_string_lossy().into_owned();
    let tree_arg = tree.to_string_lossy().into_owned();
    let hybrid_mbr = format!("{GRUB_BIOS_DIR}/boot_hybrid.img");
    let date_arg = format!("--modification-date={modification_date}");
    let result = run(
        &tools.xorriso,
        &[
            "-as",
            "mkisofs",
            "-quiet",
            &date_arg,
            "--set_all_file_dates",
            &modification_date,
            "--gpt_disk_guid",
            "modification-date",
            "-V",
            VOLUME_LABEL,
            "-b",
            "boot/grub/i386-pc/eltorito.img",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "--grub2-boot-info",
            "--grub2-mbr",
            &hybrid_mbr,
            "--efi-boot",
            "boot/grub/efi.img",
            "-efi-boot-part",
            "--efi-boot-image",
            "--protective-msdos-label",
            "-r",
            "-o",
            &temporary_arg,
            &tree_arg,
        ],
        epoch,
    )
    .and_then(|()| set_times(&temporary, epoch))
    .and_then(|()| {
        std::fs::rename(&temporary, out).map_err(|error| ImageError::Write {
            path: out.to_path_buf(),
            error,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_uuid_and_xorriso_date_describe_the_same_second() {
        assert_eq!(
            volume_dates(1_700_000_000),
            (
                "2023-11-14-22-13-20-00".to_string(),
                "2023111422132000".to_string()
            )
        );
    }
}
