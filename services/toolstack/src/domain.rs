//! One guest's lifecycle, as a state machine without I/O: the [`Toolstack`](crate::Toolstack)
//! performs the store and domctl operations and feeds their outcomes and the time in here.
//! Timers are absolute deadlines in nanoseconds of the caller's monotonic clock.

use alloc::string::String;

use keel_xen::domctl::{dominf, DomainInfo};

/// What a clean shutdown asks the guest for (`control/shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    Poweroff,
    Reboot,
}

impl ShutdownKind {
    /// The value written to `control/shutdown`.
    pub fn request(self) -> &'static str {
        match self {
            ShutdownKind::Poweroff => "poweroff",
            ShutdownKind::Reboot => "reboot",
        }
    }
}

/// Why a domain stopped (`SHUTDOWN_*`, from `getdomaininfo` flags bits 16..24). The caller
/// applies the VM's `actions_after_*` to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    Watchdog,
    SoftReset,
    /// A code Xen 4.17 does not define.
    Unknown(u8),
}

impl ExitReason {
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => ExitReason::Poweroff,
            1 => ExitReason::Reboot,
            2 => ExitReason::Suspend,
            3 => ExitReason::Crash,
            4 => ExitReason::Watchdog,
            5 => ExitReason::SoftReset,
            other => ExitReason::Unknown((other & 0xff) as u8),
        }
    }
}

/// How a clean shutdown failed. The domain is left as it is: no silent hard stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownFailure {
    /// The guest did not acknowledge the request in time (no PV control driver, hung).
    NotAcknowledged,
    /// It acknowledged but did not shut down in time.
    NotCompleted,
}

/// Deadlines of the lifecycle, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From writing `control/shutdown` to the guest's acknowledgement (libxl: 60 s).
    pub shutdown_ack_ns: u64,
    /// From the acknowledgement to Xen reporting the domain shut down. Ours: 10 minutes,
    /// enough for a guest to sync its disks, short enough that a hung one is reported.
    pub shutdown_complete_ns: u64,
    /// Between two `destroydomain`/`getdomaininfo` attempts while a domain is dying.
    pub destroy_retry_ns: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            shutdown_ack_ns: 60_000_000_000,
            shutdown_complete_ns: 600_000_000_000,
            destroy_retry_ns: 100_000_000,
        }
    }
}

/// Where a domain is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Built and not shutting down (running or paused: see [`Domain::paused`]).
    Active,
    /// `control/shutdown` was written; waiting for the guest to clear it.
    ShutdownRequested { kind: ShutdownKind, deadline: u64 },
    /// The guest acknowledged; waiting for Xen to report it shut down.
    ShutdownAcknowledged { kind: ShutdownKind, deadline: u64 },
    /// Xen reports the domain shut down; it stays until the caller destroys it.
    Exited(ExitReason),
    /// Its store nodes and console are gone and Xen is tearing it down; `requested` says
    /// whether we asked (otherwise someone else destroyed it).
    Destroying { requested: bool, next_try: u64 },
}

/// Why a lifecycle call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// The call does not apply in this phase (e.g. a clean shutdown of an exited domain).
    WrongPhase(Phase),
    /// A paused guest cannot acknowledge a shutdown request; unpause it first.
    Paused,
}

/// What a `getdomaininfo` answer means for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Nothing new.
    Unchanged,
    /// Xen reports it shut down (first time seen).
    Exited(ExitReason),
    /// It is dying or gone and we did not destroy it: clean up after it.
    Vanishing,
    /// A domain we are destroying is gone at last.
    Gone,
}

/// A guest the toolstack manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    domid: u16,
    uuid: [u8; 16],
    name: String,
    paused: bool,
    phase: Phase,
}

impl Domain {
    /// A domain just built (paused by the builder).
    pub fn new(domid: u16, uuid: [u8; 16], name: String) -> Self {
        Domain {
            domid,
            uuid,
            name,
            paused: true,
            phase: Phase::Active,
        }
    }

