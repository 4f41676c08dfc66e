//! The host's boot configuration: read from a small `key = value` file, overridden by
//! command-line flags, and validated as a whole into a [`HostConfig`].
//!
//! Keel takes its whole configuration from its command line (`keel.*` options, declared in
//! `keel-cmdline`), so `ip`, `gw` and `root_password_hash` become `keel.ip=`, `keel.gw=`
//! and `keel.root_hash=`, and every `keel.*` word is run through the kernel's own parser:
//! the media never carry an option the kernel would reject.
//!
//! The file format is a strict subset of TOML's: one `key = value` per line, `#` comments,
//! values bare or in double quotes (no escapes). Keys:
//!
//! | key | value | default |
//! |---|---|---|
//! | `keel.NAME` | a `keel.*` option for Keel's command line, checked like the kernel does | none |
//! | `ip` | `dhcp` or `A.B.C.D/PREFIX` (becomes `keel.ip`) | `dhcp` |
//! | `gw` | `A.B.C.D`, inside `ip`'s subnet, static `ip` only (becomes `keel.gw`) | none |
//! | `root_password_hash` | an argon2 PHC string, `$argon2id$v=19$m=…,t=…,p=…$SALT$HASH` (becomes `keel.root_hash`) | none: logins refused |
//! | `xen` | `true` or `false`: boot Xen with Keel as dom0 | `false` |
//! | `xen_binary` | the Xen hypervisor, gzip or plain | `/boot/xen-4.17-amd64.gz` |
//! | `xen_args` | Xen's command line, without `dom0=`/`dom0_mem=` | `console=com1,vga com1=115200,8n1` |
//! | `dom0_mem` | Keel's memory under Xen: a number with K, M, G or T | `1024M` |
//!
//! Anything else is an error naming the line, so a typo never silently changes a host.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ImageError};

/// The keys besides `keel.NAME`.
pub const KEYS: &[&str] = &[
    "ip",
    "gw",
    "root_password_hash",
    "xen",
    "xen_binary",
    "xen_args",
    "dom0_mem",
];

/// Debian's Xen 4.17 hypervisor (package `xen-hypervisor-4.17-amd64`).
pub const DEFAULT_XEN_BINARY: &str = "/boot/xen-4.17-amd64.gz";
/// Xen's console on the first serial port and the screen.
pub const DEFAULT_XEN_ARGS: &str = "console=com1,vga com1=115200,8n1";
/// Keel's memory as dom0.
pub const DEFAULT_DOM0_MEM: &str = "1024M";

/// Settings as given (file or flags): everything optional, nothing checked across keys yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `keel.*` options as (name without `keel.`, value), in the order given.
    pub keel_options: Vec<(String, String)>,
    pub ip: Option<String>,
    pub gw: Option<String>,
    pub root_password_hash: Option<String>,
    pub xen: Option<bool>,
    pub xen_binary: Option<PathBuf>,
    pub xen_args: Option<String>,
    pub dom0_mem: Option<String>,
}

/// The validated configuration of one host (or of a fleet that shares it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Keel's command line: `keel.NAME=VALUE` words, one per option (the last value given
    /// wins), sorted by name.
    pub keel_options: Vec<String>,
    pub xen: bool,
    pub xen_binary: PathBuf,
    /// Xen's own words, without the `dom0=`/`dom0_mem=` the builder adds.
    pub xen_args: Vec<String>,
    pub dom0_mem: String,
}

/// The friendly keys that stand for `keel.*` options, with the option each becomes.
const OPTION_KEYS: &[(&str, &str)] = &[
    ("ip", "ip"),
    ("gw", "gw"),
    ("root_password_hash", "root_hash"),
];

