//! Access to registers the firmware names: mapped before they are touched, or refused.
//!
//! `keel_acpi::register` decides whether a Generic Address Structure is one access Keel can
//! perform; here a memory register is mapped uncached through [`memory::map_mmio`] once,
//! when it is accepted, and an I/O register needs no mapping. A [`MappedRegister`] exists
//! only for a register that passed both, so writing it later (at power-off, with nothing
//! left to report to) cannot fault.

use keel_acpi::register::{GenericAddress, Register, RegisterError, Space, Value, Width};
use x86_64::instructions::port::Port;

use crate::memory::{self, MapError};

/// Why a firmware-named register is not used.
#[derive(Debug)]
pub enum RegisterSetupError {
    /// The firmware's description is not one access Keel performs.
    Refused(RegisterError),
    /// The memory register could not be mapped uncached.
    Map(MapError),
}

impl core::fmt::Display for RegisterSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RegisterSetupError::Refused(e) => write!(f, "{e}"),
            RegisterSetupError::Map(e) => write!(f, "cannot map it uncached: {e}"),
        }
    }
}

/// A register that was checked and, in memory, mapped.
#[derive(Debug, Clone, Copy)]
pub struct MappedRegister {
    register: Register,
}

impl MappedRegister {
    /// Checks the register `gas` names and maps it when it is in memory.
    pub fn new(gas: &acpi::address::GenericAddress) -> Result<Self, RegisterSetupError> {
        let register = Register::from_generic(generic_address(gas), memory::MAPPABLE_BELOW)
            .map_err(RegisterSetupError::Refused)?;
        Self::map(register)
    }

    /// Maps `register` when it is in memory (identity mapping: the address stays the same).
    fn map(register: Register) -> Result<Self, RegisterSetupError> {
        if register.space() == Space::Memory {
            memory::map_mmio(register.address(), register.width().bytes())
                .map_err(RegisterSetupError::Map)?;
        }
        Ok(MappedRegister { register })
    }

    /// Writes `value`, or refuses one wider than the register.
    pub fn write(&self, value: u64) -> Result<(), RegisterError> {
        let value = self.register.value(value)?;
        let address = self.register.address();
        match self.register.space() {
            Space::Io => write_port(address, value),
            Space::Memory => {
                write_memory(address, value);
                Ok(())
            }
        }
    }

    /// Reads the register.
    pub fn read(&self) -> u64 {
        let address = self.register.address();
        let width = self.register.width();
        match self.register.space() {
            // `Register::io` keeps the port below 0x10000 and the width at most 32 bits.
            Space::Io => read_port(address as u16, width),
            Space::Memory => read_memory(address, width),
        }
    }
}

/// A system-memory access AML or the `acpi` crate asks for: checked and mapped uncached
/// first. The answer to a refused read is all ones, as from a bus with nothing behind it.
pub fn read_system_memory(paddr: usize, width: Width) -> u64 {
    match memory_register(paddr, width) {
        Ok(register) => register.read(),
        Err(e) => {
            log::warn!(
                "acpi: refused a {}-bit read at {paddr:#x}: {e}",
                width.bits()
            );
            u64::MAX >> (64 - width.bits())
        }
    }
}

/// The write counterpart of [`read_system_memory`]; a refused write is dropped.
pub fn write_system_memory(paddr: usize, value: u64, width: Width) {
    let written = memory_register(paddr, width)
        .and_then(|register| register.write(value).map_err(RegisterSetupError::Refused));
    if let Err(e) = written {
        log::warn!(
            "acpi: refused a {}-bit write at {paddr:#x}: {e}",
            width.bits()
        );
    }
}

fn memory_register(paddr: usize, width: Width) -> Result<MappedRegister, RegisterSetupError> {
    let register = Register::memory(paddr as u64, width, memory::MAPPABLE_BELOW)
        .map_err(RegisterSetupError::Refused)?;
    MappedRegister::map(register)
}

