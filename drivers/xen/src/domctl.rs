//! `domctl` hypercall (`xen/include/public/domctl.h`): per-domain control for the toolstack.

use crate::control::{ControlError, ControlInterface, DOMCTL_INTERFACE_VERSION};
use crate::error::XenError;
use crate::hypercall::{call_single, HypercallOp, Hypervisor, DOMID_FIRST_RESERVED};

const XEN_DOMCTL_CREATEDOMAIN: u32 = 1;
const XEN_DOMCTL_DESTROYDOMAIN: u32 = 2;
const XEN_DOMCTL_PAUSEDOMAIN: u32 = 3;
const XEN_DOMCTL_UNPAUSEDOMAIN: u32 = 4;
const XEN_DOMCTL_GETDOMAININFO: u32 = 5;
const XEN_DOMCTL_MAX_MEM: u32 = 11;
const XEN_DOMCTL_GETVCPUINFO: u32 = 14;
const XEN_DOMCTL_MAX_VCPUS: u32 = 15;
const XEN_DOMCTL_GETHVMCONTEXT: u32 = 33;
const XEN_DOMCTL_SETHVMCONTEXT: u32 = 34;
const XEN_DOMCTL_SET_PAGING_MEMPOOL_SIZE: u32 = 86;

/// `XEN_DOMCTL_CDF_*` bits of [`CreateDomain::flags`].
pub mod cdf {
    /// An HVM (here: PVH) container.
    pub const HVM: u32 = 1 << 0;
    /// Hardware-assisted paging (EPT/NPT); PVH needs it or shadow.
    pub const HAP: u32 = 1 << 1;
    pub const S3_INTEGRITY: u32 = 1 << 2;
    pub const OOS_OFF: u32 = 1 << 3;
    pub const XS_DOMAIN: u32 = 1 << 4;
    pub const IOMMU: u32 = 1 << 5;
    pub const NESTED_VIRT: u32 = 1 << 6;
    pub const VPMU: u32 = 1 << 7;
}

/// `XEN_X86_EMU_*` bits of [`ArchDomainConfig::emulation_flags`].
pub mod x86_emu {
    /// The local APIC: the only emulation a PVH domU gets.
    pub const LAPIC: u32 = 1 << 0;
}

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

/// `struct xen_domctl_createdomain` (64 bytes in 4.17).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreateDomain {
    pub ssidref: u32,
    /// The domain's UUID.
    pub handle: [u8; 16],
    /// [`cdf`] bits.
    pub flags: u32,
    pub iommu_opts: u32,
    pub max_vcpus: u32,
    pub max_evtchn_port: u32,
    /// -1 (as u32) asks for Xen's default (64 in 4.17).
    pub max_grant_frames: i32,
    /// -1 asks for Xen's default (1024).
    pub max_maptrack_frames: i32,
    /// Grant-table version limit in bits 3:0 (`XEN_DOMCTL_GRANT_version`).
    pub grant_opts: u32,
    pub vmtrace_size: u32,
    pub cpupool_id: u32,
    pub arch: ArchDomainConfig,
}

impl CreateDomain {
    /// What libxl asks for a PVH guest with `max_vcpus` vCPUs: HVM container with HAP,
    /// only the local APIC emulated, 1023 event channels, default grant limits, grant v1.
    pub fn pvh(handle: [u8; 16], max_vcpus: u32) -> Self {
        CreateDomain {
            ssidref: 0,
            handle,
            flags: cdf::HVM | cdf::HAP,
            iommu_opts: 0,
            max_vcpus,
            max_evtchn_port: 1023,
            max_grant_frames: -1,
            max_maptrack_frames: -1,
            grant_opts: 1,
            vmtrace_size: 0,
            cpupool_id: 0,
            arch: ArchDomainConfig {
                emulation_flags: x86_emu::LAPIC,
                misc_flags: 0,
            },
        }
    }
}

/// `struct xen_domctl_hvmcontext` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HvmContextArg {
    pub size: u32,
    pub pad: u32,
    pub buffer: u64,
}

