//! Xen shared rings (`xen/include/public/io/ring.h`): one page holding a 64-byte header
//! (`req_prod`, `req_event`, `rsp_prod`, `rsp_event`, padding) and a power-of-two array of
//! entries, each a union of one request and one response.
//!
//! Indices are free-running `u32`s masked by the ring size on access. A producer publishes
//! entries, then its producer index (release). Notification hold-off: after publishing from
//! `old` to `new`, the peer needs an event only if its `*_event` lies in `(old, new]`,
//! i.e. `new - event < new - old` in wrapping arithmetic.
//!
//! The other end is untrusted. A frontend can write any `req_prod`; [`BackRing`] never
//! consumes more than the ring holds and reports an impossible index as
//! [`RingError::RequestOverflow`] instead of re-reading stale slots. Entries are copied out
//! of the page once (volatile), so the peer cannot change a request after it was checked.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, Ordering};

/// `struct *_sring` header (64 bytes before the entries).
#[repr(C)]
#[derive(Debug)]
pub struct SringHeader {
    pub req_prod: AtomicU32,
    pub req_event: AtomicU32,
    pub rsp_prod: AtomicU32,
    pub rsp_event: AtomicU32,
    /// `pvt` union (netif smartpoll, tapif msg).
    pub pvt: [u8; 4],
    pub pad: [u8; 44],
}

/// Byte offset of the first entry.
pub const SRING_HEADER_SIZE: usize = core::mem::size_of::<SringHeader>();

/// `__CONST_RING_SIZE`: entries that fit after the header, rounded down to a power of two.
pub const fn ring_entries(ring_bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || ring_bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let n = (ring_bytes - SRING_HEADER_SIZE) / entry_size;
    if n == 0 {
        return 0;
    }
    let pow = 1usize << (usize::BITS - 1 - n.leading_zeros());
    if pow > u32::MAX as usize {
        0x8000_0000
    } else {
        pow as u32
    }
}

/// Size of one ring slot: the C union of request and response.
pub const fn entry_size<Req, Rsp>() -> usize {
    let size = max(core::mem::size_of::<Req>(), core::mem::size_of::<Rsp>());
    let align = max(core::mem::align_of::<Req>(), core::mem::align_of::<Rsp>());
    size.div_ceil(align) * align
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Plain data that may be copied out of a ring page.
///
/// # Safety
/// Every bit pattern must be a valid value (integers and arrays/structs of integers,
/// `#[repr(C)]`), because the peer controls the bytes.
pub unsafe trait RingEntry: Copy {}

// SAFETY: integers accept every bit pattern.
unsafe impl RingEntry for u8 {}
// SAFETY: as above.
unsafe impl RingEntry for u16 {}
// SAFETY: as above.
unsafe impl RingEntry for u32 {}
// SAFETY: as above.
unsafe impl RingEntry for u64 {}
// SAFETY: arrays of valid-for-all-bits types are valid for all bits.
unsafe impl<T: RingEntry, const N: usize> RingEntry for [T; N] {}

/// Ring misuse or a misbehaving peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The page cannot hold a header and at least one entry, or is misaligned.
    BadPage,
    /// The frontend published more requests than there are free slots (hostile or buggy).
    RequestOverflow {
        req_prod: u32,
        rsp_prod_pvt: u32,
        size: u32,
    },
    /// The backend published more responses than requests outstanding (hostile or buggy).
    ResponseOverflow {
        rsp_prod: u32,
        rsp_cons: u32,
        size: u32,
    },
    /// No free request slot (front end).
    Full,
    /// A response was queued with no consumed request to answer (back end).
    NoRequestToAnswer,
}

/// A typed view of one shared-ring page.
pub struct SharedRing<'a, Req, Rsp> {
    header: &'a SringHeader,
    entries: NonNull<u8>,
    slot_size: usize,
    size: u32,
    _types: PhantomData<(&'a (), Req, Rsp)>,
}

