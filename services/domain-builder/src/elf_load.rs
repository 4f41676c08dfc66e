//! Loads a PVH kernel ELF into guest memory *as a stream*: bytes arrive in file order (read
//! from the image, or out of the decompressor) and go straight to their segments'
//! physical addresses, so no copy of the kernel ever lives in dom0's heap.
//!
//! Only the ELF and program headers (in the first [`HEADER_LIMIT`] bytes, where every
//! linker puts them) and the note segments (small) are buffered. The kernel must carry
//! `XEN_ELFNOTE_PHYS32_ENTRY` (note 18 of owner "Xen"): its 32-bit entry point, where a PVH
//! vCPU starts in protected mode with `%ebx` = the start info. ELF64 (Linux) and ELF32
//! (pvgrub) both work; segments load at `p_paddr`, as libxc does for PVH.

use alloc::vec::Vec;
use elf::endian::AnyEndian;
use elf::file::{Class, FileHeader};
use elf::segment::SegmentTable;

use crate::guest_memory::{GuestWrite, MapError};

/// The ELF and program headers must lie in the first 64 KiB.
pub const HEADER_LIMIT: usize = 64 << 10;
/// Note segments are buffered; more than this is not a kernel's notes.
pub const NOTES_LIMIT: usize = 64 << 10;
/// `XEN_ELFNOTE_PHYS32_ENTRY`.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// What is wrong with an ELF image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// No `\x7fELF` magic.
    NotElf,
    /// The headers do not parse (bad class, version, sizes…).
    BadHeader,
    /// Big-endian, or neither x86 nor x86-64, or not an executable.
    WrongKind { machine: u16, kind: u16 },
    /// The program headers are not in the first [`HEADER_LIMIT`] bytes.
    HeadersTooFar,
    /// No loadable segment.
    NoLoadSegment,
    /// A segment whose file size exceeds its memory size, or whose addresses overflow.
    BadSegment { index: usize },
    /// The notes are larger than [`NOTES_LIMIT`].
    NotesTooLarge,
    /// No `XEN_ELFNOTE_PHYS32_ENTRY`: not a PVH kernel.
    NoPvhEntry,
    /// The PVH entry point is not inside a loaded segment.
    EntryOutsideImage { entry: u64 },
    /// The image ended before all its segments' bytes.
    Truncated,
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ElfError::NotElf => write!(f, "not an ELF image"),
            ElfError::BadHeader => write!(f, "corrupt ELF header"),
            ElfError::WrongKind { machine, kind } => write!(
                f,
                "not an x86 executable (machine {machine}, type {kind}, or big-endian)"
            ),
            ElfError::HeadersTooFar => write!(f, "ELF program headers beyond the first 64 KiB"),
            ElfError::NoLoadSegment => write!(f, "ELF has no loadable segment"),
            ElfError::BadSegment { index } => write!(f, "ELF program header {index} is corrupt"),
            ElfError::NotesTooLarge => write!(f, "ELF notes larger than 64 KiB"),
            ElfError::NoPvhEntry => {
                write!(f, "not a PVH kernel (no XEN_ELFNOTE_PHYS32_ENTRY note)")
            }
            ElfError::EntryOutsideImage { entry } => {
                write!(f, "PVH entry point {entry:#x} is outside the loaded image")
            }
            ElfError::Truncated => write!(f, "the image ends before its segments do"),
        }
    }
}

/// Why loading failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    Elf(ElfError),
    /// A segment ends at `end`, beyond `limit`, the end of the room the guest has for it.
    TooBig {
        end: u64,
        limit: u64,
    },
    /// Guest memory could not be reached.
    Map(MapError),
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::Elf(e) => e.fmt(f),
            LoadError::TooBig { end, limit } => write!(
                f,
                "kernel too big: it ends at {end:#x}, the guest has room up to {limit:#x}"
            ),
            LoadError::Map(e) => write!(f, "guest memory: {e}"),
        }
    }
}

impl From<ElfError> for LoadError {
    fn from(e: ElfError) -> Self {
        LoadError::Elf(e)
    }
}

impl From<MapError> for LoadError {
    fn from(e: MapError) -> Self {
        LoadError::Map(e)
    }
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The PVH entry point (guest-physical, 32-bit code).
    pub entry: u64,
    /// Lowest and one past the highest guest-physical byte of the loaded segments.
    pub start: u64,
    pub end: u64,
    /// 64 for ELF64, 32 for ELF32.
    pub bits: u8,
}

