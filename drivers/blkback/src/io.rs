//! Request processing: from ring slots to [`BlockTarget`] requests and back to responses.
//!
//! One [`Io`] per device serves all of its queues (rings) against the one target:
//!
//! - **Validation** (nothing reaches the target otherwise): segment counts (11 direct, the
//!   advertised indirect maximum), `first_sect <= last_sect <= 7`, the sector range inside
//!   the disk (overflow-checked), read-only devices refuse writes and discards, operations
//!   not offered answer `BLKIF_RSP_EOPNOTSUPP`. A request that fails any check, or whose
//!   grant copy fails (invalid, foreign, revoked or read-only grant), is answered
//!   `BLKIF_RSP_ERROR` and the device stays up.
//! - **Ordering**: a flush is submitted only once every earlier write has completed (so
//!   "durable" covers them); a barrier additionally waits for every earlier request and
//!   holds back every later one until it completes. A flush or barrier that carries data
//!   is a preflush followed by a FUA write: acknowledged only when the data is durable.
//! - **Bounds**: at most `max_requests_per_poll` requests are taken from each ring per call
//!   and at most `max_completions_per_poll` completions handled, so a flood cannot hold
//!   the caller; no new request is taken while `max_inflight_bytes` of buffers are in
//!   flight; buffers are allocated fallibly (failure answers `BLKIF_RSP_ERROR`).
//! - **Disconnect**: the rings go away at once; requests still in the target are
//!   orphaned, their completions dropped; requests not yet submitted are dropped.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::ops::Deref;

use keel_xen::evtchn::Port;

use crate::grant_io::{GrantIo, GrantSpan};
use crate::ring::{BlkRing, PageWords, RingError};
use crate::target::{BlockRequest, BlockTarget, Busy, Completion, Geometry, IoError, Tag};
use crate::wire::{
    indirect_segments, op, DirectRequest, DiscardRequest, IndirectRequest, Request, Response,
    RwKind, Segment, Status, SECTOR_SIZE,
};

/// Bounds on one device's work and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests taken from each ring per [`Io::poll`].
    pub max_requests_per_poll: u32,
    /// Completions handled per [`Io::poll`].
    pub max_completions_per_poll: u32,
    /// No new request is taken while this many buffer bytes are in flight (one request
    /// more may be taken when below, so the bound is this plus one request).
    pub max_inflight_bytes: usize,
    /// `feature-max-indirect-segments` (0: indirect requests not offered).
    pub max_indirect_segments: u16,
    /// Data bytes copied to or from guests per [`Io::poll`] (checked after each request,
    /// so one request more may go over): keeps a call to a few milliseconds.
    pub max_copy_bytes_per_poll: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_requests_per_poll: 32,
            max_completions_per_poll: 64,
            max_inflight_bytes: 4 << 20,
            // Linux blkback's MAX_INDIRECT_SEGMENTS: 1 MiB per request.
            max_indirect_segments: 256,
            max_copy_bytes_per_poll: 2 << 20,
        }
    }
}

/// What the device offers, fixed at connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub sectors: u64,
    pub read_only: bool,
    /// `feature-flush-cache` and `feature-barrier`.
    pub flush: bool,
    pub discard: bool,
    pub discard_secure: bool,
}

impl Offer {
    /// What to offer for `geometry`, made read-only if the toolstack says so.
    pub fn new(geometry: &Geometry, force_read_only: bool) -> Self {
        let read_only = geometry.read_only || force_read_only;
        Offer {
            sectors: geometry.sectors,
            read_only,
            // Flushing a disk nobody may write is meaningless; not offered.
            flush: geometry.flush && !read_only,
            discard: geometry.discard.is_some() && !read_only,
            discard_secure: geometry.discard.is_some_and(|d| d.secure) && !read_only,
        }
    }
}

/// One ring of the device and its event channel.
pub struct Queue<P> {
    pub ring: BlkRing<P>,
    pub port: Port,
    /// Responses queued since the last push.
    unpushed: bool,
}

