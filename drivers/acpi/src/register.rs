//! Which firmware-named registers Keel will touch, and how.
//!
//! The FADT names the PM1 control registers and the reset register with Generic Address
//! Structures (ACPI 6.5, §5.2.3.2): an address space, a register bit width and bit offset,
//! an access size and a 64-bit address. All of it is the firmware's claim. Before the kernel
//! writes such a register, [`Register::from_generic`] turns the claim into one access Keel
//! can perform — a port of the I/O space or a naturally aligned location the kernel can map
//! — or refuses with a [`RegisterError`]. The kernel then maps a memory register uncached
//! (or gives up on it) before the first access; this module is the decision, the kernel
//! does the access.
//!
//! Only whole registers read or written with one access are supported: a register with a
//! bit offset, or one wider than its access size, would need read-modify-write or several
//! accesses, and none of the registers Keel uses is laid out like that on real firmware.
//! Following ACPICA, the register's own bit width decides the access when it is a native
//! size; the access size only has to allow it.

use core::fmt;

/// Address space IDs of a Generic Address Structure that Keel can reach.
pub mod space {
    /// System memory: the register is at a physical address.
    pub const SYSTEM_MEMORY: u8 = 0x00;
    /// System I/O: the register is an x86 I/O port.
    pub const SYSTEM_IO: u8 = 0x01;
}

/// A Generic Address Structure as the firmware wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenericAddress {
    /// Address space ID (see [`space`]).
    pub space_id: u8,
    /// Size of the register in bits.
    pub bit_width: u8,
    /// Bit offset of the register at `address`.
    pub bit_offset: u8,
    /// 0 undefined, 1 byte, 2 word, 3 dword, 4 qword.
    pub access_size: u8,
    pub address: u64,
}

/// Width of one access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Width {
    Byte,
    Word,
    DWord,
    QWord,
}

impl Width {
    pub const fn bytes(self) -> u64 {
        match self {
            Width::Byte => 1,
            Width::Word => 2,
            Width::DWord => 4,
            Width::QWord => 8,
        }
    }

    pub const fn bits(self) -> u32 {
        self.bytes() as u32 * 8
    }

    /// The width of a register of `bits` bits, when that is one native access.
    pub const fn from_bits(bits: u8) -> Option<Width> {
        match bits {
            8 => Some(Width::Byte),
            16 => Some(Width::Word),
            32 => Some(Width::DWord),
            64 => Some(Width::QWord),
            _ => None,
        }
    }

    /// The width an access-size field names; `Ok(None)` for "undefined" (0).
    fn from_access_size(access_size: u8) -> Result<Option<Width>, RegisterError> {
        match access_size {
            0 => Ok(None),
            1 => Ok(Some(Width::Byte)),
            2 => Ok(Some(Width::Word)),
            3 => Ok(Some(Width::DWord)),
            4 => Ok(Some(Width::QWord)),
            _ => Err(RegisterError::BadAccessSize { access_size }),
        }
    }
}

/// Where a register is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// An I/O port (`address` is at most `0xffff`).
    Io,
    /// A physical address, naturally aligned and below the caller's mappable limit.
    Memory,
}

/// A register Keel may access: one access of `width` at `address` in `space`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register {
    space: Space,
    address: u64,
    width: Width,
}

/// A value sized for one access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Byte(u8),
    Word(u16),
    DWord(u32),
    QWord(u64),
}

/// Why a firmware-named register will not be touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The address is 0: the firmware does not implement the register.
    Absent,
    /// An address space other than system memory or system I/O (PCI configuration space,
    /// embedded controller, functional fixed hardware…).
    UnsupportedSpace { space_id: u8 },
    /// An access size field outside 0..=4.
    BadAccessSize { access_size: u8 },
    /// The register starts at a bit offset: writing it would need read-modify-write.
    PartialRegister { bit_offset: u8, bit_width: u8 },
    /// The bit width is not one native access (8, 16, 32 or 64).
    BadWidth { bit_width: u8 },
    /// The access size is narrower than the register: it would take several accesses.
    SeveralAccesses { bit_width: u8, access_size: u8 },
    /// An I/O register reaching past port `0xffff`, or 64 bits wide (x86 has no 64-bit
    /// port access).
    BadPort { address: u64, width: Width },
    /// A memory register not aligned to its width.
    Misaligned { address: u64, width: Width },
    /// A memory register at or beyond what the kernel can map.
    OutOfReach { address: u64, limit: u64 },
    /// A value that does not fit in the register.
    ValueTooWide { value: u64, width: Width },
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RegisterError::Absent => write!(f, "the register is not implemented (address 0)"),
            RegisterError::UnsupportedSpace { space_id } => {
                write!(f, "address space {space_id:#x} is not supported")
            }
            RegisterError::BadAccessSize { access_size } => {
                write!(f, "access size {access_size} is not defined")
            }
            RegisterError::PartialRegister {
                bit_offset,
                bit_width,
            } => write!(
                f,
                "a {bit_width}-bit register at bit offset {bit_offset} needs read-modify-write"
            ),
            RegisterError::BadWidth { bit_width } => {
                write!(f, "a {bit_width}-bit register is not one native access")
            }
            RegisterError::SeveralAccesses {
                bit_width,
                access_size,
            } => write!(
                f,
                "a {bit_width}-bit register with access size {access_size} needs several accesses"
            ),
            RegisterError::BadPort { address, width } => {
                write!(f, "no {}-bit I/O access at port {address:#x}", width.bits())
            }
            RegisterError::Misaligned { address, width } => write!(
                f,
                "{address:#x} is not aligned for a {}-bit access",
                width.bits()
            ),
            RegisterError::OutOfReach { address, limit } => {
                write!(f, "{address:#x} is beyond the mappable limit {limit:#x}")
            }
            RegisterError::ValueTooWide { value, width } => {
                write!(f, "{value:#x} does not fit a {}-bit register", width.bits())
            }
        }
    }
}

