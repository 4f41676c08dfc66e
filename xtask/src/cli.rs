//! `cargo xtask` arguments: parsed by hand into a typed [`Command`] (no parser crate needed
//! for four subcommands), with a typed [`CliError`] for every mistake.

use std::fmt;
use std::path::PathBuf;

use keel_tests::qemu::DiskSpec;
use keel_tests::{AccelChoice, DiskBus, NicModel};

pub const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  build [--release]        build the image; release goes to target/keel/keel.elf,
                           debug to target/keel/keel-debug.elf
  run [options]            build (release) and boot Debian's Xen 4.17 in QEMU with
                           Keel as its PVH dom0, on this terminal (Ctrl-A X quits)
      --memory MIB             guest memory (default 256; under Xen at least 1024,
                               half for dom0)
      --disk FILE              attach a raw image on virtio-blk (repeatable)
      --nvme FILE              attach a raw image on NVMe (repeatable)
                               (without --disk/--nvme: target/keel/scratch.img, 64 MiB)
      --nic none|virtio|e1000|e1000e
                               network card on user networking (default virtio)
      --api-port PORT          host port on 127.0.0.1 forwarded to the management API
                               on guest port 80 (default 8080)
      --append \"WORDS\"         kernel command line words, e.g. \"keel.log=debug\"
      --accel tcg|kvm|auto     accelerator (default auto: KVM only with vmx/svm;
                               under Xen TCG unless --accel kvm, docs/xen.md)
      --no-xen                 boot Keel alone, without Xen
      --xen                    boot Xen with Keel as its dom0 (the default)
  test                     install what the tests use (as root), then host unit
                           tests, then the QEMU integration tests
  prereq                   install every system package any command or test uses
                           (as root on Debian; otherwise print the command) and the
                           targets and components of rust-toolchain.toml
  image --pxe DIR | --iso FILE [options]
                           boot media for hosts (docs/boot.md): a PXE bundle
                           (TFTP/HTTP-ready directory) and/or a GRUB ISO
                           (BIOS and UEFI); both with --pxe and --iso
      --config FILE            host configuration (key = value); flags override it
      --xen | --no-xen         boot Xen with Keel as its dom0 (ISO: the default entry)
      --xen-binary FILE        Xen hypervisor (default /boot/xen-4.17-amd64.gz)
      --xen-args \"WORDS\"       Xen's command line (default \"console=com1,vga
                               com1=115200,8n1\"); dom0=pvh is always added
      --dom0-mem SIZE          Keel's memory under Xen, e.g. 2G (default 1024M)
      --ip dhcp|A.B.C.D/N      Keel's address (default dhcp)
      --gw A.B.C.D             gateway, with a static --ip
      --root-password-hash PHC argon2 hash of the root password
      --append \"keel.NAME=VALUE ...\"  Keel's options
      --kernel FILE            use this image instead of building the release image
  bench boot [--runs N] [--record]
                           time N boots (default 10) to `keel: ready`; --record
                           writes the figures to docs/benchmarks.md
  bench api [--runs N] [--record]
                           boot to first API login and API calls/s with p50/p99,
                           Keel against a Linux + busybox httpd baseline (N boots
                           each, default 5)
  bench dom0 [--runs N] [--record]
                           QEMU start to ready as Xen's dom0: Keel against Linux
                           6.1 + busybox and a one-line PVH dom0 (the floor), same
                           QEMU and Xen flags, N boots each (default 3)
  bench storage [--runs N] [--record]
                           NVMe and virtio-blk: sequential MB/s and 4 KiB random
                           IOPS at QD 1 and 32, Keel's drivers against Linux 6.1 on
                           the same QEMU disks (N runs each, default 1), and VDI
                           import/export MB/s over HTTP
  bench guest-disk [--runs N] [--record]
                           a Linux guest's xvda through blkback (kbench, O_DIRECT,
                           QD 1 and 32) beside Keel's own driver on the same kind
                           of virtio-blk disk (N runs each, default 1)
  bench guest-net [--runs N] [--record]
                           two Linux guests through netback and the switch: TCP
                           MB/s guest -> outside and guest -> guest, 60-byte UDP
                           frames/s (N host boots, default 1)
  bench guests [--runs N] [--record]
                           Keel beside Linux dom0 + xl on the same Xen and QEMU:
                           dom0 boot, guest start and shutdown, dom0 memory; ratios
                           (N alternating runs of each, default 3)
  bench soak [--clients N] [--minutes M] [--record]
                           N clients (default 64) for M minutes (default 10) of
                           mixed API calls, event.from long-polls and VDI transfers;
                           errors, p50/p99 latency and Keel's memory over time;
                           passes only with 0 errors and flat memory
  bench vm [--runs N] [--record]
                           guests on Keel under Xen: VM.start to domain running
                           and to the guest's console marker, alone and beside 8
                           running guests; dom0 memory per guest (N runs, default 3)
  vm demo [--api-port PORT] make (or reuse) the VM \"demo\" on the Keel of `cargo
                           xtask run` (Debian's kernel, the guest initramfs), start
                           it and print its console until the guest is ready
  console [--api-port PORT] VM
                           attach this terminal to a running guest's console on
                           the Keel of `cargo xtask run` (VM by name-label or
                           UUID; PORT as given to run, default 8080); Ctrl-]
                           detaches
  help                     this text
";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Build {
        release: bool,
    },
    Run(RunOptions),
    Test,
    BenchBoot {
        runs: u32,
        record: bool,
    },
    BenchApi {
        runs: u32,
        record: bool,
    },
    BenchDom0 {
        runs: u32,
        record: bool,
    },
    BenchStorage {
        runs: u32,
        record: bool,
    },
    BenchSoak(SoakOptions),
    BenchVm {
        runs: u32,
        record: bool,
    },
    BenchGuestDisk {
        runs: u32,
        record: bool,
    },
    BenchGuestNet {
        runs: u32,
        record: bool,
    },
    BenchGuests {
        runs: u32,
        record: bool,
    },
    Prereq,
    /// `image` with its words, parsed by `commands::image`.
    Image(Vec<String>),
    /// `console` with its words, parsed by `commands::console`.
    Console(Vec<String>),
    /// `vm` with its words, parsed by `commands::vm`.
    Vm(Vec<String>),
    Help,
}

/// Options of `cargo xtask run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    pub memory_mib: u32,
    /// Disks in command-line order; empty means "the scratch disk".
    pub disks: Vec<DiskSpec>,
    pub nic: Option<NicModel>,
    pub api_port: u16,
    /// Kernel command-line words, in order.
    pub append: Vec<String>,
    pub accel: AccelChoice,
    /// Boot Xen with Keel as its dom0 (the default; `--no-xen` boots Keel alone).
    pub xen: bool,
}