impl<'a, Req: RingEntry, Rsp: RingEntry> SharedRing<'a, Req, Rsp> {
    /// Views `len` bytes at `page` (one page, or more for multi-page rings) as a ring.
    ///
    /// # Safety
    /// `page` must be valid for reads and writes of `len` bytes for `'a`, and only be
    /// accessed by this crate's ring types (and the peer) meanwhile.
    pub unsafe fn from_raw(page: *mut u8, len: usize) -> Result<Self, RingError> {
        let slot_size = entry_size::<Req, Rsp>();
        let size = ring_entries(len, slot_size);
        let Some(base) = NonNull::new(page) else {
            return Err(RingError::BadPage);
        };
        let entry_align = max(core::mem::align_of::<Req>(), core::mem::align_of::<Rsp>());
        let aligned = (page as usize).is_multiple_of(core::mem::align_of::<SringHeader>())
            && (page as usize + SRING_HEADER_SIZE).is_multiple_of(entry_align);
        if size == 0 || !aligned {
            return Err(RingError::BadPage);
        }
        // SAFETY: the caller guarantees the memory; alignment was checked.
        let header = unsafe { &*(page as *const SringHeader) };
        // SAFETY: the header fits inside `len` because `size > 0`, so the entries start
        // inside the same allocation.
        let first_entry = unsafe { base.as_ptr().add(SRING_HEADER_SIZE) };
        // SAFETY: an offset from the non-null `base` inside its allocation is non-null.
        let entries = unsafe { NonNull::new_unchecked(first_entry) };
        Ok(SharedRing {
            header,
            entries,
            slot_size,
            size,
            _types: PhantomData,
        })
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The shared header.
    pub fn header(&self) -> &'a SringHeader {
        self.header
    }

    /// `SHARED_RING_INIT`: the front end resets the header before advertising the ring.
    pub fn init(&self) {
        self.header.req_prod.store(0, Ordering::Relaxed);
        self.header.rsp_prod.store(0, Ordering::Relaxed);
        self.header.req_event.store(1, Ordering::Relaxed);
        self.header.rsp_event.store(1, Ordering::Release);
    }

    fn slot(&self, index: u32) -> *mut u8 {
        let offset = (index & (self.size - 1)) as usize * self.slot_size;
        // SAFETY: `offset + slot_size` lies within the entries area by construction of
        // `size` (masked index below `size`, `size * slot_size <= len - header`).
        unsafe { self.entries.as_ptr().add(offset) }
    }

    fn read<T: RingEntry>(&self, index: u32) -> T {
        // SAFETY: the slot is in bounds and aligned for T (checked in `from_raw`; the slot
        // size is a multiple of the alignment); T accepts any bytes. Volatile: read once.
        unsafe { core::ptr::read_volatile(self.slot(index) as *const T) }
    }

    fn write<T: RingEntry>(&self, index: u32, value: T) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile(self.slot(index) as *mut T, value) }
    }
}

/// Whether publishing `old..new` crossed the peer's event index.
fn needs_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// The front end (request producer) of a ring.
pub struct FrontRing<'a, Req, Rsp> {
    ring: SharedRing<'a, Req, Rsp>,
    req_prod_pvt: u32,
    rsp_cons: u32,
}

impl<'a, Req: RingEntry, Rsp: RingEntry> FrontRing<'a, Req, Rsp> {
    /// `SHARED_RING_INIT` + `FRONT_RING_INIT`.
    pub fn new(ring: SharedRing<'a, Req, Rsp>) -> Self {
        ring.init();
        FrontRing {
            ring,
            req_prod_pvt: 0,
            rsp_cons: 0,
        }
    }

    /// `RING_FREE_REQUESTS`.
    pub fn free_requests(&self) -> u32 {
        self.ring.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// `RING_FULL`.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Writes `req` into the next slot (not yet visible to the back end).
    pub fn queue_request(&mut self, req: Req) -> Result<(), RingError> {
        if self.is_full() {
            return Err(RingError::Full);
        }
        self.ring.write(self.req_prod_pvt, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes queued requests; returns whether
    /// the back end must be notified.
    pub fn push_requests(&mut self) -> bool {
        let h = self.ring.header;
        let old = h.req_prod.load(Ordering::Relaxed);
        let new = self.req_prod_pvt;
        h.req_prod.store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        needs_notify(old, new, h.req_event.load(Ordering::Relaxed))
    }

    /// Responses published and not yet taken; the back end's `rsp_prod` is checked.
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        let rsp_prod = self.ring.header.rsp_prod.load(Ordering::Acquire);
        let outstanding = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
        let available = rsp_prod.wrapping_sub(self.rsp_cons);
        if available > outstanding {
            return Err(RingError::ResponseOverflow {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                size: self.ring.size,
            });
        }
        Ok(available)
    }

    /// Takes the next response, if any.
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self.ring.read(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: before sleeping, ask for an event on the next
    /// response and re-check; `true` means responses arrived meanwhile.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.ring
            .header
            .rsp_event
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses()? > 0)
    }
}

/// The back end (request consumer, response producer) of a ring.
pub struct BackRing<'a, Req, Rsp> {
    ring: SharedRing<'a, Req, Rsp>,
    rsp_prod_pvt: u32,
    req_cons: u32,
}

