//! ACPI table discovery through the `acpi` crate: the facts the kernel needs from firmware.
//!
//! The RSDP comes from the boot protocol (PVH start info) or, failing that, from the BIOS
//! area scan. From the tables we take: the local APIC address and CPU count (MADT), the PCI
//! ECAM window (MCFG), and the power registers (FADT, plus `\_S5` from the DSDT). The
//! registers the FADT names are checked and mapped by [`register`] before anything uses them.

mod register;

use acpi::sdt::fadt::Fadt;
use acpi::sdt::madt::{Madt, MadtEntry};
use acpi::sdt::mcfg::Mcfg;
use acpi::{AcpiTables, Handler, PciAddress, PhysicalMapping, RawPhysicalMapping};
use keel_acpi::register::Width;
use keel_acpi::SleepType;
use x86_64::instructions::port::Port;

use crate::memory;
pub use register::MappedRegister;

/// The PCI Express enhanced configuration window for segment 0.
#[derive(Debug, Clone, Copy)]
pub struct Ecam {
    pub base: u64,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// How to power off and reset this machine: the FADT's registers that passed the checks
/// (and, in memory, were mapped).
#[derive(Debug, Clone, Copy, Default)]
pub struct PowerControl {
    pub pm1a_control: Option<MappedRegister>,
    pub pm1b_control: Option<MappedRegister>,
    pub s5: Option<SleepType>,
    /// The FADT reset register and the value to write to it.
    pub reset: Option<(MappedRegister, u8)>,
}

impl PowerControl {
    /// Whether ACPI S5 can be entered: a PM1a control register and the `\_S5` values.
    pub fn can_power_off(&self) -> bool {
        self.pm1a_control.is_some() && self.s5.is_some()
    }
}

/// What the kernel learned from ACPI.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    pub lapic_base: u64,
    pub cpus: usize,
    pub ecam: Option<Ecam>,
    pub power: PowerControl,
}

/// Why ACPI could not be read.
#[derive(Debug)]
pub enum AcpiSetupError {
    NoRsdp,
    Tables(acpi::AcpiError),
}

impl core::fmt::Display for AcpiSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiSetupError::NoRsdp => write!(f, "no RSDP from the loader or in the BIOS area"),
            AcpiSetupError::Tables(e) => write!(f, "bad ACPI tables: {e:?}"),
        }
    }
}

/// Finds and reads the tables.
pub fn discover(rsdp_hint: Option<u64>) -> Result<Platform, AcpiSetupError> {
    let rsdp = rsdp_hint
        .filter(|&a| a != 0)
        .or_else(scan_bios_for_rsdp)
        .ok_or(AcpiSetupError::NoRsdp)?;
    // SAFETY: the address came from the loader or the signature scan; the crate validates it.
    let tables = unsafe { AcpiTables::from_rsdp(KeelAcpi, rsdp as usize) }
        .map_err(AcpiSetupError::Tables)?;

    let mut platform = Platform {
        lapic_base: 0xfee0_0000,
        cpus: 1,
        ecam: None,
        power: PowerControl::default(),
    };
    if let Some(madt) = tables.find_table::<Madt>() {
        platform.lapic_base = u64::from(madt.get().local_apic_address);
        let mut cpus = 0;
        for entry in madt.get().entries() {
            match entry {
                MadtEntry::LocalApic(e) if { e.flags } & 1 != 0 => cpus += 1,
                MadtEntry::LocalX2Apic(e) if { e.flags } & 1 != 0 => cpus += 1,
                MadtEntry::LocalApicAddressOverride(e) => {
                    platform.lapic_base = e.local_apic_address
                }
                _ => {}
            }
        }
        platform.cpus = cpus.max(1);
    }
    if let Some(mcfg) = tables.find_table::<Mcfg>() {
        platform.ecam = mcfg
            .entries()
            .iter()
            .find(|e| { e.pci_segment_group } == 0)
            .map(|e| Ecam {
                base: e.base_address,
                bus_start: e.bus_number_start,
                bus_end: e.bus_number_end,
            });
    }
    if let Some(fadt) = tables.find_table::<Fadt>() {
        platform.power = power_control(&fadt, &tables);
    }
    Ok(platform)
}

