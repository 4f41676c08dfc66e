//! `cargo xtask run`: build the release image and boot it in QEMU on this terminal.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use keel_tests::image::Profile;
use keel_tests::paths;
use keel_tests::prereq::{self, Tool};
use keel_tests::qemu::{DiskSpec, NicSpec, SerialMode, VmConfig, QEMU_BINARY};
use keel_tests::DiskBus;

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
    prereq::ensure(&[Tool::Qemu])?;
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
    let config = vm_config(options, image, disks);
    progress::step(format!(
        "booting Keel ({} accelerator); quit with Ctrl-A X",
        config.accel
    ));
    progress::note(config.display_command());
    if let Some(NicSpec {
        api_host_port: Some(port),
        ..
    }) = config.nic
    {
        progress::note(format!("management API: http://127.0.0.1:{port}/"));
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
    use keel_tests::{Accel, AccelChoice, NicModel};

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
