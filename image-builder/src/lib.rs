//! Keel's boot media: a PXE bundle (iPXE script, Keel, optionally Xen) and a bootable GRUB
//! ISO (BIOS and UEFI), used by `cargo xtask image`. The host's configuration travels on
//! Keel's command line as `keel.*` options.
//!
//! Building happens in two phases so that bad input never leaves half-written output:
//! 1. Everything is read and checked: the configuration ([`Settings`] → [`HostConfig`]),
//!    the Keel image ([`KernelImage`]: both boot protocols present and consistent), the Xen
//!    hypervisor ([`XenImage`]), the host tools for the ISO ([`IsoTools`]) and the timestamp
//!    ([`source_date_epoch`]). Together they make a [`Media`].
//! 2. [`write_pxe`] and [`write_iso`] write files; each file appears whole or not at all.
//!
//! The same inputs give byte-identical outputs: every timestamp is the epoch
//! (`SOURCE_DATE_EPOCH`, or 2000-01-01 without it), and nothing else varies.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod iso;
pub mod kernel;
pub mod output;
pub mod pxe;
pub mod scripts;
pub mod xen;

pub use config::{HostConfig, Settings};
pub use error::{ConfigError, ImageError, ImageFormatError};
pub use iso::{write_iso, IsoTools};
pub use kernel::KernelImage;
pub use output::source_date_epoch;
pub use pxe::write_pxe;
pub use xen::XenImage;

/// Everything the media are made of, checked.
#[derive(Debug, Clone)]
pub struct Media {
    pub config: HostConfig,
    pub kernel: KernelImage,
    /// Present exactly when `config.xen` is set.
    pub xen: Option<XenImage>,
    /// Seconds since 1970 used for every timestamp in the output.
    pub epoch: u64,
}

impl Media {
    /// Puts checked parts together; reads the Xen hypervisor when the configuration asks
    /// for Xen.
    pub fn new(config: HostConfig, kernel: KernelImage, epoch: u64) -> Result<Media, ImageError> {
        let xen = load_xen(&config)?;
        Ok(Media {
            config,
            kernel,
            xen,
            epoch,
        })
    }
}

/// The hypervisor when `config` asks for Xen, read and checked.
pub fn load_xen(config: &HostConfig) -> Result<Option<XenImage>, ImageError> {
    if config.xen {
        XenImage::load(&config.xen_binary).map(Some)
    } else {
        Ok(None)
    }
}
