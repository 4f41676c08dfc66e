//! The PXE bundle: a directory a TFTP or HTTP server serves as it is.
//!
//! It holds `boot.ipxe` (the script the DHCP server names as boot file for iPXE clients),
//! `keel.elf`, and with Xen the plain `xen` hypervisor. The builder writes those files and
//! touches nothing else in the directory.

use std::path::{Path, PathBuf};

use crate::error::ImageError;
use crate::output::write_file;
use crate::scripts::{ipxe_script, IPXE_SCRIPT, KERNEL_FILE, XEN_FILE};
use crate::Media;

/// Writes the bundle into `dir` (created if missing); returns the files written, script first.
pub fn write_pxe(media: &Media, dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    std::fs::create_dir_all(dir).map_err(|error| ImageError::Write {
        path: dir.to_path_buf(),
        error,
    })?;
    let script = ipxe_script(&media.config);
    let mut files: Vec<(&str, &[u8])> = vec![
        (IPXE_SCRIPT, script.as_bytes()),
        (KERNEL_FILE, media.kernel.boot_bytes()),
    ];
    if let Some(xen) = &media.xen {
        files.push((XEN_FILE, xen.bytes()));
    }
    let mut written = Vec::new();
    // The script goes last, so that a client never fetches a script whose files are missing.
    for (name, bytes) in files.iter().skip(1).chain(files.iter().take(1)) {
        let path = dir.join(name);
        write_file(&path, bytes, media.epoch)?;
        written.push(path);
    }
    written.rotate_right(1);
    Ok(written)
}
