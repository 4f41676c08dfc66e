//! What sysctl and domctl share: their interface versions and the error that names them.
//!
//! The sysctl and domctl ABIs are not stable across Xen releases; every call carries an
//! `interface_version` which Xen compares first and answers `-EACCES` on mismatch
//! (`xen/common/sysctl.c`, `xen/common/domctl.c`). Both are `0x15` in Xen 4.17.0 through
//! 4.17.7 (`XEN_SYSCTL_INTERFACE_VERSION` in `public/sysctl.h`,
//! `XEN_DOMCTL_INTERFACE_VERSION` in `public/domctl.h`).

use crate::error::XenError;
use crate::hypercall::Hypervisor;
use crate::version::{version, XenVersion};

/// `XEN_SYSCTL_INTERFACE_VERSION` of Xen 4.17.
pub const SYSCTL_INTERFACE_VERSION: u32 = 0x15;
/// `XEN_DOMCTL_INTERFACE_VERSION` of Xen 4.17.
pub const DOMCTL_INTERFACE_VERSION: u32 = 0x15;

/// Which versioned control interface an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlInterface {
    Sysctl,
    Domctl,
}

/// Failure of a sysctl or domctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// Xen answered `EACCES`, which it does first of all when `interface_version` differs
    /// from its own. `sent` is the version Keel speaks. (Under an XSM/FLASK policy the same
    /// errno can also mean "denied"; without XSM a dom0 is never denied.)
    InterfaceVersionMismatch {
        interface: ControlInterface,
        sent: u32,
    },
    /// Any other errno.
    Xen(XenError),
}

impl ControlError {
    pub(crate) fn from_xen(interface: ControlInterface, e: XenError) -> Self {
        match e {
            XenError::EACCES => ControlError::InterfaceVersionMismatch {
                interface,
                sent: match interface {
                    ControlInterface::Sysctl => SYSCTL_INTERFACE_VERSION,
                    ControlInterface::Domctl => DOMCTL_INTERFACE_VERSION,
                },
            },
            other => ControlError::Xen(other),
        }
    }
}

/// Why the running hypervisor's control ABI is not the one Keel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiCheckError {
    /// `XENVER_version` failed.
    Xen(XenError),
    /// The hypervisor is not a 4.17 release.
    UnsupportedRelease {
        found: XenVersion,
        expected: XenVersion,
    },
}

/// Checks, before any sysctl/domctl, that the hypervisor is Xen 4.17, whose interface
/// versions are [`SYSCTL_INTERFACE_VERSION`] and [`DOMCTL_INTERFACE_VERSION`].
pub fn check_control_abi<H: Hypervisor + ?Sized>(hv: &H) -> Result<XenVersion, AbiCheckError> {
    let found = version(hv).map_err(AbiCheckError::Xen)?;
    if found != XenVersion::SUPPORTED {
        return Err(AbiCheckError::UnsupportedRelease {
            found,
            expected: XenVersion::SUPPORTED,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;

    #[test]
    fn accepts_417_only() {
        let xen = FakeXen::new();
        assert_eq!(
            check_control_abi(&xen),
            Ok(XenVersion {
                major: 4,
                minor: 17
            })
        );
        xen.set_version(4, 18);
        assert_eq!(
            check_control_abi(&xen),
            Err(AbiCheckError::UnsupportedRelease {
                found: XenVersion {
                    major: 4,
                    minor: 18
                },
                expected: XenVersion {
                    major: 4,
                    minor: 17
                }
            })
        );
    }

    #[test]
    fn eacces_names_the_version_sent() {
        assert_eq!(
            ControlError::from_xen(ControlInterface::Domctl, XenError::EACCES),
            ControlError::InterfaceVersionMismatch {
                interface: ControlInterface::Domctl,
                sent: 0x15
            }
        );
        assert_eq!(
            ControlError::from_xen(ControlInterface::Sysctl, XenError::EINVAL),
            ControlError::Xen(XenError::EINVAL)
        );
    }
}