/// The `acpi` crate's view of a Generic Address Structure, back in the firmware's terms.
fn generic_address(gas: &acpi::address::GenericAddress) -> GenericAddress {
    use acpi::address::AddressSpace;
    let space_id = match gas.address_space {
        AddressSpace::SystemMemory => 0x00,
        AddressSpace::SystemIo => 0x01,
        AddressSpace::PciConfigSpace => 0x02,
        AddressSpace::EmbeddedController => 0x03,
        AddressSpace::SMBus => 0x04,
        AddressSpace::SystemCmos => 0x05,
        AddressSpace::PciBarTarget => 0x06,
        AddressSpace::Ipmi => 0x07,
        AddressSpace::GeneralIo => 0x08,
        AddressSpace::GenericSerialBus => 0x09,
        AddressSpace::PlatformCommunicationsChannel => 0x0a,
        AddressSpace::FunctionalFixedHardware => 0x7f,
        AddressSpace::OemDefined(id) => id,
    };
    GenericAddress {
        space_id,
        bit_width: gas.bit_width,
        bit_offset: gas.bit_offset,
        access_size: gas.access_size,
        address: gas.address,
    }
}

fn write_port(port: u64, value: Value) -> Result<(), RegisterError> {
    // `Register::io` keeps the whole access below port 0x10000.
    let port = port as u16;
    match value {
        // SAFETY: a port the firmware names for this register, checked by `Register::io`;
        // a port write touches no memory.
        Value::Byte(v) => unsafe { Port::<u8>::new(port).write(v) },
        // SAFETY: as for a byte.
        Value::Word(v) => unsafe { Port::<u16>::new(port).write(v) },
        // SAFETY: as for a byte.
        Value::DWord(v) => unsafe { Port::<u32>::new(port).write(v) },
        // `Register::io` never accepts a 64-bit port register.
        Value::QWord(_) => {
            return Err(RegisterError::BadPort {
                address: u64::from(port),
                width: Width::QWord,
            })
        }
    }
    Ok(())
}

fn read_port(port: u16, width: Width) -> u64 {
    match width {
        // SAFETY: as in `write_port`; a port read touches no memory.
        Width::Byte => u64::from(unsafe { Port::<u8>::new(port).read() }),
        // SAFETY: as for a byte.
        Width::Word => u64::from(unsafe { Port::<u16>::new(port).read() }),
        // SAFETY: as for a byte.
        Width::DWord => u64::from(unsafe { Port::<u32>::new(port).read() }),
        Width::QWord => u64::MAX,
    }
}

fn write_memory(paddr: u64, value: Value) {
    match value {
        // SAFETY: `MappedRegister::map` mapped `paddr` uncached (identity) for the register's
        // width, and `Register::memory` checked it is naturally aligned and not 0.
        Value::Byte(v) => unsafe { core::ptr::write_volatile(paddr as *mut u8, v) },
        // SAFETY: as for a byte.
        Value::Word(v) => unsafe { core::ptr::write_volatile(paddr as *mut u16, v) },
        // SAFETY: as for a byte.
        Value::DWord(v) => unsafe { core::ptr::write_volatile(paddr as *mut u32, v) },
        // SAFETY: as for a byte.
        Value::QWord(v) => unsafe { core::ptr::write_volatile(paddr as *mut u64, v) },
    }
}

fn read_memory(paddr: u64, width: Width) -> u64 {
    match width {
        // SAFETY: as in `write_memory`.
        Width::Byte => u64::from(unsafe { core::ptr::read_volatile(paddr as *const u8) }),
        // SAFETY: as in `write_memory`.
        Width::Word => u64::from(unsafe { core::ptr::read_volatile(paddr as *const u16) }),
        // SAFETY: as in `write_memory`.
        Width::DWord => u64::from(unsafe { core::ptr::read_volatile(paddr as *const u32) }),
        // SAFETY: as in `write_memory`.
        Width::QWord => unsafe { core::ptr::read_volatile(paddr as *const u64) },
    }
}
