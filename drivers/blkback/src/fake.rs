//! Fakes for host tests (this crate's and, with the `fake` feature, the kernel glue's):
//! a frontend's ring pages and a test frontend to drive them, dom0 frames to map into, an
//! in-memory xenstore, an in-memory disk that completes out of order, fails and stalls on
//! request, and grant copies through `FakeXen`.
//!
//! Ring pages are modelled as shared memory the test frontend and the backend both see
//! (the fake hypervisor's grant mapping is still issued and checked); data pages live in
//! `FakeXen`'s foreign frames and move only by its `GNTTABOP_copy`, which checks every
//! grant as Xen does.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU32, Ordering};

use keel_xen::fake::FakeXen;
use keel_xen::grant_table::{grant_copy, CopyEnd, GnttabCopy, GrantRef};
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::ring::{ring_entries, SRING_HEADER_SIZE};

use crate::grant_io::{check_spans, CopyError, GrantIo, GrantSpan};
use crate::ring::{PageWords, RingFrames};
use crate::store::{StoreError, Xenstore};
use crate::target::{BlockRequest, BlockTarget, Busy, Completion, Geometry, IoError, Tag};
use crate::wire::{Response, REQUEST_SIZE, RESPONSE_SIZE, SECTOR_SIZE};

fn zero_page() -> Rc<PageWords> {
    Rc::new(core::array::from_fn(|_| AtomicU32::new(0)))
}

/// The frontend's ring pages, by `(domid, gref)` (clones share them).
#[derive(Default, Clone)]
pub struct FrontPages {
    pages: Rc<RefCell<PageMap>>,
}

type PageMap = BTreeMap<(u16, u32), Rc<PageWords>>;

impl FrontPages {
    /// The frontend allocates a (zeroed) ring page it will grant as `gref`.
    pub fn add(&self, domid: u16, gref: GrantRef) {
        self.pages.borrow_mut().insert((domid, gref.0), zero_page());
    }

    /// The frontend writes into its page.
    pub fn write(&self, domid: u16, gref: GrantRef, offset: usize, bytes: &[u8]) {
        let Some(page) = self.get(domid, gref) else {
            return;
        };
        for (i, b) in bytes.iter().enumerate() {
            let at = offset + i;
            if let Some(w) = page.get(at / 4) {
                let shift = (at % 4) * 8;
                let old = w.load(Ordering::SeqCst);
                w.store(
                    (old & !(0xFF << shift)) | (u32::from(*b) << shift),
                    Ordering::SeqCst,
                );
            }
        }
    }

    /// The frontend reads its page.
    pub fn read(&self, domid: u16, gref: GrantRef) -> Vec<u8> {
        self.get(domid, gref).map_or_else(
            || alloc::vec![0; PAGE_SIZE],
            |p| {
                p.iter()
                    .flat_map(|w| w.load(Ordering::SeqCst).to_le_bytes())
                    .collect()
            },
        )
    }

    fn get(&self, domid: u16, gref: GrantRef) -> Option<Rc<PageWords>> {
        self.pages.borrow().get(&(domid, gref.0)).cloned()
    }

    /// The frontend's view of the ring made of `refs` (`SHARED_RING_INIT` done).
    pub fn ring(&self, domid: u16, refs: &[GrantRef]) -> FrontRing {
        let pages: Vec<Rc<PageWords>> = refs
            .iter()
            .map(|r| self.get(domid, *r).unwrap_or_else(zero_page))
            .collect();
        let ring = FrontRing {
            size: ring_entries(pages.len() * PAGE_SIZE, REQUEST_SIZE),
            pages,
            req_prod_pvt: Cell::new(0),
            rsp_cons: Cell::new(0),
        };
        ring.store(0, 0);
        ring.store(8, 0);
        ring.store(4, 1);
        ring.store(12, 1);
        ring
    }
}

/// A test frontend's side of a ring (a well-behaved one unless told otherwise).
pub struct FrontRing {
    pages: Vec<Rc<PageWords>>,
    size: u32,
    req_prod_pvt: Cell<u32>,
    rsp_cons: Cell<u32>,
}

