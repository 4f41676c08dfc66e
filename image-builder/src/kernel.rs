//! The Keel image as boot media carry it: checked for both boot protocols and stripped.
//!
//! Multiboot loaders (GRUB, iPXE, QEMU) load the image flat by the addresses in its multiboot
//! header (the "a.out kludge"); Xen and QEMU's PVH path load it by its ELF program headers.
//! Both must describe the same bytes at the same addresses, so [`KernelImage::parse`] checks
//! that every load segment sits in the file exactly where the multiboot header says, and that
//! the PVH entry note is present. An image that fails would boot under one loader and crash
//! under another, so it never reaches the media.
//!
//! The media carry the image without its debug information and section headers (only the ELF
//! header, program headers and loaded bytes stay): a fraction of the size to send over TFTP.
//! The unstripped image stays in `target/keel/` for debugging.

use std::path::Path;

use crate::error::{ImageError, ImageFormatError};

/// The multiboot 1 header magic.
pub const MULTIBOOT1_MAGIC: u32 = 0x1BAD_B002;
/// Multiboot 1 headers are searched in the file's first 8 KiB, 4-byte aligned.
pub const MULTIBOOT1_SEARCH: usize = 8192;
/// Header flag: the header carries load addresses.
pub const MULTIBOOT1_FLAG_ADDRESSES: u32 = 1 << 16;
/// The multiboot 2 header magic.
pub const MULTIBOOT2_MAGIC: u32 = 0xE852_50D6;
/// Multiboot 2 headers are searched in the file's first 32 KiB, 8-byte aligned.
pub const MULTIBOOT2_SEARCH: usize = 32768;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A multiboot 1 header with load addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multiboot1Header {
    /// Where the header is in the file.
    pub offset: usize,
    pub flags: u32,
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let raw = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes(raw.try_into().ok()?))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let raw = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let raw = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

/// The first valid multiboot 1 header (magic, flags, checksum summing to zero) in the first
/// 8 KiB. The address fields are read only when flag bit 16 says they are there.
pub fn find_multiboot1_header(bytes: &[u8]) -> Option<Multiboot1Header> {
    let limit = bytes.len().min(MULTIBOOT1_SEARCH);
    (0..limit).step_by(4).find_map(|offset| {
        if u32_at(bytes, offset)? != MULTIBOOT1_MAGIC {
            return None;
        }
        let flags = u32_at(bytes, offset + 4)?;
        let checksum = u32_at(bytes, offset + 8)?;
        if MULTIBOOT1_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
            return None;
        }
        let field = |n: usize| {
            if flags & MULTIBOOT1_FLAG_ADDRESSES != 0 {
                u32_at(bytes, offset + 12 + 4 * n)
            } else {
                Some(0)
            }
        };
        Some(Multiboot1Header {
            offset,
            flags,
            header_addr: field(0)?,
            load_addr: field(1)?,
            load_end_addr: field(2)?,
            bss_end_addr: field(3)?,
            entry_addr: field(4)?,
        })
    })
}

/// Whether a valid multiboot 2 header (magic, architecture 0, length, checksum) is in the
/// first 32 KiB.
pub fn has_multiboot2_header(bytes: &[u8]) -> bool {
    let limit = bytes.len().min(MULTIBOOT2_SEARCH);
    (0..limit).step_by(8).any(|offset| {
        let fields = (
            u32_at(bytes, offset),
            u32_at(bytes, offset + 4),
            u32_at(bytes, offset + 8),
            u32_at(bytes, offset + 12),
        );
        let (Some(magic), Some(arch), Some(length), Some(checksum)) = fields else {
            return false;
        };
        magic == MULTIBOOT2_MAGIC
            && arch == 0
            && length >= 16
            && magic
                .wrapping_add(arch)
                .wrapping_add(length)
                .wrapping_add(checksum)
                == 0
    })
}

/// One ELF64 program header (the fields the checks need).
#[derive(Debug, Clone, Copy)]
struct Segment {
    kind: u32,
    offset: u64,
    paddr: u64,
    file_size: u64,
    mem_size: u64,
}

