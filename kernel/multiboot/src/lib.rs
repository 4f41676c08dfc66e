//! The multiboot (version 1) information structure, read defensively.
//!
//! A multiboot loader (GRUB, iPXE, QEMU's `-kernel`) enters the image with `ebx` holding the
//! physical address of this structure. Everything in it is a loader's claim: every address
//! and length is checked against what [`PhysMemory`] can reach, every walk is bounded, and a
//! field is only read when its flag bit says it is valid. The result is a validated view
//! whose iterators cannot fail any more.
//!
//! The crate reads memory only through [`PhysMemory`], so it needs no `unsafe` and is tested
//! on the host (`tests/info.rs`); the kernel's `boot/multiboot.rs` implements the trait over
//! the identity-mapped low 4 GiB and turns the result into its `BootInfo`.

#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

/// The value a multiboot loader leaves in `eax`.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// `flags` bits of the information structure.
pub mod flags {
    /// `mem_lower` and `mem_upper` are valid.
    pub const MEMORY: u32 = 1 << 0;
    /// `cmdline` is valid.
    pub const CMDLINE: u32 = 1 << 2;
    /// `mods_count` and `mods_addr` are valid.
    pub const MODULES: u32 = 1 << 3;
    /// `mmap_length` and `mmap_addr` are valid.
    pub const MEMORY_MAP: u32 = 1 << 6;
    /// `boot_loader_name` is valid.
    pub const LOADER_NAME: u32 = 1 << 9;
}

/// Bytes of the information structure read: up to and including `boot_loader_name`.
pub const INFO_LEN: usize = 72;
/// Longest command line or module string accepted, without its NUL.
pub const MAX_STRING: usize = 4096;
/// Most memory map entries accepted.
pub const MAX_MEMORY_MAP_ENTRIES: usize = 256;
/// Most modules accepted.
pub const MAX_MODULES: usize = 32;
/// Size of one module table entry: start, end, string, reserved.
pub const MODULE_ENTRY_LEN: usize = 16;
/// The smallest memory map entry body: base (8), length (8), type (4).
const MEMORY_MAP_ENTRY_MIN: u32 = 20;

/// Memory map type of usable RAM.
pub const MEMORY_AVAILABLE: u32 = 1;

/// Reads physical memory for the parser. The kernel's implementation reads the
/// identity-mapped low 4 GiB; tests read a byte array.
pub trait PhysMemory<'m> {
    /// The `len` bytes at `paddr`, or `None` when any of them is out of reach.
    fn bytes(&self, paddr: u64, len: usize) -> Option<&'m [u8]>;
}

/// Which part of the information could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoError {
    /// The structure itself is not readable at this address.
    Unreadable { paddr: u32 },
    /// The command line is not readable or has no NUL within [`MAX_STRING`] bytes.
    BadCmdline { paddr: u32 },
    /// The loader name is not readable or has no NUL within [`MAX_STRING`] bytes.
    BadLoaderName { paddr: u32 },
    /// The memory map is not readable, or an entry is too short or runs past its end.
    BadMemoryMap { paddr: u32, len: u32 },
    /// More memory map entries than [`MAX_MEMORY_MAP_ENTRIES`].
    TooManyMemoryMapEntries,
    /// Neither a memory map nor the basic memory fields.
    NoMemoryInformation,
    /// More modules than [`MAX_MODULES`].
    TooManyModules { count: u32 },
    /// The module table is not readable.
    BadModuleTable { paddr: u32, count: u32 },
    /// A module ends before it starts, or its string is unreadable or unterminated.
    BadModule { index: usize },
}