/// `struct xen_domctl_getvcpuinfo` (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuInfo {
    /// IN: the vCPU asked about.
    pub vcpu: u32,
    pub online: u8,
    pub blocked: u8,
    pub running: u8,
    pub pad: u8,
    /// Nanoseconds this vCPU has run (its runstate's running time).
    pub cpu_time: u64,
    /// The physical CPU it is on.
    pub cpu: u32,
    pub pad2: u32,
}

/// The domctl payload union; `pad` fixes it at 128 bytes like Xen's.
#[repr(C)]
#[derive(Clone, Copy)]
pub union DomctlPayload {
    pub getdomaininfo: DomainInfo,
    pub getvcpuinfo: VcpuInfo,
    pub createdomain: CreateDomain,
    pub hvmcontext: HvmContextArg,
    /// `xen_domctl_max_vcpus.max`, `xen_domctl_max_mem.max_memkb` and
    /// `xen_domctl_paging_mempool.size`: one integer each.
    pub value: u64,
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

/// `XEN_DOMCTL_getvcpuinfo`: vCPU `vcpu` of `domid` (its running time, for metering).
/// `EINVAL` past the domain's vCPUs, `ESRCH` for a vCPU never brought up.
pub fn vcpu_info<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    vcpu: u32,
) -> Result<VcpuInfo, ControlError> {
    let mut op = XenDomctl::new(XEN_DOMCTL_GETVCPUINFO, domid);
    op.u.getvcpuinfo = VcpuInfo {
        vcpu,
        ..VcpuInfo::default()
    };
    domctl(hv, &mut op)?;
    // SAFETY: every field of `VcpuInfo` is an integer.
    Ok(unsafe { op.u.getvcpuinfo })
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

/// `XEN_DOMCTL_createdomain`: creates a paused domain. `requested` 0 lets Xen pick the id
/// (any id below `DOMID_FIRST_RESERVED` asks for that one: `EEXIST` if taken). Returns the id.
pub fn create_domain<H: Hypervisor + ?Sized>(
    hv: &H,
    requested: u16,
    config: &CreateDomain,
) -> Result<u16, ControlError> {
    let mut op = XenDomctl::new(XEN_DOMCTL_CREATEDOMAIN, requested);
    op.u.createdomain = *config;
    domctl(hv, &mut op)?;
    if op.domain == 0 || op.domain >= DOMID_FIRST_RESERVED {
        // Xen always writes back the id it chose; anything else is not an answer.
        return Err(ControlError::Xen(XenError::EINVAL));
    }
    Ok(op.domain)
}

fn domctl_value<H: Hypervisor + ?Sized>(
    hv: &H,
    cmd: u32,
    domid: u16,
    value: u64,
) -> Result<(), ControlError> {
    let mut op = XenDomctl::new(cmd, domid);
    op.u.value = value;
    domctl(hv, &mut op)
}

/// `XEN_DOMCTL_max_vcpus`: still required in 4.17, equal to `CreateDomain::max_vcpus`.
pub fn set_max_vcpus<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    max: u32,
) -> Result<(), ControlError> {
    domctl_value(hv, XEN_DOMCTL_MAX_VCPUS, domid, u64::from(max))
}

/// `XEN_DOMCTL_max_mem`: the most memory the domain may hold, in KiB.
pub fn set_max_mem<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    max_kib: u64,
) -> Result<(), ControlError> {
    domctl_value(hv, XEN_DOMCTL_MAX_MEM, domid, max_kib)
}

/// `XEN_DOMCTL_set_paging_mempool_size` (new in 4.17, XSA-409): bytes of Xen memory for the
/// domain's HAP/shadow page tables. Must come before memory is populated.
pub fn set_paging_mempool_size<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    bytes: u64,
) -> Result<(), ControlError> {
    domctl_value(hv, XEN_DOMCTL_SET_PAGING_MEMPOOL_SIZE, domid, bytes)
}