fn program_headers(bytes: &[u8]) -> Result<Vec<Segment>, ImageFormatError> {
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) || bytes.get(4..6) != Some(&[2, 1]) {
        return Err(ImageFormatError::NotElf64);
    }
    if u16_at(bytes, 18) != Some(0x3e) {
        return Err(ImageFormatError::NotX86_64);
    }
    if u16_at(bytes, 16) != Some(2) {
        return Err(ImageFormatError::NotExecutable);
    }
    let bad = ImageFormatError::BadProgramHeaders;
    let table = u64_at(bytes, 32).ok_or(bad.clone())?;
    let entry_size = u16_at(bytes, 54).ok_or(bad.clone())?;
    let count = u16_at(bytes, 56).ok_or(bad.clone())?;
    if entry_size < 56 {
        return Err(bad);
    }
    (0..u64::from(count))
        .map(|i| {
            let at = usize::try_from(table + i * u64::from(entry_size)).map_err(|_| bad.clone())?;
            let field = |o: usize| u64_at(bytes, at + o).ok_or(bad.clone());
            let segment = Segment {
                kind: u32_at(bytes, at).ok_or(bad.clone())?,
                offset: field(8)?,
                paddr: field(24)?,
                file_size: field(32)?,
                mem_size: field(40)?,
            };
            let end = segment.offset.checked_add(segment.file_size);
            if end.is_none_or(|end| end > bytes.len() as u64) {
                return Err(bad.clone());
            }
            Ok(segment)
        })
        .collect()
}

/// Whether the notes in `notes` include Xen's PVH entry note.
fn has_pvh_note(mut notes: &[u8]) -> bool {
    let align4 = |n: u32| (u64::from(n) + 3) & !3;
    while let (Some(name_size), Some(desc_size), Some(kind)) =
        (u32_at(notes, 0), u32_at(notes, 4), u32_at(notes, 8))
    {
        let name = notes.get(12..12 + name_size as usize);
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == Some(b"Xen\0".as_slice()) {
            return true;
        }
        let next = 12 + align4(name_size) + align4(desc_size);
        match usize::try_from(next).ok().and_then(|n| notes.get(n..)) {
            Some(rest) if !rest.is_empty() => notes = rest,
            _ => return false,
        }
    }
    false
}

/// Checks that the multiboot header's flat view and the ELF program headers agree.
fn check_layout(
    header: &Multiboot1Header,
    segments: &[Segment],
    file_len: usize,
) -> Result<(), ImageFormatError> {
    use ImageFormatError::MultibootLayoutMismatch as Mismatch;
    if header.flags & MULTIBOOT1_FLAG_ADDRESSES == 0 {
        return Err(ImageFormatError::MultibootWithoutAddresses);
    }
    let before_header = header
        .header_addr
        .checked_sub(header.load_addr)
        .ok_or(Mismatch("header_addr is below load_addr"))?;
    // Where load_addr is in the file.
    let load_offset = (header.offset as u64)
        .checked_sub(u64::from(before_header))
        .ok_or(Mismatch(
            "header_addr - load_addr exceeds the header's file offset",
        ))?;
    if header.load_end_addr < header.load_addr {
        return Err(Mismatch("load_end_addr is below load_addr"));
    }
    let load_len = u64::from(header.load_end_addr - header.load_addr);
    if load_offset + load_len > file_len as u64 {
        return Err(Mismatch("the load range runs past the end of the file"));
    }
    let bss_end = if header.bss_end_addr == 0 {
        header.load_end_addr
    } else if header.bss_end_addr < header.load_end_addr {
        return Err(Mismatch("bss_end_addr is below load_end_addr"));
    } else {
        header.bss_end_addr
    };
    if !(header.load_addr..header.load_end_addr).contains(&header.entry_addr) {
        return Err(Mismatch("entry_addr is outside the loaded bytes"));
    }
    let loads: Vec<&Segment> = segments.iter().filter(|s| s.kind == PT_LOAD).collect();
    if loads.is_empty() {
        return Err(Mismatch("the image has no load segment"));
    }
    for segment in loads {
        let (load_addr, load_end, bss_end) = (
            u64::from(header.load_addr),
            u64::from(header.load_end_addr),
            u64::from(bss_end),
        );
        if segment.paddr < load_addr || segment.paddr.saturating_add(segment.mem_size) > bss_end {
            return Err(Mismatch(
                "a load segment lies outside load_addr..bss_end_addr",
            ));
        }
        if segment.file_size == 0 {
            continue;
        }
        if segment.paddr.saturating_add(segment.file_size) > load_end {
            return Err(Mismatch(
                "a load segment's file bytes extend past load_end_addr",
            ));
        }
        // The flat copy puts file offset `load_offset + x` at `load_addr + x`.
        if segment.offset.checked_sub(load_offset) != Some(segment.paddr - load_addr) {
            return Err(Mismatch(
                "a load segment's file offset differs from its address (the file is not a \
                 flat image of memory)",
            ));
        }
    }
    Ok(())
}

