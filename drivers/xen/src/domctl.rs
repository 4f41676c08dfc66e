//! `domctl` hypercall (`xen/include/public/domctl.h`): per-domain control for the toolstack.

use crate::control::{ControlError, ControlInterface, DOMCTL_INTERFACE_VERSION};
use crate::error::XenError;
use crate::hypercall::{call_single, HypercallOp, Hypervisor, DOMID_FIRST_RESERVED};

const XEN_DOMCTL_DESTROYDOMAIN: u32 = 2;
const XEN_DOMCTL_PAUSEDOMAIN: u32 = 3;
const XEN_DOMCTL_UNPAUSEDOMAIN: u32 = 4;
const XEN_DOMCTL_GETDOMAININFO: u32 = 5;

/// `XEN_DOMINF_*` bits of [`DomainInfo::flags`].
pub mod dominf {
    pub const DYING: u32 = 1 << 0;
    pub const HVM_GUEST: u32 = 1 << 1;
    pub const SHUTDOWN: u32 = 1 << 2;
    pub const PAUSED: u32 = 1 << 3;
    pub const BLOCKED: u32 = 1 << 4;
    pub const RUNNING: u32 = 1 << 5;
    pub const DEBUGGED: u32 = 1 << 6;
    pub const XS_DOMAIN: u32 = 1 << 7;
    pub const HAP: u32 = 1 << 8;
    pub const SHUTDOWN_SHIFT: u32 = 16;
    pub const SHUTDOWN_MASK: u32 = 0xff;
}

/// `struct xen_arch_domainconfig` for x86.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArchDomainConfig {
    pub emulation_flags: u32,
    pub misc_flags: u32,
}

/// `struct xen_domctl_getdomaininfo` (112 bytes in 4.17).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainInfo {
    pub domain: u16,
    pub pad1: u16,
    pub flags: u32,
    pub tot_pages: u64,
    pub max_pages: u64,
    pub outstanding_pages: u64,
    pub shr_pages: u64,
    pub paged_pages: u64,
    /// Guest frame of the domain's shared_info.
    pub shared_info_frame: u64,
    /// Nanoseconds of CPU time consumed.
    pub cpu_time: u64,
    pub nr_online_vcpus: u32,
    pub max_vcpu_id: u32,
    pub ssidref: u32,
    /// The domain's UUID (`xen_domain_handle_t`).
    pub handle: [u8; 16],
    pub cpupool: u32,
    pub gpaddr_bits: u8,
    pub pad2: [u8; 7],
    pub arch_config: ArchDomainConfig,
}

impl DomainInfo {
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag == flag
    }

    /// The guest's `SHUTDOWN_*` code, when it has shut down.
    pub fn shutdown_code(&self) -> Option<u32> {
        self.has(dominf::SHUTDOWN)
            .then_some((self.flags >> dominf::SHUTDOWN_SHIFT) & dominf::SHUTDOWN_MASK)
    }
}

/// The domctl payload union; `pad` fixes it at 128 bytes like Xen's.
#[repr(C)]
#[derive(Clone, Copy)]
pub union DomctlPayload {
    pub getdomaininfo: DomainInfo,
    pub pad: [u8; 128],
}

/// `struct xen_domctl` (144 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct XenDomctl {
    pub cmd: u32,
    pub interface_version: u32,
    pub domain: u16,
    pub pad: [u16; 3],
    pub u: DomctlPayload,
}

impl XenDomctl {
    fn new(cmd: u32, domain: u16) -> Self {
        XenDomctl {
            cmd,
            interface_version: DOMCTL_INTERFACE_VERSION,
            domain,
            pad: [0; 3],
            u: DomctlPayload { pad: [0; 128] },
        }
    }
}

fn domctl<H: Hypervisor + ?Sized>(hv: &H, op: &mut XenDomctl) -> Result<(), ControlError> {
    call_single(hv, HypercallOp::Domctl, op)
        .map(drop)
        .map_err(|e| ControlError::from_xen(ControlInterface::Domctl, e))
}

/// `XEN_DOMCTL_getdomaininfo` for the first domain whose id is `>= from`, which is what
/// Xen 4.17 actually returns; `None` when there is none. Use it to enumerate domains.
pub fn next_domain_info<H: Hypervisor + ?Sized>(
    hv: &H,
    from: u16,
) -> Result<Option<DomainInfo>, ControlError> {
    if from >= DOMID_FIRST_RESERVED {
        return Ok(None);
    }
    let mut op = XenDomctl::new(XEN_DOMCTL_GETDOMAININFO, from);
    match domctl(hv, &mut op) {
        Ok(()) => {}
        Err(ControlError::Xen(XenError::ESRCH)) => return Ok(None),
        Err(e) => return Err(e),
    }
    // SAFETY: every field of `DomainInfo` is an integer, so any bytes Xen wrote are valid.
    let info = unsafe { op.u.getdomaininfo };
    // Xen only ever moves forward; anything else is not an answer to this question.
    Ok((info.domain >= from).then_some(info))
}