impl Register {
    /// The one access that reads or writes the register `gas` names, or why there is none.
    /// A memory register must end at or below `mappable_below` (the kernel's identity map
    /// ends there).
    pub fn from_generic(
        gas: GenericAddress,
        mappable_below: u64,
    ) -> Result<Register, RegisterError> {
        if gas.address == 0 {
            return Err(RegisterError::Absent);
        }
        if gas.space_id != space::SYSTEM_IO && gas.space_id != space::SYSTEM_MEMORY {
            return Err(RegisterError::UnsupportedSpace {
                space_id: gas.space_id,
            });
        }
        let access = Width::from_access_size(gas.access_size)?;
        if gas.bit_offset != 0 {
            return Err(RegisterError::PartialRegister {
                bit_offset: gas.bit_offset,
                bit_width: gas.bit_width,
            });
        }
        let width = Width::from_bits(gas.bit_width).ok_or(RegisterError::BadWidth {
            bit_width: gas.bit_width,
        })?;
        if access.is_some_and(|access| access < width) {
            return Err(RegisterError::SeveralAccesses {
                bit_width: gas.bit_width,
                access_size: gas.access_size,
            });
        }
        if gas.space_id == space::SYSTEM_IO {
            Register::io(gas.address, width)
        } else {
            Register::memory(gas.address, width, mappable_below)
        }
    }

    /// An I/O port register: the whole access within ports `0..=0xffff`, at most 32 bits.
    pub fn io(port: u64, width: Width) -> Result<Register, RegisterError> {
        if port == 0 {
            return Err(RegisterError::Absent);
        }
        let last = port.checked_add(width.bytes() - 1);
        if width == Width::QWord || last.is_none_or(|last| last > 0xffff) {
            return Err(RegisterError::BadPort {
                address: port,
                width,
            });
        }
        Ok(Register {
            space: Space::Io,
            address: port,
            width,
        })
    }

    /// A memory register: naturally aligned, not at 0, and ending at or below
    /// `mappable_below`. Also the check for a system-memory access AML asks for.
    pub fn memory(
        paddr: u64,
        width: Width,
        mappable_below: u64,
    ) -> Result<Register, RegisterError> {
        if paddr == 0 {
            return Err(RegisterError::Absent);
        }
        if !paddr.is_multiple_of(width.bytes()) {
            return Err(RegisterError::Misaligned {
                address: paddr,
                width,
            });
        }
        if paddr
            .checked_add(width.bytes())
            .is_none_or(|end| end > mappable_below)
        {
            return Err(RegisterError::OutOfReach {
                address: paddr,
                limit: mappable_below,
            });
        }
        Ok(Register {
            space: Space::Memory,
            address: paddr,
            width,
        })
    }

    pub fn space(&self) -> Space {
        self.space
    }

    /// The port or physical address.
    pub fn address(&self) -> u64 {
        self.address
    }

    pub fn width(&self) -> Width {
        self.width
    }