impl fmt::Display for InfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InfoError::Unreadable { paddr } => {
                write!(f, "no readable multiboot information at {paddr:#x}")
            }
            InfoError::BadCmdline { paddr } => write!(
                f,
                "the command line at {paddr:#x} is unreadable or longer than {MAX_STRING} bytes"
            ),
            InfoError::BadLoaderName { paddr } => write!(
                f,
                "the loader name at {paddr:#x} is unreadable or longer than {MAX_STRING} bytes"
            ),
            InfoError::BadMemoryMap { paddr, len } => {
                write!(f, "the memory map at {paddr:#x} ({len} bytes) is malformed")
            }
            InfoError::TooManyMemoryMapEntries => write!(
                f,
                "the memory map has more than {MAX_MEMORY_MAP_ENTRIES} entries"
            ),
            InfoError::NoMemoryInformation => {
                write!(f, "the loader passed neither a memory map nor memory sizes")
            }
            InfoError::TooManyModules { count } => {
                write!(f, "{count} modules; at most {MAX_MODULES} are supported")
            }
            InfoError::BadModuleTable { paddr, count } => {
                write!(
                    f,
                    "the table of {count} modules at {paddr:#x} is unreadable"
                )
            }
            InfoError::BadModule { index } => write!(
                f,
                "module {index} ends before it starts or has an unreadable string"
            ),
        }
    }
}

/// A NUL-terminated string from the loader: its bytes (without the NUL) and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderString<'m> {
    pub paddr: u32,
    pub bytes: &'m [u8],
}

impl LoaderString<'_> {
    /// The physical range it occupies, NUL included.
    pub fn range(&self) -> (u64, u64) {
        let start = u64::from(self.paddr);
        (start, start + self.bytes.len() as u64 + 1)
    }
}

/// One memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    pub base: u64,
    pub len: u64,
    /// 1 is available RAM; everything else is not to be touched.
    pub kind: u32,
}

impl MemoryRegion {
    /// `[base, base + len)`, saturating at the top of the address space.
    pub fn range(&self) -> (u64, u64) {
        (self.base, self.base.saturating_add(self.len))
    }
}

/// One module: the loaded bytes' physical range and its string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module<'m> {
    pub start: u32,
    pub end: u32,
    pub string: Option<LoaderString<'m>>,
}

/// Where the RAM description comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemorySource<'m> {
    /// The full memory map (already checked entry by entry).
    Map { paddr: u32, bytes: &'m [u8] },
    /// Only the basic fields: KiB below 1 MiB and KiB above 1 MiB.
    Basic { lower_kib: u32, upper_kib: u32 },
}

/// The validated information structure.
#[derive(Debug, Clone, Copy)]
pub struct MultibootInfo<'m> {
    paddr: u32,
    cmdline: Option<LoaderString<'m>>,
    loader_name: Option<LoaderString<'m>>,
    memory: MemorySource<'m>,
    modules_paddr: u32,
    modules: &'m [u8],
    module_strings: [Option<LoaderString<'m>>; MAX_MODULES],
}

/// A little-endian `u32` at `offset`, or `None` past the end.
fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let raw: [u8; 4] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

/// A little-endian `u64` at `offset`, or `None` past the end.
fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let end = offset.checked_add(8)?;
    let raw: [u8; 8] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

/// The NUL-terminated string at `paddr`, at most [`MAX_STRING`] bytes before the NUL.
fn read_string<'m>(mem: &impl PhysMemory<'m>, paddr: u32) -> Option<LoaderString<'m>> {
    if paddr == 0 {
        return None;
    }
    let start = u64::from(paddr);
    let len = (0..=MAX_STRING as u64).find(|&i| {
        mem.bytes(start + i, 1)
            .and_then(|b| b.first().copied())
            .is_none_or(|b| b == 0)
    })?;
    // The loop stops at the NUL or at the first unreadable byte: only a NUL is a string end.
    let terminator = mem.bytes(start + len, 1)?;
    if terminator != [0] {
        return None;
    }
    let bytes = mem.bytes(start, usize::try_from(len).ok()?)?;
    Some(LoaderString { paddr, bytes })
}

/// Checks every entry of a memory map: each one at least [`MEMORY_MAP_ENTRY_MIN`] bytes,
/// wholly inside the map, and not more than [`MAX_MEMORY_MAP_ENTRIES`] of them.
fn check_memory_map(bytes: &[u8], paddr: u32) -> Result<(), InfoError> {
    let bad = InfoError::BadMemoryMap {
        paddr,
        len: bytes.len() as u32,
    };
    let mut offset = 0usize;
    let mut entries = 0usize;
    while offset < bytes.len() {
        let size = read_u32(bytes, offset).ok_or(bad)?;
        if size < MEMORY_MAP_ENTRY_MIN {
            return Err(bad);
        }
        let next = offset
            .checked_add(4)
            .and_then(|o| o.checked_add(size as usize))
            .ok_or(bad)?;
        if next > bytes.len() {
            return Err(bad);
        }
        entries += 1;
        if entries > MAX_MEMORY_MAP_ENTRIES {
            return Err(InfoError::TooManyMemoryMapEntries);
        }
        offset = next;
    }
    Ok(())
}