impl<P> Queue<P> {
    pub fn new(ring: BlkRing<P>, port: Port) -> Self {
        Queue {
            ring,
            port,
            unpushed: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    None,
    /// Flush: every earlier write finished first.
    AfterWrites,
    /// Barrier: every earlier request finished first, nothing later starts before.
    AfterAll,
}

#[derive(Debug)]
enum Stage {
    /// Not yet given to the target (fenced, or the target was busy).
    Waiting {
        preflush: bool,
        request: Option<BlockRequest>,
    },
    /// The preflush is in the target; `then` follows it.
    Flushing { then: Option<BlockRequest> },
    /// The final request is in the target.
    Submitted,
}

#[derive(Debug)]
struct Pending {
    /// Index of the ring to answer on (`None`: orphaned by a disconnect).
    queue: Option<usize>,
    id: u64,
    op: u8,
    fence: Fence,
    /// Modifies the disk (for flush fencing).
    writes: bool,
    stage: Stage,
    /// For reads: where the data goes.
    read_spans: Vec<GrantSpan>,
    bytes: usize,
    /// When it was taken from its ring ([`Services::now_us`]), for its latency.
    taken_us: u64,
}

/// What one call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Requests taken from rings.
    pub taken: u32,
    /// Responses written.
    pub answered: u32,
    /// Data bytes copied to or from the guest.
    pub copied: usize,
    /// Work was left for the next call (a bound was hit, or requests arrived meanwhile):
    /// call again soon without waiting for an event.
    pub more: bool,
}

/// What a device has done, for metering (`vbd_<dev>_*` data sources, `VBD_metrics`) and
/// logs (successful requests; failures are counted by status). Cumulative since the
/// device was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub reads: u64,
    pub read_bytes: u64,
    /// Σ over successful reads of the time from taking the request off its ring to
    /// answering it, in microseconds (by [`Services::now_us`]; xcp-rrdd's
    /// `vbd_<dev>_read_latency` is this over `reads`, per interval).
    pub read_latency_us: u64,
    pub writes: u64,
    pub write_bytes: u64,
    /// The same for successful writes (flushes, barriers and discards not included).
    pub write_latency_us: u64,
    /// Flushes and barriers (their data, if any, counts as written bytes).
    pub flushes: u64,
    pub discards: u64,
    /// Answered `BLKIF_RSP_ERROR`.
    pub errors: u64,
    /// Answered `BLKIF_RSP_EOPNOTSUPP`.
    pub unsupported: u64,
}

impl Stats {
    fn count(&mut self, op: u8, status: Status, bytes: usize, latency_us: u64) {
        let bytes = bytes as u64;
        match status {
            Status::Error => self.errors += 1,
            Status::NotSupported => self.unsupported += 1,
            Status::Okay => match op {
                op::READ => {
                    self.reads += 1;
                    self.read_bytes += bytes;
                    self.read_latency_us = self.read_latency_us.saturating_add(latency_us);
                }
                op::WRITE => {
                    self.writes += 1;
                    self.write_bytes += bytes;
                    self.write_latency_us = self.write_latency_us.saturating_add(latency_us);
                }
                op::DISCARD => self.discards += 1,
                _ => {
                    self.flushes += 1;
                    self.write_bytes += bytes;
                }
            },
        }
    }
}

/// A frontend broke the ring protocol: disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub queue: usize,
    pub error: RingError,
}

/// The request engine of one device.
pub struct Io {
    domid: u16,
    limits: Limits,
    offer: Offer,
    pending: BTreeMap<Tag, Pending>,
    waiting: VecDeque<Tag>,
    next_tag: Tag,
    bytes_in_flight: usize,
    /// Barriers in `pending` (while any is, no new request is taken).
    barriers: usize,
    stats: Stats,
}

/// Everything a call needs besides the rings.
pub struct Services<'a> {
    pub grants: &'a mut dyn GrantIo,
    pub target: &'a mut dyn BlockTarget,
    /// Monotonic time of the call in microseconds (requests' latencies are measured by it).
    pub now_us: u64,
}

