//! A VDI as blkback's asynchronous [`BlockTarget`]: the guest's requests go to the SR's
//! queue (`Sr::submit_io`) and come back as the SR completes them, many in flight at once.
//!
//! - Sectors are blkback's 512 bytes; offsets and lengths are checked again by the SR.
//! - A FUA write completes only once it is durable: when the write completes, a flush (which
//!   waits for every earlier write) follows it, and the write is answered when the flush is.
//! - Discard unmaps the whole extents inside the range (thin space returns to the SR); the
//!   granularity advertised is the SR's extent size. Secure discard is not supported.
//! - Several targets may serve one VDI (or SR): each tags its requests with its own `user`
//!   number in the top 32 bits and takes only its own completions.
//! - [`BlockTarget::poll`] moves the SR's queue on, so the task serving the guest's rings
//!   also drives the disk. Keel's disk drivers are polled (no completion interrupts): while
//!   [`VdiTarget::in_flight`] is non-zero, poll again soon.
//! - The SR checks offsets against its own sector size: on an SR of 4096-byte sectors,
//!   512-byte-aligned requests that are not 4096-aligned are answered with an error.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use keel_blkback::target::{
    BlockRequest, BlockTarget, Busy, Completion, DiscardInfo, Geometry, IoError, Tag,
};
use keel_block::BlockDevice;
use keel_storage::{SrError, Uuid, VdiCompletion, VdiIo, VdiIoKind};

use crate::Repositories;

/// Bytes per blkback sector.
const SECTOR: u64 = 512;

/// What one of this target's SR requests is for.
enum Purpose {
    /// Answers blkback's request `tag` directly.
    Answer { tag: Tag },
    /// The write half of a FUA write: a flush follows it.
    FuaWrite { tag: Tag },
    /// The flush half of a FUA write, holding the written buffer until it completes.
    FuaFlush { tag: Tag, buf: Vec<u8> },
}

/// One VDI of one SR, served to one blkback device.
pub struct VdiTarget<D: BlockDevice> {
    repositories: Rc<RefCell<Repositories<D>>>,
    sr: Uuid,
    vdi: Uuid,
    /// This target's tag prefix (the top 32 bits of its SR tags).
    user: u32,
    next: u32,
    /// This target's SR requests in flight, by SR tag.
    in_flight: BTreeMap<u64, Purpose>,
    /// Flushes of FUA writes the SR's queue had no room for yet.
    follow_ups: VecDeque<(Tag, Vec<u8>)>,
    /// Answers ready without the SR (refused requests).
    ready: VecDeque<Completion>,
}

impl<D: BlockDevice> VdiTarget<D> {
    /// Serves VDI `vdi` of SR `sr`. `user` must be unique among the users of the SR's queue
    /// that tell their requests apart by tag (blkback: `(domid << 16) | devid`).
    pub fn new(repositories: Rc<RefCell<Repositories<D>>>, sr: Uuid, vdi: Uuid, user: u32) -> Self {
        VdiTarget {
            repositories,
            sr,
            vdi,
            user,
            next: 0,
            in_flight: BTreeMap::new(),
            follow_ups: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// Requests of this target the SR has not completed yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.follow_ups.len()
    }

    fn sr_tag(&mut self) -> u64 {
        // 2^32 requests wrap around long after the first of them completed: the ring holds at
        // most a few thousand in flight.
        let tag = (u64::from(self.user) << 32) | u64::from(self.next);
        self.next = self.next.wrapping_add(1);
        tag
    }

    /// Submits `io`; `Err` hands it back if the SR's queue is full, a refusal for any other
    /// reason is answered as a failed request.
    fn submit_io(&mut self, io: VdiIo, purpose: Purpose) -> Result<(), (VdiIo, Purpose)> {
        let tag = self.sr_tag();
        let submitted = {
            let mut repositories = self.repositories.borrow_mut();
            match repositories.sr_mut(self.sr) {
                Some(sr) => sr.submit_io(self.vdi, tag, io),
                None => Err(keel_storage::IoRejected {
                    error: SrError::VdiNotFound(self.vdi),
                    io,
                }),
            }
        };
        match submitted {
            Ok(()) => {
                self.in_flight.insert(tag, purpose);
                Ok(())
            }
            Err(rejected) if rejected.error == SrError::QueueFull => Err((rejected.io, purpose)),
            Err(rejected) => {
                let result = Err(io_error(&rejected.error));
                let buf = rejected.io.into_buffer().unwrap_or_default();
                self.answer(purpose, buf, result);
                Ok(())
            }
        }
    }

    /// Turns the end of an SR request into blkback's answer (or the FUA flush that must come
    /// first).
    fn answer(&mut self, purpose: Purpose, buf: Vec<u8>, result: Result<(), IoError>) {
        match purpose {
            Purpose::Answer { tag } => self.ready.push_back(Completion { tag, buf, result }),
            // The flush carries no data: the answer gives back the FUA write's buffer.
            Purpose::FuaFlush { tag, buf: written } => self.ready.push_back(Completion {
                tag,
                buf: written,
                result,
            }),
            Purpose::FuaWrite { tag } if result.is_err() => {
                self.ready.push_back(Completion { tag, buf, result })
            }
            Purpose::FuaWrite { tag } => {
                self.follow_ups.push_back((tag, buf));
                self.submit_follow_ups();
            }
        }
    }

    fn submit_follow_ups(&mut self) {
        while let Some((tag, buf)) = self.follow_ups.pop_front() {
            if let Err((_, Purpose::FuaFlush { tag, buf })) =
                self.submit_io(VdiIo::Flush, Purpose::FuaFlush { tag, buf })
            {
                // The SR's queue is full: again at the next poll.
                self.follow_ups.push_front((tag, buf));
                return;
            }
        }
    }
}

/// blkif has one error for everything the storage can say (`BLKIF_RSP_ERROR`): a request
/// outside the VDI (blkback checks ranges first, so that means a confused guest), a disk
/// failure, an SR that needs re-attaching. Only secure discard is `NotSupported`.
fn io_error(_: &SrError) -> IoError {
    IoError::Failed
}

fn into_request(io: VdiIo, purpose: &Purpose) -> BlockRequest {
    match io {
        VdiIo::Read { offset, buffer } => BlockRequest::Read {
            sector: offset / SECTOR,
            buf: buffer,
        },
        VdiIo::Write { offset, buffer } => BlockRequest::Write {
            sector: offset / SECTOR,
            buf: buffer,
            fua: matches!(purpose, Purpose::FuaWrite { .. }),
        },
        VdiIo::Flush => BlockRequest::Flush,
        VdiIo::Discard { offset, len } => BlockRequest::Discard {
            sector: offset / SECTOR,
            sectors: len / SECTOR,
            secure: false,
        },
    }
}

impl<D: BlockDevice> BlockTarget for VdiTarget<D> {
    fn geometry(&self) -> Geometry {
        let repositories = self.repositories.borrow();
        let sr = repositories.sr(self.sr);
        let info = sr.and_then(|sr| sr.vdi_info(self.vdi).ok());
        let geometry = sr.map(|sr| sr.geometry());
        Geometry {
            sectors: info.as_ref().map_or(0, |i| i.virtual_size / SECTOR),
            physical_sector_size: geometry.map_or(512, |g| g.sector_size),
            read_only: info.as_ref().is_none_or(|i| i.read_only),
            cdrom: false,
            flush: true,
            discard: geometry.map(|g| DiscardInfo {
                granularity: u32::try_from(g.extent_size).unwrap_or(u32::MAX),
                alignment: 0,
                secure: false,
            }),
        }
    }

