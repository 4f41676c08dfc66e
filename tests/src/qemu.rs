//! The QEMU command line for booting Keel, built in one place for tests, `run` and `bench`.
//!
//! [`VmConfig`] is a plain description of a VM; [`VmConfig::args`] turns it into QEMU
//! arguments without touching the system, so every flag is unit-tested here.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::accel::Accel;
use crate::xen::{module_list, XenBoot, TCG_XEN_CPU, VIRTIO_BEHIND_IOMMU};

/// The QEMU binary Keel boots under.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The I/O port of QEMU's `isa-debug-exit` device; the kernel learns it from
/// `keel.debug_exit=` and writes there to end QEMU with a failure status.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The guest port of the management API.
pub const API_GUEST_PORT: u16 = 80;

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    VirtioBlk,
    Nvme,
}

/// A raw disk image attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub bus: DiskBus,
}

/// The emulated network card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    VirtioNet,
    /// Intel 82540EM.
    E1000,
    /// Intel 82574L.
    E1000e,
}

impl NicModel {
    /// QEMU's `-device` name.
    pub fn qemu_device(self) -> &'static str {
        match self {
            NicModel::VirtioNet => "virtio-net-pci",
            NicModel::E1000 => "e1000",
            NicModel::E1000e => "e1000e",
        }
    }
}

/// A NIC on QEMU user networking, optionally forwarding a host port to the management API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicSpec {
    pub model: NicModel,
    /// Host port on 127.0.0.1 forwarded to [`API_GUEST_PORT`] in the guest.
    pub api_host_port: Option<u16>,
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// `VmConfig::kernel` through QEMU's `-kernel` (multiboot, or PVH without a multiboot
    /// header), with the command line from `-append`.
    Kernel,
    /// The firmware network-boots with the NIC's iPXE ROM from QEMU's built-in TFTP server,
    /// which serves `tftp_root` and names `bootfile` in its DHCP offer.
    Network {
        tftp_root: PathBuf,
        bootfile: String,
    },
    /// The firmware boots an ISO image from the CD-ROM drive.
    Cdrom(PathBuf),
    /// Xen 4.17 boots with `VmConfig::kernel` as its PVH dom0 and the command line as dom0's
    /// (see [`crate::xen`]); the CPU gets SVM and nested paging, the machine an IOMMU, and
    /// virtio devices do their DMA through it.
    Xen(XenBoot),
}

/// Where the serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialMode {
    /// A person's terminal: serial multiplexed with the QEMU monitor (Ctrl-A X quits).
    Terminal,
    /// QEMU's stdout, read by the harness through a pipe.
    Pipe,
}

/// A complete description of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub memory_mib: u32,
    pub accel: Accel,
    pub serial: SerialMode,
    pub disks: Vec<DiskSpec>,
    pub nic: Option<NicSpec>,
    /// `keel.*` (or other) kernel command-line words, after `keel.debug_exit=`.
    pub cmdline: Vec<String>,
    /// Port of the `isa-debug-exit` device; `None` leaves the device out.
    pub debug_exit: Option<u16>,
    /// Appended verbatim at the end of the command line.
    pub extra_args: Vec<OsString>,
    /// What to boot; with anything but [`BootSource::Kernel`], `kernel` and `cmdline` are
    /// unused (the medium carries its own).
    pub boot: BootSource,
    /// The machine runs Xen from a boot medium (`--xen` PXE bundle or ISO): the same CPU,
    /// IOMMU and virtio options as [`BootSource::Xen`].
    pub xen_host: bool,
}

impl VmConfig {
    /// The defaults shared by every caller: q35, 256 MiB, no devices, debug-exit on.
    pub fn new(kernel: impl Into<PathBuf>, accel: Accel, serial: SerialMode) -> Self {
        VmConfig {
            kernel: kernel.into(),
            memory_mib: 256,
            accel,
            serial,
            disks: Vec::new(),
            nic: None,
            cmdline: Vec::new(),
            debug_exit: Some(DEBUG_EXIT_PORT),
            extra_args: Vec::new(),
            boot: BootSource::Kernel,
            xen_host: false,
        }
    }