impl FrontRing {
    fn word(&self, offset: usize) -> Option<&AtomicU32> {
        self.pages
            .get(offset / PAGE_SIZE)?
            .get((offset % PAGE_SIZE) / 4)
    }
    fn store(&self, offset: usize, v: u32) {
        if let Some(w) = self.word(offset) {
            w.store(v, Ordering::SeqCst);
        }
    }
    fn load(&self, offset: usize) -> u32 {
        self.word(offset).map_or(0, |w| w.load(Ordering::SeqCst))
    }
    fn slot(&self, index: u32) -> usize {
        SRING_HEADER_SIZE + (index & (self.size - 1)) as usize * REQUEST_SIZE
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// Free slots (`RING_FREE_REQUESTS`).
    pub fn free(&self) -> u32 {
        self.size - self.req_prod_pvt.get().wrapping_sub(self.rsp_cons.get())
    }

    /// Writes a request and publishes it (no room check: tests may overrun on purpose).
    pub fn push_request(&self, req: &[u8; REQUEST_SIZE]) {
        let base = self.slot(self.req_prod_pvt.get());
        for (i, c) in req.chunks_exact(4).enumerate() {
            self.store(base + 4 * i, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        }
        self.req_prod_pvt
            .set(self.req_prod_pvt.get().wrapping_add(1));
        self.store(0, self.req_prod_pvt.get());
    }

    /// Writes `req_prod` directly (a hostile frontend).
    pub fn set_req_prod(&self, value: u32) {
        self.store(0, value);
    }

    pub fn req_event(&self) -> u32 {
        self.load(4)
    }

    /// Takes every published response as `(id, operation, status)` and re-arms
    /// `rsp_event` for the next one.
    pub fn take_responses(&self) -> Vec<(u64, u8, i16)> {
        let mut out = Vec::new();
        let prod = self.load(8);
        while self.rsp_cons.get() != prod {
            let base = self.slot(self.rsp_cons.get());
            let mut b = [0u8; RESPONSE_SIZE];
            for (i, c) in b.chunks_exact_mut(4).enumerate() {
                c.copy_from_slice(&self.load(base + 4 * i).to_le_bytes());
            }
            out.push(Response::decode(&b));
            self.rsp_cons.set(self.rsp_cons.get().wrapping_add(1));
        }
        self.store(12, self.rsp_cons.get().wrapping_add(1));
        out
    }
}

/// Dom0 hole frames from 0x9000 up, showing the frontend's ring pages once mapped.
pub struct FakeFrames {
    front: FrontPages,
    next: u64,
    free: Vec<u64>,
    in_use: usize,
    /// Refuse to hand out frames (dom0 out of hole space).
    pub exhausted: bool,
}

impl FakeFrames {
    pub fn new(front: &FrontPages) -> Self {
        FakeFrames {
            front: front.clone(),
            next: 0x9000,
            free: Vec::new(),
            in_use: 0,
            exhausted: false,
        }
    }

    /// Frames handed out and not freed.
    pub fn in_use(&self) -> usize {
        self.in_use
    }
}

impl RingFrames for FakeFrames {
    type Page = Rc<PageWords>;
    fn allocate(&mut self) -> Option<u64> {
        if self.exhausted {
            return None;
        }
        self.in_use += 1;
        Some(self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        }))
    }
    fn free(&mut self, gfn: u64) {
        self.in_use -= 1;
        self.free.push(gfn);
    }
    fn view(&self, _gfn: u64, domid: u16, gref: GrantRef) -> Rc<PageWords> {
        self.front.get(domid, gref).unwrap_or_else(zero_page)
    }
}

/// An in-memory xenstore: nodes, and the watches registered.
#[derive(Default)]
pub struct MemStore {
    pub nodes: BTreeMap<String, Vec<u8>>,
    pub watches: Vec<(String, String)>,
    /// Make every write fail (a full store).
    pub fail_writes: bool,
}

impl MemStore {
    pub fn set(&mut self, path: &str, value: &str) {
        self.nodes.insert(path.into(), value.as_bytes().to_vec());
    }
    pub fn get(&self, path: &str) -> Option<String> {
        self.nodes
            .get(path)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

impl Xenstore for MemStore {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.nodes.get(path).cloned())
    }
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError> {
        if self.fail_writes {
            return Err(StoreError::NoSpace);
        }
        self.nodes.insert(path.into(), value.to_vec());
        Ok(())
    }
    fn rm(&mut self, path: &str) -> Result<(), StoreError> {
        let prefix = alloc::format!("{path}/");
        self.nodes
            .retain(|k, _| k != path && !k.starts_with(prefix.as_str()));
        Ok(())
    }
    fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        self.watches.push((path.into(), token.into()));
        Ok(())
    }
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        self.watches.retain(|(p, t)| p != path || t != token);
        Ok(())
    }
}