impl<'m> MultibootInfo<'m> {
    /// Reads and validates the structure at `paddr`.
    pub fn parse(mem: &impl PhysMemory<'m>, paddr: u32) -> Result<Self, InfoError> {
        let raw = mem
            .bytes(u64::from(paddr), INFO_LEN)
            .ok_or(InfoError::Unreadable { paddr })?;
        let field = |offset| read_u32(raw, offset).ok_or(InfoError::Unreadable { paddr });
        let flags = field(0)?;

        let cmdline = if flags & flags::CMDLINE != 0 {
            let at = field(16)?;
            Some(read_string(mem, at).ok_or(InfoError::BadCmdline { paddr: at })?)
        } else {
            None
        };
        let loader_name = if flags & flags::LOADER_NAME != 0 {
            let at = field(64)?;
            Some(read_string(mem, at).ok_or(InfoError::BadLoaderName { paddr: at })?)
        } else {
            None
        };

        let memory = if flags & flags::MEMORY_MAP != 0 {
            let (len, at) = (field(44)?, field(48)?);
            let bad = InfoError::BadMemoryMap { paddr: at, len };
            let bytes = mem
                .bytes(u64::from(at), usize::try_from(len).map_err(|_| bad)?)
                .ok_or(bad)?;
            check_memory_map(bytes, at)?;
            MemorySource::Map { paddr: at, bytes }
        } else if flags & flags::MEMORY != 0 {
            MemorySource::Basic {
                lower_kib: field(4)?,
                upper_kib: field(8)?,
            }
        } else {
            return Err(InfoError::NoMemoryInformation);
        };

        let mut info = MultibootInfo {
            paddr,
            cmdline,
            loader_name,
            memory,
            modules_paddr: 0,
            modules: &[],
            module_strings: [None; MAX_MODULES],
        };
        if flags & flags::MODULES != 0 {
            let (count, at) = (field(20)?, field(24)?);
            if count as usize > MAX_MODULES {
                return Err(InfoError::TooManyModules { count });
            }
            let table = mem
                .bytes(u64::from(at), count as usize * MODULE_ENTRY_LEN)
                .ok_or(InfoError::BadModuleTable { paddr: at, count })?;
            for (index, entry) in table.chunks_exact(MODULE_ENTRY_LEN).enumerate() {
                let bad = InfoError::BadModule { index };
                let (start, end) = (
                    read_u32(entry, 0).ok_or(bad)?,
                    read_u32(entry, 4).ok_or(bad)?,
                );
                if end < start {
                    return Err(bad);
                }
                let string_at = read_u32(entry, 8).ok_or(bad)?;
                let string = match string_at {
                    0 => None,
                    at => Some(read_string(mem, at).ok_or(bad)?),
                };
                if let Some(slot) = info.module_strings.get_mut(index) {
                    *slot = string;
                }
            }
            info.modules_paddr = at;
            info.modules = table;
        }
        Ok(info)
    }

    /// The structure's own physical range (the part that was read).
    pub fn range(&self) -> (u64, u64) {
        let start = u64::from(self.paddr);
        (start, start + INFO_LEN as u64)
    }

