//! A command-level model of an NVMe controller, for host tests of the driver.
//!
//! The model is the controller's side of the protocol: registers (CAP, VS, CC, CSTS, AQA,
//! ASQ, ACQ, doorbells), queues in "DMA memory" that it fetches entries from and posts
//! completions to (with phase bits), the admin commands the driver uses, and reads, writes,
//! flushes and deallocations on namespaces, with data moved through the PRPs the driver
//! built. Like an IOMMU, it refuses (panics, failing the test) any access to memory the
//! driver did not allocate or share, and it checks PRP alignment rules.
//!
//! Faults can be planned: a status for the n-th command of an opcode (optionally after
//! transferring part of the data: a short transfer), a fatal controller status (CSTS.CFS)
//! now or after n commands, a controller that never becomes ready. Completions can be held
//! back and released in any order, to test many outstanding commands.

#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ptr::NonNull;
use std::rc::Rc;

use keel_nvme::command::{admin, cns, io, Command, CompletionEntry, CQE_SIZE, SQE_SIZE};
use keel_nvme::{DmaRegion, Hal, Registers, PAGE_SIZE};

/// What the fake controller looks like.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub serial: String,
    pub block_size: u32,
    /// Namespaces (ids 1..), each this many blocks.
    pub namespace_blocks: Vec<u64>,
    /// CAP.MQES + 1.
    pub max_queue_entries: u32,
    /// CAP.DSTRD.
    pub doorbell_stride_shift: u32,
    /// Identify MDTS (0 = unlimited).
    pub mdts: u8,
    pub deallocate: bool,
    pub volatile_write_cache: bool,
    /// Whether the HAL gives the driver's buffers a bus address (false forces bounce buffers).
    pub direct_dma: bool,
    /// CSTS reads before RDY follows CC.EN.
    pub ready_delay_reads: u32,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            serial: "FAKE0001".into(),
            block_size: 512,
            namespace_blocks: vec![16 * 1024],
            max_queue_entries: 2048,
            doorbell_stride_shift: 0,
            mdts: 7,
            deallocate: true,
            volatile_write_cache: true,
            direct_dma: true,
            ready_delay_reads: 2,
        }
    }
}

/// A planned failure of one command.
#[derive(Debug, Clone, Copy)]
pub struct Injection {
    pub opcode: u8,
    /// 0 = the next command with this opcode.
    pub nth: u32,
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
    /// Blocks transferred before the failure (a short transfer).
    pub blocks_done: u32,
}

/// Order in which held completions are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Fifo,
    Lifo,
}

/// One command the controller executed (for assertions).
#[derive(Debug, Clone, Copy)]
pub struct Executed {
    pub qid: u16,
    pub command: Command,
    /// PRP2 was a list pointer.
    pub used_list: bool,
}

struct Region {
    len: usize,
    /// Allocated by the HAL (freed with this layout), or a driver buffer shared with it.
    layout: Option<Layout>,
}

#[derive(Default)]
struct Memory {
    regions: BTreeMap<u64, Region>,
}

impl Memory {
    fn contains(&self, addr: u64, len: usize) -> bool {
        match self.regions.range(..=addr).next_back() {
            Some((start, region)) => addr + len as u64 <= start + region.len as u64,
            None => false,
        }
    }

    fn read(&self, addr: u64, out: &mut [u8]) {
        assert!(
            self.contains(addr, out.len()),
            "device read of {} bytes at {addr:#x}: not memory the driver shared",
            out.len()
        );
        // SAFETY: the range is inside a live allocation or a buffer the driver shared.
        unsafe {
            std::ptr::copy_nonoverlapping(
                std::ptr::with_exposed_provenance::<u8>(addr as usize),
                out.as_mut_ptr(),
                out.len(),
            )
        }
    }