impl Settings {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Settings, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|error| ImageError::ReadConfig {
            path: path.to_path_buf(),
            error,
        })?;
        Settings::parse(&text).map_err(|error| ImageError::Config {
            path: Some(path.to_path_buf()),
            error,
        })
    }

    /// Parses the text of a configuration file.
    pub fn parse(text: &str) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        let mut seen: Vec<String> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let syntax = || ConfigError::Syntax {
                line,
                text: trimmed.to_string(),
            };
            let (key, rest) = trimmed.split_once('=').ok_or_else(syntax)?;
            let key = key.trim();
            let valid_key = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
            if !valid_key {
                return Err(syntax());
            }
            let value = parse_value(rest).ok_or_else(syntax)?;
            if seen.iter().any(|k| k == key) {
                return Err(ConfigError::DuplicateKey {
                    line,
                    key: key.to_string(),
                });
            }
            seen.push(key.to_string());
            settings.set(key, value).map_err(|error| match error {
                SetError::Unknown => ConfigError::UnknownKey {
                    line,
                    key: key.to_string(),
                },
                SetError::Invalid(error) => error,
            })?;
        }
        Ok(settings)
    }

    /// Adds `keel.NAME=VALUE` words (as given to `--append`). Other words are refused:
    /// Xen's options belong in `xen_args`.
    pub fn add_keel_words(&mut self, words: &str) -> Result<(), ConfigError> {
        for word in words.split_whitespace() {
            let option = word.strip_prefix("keel.").and_then(|o| o.split_once('='));
            match option {
                Some((name, value)) if !name.is_empty() => self
                    .keel_options
                    .push((name.to_string(), value.to_string())),
                _ => {
                    return Err(ConfigError::InvalidValue {
                        key: "--append word".into(),
                        value: word.to_string(),
                        expected: "keel.NAME=VALUE (Xen's options go in xen_args)",
                    })
                }
            }
        }
        Ok(())
    }

    /// These settings with every value that `flags` sets replaced by the flag's.
    pub fn overridden_by(mut self, flags: Settings) -> Settings {
        self.keel_options.extend(flags.keel_options);
        self.ip = flags.ip.or(self.ip);
        self.gw = flags.gw.or(self.gw);
        self.root_password_hash = flags.root_password_hash.or(self.root_password_hash);
        self.xen = flags.xen.or(self.xen);
        self.xen_binary = flags.xen_binary.or(self.xen_binary);
        self.xen_args = flags.xen_args.or(self.xen_args);
        self.dom0_mem = flags.dom0_mem.or(self.dom0_mem);
        self
    }

    /// Sets one key from a file.
    fn set(&mut self, key: &str, value: String) -> Result<(), SetError> {
        if let Some(name) = key.strip_prefix("keel.") {
            if name.is_empty() {
                return Err(SetError::Unknown);
            }
            self.keel_options.push((name.to_string(), value));
            return Ok(());
        }
        match key {
            "ip" => self.ip = Some(value),
            "gw" => self.gw = Some(value),
            "root_password_hash" => self.root_password_hash = Some(value),
            "xen" => {
                self.xen = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(SetError::Invalid(ConfigError::InvalidValue {
                            key: "xen".into(),
                            value,
                            expected: "true or false",
                        }))
                    }
                })
            }
            "xen_binary" => self.xen_binary = Some(PathBuf::from(value)),
            "xen_args" => self.xen_args = Some(value),
            "dom0_mem" => self.dom0_mem = Some(value),
            _ => return Err(SetError::Unknown),
        }
        Ok(())
    }

    /// Checks every value and applies the defaults.
    pub fn resolve(self) -> Result<HostConfig, ConfigError> {
        check_network(self.ip.as_deref(), self.gw.as_deref())?;
        if let Some(hash) = &self.root_password_hash {
            check_phc_argon2(hash)?;
        }
        let mut options = self.keel_options.clone();
        for ((key, option), value) in
            OPTION_KEYS
                .iter()
                .zip([&self.ip, &self.gw, &self.root_password_hash])
        {
            let Some(value) = value else {
                continue;
            };
            if options.iter().any(|(name, _)| name == option) {
                return Err(ConfigError::Conflict {
                    key: (*key).to_string(),
                    option: format!("keel.{option}"),
                });
            }
            options.push(((*option).to_string(), value.clone()));
        }
        let keel_options = check_keel_options(&options)?;
        let xen_args_text = self
            .xen_args
            .unwrap_or_else(|| DEFAULT_XEN_ARGS.to_string());
        let xen_args = check_xen_args(&xen_args_text)?;
        let dom0_mem = self
            .dom0_mem
            .unwrap_or_else(|| DEFAULT_DOM0_MEM.to_string());
        check_size(&dom0_mem)?;
        Ok(HostConfig {
            keel_options,
            xen: self.xen.unwrap_or(false),
            xen_binary: self
                .xen_binary
                .unwrap_or_else(|| PathBuf::from(DEFAULT_XEN_BINARY)),
            xen_args,
            dom0_mem,
        })
    }
}

