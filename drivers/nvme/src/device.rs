//! One namespace as a [`BlockDevice`]: an I/O queue pair, one command slot per outstanding
//! request, PRP lists, completions reaped by polling, and recovery from a fatal controller
//! status by resetting the controller and resubmitting what was in flight.
//!
//! Buffers travel with their requests: a `Read`'s or `Write`'s `Vec<u8>` is handed to the
//! controller in place (its bus address from [`Hal::bus_address`]) and stays in the command's
//! slot until the completion gives it back. Buffers the controller cannot reach directly (not
//! dword aligned, say) go through a bounce buffer.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;

use keel_block::{
    validate, BlockDevice, BlockError, Completion, DeviceInfo, Rejected, Request, RequestId,
    RequestKind,
};

use crate::command::{io, read_write, Command};
use crate::controller::Controller;
use crate::error::NvmeError;
use crate::hal::{Hal, Registers, PAGE_SIZE};
use crate::mem::Shared;
use crate::prp::{self, Second};
use crate::queue::QueuePair;
use crate::status::Status;

/// Default I/O queue size (the device's queue depth is one less).
pub const DEFAULT_QUEUE_ENTRIES: u16 = 64;
/// Empty polls between checks of the controller's fatal-status bit while commands are
/// outstanding (each check is a register read, which is slow under virtualisation).
const FATAL_CHECK_INTERVAL: u32 = 1024;
/// Failed commands remembered for [`NvmeDisk::take_errors`].
const ERROR_LOG_LEN: usize = 32;
/// Ranges one Dataset Management command carries (one page of 16-byte ranges).
const MAX_DSM_RANGES: u64 = 256;
/// The I/O queue's id.
const IO_QID: u16 = 1;

/// How to open a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    /// Namespace to use; `None` = the first usable one.
    pub nsid: Option<u32>,
    /// I/O queue entries (clamped to what the controller supports).
    pub queue_entries: u16,
    /// The device identity; `None` = [`Controller::default_identity`] (or `nvme-n<nsid>`).
    pub identity: Option<String>,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            nsid: None,
            queue_entries: DEFAULT_QUEUE_ENTRIES,
            identity: None,
        }
    }
}

/// Counters since the disk was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    /// Commands resubmitted after a transient status or a controller reset.
    pub retried: u64,
    pub resets: u64,
    /// Transfers that went through a bounce buffer.
    pub bounced: u64,
    /// Completions naming no outstanding command (ignored).
    pub spurious: u64,
}

/// A failed command, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRecord {
    pub kind: RequestKind,
    pub lba: u64,
    /// The controller's status, or `None` when the command was lost to a controller reset.
    pub status: Option<Status>,
}

enum Mapping {
    None,
    Direct { bus: u64, len: usize },
    Bounce(Shared),
}

struct InFlight {
    id: RequestId,
    request: Request,
    command: Command,
    mapping: Mapping,
    /// Already resubmitted once; a second failure is final.
    retried: bool,
}

/// An NVMe namespace with its own I/O queue pair.
pub struct NvmeDisk<R: Registers, H: Hal> {
    controller: Controller<R, H>,
    queue: QueuePair,
    nsid: u32,
    info: DeviceInfo,
    /// Indexed by command id.
    slots: Vec<Option<InFlight>>,
    free_cids: Vec<u16>,
    /// One page per slot: its PRP list, or its Dataset Management ranges.
    lists: Shared,
    ready: VecDeque<Completion>,
    next_id: u64,
    in_flight: usize,
    empty_polls: u32,
    /// Submissions written to the queue but not yet announced by the tail doorbell.
    unrung: u16,
    failed: bool,
    stats: DiskStats,
    errors: VecDeque<ErrorRecord>,
}

impl<R: Registers, H: Hal> NvmeDisk<R, H> {
    /// Creates the I/O queue pair and opens a namespace. On failure the controller is
    /// stopped and its memory returned.
    pub fn open(mut controller: Controller<R, H>, options: DiskOptions) -> Result<Self, NvmeError> {
        match Self::prepare_queue(&mut controller, &options) {
            Ok((queue, lists, nsid)) => Ok(Self::assemble(controller, queue, lists, nsid, options)),
            Err(e) => {
                controller.stop();
                Err(e)
            }
        }
    }

