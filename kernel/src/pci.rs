//! PCI configuration-space access: ECAM (from ACPI's MCFG) or the legacy 0xCF8/0xCFC ports.
//! Enumeration and decoding live in the `keel-pci` crate.

use keel_pci::{Address, ConfigSpace};
use spin::{Mutex, Once};
use x86_64::instructions::port::Port;

use crate::acpi::Ecam;
use crate::memory;

/// The legacy mechanism: 256 bytes per function, through two ports.
pub struct PortConfig;

/// Serialises the address/data port pair.
static PORT_LOCK: Mutex<()> = Mutex::new(());

impl ConfigSpace for PortConfig {
    fn read32(&self, a: Address, offset: u16) -> u32 {
        if offset >= 256 {
            return u32::MAX;
        }
        let _guard = PORT_LOCK.lock();
        // SAFETY: the PCI configuration address port, used under its lock.
        unsafe { Port::<u32>::new(0xcf8).write(port_address(a, offset)) };
        // SAFETY: the data port of the address just selected, under the same lock.
        unsafe { Port::<u32>::new(0xcfc).read() }
    }
    fn write32(&self, a: Address, offset: u16, value: u32) {
        if offset >= 256 {
            return;
        }
        let _guard = PORT_LOCK.lock();
        // SAFETY: as in `read32`.
        unsafe { Port::<u32>::new(0xcf8).write(port_address(a, offset)) };
        // SAFETY: as in `read32`.
        unsafe { Port::<u32>::new(0xcfc).write(value) };
    }
}

fn port_address(a: Address, offset: u16) -> u32 {
    (1 << 31)
        | (u32::from(a.bus) << 16)
        | (u32::from(a.device) << 11)
        | (u32::from(a.function) << 8)
        | u32::from(offset & 0xfc)
}

/// Memory-mapped configuration space: 4 KiB per function.
pub struct EcamConfig {
    window: Ecam,
}

impl EcamConfig {
    /// Maps the window (uncached).
    pub fn new(window: Ecam) -> Result<Self, memory::MapError> {
        let buses = u64::from(window.bus_end.saturating_sub(window.bus_start)) + 1;
        // The MCFG's base is the firmware's claim: a base so high that the window wraps is
        // refused like one past the identity map (which `map_mmio` refuses).
        let start = window
            .base
            .checked_add(u64::from(window.bus_start) << 20)
            .ok_or(memory::MapError::OutOfReach {
                phys: window.base,
                size: buses << 20,
            })?;
        memory::map_mmio(start, buses << 20)?;
        Ok(EcamConfig { window })
    }

    fn register(&self, a: Address, offset: u16) -> Option<*mut u32> {
        if a.bus < self.window.bus_start || a.bus > self.window.bus_end || offset >= 4096 {
            return None;
        }
        let addr = self.window.base
            + (u64::from(a.bus) << 20)
            + (u64::from(a.device & 31) << 15)
            + (u64::from(a.function & 7) << 12)
            + u64::from(offset & !3);
        Some(addr as *mut u32)
    }
}

impl ConfigSpace for EcamConfig {
    fn read32(&self, a: Address, offset: u16) -> u32 {
        match self.register(a, offset) {
            // SAFETY: inside the window mapped in `new`.
            Some(p) => unsafe { core::ptr::read_volatile(p) },
            None => u32::MAX,
        }
    }
    fn write32(&self, a: Address, offset: u16, value: u32) {
        if let Some(p) = self.register(a, offset) {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(p, value) }
        }
    }
}

static CONFIG: Once<PciConfig> = Once::new();

/// Sets up configuration access once; drivers share it for the life of the system.
pub fn init(ecam: Option<Ecam>) -> &'static PciConfig {
    CONFIG.call_once(|| PciConfig::new(ecam))
}

/// Whichever mechanism the platform offers.
pub enum PciConfig {
    Ecam(EcamConfig),
    Port(PortConfig),
}

impl PciConfig {
    pub fn new(ecam: Option<Ecam>) -> Self {
        match ecam.map(EcamConfig::new) {
            Some(Ok(e)) => PciConfig::Ecam(e),
            Some(Err(err)) => {
                log::warn!("pci: cannot map ECAM ({err}); using I/O ports");
                PciConfig::Port(PortConfig)
            }
            None => PciConfig::Port(PortConfig),
        }
    }

    pub fn mechanism(&self) -> &'static str {
        match self {
            PciConfig::Ecam(_) => "ECAM",
            PciConfig::Port(_) => "I/O ports",
        }
    }
}

impl ConfigSpace for PciConfig {
    fn read32(&self, a: Address, offset: u16) -> u32 {
        match self {
            PciConfig::Ecam(e) => e.read32(a, offset),
            PciConfig::Port(p) => p.read32(a, offset),
        }
    }
    fn write32(&self, a: Address, offset: u16, value: u32) {
        match self {
            PciConfig::Ecam(e) => e.write32(a, offset, value),
            PciConfig::Port(p) => p.write32(a, offset, value),
        }
    }
}
