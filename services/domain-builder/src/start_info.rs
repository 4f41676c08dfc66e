//! `struct hvm_start_info` (`xen/include/public/arch-x86/hvm/start_info.h`), version 1: what
//! a PVH kernel finds in `%ebx` at its entry, with the command line, the module list (the
//! initrd) and the memory map laid out after it as libxc does.
//!
//! Layout from `paddr`: the 56-byte struct; the NUL-terminated command line rounded up to 8;
//! `hvm_modlist_entry[]` (32 bytes each); `hvm_memmap_table_entry[]` (24 bytes each).

use alloc::vec::Vec;
use keel_xen::memory::E820Entry;

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const MAGIC: u32 = 0x336e_c578;
const STRUCT_LEN: usize = 56;
const MODLIST_ENTRY_LEN: usize = 32;
const MEMMAP_ENTRY_LEN: usize = 24;

/// A module (the initrd) already in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    pub paddr: u64,
    pub size: u64,
}

/// What goes into the start-info segment.
#[derive(Debug, Clone, Copy)]
pub struct StartInfo<'a> {
    /// Without the terminating NUL; must not contain one.
    pub cmdline: &'a [u8],
    pub initrd: Option<Module>,
    pub rsdp_paddr: u64,
    pub memmap: &'a [E820Entry],
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl StartInfo<'_> {
    /// Bytes the segment needs.
    pub fn len(&self) -> usize {
        STRUCT_LEN
            + align8(self.cmdline.len() + 1)
            + self.initrd.map_or(0, |_| MODLIST_ENTRY_LEN)
            + self.memmap.len() * MEMMAP_ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The segment as it must appear at guest-physical `paddr`.
    pub fn encode(&self, paddr: u64) -> Vec<u8> {
        let cmdline_off = STRUCT_LEN;
        let modlist_off = cmdline_off + align8(self.cmdline.len() + 1);
        let memmap_off = modlist_off + self.initrd.map_or(0, |_| MODLIST_ENTRY_LEN);
        let mut out = alloc::vec![0u8; self.len()];
        let put = |out: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(&mut out, 0, &MAGIC.to_le_bytes());
        put(&mut out, 4, &1u32.to_le_bytes()); // version
        put(&mut out, 8, &0u32.to_le_bytes()); // flags
        let nr_modules = u32::from(self.initrd.is_some());
        put(&mut out, 12, &nr_modules.to_le_bytes());
        if self.initrd.is_some() {
            put(&mut out, 16, &(paddr + modlist_off as u64).to_le_bytes());
        }
        put(&mut out, 24, &(paddr + cmdline_off as u64).to_le_bytes());
        put(&mut out, 32, &self.rsdp_paddr.to_le_bytes());
        put(&mut out, 40, &(paddr + memmap_off as u64).to_le_bytes());
        put(&mut out, 48, &(self.memmap.len() as u32).to_le_bytes());
        put(&mut out, cmdline_off, self.cmdline);
        if let Some(m) = self.initrd {
            put(&mut out, modlist_off, &m.paddr.to_le_bytes());
            put(&mut out, modlist_off + 8, &m.size.to_le_bytes());
            // cmdline_paddr 0: the initrd has no command line.
        }
        for (i, e) in self.memmap.iter().enumerate() {
            let at = memmap_off + i * MEMMAP_ENTRY_LEN;
            let (addr, size, kind) = (e.addr, e.size, e.kind);
            put(&mut out, at, &addr.to_le_bytes());
            put(&mut out, at + 8, &size.to_le_bytes());
            put(&mut out, at + 16, &kind.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn encodes_struct_cmdline_module_and_memmap() {
        let map = [
            E820Entry {
                addr: 0,
                size: 0x800_0000,
                kind: 1,
            },
            E820Entry {
                addr: 0xfeff_8000,
                size: 0x8000,
                kind: 2,
            },
        ];
        let si = StartInfo {
            cmdline: b"console=hvc0",
            initrd: Some(Module {
                paddr: 0x300_0000,
                size: 12345,
            }),
            rsdp_paddr: 0xfc00_1000,
            memmap: &map,
        };
        let base = 0x400_0000;
        let b = si.encode(base);
        assert_eq!(b.len(), si.len());
        assert_eq!(b.len(), 56 + 16 + 32 + 48);
        assert_eq!(u32_at(&b, 0), 0x336e_c578);
        assert_eq!(u32_at(&b, 4), 1);
        assert_eq!(u32_at(&b, 12), 1);
        assert_eq!(u64_at(&b, 24), base + 56);
        assert_eq!(&b[56..69], b"console=hvc0\0");
        assert_eq!(u64_at(&b, 16), base + 72);
        assert_eq!(u64_at(&b, 72), 0x300_0000);
        assert_eq!(u64_at(&b, 80), 12345);
        assert_eq!(u64_at(&b, 32), 0xfc00_1000);
        assert_eq!(u64_at(&b, 40), base + 104);
        assert_eq!(u32_at(&b, 48), 2);
        assert_eq!(u64_at(&b, 104 + 24), 0xfeff_8000);
        assert_eq!(u32_at(&b, 104 + 24 + 16), 2);
    }

    #[test]
    fn without_initrd_there_is_no_module_list() {
        let si = StartInfo {
            cmdline: b"",
            initrd: None,
            rsdp_paddr: 0,
            memmap: &[],
        };
        let b = si.encode(0x1000);
        assert_eq!(b.len(), 64);
        assert_eq!(u32_at(&b, 12), 0);
        assert_eq!(u64_at(&b, 16), 0);
        assert_eq!(b[56], 0);
    }
}
