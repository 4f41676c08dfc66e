//! `shared_info` and `vcpu_info` (`xen/include/public/xen.h`, x86_64 layout).
//!
//! These pages are written by Xen concurrently with the guest, so every field either side
//! writes is an atomic: that makes `&SharedInfo` over the real page sound and gives exact C
//! layout (atomics have the size and alignment of their integer). The kernel obtains the
//! reference with [`SharedInfo::from_ptr`] after `XENMEM_add_to_physmap(shared_info)`;
//! tests use [`SharedInfo::zeroed`].

use core::sync::atomic::{AtomicI8, AtomicU32, AtomicU64, AtomicU8};

/// `XEN_LEGACY_MAX_VCPUS` on x86: `vcpu_info` slots embedded in shared_info.
pub const LEGACY_MAX_VCPUS: usize = 32;
/// Bits per `xen_ulong_t`.
pub const BITS_PER_WORD: usize = 64;
/// `EVTCHN_2L_NR_CHANNELS` on x86_64: 64 words × 64 bits.
pub const EVTCHN_2L_NR_CHANNELS: usize = BITS_PER_WORD * BITS_PER_WORD;

/// `struct vcpu_time_info` (32 bytes): the pvclock parameters Xen keeps per vCPU.
#[repr(C)]
#[derive(Debug, Default)]
pub struct VcpuTimeInfo {
    /// Odd while Xen is updating; changes on every update.
    pub version: AtomicU32,
    pub pad0: AtomicU32,
    /// TSC at the last update.
    pub tsc_timestamp: AtomicU64,
    /// Nanoseconds since boot at `tsc_timestamp`.
    pub system_time: AtomicU64,
    pub tsc_to_system_mul: AtomicU32,
    pub tsc_shift: AtomicI8,
    /// `XEN_PVCLOCK_*`.
    pub flags: AtomicU8,
    pub pad1: [u8; 2],
}

/// `struct vcpu_info` (64 bytes on x86).
#[repr(C)]
#[derive(Debug, Default)]
pub struct VcpuInfo {
    /// Set by Xen when an event is pending for this vCPU; cleared by the guest first.
    pub evtchn_upcall_pending: AtomicU8,
    /// PV only (`XEN_HAVE_PV_UPCALL_MASK`); unused padding for HVM/PVH.
    pub evtchn_upcall_mask: AtomicU8,
    pub pad0: [u8; 6],
    /// One bit per word of `evtchn_pending` that has new events for this vCPU.
    pub evtchn_pending_sel: AtomicU64,
    /// `struct arch_vcpu_info`: cr2 and padding.
    pub arch_cr2: AtomicU64,
    pub arch_pad: AtomicU64,
    pub time: VcpuTimeInfo,
}

/// `struct arch_shared_info` on x86_64 (48 bytes); only meaningful for PV guests.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ArchSharedInfo {
    pub max_pfn: AtomicU64,
    pub pfn_to_mfn_frame_list_list: AtomicU64,
    pub nmi_reason: AtomicU64,
    pub p2m_cr3: AtomicU64,
    pub p2m_vaddr: AtomicU64,
    pub p2m_generation: AtomicU64,
}

/// `struct shared_info` (3136 bytes on x86_64).
#[repr(C)]
#[derive(Debug)]
pub struct SharedInfo {
    pub vcpu_info: [VcpuInfo; LEGACY_MAX_VCPUS],
    /// Level-2 pending bits, one per event-channel port.
    pub evtchn_pending: [AtomicU64; BITS_PER_WORD],
    /// Level-2 mask bits; a masked port's pending bit does not raise an upcall.
    pub evtchn_mask: [AtomicU64; BITS_PER_WORD],
    /// Wallclock at system time 0; `wc_version` follows the same protocol as
    /// [`VcpuTimeInfo::version`].
    pub wc_version: AtomicU32,
    pub wc_sec: AtomicU32,
    pub wc_nsec: AtomicU32,
    pub wc_sec_hi: AtomicU32,
    pub arch: ArchSharedInfo,
}

impl SharedInfo {
    /// An all-zero page image, as Xen hands it over before any event (tests, fakes).
    pub fn zeroed() -> Self {
        SharedInfo {
            vcpu_info: core::array::from_fn(|_| VcpuInfo::default()),
            evtchn_pending: core::array::from_fn(|_| AtomicU64::new(0)),
            evtchn_mask: core::array::from_fn(|_| AtomicU64::new(0)),
            wc_version: AtomicU32::new(0),
            wc_sec: AtomicU32::new(0),
            wc_nsec: AtomicU32::new(0),
            wc_sec_hi: AtomicU32::new(0),
            arch: ArchSharedInfo::default(),
        }
    }

    /// Views the shared_info page Xen placed at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be the (mapped, 8-byte aligned) address of the frame given to
    /// `XENMEM_add_to_physmap(XENMAPSPACE_shared_info)`, valid for the lifetime `'a`.
    pub unsafe fn from_ptr<'a>(ptr: *const SharedInfo) -> &'a SharedInfo {
        // SAFETY: guaranteed by the caller; all fields others write are atomics.
        unsafe { &*ptr }
    }

    /// `vcpu_info` slot of vCPU `vcpu`, if it lives in shared_info (vCPUs below 32, unless
    /// moved with `VCPUOP_register_vcpu_info`).
    pub fn vcpu(&self, vcpu: usize) -> Option<&VcpuInfo> {
        self.vcpu_info.get(vcpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        assert_eq!(size_of::<VcpuTimeInfo>(), 32);
        assert_eq!(offset_of!(VcpuTimeInfo, tsc_timestamp), 8);
        assert_eq!(offset_of!(VcpuTimeInfo, system_time), 16);
        assert_eq!(offset_of!(VcpuTimeInfo, tsc_to_system_mul), 24);
        assert_eq!(offset_of!(VcpuTimeInfo, tsc_shift), 28);
        assert_eq!(offset_of!(VcpuTimeInfo, flags), 29);
        assert_eq!(size_of::<VcpuInfo>(), 64);
        assert_eq!(offset_of!(VcpuInfo, evtchn_pending_sel), 8);
        assert_eq!(offset_of!(VcpuInfo, arch_cr2), 16);
        assert_eq!(offset_of!(VcpuInfo, time), 32);
        assert_eq!(size_of::<SharedInfo>(), 3136);
        assert_eq!(offset_of!(SharedInfo, evtchn_pending), 2048);
        assert_eq!(offset_of!(SharedInfo, evtchn_mask), 2560);
        assert_eq!(offset_of!(SharedInfo, wc_version), 3072);
        assert_eq!(offset_of!(SharedInfo, wc_sec), 3076);
        assert_eq!(offset_of!(SharedInfo, wc_nsec), 3080);
        assert_eq!(offset_of!(SharedInfo, wc_sec_hi), 3084);
        assert_eq!(offset_of!(SharedInfo, arch), 3088);
        assert_eq!(size_of::<ArchSharedInfo>(), 48);
        assert_eq!(EVTCHN_2L_NR_CHANNELS, 4096);
    }

    #[test]
    fn vcpu_slots_are_bounded() {
        let s = SharedInfo::zeroed();
        assert!(s.vcpu(31).is_some());
        assert!(s.vcpu(32).is_none());
    }
}