/// `XEN_DOMCTL_getdomaininfo` for exactly `domid`; `ESRCH` if it does not exist (Xen
/// itself would silently answer with the next domain).
pub fn domain_info<H: Hypervisor + ?Sized>(hv: &H, domid: u16) -> Result<DomainInfo, ControlError> {
    match next_domain_info(hv, domid)? {
        Some(info) if info.domain == domid => Ok(info),
        _ => Err(ControlError::Xen(XenError::ESRCH)),
    }
}

/// `XEN_DOMCTL_pausedomain`.
pub fn pause_domain<H: Hypervisor + ?Sized>(hv: &H, domid: u16) -> Result<(), ControlError> {
    domctl(hv, &mut XenDomctl::new(XEN_DOMCTL_PAUSEDOMAIN, domid))
}

/// `XEN_DOMCTL_unpausedomain`.
pub fn unpause_domain<H: Hypervisor + ?Sized>(hv: &H, domid: u16) -> Result<(), ControlError> {
    domctl(hv, &mut XenDomctl::new(XEN_DOMCTL_UNPAUSEDOMAIN, domid))
}

/// `XEN_DOMCTL_destroydomain`. Xen answers `EAGAIN` while teardown is still in progress;
/// the caller retries.
pub fn destroy_domain<H: Hypervisor + ?Sized>(hv: &H, domid: u16) -> Result<(), ControlError> {
    domctl(hv, &mut XenDomctl::new(XEN_DOMCTL_DESTROYDOMAIN, domid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        assert_eq!(size_of::<XenDomctl>(), 144);
        assert_eq!(align_of::<XenDomctl>(), 8);
        assert_eq!(offset_of!(XenDomctl, domain), 8);
        assert_eq!(offset_of!(XenDomctl, u), 16);
        assert_eq!(size_of::<DomainInfo>(), 112);
        assert_eq!(offset_of!(DomainInfo, flags), 4);
        assert_eq!(offset_of!(DomainInfo, tot_pages), 8);
        assert_eq!(offset_of!(DomainInfo, shared_info_frame), 48);
        assert_eq!(offset_of!(DomainInfo, cpu_time), 56);
        assert_eq!(offset_of!(DomainInfo, nr_online_vcpus), 64);
        assert_eq!(offset_of!(DomainInfo, max_vcpu_id), 68);
        assert_eq!(offset_of!(DomainInfo, ssidref), 72);
        assert_eq!(offset_of!(DomainInfo, handle), 76);
        assert_eq!(offset_of!(DomainInfo, cpupool), 92);
        assert_eq!(offset_of!(DomainInfo, gpaddr_bits), 96);
        assert_eq!(offset_of!(DomainInfo, arch_config), 104);
    }

    #[test]
    fn exact_lookup_does_not_accept_the_next_domain() {
        let xen = FakeXen::new();
        xen.add_domain(0, dominf::RUNNING);
        xen.add_domain(5, dominf::SHUTDOWN | (3 << dominf::SHUTDOWN_SHIFT));
        let d5 = domain_info(&xen, 5).unwrap();
        assert_eq!(d5.domain, 5);
        assert_eq!(d5.shutdown_code(), Some(3));
        assert_eq!(domain_info(&xen, 0).unwrap().shutdown_code(), None);
        // Xen would answer "domain 5" for 3.
        assert_eq!(
            domain_info(&xen, 3),
            Err(ControlError::Xen(XenError::ESRCH))
        );
    }

    #[test]
    fn enumerates_domains() {
        let xen = FakeXen::new();
        for d in [0, 2, 9] {
            xen.add_domain(d, 0);
        }
        let mut seen = alloc::vec::Vec::new();
        let mut next = 0u16;
        while let Some(info) = next_domain_info(&xen, next).unwrap() {
            seen.push(info.domain);
            next = info.domain + 1;
        }
        assert_eq!(seen, [0, 2, 9]);
        assert_eq!(next_domain_info(&xen, DOMID_FIRST_RESERVED), Ok(None));
    }

    #[test]
    fn version_mismatch_is_named() {
        let xen = FakeXen::new();
        xen.add_domain(0, 0);
        xen.set_control_interface_version(0x14);
        assert_eq!(
            domain_info(&xen, 0),
            Err(ControlError::InterfaceVersionMismatch {
                interface: ControlInterface::Domctl,
                sent: 0x15
            })
        );
    }

    #[test]
    fn pause_unpause_destroy() {
        let xen = FakeXen::new();
        xen.add_domain(4, 0);
        pause_domain(&xen, 4).unwrap();
        assert!(domain_info(&xen, 4).unwrap().has(dominf::PAUSED));
        unpause_domain(&xen, 4).unwrap();
        assert!(!domain_info(&xen, 4).unwrap().has(dominf::PAUSED));
        destroy_domain(&xen, 4).unwrap();
        assert_eq!(
            domain_info(&xen, 4),
            Err(ControlError::Xen(XenError::ESRCH))
        );
        assert_eq!(
            pause_domain(&xen, 4),
            Err(ControlError::Xen(XenError::ESRCH))
        );
    }
}
