//! The queued data path: VDI requests cut into device requests, many in flight at once, and
//! put back together as the device completes them (in any order).
//!
//! A read becomes one device read per mapped piece (holes are zero-filled at once); a write
//! into an extent this VDI owns alone goes in place; a write into a hole or a shared extent
//! allocates a fresh extent, fills it (old contents or zeros around the written range, the
//! data inside it) and maps it only when every piece landed — the same copy-on-write rule as
//! the synchronous path, so snapshots never change and unwritten ranges read as zeros. A flush
//! waits for the writes submitted before it, then commits the maps through the same plan as
//! every metadata commit (blocks, flush, root, flush), each stage a queued device request.
//!
//! Safety rules that make concurrency harmless:
//! - every device request pins its physical extent ([`crate::space::ExtentTable::pin_io`]), so
//!   an extent a map dropped meanwhile (discard, copy-on-write) is not reused while a read
//!   or write is still in flight on it;
//! - a virtual extent being copied-on-write is locked: later writes to it wait until it is
//!   mapped (reads go on, from the old extent);
//! - metadata operations (create, snapshot, ...) drain the queue first, so a snapshot sees
//!   no write half done;
//! - a commit marks a chunk clean only if no write changed it after the commit was planned.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use keel_block::{BlockDevice, BlockError, Rejected, Request, RequestId};

use crate::commit::CommitPlan;
use crate::error::{Space, SrError};
use crate::io::transfer_len;
use crate::layout::MAX_DATA_IO_BYTES;
use crate::sr::Sr;
use crate::vdi_io::{IoRejected, VdiCompletion, VdiIo, VdiIoKind};
use crate::Uuid;

/// Most VDI requests accepted and not yet taken back per SR (in flight, or completed and
/// waiting for their user); a caller gets `QueueFull` beyond it.
pub const MAX_QUEUED_IO: usize = 1024;
/// Most device completions one `poll_io` handles, so one call never runs for long; it
/// reports progress and the caller polls again.
const MAX_COMPLETIONS_PER_POLL: usize = 256;
/// Most copy-on-writes under way at once per SR. Each holds up to an extent's worth of
/// buffers (old contents or zeros around the written range), so this bounds the memory a
/// flood of small writes into holes can pin; further writes that need one wait.
pub const MAX_COPY_ON_WRITES: usize = 16;

/// The queue's state, part of [`Sr`].
#[derive(Default)]
pub(crate) struct Engine {
    next_op: u64,
    /// Accepted requests not yet completed, by id (ids grow with submission order).
    ops: BTreeMap<u64, Op>,
    /// Accepted requests that have not started, oldest first.
    waiting: VecDeque<u64>,
    /// Device requests in flight.
    requests: BTreeMap<RequestId, Piece>,
    /// Device requests the device's queue had no room for yet, oldest first.
    backlog: VecDeque<(Request, Piece)>,
    next_cow: u64,
    cows: BTreeMap<u64, Cow>,
    /// Virtual extents being copied-on-write.
    locked: BTreeSet<(Uuid, u64)>,
    /// In this pass over the waiting requests, an older write already waits for room for
    /// its copy-on-writes: younger ones that need one wait behind it (no overtaking).
    cow_gate_closed: bool,
    /// The flush whose commit is under way (one at a time).
    committing: Option<u64>,
    /// Finished requests of callers of `submit_io`.
    done: VecDeque<VdiCompletion>,
    /// Finished requests of the synchronous facade, by op id.
    sync_done: BTreeMap<u64, VdiCompletion>,
}

struct Op {
    vdi: Uuid,
    tag: u64,
    kind: VdiIoKind,
    offset: u64,
    len: u64,
    buffer: Option<alloc::vec::Vec<u8>>,
    /// Device requests (its own and its copy-on-writes') not yet completed.
    outstanding: usize,
    error: Option<SrError>,
    started: bool,
    /// Submitted by the synchronous facade, which waits for it by id.
    sync: bool,
    flush: Option<FlushStage>,
}

