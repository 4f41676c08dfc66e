//! The blkif shared ring, back end: one page, or `2^ring-page-order` pages (up to
//! [`MAX_RING_PAGE_ORDER`]), each granted by the frontend and mapped into a dom0 frame.
//!
//! The layout is `ring.h`'s: a 64-byte header (`req_prod@0`, `req_event@4`, `rsp_prod@8`,
//! `rsp_event@12`) then a power-of-two array of slots (112 bytes; 108 for a 32-bit
//! frontend, [`Abi`]), as if the pages were one contiguous buffer. The pages need not be contiguous in dom0: every access is a 32-bit
//! word at a 4-byte-aligned ring offset, so it never straddles a page, and is an atomic
//! load or store on the mapped page (the frontend writes the same memory concurrently).
//! keel-xen's `BackRing` needs one contiguous mapping and raw pointers; this ring does not.
//!
//! The frontend is untrusted: a `req_prod` that claims more requests than the ring can
//! hold is reported as [`RingError::ProducerAhead`] (the device is then disconnected), and
//! each slot is copied out once before it is parsed.

use alloc::vec::Vec;
use core::ops::Deref;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use keel_xen::grant_table::{map_grant, unmap_grant, GrantOpError, GrantRef, MappedGrant};
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::ring::{ring_entries, SRING_HEADER_SIZE};
use keel_xen::Hypervisor;

use crate::wire::{Abi, REQUEST_SIZE, RESPONSE_SIZE};

/// A 4 KiB page seen as 1024 atomic words.
pub type PageWords = [AtomicU32; PAGE_SIZE / 4];

/// Largest `ring-page-order` accepted (16 pages, 512 slots), as Linux's
/// `XENBUS_MAX_RING_GRANT_ORDER`.
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// Dom0 frames to map the frontend's ring pages into, and their views.
pub trait RingFrames {
    /// The mapped page (`&'static PageWords` in the kernel, over an identity-mapped hole
    /// frame).
    type Page: Deref<Target = PageWords>;
    /// A free dom0 frame with no RAM behind it (Xen frees RAM a foreign mapping replaces).
    fn allocate(&mut self) -> Option<u64>;
    fn free(&mut self, gfn: u64);
    /// The page now mapped at `gfn`: grant `gref` of `domid` (the kernel only needs `gfn`;
    /// fakes use the grant to find the frontend's page).
    fn view(&self, gfn: u64, domid: u16, gref: GrantRef) -> Self::Page;
}

/// Ring setup or a misbehaving frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// No ring references, or more than `2^MAX_RING_PAGE_ORDER`, or not a power of two.
    BadPageCount(usize),
    /// No dom0 frame left to map into.
    NoFrames,
    /// Mapping ring page `index` failed (invalid, foreign or revoked grant).
    Map { index: usize, error: GrantOpError },
    /// `req_prod` is further ahead than the ring holds.
    ProducerAhead {
        req_prod: u32,
        rsp_prod: u32,
        size: u32,
    },
    /// `req_prod` moved back behind the requests already consumed.
    ProducerBehind { req_prod: u32, req_cons: u32 },
    /// A response without a consumed request (a bug of ours, never the frontend's).
    NoRequestToAnswer,
}

struct MappedPage<P> {
    gfn: u64,
    grant: MappedGrant,
    view: P,
}

/// The pages of one ring, mapped.
pub struct RingPages<P> {
    pages: Vec<MappedPage<P>>,
}

impl<P: Deref<Target = PageWords>> RingPages<P> {
    /// Maps every ring reference of `domid` (writable). On failure, what was mapped is
    /// unmapped again.
    pub fn map<H, F>(
        hv: &H,
        frames: &mut F,
        domid: u16,
        refs: &[GrantRef],
    ) -> Result<Self, RingError>
    where
        H: Hypervisor + ?Sized,
        F: RingFrames<Page = P>,
    {
        let n = refs.len();
        if n == 0 || n > 1 << MAX_RING_PAGE_ORDER || !n.is_power_of_two() {
            return Err(RingError::BadPageCount(n));
        }
        let mut pages: Vec<MappedPage<P>> = Vec::new();
        pages
            .try_reserve_exact(n)
            .map_err(|_| RingError::NoFrames)?;
        for (index, gref) in refs.iter().enumerate() {
            let mapped =
                frames
                    .allocate()
                    .ok_or(RingError::NoFrames)
                    .and_then(|gfn| match map_grant(hv, domid, *gref, gfn << 12, false) {
                        Ok(grant) => Ok(MappedPage {
                            gfn,
                            grant,
                            view: frames.view(gfn, domid, *gref),
                        }),
                        Err(error) => {
                            frames.free(gfn);
                            Err(RingError::Map { index, error })
                        }
                    });
            match mapped {
                Ok(p) => pages.push(p),
                Err(e) => {
                    RingPages { pages }.unmap(hv, frames);
                    return Err(e);
                }
            }
        }
        Ok(RingPages { pages })
    }