    pub fn domid(&self) -> u16 {
        self.domid
    }
    pub fn uuid(&self) -> &[u8; 16] {
        &self.uuid
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn paused(&self) -> bool {
        self.paused
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether pause/unpause apply (a live domain not being torn down).
    pub fn check_can_pause(&self) -> Result<(), StateError> {
        match self.phase {
            Phase::Exited(_) | Phase::Destroying { .. } => Err(StateError::WrongPhase(self.phase)),
            _ => Ok(()),
        }
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Whether a clean shutdown may be requested now.
    pub fn check_can_request_shutdown(&self) -> Result<(), StateError> {
        if self.phase != Phase::Active {
            return Err(StateError::WrongPhase(self.phase));
        }
        if self.paused {
            return Err(StateError::Paused);
        }
        Ok(())
    }

    /// The request was written at `now`.
    pub fn shutdown_requested(&mut self, kind: ShutdownKind, now: u64, t: &Timeouts) {
        self.phase = Phase::ShutdownRequested {
            kind,
            deadline: now.saturating_add(t.shutdown_ack_ns),
        };
    }

    /// `control/shutdown` now reads `value`; returns the kind when this is the guest's
    /// acknowledgement (the node emptied or removed while a request was pending).
    pub fn shutdown_node_read(
        &mut self,
        value: Option<&[u8]>,
        now: u64,
        t: &Timeouts,
    ) -> Option<ShutdownKind> {
        let Phase::ShutdownRequested { kind, .. } = self.phase else {
            return None;
        };
        if !value.is_none_or(<[u8]>::is_empty) {
            return None;
        }
        self.phase = Phase::ShutdownAcknowledged {
            kind,
            deadline: now.saturating_add(t.shutdown_complete_ns),
        };
        Some(kind)
    }

    /// The earliest time [`Domain::on_timer`] has something to do.
    pub fn deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::ShutdownRequested { deadline, .. }
            | Phase::ShutdownAcknowledged { deadline, .. } => Some(deadline),
            Phase::Destroying { next_try, .. } => Some(next_try),
            Phase::Active | Phase::Exited(_) => None,
        }
    }

    /// A shutdown deadline passed: the failure to report; the domain goes back to `Active`.
    pub fn on_timer(&mut self, now: u64) -> Option<(ShutdownKind, ShutdownFailure)> {
        let failure = match self.phase {
            Phase::ShutdownRequested { kind, deadline } if now >= deadline => {
                (kind, ShutdownFailure::NotAcknowledged)
            }
            Phase::ShutdownAcknowledged { kind, deadline } if now >= deadline => {
                (kind, ShutdownFailure::NotCompleted)
            }
            _ => return None,
        };
        self.phase = Phase::Active;
        Some(failure)
    }

    /// Whether a destroy retry is due.
    pub fn destroy_due(&self, now: u64) -> bool {
        matches!(self.phase, Phase::Destroying { next_try, .. } if now >= next_try)
    }

    /// Teardown started (by us when `requested`); next attempt at `now + retry`.
    pub fn destroying(&mut self, requested: bool, now: u64, t: &Timeouts) {
        self.phase = Phase::Destroying {
            requested,
            next_try: now.saturating_add(t.destroy_retry_ns),
        };
    }

    /// Interprets Xen's view of the domain (`None`: Xen has no such domain).
    pub fn observe(&mut self, info: Option<&DomainInfo>) -> Observation {
        match (self.phase, info) {
            (Phase::Destroying { .. }, None) => Observation::Gone,
            (Phase::Destroying { .. }, Some(_)) => Observation::Unchanged,
            (_, None) => Observation::Vanishing,
            (_, Some(i)) if i.has(dominf::DYING) => Observation::Vanishing,
            (Phase::Exited(_), Some(_)) => Observation::Unchanged,
            (_, Some(i)) => match i.shutdown_code() {
                Some(code) => {
                    let reason = ExitReason::from_code(code);
                    self.phase = Phase::Exited(reason);
                    Observation::Exited(reason)
                }
                None => Observation::Unchanged,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        shutdown_ack_ns: 60,
        shutdown_complete_ns: 600,
        destroy_retry_ns: 10,
    };

    fn info(flags: u32) -> DomainInfo {
        DomainInfo {
            domain: 5,
            flags,
            ..DomainInfo::default()
        }
    }

    fn running() -> Domain {
        let mut d = Domain::new(5, [1; 16], "g".into());
        d.set_paused(false);
        d
    }

    #[test]
    fn exit_codes_decode() {
        let all = [
            ExitReason::Poweroff,
            ExitReason::Reboot,
            ExitReason::Suspend,
            ExitReason::Crash,
            ExitReason::Watchdog,
            ExitReason::SoftReset,
        ];
        for (code, reason) in all.into_iter().enumerate() {
            assert_eq!(ExitReason::from_code(code as u32), reason);
        }
        assert_eq!(ExitReason::from_code(9), ExitReason::Unknown(9));
    }

    #[test]
    fn clean_shutdown_acknowledged_then_exited() {
        let mut d = running();
        d.check_can_request_shutdown().unwrap();
        d.shutdown_requested(ShutdownKind::Reboot, 100, &T);
        assert_eq!(d.deadline(), Some(160));
        assert_eq!(d.shutdown_node_read(Some(b"reboot"), 110, &T), None);
        assert_eq!(
            d.shutdown_node_read(Some(b""), 120, &T),
            Some(ShutdownKind::Reboot)
        );
        assert_eq!(d.deadline(), Some(720));
        // A second read of the empty node is not a second acknowledgement.
        assert_eq!(d.shutdown_node_read(Some(b""), 130, &T), None);
        let shut = dominf::SHUTDOWN | (1 << dominf::SHUTDOWN_SHIFT);
        assert_eq!(
            d.observe(Some(&info(shut))),
            Observation::Exited(ExitReason::Reboot)
        );
        assert_eq!(d.observe(Some(&info(shut))), Observation::Unchanged);
        assert_eq!(d.deadline(), None);
        assert_eq!(
            d.check_can_request_shutdown(),
            Err(StateError::WrongPhase(Phase::Exited(ExitReason::Reboot)))
        );
    }

    #[test]
    fn unacknowledged_and_uncompleted_shutdowns_are_reported() {
        let mut d = running();
        d.shutdown_requested(ShutdownKind::Poweroff, 0, &T);
        assert_eq!(d.on_timer(59), None);
        assert_eq!(
            d.on_timer(60),
            Some((ShutdownKind::Poweroff, ShutdownFailure::NotAcknowledged))
        );
        assert_eq!(d.phase(), Phase::Active);
        d.shutdown_requested(ShutdownKind::Poweroff, 100, &T);
        assert!(d.shutdown_node_read(None, 101, &T).is_some());
        assert_eq!(d.on_timer(700), None);
        assert_eq!(
            d.on_timer(701),
            Some((ShutdownKind::Poweroff, ShutdownFailure::NotCompleted))
        );
    }

    #[test]
    fn paused_guests_cannot_be_asked_to_shut_down() {
        let d = Domain::new(5, [1; 16], "g".into());
        assert!(d.paused());
        assert_eq!(d.check_can_request_shutdown(), Err(StateError::Paused));
    }

    #[test]
    fn a_domain_dying_without_us_is_vanishing_and_ours_is_gone_when_absent() {
        let mut d = running();
        assert_eq!(
            d.observe(Some(&info(dominf::RUNNING))),
            Observation::Unchanged
        );
        assert_eq!(
            d.observe(Some(&info(dominf::DYING))),
            Observation::Vanishing
        );
        assert_eq!(d.observe(None), Observation::Vanishing);
        d.destroying(true, 50, &T);
        assert!(!d.destroy_due(59));
        assert!(d.destroy_due(60));
        assert_eq!(
            d.observe(Some(&info(dominf::DYING))),
            Observation::Unchanged
        );
        assert_eq!(d.observe(None), Observation::Gone);
        assert!(d.check_can_pause().is_err());
    }
}