    fn prepare_queue(
        controller: &mut Controller<R, H>,
        options: &DiskOptions,
    ) -> Result<(QueuePair, Shared, u32), NvmeError> {
        let nsid = match options.nsid {
            Some(nsid) => controller
                .namespaces()
                .iter()
                .find(|ns| ns.nsid == nsid)
                .map(|ns| ns.nsid)
                .ok_or(NvmeError::NamespaceNotFound(nsid))?,
            None => controller
                .namespaces()
                .first()
                .map(|ns| ns.nsid)
                .ok_or(NvmeError::NoNamespace)?,
        };
        let mut entries = u32::from(options.queue_entries)
            .min(controller.capabilities().max_queue_entries)
            .min(4096);
        let max_commands = u32::from(controller.identity().max_commands);
        if max_commands > 0 {
            entries = entries.min(max_commands + 1);
        }
        let entries = entries.max(2) as u16;
        controller.request_io_queues()?;
        let queue = QueuePair::new(&mut controller.hal, IO_QID, entries)?;
        if let Err(e) = controller.create_io_queue(&queue) {
            queue.free(&mut controller.hal);
            return Err(e);
        }
        let lists = match controller.hal.allocate(usize::from(entries - 1)) {
            Some(region) => Shared::new(region),
            None => {
                queue.free(&mut controller.hal);
                return Err(NvmeError::NoMemory);
            }
        };
        Ok((queue, lists, nsid))
    }

    fn assemble(
        controller: Controller<R, H>,
        queue: QueuePair,
        lists: Shared,
        nsid: u32,
        options: DiskOptions,
    ) -> Self {
        let ns = controller
            .namespaces()
            .iter()
            .find(|ns| ns.nsid == nsid)
            .copied();
        let (block_size, blocks) = ns.map_or((512, 0), |ns| (ns.block_size, ns.size_blocks));
        let page = controller.capabilities().min_page_size;
        let mut max_bytes = prp::MAX_TRANSFER_BYTES as u64;
        if let Some(limit) = controller.identity().max_transfer_bytes(page) {
            max_bytes = max_bytes.min(limit);
        }
        // Reads and writes count blocks in 16 bits.
        let max_sectors = (max_bytes / u64::from(block_size)).clamp(1, 1 << 16) as u32;
        let slots = usize::from(queue.entries() - 1);
        let identity = options
            .identity
            .or_else(|| controller.default_identity(nsid))
            .unwrap_or_else(|| alloc::format!("nvme-n{nsid}"));
        let info = DeviceInfo {
            sector_size: block_size,
            capacity_sectors: blocks,
            queue_depth: slots as u16,
            max_transfer_sectors: max_sectors,
            read_only: false,
            supports_discard: controller.identity().supports_deallocate(),
            volatile_write_cache: controller.identity().volatile_write_cache,
            identity,
        };
        NvmeDisk {
            controller,
            queue,
            nsid,
            info,
            slots: (0..slots).map(|_| None).collect(),
            // Popped from the end: command ids are used from 0 upwards.
            free_cids: (0..slots as u16).rev().collect(),
            lists,
            ready: VecDeque::new(),
            next_id: 0,
            in_flight: 0,
            empty_polls: 0,
            unrung: 0,
            failed: false,
            stats: DiskStats::default(),
            errors: VecDeque::new(),
        }
    }

    pub fn controller(&self) -> &Controller<R, H> {
        &self.controller
    }

    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// The driver gave up on the controller (a reset failed); every request now fails with
    /// `DeviceGone`.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Failed commands since the last call, oldest first (at most the last 32).
    pub fn take_errors(&mut self) -> Vec<ErrorRecord> {
        self.errors.drain(..).collect()
    }

    /// Resets the controller now, resubmitting what is in flight (as after a fatal status).
    pub fn reset(&mut self) -> Result<(), NvmeError> {
        self.recover()
    }