/// `XEN_DOMCTL_gethvmcontext` with a NULL buffer: the size of the domain's HVM context.
pub fn hvm_context_size<H: Hypervisor + ?Sized>(hv: &H, domid: u16) -> Result<usize, ControlError> {
    let mut op = XenDomctl::new(XEN_DOMCTL_GETHVMCONTEXT, domid);
    op.u.hvmcontext = HvmContextArg::default();
    domctl(hv, &mut op)?;
    // SAFETY: `HvmContextArg` is plain integers.
    Ok(unsafe { op.u.hvmcontext }.size as usize)
}

/// `XEN_DOMCTL_gethvmcontext`: the domain's HVM save records into `buf` (`ENOSPC` when
/// too small); returns the bytes written.
pub fn get_hvm_context<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    buf: &mut [u8],
) -> Result<usize, ControlError> {
    let mut op = XenDomctl::new(XEN_DOMCTL_GETHVMCONTEXT, domid);
    op.u.hvmcontext = HvmContextArg {
        size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        pad: 0,
        buffer: buf.as_mut_ptr() as u64,
    };
    domctl(hv, &mut op)?;
    // SAFETY: `HvmContextArg` is plain integers.
    let written = unsafe { op.u.hvmcontext }.size as usize;
    Ok(written.min(buf.len()))
}

/// `XEN_DOMCTL_sethvmcontext`: loads HVM save records (see [`crate::hvm_save`]). Loading a
/// CPU record makes that vCPU runnable once the domain is unpaused.
pub fn set_hvm_context<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    records: &[u8],
) -> Result<(), ControlError> {
    let size = u32::try_from(records.len()).map_err(|_| ControlError::Xen(XenError::E2BIG))?;
    let mut op = XenDomctl::new(XEN_DOMCTL_SETHVMCONTEXT, domid);
    op.u.hvmcontext = HvmContextArg {
        size,
        pad: 0,
        // Xen only reads the buffer.
        buffer: records.as_ptr() as u64,
    };
    domctl(hv, &mut op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn vcpu_info_layout_and_reads() {
        assert_eq!(size_of::<VcpuInfo>(), 24);
        assert_eq!(offset_of!(VcpuInfo, online), 4);
        assert_eq!(offset_of!(VcpuInfo, running), 6);
        assert_eq!(offset_of!(VcpuInfo, cpu_time), 8);
        assert_eq!(offset_of!(VcpuInfo, cpu), 16);
        let xen = FakeXen::new();
        assert_eq!(
            vcpu_info(&xen, 3, 0),
            Err(ControlError::Xen(XenError::ESRCH))
        );
        xen.add_domain(3, dominf::RUNNING);
        xen.set_vcpu_time_ns(3, 0, 1_500_000_000);
        let info = vcpu_info(&xen, 3, 0).unwrap();
        assert_eq!(
            (info.vcpu, info.online, info.cpu_time),
            (0, 1, 1_500_000_000)
        );
        // A legacy fake domain has one vCPU.
        assert_eq!(
            vcpu_info(&xen, 3, 1),
            Err(ControlError::Xen(XenError::EINVAL))
        );
    }

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
        assert_eq!(size_of::<CreateDomain>(), 64);
        assert_eq!(offset_of!(CreateDomain, handle), 4);
        assert_eq!(offset_of!(CreateDomain, flags), 20);
        assert_eq!(offset_of!(CreateDomain, max_vcpus), 28);
        assert_eq!(offset_of!(CreateDomain, max_grant_frames), 36);
        assert_eq!(offset_of!(CreateDomain, grant_opts), 44);
        assert_eq!(offset_of!(CreateDomain, cpupool_id), 52);
        assert_eq!(offset_of!(CreateDomain, arch), 56);
        assert_eq!(size_of::<HvmContextArg>(), 16);
        assert_eq!(offset_of!(HvmContextArg, buffer), 8);
        assert_eq!(size_of::<DomctlPayload>(), 128);
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
