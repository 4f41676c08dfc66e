//! `cargo xtask run`: build the release image and boot it in QEMU on this terminal, as the PVH
//! dom0 of Debian's Xen 4.17 unless `--no-xen` asks for Keel alone.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use keel_tests::image::Profile;
use keel_tests::paths;
use keel_tests::prereq::{self, Tool};
use keel_tests::qemu::{BootSource, DiskSpec, NicSpec, SerialMode, VmConfig, QEMU_BINARY};
use keel_tests::xen::{XenBoot, DEFAULT_XEN_MEMORY_MIB};
use keel_tests::{Accel, AccelChoice, DiskBus};

use crate::cli::RunOptions;
use crate::commands::build::build_image;
use crate::error::XtaskError;
use crate::progress;

/// Size of the scratch disk created on first run: 64 MiB, sparse.
pub const SCRATCH_DISK_BYTES: u64 = 64 << 20;

/// The scratch disk `run` attaches when no `--disk`/`--nvme` is given.
pub fn scratch_disk_path() -> PathBuf {
    paths::keel_dir().join("scratch.img")
}

pub fn run(options: &RunOptions) -> Result<ExitCode, XtaskError> {
    let tools: &[Tool] = if options.xen {
        &[Tool::Qemu, Tool::Xen]
    } else {
        &[Tool::Qemu]
    };
    prereq::ensure(tools)?;
    let (image, _) = build_image(Profile::Release)?;
    let disks = if options.disks.is_empty() {
        let path = scratch_disk_path();
        ensure_scratch_disk(&path, SCRATCH_DISK_BYTES)?;
        vec![DiskSpec {
            path,
            bus: DiskBus::VirtioBlk,
        }]
    } else {
        for disk in &options.disks {
            if !disk.path.is_file() {
                return Err(XtaskError::DiskMissing(disk.path.clone()));
            }
        }
        options.disks.clone()
    };
    let mut config = vm_config(options, image, disks);
    if options.xen {
        boot_under_xen(&mut config, options, keel_tests::xen::hypervisor_image()?);
    }
    let api_password = if config
        .cmdline
        .iter()
        .any(|w| w.starts_with("keel.root_hash="))
    {
        None
    } else {
        let (credentials, created) = keel_tests::credentials::dev_credentials()?;
        if created {
            progress::note(format!(
                "created root's API password in {}",
                keel_tests::credentials::dev_password_path().display()
            ));
        }
        config.cmdline.push(credentials.cmdline_word());
        Some(credentials.password)
    };
    let under = if options.xen { " as Xen's dom0" } else { "" };
    progress::step(format!(
        "booting Keel{under} ({} accelerator); quit with Ctrl-A X",
        config.accel
    ));
    progress::note(config.display_command());
    if let Some(NicSpec {
        api_host_port: Some(port),
        ..
    }) = config.nic
    {
        progress::note(format!("management API: http://127.0.0.1:{port}/"));
        if let Some(password) = &api_password {
            progress::note(format!("log in as root with password {password}"));
        }
    }
    let status = Command::new(QEMU_BINARY)
        .args(config.args())
        .status()
        .map_err(|_| XtaskError::CommandFailed {
            command: QEMU_BINARY.into(),
            status: None,
        })?;
    // QEMU's status is the guest's verdict (3 after a panic with debug-exit): pass it on.
    let code = status
        .code()
        .map_or(1, |code| u8::try_from(code).unwrap_or(1));
    Ok(ExitCode::from(code))
}

/// The QEMU description for `run`: the shared defaults, the terminal as console, and the
/// user's options.
pub fn vm_config(options: &RunOptions, image: PathBuf, disks: Vec<DiskSpec>) -> VmConfig {
    let mut config = VmConfig::new(image, options.accel.resolve(), SerialMode::Terminal);
    config.memory_mib = options.memory_mib;
    config.disks = disks;
    config.nic = options.nic.map(|model| NicSpec {
        model,
        api_host_port: Some(options.api_port),
    });
    config.cmdline = options.append.clone();
    config
}

/// Makes `config` boot Xen (`hypervisor`) with Keel as its PVH dom0: at least
/// [`DEFAULT_XEN_MEMORY_MIB`] (half for dom0), and TCG unless KVM was asked for by name,
/// because `auto` may pick a KVM that cannot run Xen (docs/xen.md).
pub fn boot_under_xen(config: &mut VmConfig, options: &RunOptions, hypervisor: PathBuf) {
    config.memory_mib = config.memory_mib.max(DEFAULT_XEN_MEMORY_MIB);
    if options.accel == AccelChoice::Auto {
        config.accel = Accel::Tcg;
    }
    config.boot = BootSource::Xen(XenBoot::new(hypervisor, config.memory_mib));
}