/// A checked Keel image, stripped for the media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    boot_bytes: Vec<u8>,
    multiboot: Multiboot1Header,
    original_len: usize,
}

impl KernelImage {
    /// Reads and checks the image at `path`.
    pub fn load(path: &Path) -> Result<KernelImage, ImageError> {
        let bytes = std::fs::read(path).map_err(|error| ImageError::ReadKernel {
            path: path.to_path_buf(),
            error,
        })?;
        KernelImage::parse(&bytes).map_err(|error| ImageError::BadKernel {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Checks an image: ELF64 x86-64 executable, PVH note, multiboot header whose flat view
    /// matches the program headers. Returns it stripped to the loaded bytes.
    pub fn parse(bytes: &[u8]) -> Result<KernelImage, ImageFormatError> {
        let segments = program_headers(bytes)?;
        let pvh = segments.iter().filter(|s| s.kind == PT_NOTE).any(|s| {
            let range = usize::try_from(s.offset)
                .ok()
                .zip(usize::try_from(s.offset + s.file_size).ok());
            range
                .and_then(|(start, end)| bytes.get(start..end))
                .is_some_and(has_pvh_note)
        });
        if !pvh {
            return Err(ImageFormatError::NoPvhNote);
        }
        let multiboot = find_multiboot1_header(bytes).ok_or(ImageFormatError::NoMultibootHeader)?;
        check_layout(&multiboot, &segments, bytes.len())?;

        // Keep the ELF and program headers and every segment's bytes; drop what follows
        // (debug sections, symbols, section headers).
        let table_end = u64_at(bytes, 32).unwrap_or(0)
            + u64::from(u16_at(bytes, 54).unwrap_or(0)) * u64::from(u16_at(bytes, 56).unwrap_or(0));
        let keep = segments
            .iter()
            .map(|s| s.offset + s.file_size)
            .chain([table_end, 64])
            .max()
            .unwrap_or(64);
        let keep = usize::try_from(keep)
            .ok()
            .filter(|&k| k <= bytes.len())
            .ok_or(ImageFormatError::BadProgramHeaders)?;
        let mut boot_bytes = bytes.get(..keep).unwrap_or_default().to_vec();
        // No section headers any more: e_shoff, e_shnum, e_shstrndx = 0.
        for (offset, len) in [(40, 8), (60, 2), (62, 2)] {
            if let Some(field) = boot_bytes.get_mut(offset..offset + len) {
                field.fill(0);
            }
        }
        Ok(KernelImage {
            boot_bytes,
            multiboot,
            original_len: bytes.len(),
        })
    }

    /// The bytes the media carry.
    pub fn boot_bytes(&self) -> &[u8] {
        &self.boot_bytes
    }

    /// The multiboot header the loaders will use.
    pub fn multiboot_header(&self) -> &Multiboot1Header {
        &self.multiboot
    }

    /// Size of the image before stripping.
    pub fn original_len(&self) -> usize {
        self.original_len
    }

    /// The media bytes with the multiboot magic cleared: what a loader that only speaks PVH
    /// sees. QEMU's `-kernel` then takes the PVH path; the tests use this to keep the PVH
    /// entry covered without Xen.
    pub fn pvh_only_bytes(&self) -> Vec<u8> {
        let mut bytes = self.boot_bytes.clone();
        let at = self.multiboot.offset;
        if let Some(magic) = bytes.get_mut(at..at + 4) {
            magic.fill(0);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal image laid out like Keel's: ELF header, two program headers (LOAD, NOTE),
    /// padding to 0x1000, then the load image at 0x100000 starting with the multiboot
    /// header, the PVH note, code, and a debug trailer.
    struct Builder {
        load_offset: u64,
        header_flags: u32,
        load_end: u32,
        bss_end: u32,
        entry: u32,
        with_note: bool,
        segment_offset: u64,
    }

    impl Default for Builder {
        fn default() -> Self {
            Builder {
                load_offset: 0x1000,
                header_flags: (1 << 16) | 3,
                load_end: 0x10_0100,
                bss_end: 0x10_2000,
                entry: 0x10_0040,
                with_note: true,
                segment_offset: 0x1000,
            }
        }
    }

    fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
        bytes[at..at + value.len()].copy_from_slice(value);
    }

    impl Builder {
        fn build(&self) -> Vec<u8> {
            let mut b = vec![0u8; 0x1000 + 0x100 + 0x400];
            put(&mut b, 0, b"\x7fELF\x02\x01\x01");
            put(&mut b, 16, &2u16.to_le_bytes());
            put(&mut b, 18, &0x3eu16.to_le_bytes());
            put(&mut b, 24, &0x10_0040u64.to_le_bytes());
            put(&mut b, 32, &64u64.to_le_bytes());
            put(&mut b, 40, &0x1500u64.to_le_bytes()); // section headers (in the trailer)
            put(&mut b, 54, &56u16.to_le_bytes());
            put(&mut b, 56, &2u16.to_le_bytes());
            put(&mut b, 60, &3u16.to_le_bytes());
            // PT_LOAD
            let ph = 64;
            put(&mut b, ph, &PT_LOAD.to_le_bytes());
            put(&mut b, ph + 8, &self.segment_offset.to_le_bytes());
            put(&mut b, ph + 16, &0x10_0000u64.to_le_bytes());
            put(&mut b, ph + 24, &0x10_0000u64.to_le_bytes());
            put(&mut b, ph + 32, &0x100u64.to_le_bytes());
            put(&mut b, ph + 40, &0x2000u64.to_le_bytes());
            // PT_NOTE
            let ph = 64 + 56;
            let kind: u32 = if self.with_note { PT_NOTE } else { 0 };
            put(&mut b, ph, &kind.to_le_bytes());
            put(&mut b, ph + 8, &0x1020u64.to_le_bytes());
            put(&mut b, ph + 24, &0x10_0020u64.to_le_bytes());
            put(&mut b, ph + 32, &0x18u64.to_le_bytes());
            // Multiboot header at the load image's start.
            let h = self.load_offset as usize;
            let magic = MULTIBOOT1_MAGIC;
            put(&mut b, h, &magic.to_le_bytes());
            put(&mut b, h + 4, &self.header_flags.to_le_bytes());
            let checksum = 0u32.wrapping_sub(magic.wrapping_add(self.header_flags));
            put(&mut b, h + 8, &checksum.to_le_bytes());
            for (i, v) in [
                0x10_0000u32,
                0x10_0000,
                self.load_end,
                self.bss_end,
                self.entry,
            ]
            .iter()
            .enumerate()
            {
                put(&mut b, h + 12 + 4 * i, &v.to_le_bytes());
            }
            // Xen note: namesz 4, descsz 4, type 18, "Xen\0", entry.
            put(&mut b, 0x1020, &4u32.to_le_bytes());
            put(&mut b, 0x1024, &4u32.to_le_bytes());
            put(&mut b, 0x1028, &18u32.to_le_bytes());
            put(&mut b, 0x102c, b"Xen\0");
            put(&mut b, 0x1030, &0x10_0040u32.to_le_bytes());
            put(&mut b, 0x1100, b"debug info that the media do not need");
            b
        }
    }

    #[test]
    fn a_consistent_image_is_accepted_and_stripped() {
        let bytes = Builder::default().build();
        let image = KernelImage::parse(&bytes);
        let Ok(image) = image else {
            panic!("{image:?}");
        };
        let stripped = image.boot_bytes();
        assert_eq!(stripped.len(), 0x1100);
        assert_eq!(stripped[..40], bytes[..40]);
        assert_eq!(stripped[40..48], [0; 8]);
        assert_eq!(stripped[48..60], bytes[48..60]);
        assert_eq!(stripped[60..64], [0; 4]);
        assert_eq!(stripped[64..], bytes[64..0x1100]);
        assert_eq!(image.original_len(), bytes.len());
        assert_eq!(image.multiboot_header().offset, 0x1000);
        // The stripped image is itself a valid image.
        assert!(KernelImage::parse(image.boot_bytes()).is_ok());
    }

    #[test]
    fn pvh_only_bytes_has_no_multiboot_header_but_everything_else() {
        let image = KernelImage::parse(&Builder::default().build());
        let Ok(image) = image else {
            panic!("{image:?}");
        };
        let pvh = image.pvh_only_bytes();
        assert_eq!(find_multiboot1_header(&pvh), None);
        assert_eq!(pvh.len(), image.boot_bytes().len());
        assert_eq!(
            KernelImage::parse(&pvh),
            Err(ImageFormatError::NoMultibootHeader)
        );
    }

    #[test]
    fn layout_mismatches_are_refused() {
        let cases = [
            (
                Builder {
                    segment_offset: 0x1004,
                    ..Builder::default()
                },
                "file offset differs",
            ),
            (
                Builder {
                    load_end: 0x10_0080,
                    ..Builder::default()
                },
                "extend past load_end_addr",
            ),
            (
                Builder {
                    bss_end: 0x10_1000,
                    ..Builder::default()
                },
                "outside load_addr..bss_end_addr",
            ),
            (
                Builder {
                    entry: 0x20_0000,
                    ..Builder::default()
                },
                "entry_addr",
            ),
            (
                Builder {
                    load_end: 0x20_0000,
                    bss_end: 0x20_0000,
                    ..Builder::default()
                },
                "past the end of the file",
            ),
        ];
        for (builder, expected) in cases {
            match KernelImage::parse(&builder.build()) {
                Err(ImageFormatError::MultibootLayoutMismatch(why)) => {
                    assert!(why.contains(expected), "{why} / {expected}")
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_pieces_are_named() {
        let no_note = Builder {
            with_note: false,
            ..Builder::default()
        };
        assert_eq!(
            KernelImage::parse(&no_note.build()),
            Err(ImageFormatError::NoPvhNote)
        );
        let no_addresses = Builder {
            header_flags: 3,
            ..Builder::default()
        };
        assert_eq!(
            KernelImage::parse(&no_addresses.build()),
            Err(ImageFormatError::MultibootWithoutAddresses)
        );
        let mut bad_checksum = Builder::default().build();
        bad_checksum[0x1008] ^= 1;
        assert_eq!(
            KernelImage::parse(&bad_checksum),
            Err(ImageFormatError::NoMultibootHeader)
        );
        let mut not_x86 = Builder::default().build();
        not_x86[18] = 0xb7;
        assert_eq!(
            KernelImage::parse(&not_x86),
            Err(ImageFormatError::NotX86_64)
        );
        assert_eq!(
            KernelImage::parse(b"#!/bin/sh\n"),
            Err(ImageFormatError::NotElf64)
        );
        let mut truncated = Builder::default().build();
        truncated.truncate(0x1050);
        assert!(KernelImage::parse(&truncated).is_err());
    }

    #[test]
    fn multiboot2_header_needs_its_checksum() {
        let mut bytes = vec![0u8; 64];
        let length = 24u32;
        let checksum = 0u32.wrapping_sub(MULTIBOOT2_MAGIC.wrapping_add(length));
        bytes[16..20].copy_from_slice(&MULTIBOOT2_MAGIC.to_le_bytes());
        bytes[24..28].copy_from_slice(&length.to_le_bytes());
        bytes[28..32].copy_from_slice(&checksum.to_le_bytes());
        assert!(has_multiboot2_header(&bytes));
        bytes[28] ^= 1;
        assert!(!has_multiboot2_header(&bytes));
    }
}