/// The register `gas` names, checked and mapped; `None` (with the reason logged) otherwise.
fn usable_register(
    name: &str,
    gas: Result<acpi::address::GenericAddress, acpi::AcpiError>,
) -> Option<MappedRegister> {
    let gas = gas
        .inspect_err(|e| log::warn!("acpi: unreadable {name} register: {e:?}"))
        .ok()?;
    MappedRegister::new(&gas)
        .inspect_err(|e| log::warn!("acpi: not using the {name} register ({gas:x?}): {e}"))
        .ok()
}

fn power_control(
    fadt: &PhysicalMapping<KeelAcpi, Fadt>,
    tables: &AcpiTables<KeelAcpi>,
) -> PowerControl {
    let mut power = PowerControl {
        pm1a_control: usable_register("PM1a control", fadt.pm1a_control_block()),
        ..PowerControl::default()
    };
    // PM1b is optional: absent is normal, present-but-refused is logged.
    match fadt.pm1b_control_block() {
        Ok(None) => {}
        Ok(Some(gas)) => power.pm1b_control = usable_register("PM1b control", Ok(gas)),
        Err(e) => log::warn!("acpi: unreadable PM1b control register: {e:?}"),
    }
    // The reset register is optional before ACPI 2.0 (flag bit 10 says it is supported).
    if { fadt.flags }.supports_system_reset_via_fadt() {
        power.reset =
            usable_register("reset", fadt.reset_register()).map(|r| (r, fadt.reset_value));
    }
    match tables.dsdt() {
        Ok(dsdt) => {
            let header = core::mem::size_of::<acpi::sdt::SdtHeader>();
            let len = (dsdt.length as usize).saturating_sub(header);
            let aml_phys = (dsdt.phys_address + header) as u64;
            match memory::map_firmware(aml_phys, len as u64) {
                Ok(ptr) => {
                    // SAFETY: mapped above; the DSDT length comes from its validated header.
                    let aml = unsafe { core::slice::from_raw_parts(ptr.as_ptr(), len) };
                    match keel_acpi::s5_sleep_type(aml) {
                        Ok(t) => power.s5 = Some(t),
                        Err(e) => log::warn!(
                            "acpi: no usable \\_S5 in the DSDT ({e:?}); power-off will halt"
                        ),
                    }
                }
                Err(e) => log::warn!("acpi: cannot map the DSDT: {e}"),
            }
        }
        Err(e) => log::warn!("acpi: no DSDT: {e:?}"),
    }
    power
}

/// Looks for "RSD PTR " on 16-byte boundaries in the BIOS read-only area.
fn scan_bios_for_rsdp() -> Option<u64> {
    let base = 0xe0000u64;
    let ptr = memory::map_firmware(base, 0x20000).ok()?;
    // SAFETY: the BIOS area is mapped above and is plain memory.
    let area = unsafe { core::slice::from_raw_parts(ptr.as_ptr(), 0x20000) };
    area.chunks_exact(16)
        .position(|c| &c[..8] == b"RSD PTR ")
        .map(|i| base + 16 * i as u64)
}

/// The `acpi` crate's view of the machine. Table parsing uses only the mapping functions;
/// the register accessors exist for the crate's AML interpreter (not built) and register
/// helpers: a system-memory access is checked and mapped uncached first, or refused.
#[derive(Clone, Copy)]
pub struct KeelAcpi;

