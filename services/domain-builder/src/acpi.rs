//! The ACPI tables a PVH guest gets (libxl always builds them, `tools/libacpi`): RSDP →
//! XSDT/RSDT → FADT (→ FACS, DSDT) and MADT.
//!
//! Linux needs them to bring up more than one vCPU (it enumerates CPUs from the MADT: one
//! local APIC per vCPU, APIC id `2 × vcpu` as Xen's CPUID policy reports), and to recognise
//! a PVH guest that did not enter through the PVH note (after pvgrub): the FADT's
//! `iapc_boot_arch` says no VGA and no CMOS RTC. The DSDT holds one processor object per
//! vCPU, matched to the MADT by processor id. Fixed values are libacpi's.

use alloc::vec::Vec;

/// `ACPI_OEM_ID`, `ACPI_OEM_TABLE_ID` of libacpi.
const OEM_ID: &[u8; 6] = b"Xen\0\0\0";
const OEM_TABLE_ID: &[u8; 8] = b"HVM\0\0\0\0\0";
/// `ACPI_CREATOR_ID` ('HVML') and revision 0.
const CREATOR_ID: &[u8; 4] = b"HVML";

/// Local APIC base every vCPU sees.
pub const LAPIC_BASE: u32 = 0xfee0_0000;
/// More vCPUs than this would need x2APIC entries (APIC ids above 254).
pub const MAX_VCPUS: u32 = 127;

const HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;
const FACS_LEN: usize = 64;
/// ACPI 5.0 FADT.
const FADT_LEN: usize = 268;

/// `iapc_boot_arch` bits.
pub const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
pub const BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;

/// The tables laid out for guest-physical address `base`, and where the RSDP is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Guest-physical address of `bytes[0]`.
    pub base: u64,
    pub bytes: Vec<u8>,
    /// What `hvm_start_info.rsdp_paddr` must say.
    pub rsdp_paddr: u64,
}

/// Why tables could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// Zero vCPUs, or more than [`MAX_VCPUS`].
    VcpuCount(u32),
    /// The tables must sit below 4 GiB (the RSDT and FADT hold 32-bit pointers).
    BaseAbove4G(u64),
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiError::VcpuCount(n) => write!(f, "{n} vCPUs: ACPI tables support 1 to {MAX_VCPUS}"),
            AcpiError::BaseAbove4G(b) => write!(f, "ACPI tables at {b:#x} would cross 4 GiB"),
        }
    }
}

