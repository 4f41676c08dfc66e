//! Booting a dom0 under the real Xen hypervisor: Debian's Xen 4.17 image, Xen's command line
//! and the module list QEMU hands to it.
//!
//! QEMU loads Xen as a multiboot kernel (`-kernel`), gives it its options with `-append`, and
//! passes dom0 as the first module of `-initrd`, "PATH ARGS", with further modules (Linux's
//! initramfs) after commas. Commas inside one module's text are written twice. Debian ships
//! Xen gzip-compressed; [`hypervisor_image`] unpacks it once into `target/keel/xen/`.
//!
//! The machine (see `docs/xen.md`): Xen's PVH dom0 needs SVM with nested paging and an IOMMU;
//! under TCG that is `-cpu qemu64,+svm,+npt -device amd-iommu`. Devices then do DMA through
//! the IOMMU, which QEMU's virtio devices only honour with `iommu_platform=on` (modern-only,
//! `disable-legacy=on`); without it they bypass the IOMMU and read the wrong memory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::HarnessError;
use crate::paths;

/// Debian's `xen-hypervisor-4.17-amd64` image.
pub const PACKAGED_HYPERVISOR: &str = "/boot/xen-4.17-amd64.gz";

/// Guest memory a Xen VM gets unless asked for more: half of it goes to dom0.
pub const DEFAULT_XEN_MEMORY_MIB: u32 = 1024;

/// The CPU QEMU emulates for Xen under TCG: SVM and nested paging for the PVH dom0. CPU
/// models with SMAP (`max`, `EPYC`) are avoided (see `docs/xen.md`).
pub const TCG_XEN_CPU: &str = "qemu64,+svm,+npt";

/// Options appended to every virtio device's `-device` under Xen, so that its DMA goes
/// through the IOMMU like a real device's.
pub const VIRTIO_BEHIND_IOMMU: &str = ",disable-legacy=on,iommu_platform=on";

/// What Xen boots besides dom0's kernel (which is the VM's kernel image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenBoot {
    /// The uncompressed hypervisor (an ELF QEMU loads through multiboot).
    pub hypervisor: PathBuf,
    /// Xen's own command line, one word per item.
    pub options: Vec<String>,
    /// Modules after dom0's kernel, in order (Linux's initramfs); Keel takes none.
    pub modules: Vec<PathBuf>,
}

impl XenBoot {
    /// Xen with [`default_options`] for a VM of `memory_mib`.
    pub fn new(hypervisor: impl Into<PathBuf>, memory_mib: u32) -> Self {
        XenBoot {
            hypervisor: hypervisor.into(),
            options: default_options(memory_mib),
            modules: Vec::new(),
        }
    }
}

/// Xen's command line: its console on COM1 with every message, a PVH dom0 with half of the
/// VM's memory and one vCPU, no boot-time scrubbing (it doubles QEMU's memory use), and
/// Xen's credit scheduler instead of its default credit2: under QEMU's TCG, credit2 left
/// dom0's vCPU queued (runnable, credit at its floor) while both CPUs idled, untickled, for
/// good — in 3 of 3 loaded guest-start runs within 15 rounds, none in 40+ rounds with
/// `sched=credit` (docs/xen.md, "Scheduler").
pub fn default_options(memory_mib: u32) -> Vec<String> {
    let dom0_mib = (memory_mib / 2).max(1);
    [
        "console=com1",
        "com1=115200,8n1",
        "loglvl=all",
        "guest_loglvl=all",
        "dom0=pvh",
        &format!("dom0_mem={dom0_mib}M,max:{dom0_mib}M"),
        "dom0_max_vcpus=1",
        "bootscrub=0",
        "sched=credit",
    ]
    .iter()
    .map(|word| word.to_string())
    .collect()
}

/// QEMU's `-initrd` value: `dom0` and its command line, then the other modules, separated
/// by commas; a comma inside a path or the command line is doubled.
pub fn module_list(dom0: &Path, dom0_cmdline: &str, modules: &[PathBuf]) -> String {
    let escape = |text: &str| text.replace(',', ",,");
    let mut first = escape(&dom0.to_string_lossy());
    if !dom0_cmdline.is_empty() {
        first.push(' ');
        first.push_str(&escape(dom0_cmdline));
    }
    std::iter::once(first)
        .chain(modules.iter().map(|m| escape(&m.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(",")
}

/// Where the unpacked hypervisor is kept.
pub fn unpacked_hypervisor_path() -> PathBuf {
    paths::keel_dir().join("xen").join("xen-4.17-amd64")
}

/// The hypervisor as an ELF: [`PACKAGED_HYPERVISOR`] unpacked with `gzip -dc` when the copy
/// under `target/keel/xen/` is missing or older than the package's file.
pub fn hypervisor_image() -> Result<PathBuf, HarnessError> {
    let packaged = Path::new(PACKAGED_HYPERVISOR);
    let out = unpacked_hypervisor_path();
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    if let (Some(unpacked), Some(source)) = (modified(&out), modified(packaged)) {
        if unpacked >= source {
            return Ok(out);
        }
    }
    let io = |what: String| move |error| HarnessError::Io { what, error };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let partial = out.with_extension("partial");
    let file =
        std::fs::File::create(&partial).map_err(io(format!("creating {}", partial.display())))?;
    let status = Command::new("gzip")
        .arg("-dc")
        .arg(packaged)
        .stdout(Stdio::from(file))
        .status()
        .map_err(io(format!("running gzip -dc {PACKAGED_HYPERVISOR}")))?;
    if !status.success() {
        return Err(HarnessError::Io {
            what: format!("gzip -dc {PACKAGED_HYPERVISOR}"),
            error: std::io::Error::other(format!("gzip failed ({status})")),
        });
    }
    std::fs::rename(&partial, &out).map_err(io(format!("writing {}", out.display())))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_give_dom0_half_the_memory_as_pvh_with_xen_on_com1() {
        let options = default_options(1024);
        for expected in [
            "console=com1",
            "com1=115200,8n1",
            "dom0=pvh",
            "dom0_mem=512M,max:512M",
            "dom0_max_vcpus=1",
            "bootscrub=0",
            "sched=credit",
        ] {
            assert!(
                options.iter().any(|o| o == expected),
                "{expected}: {options:?}"
            );
        }
        assert!(default_options(3000).contains(&"dom0_mem=1500M,max:1500M".to_string()));
    }

    #[test]
    fn module_list_puts_dom0_and_its_arguments_first_and_doubles_commas() {
        assert_eq!(
            module_list(Path::new("/t/keel.elf"), "keel.log=debug", &[]),
            "/t/keel.elf keel.log=debug"
        );
        assert_eq!(
            module_list(
                Path::new("/a,b/vmlinux"),
                "console=hvc0 x=1,2",
                &[PathBuf::from("/t/initrd,1.cpio")]
            ),
            "/a,,b/vmlinux console=hvc0 x=1,,2,/t/initrd,,1.cpio"
        );
        assert_eq!(module_list(Path::new("/k"), "", &[]), "/k");
    }

    #[test]
    fn the_unpacked_hypervisor_lives_under_target_keel() {
        assert!(unpacked_hypervisor_path().ends_with("target/keel/xen/xen-4.17-amd64"));
    }
}
