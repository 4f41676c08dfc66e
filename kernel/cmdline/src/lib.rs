//! Keel's kernel command line: `keel.NAME=VALUE` words parsed into a typed [`Config`].
//!
//! The command line arrives from whichever loader booted Keel (PVH start info, Xen's dom0
//! module string, multiboot). Words that do not start with `keel.` belong to someone else
//! (a loader's file name, Xen's own options) and are ignored.
//!
//! Every option is declared once in [`OPTIONS`]: its name, the forms it accepts, its default,
//! and how a value is applied. The parser, the error lines and the documentation table all
//! come from that declaration. A malformed value never stops the boot: the option keeps its
//! default and the problem is reported as one [`OptionError`] line. None of today's options
//! has a default that is dangerous to fall back to; options whose safe fallback is "do
//! nothing" (such as a future `keel.format=`) must keep that property.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::fmt;
use core::net::Ipv4Addr;

/// How much the console log shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// What the kernel does after printing a panic, when no debug-exit port is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicAction {
    /// Reset the machine (a host should come back by itself).
    Reboot,
    /// Stop with interrupts off, leaving the console for a person to read.
    Halt,
}

/// Actions that exist for the integration tests; a production host leaves this at `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestAction {
    None,
    /// Panic right after `keel: ready`.
    Panic,
    /// Power off through ACPI S5 right after `keel: ready`.
    Poweroff,
    /// Read address 0 right after `keel: ready`: a page fault, reported by the exception path.
    Fault,
    /// Recurse without bound right after `keel: ready`: the stack's guard page stops it.
    StackOverflow,
    /// Benchmark every disk raw after `keel: ready` (their contents are overwritten; no SR is
    /// attached or formatted), print the figures, and power off.
    BenchStorage,
}

/// The typed boot configuration. String values borrow from the command line, which lives
/// for the whole run (the parser runs before there is a heap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config<'a> {
    pub log: LogLevel,
    pub panic: PanicAction,
    /// I/O port of QEMU's `isa-debug-exit` device, when the test harness provides one.
    pub debug_exit: Option<u16>,
    pub test: TestAction,
    /// Static IPv4 address and prefix length for the management NIC; `None` means DHCP.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// Default gateway with a static address.
    pub gateway: Option<Ipv4Addr>,
    /// Argon2 PHC hash of root's management-API password. Without one, every login fails:
    /// there is no default password.
    pub root_hash: Option<&'a str>,
    /// Identity of a disk to erase and format as a new, empty SR even though it holds data
    /// (see the `storage:` log line of each disk). Anything else is never formatted unless
    /// blank.
    pub format: Option<&'a str>,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Config {
            log: LogLevel::Info,
            panic: PanicAction::Reboot,
            debug_exit: None,
            test: TestAction::None,
            ip: None,
            gateway: None,
            root_hash: None,
            format: None,
        }
    }
}

/// One declared option.
pub struct OptionSpec {
    /// Name without the `keel.` prefix.
    pub name: &'static str,
    /// The accepted forms, as shown to a person.
    pub accepted: &'static str,
    /// The default, as shown to a person.
    pub default: &'static str,
    /// What it is for (used by the documentation table).
    pub help: &'static str,
    apply: for<'a> fn(&mut Config<'a>, &'a str) -> Result<(), ()>,
}

