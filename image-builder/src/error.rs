//! Every way building boot media can fail. Each error prints as one line that names the
//! input at fault, and every input error is found before anything is written.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration file or option was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A line that is neither blank, a comment, nor `key = value`.
    Syntax {
        line: usize,
        text: String,
    },
    /// A key that is not one of [`crate::config::KEYS`] nor `keel.NAME`.
    UnknownKey {
        line: usize,
        key: String,
    },
    /// The same key twice in one file.
    DuplicateKey {
        line: usize,
        key: String,
    },
    /// A value that does not have the form the key needs.
    InvalidValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    /// A `keel.*` option the kernel would reject, with the kernel's own message.
    KeelOption(String),
    /// `gw` without a static `ip`, or outside its subnet.
    GatewayWithoutStaticIp,
    GatewayOutsideSubnet {
        gw: String,
        ip: String,
    },
    /// `xen_args` sets something the builder sets itself.
    ReservedXenArg {
        word: String,
    },
    /// A friendly key and the `keel.*` option it stands for are both set.
    Conflict {
        key: String,
        option: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax { line, text } => {
                write!(f, "line {line}: expected 'key = value', found {text:?}")
            }
            ConfigError::UnknownKey { line, key } => write!(
                f,
                "line {line}: unknown key '{key}' (known: {}, keel.NAME)",
                crate::config::KEYS.join(", ")
            ),
            ConfigError::DuplicateKey { line, key } => {
                write!(f, "line {line}: '{key}' is set a second time")
            }
            ConfigError::InvalidValue {
                key,
                value,
                expected,
            } => write!(f, "invalid {key} {value:?}: expected {expected}"),
            ConfigError::KeelOption(message) => write!(f, "{message}"),
            ConfigError::GatewayWithoutStaticIp => {
                write!(f, "gw is set but ip is 'dhcp': a gateway needs a static ip")
            }
            ConfigError::GatewayOutsideSubnet { gw, ip } => {
                write!(f, "gw {gw} is not inside the subnet of ip {ip}")
            }
            ConfigError::Conflict { key, option } => {
                write!(f, "{key} and {option} are the same setting: give only one")
            }
            ConfigError::ReservedXenArg { word } => write!(
                f,
                "xen_args must not contain '{word}': the builder sets dom0=pvh itself and \
                 dom0_mem from the dom0_mem setting"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why an input file is not a usable Keel image or Xen hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFormatError {
    NotElf64,
    NotX86_64,
    NotExecutable,
    BadProgramHeaders,
    /// No multiboot 1 header (with valid checksum) in the first 8 KiB.
    NoMultibootHeader,
    /// The header lacks the load addresses (flag bit 16) that 32-bit loaders need.
    MultibootWithoutAddresses,
    /// The header's addresses do not describe the file's load segments.
    MultibootLayoutMismatch(&'static str),
    /// No `XEN_ELFNOTE_PHYS32_ENTRY` note: Xen could not start it as a PVH dom0.
    NoPvhNote,
    /// The gzip stream is corrupt or larger than the limit.
    BadGzip(String),
    /// Xen without a multiboot 1 header (needed by iPXE) or multiboot 2 header (GRUB).
    XenNotMultiboot {
        version: u8,
    },
}

impl fmt::Display for ImageFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageFormatError::NotElf64 => write!(f, "not a little-endian ELF64 file"),
            ImageFormatError::NotX86_64 => write!(f, "not an x86-64 ELF file"),
            ImageFormatError::NotExecutable => write!(f, "not an ELF executable (ET_EXEC)"),
            ImageFormatError::BadProgramHeaders => {
                write!(f, "program headers run past the end of the file")
            }
            ImageFormatError::NoMultibootHeader => {
                write!(f, "no multiboot header in the first 8 KiB")
            }
            ImageFormatError::MultibootWithoutAddresses => write!(
                f,
                "the multiboot header has no load addresses (flag bit 16), which 32-bit \
                 loaders need to load an ELF64 image"
            ),
            ImageFormatError::MultibootLayoutMismatch(what) => {
                write!(
                    f,
                    "the multiboot header does not match the ELF layout: {what}"
                )
            }
            ImageFormatError::NoPvhNote => {
                write!(
                    f,
                    "no XEN_ELFNOTE_PHYS32_ENTRY note: Xen cannot start it as PVH"
                )
            }
            ImageFormatError::BadGzip(why) => write!(f, "cannot decompress: {why}"),
            ImageFormatError::XenNotMultiboot { version } => {
                write!(f, "not a Xen hypervisor: no multiboot {version} header")
            }
        }
    }
}

/// A failure of `cargo xtask image` or of the library calls behind it.
#[derive(Debug)]
pub enum ImageError {
    /// The configuration file could not be read.
    ReadConfig {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The configuration file (when `path` is set) or an option is wrong.
    Config {
        path: Option<PathBuf>,
        error: ConfigError,
    },
    /// The Keel image could not be read.
    ReadKernel {
        path: PathBuf,
        error: std::io::Error,
    },
    BadKernel {
        path: PathBuf,
        error: ImageFormatError,
    },
    /// The Xen hypervisor could not be read (the usual cause: the package is missing).
    ReadXen {
        path: PathBuf,
        error: std::io::Error,
    },
    BadXen {
        path: PathBuf,
        error: ImageFormatError,
    },
    /// A host tool (`grub-mkimage`, `xorriso`, `mformat`, …) or GRUB platform directory is
    /// missing; `package` is the Debian package that provides it.
    MissingTool { what: String, package: &'static str },
    /// A host tool ran and failed; `detail` is the last line it printed.
    ToolFailed {
        command: String,
        status: Option<std::process::ExitStatus>,
        detail: String,
    },
    /// Writing the output failed.
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::ReadConfig { path, error } => {
                write!(f, "cannot read config {}: {error}", path.display())
            }
            ImageError::Config {
                path: Some(path),
                error,
            } => write!(f, "config {}: {error}", path.display()),
            ImageError::Config { path: None, error } => write!(f, "{error}"),
            ImageError::ReadKernel { path, error } => {
                write!(f, "cannot read the Keel image {}: {error}", path.display())
            }
            ImageError::BadKernel { path, error } => {
                write!(f, "Keel image {}: {error}", path.display())
            }
            ImageError::ReadXen { path, error } => write!(
                f,
                "cannot read the Xen hypervisor {}: {error} (Debian: apt-get install \
                 xen-hypervisor-4.17-amd64, or give --xen-binary FILE)",
                path.display()
            ),
            ImageError::BadXen { path, error } => {
                write!(f, "Xen hypervisor {}: {error}", path.display())
            }
            ImageError::MissingTool { what, package } => write!(
                f,
                "missing {what}: install with `apt-get install -y --no-install-recommends {package}`"
            ),
            ImageError::ToolFailed {
                command,
                status,
                detail,
            } => {
                match status {
                    Some(status) => write!(f, "`{command}` failed ({status})")?,
                    None => write!(f, "`{command}` could not be started")?,
                }
                if !detail.is_empty() {
                    write!(f, ": {detail}")?;
                }
                Ok(())
            }
            ImageError::Write { path, error } => {
                write!(f, "cannot write {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for ImageError {}