/// In which order [`MemTarget`] finishes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Fifo,
    /// Newest first (out of order).
    Lifo,
    /// Nothing completes until told otherwise.
    Stalled,
}

/// What [`MemTarget`] saw, in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    Read {
        tag: Tag,
        sector: u64,
        len: usize,
    },
    Write {
        tag: Tag,
        sector: u64,
        len: usize,
        fua: bool,
    },
    Flush {
        tag: Tag,
    },
    Discard {
        tag: Tag,
        sector: u64,
        sectors: u64,
    },
}

/// An in-memory disk with a volatile cache: a completed write lands in `cache`; a
/// completed flush (or a FUA write) makes it `durable`. A power cut keeps `durable` only.
pub struct MemTarget {
    pub geometry: Geometry,
    pub cache: Vec<u8>,
    pub durable: Vec<u8>,
    pub order: Order,
    /// Requests accepted at once before [`Busy`].
    pub queue_depth: usize,
    /// Requests touching these sectors fail.
    pub bad_sectors: Vec<u64>,
    pub submitted: Vec<Submitted>,
    pending: VecDeque<(Tag, BlockRequest)>,
    /// Writes that completed since the last completed flush (sector, len).
    dirty: Vec<(u64, usize)>,
    /// Flushes submitted while a write was still pending in the target.
    pub flushes_over_pending_writes: usize,
}

impl MemTarget {
    pub fn new(geometry: Geometry) -> Self {
        let bytes = usize::try_from(geometry.sectors).unwrap_or(0) * SECTOR_SIZE;
        MemTarget {
            geometry,
            cache: alloc::vec![0; bytes],
            durable: alloc::vec![0; bytes],
            order: Order::Fifo,
            queue_depth: 64,
            bad_sectors: Vec::new(),
            submitted: Vec::new(),
            pending: VecDeque::new(),
            dirty: Vec::new(),
            flushes_over_pending_writes: 0,
        }
    }

    /// A writable disk of `sectors` with flush and discard.
    pub fn disk(sectors: u64) -> Self {
        Self::new(Geometry {
            sectors,
            physical_sector_size: 4096,
            read_only: false,
            cdrom: false,
            flush: true,
            discard: Some(crate::target::DiscardInfo {
                granularity: 4096,
                alignment: 0,
                secure: false,
            }),
        })
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn touches_bad(&self, sector: u64, sectors: u64) -> bool {
        self.bad_sectors
            .iter()
            .any(|s| *s >= sector && *s < sector.saturating_add(sectors))
    }

    fn range(&self, sector: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(sector).ok()?.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.cache.len()).then_some(start..end)
    }

    fn complete(&mut self, tag: Tag, request: BlockRequest) -> Completion {
        let done = |buf, result| Completion { tag, buf, result };
        match request {
            BlockRequest::Read { sector, mut buf } => {
                let sectors = (buf.len() / SECTOR_SIZE) as u64;
                match self.range(sector, buf.len()) {
                    Some(r) if !self.touches_bad(sector, sectors) => {
                        buf.copy_from_slice(&self.cache[r]);
                        done(buf, Ok(()))
                    }
                    _ => done(buf, Err(IoError::Failed)),
                }
            }
            BlockRequest::Write { sector, buf, fua } => {
                let sectors = (buf.len() / SECTOR_SIZE) as u64;
                match self.range(sector, buf.len()) {
                    Some(r) if !self.touches_bad(sector, sectors) && !self.geometry.read_only => {
                        self.cache[r.clone()].copy_from_slice(&buf);
                        if fua {
                            self.durable[r].copy_from_slice(&buf);
                        } else {
                            self.dirty.push((sector, buf.len()));
                        }
                        done(buf, Ok(()))
                    }
                    _ => done(buf, Err(IoError::Failed)),
                }
            }
            BlockRequest::Flush => {
                for (sector, len) in core::mem::take(&mut self.dirty) {
                    if let Some(r) = self.range(sector, len) {
                        let (cache, durable) = (&self.cache, &mut self.durable);
                        durable[r.clone()].copy_from_slice(&cache[r]);
                    }
                }
                done(Vec::new(), Ok(()))
            }
            BlockRequest::Discard {
                sector, sectors, ..
            } => {
                let len = usize::try_from(sectors)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(SECTOR_SIZE);
                match self.range(sector, len) {
                    Some(r) if self.geometry.discard.is_some() => {
                        self.cache[r.clone()].fill(0);
                        self.durable[r].fill(0);
                        done(Vec::new(), Ok(()))
                    }
                    Some(_) => done(Vec::new(), Err(IoError::NotSupported)),
                    None => done(Vec::new(), Err(IoError::Failed)),
                }
            }
        }
    }
}