/// The local APIC id of vCPU `vcpu` (what Xen's default CPUID policy gives it).
pub fn apic_id(vcpu: u32) -> u32 {
    vcpu * 2
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A table under construction: the standard header, then `body`.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&0u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// `PkgLength` of AML: the length of what follows the opcode, this encoding included.
fn pkg_length(content: usize) -> Vec<u8> {
    for extra in 0..4usize {
        let total = content + 1 + extra;
        let fits = match extra {
            0 => total < 1 << 6,
            1 => total < 1 << 12,
            2 => total < 1 << 20,
            _ => total < 1 << 28,
        };
        if fits {
            if extra == 0 {
                return alloc::vec![total as u8];
            }
            let mut out = alloc::vec![((extra as u8) << 6) | (total & 0xf) as u8];
            for i in 0..extra {
                out.push((total >> (4 + 8 * i)) as u8);
            }
            return out;
        }
    }
    // 2^28 bytes of AML is far beyond 127 processor objects.
    alloc::vec![0]
}

/// The DSDT's AML: `Scope (\_SB) { Processor (Pxxx, i, 0, 0) {} ... }`.
fn dsdt_aml(vcpus: u32) -> Vec<u8> {
    let mut processors = Vec::new();
    for i in 0..vcpus {
        processors.extend_from_slice(&[0x5b, 0x83]); // ProcessorOp
        processors.extend_from_slice(&pkg_length(10));
        let hex = |n: u32| b"0123456789ABCDEF"[(n & 0xf) as usize];
        processors.extend_from_slice(&[b'P', hex(i >> 8), hex(i >> 4), hex(i)]);
        processors.push(i as u8); // ProcID, matches the MADT's processor id
        processors.extend_from_slice(&0u32.to_le_bytes()); // PblkAddr: none
        processors.push(0); // PblkLen
    }
    let name = b"\\_SB_";
    let mut aml = alloc::vec![0x10]; // ScopeOp
    aml.extend_from_slice(&pkg_length(name.len() + processors.len()));
    aml.extend_from_slice(name);
    aml.extend_from_slice(&processors);
    aml
}

fn madt_body(vcpus: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_BASE.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT, as libacpi
    for i in 0..vcpus {
        // Processor Local APIC: type 0, length 8, processor id, APIC id, flags (enabled).
        body.extend_from_slice(&[0, 8, i as u8, apic_id(i) as u8]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    body
}

/// Generic Address Structure in system I/O space.
fn gas_io(bit_width: u8, address: u64) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bit_width;
    g[3] = if bit_width == 0 { 0 } else { 1 }; // byte access
    g[4..].copy_from_slice(&address.to_le_bytes());
    g
}

fn fadt_body(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut b = alloc::vec![0u8; FADT_LEN - HEADER_LEN];
    let at = |offset: usize| offset - HEADER_LEN;
    let put = |b: &mut Vec<u8>, offset: usize, bytes: &[u8]| {
        b[at(offset)..at(offset) + bytes.len()].copy_from_slice(bytes);
    };
    const PM1A_EVT: u32 = 0xb000;
    const PM1A_CNT: u32 = PM1A_EVT + 4;
    const PM_TMR: u32 = PM1A_EVT + 8;
    const GPE0: u32 = 0xafe0;
    put(&mut b, 36, &(facs as u32).to_le_bytes());
    put(&mut b, 40, &(dsdt as u32).to_le_bytes());
    put(&mut b, 46, &9u16.to_le_bytes()); // SCI_INT
    put(&mut b, 56, &PM1A_EVT.to_le_bytes());
    put(&mut b, 64, &PM1A_CNT.to_le_bytes());
    put(&mut b, 76, &PM_TMR.to_le_bytes());
    put(&mut b, 80, &GPE0.to_le_bytes());
    put(&mut b, 88, &[4, 2, 0, 4, 4]); // PM1_EVT_LEN, PM1_CNT_LEN, PM2, PM_TMR_LEN, GPE0_LEN
    put(&mut b, 96, &0x0fffu16.to_le_bytes()); // no C2
    put(&mut b, 98, &0x0fffu16.to_le_bytes()); // no C3
    put(
        &mut b,
        109,
        &(BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC).to_le_bytes(),
    );
    // WBINVD | PROC_C1 | FIX_RTC | TMR_VAL_EXT | USE_PLATFORM_CLOCK
    let flags: u32 = 1 | 1 << 2 | 1 << 6 | 1 << 8 | 1 << 15;
    put(&mut b, 112, &flags.to_le_bytes());
    put(&mut b, 116, &gas_io(8, 0xcf9)); // RESET_REG
    put(&mut b, 128, &[6]); // RESET_VALUE
    put(&mut b, 132, &facs.to_le_bytes()); // X_FIRMWARE_CTRL
    put(&mut b, 140, &dsdt.to_le_bytes()); // X_DSDT
    put(&mut b, 148, &gas_io(32, u64::from(PM1A_EVT)));
    put(&mut b, 172, &gas_io(16, u64::from(PM1A_CNT)));
    put(&mut b, 208, &gas_io(32, u64::from(PM_TMR)));
    b
}

fn align(value: usize, to: usize) -> usize {
    value.div_ceil(to) * to
}

/// Builds the tables for `vcpus` vCPUs, laid out from guest-physical `base`.
pub fn build(base: u64, vcpus: u32) -> Result<AcpiTables, AcpiError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(AcpiError::VcpuCount(vcpus));
    }
    // Layout: RSDP, FACS (64-byte aligned), DSDT, FADT, MADT, RSDT, XSDT; 16-byte aligned.
    let dsdt = table(b"DSDT", 2, &dsdt_aml(vcpus));
    let madt = table(b"APIC", 2, &madt_body(vcpus));
    let rsdp_off = 0;
    let facs_off = 64;
    let dsdt_off = facs_off + FACS_LEN;
    let fadt_off = align(dsdt_off + dsdt.len(), 16);
    let madt_off = align(fadt_off + FADT_LEN, 16);
    let rsdt_off = align(madt_off + madt.len(), 16);
    let rsdt_len = HEADER_LEN + 2 * 4;
    let xsdt_off = align(rsdt_off + rsdt_len, 16);
    let end = xsdt_off + HEADER_LEN + 2 * 8;
    let last = base
        .checked_add(end as u64)
        .ok_or(AcpiError::BaseAbove4G(base))?;
    if last > 1 << 32 {
        return Err(AcpiError::BaseAbove4G(base));
    }
    let addr = |off: usize| base + off as u64;

    let mut facs = alloc::vec![0u8; FACS_LEN];
    facs[..4].copy_from_slice(b"FACS");
    facs[4..8].copy_from_slice(&(FACS_LEN as u32).to_le_bytes());
    facs[32] = 1; // version (ACPI 2.0 FACS)
    let fadt = table(b"FACP", 5, &fadt_body(addr(facs_off), addr(dsdt_off)));
    let mut rsdt_body = Vec::new();
    let mut xsdt_body = Vec::new();
    for off in [fadt_off, madt_off] {
        rsdt_body.extend_from_slice(&(addr(off) as u32).to_le_bytes());
        xsdt_body.extend_from_slice(&addr(off).to_le_bytes());
    }
    let rsdt = table(b"RSDT", 1, &rsdt_body);
    let xsdt = table(b"XSDT", 1, &xsdt_body);

    let mut rsdp = alloc::vec![0u8; RSDP_LEN];
    rsdp[..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(OEM_ID);
    rsdp[15] = 2; // revision: ACPI 2.0+, has the XSDT
    rsdp[16..20].copy_from_slice(&(addr(rsdt_off) as u32).to_le_bytes());
    rsdp[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    rsdp[24..32].copy_from_slice(&addr(xsdt_off).to_le_bytes());
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);

    let mut bytes = alloc::vec![0u8; end];
    for (off, t) in [
        (rsdp_off, &rsdp),
        (facs_off, &facs),
        (dsdt_off, &dsdt),
        (fadt_off, &fadt),
        (madt_off, &madt),
        (rsdt_off, &rsdt),
        (xsdt_off, &xsdt),
    ] {
        bytes[off..off + t.len()].copy_from_slice(t);
    }
    Ok(AcpiTables {
        base,
        bytes,
        rsdp_paddr: addr(rsdp_off),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xfc00_1000;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The table at guest address `addr`, checked: signature, length, checksum.
    fn table_at<'a>(t: &'a AcpiTables, addr: u64, signature: &[u8; 4]) -> &'a [u8] {
        let off = (addr - t.base) as usize;
        let len = u32_at(&t.bytes, off + 4) as usize;
        let table = &t.bytes[off..off + len];
        assert_eq!(&table[..4], signature);
        assert_eq!(
            table.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "{signature:?} checksum"
        );
        table
    }

    #[test]
    fn rsdp_leads_to_every_table_with_valid_checksums() {
        let t = build(BASE, 4).unwrap();
        assert_eq!(t.rsdp_paddr, BASE);
        let rsdp = &t.bytes[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(rsdp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(rsdp[15], 2);
        let xsdt = table_at(&t, u64_at(rsdp, 24), b"XSDT");
        let rsdt = table_at(&t, u64::from(u32_at(rsdp, 16)), b"RSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        let fadt = table_at(&t, u64_at(xsdt, 36), b"FACP");
        let madt = table_at(&t, u64_at(xsdt, 44), b"APIC");
        assert_eq!(u64::from(u32_at(rsdt, 36)), u64_at(xsdt, 36));
        assert_eq!(u64::from(u32_at(rsdt, 40)), u64_at(xsdt, 44));
        assert_eq!(fadt.len(), 268);
        assert_eq!(fadt[8], 5);
        let dsdt = table_at(&t, u64_at(fadt, 140), b"DSDT");
        assert_eq!(u64::from(u32_at(fadt, 40)), u64_at(fadt, 140));
        let facs = u64_at(fadt, 132);
        assert_eq!(facs % 64, 0);
        assert_eq!(&t.bytes[(facs - BASE) as usize..][..4], b"FACS");
        // iapc_boot_arch: what Linux checks to recognise PVH.
        assert_eq!(
            u16::from_le_bytes([fadt[109], fadt[110]]),
            BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC
        );
        assert!(dsdt.len() > 36);
        assert_eq!(u32_at(madt, 36), LAPIC_BASE);
    }

    #[test]
    fn madt_has_one_enabled_lapic_per_vcpu_with_even_ids() {
        let t = build(BASE, 3).unwrap();
        let xsdt = table_at(&t, u64_at(&t.bytes, 24), b"XSDT");
        let madt = table_at(&t, u64_at(xsdt, 44), b"APIC");
        let entries = &madt[44..];
        assert_eq!(entries.len(), 3 * 8);
        for (i, e) in entries.chunks(8).enumerate() {
            assert_eq!(e[0], 0, "type LAPIC");
            assert_eq!(e[1], 8);
            assert_eq!(e[2], i as u8, "processor id");
            assert_eq!(e[3], 2 * i as u8, "APIC id");
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
    }

    #[test]
    fn dsdt_declares_one_processor_per_vcpu() {
        for vcpus in [1, 5, 127] {
            let t = build(BASE, vcpus).unwrap();
            let xsdt = table_at(&t, u64_at(&t.bytes, 24), b"XSDT");
            let fadt = table_at(&t, u64_at(xsdt, 36), b"FACP");
            let dsdt = table_at(&t, u64_at(fadt, 140), b"DSDT");
            let aml = &dsdt[36..];
            assert_eq!(aml[0], 0x10, "ScopeOp");
            // The scope's PkgLength covers the rest of the AML exactly.
            let lead = aml[1];
            let extra = usize::from(lead >> 6);
            let mut len = if extra == 0 {
                usize::from(lead & 0x3f)
            } else {
                usize::from(lead & 0xf)
            };
            for i in 0..extra {
                len |= usize::from(aml[2 + i]) << (4 + 8 * i);
            }
            assert_eq!(len, aml.len() - 1);
            let body = &aml[2 + extra..];
            assert_eq!(&body[..5], b"\\_SB_");
            let procs = &body[5..];
            assert_eq!(procs.len(), vcpus as usize * 13);
            for (i, p) in procs.chunks(13).enumerate() {
                assert_eq!(&p[..3], &[0x5b, 0x83, 11]);
                assert_eq!(p[3], b'P');
                assert_eq!(p[7], i as u8);
            }
        }
    }

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(10), [11]);
        assert_eq!(pkg_length(62), [63]);
        // 63 + 2 = 65 = 0x41: two bytes.
        assert_eq!(pkg_length(63), [0x41, 0x04]);
        // 5000 + 3 = 5003 = 0x138b: three bytes.
        assert_eq!(pkg_length(5000), [0x8b, 0x38, 0x01]);
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(build(BASE, 0), Err(AcpiError::VcpuCount(0)));
        assert_eq!(build(BASE, 128), Err(AcpiError::VcpuCount(128)));
        assert_eq!(
            build(0xffff_ff00, 1),
            Err(AcpiError::BaseAbove4G(0xffff_ff00))
        );
    }
}
