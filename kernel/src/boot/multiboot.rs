//! Multiboot (version 1): the header that lets GRUB, iPXE and QEMU's `-kernel` load the
//! image, and the translation of the loader's information into [`BootInfo`].
//!
//! The header uses the "a.out kludge" (flag bit 16): it states the load addresses itself, so
//! loaders copy the file flat from the header's position instead of reading the ELF program
//! headers. That is what lets 32-bit loaders (QEMU refuses ELF64 multiboot images otherwise,
//! iPXE only loads ELF32) take a 64-bit ELF, and it is why `linker.ld` keeps the whole image
//! in one contiguous load segment whose file layout equals its memory layout. The image
//! builder (`image-builder/src/kernel.rs`) checks that equality before it puts an image on
//! boot media.

use core::arch::global_asm;

use keel_memory::Range;
use keel_multiboot::{MultibootInfo, PhysMemory, MEMORY_AVAILABLE};

use super::{BootError, BootInfo, BootModule};

/// The header's magic number.
const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Header flags: modules page-aligned (bit 0), memory information wanted (bit 1), load
/// addresses in the header (bit 16).
const HEADER_FLAGS: u32 = (1 << 0) | (1 << 1) | (1 << 16);

// The header lives in its own section, which `linker.ld` puts first in the load image, well
// inside the first 8 KiB of the file where loaders look for it.
global_asm!(
    r#"
    .section .multiboot_header, "a"
    .balign 4
multiboot_header:
    .long {magic}
    .long {flags}
    .long -({magic} + {flags})
    .long multiboot_header       /* header_addr */
    .long __image_start          /* load_addr: the file is loaded flat from here */
    .long __load_end             /* load_end_addr: end of .data */
    .long __image_end            /* bss_end_addr: the loader zeroes .bss up to here */
    .long multiboot_start32      /* entry_addr */
    "#,
    magic = const HEADER_MAGIC,
    flags = const HEADER_FLAGS,
    options(att_syntax)
);

/// The low 4 GiB, identity-mapped by the boot page tables (everything multiboot addresses).
struct IdentityMapped;

impl PhysMemory<'static> for IdentityMapped {
    fn bytes(&self, paddr: u64, len: usize) -> Option<&'static [u8]> {
        let end = paddr.checked_add(len as u64)?;
        // Page 0 is a null pointer to Rust, and nothing a loader passes lives there.
        if paddr < 0x1000 || end > 1 << 32 {
            return None;
        }
        // SAFETY: the range is inside the identity-mapped low 4 GiB and not page 0. The
        // loader's structures are never written by Keel, and `in_use` keeps the frame
        // allocator away from them for as long as `BootInfo` lives.
        Some(unsafe { core::slice::from_raw_parts(paddr as *const u8, len) })
    }
}

fn range((start, end): (u64, u64)) -> Range {
    Range::new(start, end)
}

/// Reads the multiboot information at `paddr` into a [`BootInfo`].
pub fn parse(paddr: u32) -> Result<BootInfo, BootError> {
    let mb = MultibootInfo::parse(&IdentityMapped, paddr).map_err(BootError::Multiboot)?;
    let mut info = BootInfo::empty("multiboot");
    info.loader = mb
        .loader_name()
        .map(|name| super::utf8_prefix(name.bytes).0);
    info.in_use.push(range(mb.range()));

    if let Some(cmdline) = mb.cmdline() {
        let loader = mb.loader_name().map(|name| name.bytes);
        let (text, truncated) =
            super::utf8_prefix(keel_multiboot::without_image_name(cmdline.bytes, loader));
        info.cmdline = text.trim_end();
        info.cmdline_truncated_at = truncated;
        info.in_use.push(range(cmdline.range()));
    }
    if let Some(name) = mb.loader_name() {
        info.in_use.push(range(name.range()));
    }

    if let Some(map) = mb.memory_map_range() {
        info.in_use.push(range(map));
    }
    for region in mb.memory_regions() {
        if region.kind != MEMORY_AVAILABLE {
            continue;
        }
        if !info.ram.push(range(region.range())) {
            log::warn!(
                "boot: more than {} RAM ranges; ignoring {:#x}+{:#x}",
                super::MAX_RANGES,
                region.base,
                region.len
            );
        }
    }

    if let Some(table) = mb.module_table_range() {
        info.in_use.push(range(table));
    }
    for module in mb.modules() {
        let (start, end) = (u64::from(module.start), u64::from(module.end));
        info.in_use.push(Range::new(start, end));
        let string = module.string.map_or(&[][..], |s| s.bytes);
        if let Some(s) = module.string {
            info.in_use.push(range(s.range()));
        }
        let module = BootModule {
            range: Range::new(start, end),
            name: super::utf8_prefix(keel_multiboot::module_name(string)).0,
        };
        if !info.modules.push(module) {
            log::warn!(
                "boot: more than {} modules; ignoring the one at {start:#x}",
                super::MAX_MODULES
            );
        }
    }
    // Multiboot 1 has no field for the ACPI RSDP: `acpi.rs` scans the BIOS area instead.
    Ok(info)
}