impl BlockTarget for MemTarget {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn submit(&mut self, tag: Tag, request: BlockRequest) -> Result<(), Busy> {
        if self.pending.len() >= self.queue_depth {
            return Err(Busy(request));
        }
        let seen = match &request {
            BlockRequest::Read { sector, buf } => Submitted::Read {
                tag,
                sector: *sector,
                len: buf.len(),
            },
            BlockRequest::Write { sector, buf, fua } => Submitted::Write {
                tag,
                sector: *sector,
                len: buf.len(),
                fua: *fua,
            },
            BlockRequest::Flush => {
                if self
                    .pending
                    .iter()
                    .any(|(_, r)| matches!(r, BlockRequest::Write { .. }))
                {
                    self.flushes_over_pending_writes += 1;
                }
                Submitted::Flush { tag }
            }
            BlockRequest::Discard {
                sector, sectors, ..
            } => Submitted::Discard {
                tag,
                sector: *sector,
                sectors: *sectors,
            },
        };
        self.submitted.push(seen);
        self.pending.push_back((tag, request));
        Ok(())
    }

    fn poll(&mut self) -> Option<Completion> {
        let (tag, request) = match self.order {
            Order::Fifo => self.pending.pop_front()?,
            Order::Lifo => self.pending.pop_back()?,
            Order::Stalled => return None,
        };
        Some(self.complete(tag, request))
    }
}

/// [`GrantIo`] through `FakeXen`'s `GNTTABOP_copy`, staging bytes in scratch dom0 frames
/// of the fake (which keeps "local" frames apart from Rust memory).
pub struct FakeGrantCopy<'x> {
    pub xen: &'x FakeXen,
    /// First scratch frame; one per span.
    pub scratch_gfn: u64,
    /// Copies issued (operations), for tests that count them.
    pub ops: usize,
    /// Hypercalls issued (each a batch of operations).
    pub calls: usize,
}

impl<'x> FakeGrantCopy<'x> {
    pub fn new(xen: &'x FakeXen) -> Self {
        FakeGrantCopy {
            xen,
            scratch_gfn: 0x7_0000,
            ops: 0,
            calls: 0,
        }
    }

    fn run(&mut self, ops: &mut [GnttabCopy]) -> Result<(), CopyError> {
        self.ops += ops.len();
        self.calls += 1;
        grant_copy(self.xen, ops).map_err(CopyError::Hypercall)?;
        for (span, op) in ops.iter().enumerate() {
            op.result()
                .map_err(|status| CopyError::Grant { span, status })?;
        }
        Ok(())
    }
}

impl GrantIo for FakeGrantCopy<'_> {
    fn copy_from_guest(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        dst: &mut [u8],
    ) -> Result<(), CopyError> {
        check_spans(domid, spans, dst.len())?;
        let mut ops = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            let op = GnttabCopy::new(
                CopyEnd::Grant {
                    dom: domid,
                    gref: s.gref,
                    offset: s.offset,
                },
                CopyEnd::Local {
                    gfn: self.scratch_gfn + i as u64,
                    offset: 0,
                },
                s.len,
            )
            .map_err(|status| CopyError::Grant { span: i, status })?;
            ops.push(op);
        }
        self.run(&mut ops)?;
        let mut at = 0;
        for (i, s) in spans.iter().enumerate() {
            let len = usize::from(s.len);
            let bytes = self.xen.read_local(self.scratch_gfn + i as u64, 0, len);
            dst[at..at + len].copy_from_slice(&bytes);
            at += len;
        }
        Ok(())
    }

    fn copy_to_guest(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        src: &[u8],
    ) -> Result<(), CopyError> {
        check_spans(domid, spans, src.len())?;
        let mut ops = Vec::new();
        let mut at = 0;
        for (i, s) in spans.iter().enumerate() {
            let len = usize::from(s.len);
            self.xen
                .write_local(self.scratch_gfn + i as u64, 0, &src[at..at + len]);
            at += len;
            let op = GnttabCopy::new(
                CopyEnd::Local {
                    gfn: self.scratch_gfn + i as u64,
                    offset: 0,
                },
                CopyEnd::Grant {
                    dom: domid,
                    gref: s.gref,
                    offset: s.offset,
                },
                s.len,
            )
            .map_err(|status| CopyError::Grant { span: i, status })?;
            ops.push(op);
        }
        self.run(&mut ops)
    }
}