    fn write(&self, addr: u64, data: &[u8]) {
        assert!(
            self.contains(addr, data.len()),
            "device write of {} bytes at {addr:#x}: not memory the driver shared",
            data.len()
        );
        // SAFETY: as in `read`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                std::ptr::with_exposed_provenance_mut::<u8>(addr as usize),
                data.len(),
            )
        }
    }
}

struct Sq {
    base: u64,
    entries: u16,
    head: u16,
    cq: u16,
}

struct Cq {
    base: u64,
    entries: u16,
    head: u16,
    tail: u16,
    phase: bool,
}

struct Fetched {
    qid: u16,
    command: Command,
}

struct Model {
    config: FakeConfig,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    intms: u32,
    ready_countdown: u32,
    refuse_enable: bool,
    memory: Memory,
    sqs: BTreeMap<u16, Sq>,
    cqs: BTreeMap<u16, Cq>,
    data: Vec<Vec<u8>>,
    held: VecDeque<Fetched>,
    hold: bool,
    max_outstanding: usize,
    io_doorbells: u32,
    injections: Vec<Injection>,
    seen: BTreeMap<u8, u32>,
    fatal_after: Option<u32>,
    io_fetched: u32,
    executed: Vec<Executed>,
    enables: u32,
    delay_us: u64,
    admin_failures: BTreeMap<u8, (u8, u8)>,
}

/// The test's handle on the fake controller; [`FakeNvme::parts`] gives the driver its side.
#[derive(Clone)]
pub struct FakeNvme(Rc<RefCell<Model>>);

pub struct FakeRegs(Rc<RefCell<Model>>);
pub struct FakeHal(Rc<RefCell<Model>>);

impl FakeNvme {
    pub fn new(config: FakeConfig) -> Self {
        let data = config
            .namespace_blocks
            .iter()
            .map(|&blocks| vec![0u8; blocks as usize * config.block_size as usize])
            .collect();
        FakeNvme(Rc::new(RefCell::new(Model {
            config,
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            intms: 0,
            ready_countdown: 0,
            refuse_enable: false,
            memory: Memory::default(),
            sqs: BTreeMap::new(),
            cqs: BTreeMap::new(),
            data,
            held: VecDeque::new(),
            hold: false,
            max_outstanding: 0,
            io_doorbells: 0,
            injections: Vec::new(),
            seen: BTreeMap::new(),
            fatal_after: None,
            io_fetched: 0,
            executed: Vec::new(),
            enables: 0,
            delay_us: 0,
            admin_failures: BTreeMap::new(),
        })))
    }

    /// The register window and HAL to give the driver.
    pub fn parts(&self) -> (FakeRegs, FakeHal) {
        (FakeRegs(self.0.clone()), FakeHal(self.0.clone()))
    }

    /// Holds I/O completions back until [`FakeNvme::release`] (commands are still fetched).
    pub fn hold_completions(&self, hold: bool) {
        self.0.borrow_mut().hold = hold;
    }

    /// Executes and completes every held command in `order`. Returns how many.
    pub fn release(&self, order: Order) -> usize {
        let mut model = self.0.borrow_mut();
        let mut count = 0;
        loop {
            let next = match order {
                Order::Fifo => model.held.pop_front(),
                Order::Lifo => model.held.pop_back(),
            };
            let Some(fetched) = next else { break };
            model.execute_io(fetched);
            count += 1;
        }
        count
    }

    pub fn held(&self) -> usize {
        self.0.borrow().held.len()
    }

    /// Tail doorbell writes of I/O submission queues.
    pub fn sq_doorbell_writes(&self) -> u32 {
        self.0.borrow().io_doorbells
    }

    pub fn max_outstanding(&self) -> usize {
        self.0.borrow().max_outstanding
    }

    /// Plans a failure; `nth` counts commands with that opcode from now.
    pub fn inject(&self, mut injection: Injection) {
        let mut model = self.0.borrow_mut();
        injection.nth += model.seen.get(&injection.opcode).copied().unwrap_or(0);
        model.injections.push(injection);
    }