fn fill_buffer(bytes: usize) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(bytes).ok()?;
    buf.resize(bytes, 0);
    Some(buf)
}

/// A checked request, ready to enter the pipeline.
struct Prepared {
    fence: Fence,
    writes: bool,
    preflush: bool,
    request: Option<BlockRequest>,
    read_spans: Vec<GrantSpan>,
    bytes: usize,
}

impl Io {
    pub fn new(domid: u16, limits: Limits, offer: Offer) -> Self {
        Io {
            domid,
            limits,
            offer,
            pending: BTreeMap::new(),
            waiting: VecDeque::new(),
            next_tag: 1,
            bytes_in_flight: 0,
            barriers: 0,
            stats: Stats::default(),
        }
    }

    pub fn offer(&self) -> Offer {
        self.offer
    }

    /// Offers again (on reconnection, the disk or the VBD's mode may have changed).
    pub fn set_offer(&mut self, offer: Offer) {
        self.offer = offer;
    }

    /// Requests in the pipeline (including orphans still in the target).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn bytes_in_flight(&self) -> usize {
        self.bytes_in_flight
    }

    /// The rings are going away: nothing is answered any more. Requests in the target are
    /// kept until they complete (their buffers are ours), the rest are dropped.
    pub fn orphan_all(&mut self) {
        for tag in core::mem::take(&mut self.waiting) {
            self.remove(tag);
        }
        for p in self.pending.values_mut() {
            p.queue = None;
            if let Stage::Flushing { then } = &mut p.stage {
                *then = None;
            }
        }
    }

    /// One round: completions, deferred submissions, new requests, responses pushed and
    /// the frontends notified as the ring's event index asks.
    pub fn poll<P: Deref<Target = PageWords>>(
        &mut self,
        queues: &mut [Queue<P>],
        svc: &mut Services<'_>,
        notify: &mut dyn FnMut(Port),
    ) -> Result<Progress, Violation> {
        let mut progress = Progress::default();
        self.complete(queues, svc, &mut progress);
        self.submit_waiting(svc);
        for index in 0..queues.len() {
            self.take_requests(queues, index, svc, &mut progress)?;
        }
        self.submit_waiting(svc);
        for (index, q) in queues.iter_mut().enumerate() {
            if q.unpushed {
                q.unpushed = false;
                if q.ring.push_responses() {
                    notify(q.port);
                }
            }
            if !self.gated() && self.bytes_in_flight < self.limits.max_inflight_bytes {
                match q.ring.final_check_for_requests() {
                    Ok(true) => progress.more = true,
                    Ok(false) => {}
                    Err(error) => {
                        return Err(Violation {
                            queue: index,
                            error,
                        })
                    }
                }
            }
        }
        Ok(progress)
    }

    fn answer<P: Deref<Target = PageWords>>(
        queues: &mut [Queue<P>],
        queue: Option<usize>,
        id: u64,
        op: u8,
        status: Status,
        progress: &mut Progress,
    ) {
        let Some(q) = queue.and_then(|i| queues.get_mut(i)) else {
            return;
        };
        let rsp = Response {
            id,
            operation: op,
            status,
        };
        // Cannot fail: every pending request holds a consumed slot of its ring.
        if q.ring.queue_response(&rsp.encode()).is_ok() {
            q.unpushed = true;
            progress.answered += 1;
        }
    }

    fn finish<P: Deref<Target = PageWords>>(
        &mut self,
        queues: &mut [Queue<P>],
        tag: Tag,
        status: Status,
        now_us: u64,
        progress: &mut Progress,
    ) {
        if let Some(p) = self.remove(tag) {
            if p.queue.is_some() {
                let latency_us = now_us.saturating_sub(p.taken_us);
                self.stats.count(p.op, status, p.bytes, latency_us);
            }
            Self::answer(queues, p.queue, p.id, p.op, status, progress);
        }
    }

    fn complete<P: Deref<Target = PageWords>>(
        &mut self,
        queues: &mut [Queue<P>],
        svc: &mut Services<'_>,
        progress: &mut Progress,
    ) {
        for _ in 0..self.limits.max_completions_per_poll {
            if progress.copied >= self.limits.max_copy_bytes_per_poll {
                break;
            }
            let Some(Completion { tag, buf, result }) = svc.target.poll() else {
                return;
            };
            let Some(p) = self.pending.get_mut(&tag) else {
                // Not ours (a target bug); nothing to answer.
                continue;
            };
            if let Stage::Flushing { then } = &mut p.stage {
                if result.is_ok() {
                    if let Some(request) = then.take() {
                        // The preflush is done; the data write follows, not fenced again.
                        p.stage = Stage::Waiting {
                            preflush: false,
                            request: Some(request),
                        };
                        self.waiting.push_front(tag);
                        continue;
                    }
                }
            }
            let status = match result {
                Ok(()) if !p.read_spans.is_empty() && p.queue.is_some() => {
                    progress.copied += buf.len();
                    match svc.grants.copy_to_guest(self.domid, &p.read_spans, &buf) {
                        Ok(()) => Status::Okay,
                        Err(_) => Status::Error,
                    }
                }
                Ok(()) => Status::Okay,
                Err(IoError::Failed) => Status::Error,
                Err(IoError::NotSupported) => Status::NotSupported,
            };
            self.finish(queues, tag, status, svc.now_us, progress);
        }
        progress.more = true;
    }

    /// A barrier is unfinished: nothing new is taken.
    fn gated(&self) -> bool {
        self.barriers > 0
    }

    fn insert(&mut self, tag: Tag, p: Pending) {
        self.bytes_in_flight += p.bytes;
        if p.fence == Fence::AfterAll {
            self.barriers += 1;
        }
        self.pending.insert(tag, p);
    }

    fn remove(&mut self, tag: Tag) -> Option<Pending> {
        let p = self.pending.remove(&tag)?;
        self.bytes_in_flight -= p.bytes;
        if p.fence == Fence::AfterAll {
            self.barriers -= 1;
        }
        Some(p)
    }

    fn may_start(&self, tag: Tag, fence: Fence) -> bool {
        if fence == Fence::None && self.barriers == 0 {
            return true;
        }
        let mut earlier = self.pending.range(..tag).map(|(_, p)| p);
        match fence {
            Fence::AfterAll => earlier.next().is_none(),
            Fence::AfterWrites => !earlier.any(|p| p.writes || p.fence == Fence::AfterAll),
            Fence::None => !earlier.any(|p| p.fence == Fence::AfterAll),
        }
    }

    fn submit_waiting(&mut self, svc: &mut Services<'_>) {
        let mut index = 0;
        while let Some(&tag) = self.waiting.get(index) {
            let Some(fence) = self.pending.get(&tag).map(|p| p.fence) else {
                self.waiting.remove(index);
                continue;
            };
            // A data write after its preflush is past its fence.
            let past_fence = matches!(
                self.pending.get(&tag).map(|p| &p.stage),
                Some(Stage::Waiting {
                    preflush: false,
                    ..
                })
            ) && fence != Fence::None;
            if !past_fence && !self.may_start(tag, fence) {
                index += 1;
                continue;
            }
            let Some(p) = self.pending.get_mut(&tag) else {
                continue;
            };
            let Stage::Waiting { preflush, request } = &mut p.stage else {
                self.waiting.remove(index);
                continue;
            };
            let (first, then) = if *preflush {
                (BlockRequest::Flush, request.take())
            } else {
                match request.take() {
                    Some(r) => (r, None),
                    None => {
                        // Nothing to do (cannot happen: prepared requests carry work).
                        self.waiting.remove(index);
                        continue;
                    }
                }
            };
            let was_flush = *preflush;
            match svc.target.submit(tag, first) {
                Ok(()) => {
                    p.stage = if was_flush {
                        Stage::Flushing { then }
                    } else {
                        Stage::Submitted
                    };
                    self.waiting.remove(index);
                }
                Err(Busy(back)) => {
                    // Put it back as it was and stop: order is kept, retried next round.
                    if was_flush {
                        *request = then;
                    } else {
                        *request = Some(back);
                    }
                    return;
                }
            }
        }
    }

    fn take_requests<P: Deref<Target = PageWords>>(
        &mut self,
        queues: &mut [Queue<P>],
        index: usize,
        svc: &mut Services<'_>,
        progress: &mut Progress,
    ) -> Result<(), Violation> {
        for _ in 0..self.limits.max_requests_per_poll {
            if self.gated() || self.bytes_in_flight >= self.limits.max_inflight_bytes {
                return Ok(());
            }
            if progress.copied >= self.limits.max_copy_bytes_per_poll {
                break;
            }
            let Some(q) = queues.get_mut(index) else {
                return Ok(());
            };
            let raw = match q.ring.take_request() {
                Ok(Some(raw)) => raw,
                Ok(None) => return Ok(()),
                Err(error) => {
                    return Err(Violation {
                        queue: index,
                        error,
                    })
                }
            };
            progress.taken += 1;
            let request = Request::parse(&raw);
            let (id, op) = (request.id(), request.response_op());
            match self.prepare(&request, svc) {
                Err(status) => {
                    self.stats.count(op, status, 0, 0);
                    Self::answer(queues, Some(index), id, op, status, progress);
                }
                Ok(None) => {
                    self.stats.count(op, Status::Okay, 0, 0);
                    Self::answer(queues, Some(index), id, op, Status::Okay, progress);
                }
                Ok(Some(prep)) => {
                    if prep.writes {
                        progress.copied += prep.bytes;
                    }
                    let tag = self.next_tag;
                    self.next_tag += 1;
                    self.insert(
                        tag,
                        Pending {
                            queue: Some(index),
                            id,
                            op,
                            fence: prep.fence,
                            writes: prep.writes,
                            stage: Stage::Waiting {
                                preflush: prep.preflush,
                                request: prep.request,
                            },
                            read_spans: prep.read_spans,
                            bytes: prep.bytes,
                            taken_us: svc.now_us,
                        },
                    );
                    self.waiting.push_back(tag);
                }
            }
        }
        progress.more = true;
        Ok(())
    }

    /// Checks a request and gathers its data; `Ok(None)` means done already (nothing to
    /// do), `Err` the status to answer at once.
    fn prepare(
        &mut self,
        request: &Request,
        svc: &mut Services<'_>,
    ) -> Result<Option<Prepared>, Status> {
        match request {
            Request::Unknown { .. } => Err(Status::NotSupported),
            Request::Discard(d) => self.prepare_discard(d),
            Request::Direct(d) => self.prepare_direct(d, svc),
            Request::Indirect(r) => self.prepare_indirect(r, svc),
        }
    }

    fn check_range(&self, sector: u64, sectors: u64) -> Result<(), Status> {
        match sector.checked_add(sectors) {
            Some(end) if end <= self.offer.sectors => Ok(()),
            _ => Err(Status::Error),
        }
    }

    fn prepare_discard(&self, d: &DiscardRequest) -> Result<Option<Prepared>, Status> {
        if self.offer.read_only {
            return Err(Status::Error);
        }
        if !self.offer.discard || (d.secure && !self.offer.discard_secure) {
            return Err(Status::NotSupported);
        }
        self.check_range(d.sector, d.nr_sectors)?;
        if d.nr_sectors == 0 {
            return Ok(None);
        }
        Ok(Some(Prepared {
            fence: Fence::None,
            writes: true,
            preflush: false,
            request: Some(BlockRequest::Discard {
                sector: d.sector,
                sectors: d.nr_sectors,
                secure: d.secure,
            }),
            read_spans: Vec::new(),
            bytes: 0,
        }))
    }

    fn prepare_direct(
        &mut self,
        d: &DirectRequest,
        svc: &mut Services<'_>,
    ) -> Result<Option<Prepared>, Status> {
        let segments = d.segments().ok_or(Status::Error)?;
        self.prepare_rw(d.kind, d.sector, segments, svc)
    }

    fn prepare_indirect(
        &mut self,
        r: &IndirectRequest,
        svc: &mut Services<'_>,
    ) -> Result<Option<Prepared>, Status> {
        let kind = r.kind().ok_or(Status::Error)?;
        let count = usize::from(r.nr_segments);
        if self.limits.max_indirect_segments == 0 {
            return Err(Status::NotSupported);
        }
        if count == 0 || count > usize::from(self.limits.max_indirect_segments) {
            return Err(Status::Error);
        }
        let pages = r.pages();
        let grefs = r.indirect_grefs.get(..pages).ok_or(Status::Error)?;
        let spans: Vec<GrantSpan> = grefs
            .iter()
            .map(|g| GrantSpan {
                gref: *g,
                offset: 0,
                len: 4096,
            })
            .collect();
        let mut raw = fill_buffer(pages * 4096).ok_or(Status::Error)?;
        svc.grants
            .copy_from_guest(self.domid, &spans, &mut raw)
            .map_err(|_| Status::Error)?;
        let mut segments = Vec::new();
        segments
            .try_reserve_exact(count)
            .map_err(|_| Status::Error)?;
        segments.extend(indirect_segments(&raw, count));
        self.prepare_rw(kind, r.sector, &segments, svc)
    }

    fn prepare_rw(
        &mut self,
        kind: RwKind,
        sector: u64,
        segments: &[Segment],
        svc: &mut Services<'_>,
    ) -> Result<Option<Prepared>, Status> {
        let fencing = matches!(kind, RwKind::Flush | RwKind::Barrier);
        if fencing && !self.offer.flush {
            return Err(Status::NotSupported);
        }
        if segments.is_empty() && !fencing {
            return Err(Status::Error);
        }
        if kind.writes() && self.offer.read_only {
            return Err(Status::Error);
        }
        let mut spans = Vec::new();
        spans
            .try_reserve_exact(segments.len())
            .map_err(|_| Status::Error)?;
        let mut sectors = 0u64;
        for s in segments {
            let (offset, len) = s.span().map_err(|_| Status::Error)?;
            spans.push(GrantSpan {
                gref: s.gref,
                offset,
                len,
            });
            sectors += s.sectors();
        }
        self.check_range(sector, sectors)?;
        let bytes = usize::try_from(sectors)
            .ok()
            .and_then(|s| s.checked_mul(SECTOR_SIZE))
            .ok_or(Status::Error)?;
        let fence = match kind {
            RwKind::Barrier => Fence::AfterAll,
            RwKind::Flush => Fence::AfterWrites,
            _ => Fence::None,
        };
        if bytes == 0 {
            // A flush or barrier alone.
            return Ok(Some(Prepared {
                fence,
                writes: false,
                preflush: true,
                request: None,
                read_spans: Vec::new(),
                bytes: 0,
            }));
        }
        let mut buf = fill_buffer(bytes).ok_or(Status::Error)?;
        if kind.writes() {
            svc.grants
                .copy_from_guest(self.domid, &spans, &mut buf)
                .map_err(|_| Status::Error)?;
        }
        let (request, read_spans) = match kind {
            RwKind::Read => (BlockRequest::Read { sector, buf }, spans),
            RwKind::Write => (
                BlockRequest::Write {
                    sector,
                    buf,
                    fua: false,
                },
                Vec::new(),
            ),
            RwKind::Flush | RwKind::Barrier => (
                BlockRequest::Write {
                    sector,
                    buf,
                    fua: true,
                },
                Vec::new(),
            ),
        };
        Ok(Some(Prepared {
            fence,
            writes: kind.writes(),
            preflush: fencing,
            request: Some(request),
            read_spans,
            bytes,
        }))
    }
}
