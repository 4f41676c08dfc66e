//! Reading the PVH `hvm_start_info` (QEMU's `-kernel`, Xen's PVH dom0 builder).

use core::ffi::CStr;

use keel_memory::Range;
use pvh::start_info::reader::StartInfoReader;

use super::{BootError, BootInfo, RangeList};

/// E820 type of usable RAM.
const E820_RAM: u32 = 1;

pub fn parse(paddr: u32) -> Result<BootInfo, BootError> {
    // SAFETY: the loader put a start info at `paddr`; the boot tables identity-map the low
    // 4 GiB where PVH places it. The reader checks the magic.
    let reader = unsafe { StartInfoReader::from_paddr_identity(paddr) }
        .ok_or(BootError::BadStartInfo { paddr })?;
    let raw = reader.raw();
    let mut info = BootInfo {
        protocol: "PVH",
        cmdline: "",
        cmdline_truncated_at: None,
        rsdp: Some(raw.rsdp_paddr).filter(|&a| a != 0),
        ram: RangeList::new(),
        in_use: RangeList::new(),
    };
    let start_info_size = core::mem::size_of_val(raw) as u64;
    info.in_use.push(Range::new(
        u64::from(paddr),
        u64::from(paddr) + start_info_size,
    ));

    if let Some(cmdline) = reader.cmdline() {
        let (text, truncated) = utf8_prefix(cmdline);
        info.cmdline = text;
        info.cmdline_truncated_at = truncated;
        let len = cmdline.to_bytes_with_nul().len() as u64;
        info.in_use
            .push(Range::new(raw.cmdline_paddr, raw.cmdline_paddr + len));
    }

    let memmap = reader.memmap();
    if memmap.is_empty() {
        return Err(BootError::NoMemoryMap);
    }
    let entry_size = core::mem::size_of_val(&memmap[0]) as u64;
    info.in_use.push(Range::new(
        raw.memmap_paddr,
        raw.memmap_paddr + entry_size * memmap.len() as u64,
    ));
    for e in memmap.iter().filter(|e| e.ty == E820_RAM) {
        if !info
            .ram
            .push(Range::new(e.addr, e.addr.saturating_add(e.size)))
        {
            log::warn!(
                "boot: more than {} RAM ranges; ignoring {:#x}+{:#x}",
                super::MAX_RANGES,
                e.addr,
                e.size
            );
        }
    }

    if raw.nr_modules > 0 {
        let entry_size = 32u64; // hvm_modlist_entry: paddr, size, cmdline_paddr, reserved
        info.in_use.push(Range::new(
            raw.modlist_paddr,
            raw.modlist_paddr + entry_size * u64::from(raw.nr_modules),
        ));
        for m in reader.modlist() {
            let m = m.raw();
            info.in_use
                .push(Range::new(m.paddr, m.paddr.saturating_add(m.size)));
        }
    }
    Ok(info)
}

/// The longest UTF-8 prefix, and where it was cut if it was.
fn utf8_prefix(s: &'static CStr) -> (&'static str, Option<usize>) {
    let bytes = s.to_bytes();
    match core::str::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => {
            let valid = e.valid_up_to();
            (
                core::str::from_utf8(&bytes[..valid]).unwrap_or_default(),
                Some(valid),
            )
        }
    }
}