    fn submit(&mut self, tag: Tag, request: BlockRequest) -> Result<(), Busy> {
        let byte = |sector: u64| sector.checked_mul(SECTOR);
        let (io, purpose) = match request {
            BlockRequest::Read { sector, buf } => match byte(sector) {
                Some(offset) => (
                    VdiIo::Read {
                        offset,
                        buffer: buf,
                    },
                    Purpose::Answer { tag },
                ),
                None => {
                    self.ready.push_back(Completion {
                        tag,
                        buf,
                        result: Err(IoError::Failed),
                    });
                    return Ok(());
                }
            },
            BlockRequest::Write { sector, buf, fua } => match byte(sector) {
                Some(offset) => (
                    VdiIo::Write {
                        offset,
                        buffer: buf,
                    },
                    if fua {
                        Purpose::FuaWrite { tag }
                    } else {
                        Purpose::Answer { tag }
                    },
                ),
                None => {
                    self.ready.push_back(Completion {
                        tag,
                        buf,
                        result: Err(IoError::Failed),
                    });
                    return Ok(());
                }
            },
            BlockRequest::Flush => (VdiIo::Flush, Purpose::Answer { tag }),
            BlockRequest::Discard { secure: true, .. } => {
                self.ready.push_back(Completion {
                    tag,
                    buf: Vec::new(),
                    result: Err(IoError::NotSupported),
                });
                return Ok(());
            }
            BlockRequest::Discard {
                sector, sectors, ..
            } => match (byte(sector), byte(sectors)) {
                (Some(offset), Some(len)) => {
                    (VdiIo::Discard { offset, len }, Purpose::Answer { tag })
                }
                _ => {
                    self.ready.push_back(Completion {
                        tag,
                        buf: Vec::new(),
                        result: Err(IoError::Failed),
                    });
                    return Ok(());
                }
            },
        };
        self.submit_io(io, purpose)
            .map_err(|(io, purpose)| Busy(into_request(io, &purpose)))
    }

    fn poll(&mut self) -> Option<Completion> {
        if let Some(ready) = self.ready.pop_front() {
            return Some(ready);
        }
        self.submit_follow_ups();
        loop {
            let completion = {
                let mut repositories = self.repositories.borrow_mut();
                let sr = repositories.sr_mut(self.sr)?;
                let vdi = self.vdi;
                let user = u64::from(self.user);
                let mine = |c: &VdiCompletion| c.vdi == vdi && c.tag >> 32 == user;
                match sr.take_io_completion_where(mine) {
                    Some(completion) => Some(completion),
                    None => {
                        sr.poll_io();
                        sr.take_io_completion_where(mine)
                    }
                }
            }?;
            let Some(purpose) = self.in_flight.remove(&completion.tag) else {
                continue;
            };
            let result = completion.result.as_ref().map_err(io_error).copied();
            let buf = match completion.kind {
                VdiIoKind::Read | VdiIoKind::Write => completion.buffer.unwrap_or_default(),
                VdiIoKind::Flush | VdiIoKind::Discard => Vec::new(),
            };
            self.answer(purpose, buf, result);
            if let Some(ready) = self.ready.pop_front() {
                return Some(ready);
            }
        }
    }
}