enum SetError {
    Unknown,
    Invalid(ConfigError),
}

/// The value after `=`: bare (up to a ` #` comment) or double-quoted without escapes.
fn parse_value(rest: &str) -> Option<String> {
    let rest = rest.trim();
    if let Some(quoted) = rest.strip_prefix('"') {
        let (inner, after) = quoted.split_once('"')?;
        let after = after.trim();
        if inner.contains('\\') || !(after.is_empty() || after.starts_with('#')) {
            return None;
        }
        return Some(inner.to_string());
    }
    let value = match rest.find(" #").or_else(|| rest.find("\t#")) {
        Some(at) => &rest[..at],
        None => rest,
    };
    let value = value.trim();
    (!value.is_empty() && !value.contains('"')).then(|| value.to_string())
}

/// Whether a word can go into an iPXE script and a GRUB menu meaning exactly itself: no
/// spaces, quotes, `;`, braces, `|`, `&` or `#`. A `$` is allowed (argon2 hashes have it):
/// iPXE only expands `${…}`, and the GRUB menu puts such words in single quotes.
pub fn is_script_safe(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._,:=/+-@%$".contains(c))
}

/// Checks each option the way the kernel will; one word per option, the last value winning.
fn check_keel_options(options: &[(String, String)]) -> Result<Vec<String>, ConfigError> {
    let mut words: std::collections::BTreeMap<&str, String> = Default::default();
    for (name, value) in options {
        let word = format!("keel.{name}={value}");
        if !is_script_safe(&word) {
            return Err(ConfigError::InvalidValue {
                key: format!("keel.{name}"),
                value: value.clone(),
                expected: "one word of letters, digits and ._,:=/+-@%$",
            });
        }
        let mut first_error = None;
        keel_cmdline::parse(&word, |e| {
            first_error.get_or_insert_with(|| e.to_string());
        });
        if let Some(message) = first_error {
            return Err(ConfigError::KeelOption(message));
        }
        words.insert(name, word);
    }
    Ok(words.into_values().collect())
}