/// Options of `cargo xtask bench soak`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoakOptions {
    pub clients: usize,
    pub minutes: u32,
    pub record: bool,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            clients: 64,
            minutes: 10,
            record: false,
        }
    }
}

/// The default host port of the management API forward.
pub const DEFAULT_API_PORT: u16 = 8080;

/// The default number of boots of `bench boot`.
pub const DEFAULT_BENCH_RUNS: u32 = 10;

/// The default number of boots of each system in `bench api`.
pub const DEFAULT_API_BENCH_RUNS: u32 = 5;

/// The default number of boots of each system in `bench dom0`.
pub const DEFAULT_DOM0_BENCH_RUNS: u32 = 3;

/// The default number of runs of each figure in `bench vm`.
pub const DEFAULT_VM_BENCH_RUNS: u32 = 3;

/// The default number of runs of each system in `bench storage`.
pub const DEFAULT_STORAGE_BENCH_RUNS: u32 = 1;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            memory_mib: 256,
            disks: Vec::new(),
            nic: Some(NicModel::VirtioNet),
            api_port: DEFAULT_API_PORT,
            append: Vec::new(),
            accel: AccelChoice::Auto,
            xen: true,
        }
    }
}

/// A mistake on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    NoCommand,
    UnknownCommand(String),
    UnknownOption {
        command: &'static str,
        option: String,
    },
    MissingValue {
        option: String,
    },
    InvalidValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    /// `bench` without a known benchmark name.
    UnknownBenchmark(Option<String>),
    /// `--api-port` given together with `--nic none`.
    ApiPortWithoutNic,
    /// `image` without `--pxe` or `--iso`.
    ImageWithoutOutput,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::NoCommand => write!(f, "no command given"),
            CliError::UnknownCommand(name) => write!(f, "unknown command '{name}'"),
            CliError::UnknownOption { command, option } => {
                write!(f, "unknown option '{option}' for '{command}'")
            }
            CliError::MissingValue { option } => write!(f, "option '{option}' needs a value"),
            CliError::InvalidValue {
                option,
                value,
                expected,
            } => {
                write!(
                    f,
                    "invalid value '{value}' for '{option}': expected {expected}"
                )
            }
            CliError::UnknownBenchmark(Some(name)) => {
                write!(
                    f,
                    "unknown benchmark '{name}': expected 'boot', 'api', 'dom0', 'storage', 'soak' or 'vm'"
                )
            }
            CliError::UnknownBenchmark(None) => {
                write!(
                    f,
                    "'bench' needs a benchmark name: 'boot', 'api', 'dom0', 'storage', 'soak' or 'vm'"
                )
            }
            CliError::ApiPortWithoutNic => {
                write!(f, "'--api-port' needs a NIC, but '--nic none' was given")
            }
            CliError::ImageWithoutOutput => {
                write!(f, "'image' needs --pxe DIR, --iso FILE, or both")
            }
        }
    }
}

