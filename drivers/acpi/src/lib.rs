//! ACPI power management without an AML interpreter.
//!
//! Table discovery (RSDP, MADT, MCFG, FADT) is the `acpi` crate's job in the kernel. Powering
//! off needs one value that lives in AML, not in a table: `SLP_TYPa` from the `\_S5` package
//! in the DSDT. The `acpi` crate's AML interpreter does not build on stable without its
//! allocator-heavy feature set, and a full interpreter is far more than this needs, so we
//! find the package by its byte pattern, as most small kernels do. Firmware that computes
//! `_S5` with a method instead of a package is reported as [`S5Error::NotAPackage`].
//!
//! [`register`] decides whether a register the firmware names (PM1 control, reset) is one
//! the kernel may touch, and with which access.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod register;

/// Why the S5 sleep type could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S5Error {
    /// No `_S5_` name object in the AML.
    Missing,
    /// `_S5_` exists but is not a literal package.
    NotAPackage,
    /// The package is cut short or holds something other than integer constants.
    Malformed,
}

/// The sleep-type values for S5 (soft off) for the PM1a and PM1b control registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepType {
    pub pm1a: u8,
    pub pm1b: u8,
}

impl SleepType {
    /// Value to write to PM1a_CNT: SLP_TYP in bits 10..13, SLP_EN (bit 13).
    pub const fn pm1a_control(self) -> u16 {
        ((self.pm1a as u16 & 0x7) << 10) | (1 << 13)
    }
    pub const fn pm1b_control(self) -> u16 {
        ((self.pm1b as u16 & 0x7) << 10) | (1 << 13)
    }
}

const NAME_OP: u8 = 0x08;
const ROOT_CHAR: u8 = b'\\';
const PACKAGE_OP: u8 = 0x12;

/// Finds `Name(_S5_, Package() { a, b, ... })` in DSDT/SSDT AML bytes.
pub fn s5_sleep_type(aml: &[u8]) -> Result<SleepType, S5Error> {
    let mut found_name = false;
    for at in aml
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"_S5_")
        .map(|(i, _)| i)
    {
        let is_name = match at {
            0 => false,
            1 => aml[0] == NAME_OP,
            _ => aml[at - 1] == NAME_OP || (aml[at - 1] == ROOT_CHAR && aml[at - 2] == NAME_OP),
        };
        if !is_name {
            continue;
        }
        found_name = true;
        let rest = aml.get(at + 4..).ok_or(S5Error::Malformed)?;
        if rest.first() != Some(&PACKAGE_OP) {
            continue;
        }
        return parse_package(&rest[1..]);
    }
    Err(if found_name {
        S5Error::NotAPackage
    } else {
        S5Error::Missing
    })
}

fn parse_package(bytes: &[u8]) -> Result<SleepType, S5Error> {
    let lead = *bytes.first().ok_or(S5Error::Malformed)?;
    // PkgLength: the top two bits of the lead byte count the extra length bytes.
    let extra = usize::from(lead >> 6);
    let mut pos = 1 + extra;
    let count = *bytes.get(pos).ok_or(S5Error::Malformed)?;
    pos += 1;
    if count < 1 {
        return Err(S5Error::Malformed);
    }
    let pm1a = integer(bytes, &mut pos)?;
    // Some firmware lists only one value; PM1b then takes the same one.
    let pm1b = if count >= 2 {
        integer(bytes, &mut pos)?
    } else {
        pm1a
    };
    Ok(SleepType { pm1a, pm1b })
}

fn integer(bytes: &[u8], pos: &mut usize) -> Result<u8, S5Error> {
    let op = *bytes.get(*pos).ok_or(S5Error::Malformed)?;
    *pos += 1;
    let value = match op {
        0x00 => 0,    // ZeroOp
        0x01 => 1,    // OneOp
        0xff => 0xff, // OnesOp
        0x0a => {
            // BytePrefix
            let v = *bytes.get(*pos).ok_or(S5Error::Malformed)?;
            *pos += 1;
            v
        }
        0x0b => {
            // WordPrefix: only the low bits matter for a 3-bit field.
            let v = *bytes.get(*pos).ok_or(S5Error::Malformed)?;
            *pos += 2;
            v
        }
        _ => return Err(S5Error::Malformed),
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_style_package_with_zero_ops() {
        // Name (\_S5, Package (0x04) { Zero, Zero, Zero, Zero })
        let aml = [
            0x10, 0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0, 0, 0, 0,
        ];
        assert_eq!(s5_sleep_type(&aml), Ok(SleepType { pm1a: 0, pm1b: 0 }));
    }

    #[test]
    fn byte_prefixed_values() {
        // Name (_S5, Package (0x02) { 0x05, 0x05 })
        let aml = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x02, 0x0a, 0x05, 0x0a, 0x07,
        ];
        let t = s5_sleep_type(&aml).unwrap();
        assert_eq!(t, SleepType { pm1a: 5, pm1b: 7 });
        assert_eq!(t.pm1a_control(), 0x3400);
    }

    #[test]
    fn skips_references_that_are_not_name_definitions() {
        // A method calling _S5_ first, then the real definition.
        let aml = [
            0x14, b'_', b'S', b'5', b'_', 0x00, 0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x01,
            0x0a, 0x03,
        ];
        assert_eq!(s5_sleep_type(&aml), Ok(SleepType { pm1a: 3, pm1b: 3 }));
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(
            s5_sleep_type(b"no sleep states here"),
            Err(S5Error::Missing)
        );
        assert_eq!(
            s5_sleep_type(&[0x08, b'_', b'S', b'5', b'_', 0x14]),
            Err(S5Error::NotAPackage)
        );
        assert_eq!(
            s5_sleep_type(&[0x08, b'_', b'S', b'5', b'_', 0x12]),
            Err(S5Error::Malformed)
        );
        assert_eq!(
            s5_sleep_type(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x0a]),
            Err(S5Error::Malformed)
        );
        assert_eq!(
            s5_sleep_type(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x77]),
            Err(S5Error::Malformed)
        );
        assert_eq!(s5_sleep_type(b"_S5_"), Err(S5Error::Missing));
    }
}
