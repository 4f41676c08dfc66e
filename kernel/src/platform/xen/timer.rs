//! Xen's one-shot timer, which ends the executor's idle halt under Xen.
//!
//! `VCPUOP_set_singleshot_timer` takes an absolute Xen system time (the pvclock's), so it
//! needs no calibration, unlike the local APIC's timer (10 ms of busy waiting and a rate
//! measured through the emulated TSC). Expiry raises `VIRQ_TIMER`, which arrives through the
//! upcall vector and so ends `hlt`; nobody waits on the port itself. Xen's 100 Hz periodic
//! timer is stopped: the executor is tickless.

use keel_xen::evtchn::{self, Virq};
use keel_xen::vcpu;
use keel_xen::XenError;
use spin::Once;

use super::events::{BindPortError, EventChannel};
use super::hypercall::Xen;
use crate::time;

/// Keel runs on vCPU 0 only.
const VCPU: u32 = 0;

static TIMER_PORT: Once<EventChannel> = Once::new();

/// Why the Xen timer could not be set up.
#[derive(Debug)]
pub enum TimerError {
    StopPeriodic(XenError),
    BindVirq(XenError),
    Bind(BindPortError),
}

impl core::fmt::Display for TimerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TimerError::StopPeriodic(e) => write!(f, "VCPUOP_stop_periodic_timer: {e}"),
            TimerError::BindVirq(e) => write!(f, "EVTCHNOP_bind_virq(VIRQ_TIMER): {e}"),
            TimerError::Bind(e) => write!(f, "binding the VIRQ_TIMER port: {e:?}"),
        }
    }
}

/// Stops the periodic timer and routes `VIRQ_TIMER` to the upcall. Needs the event
/// channels set up (`events::init`).
pub fn init() -> Result<(), TimerError> {
    vcpu::stop_periodic_timer(&Xen, VCPU).map_err(TimerError::StopPeriodic)?;
    let port = evtchn::bind_virq(&Xen, Virq::Timer, VCPU).map_err(TimerError::BindVirq)?;
    let channel = EventChannel::bind(port).map_err(TimerError::Bind)?;
    TIMER_PORT.call_once(|| channel);
    Ok(())
}

/// Arms the one-shot timer `ns` nanoseconds from now. A deadline already past fires at once
/// (no `VCPU_SSHOTTMR_future`), so the halt that follows always ends.
pub fn arm(ns: u64) {
    let Some(now) = time::xen_system_time_ns() else {
        log::error!("xen: no pvclock reading; the idle halt has no timer");
        return;
    };
    if let Err(e) = vcpu::set_singleshot_timer(&Xen, VCPU, now.saturating_add(ns), false) {
        log::error!("xen: VCPUOP_set_singleshot_timer: {e}");
    }
}
