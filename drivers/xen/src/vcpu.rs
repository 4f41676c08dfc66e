//! `vcpu_op` hypercall (`xen/include/public/vcpu.h`): placing `vcpu_info` in our own memory
//! and the one-shot timer that drives the kernel's timer wheel.

use crate::error::XenError;
use crate::hypercall::{HypercallOp, Hypervisor, PAGE_SIZE};
use crate::shared_info::VcpuInfo;

const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;
const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
const VCPUOP_STOP_SINGLESHOT_TIMER: u64 = 9;
const VCPUOP_REGISTER_VCPU_INFO: u64 = 10;

/// `VCPU_SSHOTTMR_future`: fail with `ETIME` instead of firing if the deadline has passed.
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1;

/// `struct vcpu_register_vcpu_info` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuRegisterVcpuInfo {
    /// Guest frame of the page holding the `vcpu_info` (an MFN only for PV guests).
    pub mfn: u64,
    pub offset: u32,
    pub rsvd: u32,
}

/// `struct vcpu_set_singleshot_timer` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuSetSingleshotTimer {
    pub timeout_abs_ns: u64,
    pub flags: u32,
}

// `vcpu_op(cmd, vcpuid, arg)`: the vCPU id is the second argument.
fn vcpu_call<H: Hypervisor + ?Sized>(
    hv: &H,
    cmd: u64,
    vcpu: u32,
    arg: u64,
) -> Result<u64, XenError> {
    // SAFETY: the callers pass either 0 or the address of the live structure `cmd` expects.
    let ret = unsafe {
        hv.hypercall(
            HypercallOp::VcpuOp as u32,
            [cmd, u64::from(vcpu), arg, 0, 0],
        )
    };
    XenError::check(ret)
}

/// `VCPUOP_register_vcpu_info`: Xen moves vCPU `vcpu`'s `vcpu_info` to `offset` in guest
/// frame `gfn`. Needed for vCPUs 32 and above (shared_info only holds 32) and for cache
/// locality. The structure must not straddle the page, which is checked here because Xen
/// would only say `EINVAL`.
pub fn register_vcpu_info<H: Hypervisor + ?Sized>(
    hv: &H,
    vcpu: u32,
    gfn: u64,
    offset: u32,
) -> Result<(), XenError> {
    let fits = (offset as usize)
        .checked_add(core::mem::size_of::<VcpuInfo>())
        .is_some_and(|end| end <= PAGE_SIZE);
    if !fits || !(offset as usize).is_multiple_of(core::mem::align_of::<VcpuInfo>()) {
        return Err(XenError::EINVAL);
    }
    let mut arg = VcpuRegisterVcpuInfo {
        mfn: gfn,
        offset,
        rsvd: 0,
    };
    vcpu_call(
        hv,
        VCPUOP_REGISTER_VCPU_INFO,
        vcpu,
        &mut arg as *mut _ as u64,
    )
    .map(drop)
}

/// Outcome of arming the one-shot timer with [`VCPU_SSHOTTMR_FUTURE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerArm {
    /// Armed; `VIRQ_TIMER` fires at the deadline.
    Armed,
    /// The deadline had already passed (`ETIME`); the caller should run expired timers now.
    AlreadyExpired,
}

/// `VCPUOP_set_singleshot_timer` at absolute Xen system time `deadline_ns`.
pub fn set_singleshot_timer<H: Hypervisor + ?Sized>(
    hv: &H,
    vcpu: u32,
    deadline_ns: u64,
    fail_if_past: bool,
) -> Result<TimerArm, XenError> {
    let mut arg = VcpuSetSingleshotTimer {
        timeout_abs_ns: deadline_ns,
        flags: if fail_if_past {
            VCPU_SSHOTTMR_FUTURE
        } else {
            0
        },
    };
    match vcpu_call(
        hv,
        VCPUOP_SET_SINGLESHOT_TIMER,
        vcpu,
        &mut arg as *mut _ as u64,
    ) {
        Ok(_) => Ok(TimerArm::Armed),
        Err(XenError::ETIME) if fail_if_past => Ok(TimerArm::AlreadyExpired),
        Err(e) => Err(e),
    }
}

/// `VCPUOP_stop_singleshot_timer`.
pub fn stop_singleshot_timer<H: Hypervisor + ?Sized>(hv: &H, vcpu: u32) -> Result<(), XenError> {
    vcpu_call(hv, VCPUOP_STOP_SINGLESHOT_TIMER, vcpu, 0).map(drop)
}

/// `VCPUOP_stop_periodic_timer`: Xen starts vCPUs with a 100 Hz periodic `VIRQ_TIMER`;
/// a tickless kernel stops it.
pub fn stop_periodic_timer<H: Hypervisor + ?Sized>(hv: &H, vcpu: u32) -> Result<(), XenError> {
    vcpu_call(hv, VCPUOP_STOP_PERIODIC_TIMER, vcpu, 0).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        assert_eq!(size_of::<VcpuRegisterVcpuInfo>(), 16);
        assert_eq!(offset_of!(VcpuRegisterVcpuInfo, offset), 8);
        assert_eq!(size_of::<VcpuSetSingleshotTimer>(), 16);
        assert_eq!(offset_of!(VcpuSetSingleshotTimer, flags), 8);
    }

    #[test]
    fn registers_vcpu_info_inside_one_page() {
        let xen = FakeXen::new();
        register_vcpu_info(&xen, 1, 0x1234, 64).unwrap();
        assert_eq!(xen.vcpu_info_registrations(), [(1, 0x1234, 64)]);
        assert_eq!(
            register_vcpu_info(&xen, 1, 0x1234, 4096 - 32),
            Err(XenError::EINVAL)
        );
        assert_eq!(
            register_vcpu_info(&xen, 1, 0x1234, 4),
            Err(XenError::EINVAL)
        );
        assert_eq!(xen.vcpu_info_registrations().len(), 1);
    }

    #[test]
    fn singleshot_timer_reports_past_deadlines() {
        let xen = FakeXen::new();
        xen.set_system_time_ns(1_000_000);
        assert_eq!(
            set_singleshot_timer(&xen, 0, 2_000_000, true),
            Ok(TimerArm::Armed)
        );
        assert_eq!(xen.singleshot_deadline(0), Some(2_000_000));
        assert_eq!(
            set_singleshot_timer(&xen, 0, 500_000, true),
            Ok(TimerArm::AlreadyExpired)
        );
        assert_eq!(
            set_singleshot_timer(&xen, 0, 500_000, false),
            Ok(TimerArm::Armed)
        );
        stop_singleshot_timer(&xen, 0).unwrap();
        assert_eq!(xen.singleshot_deadline(0), None);
        stop_periodic_timer(&xen, 0).unwrap();
        assert!(xen.periodic_stopped(0));
    }
}