/// Every `keel.*` option.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "log",
        accepted: "one of error|warn|info|debug|trace",
        default: "info",
        help: "console log level",
        apply: |c, v| {
            c.log = match v {
                "error" => LogLevel::Error,
                "warn" => LogLevel::Warn,
                "info" => LogLevel::Info,
                "debug" => LogLevel::Debug,
                "trace" => LogLevel::Trace,
                _ => return Err(()),
            };
            Ok(())
        },
    },
    OptionSpec {
        name: "panic",
        accepted: "one of reboot|halt",
        default: "reboot",
        help: "what to do after a panic when no debug-exit port is set",
        apply: |c, v| {
            c.panic = match v {
                "reboot" => PanicAction::Reboot,
                "halt" => PanicAction::Halt,
                _ => return Err(()),
            };
            Ok(())
        },
    },
    OptionSpec {
        name: "debug_exit",
        accepted: "an I/O port such as 0xf4, or off",
        default: "off",
        help: "QEMU isa-debug-exit port: panics exit QEMU with status 3",
        apply: |c, v| {
            c.debug_exit = match v {
                "off" => None,
                _ => Some(parse_u16(v).ok_or(())?),
            };
            Ok(())
        },
    },
    OptionSpec {
        name: "test",
        accepted: "one of none|panic|poweroff|fault|stack-overflow|bench-storage",
        default: "none",
        help: "test-only action after ready",
        apply: |c, v| {
            c.test = match v {
                "none" => TestAction::None,
                "panic" => TestAction::Panic,
                "poweroff" => TestAction::Poweroff,
                "fault" => TestAction::Fault,
                "stack-overflow" => TestAction::StackOverflow,
                "bench-storage" => TestAction::BenchStorage,
                _ => return Err(()),
            };
            Ok(())
        },
    },
    OptionSpec {
        name: "ip",
        accepted: "dhcp, or an IPv4 address with prefix length such as 192.0.2.10/24",
        default: "dhcp",
        help: "management NIC address (a bad value falls back to DHCP, which cannot collide)",
        apply: |c, v| {
            c.ip = match v {
                "dhcp" => None,
                _ => {
                    let (addr, prefix) = v.split_once('/').ok_or(())?;
                    let prefix: u8 = prefix.parse().map_err(|_| ())?;
                    if prefix > 32 {
                        return Err(());
                    }
                    Some((addr.parse().map_err(|_| ())?, prefix))
                }
            };
            Ok(())
        },
    },
    OptionSpec {
        name: "gw",
        accepted: "an IPv4 address, or none",
        default: "none",
        help: "default gateway when keel.ip is static",
        apply: |c, v| {
            c.gateway = match v {
                "none" => None,
                _ => Some(v.parse().map_err(|_| ())?),
            };
            Ok(())
        },
    },
    OptionSpec {
        name: "root_hash",
        accepted: "an argon2 PHC string such as $argon2id$v=19$m=19456,t=2,p=1$SALT$HASH",
        default: "none",
        help: "root's API password hash (without a valid one, logins are refused: never open)",
        apply: |c, v| {
            c.root_hash = Some(v).filter(|v| is_argon2_phc(v));
            c.root_hash.map(|_| ()).ok_or(())
        },
    },
    OptionSpec {
        name: "format",
        accepted: "a disk identity such as nvme-keel0-n1 (letters, digits, . _ : -), or none",
        default: "none",
        help: "erase that disk and create an empty SR on it (a bad value formats nothing)",
        apply: |c, v| {
            c.format = match v {
                "none" => None,
                _ => Some(v).filter(|v| is_disk_identity(v)),
            };
            (v == "none" || c.format.is_some()).then_some(()).ok_or(())
        },
    },
];

/// A disk identity as the storage service prints it: 1 to 64 letters, digits, `.`, `_`,
/// `:` or `-`.
fn is_disk_identity(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The shape of an argon2 PHC string: `$argon2{id,i,d}$v=N$PARAMS$SALT$HASH`. The hash
/// itself is verified by the API service; this only rejects what cannot be one.
fn is_argon2_phc(v: &str) -> bool {
    let mut parts = v.split('$');
    let empty_start = parts.next() == Some("");
    let algorithm = parts.next();
    let rest: [Option<&str>; 4] = core::array::from_fn(|_| parts.next());
    empty_start
        && matches!(algorithm, Some("argon2id" | "argon2i" | "argon2d"))
        && rest.iter().all(|p| p.is_some_and(|p| !p.is_empty()))
        && parts.next().is_none()
        && v.bytes().all(|b| b.is_ascii_graphic())
}

/// A problem with one word of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionError<'a> {
    /// `keel.NAME` where NAME is not declared.
    Unknown { word: &'a str },
    /// A declared option with a value it does not accept (or no `=VALUE`).
    Malformed {
        word: &'a str,
        spec: &'static OptionSpec,
    },
}

impl fmt::Debug for OptionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "keel.{}", self.name)
    }
}

