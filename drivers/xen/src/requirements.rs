//! What Keel needs from the Xen it runs on as PVH dom0, checked once at boot so that a
//! missing piece stops the boot with a sentence naming it instead of a hang later (an event
//! that never arrives, a hypercall that fails deep inside a driver).

use crate::cpuid::XenCpuid;
use crate::version::{XenFeature, XenFeatures, XenVersion};

/// A requirement the running Xen does not meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet {
    /// Keel speaks the domctl/sysctl ABI of one Xen release.
    Release { found: XenVersion },
    /// We are not the hardware domain (`XENFEAT_dom0` clear): booted as a domU.
    NotDom0,
    /// Not auto-translated: a PV guest, not PVH.
    NotPvh,
    /// No `XENFEAT_hvm_callback_vector`: events could not be delivered as an IDT vector.
    NoCallbackVector,
}

impl core::fmt::Display for Unmet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Unmet::Release { found } => write!(
                f,
                "Keel speaks the control interface of Xen {}.{}; this hypervisor is Xen {}.{}",
                XenVersion::SUPPORTED.major,
                XenVersion::SUPPORTED.minor,
                found.major,
                found.minor
            ),
            Unmet::NotDom0 => write!(
                f,
                "Keel runs as Xen's control domain (dom0) only, but Xen started it as a guest"
            ),
            Unmet::NotPvh => write!(
                f,
                "Keel needs PVH mode (auto-translated physmap); boot Xen with dom0=pvh"
            ),
            Unmet::NoCallbackVector => write!(
                f,
                "Xen lacks XENFEAT_hvm_callback_vector, which Keel needs to receive event-channel \
                 upcalls"
            ),
        }
    }
}

/// Checks the release (from CPUID, available before any hypercall) and the feature bits.
pub fn check_pvh_dom0(cpuid: &XenCpuid, features: XenFeatures) -> Result<(), Unmet> {
    let found = XenVersion {
        major: cpuid.major,
        minor: cpuid.minor,
    };
    if found != XenVersion::SUPPORTED {
        return Err(Unmet::Release { found });
    }
    if !features.has(XenFeature::AutoTranslatedPhysmap) {
        return Err(Unmet::NotPvh);
    }
    if !features.has(XenFeature::Dom0) {
        return Err(Unmet::NotDom0);
    }
    if !features.has(XenFeature::HvmCallbackVector) {
        return Err(Unmet::NoCallbackVector);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn cpuid(major: u16, minor: u16) -> XenCpuid {
        XenCpuid {
            base: 0x4000_0000,
            max_leaf: 0x4000_0005,
            major,
            minor,
            hypercall_pages: 1,
            hypercall_msr: 0x4000_0000,
            hvm: None,
        }
    }

    fn bits(features: &[XenFeature]) -> XenFeatures {
        XenFeatures(features.iter().fold(0, |acc, f| acc | (1 << *f as u32)))
    }

    const PVH_DOM0: [XenFeature; 3] = [
        XenFeature::AutoTranslatedPhysmap,
        XenFeature::Dom0,
        XenFeature::HvmCallbackVector,
    ];

    #[test]
    fn a_pvh_dom0_of_xen_417_passes() {
        assert_eq!(check_pvh_dom0(&cpuid(4, 17), bits(&PVH_DOM0)), Ok(()));
    }

    #[test]
    fn each_missing_piece_is_named() {
        assert_eq!(
            check_pvh_dom0(&cpuid(4, 18), bits(&PVH_DOM0)),
            Err(Unmet::Release {
                found: XenVersion {
                    major: 4,
                    minor: 18
                }
            })
        );
        let without = |missing: XenFeature| {
            let kept: alloc::vec::Vec<XenFeature> =
                PVH_DOM0.into_iter().filter(|f| *f != missing).collect();
            check_pvh_dom0(&cpuid(4, 17), bits(&kept))
        };
        assert_eq!(without(XenFeature::Dom0), Err(Unmet::NotDom0));
        assert_eq!(
            without(XenFeature::AutoTranslatedPhysmap),
            Err(Unmet::NotPvh)
        );
        assert_eq!(
            without(XenFeature::HvmCallbackVector),
            Err(Unmet::NoCallbackVector)
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let text = Unmet::Release {
            found: XenVersion {
                major: 4,
                minor: 18,
            },
        }
        .to_string();
        assert!(
            text.contains("Xen 4.17") && text.contains("Xen 4.18"),
            "{text}"
        );
        assert!(Unmet::NotPvh.to_string().contains("dom0=pvh"));
        assert!(Unmet::NoCallbackVector
            .to_string()
            .contains("XENFEAT_hvm_callback_vector"));
    }
}