/// Where a flush is. Each stage's device requests complete before the next stage starts.
enum FlushStage {
    /// Nothing to commit: one device flush.
    Device,
    /// (1) The new tree's blocks.
    Blocks(CommitPlan),
    /// (2) Flush: the tree and all data written so far durable.
    Durable(CommitPlan),
    /// (3) The root record. From here a failure poisons the SR.
    Root(CommitPlan),
    /// (4) Flush: the new root durable.
    RootDurable(CommitPlan),
}

struct Piece {
    op: u64,
    /// The extent the request touches, pinned while it is in flight.
    extent: Option<u32>,
    role: Role,
}

enum Role {
    /// The op's whole buffer went to the device (no copy).
    Whole,
    /// Part of a read: copied into the op's buffer at `at`.
    ReadPart { at: usize },
    /// Part of an in-place write.
    WritePart,
    /// Old contents for a copy-on-write, to be written at byte `to` of the device.
    CowRead { cow: u64, to: u64 },
    /// A piece of a copy-on-write's fresh extent (old contents, zeros or data).
    CowWrite { cow: u64 },
    /// A flush's own request.
    Flush,
}

struct Cow {
    vdi: Uuid,
    vext: u64,
    fresh: u32,
    outstanding: usize,
    failed: bool,
}

/// How one virtual extent of a write is served.
enum Target {
    InPlace(u32),
    Cow { old: Option<u32> },
}

fn alloc_zeroed(len: usize) -> Result<Vec<u8>, SrError> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(len)
        .map_err(|_| SrError::OutOfMemory)?;
    buffer.resize(len, 0);
    Ok(buffer)
}

fn alloc_copy(data: &[u8]) -> Result<Vec<u8>, SrError> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(data.len())
        .map_err(|_| SrError::OutOfMemory)?;
    buffer.extend_from_slice(data);
    Ok(buffer)
}

impl<D: BlockDevice> Sr<D> {
    /// Queues `io` on VDI `vdi`; its completion carries `tag`. Checks the request (VDI,
    /// range, alignment, read-only) and refuses it, buffer handed back, if it is wrong or the
    /// queue is full. A write that needs more free extents than there are may first commit
    /// (to free extents only old roots held), which waits for the queue to drain.
    pub fn submit_io(&mut self, vdi: Uuid, tag: u64, io: VdiIo) -> Result<(), IoRejected> {
        self.enqueue(vdi, tag, io, false).map(drop)
    }

    /// Moves the queue on: collects the device's completions, starts what can start, and
    /// submits what the device has room for. Returns whether anything happened. Never waits.
    pub fn poll_io(&mut self) -> bool {
        let mut progress = false;
        for _ in 0..MAX_COMPLETIONS_PER_POLL {
            progress |= self.start_waiting();
            self.submit_backlog();
            let Some(completion) = self.dev.poll_completion() else {
                break;
            };
            progress = true;
            if let Some(piece) = self.engine.requests.remove(&completion.id) {
                let result = completion.result.map_err(SrError::from);
                self.piece_done(piece, result, completion.buffer);
            }
        }
        // What the last completions made possible is started even when the bound ended
        // the loop.
        progress |= self.start_waiting();
        self.submit_backlog();
        progress
    }

    /// A finished request of `submit_io`, if any.
    pub fn take_io_completion(&mut self) -> Option<VdiCompletion> {
        self.engine.done.pop_front()
    }

    /// The next finished request of `submit_io` on VDI `vdi`, if any (for users that each
    /// serve one VDI of a shared SR).
    pub fn take_io_completion_of(&mut self, vdi: Uuid) -> Option<VdiCompletion> {
        let index = self.engine.done.iter().position(|c| c.vdi == vdi)?;
        self.engine.done.remove(index)
    }

    /// The oldest finished request of `submit_io` that `wanted` picks, if any (for users that
    /// share a VDI and tell their requests apart by tag).
    pub fn take_io_completion_where(
        &mut self,
        mut wanted: impl FnMut(&VdiCompletion) -> bool,
    ) -> Option<VdiCompletion> {
        let index = self.engine.done.iter().position(&mut wanted)?;
        self.engine.done.remove(index)
    }