#[derive(Debug, Clone, Copy)]
struct Load {
    offset: u64,
    filesz: u64,
    paddr: u64,
    memsz: u64,
}

#[derive(Debug)]
struct NoteSegment {
    offset: u64,
    data: Vec<u8>,
    filled: usize,
}

#[derive(Debug)]
struct Parsed {
    bits: u8,
    loads: Vec<Load>,
    notes: Vec<NoteSegment>,
    /// One past the last file byte any segment uses.
    file_end: u64,
}

/// Receives an ELF image in file order and loads it.
#[derive(Debug)]
pub struct ElfStream {
    prefix: Vec<u8>,
    parsed: Option<Parsed>,
    position: u64,
    limit: u64,
}

impl ElfStream {
    /// Segments must end at or below guest-physical `limit`.
    pub fn new(limit: u64) -> Self {
        ElfStream {
            prefix: Vec::new(),
            parsed: None,
            position: 0,
            limit,
        }
    }

    /// True once every byte the segments need has arrived (the rest can be skipped).
    pub fn complete(&self) -> bool {
        self.parsed
            .as_ref()
            .is_some_and(|p| self.position >= p.file_end)
    }

    /// The next bytes of the image.
    pub fn push(&mut self, bytes: &[u8], out: &mut impl GuestWrite) -> Result<(), LoadError> {
        if self.parsed.is_some() {
            return self.route(bytes, out);
        }
        let room = HEADER_LIMIT - self.prefix.len();
        let (head, rest) = bytes.split_at(bytes.len().min(room));
        self.prefix.extend_from_slice(head);
        match self.parse(self.prefix.len() == HEADER_LIMIT)? {
            None => Ok(()),
            Some(parsed) => {
                self.parsed = Some(parsed);
                let prefix = core::mem::take(&mut self.prefix);
                self.route(&prefix, out)?;
                self.route(rest, out)
            }
        }
    }

