//! The xenstore shared page (`struct xenstore_domain_interface` in `io/xs_wire.h`): two
//! 1 KiB byte rings (requests to xenstored, responses and watch events from it) with
//! free-running `u32` indices masked by the ring size.
//!
//! Either end may be hostile; an index pair claiming more than 1024 bytes in flight is
//! reported as [`XsRingError::BadIndex`] (xenstored then sets `XENSTORE_ERROR_RINGIDX`).

use core::sync::atomic::{fence, AtomicU32, AtomicU8, Ordering};

/// `XENSTORE_RING_SIZE`.
pub const XENSTORE_RING_SIZE: usize = 1024;

/// `XENSTORE_SERVER_FEATURE_*`.
pub const SERVER_FEATURE_RECONNECTION: u32 = 1;
pub const SERVER_FEATURE_ERROR: u32 = 2;
/// `XENSTORE_ERROR_*` values of [`XenstoreDomainInterface::error`].
pub const ERROR_NONE: u32 = 0;
pub const ERROR_COMM: u32 = 1;
pub const ERROR_RINGIDX: u32 = 2;
pub const ERROR_PROTO: u32 = 3;

/// `struct xenstore_domain_interface` (2076 bytes).
#[repr(C)]
pub struct XenstoreDomainInterface {
    pub req: [AtomicU8; XENSTORE_RING_SIZE],
    pub rsp: [AtomicU8; XENSTORE_RING_SIZE],
    pub req_cons: AtomicU32,
    pub req_prod: AtomicU32,
    pub rsp_cons: AtomicU32,
    pub rsp_prod: AtomicU32,
    pub server_features: AtomicU32,
    pub connection: AtomicU32,
    pub error: AtomicU32,
}

impl XenstoreDomainInterface {
    /// A fresh page image (tests, and a domain builder preparing a guest's page).
    pub fn zeroed() -> Self {
        XenstoreDomainInterface {
            req: core::array::from_fn(|_| AtomicU8::new(0)),
            rsp: core::array::from_fn(|_| AtomicU8::new(0)),
            req_cons: AtomicU32::new(0),
            req_prod: AtomicU32::new(0),
            rsp_cons: AtomicU32::new(0),
            rsp_prod: AtomicU32::new(0),
            server_features: AtomicU32::new(0),
            connection: AtomicU32::new(0),
            error: AtomicU32::new(0),
        }
    }
}

/// The peer's indices are impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XsRingError {
    BadIndex { cons: u32, prod: u32 },
}

fn in_flight(cons: u32, prod: u32) -> Result<usize, XsRingError> {
    let n = prod.wrapping_sub(cons) as usize;
    if n > XENSTORE_RING_SIZE {
        return Err(XsRingError::BadIndex { cons, prod });
    }
    Ok(n)
}

/// Producer side: copies as much of `data` as fits; returns the bytes written.
fn produce(
    ring: &[AtomicU8; XENSTORE_RING_SIZE],
    cons: &AtomicU32,
    prod: &AtomicU32,
    data: &[u8],
) -> Result<usize, XsRingError> {
    let c = cons.load(Ordering::Acquire);
    let p = prod.load(Ordering::Relaxed);
    let free = XENSTORE_RING_SIZE - in_flight(c, p)?;
    let n = free.min(data.len());
    for (i, byte) in data.iter().take(n).enumerate() {
        let slot = p.wrapping_add(i as u32) as usize % XENSTORE_RING_SIZE;
        ring[slot].store(*byte, Ordering::Relaxed);
    }
    // Bytes before index.
    prod.store(p.wrapping_add(n as u32), Ordering::Release);
    Ok(n)
}

/// Consumer side: copies up to `out.len()` bytes; returns the bytes read.
fn consume(
    ring: &[AtomicU8; XENSTORE_RING_SIZE],
    cons: &AtomicU32,
    prod: &AtomicU32,
    out: &mut [u8],
) -> Result<usize, XsRingError> {
    let p = prod.load(Ordering::Acquire);
    let c = cons.load(Ordering::Relaxed);
    let n = in_flight(c, p)?.min(out.len());
    for (i, byte) in out.iter_mut().take(n).enumerate() {
        let slot = c.wrapping_add(i as u32) as usize % XENSTORE_RING_SIZE;
        *byte = ring[slot].load(Ordering::Relaxed);
    }
    // Finish reading before handing the space back.
    fence(Ordering::Release);
    cons.store(c.wrapping_add(n as u32), Ordering::Release);
    Ok(n)
}