    /// The command line as the loader passed it (it starts with the image's name).
    pub fn cmdline(&self) -> Option<LoaderString<'m>> {
        self.cmdline
    }

    /// The loader's name (`GNU GRUB 2.06`, `iPXE 1.0.0+`, `qemu`).
    pub fn loader_name(&self) -> Option<LoaderString<'m>> {
        self.loader_name
    }

    /// The memory map's physical range, when there is one.
    pub fn memory_map_range(&self) -> Option<(u64, u64)> {
        match self.memory {
            MemorySource::Map { paddr, bytes } => {
                let start = u64::from(paddr);
                Some((start, start + bytes.len() as u64))
            }
            MemorySource::Basic { .. } => None,
        }
    }

    /// Every memory region: the map's entries, or, without a map, the two regions the basic
    /// fields describe (conventional memory from 0 and extended memory from 1 MiB).
    pub fn memory_regions(&self) -> MemoryRegions<'m> {
        match self.memory {
            MemorySource::Map { bytes, .. } => MemoryRegions::Map { bytes, offset: 0 },
            MemorySource::Basic {
                lower_kib,
                upper_kib,
            } => MemoryRegions::Basic {
                regions: [
                    MemoryRegion {
                        base: 0,
                        len: u64::from(lower_kib) * 1024,
                        kind: MEMORY_AVAILABLE,
                    },
                    MemoryRegion {
                        base: 1 << 20,
                        len: u64::from(upper_kib) * 1024,
                        kind: MEMORY_AVAILABLE,
                    },
                ],
                next: 0,
            },
        }
    }

    /// The module table's physical range, when there are modules.
    pub fn module_table_range(&self) -> Option<(u64, u64)> {
        (!self.modules.is_empty()).then(|| {
            let start = u64::from(self.modules_paddr);
            (start, start + self.modules.len() as u64)
        })
    }

    /// The modules in the loader's order.
    pub fn modules(&self) -> impl Iterator<Item = Module<'m>> + '_ {
        self.modules
            .chunks_exact(MODULE_ENTRY_LEN)
            .zip(self.module_strings.iter())
            .map(|(entry, string)| Module {
                start: read_u32(entry, 0).unwrap_or(0),
                end: read_u32(entry, 4).unwrap_or(0),
                string: *string,
            })
    }
}

/// Iterator over [`MultibootInfo::memory_regions`].
pub enum MemoryRegions<'m> {
    Map {
        bytes: &'m [u8],
        offset: usize,
    },
    Basic {
        regions: [MemoryRegion; 2],
        next: usize,
    },
}

impl Iterator for MemoryRegions<'_> {
    type Item = MemoryRegion;

    fn next(&mut self) -> Option<MemoryRegion> {
        match self {
            MemoryRegions::Map { bytes, offset } => {
                // Checked by `check_memory_map`: every entry is complete.
                let size = read_u32(bytes, *offset)?;
                let body = offset.checked_add(4)?;
                let region = MemoryRegion {
                    base: read_u64(bytes, body)?,
                    len: read_u64(bytes, body + 8)?,
                    kind: read_u32(bytes, body + 16)?,
                };
                *offset = body.checked_add(size as usize)?;
                Some(region)
            }
            MemoryRegions::Basic { regions, next } => {
                let region = regions.get(*next).copied()?;
                *next += 1;
                Some(region)
            }
        }
    }
}

/// The command line without the image name that most multiboot loaders put first.
///
/// iPXE (`keel.elf keel.log=debug`), QEMU (`/path/keel.elf keel.log=debug`) and GRUB legacy
/// start the command line with the image's name; GRUB 2 (which calls itself `GRUB 2.06…`)
/// does not. Xen applies the same rule to its own command line. As a second guard, a first
/// word that is itself a `keel.NAME=VALUE` option is never taken for a name.
pub fn without_image_name<'a>(cmdline: &'a [u8], loader_name: Option<&[u8]>) -> &'a [u8] {
    let trimmed = trim_ascii_start(cmdline);
    if loader_name.is_some_and(|name| name.starts_with(b"GRUB ")) {
        return trimmed;
    }
    let word_end = trimmed
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(trimmed.len());
    let (first, rest) = trimmed.split_at(word_end);
    if first.starts_with(b"keel.") && first.contains(&b'=') {
        trimmed
    } else {
        trim_ascii_start(rest)
    }
}

/// A module's name: the last path component of the first word of its string
/// (`/boot/host.cfg extra` and `host.cfg` both give `host.cfg`).
pub fn module_name(string: &[u8]) -> &[u8] {
    let trimmed = trim_ascii_start(string);
    let word_end = trimmed
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(trimmed.len());
    let word = trimmed.get(..word_end).unwrap_or_default();
    match word.iter().rposition(|&b| b == b'/') {
        Some(slash) => word.get(slash + 1..).unwrap_or_default(),
        None => word,
    }
}

fn trim_ascii_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}