    /// Requests accepted and not yet completed (of every user).
    pub fn io_in_flight(&self) -> usize {
        self.engine.ops.len()
    }

    /// Copy-on-writes under way (at most [`MAX_COPY_ON_WRITES`] unless one write needs more).
    pub fn copy_on_writes_in_flight(&self) -> usize {
        self.engine.cows.len()
    }

    /// Device requests in flight or waiting for room in the device's queue.
    pub fn device_requests_in_flight(&self) -> usize {
        self.engine.requests.len() + self.engine.backlog.len()
    }

    /// Polls until every queued request has completed (before a metadata operation, or to
    /// detach). Waits for the device.
    pub(crate) fn drain(&mut self) -> Result<(), SrError> {
        while !self.engine.ops.is_empty() {
            if !self.poll_io() && self.engine.requests.is_empty() && self.engine.backlog.is_empty()
            {
                // Nothing in flight and nothing can start: a bug, not something to wait for.
                return Err(SrError::Device(BlockError::NotIdle));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Runs one request to completion for the synchronous facade.
    pub(crate) fn run_io(&mut self, vdi: Uuid, io: VdiIo) -> Result<VdiCompletion, SrError> {
        let id = self
            .enqueue(vdi, 0, io, true)
            .map_err(|rejected| rejected.error)?;
        loop {
            if let Some(completion) = self.engine.sync_done.remove(&id) {
                return Ok(completion);
            }
            if !self.poll_io() && self.engine.requests.is_empty() && self.engine.backlog.is_empty()
            {
                if let Some(completion) = self.engine.sync_done.remove(&id) {
                    return Ok(completion);
                }
                return Err(SrError::Device(BlockError::NotIdle));
            }
        }
    }

    fn enqueue(&mut self, vdi: Uuid, tag: u64, io: VdiIo, sync: bool) -> Result<u64, IoRejected> {
        if let Err(error) = self.check_io(vdi, &io) {
            return Err(IoRejected { error, io });
        }
        // The synchronous facade waits for its one request, so it adds at most one and is
        // never refused for room: a XenAPI call must not fail because guests keep the queue
        // full (their completions wait for their task, which cannot run during the call).
        if !sync && self.engine.ops.len() + self.engine.done.len() >= MAX_QUEUED_IO {
            return Err(IoRejected {
                error: SrError::QueueFull,
                io,
            });
        }
        if let VdiIo::Write { offset, buffer } = &io {
            let needed = self.extents_to_allocate(vdi, *offset, buffer.len() as u64);
            if !self.extents.has_free(needed) {
                if let Err(error) = self.reserve_extents(needed) {
                    return Err(IoRejected { error, io });
                }
            }
        }
        let (offset, len) = match &io {
            VdiIo::Read { offset, buffer } | VdiIo::Write { offset, buffer } => {
                (*offset, buffer.len() as u64)
            }
            VdiIo::Discard { offset, len } => (*offset, *len),
            VdiIo::Flush => (0, 0),
        };
        let kind = io.kind();
        let id = self.engine.next_op;
        self.engine.next_op += 1;
        self.engine.ops.insert(
            id,
            Op {
                vdi,
                tag,
                kind,
                offset,
                len,
                buffer: io.into_buffer(),
                outstanding: 0,
                error: None,
                started: false,
                sync,
                flush: None,
            },
        );
        self.engine.waiting.push_back(id);
        // Started and handed to the device at once; completions wait for `poll_io`.
        self.start_waiting();
        self.submit_backlog();
        Ok(id)
    }

    fn check_io(&self, vdi: Uuid, io: &VdiIo) -> Result<(), SrError> {
        self.ensure_usable()?;
        if let VdiIo::Flush = io {
            // A flush covers the whole SR, whichever VDI it names.
            return Ok(());
        }
        let read_only = self.vdi(vdi)?.read_only;
        match io {
            VdiIo::Read { offset, buffer } => self.check_range(vdi, *offset, buffer.len() as u64),
            VdiIo::Write { offset, buffer } => {
                if read_only {
                    return Err(SrError::ReadOnly(vdi));
                }
                self.check_range(vdi, *offset, buffer.len() as u64)
            }
            VdiIo::Discard { offset, len } => {
                if read_only {
                    return Err(SrError::ReadOnly(vdi));
                }
                self.check_range(vdi, *offset, *len)
            }
            VdiIo::Flush => Ok(()),
        }
    }

    /// Fresh extents a write of `len` bytes at `offset` needs as the maps stand now.
    fn extents_to_allocate(&self, vdi: Uuid, offset: u64, len: u64) -> u64 {
        let Ok(vdi) = self.vdi(vdi) else {
            return 0;
        };
        if len == 0 {
            return 0;
        }
        let extent_size = self.geometry.extent_size;
        (offset / extent_size..=(offset + len - 1) / extent_size)
            .filter(|&vext| !vdi.get(vext).is_some_and(|p| self.extents.exclusive(p)))
            .count() as u64
    }

    /// Starts every waiting request that may start now, oldest first.
    fn start_waiting(&mut self) -> bool {
        let mut progress = false;
        self.engine.cow_gate_closed = false;
        let mut index = 0;
        while let Some(&id) = self.engine.waiting.get(index) {
            if self.try_start(id) {
                self.engine.waiting.remove(index);
                progress = true;
                self.maybe_finish(id);
            } else {
                index += 1;
            }
        }
        progress
    }

    fn try_start(&mut self, id: u64) -> bool {
        let Some(op) = self.engine.ops.get(&id) else {
            return true;
        };
        let (vdi, kind, offset, len) = (op.vdi, op.kind, op.offset, op.len);
        let started = match kind {
            VdiIoKind::Read => {
                self.start_read(id, vdi, offset, len);
                true
            }
            VdiIoKind::Write => self.start_write(id, vdi, offset, len),
            VdiIoKind::Discard => {
                self.start_discard(id, vdi, offset, len);
                true
            }
            VdiIoKind::Flush => self.start_flush(id),
        };
        if started {
            if let Some(op) = self.engine.ops.get_mut(&id) {
                op.started = true;
            }
        }
        started
    }

    fn fail(&mut self, id: u64, error: SrError) {
        if let Some(op) = self.engine.ops.get_mut(&id) {
            op.error.get_or_insert(error);
        }
    }

    /// Queues a device request for op `id`.
    fn issue(&mut self, id: u64, request: Request, extent: Option<u32>, role: Role) {
        if let Some(extent) = extent {
            self.extents.pin_io(extent);
        }
        if let Role::CowRead { cow, .. } | Role::CowWrite { cow } = role {
            if let Some(cow) = self.engine.cows.get_mut(&cow) {
                cow.outstanding += 1;
            }
        }
        if let Some(op) = self.engine.ops.get_mut(&id) {
            op.outstanding += 1;
        }
        self.engine.backlog.push_back((
            request,
            Piece {
                op: id,
                extent,
                role,
            },
        ));
    }

    fn lba(&self, byte: u64) -> u64 {
        byte / u64::from(self.geometry.sector_size.max(1))
    }

    fn submit_backlog(&mut self) {
        while let Some((request, piece)) = self.engine.backlog.pop_front() {
            match self.dev.submit(request) {
                Ok(id) => {
                    self.engine.requests.insert(id, piece);
                }
                Err(Rejected {
                    error: BlockError::Busy,
                    request,
                }) => {
                    self.engine.backlog.push_front((request, piece));
                    break;
                }
                Err(Rejected { error, request }) => {
                    self.piece_done(piece, Err(error.into()), request.into_buffer());
                }
            }
        }
    }

    fn start_read(&mut self, id: u64, vdi: Uuid, offset: u64, len: u64) {
        let extent_size = self.geometry.extent_size;
        let piece = transfer_len(&self.dev, MAX_DATA_IO_BYTES) as u64;
        // One mapped piece that fits one device request: the caller's buffer goes as it is.
        let first = offset / extent_size;
        let within = offset % extent_size;
        if len > 0 && within + len <= extent_size && len <= piece {
            if let Some(extent) = self.vdi(vdi).ok().and_then(|v| v.get(first)) {
                if let Some(buffer) = self.engine.ops.get_mut(&id).and_then(|o| o.buffer.take()) {
                    let lba = self.lba(self.geometry.extent_offset(extent) + within);
                    self.issue(id, Request::Read { lba, buffer }, Some(extent), Role::Whole);
                    return;
                }
            }
        }
        let mut done = 0u64;
        while done < len {
            let position = offset + done;
            let within = position % extent_size;
            let n = (extent_size - within).min(len - done);
            let mapped = self
                .vdi(vdi)
                .ok()
                .and_then(|v| v.get(position / extent_size));
            match mapped {
                None => {
                    if let Some(part) = self
                        .engine
                        .ops
                        .get_mut(&id)
                        .and_then(|o| o.buffer.as_mut())
                        .and_then(|b| b.get_mut(done as usize..(done + n) as usize))
                    {
                        part.fill(0);
                    }
                }
                Some(extent) => {
                    let base = self.geometry.extent_offset(extent) + within;
                    let mut part = 0u64;
                    while part < n {
                        let m = piece.min(n - part);
                        match alloc_zeroed(m as usize) {
                            Ok(buffer) => {
                                let lba = self.lba(base + part);
                                self.issue(
                                    id,
                                    Request::Read { lba, buffer },
                                    Some(extent),
                                    Role::ReadPart {
                                        at: (done + part) as usize,
                                    },
                                );
                            }
                            Err(error) => {
                                self.fail(id, error);
                                return;
                            }
                        }
                        part += m;
                    }
                }
            }
            done += n;
        }
    }

    /// Starts a write unless a virtual extent it touches is being copied-on-write.
    fn start_write(&mut self, id: u64, vdi: Uuid, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let extent_size = self.geometry.extent_size;
        let (first, last) = (offset / extent_size, (offset + len - 1) / extent_size);
        if (first..=last).any(|vext| self.engine.locked.contains(&(vdi, vext))) {
            return false;
        }
        let Ok(map) = self.vdi(vdi) else {
            self.fail(id, SrError::VdiNotFound(vdi));
            return true;
        };
        let targets: Vec<(u64, Target)> = (first..=last)
            .map(|vext| match map.get(vext) {
                Some(p) if self.extents.exclusive(p) => (vext, Target::InPlace(p)),
                old => (vext, Target::Cow { old }),
            })
            .collect();
        let cows = targets
            .iter()
            .filter(|(_, t)| matches!(t, Target::Cow { .. }))
            .count();
        // A write needing more than the bound at once still runs when nothing else copies.
        if cows > 0
            && (self.engine.cow_gate_closed
                || (!self.engine.cows.is_empty()
                    && self.engine.cows.len() + cows > MAX_COPY_ON_WRITES))
        {
            self.engine.cow_gate_closed = true;
            return false;
        }
        // Every fresh extent first, so a write the SR has no room for writes nothing.
        let mut fresh = Vec::new();
        for _ in targets
            .iter()
            .filter(|(_, t)| matches!(t, Target::Cow { .. }))
        {
            match self.extents.allocate() {
                Some(extent) => fresh.push(extent),
                None => {
                    for extent in fresh {
                        self.extents.release(extent);
                    }
                    self.fail(id, SrError::SrFull { space: Space::Data });
                    return true;
                }
            }
        }
        let piece = transfer_len(&self.dev, MAX_DATA_IO_BYTES) as u64;
        // One in-place piece that fits one device request: the caller's buffer goes as it is.
        if let [(vext, Target::InPlace(extent))] = targets.as_slice() {
            let within = offset - vext * extent_size;
            if len <= piece {
                if let Some(buffer) = self.engine.ops.get_mut(&id).and_then(|o| o.buffer.take()) {
                    let lba = self.lba(self.geometry.extent_offset(*extent) + within);
                    self.issue(
                        id,
                        Request::Write { lba, buffer },
                        Some(*extent),
                        Role::Whole,
                    );
                    return true;
                }
            }
        }
        let mut fresh = fresh.into_iter();
        for (vext, target) in targets {
            let start = (vext * extent_size).max(offset);
            let end = ((vext + 1) * extent_size).min(offset + len);
            let (within, within_end) = (start - vext * extent_size, end - vext * extent_size);
            let data_at = (start - offset) as usize;
            let result = match target {
                Target::InPlace(extent) => {
                    let base = self.geometry.extent_offset(extent);
                    self.issue_data(id, data_at, base, within, within_end, extent, None)
                }
                Target::Cow { old } => {
                    let Some(new) = fresh.next() else {
                        self.fail(id, SrError::SrFull { space: Space::Data });
                        continue;
                    };
                    let cow = self.engine.next_cow;
                    self.engine.next_cow += 1;
                    self.engine.cows.insert(
                        cow,
                        Cow {
                            vdi,
                            vext,
                            fresh: new,
                            outstanding: 0,
                            failed: false,
                        },
                    );
                    self.engine.locked.insert((vdi, vext));
                    let result = self
                        .issue_fill(id, cow, old, new, 0, within)
                        .and_then(|()| self.issue_fill(id, cow, old, new, within_end, extent_size))
                        .and_then(|()| {
                            let base = self.geometry.extent_offset(new);
                            self.issue_data(id, data_at, base, within, within_end, new, Some(cow))
                        });
                    if result.is_err() {
                        if let Some(cow) = self.engine.cows.get_mut(&cow) {
                            cow.failed = true;
                        }
                    }
                    // A copy-on-write with nothing in flight (allocation failed at once)
                    // ends here.
                    self.maybe_finish_cow(cow);
                    result
                }
            };
            if let Err(error) = result {
                self.fail(id, error);
            }
        }
        true
    }

    /// Queues writes of the op's data bytes `data_at..` to `[from, to)` of the extent at
    /// device byte `base`.
    #[allow(clippy::too_many_arguments)]
    fn issue_data(
        &mut self,
        id: u64,
        data_at: usize,
        base: u64,
        from: u64,
        to: u64,
        extent: u32,
        cow: Option<u64>,
    ) -> Result<(), SrError> {
        let piece = transfer_len(&self.dev, MAX_DATA_IO_BYTES) as u64;
        let mut at = from;
        while at < to {
            let n = piece.min(to - at);
            let source = data_at + (at - from) as usize;
            let buffer = {
                let data = self
                    .engine
                    .ops
                    .get(&id)
                    .and_then(|o| o.buffer.as_deref())
                    .and_then(|b| b.get(source..source + n as usize))
                    .ok_or(SrError::OutOfMemory)?;
                alloc_copy(data)?
            };
            let lba = self.lba(base + at);
            let role = match cow {
                Some(cow) => Role::CowWrite { cow },
                None => Role::WritePart,
            };
            self.issue(id, Request::Write { lba, buffer }, Some(extent), role);
            at += n;
        }
        Ok(())
    }

    /// Queues what fills `[from, to)` of a fresh extent: the old extent's bytes there, or
    /// zeros.
    fn issue_fill(
        &mut self,
        id: u64,
        cow: u64,
        old: Option<u32>,
        new: u32,
        from: u64,
        to: u64,
    ) -> Result<(), SrError> {
        let piece = transfer_len(&self.dev, MAX_DATA_IO_BYTES) as u64;
        let mut at = from;
        while at < to {
            let n = piece.min(to - at);
            let buffer = alloc_zeroed(n as usize)?;
            let dest = self.geometry.extent_offset(new) + at;
            match old {
                Some(old) => {
                    let lba = self.lba(self.geometry.extent_offset(old) + at);
                    self.issue(
                        id,
                        Request::Read { lba, buffer },
                        Some(old),
                        Role::CowRead { cow, to: dest },
                    );
                }
                None => {
                    let lba = self.lba(dest);
                    self.issue(
                        id,
                        Request::Write { lba, buffer },
                        Some(new),
                        Role::CowWrite { cow },
                    );
                }
            }
            at += n;
        }
        Ok(())
    }

    fn start_discard(&mut self, id: u64, vdi: Uuid, offset: u64, len: u64) {
        let extent_size = self.geometry.extent_size;
        let first = offset.div_ceil(extent_size);
        let end = (offset + len) / extent_size;
        let mut released = Vec::new();
        if let Some(map) = self.vdis.get_mut(&vdi) {
            for vext in first..end {
                if let Some(extent) = map.get(vext) {
                    map.set(vext, None);
                    released.push(extent);
                }
            }
        } else {
            self.fail(id, SrError::VdiNotFound(vdi));
        }
        if !released.is_empty() {
            for extent in released {
                self.extents.release(extent);
            }
            self.maps_changed();
        }
    }

    /// Starts a flush once every write and discard submitted before it has completed and no
    /// other commit is under way.
    fn start_flush(&mut self, id: u64) -> bool {
        if self.engine.committing.is_some() {
            return false;
        }
        let earlier_pending = self
            .engine
            .ops
            .range(..id)
            .any(|(_, op)| matches!(op.kind, VdiIoKind::Write | VdiIoKind::Discard));
        if earlier_pending {
            return false;
        }
        if let Err(error) = self.ensure_usable() {
            self.fail(id, error);
            return true;
        }
        self.engine.committing = Some(id);
        if !self.dirty {
            self.issue(id, Request::Flush, None, Role::Flush);
            self.set_stage(id, FlushStage::Device);
            return true;
        }
        match self.plan_commit() {
            Ok(mut plan) => {
                for (offset, block) in core::mem::take(&mut plan.blocks) {
                    let lba = self.lba(offset);
                    self.issue(id, Request::Write { lba, buffer: block }, None, Role::Flush);
                }
                self.set_stage(id, FlushStage::Blocks(plan));
            }
            Err(error) => self.fail(id, error),
        }
        true
    }

    fn set_stage(&mut self, id: u64, stage: FlushStage) {
        if let Some(op) = self.engine.ops.get_mut(&id) {
            op.flush = Some(stage);
        }
    }

    /// One device request finished.
    fn piece_done(&mut self, piece: Piece, result: Result<(), SrError>, buffer: Option<Vec<u8>>) {
        if let Some(extent) = piece.extent {
            self.extents.unpin_io(extent);
        }
        let id = piece.op;
        match piece.role {
            Role::Whole => {
                if let Some(op) = self.engine.ops.get_mut(&id) {
                    op.buffer = buffer;
                }
            }
            Role::ReadPart { at } => {
                if let (Ok(()), Some(data)) = (&result, &buffer) {
                    if let Some(part) = self
                        .engine
                        .ops
                        .get_mut(&id)
                        .and_then(|o| o.buffer.as_mut())
                        .and_then(|b| b.get_mut(at..at + data.len()))
                    {
                        part.copy_from_slice(data);
                    }
                }
            }
            Role::WritePart | Role::Flush => {}
            Role::CowRead { cow, to } => {
                match (&result, buffer) {
                    (Ok(()), Some(buffer)) => {
                        let fresh = self.engine.cows.get(&cow).map(|c| c.fresh);
                        let lba = self.lba(to);
                        self.issue(
                            id,
                            Request::Write { lba, buffer },
                            fresh,
                            Role::CowWrite { cow },
                        );
                    }
                    _ => {
                        if let Some(cow) = self.engine.cows.get_mut(&cow) {
                            cow.failed = true;
                        }
                    }
                }
                self.cow_piece_done(cow, &result);
            }
            Role::CowWrite { cow } => self.cow_piece_done(cow, &result),
        }
        if let Err(error) = result {
            self.fail(id, error);
        }
        if let Some(op) = self.engine.ops.get_mut(&id) {
            op.outstanding = op.outstanding.saturating_sub(1);
        }
        self.maybe_finish(id);
    }

    fn cow_piece_done(&mut self, cow: u64, result: &Result<(), SrError>) {
        if let Some(c) = self.engine.cows.get_mut(&cow) {
            c.outstanding = c.outstanding.saturating_sub(1);
            c.failed |= result.is_err();
        }
        self.maybe_finish_cow(cow);
    }

    /// Maps a filled fresh extent (or gives it back if filling it failed).
    fn maybe_finish_cow(&mut self, cow: u64) {
        if self.engine.cows.get(&cow).is_none_or(|c| c.outstanding > 0) {
            return;
        }
        let Some(cow) = self.engine.cows.remove(&cow) else {
            return;
        };
        self.engine.locked.remove(&(cow.vdi, cow.vext));
        let map = self.vdis.get_mut(&cow.vdi);
        match map {
            Some(map) if !cow.failed => {
                // Whatever is mapped now (the extent the copy was made from, or nothing if a
                // discard dropped it meanwhile) gives way to the fresh one.
                let replaced = map.get(cow.vext);
                map.set(cow.vext, Some(cow.fresh));
                if let Some(old) = replaced {
                    self.extents.release(old);
                }
                self.maps_changed();
            }
            _ => self.extents.release(cow.fresh),
        }
    }

    pub(crate) fn maps_changed(&mut self) {
        self.dirty = true;
        self.map_changes = self.map_changes.wrapping_add(1);
    }

    /// Completes op `id` if it started and nothing of it is in flight; a flush moves to its
    /// next stage instead while it has one.
    fn maybe_finish(&mut self, id: u64) {
        let Some(op) = self.engine.ops.get_mut(&id) else {
            return;
        };
        if !op.started || op.outstanding > 0 {
            return;
        }
        if let Some(stage) = op.flush.take() {
            let failed = op.error.is_some();
            if let Some(next) = self.next_stage(id, stage, failed) {
                self.set_stage(id, next);
                return;
            }
        }
        if self.engine.committing == Some(id) {
            self.engine.committing = None;
        }
        let Some(op) = self.engine.ops.remove(&id) else {
            return;
        };
        let completion = VdiCompletion {
            vdi: op.vdi,
            tag: op.tag,
            kind: op.kind,
            result: op.error.map_or(Ok(()), Err),
            buffer: op.buffer,
        };
        if op.sync {
            self.engine.sync_done.insert(id, completion);
        } else {
            self.engine.done.push_back(completion);
        }
    }

    /// The stage after `stage` completed (queuing its requests), or `None` when the flush is
    /// over.
    fn next_stage(&mut self, id: u64, stage: FlushStage, failed: bool) -> Option<FlushStage> {
        match stage {
            FlushStage::Device => None,
            // Before the root write a failure changes nothing: the plan is dropped and the
            // maps stay dirty.
            FlushStage::Blocks(_) | FlushStage::Durable(_) if failed => None,
            FlushStage::Blocks(plan) => {
                self.issue(id, Request::Flush, None, Role::Flush);
                Some(FlushStage::Durable(plan))
            }
            FlushStage::Durable(mut plan) => {
                let (offset, block) = core::mem::take(&mut plan.root);
                let lba = self.lba(offset);
                self.issue(id, Request::Write { lba, buffer: block }, None, Role::Flush);
                Some(FlushStage::Root(plan))
            }
            // From the root write on, the device may hold either root: only re-attaching
            // can tell.
            FlushStage::Root(_) | FlushStage::RootDurable(_) if failed => {
                self.poisoned = true;
                None
            }
            FlushStage::Root(plan) => {
                self.issue(id, Request::Flush, None, Role::Flush);
                Some(FlushStage::RootDurable(plan))
            }
            FlushStage::RootDurable(plan) => {
                self.finish_commit(plan);
                None
            }
        }
    }
}