    /// Stops the controller and returns its memory. Requests still in flight are dropped
    /// (their buffers are freed after the controller has stopped using them).
    pub fn close(mut self) -> (R, H) {
        let (regs, mut hal) = self.controller.stop();
        for slot in self.slots.iter_mut() {
            if let Some(in_flight) = slot.take() {
                unmap(&mut hal, in_flight.mapping);
            }
        }
        self.queue.free(&mut hal);
        hal.free(self.lists.into_region());
        (regs, hal)
    }

    /// Builds the command for `request` in slot `cid` and maps its buffer.
    fn prepare(
        &mut self,
        cid: u16,
        request: &mut Request,
    ) -> Result<(Command, Mapping), BlockError> {
        let list_offset = usize::from(cid) * PAGE_SIZE;
        let list_bus = self.lists.bus() + list_offset as u64;
        let nsid = self.nsid;
        let kind = request.kind();
        match request {
            Request::Flush => {
                let mut command = Command::new(io::FLUSH);
                command.nsid = nsid;
                Ok((command, Mapping::None))
            }
            Request::Discard { lba, sectors } => {
                let (lba, sectors) = (*lba, *sectors);
                let per_range = u64::from(u32::MAX);
                let ranges = sectors.div_ceil(per_range);
                if ranges > MAX_DSM_RANGES {
                    return Err(BlockError::TooLarge {
                        sectors,
                        max_sectors: u32::MAX,
                    });
                }
                for i in 0..ranges {
                    let start = lba + i * per_range;
                    let count = (sectors - i * per_range).min(per_range) as u32;
                    let mut range = [0u8; 16];
                    range[4..8].copy_from_slice(&count.to_le_bytes());
                    range[8..16].copy_from_slice(&start.to_le_bytes());
                    self.lists.write(list_offset + 16 * i as usize, &range);
                }
                let mut command = Command::new(io::DATASET_MANAGEMENT);
                command.nsid = nsid;
                command.prp1 = list_bus;
                command.cdw[0] = (ranges as u32).saturating_sub(1);
                command.cdw[1] = 1 << 2; // deallocate
                Ok((command, Mapping::None))
            }
            Request::Read { lba, buffer } | Request::Write { lba, buffer } => {
                let lba = *lba;
                let len = buffer.len();
                let is_write = kind == RequestKind::Write;
                let blocks = (len / self.info.sector_size.max(1) as usize) as u32;
                let (bus, mapping) = self.map_buffer(buffer, is_write, lba)?;
                let plan = match prp::plan(bus, len) {
                    Ok(plan) => plan,
                    Err(_) => {
                        unmap(&mut self.controller.hal, mapping);
                        return Err(BlockError::Io {
                            first_failed_lba: lba,
                        });
                    }
                };
                let opcode = if is_write { io::WRITE } else { io::READ };
                let mut command = read_write(opcode, nsid, lba, blocks);
                command.prp1 = plan.prp1;
                command.prp2 = match plan.second {
                    Second::None => 0,
                    Second::Page(page) => page,
                    Second::List { first_page, count } => {
                        for k in 0..count {
                            let entry = first_page + (k * PAGE_SIZE) as u64;
                            self.lists.write_u64(list_offset + 8 * k, entry);
                        }
                        list_bus
                    }
                };
                Ok((command, mapping))
            }
        }
    }

    /// The bus address of a data buffer: the buffer itself if the controller can reach it,
    /// otherwise a bounce buffer (filled now for a write, copied back on completion for a
    /// read).
    fn map_buffer(
        &mut self,
        buffer: &mut [u8],
        is_write: bool,
        lba: u64,
    ) -> Result<(u64, Mapping), BlockError> {
        let len = buffer.len();
        let hal = &mut self.controller.hal;
        if let Some(ptr) = NonNull::new(buffer.as_mut_ptr()) {
            match hal.bus_address(ptr, len) {
                Some(bus) if bus.is_multiple_of(4) => {
                    return Ok((bus, Mapping::Direct { bus, len }))
                }
                Some(bus) => hal.release(bus, len),
                None => {}
            }
        }
        let region = hal
            .allocate(len.div_ceil(PAGE_SIZE))
            .ok_or(BlockError::Io {
                first_failed_lba: lba,
            })?;
        let mut shared = Shared::new(region);
        if is_write {
            shared.write(0, buffer);
        }
        self.stats.bounced += 1;
        Ok((shared.bus(), Mapping::Bounce(shared)))
    }

