//! `sched_op` hypercall (`xen/include/public/sched.h`): yielding, blocking until an event
//! and shutting down ourselves or another domain.

use crate::error::XenError;
use crate::hypercall::{call_no_arg, call_with, HypercallOp, Hypervisor};

const SCHEDOP_YIELD: u64 = 0;
const SCHEDOP_BLOCK: u64 = 1;
const SCHEDOP_SHUTDOWN: u64 = 2;
const SCHEDOP_REMOTE_SHUTDOWN: u64 = 4;

/// `SHUTDOWN_*` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    Poweroff = 0,
    Reboot = 1,
    Suspend = 2,
    Crash = 3,
    Watchdog = 4,
    SoftReset = 5,
}

impl ShutdownReason {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => ShutdownReason::Poweroff,
            1 => ShutdownReason::Reboot,
            2 => ShutdownReason::Suspend,
            3 => ShutdownReason::Crash,
            4 => ShutdownReason::Watchdog,
            5 => ShutdownReason::SoftReset,
            _ => return None,
        })
    }
}

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedShutdown {
    pub reason: u32,
}

/// `struct sched_remote_shutdown`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedRemoteShutdown {
    pub domain_id: u16,
    pub reason: u32,
}

/// `SCHEDOP_yield`: give up the pCPU.
pub fn yield_now<H: Hypervisor + ?Sized>(hv: &H) -> Result<(), XenError> {
    call_no_arg(hv, HypercallOp::SchedOp, SCHEDOP_YIELD).map(drop)
}

/// `SCHEDOP_block`: sleep until an event is pending. Xen clears the upcall mask, so an
/// event arriving between the caller's last check and this call still wakes it.
pub fn block<H: Hypervisor + ?Sized>(hv: &H) -> Result<(), XenError> {
    call_no_arg(hv, HypercallOp::SchedOp, SCHEDOP_BLOCK).map(drop)
}

/// `SCHEDOP_shutdown`. Returns only on error, or after a suspend is resumed.
pub fn shutdown<H: Hypervisor + ?Sized>(hv: &H, reason: ShutdownReason) -> Result<(), XenError> {
    let mut arg = SchedShutdown {
        reason: reason as u32,
    };
    call_with(hv, HypercallOp::SchedOp, SCHEDOP_SHUTDOWN, &mut arg).map(drop)
}

/// `SCHEDOP_remote_shutdown`: shut down another domain (privileged).
pub fn remote_shutdown<H: Hypervisor + ?Sized>(
    hv: &H,
    domid: u16,
    reason: ShutdownReason,
) -> Result<(), XenError> {
    let mut arg = SchedRemoteShutdown {
        domain_id: domid,
        reason: reason as u32,
    };
    call_with(hv, HypercallOp::SchedOp, SCHEDOP_REMOTE_SHUTDOWN, &mut arg).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        assert_eq!(size_of::<SchedShutdown>(), 4);
        assert_eq!(size_of::<SchedRemoteShutdown>(), 8);
        assert_eq!(offset_of!(SchedRemoteShutdown, reason), 4);
    }

    #[test]
    fn shutdown_reason_reaches_xen() {
        let xen = FakeXen::new();
        shutdown(&xen, ShutdownReason::Crash).unwrap();
        assert_eq!(xen.shutdown_reason(), Some(ShutdownReason::Crash));
        remote_shutdown(&xen, 5, ShutdownReason::Reboot).unwrap();
        assert_eq!(xen.remote_shutdowns(), [(5, ShutdownReason::Reboot)]);
    }

    #[test]
    fn yield_and_block_are_counted() {
        let xen = FakeXen::new();
        yield_now(&xen).unwrap();
        block(&xen).unwrap();
        block(&xen).unwrap();
        assert_eq!(xen.sched_counts(), (1, 2));
    }

    #[test]
    fn reasons_decode() {
        for r in 0..=5 {
            assert_eq!(ShutdownReason::from_raw(r).map(|s| s as u32), Some(r));
        }
        assert_eq!(ShutdownReason::from_raw(6), None);
    }
}
