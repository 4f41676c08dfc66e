//! Domain control (`domctl`): what the toolstack asks Xen about and does to its domains.

use keel_xen::control::ControlError;
use keel_xen::domctl::{self, DomainInfo};
use keel_xen::{Hypervisor, XenError};

/// Result of one `XEN_DOMCTL_destroydomain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyProgress {
    /// Xen accepted; the domain is dying or gone.
    Done,
    /// Xen preempted the teardown (`EAGAIN`): call again.
    Again,
}

/// Domain control as the toolstack uses it; [`XenControl`] is the real one.
pub trait DomainControl {
    /// `getdomaininfo` for exactly `domid`; `None` when Xen has no such domain.
    fn info(&self, domid: u16) -> Result<Option<DomainInfo>, ControlError>;
    fn pause(&self, domid: u16) -> Result<(), ControlError>;
    fn unpause(&self, domid: u16) -> Result<(), ControlError>;
    fn destroy(&self, domid: u16) -> Result<DestroyProgress, ControlError>;
}

/// [`DomainControl`] through keel-xen's domctl wrappers.
#[derive(Debug)]
pub struct XenControl<'h, H: ?Sized>(pub &'h H);

impl<H: Hypervisor + ?Sized> DomainControl for XenControl<'_, H> {
    fn info(&self, domid: u16) -> Result<Option<DomainInfo>, ControlError> {
        // `domain_info` checks the id: Xen 4.17 would answer with the next domain.
        match domctl::domain_info(self.0, domid) {
            Ok(info) => Ok(Some(info)),
            Err(ControlError::Xen(XenError::ESRCH)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn pause(&self, domid: u16) -> Result<(), ControlError> {
        domctl::pause_domain(self.0, domid)
    }

    fn unpause(&self, domid: u16) -> Result<(), ControlError> {
        domctl::unpause_domain(self.0, domid)
    }

    fn destroy(&self, domid: u16) -> Result<DestroyProgress, ControlError> {
        match domctl::destroy_domain(self.0, domid) {
            Ok(()) => Ok(DestroyProgress::Done),
            Err(ControlError::Xen(XenError::EAGAIN)) => Ok(DestroyProgress::Again),
            Err(e) => Err(e),
        }
    }
}