impl Handler for KeelAcpi {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> RawPhysicalMapping<T> {
        let ptr = match memory::map_firmware(physical_address as u64, size as u64) {
            Ok(p) => p.cast::<T>(),
            Err(e) => panic!("acpi: cannot map {size:#x} bytes at {physical_address:#x}: {e}"),
        };
        // SAFETY: identity mapping, so the virtual address is unique to this physical range.
        unsafe { RawPhysicalMapping::new(physical_address, ptr, size, size) }
    }
    unsafe fn unmap_physical_region<T>(&self, _region: RawPhysicalMapping<T>) {
        // Identity mappings stay: other tables may share the pages.
    }
    fn read_u8(&self, a: usize) -> u8 {
        // Truncation is exact: the value was read at this width.
        register::read_system_memory(a, Width::Byte) as u8
    }
    fn read_u16(&self, a: usize) -> u16 {
        // Truncation is exact: the value was read at this width.
        register::read_system_memory(a, Width::Word) as u16
    }
    fn read_u32(&self, a: usize) -> u32 {
        // Truncation is exact: the value was read at this width.
        register::read_system_memory(a, Width::DWord) as u32
    }
    fn read_u64(&self, a: usize) -> u64 {
        register::read_system_memory(a, Width::QWord)
    }
    fn write_u8(&self, a: usize, v: u8) {
        register::write_system_memory(a, u64::from(v), Width::Byte);
    }
    fn write_u16(&self, a: usize, v: u16) {
        register::write_system_memory(a, u64::from(v), Width::Word);
    }
    fn write_u32(&self, a: usize, v: u32) {
        register::write_system_memory(a, u64::from(v), Width::DWord);
    }
    fn write_u64(&self, a: usize, v: u64) {
        register::write_system_memory(a, v, Width::QWord);
    }
    fn read_io_u8(&self, port: u16) -> u8 {
        // SAFETY: AML asked for this port.
        unsafe { Port::new(port).read() }
    }
    fn read_io_u16(&self, port: u16) -> u16 {
        // SAFETY: as above.
        unsafe { Port::new(port).read() }
    }
    fn read_io_u32(&self, port: u16) -> u32 {
        // SAFETY: as above.
        unsafe { Port::new(port).read() }
    }
    fn write_io_u8(&self, port: u16, v: u8) {
        // SAFETY: as above.
        unsafe { Port::new(port).write(v) }
    }
    fn write_io_u16(&self, port: u16, v: u16) {
        // SAFETY: as above.
        unsafe { Port::new(port).write(v) }
    }
    fn write_io_u32(&self, port: u16, v: u32) {
        // SAFETY: as above.
        unsafe { Port::new(port).write(v) }
    }
    fn read_pci_u8(&self, a: PciAddress, offset: u16) -> u8 {
        (self.read_pci_u32(a, offset & !3) >> ((offset & 3) * 8)) as u8
    }
    fn read_pci_u16(&self, a: PciAddress, offset: u16) -> u16 {
        (self.read_pci_u32(a, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    fn read_pci_u32(&self, a: PciAddress, offset: u16) -> u32 {
        use keel_pci::ConfigSpace;
        crate::pci::PortConfig.read32(
            keel_pci::Address::new(a.bus(), a.device(), a.function()),
            offset,
        )
    }
    fn write_pci_u8(&self, a: PciAddress, offset: u16, v: u8) {
        let shift = (offset & 3) * 8;
        let old = self.read_pci_u32(a, offset & !3) & !(0xff << shift);
        self.write_pci_u32(a, offset & !3, old | (u32::from(v) << shift));
    }
    fn write_pci_u16(&self, a: PciAddress, offset: u16, v: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read_pci_u32(a, offset & !3) & !(0xffff << shift);
        self.write_pci_u32(a, offset & !3, old | (u32::from(v) << shift));
    }
    fn write_pci_u32(&self, a: PciAddress, offset: u16, v: u32) {
        use keel_pci::ConfigSpace;
        crate::pci::PortConfig.write32(
            keel_pci::Address::new(a.bus(), a.device(), a.function()),
            offset,
            v,
        )
    }
    fn nanos_since_boot(&self) -> u64 {
        crate::time::since_entry_ns()
    }
    fn stall(&self, microseconds: u64) {
        let end = crate::time::since_entry_ns() + microseconds * 1_000;
        while crate::time::since_entry_ns() < end {
            core::hint::spin_loop();
        }
    }
    fn sleep(&self, milliseconds: u64) {
        self.stall(milliseconds * 1_000);
    }
}