    /// The kernel command line passed with `-append`.
    pub fn kernel_cmdline(&self) -> String {
        let debug_exit = self
            .debug_exit
            .map(|port| format!("keel.debug_exit={port:#x}"));
        debug_exit
            .into_iter()
            .chain(self.cmdline.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The arguments after the QEMU binary name.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["-machine", "q35", "-accel", self.accel.qemu_name()]);
        push(&["-m", &self.memory_mib.to_string()]);
        push(&["-nodefaults", "-no-reboot"]);
        let under_xen = matches!(self.boot, BootSource::Xen(_)) || self.xen_host;
        if under_xen {
            let cpu = match self.accel {
                Accel::Tcg => TCG_XEN_CPU,
                // Nested virtualization: Xen needs the host's SVM/VMX passed through.
                Accel::Kvm => "host",
            };
            // Two host CPUs for Xen (dom0 gets one vCPU); the IOMMU before any PCI device.
            push(&["-cpu", cpu, "-smp", "2", "-device", "amd-iommu"]);
        }
        // Virtio devices bypass an IOMMU unless told otherwise; under Xen they must not.
        let virtio_options = if under_xen { VIRTIO_BEHIND_IOMMU } else { "" };
        match self.serial {
            SerialMode::Terminal => push(&["-nographic", "-serial", "mon:stdio"]),
            SerialMode::Pipe => push(&["-display", "none", "-serial", "stdio"]),
        }
        if let Some(port) = self.debug_exit {
            let device = format!("isa-debug-exit,iobase={port:#x},iosize=0x04");
            push(&["-device", &device]);
        }
        // Network boot needs a NIC (virtio-net unless one is configured) with its boot ROM.
        let network_boot = match &self.boot {
            BootSource::Network {
                tftp_root,
                bootfile,
            } => Some((tftp_root, bootfile)),
            _ => None,
        };
        let nic = self.nic.or(network_boot.map(|_| NicSpec {
            model: NicModel::VirtioNet,
            api_host_port: None,
        }));
        if let Some(nic) = nic {
            let mut netdev = String::from("user,id=net0");
            if let Some(host_port) = nic.api_host_port {
                netdev.push_str(&format!(
                    ",hostfwd=tcp:127.0.0.1:{host_port}-:{API_GUEST_PORT}"
                ));
            }
            let mut device = format!("{},netdev=net0", nic.model.qemu_device());
            if nic.model == NicModel::VirtioNet {
                device.push_str(virtio_options);
            }
            match network_boot {
                Some((tftp_root, bootfile)) => netdev.push_str(&format!(
                    ",tftp={},bootfile={}",
                    escape_option_value(&tftp_root.to_string_lossy()),
                    escape_option_value(bootfile)
                )),
                // `romfile=` leaves out the NIC's iPXE boot ROM: Keel comes in through
                // -kernel, and the ROM only adds boot time and console noise.
                None => device.push_str(",romfile="),
            }
            push(&["-netdev", &netdev, "-device", &device]);
        }
        let (mut blk, mut nvme) = (0, 0);
        for disk in &self.disks {
            let file = escape_option_value(&disk.path.to_string_lossy());
            let (drive, device) = match disk.bus {
                DiskBus::VirtioBlk => {
                    blk += 1;
                    let id = format!("disk{}", blk - 1);
                    (
                        format!("file={file},if=none,id={id},format=raw"),
                        format!("virtio-blk-pci,drive={id}{virtio_options}"),
                    )
                }
                DiskBus::Nvme => {
                    nvme += 1;
                    let n = nvme - 1;
                    (
                        format!("file={file},if=none,id=nv{n},format=raw"),
                        format!("nvme,serial=keel{n},drive=nv{n}"),
                    )
                }
            };
            push(&["-drive", &drive, "-device", &device]);
        }
        match &self.boot {
            BootSource::Kernel => {
                args.push("-kernel".into());
                args.push(self.kernel.clone().into_os_string());
                let cmdline = self.kernel_cmdline();
                if !cmdline.is_empty() {
                    args.push("-append".into());
                    args.push(cmdline.into());
                }
            }
            BootSource::Xen(xen) => {
                args.push("-kernel".into());
                args.push(xen.hypervisor.clone().into_os_string());
                args.push("-append".into());
                args.push(xen.options.join(" ").into());
                args.push("-initrd".into());
                args.push(module_list(&self.kernel, &self.kernel_cmdline(), &xen.modules).into());
            }
            BootSource::Network { .. } => push(&["-boot", "order=n"]),
            BootSource::Cdrom(iso) => {
                let drive = format!(
                    "file={},media=cdrom,format=raw,readonly=on",
                    escape_option_value(&iso.to_string_lossy())
                );
                push(&["-drive", &drive, "-boot", "order=d"]);
            }
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// The full command as a person would type it, for logs and progress output.
    pub fn display_command(&self) -> String {
        std::iter::once(QEMU_BINARY.to_string())
            .chain(
                self.args()
                    .iter()
                    .map(|a| shell_quote(&a.to_string_lossy())),
            )
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// QEMU option values are comma-separated; a literal comma is written twice.
pub fn escape_option_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// Quotes a word for a POSIX shell when it needs quoting.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(config: &VmConfig) -> Vec<String> {
        config
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Whether `needle` appears in `haystack` as consecutive elements.
    fn has_seq(haystack: &[String], needle: &[&str]) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w.iter().zip(needle).all(|(a, b)| a == b))
    }

    #[test]
    fn defaults_are_q35_256m_nodefaults_noreboot_and_debug_exit() {
        let config = VmConfig::new("/img/keel.elf", Accel::Tcg, SerialMode::Pipe);
        let args = strings(&config);
        assert!(has_seq(&args, &["-machine", "q35", "-accel", "tcg"]));
        assert!(has_seq(&args, &["-m", "256"]));
        assert!(has_seq(&args, &["-nodefaults", "-no-reboot"]));
        assert!(has_seq(&args, &["-display", "none", "-serial", "stdio"]));
        assert!(has_seq(
            &args,
            &["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        ));
        assert!(has_seq(
            &args,
            &[
                "-kernel",
                "/img/keel.elf",
                "-append",
                "keel.debug_exit=0xf4"
            ]
        ));
        assert!(!args.iter().any(|a| a == "-netdev" || a == "-drive"));
    }

    #[test]
    fn terminal_serial_shares_stdio_with_the_monitor() {
        let mut config = VmConfig::new("k", Accel::Kvm, SerialMode::Terminal);
        config.memory_mib = 512;
        let args = strings(&config);
        assert!(has_seq(&args, &["-nographic", "-serial", "mon:stdio"]));
        assert!(has_seq(&args, &["-accel", "kvm"]));
        assert!(has_seq(&args, &["-m", "512"]));
    }

    #[test]
    fn nic_uses_user_networking_with_an_optional_api_forward() {
        let mut config = VmConfig::new("k", Accel::Tcg, SerialMode::Pipe);
        config.nic = Some(NicSpec {
            model: NicModel::VirtioNet,
            api_host_port: Some(8080),
        });
        let args = strings(&config);
        assert!(has_seq(
            &args,
            &[
                "-netdev",
                "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80",
                "-device",
                "virtio-net-pci,netdev=net0,romfile="
            ]
        ));
        config.nic = Some(NicSpec {
            model: NicModel::E1000,
            api_host_port: None,
        });
        let args = strings(&config);
        assert!(has_seq(
            &args,
            &[
                "-netdev",
                "user,id=net0",
                "-device",
                "e1000,netdev=net0,romfile="
            ]
        ));
    }

    #[test]
    fn disks_get_distinct_ids_per_bus() {
        let mut config = VmConfig::new("k", Accel::Tcg, SerialMode::Pipe);
        config.disks = vec![
            DiskSpec {
                path: "/d/a.img".into(),
                bus: DiskBus::VirtioBlk,
            },
            DiskSpec {
                path: "/d/n.img".into(),
                bus: DiskBus::Nvme,
            },
            DiskSpec {
                path: "/d/b.img".into(),
                bus: DiskBus::VirtioBlk,
            },
        ];
        let args = strings(&config);
        assert!(has_seq(
            &args,
            &[
                "-drive",
                "file=/d/a.img,if=none,id=disk0,format=raw",
                "-device",
                "virtio-blk-pci,drive=disk0"
            ]
        ));
        assert!(has_seq(
            &args,
            &[
                "-drive",
                "file=/d/n.img,if=none,id=nv0,format=raw",
                "-device",
                "nvme,serial=keel0,drive=nv0"
            ]
        ));
        assert!(has_seq(
            &args,
            &[
                "-drive",
                "file=/d/b.img,if=none,id=disk1,format=raw",
                "-device",
                "virtio-blk-pci,drive=disk1"
            ]
        ));
    }

    #[test]
    fn commas_in_disk_paths_are_doubled() {
        let mut config = VmConfig::new("k", Accel::Tcg, SerialMode::Pipe);
        config.disks = vec![DiskSpec {
            path: "/d/a,b.img".into(),
            bus: DiskBus::VirtioBlk,
        }];
        assert!(
            strings(&config).contains(&"file=/d/a,,b.img,if=none,id=disk0,format=raw".to_string())
        );
    }

    #[test]
    fn cmdline_follows_debug_exit_and_extra_args_come_last() {
        let mut config = VmConfig::new("k", Accel::Tcg, SerialMode::Pipe);
        config.cmdline = vec!["keel.log=debug".into(), "keel.test=panic".into()];
        config.extra_args = vec!["-smp".into(), "2".into()];
        let args = strings(&config);
        assert!(has_seq(
            &args,
            &[
                "-append",
                "keel.debug_exit=0xf4 keel.log=debug keel.test=panic"
            ]
        ));
        assert_eq!(args[args.len() - 2..], ["-smp", "2"]);
    }

    #[test]
    fn without_debug_exit_there_is_no_device_and_no_empty_append() {
        let mut config = VmConfig::new("k", Accel::Tcg, SerialMode::Pipe);
        config.debug_exit = None;
        let args = strings(&config);
        assert!(!args
            .iter()
            .any(|a| a.starts_with("isa-debug-exit") || a == "-append"));
    }

    #[test]
    fn network_boot_keeps_the_nic_rom_and_serves_tftp_without_kernel() {
        let mut config = VmConfig::new("k", Accel::Tcg, SerialMode::Pipe);
        config.boot = BootSource::Network {
            tftp_root: "/srv/pxe".into(),
            bootfile: "boot.ipxe".into(),
        };
        let args = strings(&config);
        assert!(has_seq(
            &args,
            &[
                "-netdev",
                "user,id=net0,tftp=/srv/pxe,bootfile=boot.ipxe",
                "-device",
                "virtio-net-pci,netdev=net0",
                "-boot",
                "order=n"
            ]
        ));
        assert!(!args.iter().any(|a| a == "-kernel" || a == "-append"));
        config.nic = Some(NicSpec {
            model: NicModel::E1000,
            api_host_port: Some(8080),
        });
        assert!(has_seq(
            &strings(&config),
            &[
                "-netdev",
                "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,tftp=/srv/pxe,bootfile=boot.ipxe",
                "-device",
                "e1000,netdev=net0"
            ]
        ));
    }

    #[test]
    fn xen_boot_loads_the_hypervisor_with_dom0_as_first_module_and_an_iommu() {
        let mut config = VmConfig::new("/t/keel,1.elf", Accel::Tcg, SerialMode::Pipe);
        config.memory_mib = 1024;
        config.boot = BootSource::Xen(XenBoot::new("/t/xen/xen-4.17-amd64", 1024));
        config.cmdline = vec!["keel.log=debug".into()];
        config.nic = Some(NicSpec {
            model: NicModel::VirtioNet,
            api_host_port: None,
        });
        config.disks = vec![DiskSpec {
            path: "/d/a.img".into(),
            bus: DiskBus::VirtioBlk,
        }];
        let args = strings(&config);
        assert!(has_seq(
            &args,
            &[
                "-cpu",
                "qemu64,+svm,+npt",
                "-smp",
                "2",
                "-device",
                "amd-iommu"
            ]
        ));
        let iommu = args.iter().position(|a| a == "amd-iommu");
        let nic = args.iter().position(|a| a.starts_with("virtio-net-pci"));
        assert!(
            iommu < nic,
            "the IOMMU comes before the PCI devices: {args:?}"
        );
        assert!(args.contains(
            &"virtio-net-pci,netdev=net0,disable-legacy=on,iommu_platform=on,romfile=".to_string()
        ));
        assert!(args.contains(
            &"virtio-blk-pci,drive=disk0,disable-legacy=on,iommu_platform=on".to_string()
        ));
        let kernel = args
            .iter()
            .position(|a| a == "-kernel")
            .map(|i| &args[i..i + 6]);
        let Some(kernel) = kernel else {
            panic!("no -kernel in {args:?}");
        };
        assert_eq!(kernel[1], "/t/xen/xen-4.17-amd64");
        assert_eq!(kernel[2], "-append");
        assert!(kernel[3].contains("dom0=pvh") && kernel[3].contains("console=com1"));
        assert_eq!(
            kernel[4..],
            [
                "-initrd",
                "/t/keel,,1.elf keel.debug_exit=0xf4 keel.log=debug"
            ]
        );
        // Without Xen nothing of this appears.
        config.boot = BootSource::Kernel;
        let plain = strings(&config).join(" ");
        assert!(!plain.contains("amd-iommu") && !plain.contains("iommu_platform"));
    }

    #[test]
    fn cdrom_boot_attaches_the_iso_and_boots_from_it() {
        let mut config = VmConfig::new("k", Accel::Tcg, SerialMode::Pipe);
        config.boot = BootSource::Cdrom("/m/keel,1.iso".into());
        let args = strings(&config);
        assert!(has_seq(
            &args,
            &[
                "-drive",
                "file=/m/keel,,1.iso,media=cdrom,format=raw,readonly=on",
                "-boot",
                "order=d"
            ]
        ));
        assert!(!args.iter().any(|a| a == "-kernel" || a == "-netdev"));
        // The debug-exit device stays: the medium's command line can name its port.
        assert!(args.iter().any(|a| a.starts_with("isa-debug-exit")));
    }

    #[test]
    fn display_command_quotes_words_with_spaces() {
        let mut config = VmConfig::new("/my dir/keel.elf", Accel::Tcg, SerialMode::Pipe);
        config.cmdline = vec!["keel.log=it's".into()];
        let shown = config.display_command();
        assert!(shown.starts_with("qemu-system-x86_64 -machine q35 "));
        assert!(shown.contains("-kernel '/my dir/keel.elf'"));
        assert!(shown.contains(r"-append 'keel.debug_exit=0xf4 keel.log=it'\''s'"));
    }
}