impl std::error::Error for CliError {}

/// Parses the arguments after `cargo xtask`.
pub fn parse<I, S>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = Options::new(args.into_iter().map(Into::into).collect());
    let Some(command) = args.next_word() else {
        return Err(CliError::NoCommand);
    };
    match command.as_str() {
        "build" => parse_build(&mut args),
        "run" => parse_run(&mut args).map(Command::Run),
        "test" => parse_test(&mut args),
        "prereq" => match args.next_option("prereq")? {
            Some(option) => Err(option.unknown("prereq")),
            None => Ok(Command::Prereq),
        },
        "bench" => parse_bench(&mut args),
        "image" => Ok(Command::Image(args.rest())),
        "console" => Ok(Command::Console(args.rest())),
        "vm" => Ok(Command::Vm(args.rest())),
        "help" | "--help" | "-h" => Ok(Command::Help),
        _ => Err(CliError::UnknownCommand(command)),
    }
}

fn parse_build(args: &mut Options) -> Result<Command, CliError> {
    let mut release = false;
    while let Some(option) = args.next_option("build")? {
        match option.name.as_str() {
            "--release" => {
                option.no_value()?;
                release = true;
            }
            _ => return Err(option.unknown("build")),
        }
    }
    Ok(Command::Build { release })
}

fn parse_test(args: &mut Options) -> Result<Command, CliError> {
    match args.next_option("test")? {
        Some(option) => Err(option.unknown("test")),
        None => Ok(Command::Test),
    }
}

