//! Serving a guest over its store page (`struct xenstore_domain_interface`) and event
//! channel. The page is behind [`RingPage`]: in the kernel, the guest's mapped frame; in
//! tests, a [`XenstoreDomainInterface`] in ordinary memory that the test plays the guest on.
//!
//! One [`Xenstored::service_ring`] call writes queued output, then reads and answers up to
//! [`REQUESTS_PER_SERVICE`] requests, then writes again. The indices the guest controls are
//! checked on every access; impossible indices or an over-long header cut the guest off
//! (the reason goes to the page's `error` field) and touch nothing else.

use keel_xen::xenstore_ring::{XenstoreDomainInterface, XsRingError, SERVER_FEATURE_ERROR};

use crate::connection::{Channel, CutOff, DecodeError};
use crate::daemon::{ConnKey, HandleError, Xenstored};
use crate::quota::REQUESTS_PER_SERVICE;

/// The xenstored side of a store page.
pub trait RingPage {
    /// Copies up to `out.len()` request bytes the guest produced and consumes them.
    fn read_requests(&self, out: &mut [u8]) -> Result<usize, XsRingError>;
    /// Copies as much of `data` as fits into the response ring; returns the bytes written.
    fn write_responses(&self, data: &[u8]) -> Result<usize, XsRingError>;
    /// Sets the page's `error` field (`XENSTORE_ERROR_*`).
    fn set_error(&self, code: u32);
    /// Zeroes the indices and error and advertises `server_features` (at introduction).
    fn reset(&self, server_features: u32);
}

impl RingPage for XenstoreDomainInterface {
    fn read_requests(&self, out: &mut [u8]) -> Result<usize, XsRingError> {
        self.server_read(out)
    }
    fn write_responses(&self, data: &[u8]) -> Result<usize, XsRingError> {
        self.server_write(data)
    }
    fn set_error(&self, code: u32) {
        self.error
            .store(code, core::sync::atomic::Ordering::Release);
    }
    fn reset(&self, server_features: u32) {
        use core::sync::atomic::Ordering::Release;
        self.req_cons.store(0, Release);
        self.req_prod.store(0, Release);
        self.rsp_cons.store(0, Release);
        self.rsp_prod.store(0, Release);
        self.error.store(0, Release);
        self.connection.store(0, Release);
        self.server_features.store(server_features, Release);
    }
}

/// Readies a freshly mapped page at introduction: indices zeroed, error reporting
/// advertised.
pub fn prepare<R: RingPage + ?Sized>(page: &R) {
    page.reset(SERVER_FEATURE_ERROR);
}

/// What one [`Xenstored::service_ring`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingActivity {
    /// Bytes were consumed or produced: notify the guest's event channel.
    pub notify: bool,
    /// Requests may remain (the per-call budget ran out): call again.
    pub more: bool,
}

impl Xenstored {
    /// Moves bytes between guest `domid`'s store page and its connection: writes queued
    /// replies and events, reads and answers requests. Errors only when the domain is not
    /// introduced or was cut off (this call or earlier).
    pub fn service_ring<R: RingPage + ?Sized>(
        &mut self,
        domid: u16,
        page: &R,
    ) -> Result<RingActivity, HandleError> {
        let mut activity = RingActivity::default();
        self.flush_ring(domid, page, &mut activity)?;
        let mut handled = 0;
        while handled < REQUESTS_PER_SERVICE {
            match self.check_accepts(domid) {
                Ok(()) => {}
                Err(HandleError::Busy) => break,
                Err(e) => return Err(e),
            }
            if !self.read_one(domid, page, &mut activity)? {
                break;
            }
            handled += 1;
            self.flush_ring(domid, page, &mut activity)?;
        }
        // Budget spent: there may be more requests in the ring.
        activity.more = handled == REQUESTS_PER_SERVICE;
        self.flush_ring(domid, page, &mut activity)?;
        Ok(activity)
    }

    /// Reads the bytes of the current request; returns whether a whole request was
    /// handled.
    fn read_one<R: RingPage + ?Sized>(
        &mut self,
        domid: u16,
        page: &R,
        activity: &mut RingActivity,
    ) -> Result<bool, HandleError> {
        let mut buf = [0u8; 1024];
        loop {
            let Some(conn) = self.conns.get_mut(&ConnKey::Domain(domid)) else {
                return Err(HandleError::NotIntroduced);
            };
            let Channel::Ring(r) = &mut conn.channel else {
                return Err(HandleError::NotIntroduced);
            };
            let want = r.decoder.wanted().min(buf.len());
            let got = if want == 0 {
                0
            } else {
                match page.read_requests(&mut buf[..want]) {
                    Ok(n) => n,
                    Err(XsRingError::BadIndex { .. }) => {
                        return Err(self.kill(domid, page, CutOff::RingIndex));
                    }
                }
            };
            if got > 0 {
                activity.notify = true;
            }
            let decoded = r.decoder.push(&buf[..got]);
            match decoded {
                Err(DecodeError::TooLong) => return Err(self.kill(domid, page, CutOff::Protocol)),
                Err(DecodeError::NoMemory) => {
                    return Err(self.kill(domid, page, CutOff::OutOfMemory))
                }
                Ok(Some(req)) => {
                    self.handle_raw(domid, req)?;
                    return Ok(true);
                }
                Ok(None) if got == 0 => return Ok(false),
                Ok(None) => {}
            }
        }
    }

    /// Writes as much queued output as the response ring takes.
    fn flush_ring<R: RingPage + ?Sized>(
        &mut self,
        domid: u16,
        page: &R,
        activity: &mut RingActivity,
    ) -> Result<(), HandleError> {
        let Some(conn) = self.conns.get_mut(&ConnKey::Domain(domid)) else {
            return Err(HandleError::NotIntroduced);
        };
        let Channel::Ring(r) = &mut conn.channel else {
            return Err(HandleError::NotIntroduced);
        };
        if let Some(c) = r.cut_off {
            return Err(HandleError::CutOff(c));
        }
        while let Some(front) = r.out.front_mut() {
            let n = match page.write_responses(front.pending()) {
                Ok(n) => n,
                Err(XsRingError::BadIndex { .. }) => {
                    return Err(self.kill(domid, page, CutOff::RingIndex));
                }
            };
            if n == 0 {
                break;
            }
            activity.notify = true;
            front.written += n;
            if front.written == front.len() {
                let done_len = front.len();
                let was_reply = !front.is_event;
                r.out.pop_front();
                r.out_bytes = r.out_bytes.saturating_sub(done_len);
                if was_reply {
                    r.replies_queued = r.replies_queued.saturating_sub(1);
                }
            }
        }
        Ok(())
    }

    fn kill<R: RingPage + ?Sized>(&mut self, domid: u16, page: &R, why: CutOff) -> HandleError {
        page.set_error(why.ring_error());
        self.cut_off(domid, why);
        HandleError::CutOff(why)
    }
}