    /// An admin command with this opcode fails with (sct, sc).
    pub fn fail_admin(&self, opcode: u8, sct: u8, sc: u8) {
        self.0.borrow_mut().admin_failures.insert(opcode, (sct, sc));
    }

    /// Sets CSTS.CFS now: held commands are lost and doorbells are ignored until reset.
    pub fn fatal_now(&self) {
        self.0.borrow_mut().go_fatal();
    }

    /// Goes fatal when the n-th I/O command from now (0-based) is fetched; it is lost.
    pub fn fatal_after(&self, n: u32) {
        let mut model = self.0.borrow_mut();
        model.fatal_after = Some(model.io_fetched + n);
    }

    /// CSTS.RDY never follows CC.EN (a controller that will not come back).
    pub fn refuse_enable(&self, refuse: bool) {
        self.0.borrow_mut().refuse_enable = refuse;
    }

    /// Times the controller was enabled (1 after start, +1 per reset).
    pub fn enables(&self) -> u32 {
        self.0.borrow().enables
    }

    pub fn executed(&self) -> Vec<Executed> {
        self.0.borrow().executed.clone()
    }

    /// Namespace `nsid`'s bytes at `offset`.
    pub fn peek(&self, nsid: u32, offset: usize, len: usize) -> Vec<u8> {
        let model = self.0.borrow();
        model.data[nsid as usize - 1][offset..offset + len].to_vec()
    }