fn parse_run(args: &mut Options) -> Result<RunOptions, CliError> {
    let mut run = RunOptions::default();
    let mut api_port_given = false;
    while let Some(option) = args.next_option("run")? {
        match option.name.as_str() {
            "--memory" => {
                let value = args.value(&option)?;
                run.memory_mib = match value.parse::<u32>() {
                    Ok(mib) if mib > 0 => mib,
                    _ => return Err(invalid(&option, value, "a size in MiB greater than 0")),
                };
            }
            "--disk" | "--nvme" => {
                let value = args.value(&option)?;
                if value.is_empty() {
                    return Err(invalid(&option, value, "a file name"));
                }
                let bus = if option.name == "--disk" {
                    DiskBus::VirtioBlk
                } else {
                    DiskBus::Nvme
                };
                run.disks.push(DiskSpec {
                    path: PathBuf::from(value),
                    bus,
                });
            }
            "--nic" => {
                let value = args.value(&option)?;
                run.nic = match value.as_str() {
                    "none" => None,
                    "virtio" => Some(NicModel::VirtioNet),
                    "e1000" => Some(NicModel::E1000),
                    "e1000e" => Some(NicModel::E1000e),
                    _ => return Err(invalid(&option, value, "none, virtio, e1000 or e1000e")),
                };
            }
            "--api-port" => {
                let value = args.value(&option)?;
                run.api_port = match value.parse::<u16>() {
                    Ok(port) if port > 0 => port,
                    _ => return Err(invalid(&option, value, "a TCP port from 1 to 65535")),
                };
                api_port_given = true;
            }
            "--xen" | "--no-xen" => {
                option.no_value()?;
                run.xen = option.name == "--xen";
            }
            "--append" => {
                let value = args.value(&option)?;
                run.append
                    .extend(value.split_whitespace().map(str::to_string));
            }
            "--accel" => {
                let value = args.value(&option)?;
                run.accel = value
                    .parse()
                    .map_err(|_| invalid(&option, value.clone(), "tcg, kvm or auto"))?;
            }
            _ => return Err(option.unknown("run")),
        }
    }
    if api_port_given && run.nic.is_none() {
        return Err(CliError::ApiPortWithoutNic);
    }
    Ok(run)
}

fn parse_bench(args: &mut Options) -> Result<Command, CliError> {
    let word = args.next_word();
    if word.as_deref() == Some("soak") {
        return parse_soak(args).map(Command::BenchSoak);
    }
    let (name, default_runs) = match word.as_deref() {
        Some("boot") => ("bench boot", DEFAULT_BENCH_RUNS),
        Some("api") => ("bench api", DEFAULT_API_BENCH_RUNS),
        Some("dom0") => ("bench dom0", DEFAULT_DOM0_BENCH_RUNS),
        Some("guest-disk") => ("bench guest-disk", DEFAULT_STORAGE_BENCH_RUNS),
        Some("guest-net") => ("bench guest-net", DEFAULT_STORAGE_BENCH_RUNS),
        Some("guests") => ("bench guests", DEFAULT_VM_BENCH_RUNS),
        Some("storage") => ("bench storage", DEFAULT_STORAGE_BENCH_RUNS),
        Some("vm") => ("bench vm", DEFAULT_VM_BENCH_RUNS),
        other => return Err(CliError::UnknownBenchmark(other.map(str::to_string))),
    };
    let (mut runs, mut record) = (default_runs, false);
    while let Some(option) = args.next_option(name)? {
        match option.name.as_str() {
            "--runs" => {
                let value = args.value(&option)?;
                runs = match value.parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(invalid(&option, value, "a number of boots greater than 0")),
                };
            }
            "--record" => {
                option.no_value()?;
                record = true;
            }
            _ => return Err(option.unknown(name)),
        }
    }
    Ok(match name {
        "bench api" => Command::BenchApi { runs, record },
        "bench dom0" => Command::BenchDom0 { runs, record },
        "bench guest-disk" => Command::BenchGuestDisk { runs, record },
        "bench guest-net" => Command::BenchGuestNet { runs, record },
        "bench guests" => Command::BenchGuests { runs, record },
        "bench storage" => Command::BenchStorage { runs, record },
        "bench vm" => Command::BenchVm { runs, record },
        _ => Command::BenchBoot { runs, record },
    })
}

fn parse_soak(args: &mut Options) -> Result<SoakOptions, CliError> {
    let mut soak = SoakOptions::default();
    while let Some(option) = args.next_option("bench soak")? {
        match option.name.as_str() {
            "--clients" => {
                let value = args.value(&option)?;
                soak.clients = match value.parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => n,
                    _ => {
                        return Err(invalid(
                            &option,
                            value,
                            "a number of clients from 1 to 1024",
                        ))
                    }
                };
            }
            "--minutes" => {
                let value = args.value(&option)?;
                soak.minutes = match value.parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Err(invalid(
                            &option,
                            value,
                            "a number of minutes greater than 0",
                        ))
                    }
                };
            }
            "--record" => {
                option.no_value()?;
                soak.record = true;
            }
            _ => return Err(option.unknown("bench soak")),
        }
    }
    Ok(soak)
}

