//! Detecting Xen from raw CPUID results (`xen/include/public/arch-x86/cpuid.h`).
//!
//! The kernel passes a closure that executes `cpuid(leaf, subleaf)`; everything else is
//! pure, so detection is tested on the host with scripted CPUID tables.
//!
//! Xen's leaves start at `0x40000000`, or at a multiple of `0x100` above it when Xen also
//! presents Viridian (Hyper-V) leaves first, so the signature is searched for in steps of
//! `0x100` like Linux does.

/// The four registers a CPUID leaf returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// First hypervisor leaf searched.
pub const XEN_CPUID_FIRST_LEAF: u32 = 0x4000_0000;
/// One past the last base searched (Linux's bound as well).
const XEN_CPUID_SEARCH_END: u32 = 0x4001_0000;
/// "XenVMMXenVMM" split over ebx, ecx, edx.
const SIGNATURE: (u32, u32, u32) = (0x566e_6558, 0x6558_4d4d, 0x4d4d_566e);

/// HVM feature bits of leaf base+4, eax (`XEN_HVM_CPUID_*`).
pub mod hvm_feature {
    pub const APIC_ACCESS_VIRT: u32 = 1 << 0;
    pub const X2APIC_VIRT: u32 = 1 << 1;
    pub const IOMMU_MAPPINGS: u32 = 1 << 2;
    pub const VCPU_ID_PRESENT: u32 = 1 << 3;
    pub const DOMID_PRESENT: u32 = 1 << 4;
    pub const EXT_DEST_ID: u32 = 1 << 5;
    /// Per-vCPU upcall vectors (`HVMOP_set_evtchn_upcall_vector`) work with physical IRQs.
    pub const UPCALL_VECTOR: u32 = 1 << 6;
}

/// What the Xen CPUID leaves report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenCpuid {
    /// Leaf holding the signature (`0x40000000` or a `0x100` multiple above).
    pub base: u32,
    /// Largest Xen leaf supported.
    pub max_leaf: u32,
    /// Xen version (leaf base+1).
    pub major: u16,
    pub minor: u16,
    /// Number of hypercall transfer pages (always at least one).
    pub hypercall_pages: u32,
    /// MSR that installs the hypercall page when written with its physical address.
    pub hypercall_msr: u32,
    /// Leaf base+4 (HVM features), absent on old Xen.
    pub hvm: Option<HvmCpuidFeatures>,
}

/// Leaf base+4: HVM-specific features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvmCpuidFeatures {
    /// `XEN_HVM_CPUID_*` bits, see [`hvm_feature`].
    pub flags: u32,
    /// This vCPU's id, when `VCPU_ID_PRESENT`.
    pub vcpu_id: Option<u32>,
    /// This domain's id, when `DOMID_PRESENT`.
    pub domid: Option<u16>,
}

impl HvmCpuidFeatures {
    pub fn has(&self, bit: u32) -> bool {
        self.flags & bit == bit
    }
}

/// Why Xen could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectError {
    /// No "XenVMMXenVMM" signature in the hypervisor leaves: not running on Xen.
    NotXen,
    /// The signature was found but the leaf range ends before the hypercall leaf (base+2).
    TooFewLeaves { base: u32, max_leaf: u32 },
    /// The hypercall leaf reports zero hypercall pages, which Xen guarantees never happens.
    NoHypercallPage,
}

/// Finds Xen's leaves and decodes the version, hypercall and HVM leaves.
pub fn detect(mut cpuid: impl FnMut(u32, u32) -> CpuidResult) -> Result<XenCpuid, DetectError> {
    let mut base = XEN_CPUID_FIRST_LEAF;
    let (base, max_leaf) = loop {
        if base >= XEN_CPUID_SEARCH_END {
            return Err(DetectError::NotXen);
        }
        let r = cpuid(base, 0);
        if (r.ebx, r.ecx, r.edx) == SIGNATURE {
            break (base, r.eax);
        }
        base += 0x100;
    };
    if max_leaf < base + 2 {
        return Err(DetectError::TooFewLeaves { base, max_leaf });
    }
    let version = cpuid(base + 1, 0).eax;
    let hypercall = cpuid(base + 2, 0);
    if hypercall.eax == 0 {
        return Err(DetectError::NoHypercallPage);
    }
    let hvm = (max_leaf >= base + 4).then(|| {
        let r = cpuid(base + 4, 0);
        HvmCpuidFeatures {
            flags: r.eax,
            vcpu_id: (r.eax & hvm_feature::VCPU_ID_PRESENT != 0).then_some(r.ebx),
            domid: (r.eax & hvm_feature::DOMID_PRESENT != 0).then_some(r.ecx as u16),
        }
    });
    Ok(XenCpuid {
        base,
        max_leaf,
        major: (version >> 16) as u16,
        minor: version as u16,
        hypercall_pages: hypercall.eax,
        hypercall_msr: hypercall.ebx,
        hvm,
    })
}

/// Which instruction traps to Xen from an HVM/PVH guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypercallInstruction {
    /// Intel VMX.
    Vmcall,
    /// AMD SVM (also Hygon).
    Vmmcall,
}