impl XenstoreDomainInterface {
    /// Guest side: queue request bytes for xenstored.
    pub fn client_write(&self, data: &[u8]) -> Result<usize, XsRingError> {
        produce(&self.req, &self.req_cons, &self.req_prod, data)
    }
    /// Guest side: take response/watch bytes.
    pub fn client_read(&self, out: &mut [u8]) -> Result<usize, XsRingError> {
        consume(&self.rsp, &self.rsp_cons, &self.rsp_prod, out)
    }
    /// xenstored side: take request bytes from the guest.
    pub fn server_read(&self, out: &mut [u8]) -> Result<usize, XsRingError> {
        consume(&self.req, &self.req_cons, &self.req_prod, out)
    }
    /// xenstored side: queue response bytes for the guest.
    pub fn server_write(&self, data: &[u8]) -> Result<usize, XsRingError> {
        produce(&self.rsp, &self.rsp_cons, &self.rsp_prod, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore_wire::{request, XsDecoder, XsType};
    use alloc::boxed::Box;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_xs_wire_h() {
        assert_eq!(size_of::<XenstoreDomainInterface>(), 2076);
        assert_eq!(offset_of!(XenstoreDomainInterface, req_cons), 2048);
        assert_eq!(offset_of!(XenstoreDomainInterface, rsp_prod), 2060);
        assert_eq!(offset_of!(XenstoreDomainInterface, server_features), 2064);
        assert_eq!(offset_of!(XenstoreDomainInterface, connection), 2068);
        assert_eq!(offset_of!(XenstoreDomainInterface, error), 2072);
    }

    #[test]
    fn message_crosses_the_ring_with_wraparound() {
        let page = Box::new(XenstoreDomainInterface::zeroed());
        // Start near the u32 wrap to exercise masking.
        page.req_cons.store(u32::MAX - 10, Ordering::SeqCst);
        page.req_prod.store(u32::MAX - 10, Ordering::SeqCst);
        let msg = request::write(1, 0, "/local/domain/0/name", &[b'v'; 1500])
            .unwrap()
            .encode();
        let mut sent = 0;
        let mut decoder = XsDecoder::new();
        let mut got = None;
        let mut buf = [0u8; 300];
        while got.is_none() {
            sent += page.client_write(&msg[sent..]).unwrap();
            let n = page.server_read(&mut buf).unwrap();
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (used, m) = decoder.feed(rest).unwrap();
                rest = &rest[used..];
                got = got.or(m);
            }
        }
        let m = got.unwrap();
        assert_eq!(m.kind, XsType::Write);
        assert_eq!(m.payload.len(), 21 + 1500);
    }

    #[test]
    fn full_ring_accepts_no_more() {
        let page = Box::new(XenstoreDomainInterface::zeroed());
        assert_eq!(page.server_write(&[1u8; 2000]), Ok(1024));
        assert_eq!(page.server_write(&[1u8; 10]), Ok(0));
        let mut out = [0u8; 10];
        assert_eq!(page.client_read(&mut out), Ok(10));
        assert_eq!(page.server_write(&[2u8; 20]), Ok(10));
    }

    #[test]
    fn hostile_indices_are_reported() {
        let page = Box::new(XenstoreDomainInterface::zeroed());
        page.req_prod.store(5000, Ordering::SeqCst);
        let mut out = [0u8; 16];
        assert_eq!(
            page.server_read(&mut out),
            Err(XsRingError::BadIndex {
                cons: 0,
                prod: 5000
            })
        );
        page.rsp_cons.store(10, Ordering::SeqCst);
        page.rsp_prod.store(0, Ordering::SeqCst);
        assert_eq!(
            page.server_write(b"x"),
            Err(XsRingError::BadIndex { cons: 10, prod: 0 })
        );
    }
}