fn invalid(option: &OptionWord, value: String, expected: &'static str) -> CliError {
    CliError::InvalidValue {
        option: option.name.clone(),
        value,
        expected,
    }
}

/// An option word, split at `=` when written `--name=value`.
struct OptionWord {
    name: String,
    inline_value: Option<String>,
}

impl OptionWord {
    fn unknown(&self, command: &'static str) -> CliError {
        CliError::UnknownOption {
            command,
            option: self.name.clone(),
        }
    }

    /// Flags take no value; `--release=yes` is a mistake, not a silent yes.
    fn no_value(&self) -> Result<(), CliError> {
        match &self.inline_value {
            None => Ok(()),
            Some(value) => Err(CliError::InvalidValue {
                option: self.name.clone(),
                value: value.clone(),
                expected: "no value",
            }),
        }
    }
}

/// The argument cursor.
struct Options {
    words: std::vec::IntoIter<String>,
}

impl Options {
    fn new(words: Vec<String>) -> Self {
        Options {
            words: words.into_iter(),
        }
    }

    fn next_word(&mut self) -> Option<String> {
        self.words.next()
    }

    /// Every word not consumed yet.
    fn rest(&mut self) -> Vec<String> {
        self.words.by_ref().collect()
    }

    /// The next `--option`; a bare word here is an unknown option of `command`.
    fn next_option(&mut self, command: &'static str) -> Result<Option<OptionWord>, CliError> {
        let Some(word) = self.words.next() else {
            return Ok(None);
        };
        if !word.starts_with("--") {
            return Err(CliError::UnknownOption {
                command,
                option: word,
            });
        }
        Ok(Some(match word.split_once('=') {
            Some((name, value)) => OptionWord {
                name: name.to_string(),
                inline_value: Some(value.to_string()),
            },
            None => OptionWord {
                name: word,
                inline_value: None,
            },
        }))
    }

