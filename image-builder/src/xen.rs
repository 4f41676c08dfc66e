//! The Xen hypervisor as boot media carry it: decompressed and checked.
//!
//! Debian ships Xen gzip-compressed (`/boot/xen-4.17-amd64.gz`). GRUB could decompress it,
//! but QEMU's iPXE ROM cannot, so the media always carry the plain image. It must have a
//! multiboot 1 header (iPXE loads it that way) and a multiboot 2 header (GRUB loads it that
//! way, which also works under UEFI).

use std::io::Read;
use std::path::Path;

use crate::error::{ImageError, ImageFormatError};
use crate::kernel::{find_multiboot1_header, has_multiboot2_header};

/// Largest decompressed hypervisor accepted (Xen 4.17 is about 3 MiB).
pub const MAX_XEN_BYTES: u64 = 64 << 20;

/// A checked, uncompressed Xen hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenImage {
    bytes: Vec<u8>,
}

impl XenImage {
    /// Reads, decompresses (when gzip) and checks the hypervisor at `path`.
    pub fn load(path: &Path) -> Result<XenImage, ImageError> {
        let raw = std::fs::read(path).map_err(|error| ImageError::ReadXen {
            path: path.to_path_buf(),
            error,
        })?;
        XenImage::parse(&raw).map_err(|error| ImageError::BadXen {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Checks a hypervisor image, gzip-compressed or not.
    pub fn parse(raw: &[u8]) -> Result<XenImage, ImageFormatError> {
        let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            gunzip(raw)?
        } else {
            raw.to_vec()
        };
        if find_multiboot1_header(&bytes).is_none() {
            return Err(ImageFormatError::XenNotMultiboot { version: 1 });
        }
        if !has_multiboot2_header(&bytes) {
            return Err(ImageFormatError::XenNotMultiboot { version: 2 });
        }
        Ok(XenImage { bytes })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Decompresses a gzip stream of at most [`MAX_XEN_BYTES`].
fn gunzip(raw: &[u8]) -> Result<Vec<u8>, ImageFormatError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .take(MAX_XEN_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| ImageFormatError::BadGzip(e.to_string()))?;
    if out.len() as u64 > MAX_XEN_BYTES {
        return Err(ImageFormatError::BadGzip(format!(
            "larger than {} MiB",
            MAX_XEN_BYTES >> 20
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{MULTIBOOT1_MAGIC, MULTIBOOT2_MAGIC};
    use std::io::Write;

    /// A stand-in hypervisor with both multiboot headers.
    fn fake_xen(with_mb1: bool, with_mb2: bool) -> Vec<u8> {
        let mut bytes = vec![0u8; 4096];
        if with_mb1 {
            let flags = 3u32;
            let checksum = 0u32.wrapping_sub(MULTIBOOT1_MAGIC.wrapping_add(flags));
            bytes[0..4].copy_from_slice(&MULTIBOOT1_MAGIC.to_le_bytes());
            bytes[4..8].copy_from_slice(&flags.to_le_bytes());
            bytes[8..12].copy_from_slice(&checksum.to_le_bytes());
        }
        if with_mb2 {
            let length = 16u32;
            let checksum = 0u32.wrapping_sub(MULTIBOOT2_MAGIC.wrapping_add(length));
            bytes[64..68].copy_from_slice(&MULTIBOOT2_MAGIC.to_le_bytes());
            bytes[72..76].copy_from_slice(&length.to_le_bytes());
            bytes[76..80].copy_from_slice(&checksum.to_le_bytes());
        }
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        assert!(encoder.write_all(bytes).is_ok());
        encoder.finish().unwrap_or_default()
    }

    #[test]
    fn plain_and_gzip_images_give_the_same_bytes() {
        let plain = fake_xen(true, true);
        assert_eq!(
            XenImage::parse(&plain).map(|x| x.bytes().to_vec()),
            Ok(plain.clone())
        );
        assert_eq!(
            XenImage::parse(&gzip(&plain)).map(|x| x.bytes().to_vec()),
            Ok(plain)
        );
    }

    #[test]
    fn both_multiboot_headers_are_required() {
        assert_eq!(
            XenImage::parse(&fake_xen(false, true)),
            Err(ImageFormatError::XenNotMultiboot { version: 1 })
        );
        assert_eq!(
            XenImage::parse(&fake_xen(true, false)),
            Err(ImageFormatError::XenNotMultiboot { version: 2 })
        );
    }

    #[test]
    fn corrupt_gzip_is_reported() {
        let mut stream = gzip(&fake_xen(true, true));
        let middle = stream.len() / 2;
        stream[middle] ^= 0xff;
        stream.truncate(stream.len() - 4);
        assert!(matches!(
            XenImage::parse(&stream),
            Err(ImageFormatError::BadGzip(_))
        ));
    }
}