    /// Parses the headers once enough of the prefix is there; `None` = need more.
    fn parse(&self, prefix_full: bool) -> Result<Option<Parsed>, ElfError> {
        let p = &self.prefix[..];
        let more = |needed: usize| {
            if prefix_full || needed > HEADER_LIMIT {
                Err(ElfError::HeadersTooFar)
            } else {
                Ok(None)
            }
        };
        if p.len() >= 4 && &p[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        if p.len() < 16 {
            return more(16);
        }
        let ident =
            elf::file::parse_ident::<AnyEndian>(&p[..16]).map_err(|_| ElfError::BadHeader)?;
        if ident.0 != AnyEndian::Little {
            return Err(ElfError::WrongKind {
                machine: 0,
                kind: 0,
            });
        }
        let (bits, ehdr_len) = match ident.1 {
            Class::ELF32 => (32u8, 52usize),
            Class::ELF64 => (64u8, 64usize),
        };
        if p.len() < ehdr_len {
            return more(ehdr_len);
        }
        let ehdr: FileHeader<AnyEndian> =
            FileHeader::parse_tail(ident, &p[16..ehdr_len]).map_err(|_| ElfError::BadHeader)?;
        let machine_ok = matches!((bits, ehdr.e_machine), (64, EM_X86_64) | (32, EM_386));
        if !machine_ok || ehdr.e_type != ET_EXEC {
            return Err(ElfError::WrongKind {
                machine: ehdr.e_machine,
                kind: ehdr.e_type,
            });
        }
        let entsize = if bits == 64 { 56 } else { 32 };
        if ehdr.e_phnum == 0 {
            return Err(ElfError::NoLoadSegment);
        }
        if usize::from(ehdr.e_phentsize) != entsize {
            return Err(ElfError::BadHeader);
        }
        let start = usize::try_from(ehdr.e_phoff).map_err(|_| ElfError::HeadersTooFar)?;
        let end = start
            .checked_add(usize::from(ehdr.e_phnum) * entsize)
            .filter(|&end| end <= HEADER_LIMIT)
            .ok_or(ElfError::HeadersTooFar)?;
        if p.len() < end {
            return more(end);
        }
        let table = SegmentTable::new(ehdr.endianness, ehdr.class, &p[start..end]);
        let mut loads = Vec::new();
        let mut notes = Vec::new();
        let mut notes_total = 0usize;
        let mut file_end = 0u64;
        for (index, ph) in table.iter().enumerate() {
            let bad = ElfError::BadSegment { index };
            let seg_file_end = ph.p_offset.checked_add(ph.p_filesz).ok_or(bad)?;
            match ph.p_type {
                PT_LOAD if ph.p_memsz > 0 => {
                    if ph.p_filesz > ph.p_memsz {
                        return Err(bad);
                    }
                    ph.p_paddr.checked_add(ph.p_memsz).ok_or(bad)?;
                    loads.push(Load {
                        offset: ph.p_offset,
                        filesz: ph.p_filesz,
                        paddr: ph.p_paddr,
                        memsz: ph.p_memsz,
                    });
                }
                PT_NOTE => {
                    let size = usize::try_from(ph.p_filesz).map_err(|_| ElfError::NotesTooLarge)?;
                    notes_total = notes_total.saturating_add(size);
                    if notes_total > NOTES_LIMIT {
                        return Err(ElfError::NotesTooLarge);
                    }
                    notes.push(NoteSegment {
                        offset: ph.p_offset,
                        data: alloc::vec![0; size],
                        filled: 0,
                    });
                }
                _ => continue,
            }
            file_end = file_end.max(seg_file_end);
        }
        if loads.is_empty() {
            return Err(ElfError::NoLoadSegment);
        }
        Ok(Some(Parsed {
            bits,
            loads,
            notes,
            file_end,
        }))
    }

    /// Sends bytes at the current file position to the segments that contain them.
    fn route(&mut self, bytes: &[u8], out: &mut impl GuestWrite) -> Result<(), LoadError> {
        let Some(parsed) = self.parsed.as_mut() else {
            return Ok(());
        };
        let pos = self.position;
        let end = pos + bytes.len() as u64;
        for load in &parsed.loads {
            let s = pos.max(load.offset);
            let e = end.min(load.offset + load.filesz);
            if s < e {
                let dest = load.paddr + (s - load.offset);
                let last = dest + (e - s);
                if last > self.limit {
                    return Err(LoadError::TooBig {
                        end: load.paddr + load.memsz,
                        limit: self.limit,
                    });
                }
                out.write(dest, &bytes[(s - pos) as usize..(e - pos) as usize])?;
            }
        }
        for note in &mut parsed.notes {
            let note_end = note.offset + note.data.len() as u64;
            let s = pos.max(note.offset);
            let e = end.min(note_end);
            if s < e {
                let at = (s - note.offset) as usize;
                let n = (e - s) as usize;
                note.data[at..at + n]
                    .copy_from_slice(&bytes[(s - pos) as usize..(e - pos) as usize]);
                note.filled += n;
            }
        }
        self.position = end;
        Ok(())
    }

    /// The image has ended: zero the segments' BSS, find the entry point.
    pub fn finish(self, out: &mut impl GuestWrite) -> Result<LoadedKernel, LoadError> {
        let parsed = match self.parsed {
            Some(p) => p,
            None if self.prefix.len() >= 4 && &self.prefix[..4] != b"\x7fELF" => {
                return Err(ElfError::NotElf.into())
            }
            None => return Err(ElfError::Truncated.into()),
        };
        if self.position < parsed.file_end {
            return Err(ElfError::Truncated.into());
        }
        let start = parsed.loads.iter().map(|l| l.paddr).min().unwrap_or(0);
        let end = parsed
            .loads
            .iter()
            .map(|l| l.paddr + l.memsz)
            .max()
            .unwrap_or(0);
        if end > self.limit {
            return Err(LoadError::TooBig {
                end,
                limit: self.limit,
            });
        }
        let entry = parsed
            .notes
            .iter()
            .find_map(|n| phys32_entry(&n.data))
            .ok_or(ElfError::NoPvhEntry)?;
        let inside = parsed
            .loads
            .iter()
            .any(|l| entry >= l.paddr && entry < l.paddr + l.memsz);
        if !inside {
            return Err(ElfError::EntryOutsideImage { entry }.into());
        }
        for l in &parsed.loads {
            if l.memsz > l.filesz {
                out.zero(l.paddr + l.filesz, l.memsz - l.filesz)?;
            }
        }
        Ok(LoadedKernel {
            entry,
            start,
            end,
            bits: parsed.bits,
        })
    }
}

/// `XEN_ELFNOTE_PHYS32_ENTRY` in a note segment (4-byte note header words, as both ELF32 and
/// Linux's ELF64 use; a 4- or 8-byte value).
fn phys32_entry(notes: &[u8]) -> Option<u64> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(notes.get(at..at + 4)?.try_into().ok()?))
    };
    let pad4 = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let namesz = word(at)? as usize;
        let descsz = word(at + 4)? as usize;
        let kind = word(at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(pad4(namesz))?;
        let next = desc_at.checked_add(pad4(descsz))?;
        let name = notes.get(name_at..name_at + namesz)?;
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            return match descsz {
                4 => Some(u64::from(u32::from_le_bytes(desc.try_into().ok()?))),
                8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
                _ => None,
            };
        }
        at = next;
    }
    None
}