    /// The option's value: inline after `=`, else the next word.
    fn value(&mut self, option: &OptionWord) -> Result<String, CliError> {
        match &option.inline_value {
            Some(value) => Ok(value.clone()),
            None => self.words.next().ok_or_else(|| CliError::MissingValue {
                option: option.name.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(line: &str) -> Result<Command, CliError> {
        parse(line.split_whitespace())
    }

    #[test]
    fn build_defaults_to_debug() {
        assert_eq!(parse_words("build"), Ok(Command::Build { release: false }));
        assert_eq!(
            parse_words("build --release"),
            Ok(Command::Build { release: true })
        );
        assert_eq!(
            parse_words("build --release=yes"),
            Err(CliError::InvalidValue {
                option: "--release".into(),
                value: "yes".into(),
                expected: "no value"
            })
        );
    }

    #[test]
    fn run_defaults_match_the_documented_ones() {
        let Ok(Command::Run(run)) = parse_words("run") else {
            panic!("run did not parse");
        };
        assert_eq!(run.memory_mib, 256);
        assert_eq!(run.nic, Some(NicModel::VirtioNet));
        assert_eq!(run.api_port, 8080);
        assert_eq!(run.accel, AccelChoice::Auto);
        assert!(run.xen, "run boots Xen with Keel as dom0 by default");
        assert!(run.disks.is_empty() && run.append.is_empty());
        assert!(USAGE.contains("--no-xen "));
    }

    #[test]
    fn no_xen_boots_keel_alone_and_the_last_flag_wins() {
        assert!(matches!(
            parse_words("run --no-xen"),
            Ok(Command::Run(RunOptions { xen: false, .. }))
        ));
        assert!(matches!(
            parse_words("run --no-xen --xen"),
            Ok(Command::Run(RunOptions { xen: true, .. }))
        ));
        assert!(matches!(
            parse_words("run --no-xen=1"),
            Err(CliError::InvalidValue { .. })
        ));
    }

    #[test]
    fn prereq_takes_no_options() {
        assert_eq!(parse_words("prereq"), Ok(Command::Prereq));
        assert_eq!(
            parse_words("console --api-port 9000 vm1"),
            Ok(Command::Console(vec![
                "--api-port".into(),
                "9000".into(),
                "vm1".into()
            ]))
        );
        assert_eq!(
            parse_words("prereq --check"),
            Err(CliError::UnknownOption {
                command: "prereq",
                option: "--check".into()
            })
        );
    }

    #[test]
    fn bench_soak_defaults_to_64_clients_for_10_minutes() {
        assert_eq!(
            parse_words("bench soak"),
            Ok(Command::BenchSoak(SoakOptions {
                clients: 64,
                minutes: 10,
                record: false
            }))
        );
        assert_eq!(
            parse_words("bench soak --clients 16 --minutes=1 --record"),
            Ok(Command::BenchSoak(SoakOptions {
                clients: 16,
                minutes: 1,
                record: true
            }))
        );
        for line in [
            "bench soak --clients 0",
            "bench soak --minutes 0",
            "bench soak --clients many",
        ] {
            assert!(
                matches!(parse_words(line), Err(CliError::InvalidValue { .. })),
                "{line}"
            );
        }
        assert!(matches!(
            parse_words("bench soak --runs 3"),
            Err(CliError::UnknownOption { .. })
        ));
    }

    #[test]
    fn run_takes_every_option_in_both_spellings() {
        let args = [
            "run",
            "--memory",
            "512",
            "--disk=a.img",
            "--nvme",
            "n.img",
            "--disk",
            "b.img",
            "--nic",
            "e1000",
            "--api-port=9090",
            "--append",
            "keel.log=debug  keel.panic=halt",
            "--append=keel.test=none",
            "--accel",
            "tcg",
            "--xen",
        ];
        let expected = RunOptions {
            memory_mib: 512,
            disks: vec![
                DiskSpec {
                    path: "a.img".into(),
                    bus: DiskBus::VirtioBlk,
                },
                DiskSpec {
                    path: "n.img".into(),
                    bus: DiskBus::Nvme,
                },
                DiskSpec {
                    path: "b.img".into(),
                    bus: DiskBus::VirtioBlk,
                },
            ],
            nic: Some(NicModel::E1000),
            api_port: 9090,
            append: vec![
                "keel.log=debug".into(),
                "keel.panic=halt".into(),
                "keel.test=none".into(),
            ],
            accel: AccelChoice::Tcg,
            xen: true,
        };
        assert_eq!(parse(args), Ok(Command::Run(expected)));
    }

    #[test]
    fn run_rejects_bad_values() {
        let cases = [
            ("run --memory 0", "--memory", "0"),
            ("run --memory lots", "--memory", "lots"),
            ("run --nic wifi", "--nic", "wifi"),
            ("run --api-port 0", "--api-port", "0"),
            ("run --api-port 70000", "--api-port", "70000"),
            ("run --accel hvf", "--accel", "hvf"),
            ("run --disk=", "--disk", ""),
        ];
        for (line, option, value) in cases {
            match parse_words(line) {
                Err(CliError::InvalidValue {
                    option: o,
                    value: v,
                    ..
                }) => {
                    assert_eq!((o.as_str(), v.as_str()), (option, value), "{line}");
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_values_and_unknown_words_are_errors() {
        assert_eq!(
            parse_words("run --memory"),
            Err(CliError::MissingValue {
                option: "--memory".into()
            })
        );
        assert_eq!(
            parse_words("run --verbose"),
            Err(CliError::UnknownOption {
                command: "run",
                option: "--verbose".into()
            })
        );
        assert_eq!(
            parse_words("run extra"),
            Err(CliError::UnknownOption {
                command: "run",
                option: "extra".into()
            })
        );
        assert_eq!(
            parse_words("test --nocapture"),
            Err(CliError::UnknownOption {
                command: "test",
                option: "--nocapture".into()
            })
        );
        assert_eq!(
            parse_words("deploy"),
            Err(CliError::UnknownCommand("deploy".into()))
        );
        assert_eq!(parse(Vec::<String>::new()), Err(CliError::NoCommand));
    }

    #[test]
    fn every_nic_model_parses() {
        for (word, model) in [
            ("virtio", NicModel::VirtioNet),
            ("e1000", NicModel::E1000),
            ("e1000e", NicModel::E1000e),
        ] {
            let parsed = parse_words(&format!("run --nic {word}"));
            assert!(
                matches!(&parsed, Ok(Command::Run(RunOptions { nic: Some(m), .. })) if *m == model),
                "{word}: {parsed:?}"
            );
        }
    }

    #[test]
    fn api_port_needs_a_nic() {
        assert_eq!(
            parse_words("run --nic none --api-port 8081"),
            Err(CliError::ApiPortWithoutNic)
        );
        assert!(matches!(
            parse_words("run --nic none"),
            Ok(Command::Run(RunOptions { nic: None, .. }))
        ));
    }

    #[test]
    fn bench_boot_parses_runs_and_record() {
        assert_eq!(
            parse_words("bench boot"),
            Ok(Command::BenchBoot {
                runs: 10,
                record: false
            })
        );
        assert_eq!(
            parse_words("bench boot --runs 3 --record"),
            Ok(Command::BenchBoot {
                runs: 3,
                record: true
            })
        );
        assert_eq!(
            parse_words("bench boot --runs=5"),
            Ok(Command::BenchBoot {
                runs: 5,
                record: false
            })
        );
        assert!(matches!(
            parse_words("bench boot --runs 0"),
            Err(CliError::InvalidValue { .. })
        ));
        assert_eq!(parse_words("bench"), Err(CliError::UnknownBenchmark(None)));
        assert_eq!(
            parse_words("bench net"),
            Err(CliError::UnknownBenchmark(Some("net".into())))
        );
    }

    #[test]
    fn bench_storage_defaults_to_one_run() {
        assert_eq!(
            parse_words("bench storage"),
            Ok(Command::BenchStorage {
                runs: 1,
                record: false
            })
        );
        assert_eq!(
            parse_words("bench storage --runs 3 --record"),
            Ok(Command::BenchStorage {
                runs: 3,
                record: true
            })
        );
    }

    #[test]
    fn bench_guest_net_defaults_to_one_run() {
        assert_eq!(
            parse_words("bench guest-net"),
            Ok(Command::BenchGuestNet {
                runs: 1,
                record: false
            })
        );
        assert_eq!(
            parse_words("bench guest-net --runs 3 --record"),
            Ok(Command::BenchGuestNet {
                runs: 3,
                record: true
            })
        );
    }

    #[test]
    fn bench_guest_disk_defaults_to_one_run() {
        assert_eq!(
            parse_words("bench guest-disk"),
            Ok(Command::BenchGuestDisk {
                runs: 1,
                record: false
            })
        );
        assert_eq!(
            parse_words("bench guest-disk --runs 2 --record"),
            Ok(Command::BenchGuestDisk {
                runs: 2,
                record: true
            })
        );
    }

    #[test]
    fn bench_dom0_defaults_to_three_runs_and_xen_is_a_run_flag() {
        assert_eq!(
            parse_words("bench dom0"),
            Ok(Command::BenchDom0 {
                runs: 3,
                record: false
            })
        );
        assert_eq!(
            parse_words("bench dom0 --runs 5 --record"),
            Ok(Command::BenchDom0 {
                runs: 5,
                record: true
            })
        );
        assert!(matches!(
            parse_words("run --xen"),
            Ok(Command::Run(RunOptions { xen: true, .. }))
        ));
        assert!(matches!(
            parse_words("run --xen=yes"),
            Err(CliError::InvalidValue { .. })
        ));
    }

    #[test]
    fn help_in_three_spellings() {
        for word in ["help", "--help", "-h"] {
            assert_eq!(parse_words(word), Ok(Command::Help));
        }
        assert!(USAGE.contains("cargo xtask <command>"));
    }

    #[test]
    fn error_messages_name_the_option_and_expectation() {
        let error = parse_words("run --nic wifi").err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("invalid value 'wifi' for '--nic': expected none, virtio, e1000 or e1000e")
        );
    }
}