    /// Unmaps every page; returns how many would not unmap (their frames are kept out of
    /// use for good rather than reused under a live mapping).
    pub fn unmap<H, F>(self, hv: &H, frames: &mut F) -> usize
    where
        H: Hypervisor + ?Sized,
        F: RingFrames<Page = P>,
    {
        let mut leaked = 0;
        for page in self.pages {
            drop(page.view);
            if unmap_grant(hv, &page.grant).is_ok() {
                frames.free(page.gfn);
            } else {
                leaked += 1;
            }
        }
        leaked
    }

    fn word(&self, offset: usize) -> Option<&AtomicU32> {
        let page = self.pages.get(offset / PAGE_SIZE)?;
        page.view.get((offset % PAGE_SIZE) / 4)
    }

    fn load(&self, offset: usize, order: Ordering) -> u32 {
        self.word(offset).map_or(0, |w| w.load(order))
    }

    fn store(&self, offset: usize, value: u32, order: Ordering) {
        if let Some(w) = self.word(offset) {
            w.store(value, order);
        }
    }

    fn len_bytes(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }
}

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// The back end of a blkif ring (request consumer, response producer).
pub struct BlkRing<P> {
    pages: RingPages<P>,
    abi: Abi,
    size: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
}

impl<P: Deref<Target = PageWords>> BlkRing<P> {
    /// `BACK_RING_INIT` over the frontend's freshly initialised x86_64 ring.
    pub fn new(pages: RingPages<P>) -> Self {
        Self::with_abi(pages, Abi::X86_64)
    }

    /// `BACK_RING_INIT` over a ring whose slots are laid out as `abi` says.
    pub fn with_abi(pages: RingPages<P>, abi: Abi) -> Self {
        let size = ring_entries(pages.len_bytes(), abi.slot_size());
        BlkRing {
            pages,
            abi,
            size,
            req_cons: 0,
            rsp_prod_pvt: 0,
        }
    }

    /// Slots in the ring (32 per page for blkif, a power of two).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Gives the pages back (to unmap them).
    pub fn into_pages(self) -> RingPages<P> {
        self.pages
    }

