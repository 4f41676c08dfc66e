//! `sysctl` hypercall (`xen/include/public/sysctl.h`): host-wide information.

use crate::control::{ControlError, ControlInterface, SYSCTL_INTERFACE_VERSION};
use crate::hypercall::{call_single, HypercallOp, Hypervisor};
use alloc::vec;
use alloc::vec::Vec;

const XEN_SYSCTL_PHYSINFO: u32 = 3;
const XEN_SYSCTL_GETCPUINFO: u32 = 8;

/// The most physical CPUs [`cpu_idle_times`] asks about in one call (Xen 4.17 allows up to
/// `NR_CPUS`, far more than Keel meters: keel-metering takes 128).
pub const MAX_CPUINFO: usize = 256;

/// `XEN_SYSCTL_PHYSCAP_*` bits of [`Physinfo::capabilities`].
pub mod physcap {
    pub const HVM: u32 = 1 << 0;
    pub const PV: u32 = 1 << 1;
    pub const DIRECTIO: u32 = 1 << 2;
    pub const HAP: u32 = 1 << 3;
    pub const SHADOW: u32 = 1 << 4;
    pub const IOMMU_HAP_PT_SHARE: u32 = 1 << 5;
    pub const VMTRACE: u32 = 1 << 6;
    pub const VPMU: u32 = 1 << 7;
    pub const GNTTAB_V1: u32 = 1 << 8;
    pub const GNTTAB_V2: u32 = 1 << 9;
}

/// `struct xen_sysctl_physinfo` (112 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Physinfo {
    pub threads_per_core: u32,
    pub cores_per_socket: u32,
    pub nr_cpus: u32,
    pub max_cpu_id: u32,
    pub nr_nodes: u32,
    pub max_node_id: u32,
    pub cpu_khz: u32,
    pub capabilities: u32,
    pub arch_capabilities: u32,
    pub pad: u32,
    pub total_pages: u64,
    pub free_pages: u64,
    pub scrub_pages: u64,
    pub outstanding_pages: u64,
    pub max_mfn: u64,
    pub hw_cap: [u32; 8],
}

impl Physinfo {
    /// Memory not given to any domain (or Xen), in bytes.
    pub fn free_memory_bytes(&self) -> u64 {
        self.free_pages
            .saturating_mul(crate::hypercall::PAGE_SIZE as u64)
    }
}

/// `struct xen_sysctl_getcpuinfo` (24 bytes): `info` points at `max_cpus`
/// `struct xen_sysctl_cpuinfo`s (one `u64` each, the CPU's idle time in ns); Xen writes
/// `nr_cpus`, how many it filled.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetCpuInfo {
    pub max_cpus: u32,
    pub pad: u32,
    pub info: u64,
    pub nr_cpus: u32,
    pub pad2: u32,
}

/// The sysctl payload union; `pad` fixes it at 128 bytes like Xen's.
#[repr(C)]
#[derive(Clone, Copy)]
pub union SysctlPayload {
    pub physinfo: Physinfo,
    pub getcpuinfo: GetCpuInfo,
    pub pad: [u8; 128],
}

/// `struct xen_sysctl` (136 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct XenSysctl {
    pub cmd: u32,
    pub interface_version: u32,
    pub u: SysctlPayload,
}

impl XenSysctl {
    fn new(cmd: u32) -> Self {
        XenSysctl {
            cmd,
            interface_version: SYSCTL_INTERFACE_VERSION,
            u: SysctlPayload { pad: [0; 128] },
        }
    }
}

fn sysctl<H: Hypervisor + ?Sized>(hv: &H, op: &mut XenSysctl) -> Result<(), ControlError> {
    call_single(hv, HypercallOp::Sysctl, op)
        .map(drop)
        .map_err(|e| ControlError::from_xen(ControlInterface::Sysctl, e))
}

/// `XEN_SYSCTL_physinfo`.
pub fn physinfo<H: Hypervisor + ?Sized>(hv: &H) -> Result<Physinfo, ControlError> {
    let mut op = XenSysctl::new(XEN_SYSCTL_PHYSINFO);
    sysctl(hv, &mut op)?;
    // SAFETY: every field of `Physinfo` is an integer, so any bytes Xen wrote are valid.
    Ok(unsafe { op.u.physinfo })
}

/// `XEN_SYSCTL_getcpuinfo`: the cumulative idle time in nanoseconds of each physical CPU
/// (index = CPU id, at most [`MAX_CPUINFO`]). A CPU's busy time is the time since boot minus
/// this (what xcp-rrdd's `cpuN` sources are made of).
pub fn cpu_idle_times<H: Hypervisor + ?Sized>(hv: &H) -> Result<Vec<u64>, ControlError> {
    let mut idle = vec![0u64; MAX_CPUINFO];
    let mut op = XenSysctl::new(XEN_SYSCTL_GETCPUINFO);
    op.u.getcpuinfo = GetCpuInfo {
        max_cpus: MAX_CPUINFO as u32,
        info: idle.as_mut_ptr() as u64,
        ..GetCpuInfo::default()
    };
    sysctl(hv, &mut op)?;
    // SAFETY: `GetCpuInfo` is plain integers.
    let filled = unsafe { op.u.getcpuinfo }.nr_cpus as usize;
    idle.truncate(filled.min(MAX_CPUINFO));
    Ok(idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        assert_eq!(size_of::<XenSysctl>(), 136);
        assert_eq!(align_of::<XenSysctl>(), 8);
        assert_eq!(offset_of!(XenSysctl, interface_version), 4);
        assert_eq!(offset_of!(XenSysctl, u), 8);
        assert_eq!(size_of::<Physinfo>(), 112);
        assert_eq!(offset_of!(Physinfo, cpu_khz), 24);
        assert_eq!(offset_of!(Physinfo, capabilities), 28);
        assert_eq!(offset_of!(Physinfo, total_pages), 40);
        assert_eq!(offset_of!(Physinfo, free_pages), 48);
        assert_eq!(offset_of!(Physinfo, max_mfn), 72);
        assert_eq!(offset_of!(Physinfo, hw_cap), 80);
    }

    #[test]
    fn reads_physinfo() {
        let xen = FakeXen::new();
        let info = physinfo(&xen).unwrap();
        assert_eq!(info.nr_cpus, 2);
        assert_eq!(info.total_pages, 262_144);
        assert!(info.capabilities & physcap::HVM != 0);
    }

    #[test]
    fn getcpuinfo_layout_matches_xen_417() {
        assert_eq!(size_of::<GetCpuInfo>(), 24);
        assert_eq!(offset_of!(GetCpuInfo, info), 8);
        assert_eq!(offset_of!(GetCpuInfo, nr_cpus), 16);
    }

    #[test]
    fn reads_cpu_idle_times() {
        let xen = FakeXen::new();
        assert_eq!(cpu_idle_times(&xen).unwrap(), [0, 0]);
        xen.set_cpu_idle_ns(1, 7_000_000_000);
        xen.set_cpu_idle_ns(0, 5);
        assert_eq!(cpu_idle_times(&xen).unwrap(), [5, 7_000_000_000]);
        xen.fail_next(HypercallOp::Sysctl, crate::error::XenError::EPERM);
        assert!(cpu_idle_times(&xen).is_err());
    }

    #[test]
    fn version_mismatch_is_named() {
        let xen = FakeXen::new();
        xen.set_control_interface_version(0x16);
        assert_eq!(
            physinfo(&xen),
            Err(ControlError::InterfaceVersionMismatch {
                interface: ControlInterface::Sysctl,
                sent: 0x15
            })
        );
    }
}