/// Test images: a minimal PVH kernel ELF, built by hand.
#[cfg(any(test, feature = "fake"))]
pub mod testimage {
    use alloc::vec::Vec;

    /// One loadable segment of `code` at `paddr` (plus `bss` zero bytes), a note segment
    /// with `XEN_ELFNOTE_PHYS32_ENTRY` = `entry` (when `Some`), and a section-header-less
    /// ELF64 around them. Segment data starts at file offset 0x1000.
    pub fn pvh_elf64(paddr: u64, code: &[u8], bss: u64, entry: Option<u32>) -> Vec<u8> {
        let mut note = Vec::new();
        if let Some(entry) = entry {
            // An unrelated note first, as Linux has several.
            for (name, kind, desc) in [
                (&b"Xen\0"[..], 6u32, &b"linux\0\0\0"[..]),
                (&b"Xen\0"[..], 18u32, &entry.to_le_bytes()[..]),
            ] {
                note.extend_from_slice(&(name.len() as u32).to_le_bytes());
                note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
                note.extend_from_slice(&kind.to_le_bytes());
                note.extend_from_slice(name);
                note.extend_from_slice(desc);
            }
        }
        let code_off = 0x1000u64;
        let note_off = code_off + code.len() as u64;
        let mut f = alloc::vec![0u8; note_off as usize + note.len()];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little-endian
        f[6] = 1; // EV_CURRENT
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes()); // e_entry (virtual)
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        let ph = |f: &mut Vec<u8>,
                  i: usize,
                  kind: u32,
                  off: u64,
                  paddr: u64,
                  filesz: u64,
                  memsz: u64| {
            let at = 64 + i * 56;
            f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            f[at + 4..at + 8].copy_from_slice(&7u32.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            f[at + 16..at + 24].copy_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes());
            f[at + 24..at + 32].copy_from_slice(&paddr.to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
            f[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
            f[at + 48..at + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        };
        let len = code.len() as u64;
        ph(&mut f, 0, 1, code_off, paddr, len, len + bss);
        ph(
            &mut f,
            1,
            4,
            note_off,
            0,
            note.len() as u64,
            note.len() as u64,
        );
        f[code_off as usize..note_off as usize].copy_from_slice(code);
        f[note_off as usize..].copy_from_slice(&note);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::testimage::pvh_elf64;
    use super::*;
    use alloc::collections::BTreeMap;

    /// Guest memory as a map of written bytes.
    #[derive(Default)]
    struct Mem(BTreeMap<u64, u8>);

    impl GuestWrite for Mem {
        fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MapError> {
            for (i, b) in data.iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
            Ok(())
        }
        fn zero(&mut self, addr: u64, len: u64) -> Result<(), MapError> {
            for a in addr..addr + len {
                self.0.insert(a, 0);
            }
            Ok(())
        }
    }

    fn load(image: &[u8], chunk: usize, limit: u64) -> (Result<LoadedKernel, LoadError>, Mem) {
        let mut mem = Mem::default();
        let mut s = ElfStream::new(limit);
        for c in image.chunks(chunk) {
            if let Err(e) = s.push(c, &mut mem) {
                return (Err(e), mem);
            }
        }
        (s.finish(&mut mem), mem)
    }

    #[test]
    fn loads_segments_at_paddr_in_any_chunking() {
        let code: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let image = pvh_elf64(0x100_0000, &code, 100, Some(0x100_0010));
        for chunk in [1, 7, 64, 4096, 100_000] {
            let (k, mem) = load(&image, chunk, 0x800_0000);
            let k = k.unwrap();
            assert_eq!(k.entry, 0x100_0010);
            assert_eq!((k.start, k.end), (0x100_0000, 0x100_0000 + 5100));
            assert_eq!(k.bits, 64);
            assert_eq!(mem.0.get(&0x100_0000), Some(&0));
            assert_eq!(mem.0.get(&(0x100_0000 + 4999)), Some(&(4999u32 as u8)));
            assert_eq!(mem.0.get(&(0x100_0000 + 5099)), Some(&0));
            assert_eq!(mem.0.len(), 5100);
        }
    }

    #[test]
    fn a_kernel_without_the_pvh_note_is_refused() {
        let image = pvh_elf64(0x100_0000, &[0x90; 16], 0, None);
        assert_eq!(
            load(&image, 4096, 0x800_0000).0,
            Err(LoadError::Elf(ElfError::NoPvhEntry))
        );
    }

    #[test]
    fn an_entry_outside_the_image_is_refused() {
        let image = pvh_elf64(0x100_0000, &[0x90; 16], 0, Some(0x200_0000));
        assert_eq!(
            load(&image, 4096, 0x800_0000).0,
            Err(LoadError::Elf(ElfError::EntryOutsideImage {
                entry: 0x200_0000
            }))
        );
    }

    #[test]
    fn too_big_for_the_guest() {
        let image = pvh_elf64(0x100_0000, &[0x90; 16], 0x10_0000, Some(0x100_0000));
        let (r, _) = load(&image, 4096, 0x100_8000);
        assert_eq!(
            r,
            Err(LoadError::TooBig {
                end: 0x110_0010,
                limit: 0x100_8000
            })
        );
        // Even the file bytes go past the limit: refused before any write out of bounds.
        let (r, mem) = load(&image, 4096, 0x100_0008);
        assert!(matches!(r, Err(LoadError::TooBig { .. })));
        assert!(mem.0.keys().all(|&a| a < 0x100_0008));
    }

    #[test]
    fn not_a_kernel_is_refused_cleanly() {
        let text = b"#!/bin/sh\necho this is not a kernel\n";
        assert_eq!(
            load(text, 5, 1 << 30).0,
            Err(LoadError::Elf(ElfError::NotElf))
        );
        assert_eq!(
            load(&[], 5, 1 << 30).0,
            Err(LoadError::Elf(ElfError::Truncated))
        );
        let mut image = pvh_elf64(0x100_0000, &[0x90; 16], 0, Some(0x100_0000));
        // A shared object, not an executable.
        image[16] = 3;
        assert_eq!(
            load(&image, 4096, 1 << 30).0,
            Err(LoadError::Elf(ElfError::WrongKind {
                machine: 62,
                kind: 3
            }))
        );
    }

    #[test]
    fn corrupt_headers_are_typed_errors() {
        let good = pvh_elf64(0x100_0000, &[0x90; 16], 0, Some(0x100_0000));
        // Truncated in the middle of the segment.
        assert_eq!(
            load(&good[..0x1008], 4096, 1 << 30).0,
            Err(LoadError::Elf(ElfError::Truncated))
        );
        // filesz > memsz.
        let mut bad = good.clone();
        bad[64 + 40..64 + 48].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(
            load(&bad, 4096, 1 << 30).0,
            Err(LoadError::Elf(ElfError::BadSegment { index: 0 }))
        );
        // Program headers far away.
        let mut far = good.clone();
        far[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert_eq!(
            load(&far, 4096, 1 << 30).0,
            Err(LoadError::Elf(ElfError::HeadersTooFar))
        );
        // A wrong program header entry size.
        let mut entsize = good.clone();
        entsize[54] = 55;
        assert_eq!(
            load(&entsize, 4096, 1 << 30).0,
            Err(LoadError::Elf(ElfError::BadHeader))
        );
        // Random bytes after the magic.
        let mut noise = b"\x7fELF".to_vec();
        noise.extend((0..200u32).map(|i| (i * 97 + 13) as u8));
        assert!(load(&noise, 4096, 1 << 30).0.is_err());
    }

    #[test]
    fn eight_byte_entry_notes_are_read() {
        let mut n = Vec::new();
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&8u32.to_le_bytes());
        n.extend_from_slice(&18u32.to_le_bytes());
        n.extend_from_slice(b"Xen\0");
        n.extend_from_slice(&0x1234u64.to_le_bytes());
        assert_eq!(phys32_entry(&n), Some(0x1234));
        assert_eq!(phys32_entry(&n[..n.len() - 1]), None);
    }
}