    /// Requests consumed and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Requests that may be taken now. `RING_REQUEST_PROD_OVERFLOW` is a protocol
    /// violation: never consume past the free slots.
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        let req_prod = self.pages.load(REQ_PROD, Ordering::Acquire);
        if req_prod.wrapping_sub(self.rsp_prod_pvt) > self.size {
            return Err(RingError::ProducerAhead {
                req_prod,
                rsp_prod: self.rsp_prod_pvt,
                size: self.size,
            });
        }
        let published = req_prod.wrapping_sub(self.req_cons);
        if published > self.size {
            // `req_prod` moved back behind what was already consumed: the slots between
            // would be stale requests.
            return Err(RingError::ProducerBehind {
                req_prod,
                req_cons: self.req_cons,
            });
        }
        let room = self.size - self.outstanding();
        Ok(published.min(room))
    }

    fn slot_offset(&self, index: u32) -> usize {
        SRING_HEADER_SIZE + (index & (self.size - 1)) as usize * self.abi.slot_size()
    }

    /// Copies the next request out of its slot, in the x86_64 layout whatever the ABI.
    pub fn take_request(&mut self) -> Result<Option<[u8; REQUEST_SIZE]>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let base = self.slot_offset(self.req_cons);
        let mut out = [0u8; REQUEST_SIZE];
        // Both slot sizes are whole words, so every slot starts word-aligned.
        let slot = self.abi.slot_size();
        for (i, chunk) in out[..slot].chunks_exact_mut(4).enumerate() {
            let w = self.pages.load(base + 4 * i, Ordering::Relaxed);
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(self.abi.to_native(&out)))
    }

    /// Writes a response (the x86_64 encoding; a 32-bit frontend's is its first 12 bytes)
    /// into the next response slot (not yet published).
    pub fn queue_response(&mut self, rsp: &[u8; RESPONSE_SIZE]) -> Result<(), RingError> {
        if self.outstanding() == 0 {
            return Err(RingError::NoRequestToAnswer);
        }
        let base = self.slot_offset(self.rsp_prod_pvt);
        for (i, chunk) in rsp[..self.abi.response_size()].chunks_exact(4).enumerate() {
            let w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.pages.store(base + 4 * i, w, Ordering::Relaxed);
        }
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes the queued responses; `true` when
    /// the frontend asked to be notified of them (`rsp_event` crossed).
    pub fn push_responses(&mut self) -> bool {
        let old = self.pages.load(RSP_PROD, Ordering::Relaxed);
        let new = self.rsp_prod_pvt;
        self.pages.store(RSP_PROD, new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.pages.load(RSP_EVENT, Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: before going idle, ask for an event on the next
    /// request and look again; `true` means requests arrived meanwhile.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.pages
            .store(REQ_EVENT, self.req_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_requests()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeFrames, FrontPages};
    use crate::wire::{encode, op, Request, Response, Status};
    use keel_xen::fake::{FakeXen, FOREIGN_FRAME_BASE};
    use keel_xen::grant_table::gtf;
    use keel_xen::GntStatus;

    fn setup(n: u32) -> (FakeXen, FrontPages, Vec<GrantRef>) {
        let xen = FakeXen::new();
        let front = FrontPages::default();
        let refs: Vec<GrantRef> = (0..n).map(|i| GrantRef(100 + i)).collect();
        for (i, r) in refs.iter().enumerate() {
            xen.add_foreign_grant(5, *r, 0, gtf::PERMIT_ACCESS, FOREIGN_FRAME_BASE + i as u64);
            front.add(5, *r);
        }
        (xen, front, refs)
    }

    #[test]
    fn sizes_follow_ring_h() {
        assert_eq!(ring_entries(PAGE_SIZE, REQUEST_SIZE), 32);
        assert_eq!(ring_entries(2 * PAGE_SIZE, REQUEST_SIZE), 64);
        assert_eq!(ring_entries(16 * PAGE_SIZE, REQUEST_SIZE), 512);
    }

    #[test]
    fn multi_page_ring_round_trips_across_page_boundaries() {
        let (xen, front, refs) = setup(4);
        let mut frames = FakeFrames::new(&front);
        let pages = RingPages::map(&xen, &mut frames, 5, &refs).unwrap();
        let mut ring = BlkRing::new(pages);
        assert_eq!(ring.size(), 128);
        let fe = front.ring(5, &refs);
        // Three laps, so every slot (including the ones straddling pages) is used.
        let mut next = 0u64;
        for _ in 0..3 {
            for _ in 0..128 {
                fe.push_request(&encode::direct(op::READ, next, next * 8, 0, &[]));
                next += 1;
            }
            let mut seen = 0;
            while let Some(raw) = ring.take_request().unwrap() {
                let r = Request::parse(&raw);
                assert_eq!(r.id(), next - 128 + seen);
                let rsp = Response {
                    id: r.id(),
                    operation: op::READ,
                    status: Status::Okay,
                };
                ring.queue_response(&rsp.encode()).unwrap();
                seen += 1;
            }
            assert_eq!(seen, 128);
            ring.push_responses();
            let got = fe.take_responses();
            assert_eq!(got.len(), 128);
            assert_eq!(got[127].0, next - 1);
        }
        assert_eq!(ring.into_pages().unmap(&xen, &mut frames), 0);
        assert_eq!(frames.in_use(), 0);
    }

    /// A 32-bit frontend (GRUB for Xen PVH): 108-byte slots, and 12-byte responses (the
    /// rest of the slot is not the response's).
    #[test]
    fn x86_32_ring_uses_its_own_slots() {
        let (xen, front, refs) = setup(1);
        let mut frames = FakeFrames::new(&front);
        let pages = RingPages::map(&xen, &mut frames, 5, &refs).unwrap();
        let mut ring = BlkRing::with_abi(pages, Abi::X86_32);
        assert_eq!(ring.size(), 32);
        let slot = |i: usize| SRING_HEADER_SIZE + i * 108;
        for i in 0..3u64 {
            let mut b = [0u8; 108];
            b[0] = op::READ;
            b[1] = 1;
            b[4..12].copy_from_slice(&(100 + i).to_le_bytes());
            b[12..20].copy_from_slice(&(8 * (i + 1)).to_le_bytes());
            b[20..24].copy_from_slice(&(7u32).to_le_bytes());
            b[25] = 7;
            front.write(5, refs[0], slot(i as usize), &b);
        }
        front.ring(5, &refs).set_req_prod(3);
        let first = ring.take_request().unwrap().unwrap();
        match Request::parse(&first) {
            Request::Direct(r) => assert_eq!((r.id, r.sector, r.nr_segments), (100, 8, 1)),
            other => panic!("{other:?}"),
        }
        let rsp = Response {
            id: 100,
            operation: op::READ,
            status: Status::Error,
        };
        ring.queue_response(&rsp.encode()).unwrap();
        ring.push_responses();
        let page = front.read(5, refs[0]);
        assert_eq!(&page[slot(0)..slot(0) + 8], &100u64.to_le_bytes());
        assert_eq!(&page[slot(0) + 10..slot(0) + 12], &(-1i16).to_le_bytes());
        // Written: 12 bytes; the request's sector after them is as the frontend left it.
        assert_eq!(&page[slot(0) + 12..slot(0) + 16], &8u32.to_le_bytes());
        for want in [101, 102] {
            let raw = ring.take_request().unwrap().unwrap();
            match Request::parse(&raw) {
                Request::Direct(r) => assert_eq!((r.id, r.sector), (want, 8 * (want - 99))),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ring.take_request(), Ok(None));
    }

    #[test]
    fn producer_running_ahead_is_reported() {
        let (xen, front, refs) = setup(1);
        let mut frames = FakeFrames::new(&front);
        let mut ring = BlkRing::new(RingPages::map(&xen, &mut frames, 5, &refs).unwrap());
        let fe = front.ring(5, &refs);
        fe.set_req_prod(33);
        assert_eq!(
            ring.take_request(),
            Err(RingError::ProducerAhead {
                req_prod: 33,
                rsp_prod: 0,
                size: 32
            })
        );
        fe.set_req_prod(32);
        for _ in 0..32 {
            assert!(ring.take_request().unwrap().is_some());
        }
        // All 32 taken, none answered: the ring is full, nothing more is read.
        assert_eq!(ring.take_request(), Ok(None));
        fe.set_req_prod(40);
        assert!(matches!(
            ring.take_request(),
            Err(RingError::ProducerAhead { .. })
        ));
    }

    #[test]
    fn producer_moving_back_is_reported() {
        let (xen, front, refs) = setup(1);
        let mut frames = FakeFrames::new(&front);
        let mut ring = BlkRing::new(RingPages::map(&xen, &mut frames, 5, &refs).unwrap());
        let fe = front.ring(5, &refs);
        fe.set_req_prod(5);
        for _ in 0..5 {
            assert!(ring.take_request().unwrap().is_some());
        }
        fe.set_req_prod(3);
        assert_eq!(
            ring.take_request(),
            Err(RingError::ProducerBehind {
                req_prod: 3,
                req_cons: 5
            })
        );
    }

    #[test]
    fn notifications_follow_the_event_indices() {
        let (xen, front, refs) = setup(1);
        let mut frames = FakeFrames::new(&front);
        let mut ring = BlkRing::new(RingPages::map(&xen, &mut frames, 5, &refs).unwrap());
        let fe = front.ring(5, &refs);
        fe.push_request(&encode::direct(op::READ, 1, 0, 0, &[]));
        fe.push_request(&encode::direct(op::READ, 2, 0, 0, &[]));
        ring.take_request().unwrap();
        ring.take_request().unwrap();
        let ok = |id| Response {
            id,
            operation: 0,
            status: Status::Okay,
        };
        ring.queue_response(&ok(1).encode()).unwrap();
        assert!(ring.push_responses(), "rsp_event starts at 1");
        ring.queue_response(&ok(2).encode()).unwrap();
        assert!(!ring.push_responses(), "frontend did not re-arm rsp_event");
        assert_eq!(
            ring.queue_response(&ok(3).encode()),
            Err(RingError::NoRequestToAnswer)
        );
        assert_eq!(ring.final_check_for_requests(), Ok(false));
        assert_eq!(fe.req_event(), 3);
    }

    #[test]
    fn a_bad_ring_ref_unmaps_what_was_mapped() {
        let (xen, front, mut refs) = setup(2);
        refs.push(GrantRef(999));
        refs.push(GrantRef(100));
        let mut frames = FakeFrames::new(&front);
        let err = RingPages::map(&xen, &mut frames, 5, &refs).err();
        assert_eq!(
            err,
            Some(RingError::Map {
                index: 2,
                error: GrantOpError::Status(GntStatus::BadGntref)
            })
        );
        assert_eq!(frames.in_use(), 0);
        assert_eq!(
            xen.foreign_grant_flags(5, GrantRef(100)),
            gtf::PERMIT_ACCESS
        );
        assert_eq!(
            RingPages::map(&xen, &mut frames, 5, &refs[..3]).err(),
            Some(RingError::BadPageCount(3))
        );
        assert_eq!(
            RingPages::map(&xen, &mut frames, 5, &[]).err(),
            Some(RingError::BadPageCount(0))
        );
    }
}
