//! Where everything goes in a PVH guest's physical address space (`xg_dom_x86.c:
//! meminit_hvm`, `libxl_x86_acpi.c`) and the E820 map that describes it.
//!
//! RAM starts at 0 (no VGA hole for PVH) and runs up to the 64 MiB MMIO hole below 4 GiB,
//! the rest from 4 GiB. In the hole: the ACPI tables from `0xfc001000` and the eight
//! special pages at `0xfeff8`–`0xfefff` (xenstore ring, identity page table, console ring).

use alloc::vec::Vec;
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::memory::E820Entry;

/// Start of the MMIO hole below 4 GiB for a PVH guest: `4G − 64 MiB`.
pub const MMIO_HOLE_START: u64 = 0xfc00_0000;
pub const FOUR_GIB: u64 = 1 << 32;
/// Where the ACPI tables go (libxl leaves `0xfc000000` for an info page PVH does not use).
pub const ACPI_BASE: u64 = 0xfc00_1000;
/// Pages reserved for the tables (127 vCPUs need under 3 KiB; one page suffices).
pub const ACPI_PAGES: u64 = 1;
/// First of the special pages (`X86_HVM_END_SPECIAL_REGION − X86_HVM_NR_SPECIAL_PAGES`).
pub const SPECIAL_FIRST_GFN: u64 = 0xfeff8;
pub const SPECIAL_PAGES: u64 = 8;
/// The xenstore ring (`HVM_PARAM_STORE_PFN`).
pub const STORE_GFN: u64 = SPECIAL_FIRST_GFN + 4;
/// The identity-map page table (`HVM_PARAM_IDENT_PT`, a byte address).
pub const IDENT_PT_GFN: u64 = SPECIAL_FIRST_GFN + 6;
/// The PV console ring (`HVM_PARAM_CONSOLE_PFN`).
pub const CONSOLE_GFN: u64 = SPECIAL_FIRST_GFN + 7;

/// E820 types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
pub const E820_ACPI: u32 = 3;

/// Smallest guest Keel builds (the kernel, initrd and decompression space must fit).
pub const MIN_MEMORY_MIB: u64 = 16;

/// A guest's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLayout {
    /// RAM is `[0, low_end)`.
    pub low_end: u64,
    /// Bytes of RAM from 4 GiB.
    pub high_bytes: u64,
}

impl MemoryLayout {
    pub fn new(memory_mib: u64) -> Self {
        let total = memory_mib << 20;
        let low_end = total.min(MMIO_HOLE_START);
        MemoryLayout {
            low_end,
            high_bytes: total - low_end,
        }
    }

    /// Guest frames of RAM, low then high.
    pub fn ram_frames(&self) -> impl Iterator<Item = core::ops::Range<u64>> {
        let page = PAGE_SIZE as u64;
        let low = 0..self.low_end / page;
        let high = FOUR_GIB / page..(FOUR_GIB + self.high_bytes) / page;
        [low, high].into_iter().filter(|r| !r.is_empty())
    }

    /// The guest's E820 map: RAM, the ACPI tables' pages, the special pages, high RAM.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = alloc::vec![E820Entry {
            addr: 0,
            size: self.low_end,
            kind: E820_RAM,
        }];
        map.push(E820Entry {
            addr: ACPI_BASE,
            size: ACPI_PAGES * PAGE_SIZE as u64,
            kind: E820_ACPI,
        });
        map.push(E820Entry {
            addr: SPECIAL_FIRST_GFN * PAGE_SIZE as u64,
            size: SPECIAL_PAGES * PAGE_SIZE as u64,
            kind: E820_RESERVED,
        });
        if self.high_bytes > 0 {
            map.push(E820Entry {
                addr: FOUR_GIB,
                size: self.high_bytes,
                kind: E820_RAM,
            });
        }
        map
    }
}

/// Rounds `value` up to a page boundary (saturating: callers compare against RAM size).
pub fn page_align(value: u64) -> u64 {
    let page = PAGE_SIZE as u64;
    value.saturating_add(page - 1) / page * page
}

/// The identity-map page table VMX needs for a guest in protected mode without paging:
/// 1024 4 MiB PDEs mapping the first 4 GiB 1:1 (present, writable, user, accessed, dirty,
/// large).
pub fn ident_page_table() -> [u8; PAGE_SIZE] {
    let mut page = [0u8; PAGE_SIZE];
    for (i, pde) in page.chunks_exact_mut(4).enumerate() {
        pde.copy_from_slice(&(((i as u32) << 22) | 0xe7).to_le_bytes());
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_low_ram_only() {
        let l = MemoryLayout::new(512);
        assert_eq!(l.low_end, 512 << 20);
        assert_eq!(l.high_bytes, 0);
        let frames: Vec<_> = l.ram_frames().collect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0], 0..0x20000);
        let map = l.e820();
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 512 << 20,
                kind: 1
            }
        );
        assert_eq!({ map[1].addr }, 0xfc00_1000);
        assert_eq!({ map[1].kind }, 3);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 0xfeff_8000,
                size: 0x8000,
                kind: 2
            }
        );
    }

    #[test]
    fn big_guest_continues_above_4_gib() {
        let l = MemoryLayout::new(5 << 10);
        assert_eq!(l.low_end, 0xfc00_0000);
        assert_eq!(l.high_bytes, (5 << 30) - 0xfc00_0000);
        let frames: Vec<_> = l.ram_frames().collect();
        assert_eq!(frames[1].start, 0x10_0000);
        assert_eq!(frames.iter().map(|r| r.end - r.start).sum::<u64>(), 5 << 18);
        let map = l.e820();
        assert_eq!({ map[3].addr }, 1 << 32);
        // Sorted and non-overlapping.
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
    }

    #[test]
    fn ident_pt_maps_4_gib_with_large_pages() {
        let pt = ident_page_table();
        assert_eq!(pt[..4], 0xe7u32.to_le_bytes());
        assert_eq!(pt[4..8], 0x0040_00e7u32.to_le_bytes());
        assert_eq!(pt[4092..], 0xffc0_00e7u32.to_le_bytes());
    }

    #[test]
    fn special_pages_are_where_linux_and_libxl_expect() {
        assert_eq!(STORE_GFN, 0xfeffc);
        assert_eq!(CONSOLE_GFN, 0xfefff);
        assert_eq!(IDENT_PT_GFN, 0xfeffe);
        assert_eq!(page_align(1), 4096);
        assert_eq!(page_align(4096), 4096);
        assert_eq!(page_align(u64::MAX), u64::MAX / 4096 * 4096);
    }
}