    /// `value` sized for this register, or [`RegisterError::ValueTooWide`].
    pub fn value(&self, value: u64) -> Result<Value, RegisterError> {
        let too_wide = RegisterError::ValueTooWide {
            value,
            width: self.width,
        };
        Ok(match self.width {
            Width::Byte => Value::Byte(u8::try_from(value).map_err(|_| too_wide)?),
            Width::Word => Value::Word(u16::try_from(value).map_err(|_| too_wide)?),
            Width::DWord => Value::DWord(u32::try_from(value).map_err(|_| too_wide)?),
            Width::QWord => Value::QWord(value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 47;

    fn gas(space_id: u8, bit_width: u8, access_size: u8, address: u64) -> GenericAddress {
        GenericAddress {
            space_id,
            bit_width,
            bit_offset: 0,
            access_size,
            address,
        }
    }

    #[test]
    fn io_registers_as_qemu_and_legacy_fadts_name_them() {
        // PM1a control from the legacy 32-bit field (access size undefined) and the reset
        // register at 0xcf9 with byte access.
        let pm1a = Register::from_generic(gas(space::SYSTEM_IO, 16, 0, 0x604), LIMIT).unwrap();
        assert_eq!(
            (pm1a.space(), pm1a.address(), pm1a.width()),
            (Space::Io, 0x604, Width::Word)
        );
        let reset = Register::from_generic(gas(space::SYSTEM_IO, 8, 1, 0xcf9), LIMIT).unwrap();
        assert_eq!((reset.address(), reset.width()), (0xcf9, Width::Byte));
        // A wider access size is allowed; the register's own width decides.
        let wide = Register::from_generic(gas(space::SYSTEM_IO, 16, 3, 0x604), LIMIT).unwrap();
        assert_eq!(wide.width(), Width::Word);
    }

    #[test]
    fn memory_registers_must_be_aligned_and_mappable() {
        let ok = Register::from_generic(gas(space::SYSTEM_MEMORY, 32, 3, 0xfed0_0f00), LIMIT);
        assert_eq!(
            ok.map(|r| (r.space(), r.width())),
            Ok((Space::Memory, Width::DWord))
        );
        assert_eq!(
            Register::from_generic(gas(space::SYSTEM_MEMORY, 32, 3, 0xfed0_0f02), LIMIT),
            Err(RegisterError::Misaligned {
                address: 0xfed0_0f02,
                width: Width::DWord
            })
        );
        assert!(Register::memory(LIMIT - 2, Width::Word, LIMIT).is_ok());
        for address in [LIMIT, LIMIT + 0x1000, u64::MAX - 1] {
            assert_eq!(
                Register::from_generic(gas(space::SYSTEM_MEMORY, 16, 2, address), LIMIT),
                Err(RegisterError::OutOfReach {
                    address,
                    limit: LIMIT
                })
            );
        }
        assert!(Register::memory(LIMIT - 8, Width::QWord, LIMIT).is_ok());
        assert_eq!(
            Register::memory(0, Width::Byte, LIMIT),
            Err(RegisterError::Absent)
        );
    }

    #[test]
    fn unsupported_layouts_are_refused() {
        assert_eq!(
            Register::from_generic(gas(space::SYSTEM_IO, 16, 0, 0), LIMIT),
            Err(RegisterError::Absent)
        );
        assert_eq!(
            Register::from_generic(gas(0x02, 16, 0, 0x40), LIMIT),
            Err(RegisterError::UnsupportedSpace { space_id: 0x02 })
        );
        assert_eq!(
            Register::from_generic(gas(0x7f, 16, 0, 0x40), LIMIT),
            Err(RegisterError::UnsupportedSpace { space_id: 0x7f })
        );
        assert_eq!(
            Register::from_generic(gas(space::SYSTEM_IO, 16, 5, 0x604), LIMIT),
            Err(RegisterError::BadAccessSize { access_size: 5 })
        );
        let offset = GenericAddress {
            bit_offset: 4,
            ..gas(space::SYSTEM_IO, 8, 1, 0x604)
        };
        assert_eq!(
            Register::from_generic(offset, LIMIT),
            Err(RegisterError::PartialRegister {
                bit_offset: 4,
                bit_width: 8
            })
        );
        for bit_width in [0, 12, 24, 128] {
            assert_eq!(
                Register::from_generic(gas(space::SYSTEM_IO, bit_width, 0, 0x604), LIMIT),
                Err(RegisterError::BadWidth { bit_width })
            );
        }
        assert_eq!(
            Register::from_generic(gas(space::SYSTEM_IO, 16, 1, 0x604), LIMIT),
            Err(RegisterError::SeveralAccesses {
                bit_width: 16,
                access_size: 1
            })
        );
    }

    #[test]
    fn ports_stay_inside_the_io_space() {
        assert!(Register::from_generic(gas(space::SYSTEM_IO, 32, 0, 0xfffc), LIMIT).is_ok());
        for (bits, address) in [(32, 0xfffd), (8, 0x1_0000), (64, 0x600)] {
            let width = Width::from_bits(bits).unwrap();
            assert_eq!(
                Register::from_generic(gas(space::SYSTEM_IO, bits, 0, address), LIMIT),
                Err(RegisterError::BadPort { address, width })
            );
        }
    }

    #[test]
    fn values_must_fit_the_register() {
        let word = Register::io(0x604, Width::Word).unwrap();
        assert_eq!(word.value(0x3400), Ok(Value::Word(0x3400)));
        assert_eq!(
            word.value(0x1_0000),
            Err(RegisterError::ValueTooWide {
                value: 0x1_0000,
                width: Width::Word
            })
        );
        let byte = Register::io(0xcf9, Width::Byte).unwrap();
        assert_eq!(byte.value(0x0e), Ok(Value::Byte(0x0e)));
        assert!(byte.value(0x100).is_err());
        let qword = Register::memory(0x1000, Width::QWord, LIMIT).unwrap();
        assert_eq!(qword.value(u64::MAX), Ok(Value::QWord(u64::MAX)));
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = RegisterError::Misaligned {
            address: 0x1002,
            width: Width::DWord,
        };
        assert_eq!(e.to_string(), "0x1002 is not aligned for a 32-bit access");
    }
}
