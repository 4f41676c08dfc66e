//! `xen_version` hypercall (`xen/include/public/version.h`, `features.h`).

use crate::error::XenError;
use crate::hypercall::{call_no_arg, call_with, HypercallOp, Hypervisor};

const XENVER_VERSION: u64 = 0;
const XENVER_EXTRAVERSION: u64 = 1;
const XENVER_CAPABILITIES: u64 = 3;
const XENVER_GET_FEATURES: u64 = 6;

/// Length of `xen_extraversion_t`.
pub const EXTRAVERSION_LEN: usize = 16;
/// Length of `xen_capabilities_info_t`.
pub const CAPABILITIES_LEN: usize = 1024;

/// A Xen release as `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct XenVersion {
    pub major: u16,
    pub minor: u16,
}

impl XenVersion {
    /// The release whose domctl/sysctl ABI this crate speaks.
    pub const SUPPORTED: XenVersion = XenVersion {
        major: 4,
        minor: 17,
    };
}

/// `XENVER_version`: `major << 16 | minor`.
pub fn version<H: Hypervisor + ?Sized>(hv: &H) -> Result<XenVersion, XenError> {
    let raw = call_no_arg(hv, HypercallOp::XenVersion, XENVER_VERSION)?;
    Ok(XenVersion {
        major: (raw >> 16) as u16,
        minor: raw as u16,
    })
}

/// A NUL-padded string returned by `xen_version` into a fixed buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct FixedString<const N: usize>([u8; N]);

impl<const N: usize> FixedString<N> {
    /// The bytes before the first NUL (all of them if Xen filled the buffer).
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(N);
        self.0.get(..end).unwrap_or(&self.0)
    }

    /// The text, if it is UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        core::str::from_utf8(self.as_bytes()).ok()
    }
}

impl<const N: usize> core::fmt::Debug for FixedString<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.to_str().unwrap_or("<non-utf8>"))
    }
}

/// `XENVER_extraversion`, e.g. `".7"` for 4.17.7.
pub fn extraversion<H: Hypervisor + ?Sized>(
    hv: &H,
) -> Result<FixedString<EXTRAVERSION_LEN>, XenError> {
    let mut buf = [0u8; EXTRAVERSION_LEN];
    call_with(hv, HypercallOp::XenVersion, XENVER_EXTRAVERSION, &mut buf)?;
    Ok(FixedString(buf))
}

/// `XENVER_capabilities`: space-separated guest types, e.g. `"xen-3.0-x86_64 hvm-3.0-x86_64"`.
pub fn capabilities<H: Hypervisor + ?Sized>(
    hv: &H,
) -> Result<FixedString<CAPABILITIES_LEN>, XenError> {
    let mut buf = [0u8; CAPABILITIES_LEN];
    call_with(hv, HypercallOp::XenVersion, XENVER_CAPABILITIES, &mut buf)?;
    Ok(FixedString(buf))
}

/// `struct xen_feature_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XenFeatureInfo {
    pub submap_idx: u32,
    pub submap: u32,
}

/// Feature numbers of `features.h` that matter to a PVH dom0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum XenFeature {
    WritablePageTables = 0,
    AutoTranslatedPhysmap = 2,
    SupervisorModeKernel = 3,
    GnttabMapAvailBits = 7,
    /// `HVM_PARAM_CALLBACK_IRQ` may use the vector delivery type.
    HvmCallbackVector = 8,
    HvmSafePvclock = 9,
    HvmPirqs = 10,
    Dom0 = 11,
    LinuxRsdpUnrestricted = 15,
}

/// Submap 0 of `XENVER_get_features` (the only one Xen 4.17 defines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenFeatures(pub u32);

impl XenFeatures {
    pub fn has(self, feature: XenFeature) -> bool {
        self.0 & (1 << feature as u32) != 0
    }
}

/// `XENVER_get_features` for submap 0.
pub fn features<H: Hypervisor + ?Sized>(hv: &H) -> Result<XenFeatures, XenError> {
    let mut info = XenFeatureInfo {
        submap_idx: 0,
        submap: 0,
    };
    call_with(hv, HypercallOp::XenVersion, XENVER_GET_FEATURES, &mut info)?;
    Ok(XenFeatures(info.submap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;

    #[test]
    fn reads_version_strings_and_features() {
        let xen = FakeXen::new();
        assert_eq!(
            version(&xen).unwrap(),
            XenVersion {
                major: 4,
                minor: 17
            }
        );
        assert_eq!(extraversion(&xen).unwrap().to_str(), Some(".7"));
        let caps = capabilities(&xen).unwrap();
        assert!(caps
            .to_str()
            .unwrap()
            .split(' ')
            .any(|c| c == "hvm-3.0-x86_64"));
        let f = features(&xen).unwrap();
        assert!(f.has(XenFeature::HvmCallbackVector));
        assert!(f.has(XenFeature::Dom0));
        assert!(!f.has(XenFeature::WritablePageTables));
    }

    #[test]
    fn fixed_string_without_nul_uses_whole_buffer() {
        let s = FixedString(*b"0123456789abcdef");
        assert_eq!(s.to_str(), Some("0123456789abcdef"));
        let bad = FixedString([0xffu8, 0, 0, 0]);
        assert_eq!(bad.to_str(), None);
    }

    #[test]
    fn layout_matches_xen_417() {
        assert_eq!(core::mem::size_of::<XenFeatureInfo>(), 8);
    }
}