impl HypercallInstruction {
    /// Chooses from the CPU vendor string of leaf 0; `None` for an unknown vendor, in which
    /// case the kernel should use the hypercall page, which Xen fills with the right one.
    pub fn for_vendor(leaf0: CpuidResult) -> Option<Self> {
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
        vendor[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
        match &vendor {
            b"GenuineIntel" => Some(HypercallInstruction::Vmcall),
            b"AuthenticAMD" | b"HygonGenuine" => Some(HypercallInstruction::Vmmcall),
            _ => None,
        }
    }
}

/// The value to write to [`XenCpuid::hypercall_msr`] to install hypercall page `index`
/// at physical address `page_phys`; `None` if the address is not page aligned.
pub fn hypercall_page_msr_value(page_phys: u64, index: u32) -> Option<u64> {
    (page_phys & 0xfff == 0 && index < 0x1000).then_some(page_phys | u64::from(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xen_at(base: u32, max_leaf: u32, hvm_flags: u32) -> impl FnMut(u32, u32) -> CpuidResult {
        move |leaf, _sub| match leaf - base {
            0 => CpuidResult {
                eax: max_leaf,
                ebx: 0x566e_6558,
                ecx: 0x6558_4d4d,
                edx: 0x4d4d_566e,
            },
            1 => CpuidResult {
                eax: (4 << 16) | 17,
                ..Default::default()
            },
            2 => CpuidResult {
                eax: 1,
                ebx: 0x4000_0000,
                ..Default::default()
            },
            4 => CpuidResult {
                eax: hvm_flags,
                ebx: 3,
                ecx: 7,
                edx: 0,
            },
            _ => CpuidResult::default(),
        }
    }

    #[test]
    fn detects_xen_417_at_the_first_leaf() {
        let x = detect(xen_at(0x4000_0000, 0x4000_0005, 0x7f)).unwrap();
        assert_eq!(x.base, 0x4000_0000);
        assert_eq!((x.major, x.minor), (4, 17));
        assert_eq!(x.hypercall_pages, 1);
        assert_eq!(x.hypercall_msr, 0x4000_0000);
        let hvm = x.hvm.unwrap();
        assert!(hvm.has(hvm_feature::UPCALL_VECTOR));
        assert_eq!(hvm.vcpu_id, Some(3));
        assert_eq!(hvm.domid, Some(7));
    }

    #[test]
    fn finds_xen_behind_viridian_leaves() {
        let xen = xen_at(0x4000_0100, 0x4000_0105, 0);
        let mut xen = xen;
        let cpuid = move |leaf: u32, sub: u32| {
            if leaf < 0x4000_0100 {
                // "Microsoft Hv" at the first base.
                CpuidResult {
                    eax: 0x4000_0006,
                    ebx: 0x7263_694d,
                    ecx: 0x666f_736f,
                    edx: 0x7648_2074,
                }
            } else {
                xen(leaf, sub)
            }
        };
        let x = detect(cpuid).unwrap();
        assert_eq!(x.base, 0x4000_0100);
        let hvm = x.hvm.unwrap();
        assert_eq!((hvm.vcpu_id, hvm.domid), (None, None));
    }

    #[test]
    fn bare_metal_is_not_xen() {
        assert_eq!(
            detect(|_, _| CpuidResult::default()),
            Err(DetectError::NotXen)
        );
    }

    #[test]
    fn truncated_leaf_range_is_rejected() {
        assert_eq!(
            detect(xen_at(0x4000_0000, 0x4000_0001, 0)),
            Err(DetectError::TooFewLeaves {
                base: 0x4000_0000,
                max_leaf: 0x4000_0001
            })
        );
    }

    #[test]
    fn hvm_leaf_absent_below_base_plus_4() {
        let x = detect(xen_at(0x4000_0000, 0x4000_0003, 0x7f)).unwrap();
        assert_eq!(x.hvm, None);
    }

    #[test]
    fn zero_hypercall_pages_is_rejected() {
        let mut inner = xen_at(0x4000_0000, 0x4000_0004, 0);
        let cpuid = move |leaf: u32, sub: u32| {
            if leaf == 0x4000_0002 {
                CpuidResult::default()
            } else {
                inner(leaf, sub)
            }
        };
        assert_eq!(detect(cpuid), Err(DetectError::NoHypercallPage));
    }

    #[test]
    fn vendor_selects_instruction() {
        let leaf0 = |s: &[u8; 12]| CpuidResult {
            eax: 0xd,
            ebx: u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
            edx: u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
            ecx: u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
        };
        assert_eq!(
            HypercallInstruction::for_vendor(leaf0(b"GenuineIntel")),
            Some(HypercallInstruction::Vmcall)
        );
        assert_eq!(
            HypercallInstruction::for_vendor(leaf0(b"AuthenticAMD")),
            Some(HypercallInstruction::Vmmcall)
        );
        assert_eq!(
            HypercallInstruction::for_vendor(leaf0(b"HygonGenuine")),
            Some(HypercallInstruction::Vmmcall)
        );
        assert_eq!(
            HypercallInstruction::for_vendor(leaf0(b"VIA VIA VIA ")),
            None
        );
    }

    #[test]
    fn hypercall_msr_value_requires_alignment() {
        assert_eq!(hypercall_page_msr_value(0x1234_5000, 0), Some(0x1234_5000));
        assert_eq!(hypercall_page_msr_value(0x1234_5008, 0), None);
    }
}