    /// Puts `command` (with its command id) on the submission queue. The doorbell is rung
    /// by the next [`NvmeDisk::ring`]: one register write (a VM exit when virtualised) per
    /// batch of submissions instead of one per command.
    fn issue(&mut self, command: &Command) -> bool {
        if self.queue.push(command).is_none() {
            return false;
        }
        self.unrung += 1;
        true
    }

    /// Announces every queued submission to the controller.
    fn ring(&mut self) {
        if self.unrung > 0 {
            self.unrung = 0;
            let doorbell = self.controller.sq_doorbell(IO_QID);
            let tail = u32::from(self.queue.sq_tail());
            self.controller.regs.write32(doorbell, tail);
        }
    }

    /// Takes every posted completion; checks for a fatal controller status now and then while
    /// commands are outstanding and nothing completes.
    fn reap(&mut self) {
        self.ring();
        let mut reaped = false;
        while let Some(entry) = self.queue.pop() {
            reaped = true;
            self.on_completion(entry.cid, entry.status);
        }
        if reaped {
            self.empty_polls = 0;
            let doorbell = self.controller.cq_doorbell(IO_QID);
            let head = u32::from(self.queue.cq_head());
            self.controller.regs.write32(doorbell, head);
            // Retries issued while reaping.
            self.ring();
            return;
        }
        if self.in_flight == 0 {
            return;
        }
        self.empty_polls += 1;
        if self.empty_polls >= FATAL_CHECK_INTERVAL {
            self.empty_polls = 0;
            if self.controller.fatal_status() {
                // Failure is recorded in `self.failed` and in the completions.
                let _ = self.recover();
            }
        }
    }

    fn on_completion(&mut self, cid: u16, status: Status) {
        let Some(mut in_flight) = self.slots.get_mut(usize::from(cid)).and_then(Option::take)
        else {
            self.stats.spurious += 1;
            return;
        };
        if status.is_success() {
            self.finish(cid, in_flight, Ok(()));
            return;
        }
        if status.is_transient() && !in_flight.retried {
            in_flight.retried = true;
            self.stats.retried += 1;
            let command = in_flight.command;
            if let Some(slot) = self.slots.get_mut(usize::from(cid)) {
                *slot = Some(in_flight);
            }
            if !self.issue(&command) {
                self.fail_slot(cid, BlockError::Busy, None);
            }
            return;
        }
        let (lba, sectors) = self.extent_of(&in_flight.request);
        let kind = in_flight.request.kind();
        let error = status
            .code
            .block_error(kind, lba, sectors, self.info.capacity_sectors);
        self.log_error(kind, lba, Some(status));
        self.finish(cid, in_flight, Err(error));
    }

    fn extent_of(&self, request: &Request) -> (u64, u64) {
        let sector = u64::from(self.info.sector_size.max(1));
        match request {
            Request::Read { lba, buffer } | Request::Write { lba, buffer } => {
                (*lba, buffer.len() as u64 / sector)
            }
            Request::Discard { lba, sectors } => (*lba, *sectors),
            Request::Flush => (0, 0),
        }
    }

    fn log_error(&mut self, kind: RequestKind, lba: u64, status: Option<Status>) {
        if self.errors.len() == ERROR_LOG_LEN {
            self.errors.pop_front();
        }
        self.errors.push_back(ErrorRecord { kind, lba, status });
    }

    /// Completes the request in slot `cid` with `error` (used when it cannot be resubmitted).
    fn fail_slot(&mut self, cid: u16, error: BlockError, status: Option<Status>) {
        if let Some(in_flight) = self.slots.get_mut(usize::from(cid)).and_then(Option::take) {
            let (lba, _) = self.extent_of(&in_flight.request);
            self.log_error(in_flight.request.kind(), lba, status);
            self.finish(cid, in_flight, Err(error));
        }
    }