impl PartialEq for OptionSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for OptionSpec {}

impl fmt::Display for OptionError<'_> {
    /// The one console line that reports the problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::Unknown { word } => {
                write!(f, "keel: unknown option '{word}': known options are ")?;
                for (i, spec) in OPTIONS.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}keel.{}", spec.name)?;
                }
                Ok(())
            }
            OptionError::Malformed { word, spec } => write!(
                f,
                "keel: bad option '{word}': expected {}; using default '{}'",
                spec.accepted, spec.default
            ),
        }
    }
}

/// Parses `cmdline`, calling `report` for each bad word, and returns the configuration.
/// Later words override earlier ones.
pub fn parse<'a>(cmdline: &'a str, mut report: impl FnMut(OptionError<'a>)) -> Config<'a> {
    let mut config = Config::default();
    for word in cmdline.split_ascii_whitespace() {
        let Some(rest) = word.strip_prefix("keel.") else {
            continue;
        };
        let (name, value) = match rest.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (rest, None),
        };
        let Some(spec) = OPTIONS.iter().find(|s| s.name == name) else {
            report(OptionError::Unknown { word });
            continue;
        };
        let applied = value.map_or(Err(()), |v| {
            // Apply to a copy so that a rejected value leaves the previous setting intact.
            let mut next = config.clone();
            (spec.apply)(&mut next, v).map(|()| next)
        });
        match applied {
            Ok(next) => config = next,
            Err(()) => report(OptionError::Malformed { word, spec }),
        }
    }
    config
}