/// Checks `ip` and `gw` together (the kernel checks each alone): a gateway needs a static
/// address and must be inside its subnet.
fn check_network(ip: Option<&str>, gw: Option<&str>) -> Result<(), ConfigError> {
    let address = match ip.unwrap_or("dhcp") {
        "dhcp" => None,
        text => {
            let invalid = || ConfigError::InvalidValue {
                key: "ip".into(),
                value: text.to_string(),
                expected: "dhcp or an IPv4 address with prefix length, like 192.0.2.10/24",
            };
            let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
            let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
            let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
            if !(1..=32).contains(&prefix)
                || address.is_unspecified()
                || address.is_broadcast()
                || address.is_multicast()
            {
                return Err(invalid());
            }
            Some((address, prefix))
        }
    };
    let Some(gw) = gw else {
        return Ok(());
    };
    let gateway: Ipv4Addr = gw.parse().map_err(|_| ConfigError::InvalidValue {
        key: "gw".into(),
        value: gw.to_string(),
        expected: "an IPv4 address like 192.0.2.1",
    })?;
    let Some((address, prefix)) = address else {
        return Err(ConfigError::GatewayWithoutStaticIp);
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    if u32::from(gateway) & mask != u32::from(address) & mask || gateway == address {
        return Err(ConfigError::GatewayOutsideSubnet {
            gw: gw.to_string(),
            ip: format!("{address}/{prefix}"),
        });
    }
    Ok(())
}

/// Checks the shape of an argon2 PHC string; the hash itself is Keel's business.
pub fn check_phc_argon2(hash: &str) -> Result<(), ConfigError> {
    let invalid = || ConfigError::InvalidValue {
        key: "root_password_hash".into(),
        value: hash.to_string(),
        expected: "an argon2 PHC string: $argon2id$v=19$m=65536,t=3,p=4$SALT$HASH",
    };
    let b64 = |s: &str, min: usize| {
        s.len() >= min
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.chars().all(|c| c.is_ascii_digit());
    let mut parts = hash.split('$');
    if parts.next() != Some("") {
        return Err(invalid());
    }
    if !matches!(parts.next(), Some("argon2id" | "argon2i" | "argon2d")) {
        return Err(invalid());
    }
    let mut rest: Vec<&str> = parts.collect();
    if rest.first().is_some_and(|p| p.starts_with("v=")) {
        let version = rest.remove(0);
        if !digits(&version[2..]) {
            return Err(invalid());
        }
    }
    let [params, salt, digest] = rest.as_slice() else {
        return Err(invalid());
    };
    let mut names = Vec::new();
    for param in params.split(',') {
        let (name, value) = param.split_once('=').ok_or_else(invalid)?;
        if !digits(value) {
            return Err(invalid());
        }
        names.push(name);
    }
    // Salt at least 8 bytes, hash at least 16 bytes, in unpadded base64.
    if names != ["m", "t", "p"] || !b64(salt, 11) || !b64(digest, 22) {
        return Err(invalid());
    }
    Ok(())
}

fn check_xen_args(text: &str) -> Result<Vec<String>, ConfigError> {
    let mut words = Vec::new();
    for word in text.split_whitespace() {
        if word.starts_with("dom0=") || word.starts_with("dom0_mem=") {
            return Err(ConfigError::ReservedXenArg {
                word: word.to_string(),
            });
        }
        if !is_script_safe(word) {
            return Err(ConfigError::InvalidValue {
                key: "xen_args".into(),
                value: word.to_string(),
                expected: "words of letters, digits and ._,:=/+-@%",
            });
        }
        words.push(word.to_string());
    }
    Ok(words)
}

/// A size as Xen reads it, with an explicit unit: `512M`, `2G`.
fn check_size(size: &str) -> Result<(), ConfigError> {
    let invalid = || ConfigError::InvalidValue {
        key: "dom0_mem".into(),
        value: size.to_string(),
        expected: "a size with a unit, like 1024M or 2G",
    };
    let digits = size
        .strip_suffix(['K', 'M', 'G', 'T'])
        .ok_or_else(invalid)?;
    match digits.parse::<u64>() {
        Ok(n) if n > 0 && !digits.starts_with('0') => Ok(()),
        _ => Err(invalid()),
    }
}

impl HostConfig {
    /// Keel's command line: the `keel.*` words.
    pub fn keel_cmdline(&self) -> String {
        self.keel_options.join(" ")
    }

    /// Xen's command line: its own words, then `dom0=pvh` and the dom0 memory.
    pub fn xen_cmdline(&self) -> String {
        let mut words = self.xen_args.clone();
        words.push("dom0=pvh".into());
        words.push(format!("dom0_mem={0},max:{0}", self.dom0_mem));
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzYWx0$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk";

    fn resolve(text: &str) -> Result<HostConfig, ConfigError> {
        Settings::parse(text)?.resolve()
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config = resolve("").ok();
        assert_eq!(
            config,
            Some(HostConfig {
                keel_options: vec![],
                xen: false,
                xen_binary: DEFAULT_XEN_BINARY.into(),
                xen_args: vec!["console=com1,vga".into(), "com1=115200,8n1".into()],
                dom0_mem: "1024M".into(),
            })
        );
    }

    #[test]
    fn every_key_in_both_value_forms_with_comments() {
        let text = format!(
            "# a host\n\nkeel.log = debug\nip = \"192.0.2.10/24\"   # static\ngw = 192.0.2.1\n\
             root_password_hash = {HASH}\nxen = true\nxen_binary = /srv/xen.gz\n\
             xen_args = \"console=com1 com1=115200,8n1 loglvl=all\"\ndom0_mem = 2G\n"
        );
        let config = resolve(&text);
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        assert_eq!(
            config.keel_options,
            [
                "keel.gw=192.0.2.1".to_string(),
                "keel.ip=192.0.2.10/24".to_string(),
                "keel.log=debug".to_string(),
                format!("keel.root_hash={HASH}"),
            ]
        );
        assert!(config.xen);
        assert_eq!(config.xen_binary, PathBuf::from("/srv/xen.gz"));
        assert_eq!(
            config.xen_cmdline(),
            "console=com1 com1=115200,8n1 loglvl=all dom0=pvh dom0_mem=2G,max:2G"
        );
    }

    #[test]
    fn a_friendly_key_and_its_keel_option_conflict() {
        assert_eq!(
            resolve(
                "ip = dhcp
keel.ip = 10.0.0.1/8"
            ),
            Err(ConfigError::Conflict {
                key: "ip".into(),
                option: "keel.ip".into()
            })
        );
        assert!(resolve("keel.ip = 10.0.0.1/8").is_ok());
    }

    #[test]
    fn unknown_and_duplicate_keys_name_their_line() {
        assert_eq!(
            Settings::parse("ip = dhcp\nhostname = h1\n"),
            Err(ConfigError::UnknownKey {
                line: 2,
                key: "hostname".into()
            })
        );
        assert_eq!(
            Settings::parse("ip = dhcp\n\nip = 10.0.0.1/8\n"),
            Err(ConfigError::DuplicateKey {
                line: 3,
                key: "ip".into()
            })
        );
        let text = ConfigError::UnknownKey {
            line: 2,
            key: "hostname".into(),
        }
        .to_string();
        assert!(text.starts_with("line 2: unknown key 'hostname' (known: ip, gw, "));
    }

    #[test]
    fn malformed_lines_are_syntax_errors() {
        for line in [
            "ip",
            "= dhcp",
            "IP = dhcp",
            "ip = ",
            "ip = \"dhcp",
            "ip = \"dh\\cp\"",
            "ip = \"dhcp\" trailing",
        ] {
            assert!(
                matches!(
                    Settings::parse(line),
                    Err(ConfigError::Syntax { line: 1, .. })
                ),
                "{line}"
            );
        }
    }

    #[test]
    fn keel_options_are_checked_like_the_kernel_does() {
        assert_eq!(
            resolve("keel.log = loud"),
            Err(ConfigError::KeelOption(
                "keel: bad option 'keel.log=loud': expected one of error|warn|info|debug|trace; \
                 using default 'info'"
                    .into()
            ))
        );
        assert!(matches!(
            resolve("keel.colour = red"),
            Err(ConfigError::KeelOption(m)) if m.starts_with("keel: unknown option 'keel.colour=red'")
        ));
        assert!(matches!(
            resolve("keel.log = \"debug;reboot\""),
            Err(ConfigError::InvalidValue { .. })
        ));
    }

    #[test]
    fn flags_override_the_file_and_the_last_keel_value_wins() {
        let file = Settings::parse("keel.log = info\nip = dhcp\ndom0_mem = 512M\n");
        let mut flags = Settings {
            ip: Some("10.1.2.3/16".into()),
            xen: Some(true),
            ..Settings::default()
        };
        assert!(flags
            .add_keel_words("keel.log=debug keel.panic=halt")
            .is_ok());
        let config = file.map(|f| f.overridden_by(flags).resolve());
        let Ok(Ok(config)) = config else {
            panic!("{config:?}");
        };
        assert_eq!(
            config.keel_options,
            ["keel.ip=10.1.2.3/16", "keel.log=debug", "keel.panic=halt"]
        );
        assert_eq!(
            config.keel_cmdline(),
            "keel.ip=10.1.2.3/16 keel.log=debug keel.panic=halt"
        );
        assert_eq!(config.dom0_mem, "512M");
        assert!(config.xen);
    }

    #[test]
    fn append_takes_only_keel_words() {
        let mut flags = Settings::default();
        assert!(matches!(
            flags.add_keel_words("keel.log=debug console=hvc0"),
            Err(ConfigError::InvalidValue { value, .. }) if value == "console=hvc0"
        ));
        assert!(flags.add_keel_words("keel.log").is_err());
    }

    #[test]
    fn network_values_are_checked() {
        for bad in [
            "ip = 10.0.0.1",
            "ip = 10.0.0.1/33",
            "ip = 10.0.0.1/0",
            "ip = 0.0.0.0/8",
            "ip = 224.0.0.1/4",
            "ip = fe80::1/64",
            "ip = static",
        ] {
            assert!(
                matches!(resolve(bad), Err(ConfigError::InvalidValue { ref key, .. }) if key == "ip"),
                "{bad}"
            );
        }
        assert_eq!(
            resolve("gw = 10.0.0.1"),
            Err(ConfigError::GatewayWithoutStaticIp)
        );
        assert_eq!(
            resolve("ip = 10.0.0.5/24\ngw = 10.0.1.1"),
            Err(ConfigError::GatewayOutsideSubnet {
                gw: "10.0.1.1".into(),
                ip: "10.0.0.5/24".into()
            })
        );
        assert!(resolve("ip = 10.0.0.5/24\ngw = 10.0.0.5").is_err());
        assert!(resolve("ip = 10.0.0.5/24\ngw = router").is_err());
        assert!(resolve("ip = 10.0.0.5/32").is_ok());
    }

    #[test]
    fn password_hash_must_have_the_argon2_phc_shape() {
        assert_eq!(check_phc_argon2(HASH), Ok(()));
        assert!(
            check_phc_argon2("$argon2i$m=4096,t=3,p=1$c29tZXNhbHQx$aGFzaGhhc2hoYXNoaGFzaGhh")
                .is_ok()
        );
        for bad in [
            "hunter2",
            "$6$salt$hash",
            "$argon2id$v=19$m=65536,t=3$c29tZXNhbHRzYWx0$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk",
            "$argon2id$v=19$t=3,m=65536,p=4$c29tZXNhbHRzYWx0$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk",
            "$argon2id$v=19$m=65536,t=3,p=4$short$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk",
            "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzYWx0$tooshort",
            "$argon2id$v=x$m=65536,t=3,p=4$c29tZXNhbHRzYWx0$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk",
            "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzYWx0=$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk",
            "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzYWx0$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk$x",
        ] {
            assert!(check_phc_argon2(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xen_args_cannot_set_dom0_or_unsafe_words() {
        assert_eq!(
            resolve("xen_args = console=com1 dom0_mem=4G"),
            Err(ConfigError::ReservedXenArg {
                word: "dom0_mem=4G".into()
            })
        );
        assert!(matches!(
            resolve("xen_args = dom0=pv"),
            Err(ConfigError::ReservedXenArg { .. })
        ));
        assert!(matches!(
            resolve("xen_args = console=com1;reboot"),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(matches!(
            resolve("xen = maybe"),
            Err(ConfigError::InvalidValue { .. })
        ));
    }

    #[test]
    fn dom0_mem_needs_a_unit() {
        for good in ["512M", "2G", "1048576K", "1T"] {
            assert!(check_size(good).is_ok(), "{good}");
        }
        for bad in ["512", "0M", "012M", "M", "1.5G", "-1G", "2g"] {
            assert!(check_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kernel_has_the_last_word_on_a_password_hash() {
        // Argon2-shaped for the builder, but the kernel wants the `v=` part.
        let text = "root_password_hash = $argon2id$m=65536,t=3,p=4$c29tZXNhbHRzYWx0$8hK0y0n5W9aCZb8m1yJk2o3J0y4YQe0b3xJv0Qd7zYk";
        assert!(matches!(
            resolve(text),
            Err(ConfigError::KeelOption(m)) if m.starts_with("keel: bad option 'keel.root_hash=")
        ));
    }
}