/// Creates the sparse scratch disk once; an existing one (with its data) is kept.
pub fn ensure_scratch_disk(path: &Path, bytes: u64) -> Result<(), XtaskError> {
    if path.is_file() {
        return Ok(());
    }
    let io = |error| XtaskError::Io {
        what: format!("creating {}", path.display()),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    file.set_len(bytes).map_err(io)?;
    progress::note(format!(
        "created scratch disk {} ({} MiB, sparse)",
        path.display(),
        bytes >> 20
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_tests::NicModel;

    fn args_of(config: &VmConfig) -> Vec<String> {
        config
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn default_run_is_terminal_virtio_net_with_api_forward_and_scratch_disk() {
        let options = RunOptions {
            accel: AccelChoice::Tcg,
            xen: false,
            ..RunOptions::default()
        };
        let disks = vec![DiskSpec {
            path: "/t/keel/scratch.img".into(),
            bus: DiskBus::VirtioBlk,
        }];
        let config = vm_config(&options, "/t/keel/keel.elf".into(), disks);
        let args = args_of(&config).join(" ");
        assert_eq!(config.accel, Accel::Tcg);
        for expected in [
            "-machine q35 -accel tcg -m 256 -nodefaults -no-reboot -nographic -serial mon:stdio",
            "-device isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-netdev user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80 -device virtio-net-pci,netdev=net0,romfile=",
            "-drive file=/t/keel/scratch.img,if=none,id=disk0,format=raw -device virtio-blk-pci,drive=disk0",
            "-kernel /t/keel/keel.elf -append keel.debug_exit=0xf4",
        ] {
            assert!(args.contains(expected), "missing {expected:?} in {args}");
        }
    }

    #[test]
    fn options_reach_the_command_line() {
        let options = RunOptions {
            memory_mib: 1024,
            nic: Some(NicModel::E1000),
            api_port: 9000,
            append: vec!["keel.log=debug".into()],
            accel: AccelChoice::Kvm,
            ..RunOptions::default()
        };
        let config = vm_config(&options, "k".into(), Vec::new());
        let args = args_of(&config).join(" ");
        assert!(args.contains("-accel kvm -m 1024"));
        assert!(args.contains("hostfwd=tcp:127.0.0.1:9000-:80 -device e1000,netdev=net0,romfile="));
        assert!(args.contains("-append keel.debug_exit=0xf4 keel.log=debug"));
        let no_nic = vm_config(
            &RunOptions {
                nic: None,
                ..options
            },
            "k".into(),
            Vec::new(),
        );
        assert!(!args_of(&no_nic).iter().any(|a| a == "-netdev"));
    }

    #[test]
    fn xen_boots_the_hypervisor_with_keel_as_dom0_on_tcg_and_1024_mib() {
        let options = RunOptions::default();
        assert!(options.xen, "Xen is the default");
        let mut config = vm_config(&options, "/t/keel/keel.elf".into(), Vec::new());
        boot_under_xen(&mut config, &options, "/t/xen.elf".into());
        assert_eq!((config.accel, config.memory_mib), (Accel::Tcg, 1024));
        let args = args_of(&config).join(" ");
        for expected in [
            "-accel tcg -m 1024",
            "-cpu qemu64,+svm,+npt -smp 2 -device amd-iommu",
            "-kernel /t/xen.elf -append console=com1",
            "dom0=pvh dom0_mem=512M,max:512M",
            "-initrd /t/keel/keel.elf keel.debug_exit=0xf4",
            "virtio-net-pci,netdev=net0,disable-legacy=on,iommu_platform=on",
        ] {
            assert!(args.contains(expected), "missing {expected:?} in {args}");
        }
        // KVM asked for by name is kept; more memory is kept too.
        let options = RunOptions {
            xen: true,
            memory_mib: 4096,
            accel: AccelChoice::Kvm,
            ..RunOptions::default()
        };
        let mut config = vm_config(&options, "k".into(), Vec::new());
        boot_under_xen(&mut config, &options, "x".into());
        assert_eq!((config.accel, config.memory_mib), (Accel::Kvm, 4096));
        assert!(args_of(&config).join(" ").contains("-cpu host"));
    }

    #[test]
    fn scratch_disk_is_created_sparse_once_and_then_kept() {
        let dir = std::env::temp_dir().join(format!("xtask-scratch-test-{}", std::process::id()));
        let path = dir.join("sub").join("scratch.img");
        assert!(ensure_scratch_disk(&path, 1 << 20).is_ok());
        assert_eq!(
            std::fs::metadata(&path).map(|m| m.len()).ok(),
            Some(1 << 20)
        );
        assert!(std::fs::write(&path, b"data").is_ok());
        assert!(ensure_scratch_disk(&path, 1 << 20).is_ok());
        assert_eq!(std::fs::read(&path).ok().as_deref(), Some(&b"data"[..]));
        std::fs::remove_dir_all(&dir).ok();
    }
}