/// Decimal or `0x` hexadecimal.
fn parse_u16(v: &str) -> Option<u16> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(line: &str) -> (Config<'_>, Vec<String>) {
        let mut errors = Vec::new();
        let config = parse(line, |e| errors.push(e.to_string()));
        (config, errors)
    }

    #[test]
    fn empty_line_gives_defaults() {
        assert_eq!(parse_all(""), (Config::default(), vec![]));
    }

    #[test]
    fn foreign_words_are_ignored() {
        let (c, e) = parse_all("/boot/keel.elf console=hvc0 dom0_mem=512M keelx=1");
        assert_eq!(c, Config::default());
        assert!(e.is_empty());
    }

    #[test]
    fn every_option_parses() {
        let (c, e) =
            parse_all("keel.log=debug keel.panic=halt keel.debug_exit=0xf4 keel.test=poweroff");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            c,
            Config {
                log: LogLevel::Debug,
                panic: PanicAction::Halt,
                debug_exit: Some(0xf4),
                test: TestAction::Poweroff,
                ip: None,
                gateway: None,
                root_hash: None,
                format: None,
            }
        );
        let (c, e) = parse_all("keel.ip=192.0.2.10/24 keel.gw=192.0.2.1");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.ip, Some((Ipv4Addr::new(192, 0, 2, 10), 24)));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(parse_all("keel.ip=192.0.2.10/24 keel.ip=dhcp").0.ip, None);
        assert_eq!(parse_all("keel.debug_exit=244").0.debug_exit, Some(244));
        assert_eq!(parse_all("keel.test=fault").0.test, TestAction::Fault);
        assert_eq!(
            parse_all("keel.test=stack-overflow").0.test,
            TestAction::StackOverflow
        );
        assert_eq!(
            parse_all("keel.test=bench-storage").0.test,
            TestAction::BenchStorage
        );
        assert_eq!(
            parse_all("keel.debug_exit=0xf4 keel.debug_exit=off")
                .0
                .debug_exit,
            None
        );
    }

    #[test]
    fn malformed_value_keeps_default_and_names_accepted_forms() {
        let (c, e) = parse_all("keel.log=loud");
        assert_eq!(c.log, LogLevel::Info);
        assert_eq!(
            e,
            vec!["keel: bad option 'keel.log=loud': expected one of error|warn|info|debug|trace; using default 'info'"]
        );
    }

    #[test]
    fn malformed_value_keeps_earlier_good_value() {
        let (c, e) = parse_all("keel.log=warn keel.log=");
        assert_eq!(c.log, LogLevel::Warn);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn missing_value_and_out_of_range_port_are_malformed() {
        let (c, e) = parse_all("keel.test keel.debug_exit=0x10000 keel.debug_exit=zz");
        assert_eq!(c, Config::default());
        assert_eq!(e.len(), 3);
        assert!(
            e[0].starts_with("keel: bad option 'keel.test': expected one of none|panic|poweroff")
        );
        assert!(e[1].contains("expected an I/O port"));
    }

    #[test]
    fn bad_addresses_fall_back_to_dhcp() {
        for bad in [
            "keel.ip=192.0.2.10",
            "keel.ip=192.0.2.10/33",
            "keel.ip=300.0.0.1/24",
            "keel.ip=/24",
            "keel.ip=a.b.c.d/8",
        ] {
            let (c, e) = parse_all(bad);
            assert_eq!(c.ip, None, "{bad}");
            assert_eq!(e.len(), 1, "{bad}");
            assert!(e[0].ends_with("using default 'dhcp'"), "{}", e[0]);
        }
        let (c, e) = parse_all("keel.gw=10.0.0");
        assert_eq!((c.gateway, e.len()), (None, 1));
    }

    #[test]
    fn root_hash_accepts_phc_strings_only() {
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        let line = format!("keel.root_hash={phc}");
        let (c, e) = parse_all(&line);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.root_hash, Some(phc));
        for bad in [
            "keel.root_hash=hunter2",
            "keel.root_hash=$argon2id$v=19$m=1,t=1,p=1$salt",
            "keel.root_hash=$bcrypt$v=19$m=1$salt$hash",
            "keel.root_hash=$argon2id$v=19$m=1$salt$hash$extra",
            "keel.root_hash=$argon2id$v=19$$salt$hash",
        ] {
            let (c, e) = parse_all(bad);
            assert_eq!(c.root_hash, None, "{bad}");
            assert_eq!(e.len(), 1, "{bad}");
        }
        // A bad value after a good one keeps the good one, like every option.
        let good_then_bad = format!("{line} keel.root_hash=oops");
        assert_eq!(parse_all(&good_then_bad).0.root_hash, Some(phc));
    }

    #[test]
    fn unknown_option_lists_known_ones() {
        let (c, e) = parse_all("keel.nosuch=1");
        assert_eq!(c, Config::default());
        assert_eq!(
            e,
            vec!["keel: unknown option 'keel.nosuch=1': known options are keel.log, keel.panic, keel.debug_exit, keel.test, keel.ip, keel.gw, keel.root_hash, keel.format"]
        );
    }

    #[test]
    fn hostile_bytes_do_not_panic() {
        let (_, e) =
            parse_all("keel.=\u{0} keel.log=\u{FEFF} keel.debug_exit=-1 keel.debug_exit=0x keel.");
        assert_eq!(e.len(), 5);
    }

    #[test]
    fn format_names_one_disk_and_a_bad_value_formats_nothing() {
        let (c, e) = parse_all("keel.format=nvme-keel0-n1");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.format, Some("nvme-keel0-n1"));
        assert_eq!(
            parse_all("keel.format=virtio-blk-00:03.0").0.format,
            Some("virtio-blk-00:03.0")
        );
        assert_eq!(
            parse_all("keel.format=nvme-a keel.format=none").0.format,
            None
        );
        for bad in [
            "keel.format=",
            "keel.format=a/b",
            "keel.format=a*",
            "keel.format",
        ] {
            let (c, e) = parse_all(bad);
            assert_eq!(c.format, None, "{bad}");
            assert_eq!(e.len(), 1, "{bad}");
        }
        let long = format!("keel.format={}", "x".repeat(65));
        assert_eq!(parse_all(&long).0.format, None);
        // A bad value after a good one keeps the good one.
        assert_eq!(
            parse_all("keel.format=nvme-a keel.format=?").0.format,
            Some("nvme-a")
        );
    }
}
