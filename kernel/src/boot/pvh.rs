//! Reading the PVH `hvm_start_info` (Xen's PVH dom0 builder; QEMU's `-kernel` for an image
//! without a multiboot header).

use core::ffi::CStr;

use keel_memory::Range;
use keel_multiboot::module_name;
use pvh::start_info::reader::StartInfoReader;

use super::{BootError, BootInfo, BootModule};

/// E820 type of usable RAM.
const E820_RAM: u32 = 1;

pub fn parse(paddr: u32) -> Result<BootInfo, BootError> {
    // SAFETY: the loader put a start info at `paddr`; the boot tables identity-map the low
    // 4 GiB where PVH places it. The reader checks the magic.
    let reader = unsafe { StartInfoReader::from_paddr_identity(paddr) }
        .ok_or(BootError::BadStartInfo { paddr })?;
    let raw = reader.raw();
    let mut info = BootInfo::empty("PVH");
    info.rsdp = Some(raw.rsdp_paddr).filter(|&a| a != 0);
    let start_info_size = core::mem::size_of_val(raw) as u64;
    info.in_use.push(Range::new(
        u64::from(paddr),
        u64::from(paddr) + start_info_size,
    ));

    if let Some(cmdline) = reader.cmdline() {
        let (text, truncated) = utf8_cstr_prefix(cmdline);
        info.cmdline = text.trim();
        info.cmdline_truncated_at = truncated;
        let len = cmdline.to_bytes_with_nul().len() as u64;
        info.in_use
            .push(Range::new(raw.cmdline_paddr, raw.cmdline_paddr + len));
    }

    let memmap = reader.memmap();
    // Xen's PVH dom0 builder passes no map in the start info; Xen answers
    // XENMEM_memory_map instead, which the platform seam asks.
    if memmap.is_empty() && !crate::platform::hypervisor_ram(|r| push_ram(&mut info, r)) {
        return Err(BootError::NoMemoryMap);
    }
    if let Some(first) = memmap.first() {
        let entry_size = core::mem::size_of_val(first) as u64;
        info.in_use.push(Range::new(
            raw.memmap_paddr,
            raw.memmap_paddr + entry_size * memmap.len() as u64,
        ));
    }
    for e in memmap.iter().filter(|e| e.ty == E820_RAM) {
        push_ram(&mut info, Range::new(e.addr, e.addr.saturating_add(e.size)));
    }

    if raw.nr_modules > 0 {
        let entry_size = 32u64; // hvm_modlist_entry: paddr, size, cmdline_paddr, reserved
        info.in_use.push(Range::new(
            raw.modlist_paddr,
            raw.modlist_paddr + entry_size * u64::from(raw.nr_modules),
        ));
        for m in reader.modlist() {
            let string = m.cmdline();
            let m = m.raw();
            let range = Range::new(m.paddr, m.paddr.saturating_add(m.size));
            info.in_use.push(range);
            let name = match string {
                Some(s) => {
                    let len = s.to_bytes_with_nul().len() as u64;
                    info.in_use
                        .push(Range::new(m.cmdline_paddr, m.cmdline_paddr + len));
                    super::utf8_prefix(module_name(s.to_bytes())).0
                }
                None => "",
            };
            if !info.modules.push(BootModule { range, name }) {
                log::warn!(
                    "boot: more than {} modules; ignoring the one at {:#x}",
                    super::MAX_MODULES,
                    m.paddr
                );
            }
        }
    }
    Ok(info)
}

fn push_ram(info: &mut BootInfo, r: Range) {
    if !info.ram.push(r) {
        log::warn!(
            "boot: more than {} RAM ranges; ignoring {:#x}+{:#x}",
            super::MAX_RANGES,
            r.start,
            r.len()
        );
    }
}

/// The longest UTF-8 prefix of a C string, and where it was cut if it was.
fn utf8_cstr_prefix(s: &'static CStr) -> (&'static str, Option<usize>) {
    super::utf8_prefix(s.to_bytes())
}