    pub fn poke(&self, nsid: u32, offset: usize, bytes: &[u8]) {
        let mut model = self.0.borrow_mut();
        model.data[nsid as usize - 1][offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// HAL allocations and shared buffers still live.
    pub fn live_regions(&self) -> usize {
        self.0.borrow().memory.regions.len()
    }

    pub fn controller_enabled(&self) -> bool {
        self.0.borrow().cc & 1 == 1
    }

    pub fn interrupts_masked(&self) -> bool {
        self.0.borrow().intms == u32::MAX
    }
}

fn status_field(sct: u8, sc: u8, dnr: bool) -> u16 {
    u16::from(sc) | (u16::from(sct & 7) << 8) | (u16::from(dnr) << 14)
}

const SUCCESS: u16 = 0;
const INVALID_OPCODE: u16 = 0x01;
const INVALID_FIELD: u16 = 0x02 | (1 << 14);
const PRP_OFFSET_INVALID: u16 = 0x13 | (1 << 14);
const LBA_OUT_OF_RANGE: u16 = 0x80 | (1 << 14);
const CQ_INVALID: u16 = (1 << 8) | (1 << 14);

impl Model {
    fn cap(&self) -> u64 {
        u64::from(self.config.max_queue_entries - 1)
            | (1 << 16)
            | (20 << 24)
            | (u64::from(self.config.doorbell_stride_shift) << 32)
            | (1 << 37)
    }

    fn stride(&self) -> usize {
        4 << self.config.doorbell_stride_shift
    }

    fn go_fatal(&mut self) {
        self.csts |= 2;
        self.held.clear();
    }

    fn fatal(&self) -> bool {
        self.csts & 2 != 0
    }

    fn write_cc(&mut self, value: u32) {
        let was = self.cc & 1 == 1;
        self.cc = value;
        let now = value & 1 == 1;
        if was && !now {
            // Controller reset: every queue and outstanding command is gone.
            self.sqs.clear();
            self.cqs.clear();
            self.held.clear();
            self.csts = 0;
        } else if !was && now {
            assert!(
                self.memory.contains(self.asq, SQE_SIZE),
                "ASQ not in DMA memory"
            );
            assert!(
                self.memory.contains(self.acq, CQE_SIZE),
                "ACQ not in DMA memory"
            );
            assert_eq!((value >> 16) & 0xf, 6, "IOSQES must be 64 bytes");
            assert_eq!((value >> 20) & 0xf, 4, "IOCQES must be 16 bytes");
            let sq_entries = (self.aqa & 0xfff) as u16 + 1;
            let cq_entries = ((self.aqa >> 16) & 0xfff) as u16 + 1;
            self.sqs.insert(
                0,
                Sq {
                    base: self.asq,
                    entries: sq_entries,
                    head: 0,
                    cq: 0,
                },
            );
            self.cqs.insert(
                0,
                Cq {
                    base: self.acq,
                    entries: cq_entries,
                    head: 0,
                    tail: 0,
                    phase: true,
                },
            );
            self.enables += 1;
            self.ready_countdown = self.config.ready_delay_reads;
        }
    }

    fn read_csts(&mut self) -> u32 {
        if self.cc & 1 == 1 && self.csts & 1 == 0 && !self.refuse_enable && !self.fatal() {
            if self.ready_countdown == 0 {
                self.csts |= 1;
            } else {
                self.ready_countdown -= 1;
            }
        }
        if self.cc & 1 == 0 {
            self.csts &= !1;
        }
        self.csts
    }

    fn doorbell(&mut self, offset: usize, value: u32) {
        let index = (offset - 0x1000) / self.stride();
        let qid = (index / 2) as u16;
        if self.fatal() || self.csts & 1 == 0 {
            return;
        }
        if index % 2 == 1 {
            if let Some(cq) = self.cqs.get_mut(&qid) {
                assert!(
                    u32::from(cq.entries) > value,
                    "CQ head doorbell out of range"
                );
                cq.head = value as u16;
            }
            return;
        }
        let Some(sq) = self.sqs.get(&qid) else {
            panic!("doorbell for submission queue {qid}, which does not exist");
        };
        if qid != 0 {
            self.io_doorbells += 1;
        }
        assert!(
            u32::from(sq.entries) > value,
            "SQ tail doorbell out of range"
        );
        let (base, entries, mut head) = (sq.base, sq.entries, sq.head);
        let tail = value as u16;
        while head != tail {
            let mut bytes = [0u8; SQE_SIZE];
            self.memory
                .read(base + u64::from(head) * SQE_SIZE as u64, &mut bytes);
            head = (head + 1) % entries;
            if let Some(sq) = self.sqs.get_mut(&qid) {
                sq.head = head;
            }
            let command = Command::from_bytes(&bytes);
            if qid == 0 {
                self.execute_admin(command);
                continue;
            }
            if self.fatal_after == Some(self.io_fetched) {
                self.fatal_after = None;
                self.go_fatal();
                return;
            }
            self.io_fetched += 1;
            let fetched = Fetched { qid, command };
            if self.hold {
                self.held.push_back(fetched);
                self.max_outstanding = self.max_outstanding.max(self.held.len());
            } else {
                self.max_outstanding = self.max_outstanding.max(1);
                self.execute_io(fetched);
            }
        }
    }

    fn post(&mut self, sqid: u16, cid: u16, result: u32, status: u16) {
        let (cqid, sq_head) = match self.sqs.get(&sqid) {
            Some(sq) => (sq.cq, sq.head),
            None => return,
        };
        let Some(cq) = self.cqs.get_mut(&cqid) else {
            return;
        };
        assert_ne!(
            (cq.tail + 1) % cq.entries,
            cq.head,
            "completion queue {cqid} overflow: the driver had more outstanding than fit"
        );
        let entry = CompletionEntry::encode(result, sq_head, sqid, cid, cq.phase, status);
        let at = cq.base + u64::from(cq.tail) * CQE_SIZE as u64;
        cq.tail += 1;
        if cq.tail == cq.entries {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
        self.memory.write(at, &entry);
    }

    fn execute_admin(&mut self, c: Command) {
        if let Some(&(sct, sc)) = self.admin_failures.get(&c.opcode) {
            self.post(0, c.cid, 0, status_field(sct, sc, true));
            return;
        }
        let (result, status) = match c.opcode {
            admin::IDENTIFY => {
                let page = self.identify(c.cdw[0], c.nsid);
                match page {
                    Some(page) => {
                        assert_eq!(c.prp1 % 4, 0);
                        self.memory.write(c.prp1, &page);
                        (0, SUCCESS)
                    }
                    None => (0, INVALID_FIELD),
                }
            }
            admin::SET_FEATURES if c.cdw[0] & 0xff == 7 => (0, SUCCESS),
            admin::CREATE_IO_CQ => {
                let qid = (c.cdw[0] & 0xffff) as u16;
                let entries = ((c.cdw[0] >> 16) as u16).wrapping_add(1);
                assert_eq!(c.cdw[1] & 1, 1, "queues must be physically contiguous");
                assert!(
                    self.memory
                        .contains(c.prp1, usize::from(entries) * CQE_SIZE),
                    "CQ not in DMA memory"
                );
                if u32::from(entries) > self.config.max_queue_entries || qid == 0 {
                    (0, INVALID_FIELD)
                } else {
                    self.cqs.insert(
                        qid,
                        Cq {
                            base: c.prp1,
                            entries,
                            head: 0,
                            tail: 0,
                            phase: true,
                        },
                    );
                    (0, SUCCESS)
                }
            }
            admin::CREATE_IO_SQ => {
                let qid = (c.cdw[0] & 0xffff) as u16;
                let entries = ((c.cdw[0] >> 16) as u16).wrapping_add(1);
                let cqid = (c.cdw[1] >> 16) as u16;
                assert!(
                    self.memory
                        .contains(c.prp1, usize::from(entries) * SQE_SIZE),
                    "SQ not in DMA memory"
                );
                if !self.cqs.contains_key(&cqid) {
                    (0, CQ_INVALID)
                } else {
                    self.sqs.insert(
                        qid,
                        Sq {
                            base: c.prp1,
                            entries,
                            head: 0,
                            cq: cqid,
                        },
                    );
                    (0, SUCCESS)
                }
            }
            _ => (0, INVALID_OPCODE),
        };
        self.post(0, c.cid, result, status);
    }

    fn identify(&self, cns_value: u32, nsid: u32) -> Option<Vec<u8>> {
        let mut d = vec![0u8; 4096];
        match cns_value {
            cns::CONTROLLER => {
                d[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                let mut serial = [b' '; 20];
                serial[..self.config.serial.len()].copy_from_slice(self.config.serial.as_bytes());
                d[4..24].copy_from_slice(&serial);
                let mut model = [b' '; 40];
                model[..14].copy_from_slice(b"Keel fake NVMe");
                d[24..64].copy_from_slice(&model);
                d[64..72].copy_from_slice(b"1.0     ");
                d[77] = self.config.mdts;
                d[516..520].copy_from_slice(&(self.data.len() as u32).to_le_bytes());
                let oncs: u16 = if self.config.deallocate { 1 << 2 } else { 0 };
                d[520..522].copy_from_slice(&oncs.to_le_bytes());
                d[525] = u8::from(self.config.volatile_write_cache);
                Some(d)
            }
            cns::NAMESPACE => {
                let blocks = *self
                    .config
                    .namespace_blocks
                    .get(nsid.checked_sub(1)? as usize)?;
                d[0..8].copy_from_slice(&blocks.to_le_bytes());
                d[8..16].copy_from_slice(&blocks.to_le_bytes());
                let lbads = self.config.block_size.trailing_zeros();
                d[128..132].copy_from_slice(&(lbads << 16).to_le_bytes());
                Some(d)
            }
            cns::ACTIVE_NAMESPACES => {
                for (i, _) in self.data.iter().enumerate() {
                    d[4 * i..4 * i + 4].copy_from_slice(&(i as u32 + 1).to_le_bytes());
                }
                Some(d)
            }
            _ => None,
        }
    }

    /// The (address, length) pieces a PRP pair describes, or a PRP error status.
    fn segments(&self, c: &Command, len: usize) -> Result<(Vec<(u64, usize)>, bool), u16> {
        let page = PAGE_SIZE as u64;
        if !c.prp1.is_multiple_of(4) {
            return Err(PRP_OFFSET_INVALID);
        }
        let first = (page - c.prp1 % page) as usize;
        let mut out = vec![(c.prp1, first.min(len))];
        if len <= first {
            return Ok((out, false));
        }
        let rest = len - first;
        let pages = rest.div_ceil(PAGE_SIZE);
        let mut addresses = Vec::new();
        let used_list = pages > 1;
        if used_list {
            if !c.prp2.is_multiple_of(8) {
                return Err(PRP_OFFSET_INVALID);
            }
            assert!(
                pages <= PAGE_SIZE / 8 - (c.prp2 % page) as usize / 8,
                "PRP list would need chaining"
            );
            for k in 0..pages {
                let mut entry = [0u8; 8];
                self.memory.read(c.prp2 + 8 * k as u64, &mut entry);
                addresses.push(u64::from_le_bytes(entry));
            }
        } else {
            addresses.push(c.prp2);
        }
        for (k, address) in addresses.into_iter().enumerate() {
            if !address.is_multiple_of(page) {
                return Err(PRP_OFFSET_INVALID);
            }
            out.push((address, PAGE_SIZE.min(rest - k * PAGE_SIZE)));
        }
        Ok((out, used_list))
    }

    fn take_injection(&mut self, opcode: u8) -> Option<Injection> {
        let seen = self.seen.entry(opcode).or_insert(0);
        let index = *seen;
        *seen += 1;
        let position = self
            .injections
            .iter()
            .position(|i| i.opcode == opcode && i.nth == index)?;
        Some(self.injections.remove(position))
    }

    fn execute_io(&mut self, fetched: Fetched) {
        let Fetched { qid, command: c } = fetched;
        let injection = self.take_injection(c.opcode);
        let (status, used_list) = self.run_io(&c, injection);
        self.executed.push(Executed {
            qid,
            command: c,
            used_list,
        });
        self.post(qid, c.cid, 0, status);
    }

    fn run_io(&mut self, c: &Command, injection: Option<Injection>) -> (u16, bool) {
        let bs = self.config.block_size as usize;
        let Some(ns) = (c.nsid as usize)
            .checked_sub(1)
            .filter(|&n| n < self.data.len())
        else {
            return (0x0b | (1 << 14), false);
        };
        let failure = injection.map(|i| (status_field(i.sct, i.sc, i.dnr), i.blocks_done));
        match c.opcode {
            io::FLUSH => (failure.map_or(SUCCESS, |f| f.0), false),
            io::READ | io::WRITE => {
                let blocks = c.blocks() as usize;
                let start = c.slba() as usize;
                if start + blocks > self.data[ns].len() / bs {
                    return (LBA_OUT_OF_RANGE, false);
                }
                let (segments, used_list) = match self.segments(c, blocks * bs) {
                    Ok(s) => s,
                    Err(status) => return (status, false),
                };
                let done_blocks = failure.map_or(blocks, |f| (f.1 as usize).min(blocks));
                let mut remaining = done_blocks * bs;
                let mut at = start * bs;
                for (address, len) in segments {
                    let n = len.min(remaining);
                    if n == 0 {
                        break;
                    }
                    if c.opcode == io::WRITE {
                        let mut buf = vec![0u8; n];
                        self.memory.read(address, &mut buf);
                        self.data[ns][at..at + n].copy_from_slice(&buf);
                    } else {
                        self.memory.write(address, &self.data[ns][at..at + n]);
                    }
                    at += n;
                    remaining -= n;
                }
                (failure.map_or(SUCCESS, |f| f.0), used_list)
            }
            io::DATASET_MANAGEMENT if self.config.deallocate => {
                let ranges = (c.cdw[0] & 0xff) as usize + 1;
                let mut list = vec![0u8; ranges * 16];
                self.memory.read(c.prp1, &mut list);
                for range in list.chunks(16) {
                    let count = u32::from_le_bytes(range[4..8].try_into().unwrap()) as usize;
                    let slba = u64::from_le_bytes(range[8..16].try_into().unwrap()) as usize;
                    if (slba + count) * bs > self.data[ns].len() {
                        return (LBA_OUT_OF_RANGE, false);
                    }
                    self.data[ns][slba * bs..(slba + count) * bs].fill(0);
                }
                (failure.map_or(SUCCESS, |f| f.0), false)
            }
            _ => (INVALID_OPCODE, false),
        }
    }
}

impl Registers for FakeRegs {
    fn read32(&self, offset: usize) -> u32 {
        let mut model = self.0.borrow_mut();
        match offset {
            0x00 => model.cap() as u32,
            0x04 => (model.cap() >> 32) as u32,
            0x08 => 0x0001_0400,
            0x14 => model.cc,
            0x1c => model.read_csts(),
            0x24 => model.aqa,
            _ => 0,
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let mut model = self.0.borrow_mut();
        match offset {
            0x0c => model.intms |= value,
            0x14 => model.write_cc(value),
            0x24 => model.aqa = value,
            0x28 => model.asq = (model.asq & !0xffff_ffff) | u64::from(value),
            0x2c => model.asq = (model.asq & 0xffff_ffff) | (u64::from(value) << 32),
            0x30 => model.acq = (model.acq & !0xffff_ffff) | u64::from(value),
            0x34 => model.acq = (model.acq & 0xffff_ffff) | (u64::from(value) << 32),
            o if o >= 0x1000 => model.doorbell(o, value),
            _ => {}
        }
    }
}

// SAFETY: allocations are zeroed, page aligned, exclusively the driver's until freed, and
// "bus" addresses are the host addresses the model accesses them at.
unsafe impl Hal for FakeHal {
    fn allocate(&mut self, pages: usize) -> Option<DmaRegion> {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).ok()?;
        // SAFETY: non-zero size (pages >= 1 in every driver call).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        let bus = ptr.as_ptr().expose_provenance() as u64;
        self.0.borrow_mut().memory.regions.insert(
            bus,
            Region {
                len: pages * PAGE_SIZE,
                layout: Some(layout),
            },
        );
        Some(DmaRegion {
            bus,
            virt: ptr,
            pages,
        })
    }

    fn free(&mut self, region: DmaRegion) {
        let removed = self.0.borrow_mut().memory.regions.remove(&region.bus);
        let Some(Region {
            layout: Some(layout),
            ..
        }) = removed
        else {
            panic!("freeing {:#x}, which the HAL did not allocate", region.bus);
        };
        // SAFETY: allocated above with this layout and not yet freed.
        unsafe { dealloc(region.virt.as_ptr(), layout) };
    }

    fn bus_address(&mut self, buffer: NonNull<u8>, len: usize) -> Option<u64> {
        let mut model = self.0.borrow_mut();
        if !model.config.direct_dma {
            return None;
        }
        let bus = buffer.as_ptr().expose_provenance() as u64;
        let previous = model
            .memory
            .regions
            .insert(bus, Region { len, layout: None });
        assert!(previous.is_none(), "buffer {bus:#x} shared twice");
        Some(bus)
    }

    fn release(&mut self, bus: u64, len: usize) {
        let removed = self.0.borrow_mut().memory.regions.remove(&bus);
        match removed {
            Some(Region {
                len: l,
                layout: None,
            }) if l == len => {}
            _ => panic!("releasing {bus:#x}+{len}, which was not shared"),
        }
    }

    fn delay_us(&mut self, us: u32) {
        self.0.borrow_mut().delay_us += u64::from(us);
    }
}