    /// Returns the slot, unmaps the buffer (copying a bounced read back) and queues the
    /// completion.
    fn finish(&mut self, cid: u16, in_flight: InFlight, result: Result<(), BlockError>) {
        self.free_cids.push(cid);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.stats.completed += 1;
        if result.is_err() {
            self.stats.failed += 1;
        }
        let InFlight {
            id,
            mut request,
            mapping,
            ..
        } = in_flight;
        if let (Mapping::Bounce(shared), Ok(()), Request::Read { buffer, .. }) =
            (&mapping, &result, &mut request)
        {
            shared.read(0, buffer);
        }
        unmap(&mut self.controller.hal, mapping);
        self.ready.push_back(Completion {
            id,
            kind: request.kind(),
            result,
            buffer: request.into_buffer(),
        });
    }

    /// Resets the controller and re-creates the I/O queue. Commands that were in flight are
    /// resubmitted once; if the reset fails, the disk is marked failed and every outstanding
    /// request completes with `DeviceGone`.
    fn recover(&mut self) -> Result<(), NvmeError> {
        self.stats.resets += 1;
        let outcome = self
            .controller
            .enable()
            .and_then(|()| self.controller.request_io_queues())
            .and_then(|()| {
                self.queue.reset();
                self.unrung = 0;
                self.controller.create_io_queue(&self.queue)
            });
        let cids: Vec<u16> = (0..self.slots.len() as u16)
            .filter(|&cid| matches!(self.slots.get(usize::from(cid)), Some(Some(_))))
            .collect();
        match outcome {
            Ok(()) => {
                for cid in cids {
                    let retried = matches!(
                        self.slots.get(usize::from(cid)),
                        Some(Some(in_flight)) if in_flight.retried
                    );
                    if retried {
                        // It already had its second chance.
                        let lba = self.lba_of(cid);
                        self.fail_slot(
                            cid,
                            BlockError::Io {
                                first_failed_lba: lba,
                            },
                            None,
                        );
                        continue;
                    }
                    let Some(Some(in_flight)) = self.slots.get_mut(usize::from(cid)) else {
                        continue;
                    };
                    in_flight.retried = true;
                    let command = in_flight.command;
                    self.stats.retried += 1;
                    if !self.issue(&command) {
                        self.fail_slot(cid, BlockError::Busy, None);
                    }
                }
                self.ring();
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                for cid in cids {
                    self.fail_slot(cid, BlockError::DeviceGone, None);
                }
                Err(e)
            }
        }
    }

    fn lba_of(&self, cid: u16) -> u64 {
        match self.slots.get(usize::from(cid)) {
            Some(Some(in_flight)) => self.extent_of(&in_flight.request).0,
            _ => 0,
        }
    }
}

impl<R: Registers, H: Hal> BlockDevice for NvmeDisk<R, H> {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn submit(&mut self, mut request: Request) -> Result<RequestId, Rejected> {
        if let Err(error) = validate(&self.info, &request) {
            return Err(Rejected { error, request });
        }
        if self.failed {
            return Err(Rejected {
                error: BlockError::DeviceGone,
                request,
            });
        }
        let Some(cid) = self.free_cids.pop() else {
            return Err(Rejected {
                error: BlockError::Busy,
                request,
            });
        };
        let (mut command, mapping) = match self.prepare(cid, &mut request) {
            Ok(prepared) => prepared,
            Err(error) => {
                self.free_cids.push(cid);
                return Err(Rejected { error, request });
            }
        };
        command.cid = cid;
        if !self.issue(&command) {
            unmap(&mut self.controller.hal, mapping);
            self.free_cids.push(cid);
            return Err(Rejected {
                error: BlockError::Busy,
                request,
            });
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        if let Some(slot) = self.slots.get_mut(usize::from(cid)) {
            *slot = Some(InFlight {
                id,
                request,
                command,
                mapping,
                retried: false,
            });
        }
        self.in_flight += 1;
        self.stats.submitted += 1;
        Ok(id)
    }

    fn poll_completion(&mut self) -> Option<Completion> {
        if self.ready.is_empty() && !self.failed {
            self.reap();
        }
        self.ready.pop_front()
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.ready.len()
    }
}

fn unmap(hal: &mut impl Hal, mapping: Mapping) {
    match mapping {
        Mapping::None => {}
        Mapping::Direct { bus, len } => hal.release(bus, len),
        Mapping::Bounce(shared) => hal.free(shared.into_region()),
    }
}
