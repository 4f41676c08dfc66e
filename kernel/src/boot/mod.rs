//! Boot entry: from the 32-bit trampoline to a running executor.
//!
//! Two protocols enter the image (see `docs/boot.md`): PVH (Xen's dom0 builder, QEMU's
//! `-kernel` for an image without a multiboot header) and multiboot 1 (GRUB, iPXE, QEMU's
//! `-kernel`, which prefers multiboot when both are present). Each one's information is
//! turned into the same [`BootInfo`]: the command line without loader words, the RAM ranges,
//! the ranges still in use, and the modules, so that nothing after this module can tell
//! which loader ran.
//!
//! Order matters: the TSC is read first (every timestamp counts from entry), the serial
//! console second (so any later failure is visible), then CPU tables, the command line,
//! memory, firmware tables, the APIC and PCI. Then the executor runs the services.

mod entry;
mod multiboot;
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

/// Most modules the boot information can carry.
pub const MAX_MODULES: usize = 16;

/// A file the loader placed in memory next to the image (multiboot modules, Xen's dom0
/// "initrd", QEMU's `-initrd`). The boot media carry none today; the list is there so that
/// every protocol hands them over the same way when they do.
#[derive(Debug, Clone, Copy)]
pub struct BootModule {
    pub range: Range,
    /// The last path component of the first word of the module's string (`host.cfg`), or
    /// empty when the loader gave none (QEMU's PVH `-initrd`).
    pub name: &'static str,
}

/// The modules in the loader's order.
pub struct ModuleList {
    items: [Option<BootModule>; MAX_MODULES],
    len: usize,
}

impl ModuleList {
    pub const fn new() -> Self {
        ModuleList {
            items: [None; MAX_MODULES],
            len: 0,
        }
    }
    /// Adds a module; returns false (and drops it) when full.
    pub fn push(&mut self, module: BootModule) -> bool {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(module);
                self.len += 1;
                true
            }
            None => false,
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = &BootModule> {
        self.items.iter().take(self.len).flatten()
    }
    pub fn len(&self) -> usize {
        self.len
    }
}

/// What the loader told us, whichever protocol it used.
pub struct BootInfo {
    /// `PVH` or `multiboot`.
    pub protocol: &'static str,
    /// The loader's own name when it says (multiboot: `GNU GRUB 2.06`, `iPXE …`, `qemu`).
    pub loader: Option<&'static str>,
    /// The kernel command line, without the image name multiboot loaders put first.
    pub cmdline: &'static str,
    /// Set when the command line was cut at the first byte that is not UTF-8.
    pub cmdline_truncated_at: Option<usize>,
    pub rsdp: Option<u64>,
    pub ram: RangeList,
    /// Memory the loader handed over that must not be reused (boot structures, modules).
    pub in_use: RangeList,
    /// The modules (also listed in `in_use`).
    pub modules: ModuleList,
}

impl BootInfo {
    /// Nothing known yet, for the protocol parsers to fill in.
    fn empty(protocol: &'static str) -> Self {
        BootInfo {
            protocol,
            loader: None,
            cmdline: "",
            cmdline_truncated_at: None,
            rsdp: None,
            ram: RangeList::new(),
            in_use: RangeList::new(),
            modules: ModuleList::new(),
        }
    }
}

/// Why the boot information could not be used.
#[derive(Debug)]
pub enum BootError {
    UnknownProtocol(u32),
    BadStartInfo {
        paddr: u32,
    },
    NoMemoryMap,
    /// The multiboot entry was taken without the multiboot magic in `eax`.
    BadMultibootMagic {
        eax: u32,
    },
    Multiboot(keel_multiboot::InfoError),
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::UnknownProtocol(p) => write!(f, "entered through unknown boot protocol {p}"),
            BootError::BadStartInfo { paddr } => {
                write!(f, "no valid PVH start info at {paddr:#x} (bad magic)")
            }
            BootError::NoMemoryMap => write!(f, "the loader passed no memory map"),
            BootError::BadMultibootMagic { eax } => write!(
                f,
                "entered at the multiboot entry with eax={eax:#x}, not {:#x}",
                keel_multiboot::BOOTLOADER_MAGIC
            ),
            BootError::Multiboot(e) => write!(f, "multiboot: {e}"),
        }
    }
}

/// Called by the trampoline in 64-bit mode with the boot stack set up.
pub extern "C" fn kernel_entry(protocol: u32, info_paddr: u32) -> ! {
    crate::time::mark_entry();
    crate::console::init();
    let boot = match protocol {
        entry::PROTOCOL_PVH => pvh::parse(info_paddr),
        entry::PROTOCOL_MULTIBOOT => multiboot::parse(info_paddr),
        // The trampoline passes the wrong `eax` where the information address would be.
        entry::PROTOCOL_MULTIBOOT_BAD_MAGIC => {
            Err(BootError::BadMultibootMagic { eax: info_paddr })
        }
        other => Err(BootError::UnknownProtocol(other)),
    };
    match boot {
        Ok(info) => {
            report(&info);
            crate::kmain(info)
        }
        Err(e) => panic!("unusable boot information: {e}"),
    }
}

/// One line for the protocol, loader and command line, one per module: what people (and the
/// boot media tests) compare between loaders. The value of `keel.root_hash` is left out: a
/// password hash has no business in a console log.
fn report(info: &BootInfo) {
    let (from, loader) = match info.loader {
        Some(name) => (" from ", name),
        None => ("", ""),
    };
    log::info!(
        "boot: {}{from}{loader}; command line \"{}\"; {} module(s)",
        info.protocol,
        RedactedCmdline(info.cmdline),
        info.modules.len()
    );
    for (index, module) in info.modules.iter().enumerate() {
        log::info!(
            "boot: module {index} '{}' {} bytes at {:#x}",
            module.name,
            module.range.len(),
            module.range.start
        );
    }
}

/// The command line's words, single-spaced, with secret values replaced by `(hidden)`.
struct RedactedCmdline<'a>(&'a str);

impl core::fmt::Display for RedactedCmdline<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const SECRET: &str = "keel.root_hash=";
        for (i, word) in self.0.split_ascii_whitespace().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            if word.starts_with(SECRET) {
                write!(f, "{sep}{SECRET}(hidden)")?;
            } else {
                write!(f, "{sep}{}", word.escape_debug())?;
            }
        }
        Ok(())
    }
}

/// The longest UTF-8 prefix, and where it was cut if it was.
fn utf8_prefix(bytes: &'static [u8]) -> (&'static str, Option<usize>) {
    match core::str::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => {
            let valid = e.valid_up_to();
            let prefix = bytes.get(..valid).unwrap_or_default();
            (
                core::str::from_utf8(prefix).unwrap_or_default(),
                Some(valid),
            )
        }
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