impl<'a, Req: RingEntry, Rsp: RingEntry> BackRing<'a, Req, Rsp> {
    /// `BACK_RING_INIT` on a ring the front end has just initialised.
    pub fn new(ring: SharedRing<'a, Req, Rsp>) -> Self {
        BackRing {
            ring,
            rsp_prod_pvt: 0,
            req_cons: 0,
        }
    }

    /// `BACK_RING_ATTACH`: resume on a live ring (e.g. after a backend restart) from the
    /// published `rsp_prod`; later checks still bound the front end's index.
    pub fn attach(ring: SharedRing<'a, Req, Rsp>) -> Self {
        let start = ring.header.rsp_prod.load(Ordering::Acquire);
        BackRing {
            ring,
            rsp_prod_pvt: start,
            req_cons: start,
        }
    }

    /// Requests that may be consumed now: never more than the free slots allow, and an
    /// error if `req_prod` claims more requests than the ring can hold.
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        let req_prod = self.ring.header.req_prod.load(Ordering::Acquire);
        let size = self.ring.size;
        // `RING_REQUEST_PROD_OVERFLOW`
        if req_prod.wrapping_sub(self.rsp_prod_pvt) > size {
            return Err(RingError::RequestOverflow {
                req_prod,
                rsp_prod_pvt: self.rsp_prod_pvt,
                size,
            });
        }
        let published = req_prod.wrapping_sub(self.req_cons);
        let room = size - self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        Ok(published.min(room))
    }

    /// Takes (copies out) the next request, if any.
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let req = self.ring.read(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes a response into the next slot (not yet visible to the front end).
    pub fn queue_response(&mut self, rsp: Rsp) -> Result<(), RingError> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoRequestToAnswer);
        }
        self.ring.write(self.rsp_prod_pvt, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`.
    pub fn push_responses(&mut self) -> bool {
        let h = self.ring.header;
        let old = h.rsp_prod.load(Ordering::Relaxed);
        let new = self.rsp_prod_pvt;
        h.rsp_prod.store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        needs_notify(old, new, h.rsp_event.load(Ordering::Relaxed))
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.ring
            .header
            .req_event
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_requests()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct BlkReq {
        id: u64,
        sector: u64,
        op: u8,
        pad: [u8; 7],
        segs: [u64; 11],
    }
    // SAFETY: integers only.
    unsafe impl RingEntry for BlkReq {}

    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct BlkRsp {
        id: u64,
        status: i16,
        pad: [u8; 6],
    }
    // SAFETY: integers only.
    unsafe impl RingEntry for BlkRsp {}

    fn req(id: u64) -> BlkReq {
        BlkReq {
            id,
            sector: id * 8,
            op: 1,
            pad: [0; 7],
            segs: [id; 11],
        }
    }

    fn pair(page: &mut Page) -> (FrontRing<'_, BlkReq, BlkRsp>, BackRing<'_, BlkReq, BlkRsp>) {
        let p = page.0.as_mut_ptr();
        // SAFETY: the page outlives both views and only ring code touches it.
        let a = unsafe { SharedRing::from_raw(p, 4096) }.unwrap();
        // SAFETY: as above.
        let b = unsafe { SharedRing::from_raw(p, 4096) }.unwrap();
        (FrontRing::new(a), BackRing::new(b))
    }

    #[test]
    fn header_layout_and_sizes_match_ring_h() {
        assert_eq!(SRING_HEADER_SIZE, 64);
        assert_eq!(core::mem::offset_of!(SringHeader, rsp_event), 12);
        // blkif: 112-byte requests → 32 entries; netif tx (12-byte req) → 256.
        assert_eq!(ring_entries(4096, 112), 32);
        assert_eq!(ring_entries(4096, 12), 256);
        assert_eq!(ring_entries(4096, 8), 256);
        assert_eq!(ring_entries(64, 8), 0);
        assert_eq!(ring_entries(4096, 4096), 0);
        assert_eq!(entry_size::<BlkReq, BlkRsp>(), 112);
        assert_eq!(entry_size::<[u8; 12], u64>(), 16);
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let mut page = Box::new(Page([0; 4096]));
        let (mut front, mut back) = pair(&mut page);
        front.queue_request(req(1)).unwrap();
        front.queue_request(req(2)).unwrap();
        assert!(front.push_requests());
        assert_eq!(back.unconsumed_requests(), Ok(2));
        assert_eq!(back.take_request(), Ok(Some(req(1))));
        assert_eq!(back.take_request(), Ok(Some(req(2))));
        assert_eq!(back.take_request(), Ok(None));
        back.queue_response(BlkRsp {
            id: 1,
            status: 0,
            pad: [0; 6],
        })
        .unwrap();
        back.queue_response(BlkRsp {
            id: 2,
            status: -1,
            pad: [0; 6],
        })
        .unwrap();
        assert_eq!(
            back.queue_response(BlkRsp {
                id: 3,
                status: 0,
                pad: [0; 6]
            }),
            Err(RingError::NoRequestToAnswer)
        );
        assert!(back.push_responses());
        assert_eq!(front.take_response().unwrap().unwrap().id, 1);
        assert_eq!(front.take_response().unwrap().unwrap().status, -1);
        assert_eq!(front.take_response(), Ok(None));
    }

    #[test]
    fn front_stops_at_ring_size_and_indices_wrap() {
        let mut page = Box::new(Page([0; 4096]));
        let (mut front, mut back) = pair(&mut page);
        let mut id = 0;
        // Several laps of a 32-slot ring.
        for _ in 0..5 {
            while !front.is_full() {
                front.queue_request(req(id)).unwrap();
                id += 1;
            }
            assert_eq!(front.queue_request(req(id)), Err(RingError::Full));
            front.push_requests();
            let mut got = Vec::new();
            while let Some(r) = back.take_request().unwrap() {
                got.push(r.id);
                back.queue_response(BlkRsp {
                    id: r.id,
                    status: 0,
                    pad: [0; 6],
                })
                .unwrap();
            }
            assert_eq!(got.len(), 32);
            back.push_responses();
            while front.take_response().unwrap().is_some() {}
        }
    }

    #[test]
    fn notification_hold_off() {
        let mut page = Box::new(Page([0; 4096]));
        let (mut front, mut back) = pair(&mut page);
        front.queue_request(req(1)).unwrap();
        assert!(front.push_requests(), "first request crosses req_event = 1");
        front.queue_request(req(2)).unwrap();
        assert!(
            !front.push_requests(),
            "back end has not re-armed req_event"
        );
        back.take_request().unwrap();
        back.take_request().unwrap();
        assert_eq!(back.final_check_for_requests(), Ok(false));
        front.queue_request(req(3)).unwrap();
        assert!(front.push_requests(), "re-armed by the final check");
        // A request published between the check and sleeping is noticed.
        assert_eq!(back.final_check_for_requests(), Ok(true));
    }

    #[test]
    fn hostile_req_prod_is_bounded_and_reported() {
        let mut page = Box::new(Page([0; 4096]));
        let (_front, mut back) = pair(&mut page);
        let h = back.ring.header();
        // Exactly a full ring is legal.
        h.req_prod.store(32, Ordering::SeqCst);
        let mut taken = 0;
        while back.take_request().unwrap().is_some() {
            taken += 1;
        }
        assert_eq!(taken, 32);
        // The front end claims 32 more while none were answered: impossible.
        h.req_prod.store(64, Ordering::SeqCst);
        assert_eq!(
            back.take_request(),
            Err(RingError::RequestOverflow {
                req_prod: 64,
                rsp_prod_pvt: 0,
                size: 32
            })
        );
        h.req_prod.store(u32::MAX, Ordering::SeqCst);
        assert!(matches!(
            back.unconsumed_requests(),
            Err(RingError::RequestOverflow { .. })
        ));
        // Moving req_prod backwards offers nothing to consume.
        h.req_prod.store(10, Ordering::SeqCst);
        assert_eq!(back.unconsumed_requests(), Ok(0));
    }

    #[test]
    fn hostile_rsp_prod_is_reported() {
        let mut page = Box::new(Page([0; 4096]));
        let (mut front, back) = pair(&mut page);
        front.queue_request(req(1)).unwrap();
        front.push_requests();
        back.ring.header().rsp_prod.store(5, Ordering::SeqCst);
        assert_eq!(
            front.take_response(),
            Err(RingError::ResponseOverflow {
                rsp_prod: 5,
                rsp_cons: 0,
                size: 32
            })
        );
    }

    #[test]
    fn bad_pages_are_refused() {
        let mut page = Box::new(Page([0; 4096]));
        let p = page.0.as_mut_ptr();
        // SAFETY: the pointer is into a live page.
        let too_small = unsafe { SharedRing::<BlkReq, BlkRsp>::from_raw(p, 100) };
        assert!(matches!(too_small, Err(RingError::BadPage)));
        let misaligned = p.wrapping_add(4);
        // SAFETY: the pointer is into a live page (and refused for its alignment).
        let unaligned = unsafe { SharedRing::<BlkReq, BlkRsp>::from_raw(misaligned, 4000) };
        assert!(matches!(unaligned, Err(RingError::BadPage)));
        // SAFETY: null is refused before any access.
        let null = unsafe { SharedRing::<BlkReq, BlkRsp>::from_raw(core::ptr::null_mut(), 4096) };
        assert!(matches!(null, Err(RingError::BadPage)));
    }
}
