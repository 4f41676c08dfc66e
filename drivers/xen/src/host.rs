//! The figures a dom0 reports about its host: Xen's version and capabilities from
//! `xen_version`, and the machine's CPUs and memory from `sysctl physinfo`. The management
//! API's host record is filled from these.

use alloc::format;
use alloc::string::String;

use crate::control::ControlError;
use crate::error::XenError;
use crate::hypercall::{Hypervisor, PAGE_SIZE};
use crate::sysctl::{physinfo, Physinfo};
use crate::version::{
    capabilities, extraversion, version, FixedString, XenVersion, CAPABILITIES_LEN,
    EXTRAVERSION_LEN,
};

/// What Xen says about itself and the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFigures {
    pub version: XenVersion,
    /// The release suffix, e.g. `".7"`.
    pub extraversion: FixedString<EXTRAVERSION_LEN>,
    /// Space-separated guest types Xen can run, e.g. `xen-3.0-x86_64 hvm-3.0-x86_64`.
    pub capabilities: FixedString<CAPABILITIES_LEN>,
    pub physinfo: Physinfo,
}

impl HostFigures {
    /// `major.minor` plus the extraversion, e.g. `"4.17.7"`; a non-UTF-8 suffix is left out.
    pub fn version_string(&self) -> String {
        format!(
            "{}.{}{}",
            self.version.major,
            self.version.minor,
            self.extraversion.to_str().unwrap_or_default()
        )
    }

    /// The guest types, one per item (`xen-3.0-x86_64`, `hvm-3.0-x86_64`, ...).
    pub fn capabilities(&self) -> impl Iterator<Item = &str> {
        self.capabilities
            .to_str()
            .unwrap_or_default()
            .split_whitespace()
    }

    /// Logical CPUs Xen runs on.
    pub fn cpus(&self) -> u32 {
        self.physinfo.nr_cpus
    }

    /// CPU clock in MHz.
    pub fn cpu_mhz(&self) -> u32 {
        self.physinfo.cpu_khz / 1000
    }

    /// All memory Xen manages, in bytes.
    pub fn total_memory_bytes(&self) -> u64 {
        self.physinfo.total_pages.saturating_mul(PAGE_SIZE as u64)
    }

    /// Memory not given to any domain (or Xen), in bytes.
    pub fn free_memory_bytes(&self) -> u64 {
        self.physinfo.free_memory_bytes()
    }
}

/// Which query failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFiguresError {
    Version(XenError),
    Extraversion(XenError),
    Capabilities(XenError),
    Physinfo(ControlError),
}

impl core::fmt::Display for HostFiguresError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HostFiguresError::Version(e) => write!(f, "xen_version(XENVER_version) failed: {e}"),
            HostFiguresError::Extraversion(e) => {
                write!(f, "xen_version(XENVER_extraversion) failed: {e}")
            }
            HostFiguresError::Capabilities(e) => {
                write!(f, "xen_version(XENVER_capabilities) failed: {e}")
            }
            HostFiguresError::Physinfo(ControlError::InterfaceVersionMismatch { sent, .. }) => {
                write!(
                    f,
                    "sysctl physinfo refused interface version {sent:#x} (EACCES): not Xen 4.17"
                )
            }
            HostFiguresError::Physinfo(ControlError::Xen(e)) => {
                write!(f, "sysctl physinfo failed: {e}")
            }
        }
    }
}

/// Reads every figure; any failure is returned, never papered over with zeros.
pub fn read_host_figures<H: Hypervisor + ?Sized>(hv: &H) -> Result<HostFigures, HostFiguresError> {
    Ok(HostFigures {
        version: version(hv).map_err(HostFiguresError::Version)?,
        extraversion: extraversion(hv).map_err(HostFiguresError::Extraversion)?,
        capabilities: capabilities(hv).map_err(HostFiguresError::Capabilities)?,
        physinfo: physinfo(hv).map_err(HostFiguresError::Physinfo)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use crate::hypercall::HypercallOp;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    #[test]
    fn figures_combine_version_and_physinfo() {
        let xen = FakeXen::new();
        let host = read_host_figures(&xen).unwrap();
        assert_eq!(host.version_string(), "4.17.7");
        assert_eq!(
            host.capabilities().collect::<Vec<_>>(),
            [
                "xen-3.0-x86_64",
                "hvm-3.0-x86_32",
                "hvm-3.0-x86_32p",
                "hvm-3.0-x86_64"
            ]
        );
        assert_eq!(host.cpus(), 2);
        assert_eq!(host.cpu_mhz(), 2000);
        assert_eq!(host.total_memory_bytes(), 262_144 * 4096);
        assert_eq!(host.free_memory_bytes(), 100_000 * 4096);
    }

    #[test]
    fn each_failure_names_its_query() {
        let xen = FakeXen::new();
        xen.fail_next(HypercallOp::XenVersion, XenError::EPERM);
        assert_eq!(
            read_host_figures(&xen),
            Err(HostFiguresError::Version(XenError::EPERM))
        );
        xen.set_control_interface_version(0x16);
        let error = read_host_figures(&xen).unwrap_err();
        assert!(matches!(error, HostFiguresError::Physinfo(_)));
        assert!(error.to_string().contains("not Xen 4.17"), "{error}");
    }
}
