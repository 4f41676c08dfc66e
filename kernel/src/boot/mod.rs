//! Boot entry: from the 32-bit trampoline to a running executor.
//!
//! Order matters: the TSC is read first (every timestamp counts from entry), the serial
//! console second (so any later failure is visible), then CPU tables, the command line,
//! memory, firmware tables, the APIC and PCI. Then the executor runs the services.

mod entry;
mod pvh;

use keel_memory::Range;

/// Most RAM and in-use ranges the boot information can carry.
pub const MAX_RANGES: usize = 64;

/// A small fixed-capacity list, usable before the heap exists.
pub struct RangeList {
    items: [Range; MAX_RANGES],
    len: usize,
}

impl RangeList {
    pub const fn new() -> Self {
        RangeList {
            items: [Range::new(0, 0); MAX_RANGES],
            len: 0,
        }
    }
    /// Adds a range; returns false (and drops it) when full.
    pub fn push(&mut self, r: Range) -> bool {
        if r.is_empty() {
            return true;
        }
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = r;
                self.len += 1;
                true
            }
            None => false,
        }
    }
    pub fn as_slice(&self) -> &[Range] {
        &self.items[..self.len]
    }
}

/// What the loader told us, whichever protocol it used.
pub struct BootInfo {
    pub protocol: &'static str,
    pub cmdline: &'static str,
    /// Set when the command line was cut at the first byte that is not UTF-8.
    pub cmdline_truncated_at: Option<usize>,
    pub rsdp: Option<u64>,
    pub ram: RangeList,
    /// Memory the loader handed over that must not be reused (boot structures, modules).
    pub in_use: RangeList,
}

/// Why the boot information could not be used.
#[derive(Debug)]
pub enum BootError {
    UnknownProtocol(u32),
    BadStartInfo { paddr: u32 },
    NoMemoryMap,
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::UnknownProtocol(p) => write!(f, "entered through unknown boot protocol {p}"),
            BootError::BadStartInfo { paddr } => {
                write!(f, "no valid PVH start info at {paddr:#x} (bad magic)")
            }
            BootError::NoMemoryMap => write!(f, "the loader passed no memory map"),
        }
    }
}

/// Called by the trampoline in 64-bit mode with the boot stack set up.
pub extern "C" fn kernel_entry(protocol: u32, info_paddr: u32) -> ! {
    crate::time::mark_entry();
    crate::console::init();
    let boot = match protocol {
        entry::PROTOCOL_PVH => pvh::parse(info_paddr),
        other => Err(BootError::UnknownProtocol(other)),
    };
    match boot {
        Ok(info) => crate::kmain(info),
        Err(e) => panic!("unusable boot information: {e}"),
    }
}

/// The image's own extent, from the linker script.
pub fn image_range() -> Range {
    extern "C" {
        static __image_start: u8;
        static __image_end: u8;
    }
    // Linker-defined symbols: only their addresses are taken.
    Range::new(
        &raw const __image_start as u64,
        &raw const __image_end as u64,
    )
}
