//! An in-memory disk with a volatile write cache, power cuts and error injection.
//!
//! The model is the one storage code must survive on real hardware:
//! - a completed write sits in a volatile cache; only a completed `Flush` makes it durable;
//! - a power cut loses the cache, wholly or in part ([`CacheLoss`]): any subset of the
//!   sectors written since the last flush may have reached the medium, so a multi-sector write
//!   can be torn at sector granularity (single sectors are atomic);
//! - faults can be planned: fail the n-th write (after applying a prefix of its sectors, a
//!   short write), the n-th read or the n-th flush, or cut the power once k mutating requests
//!   (writes, flushes, discards) have executed.
//!
//! Handles are cheap clones sharing one disk, so a test can keep a handle while the code under
//! test owns another, cut the power, "reboot" with [`MemDisk::power_cycle`], and attach again.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::{
    validate, BlockDevice, BlockError, Completion, DeviceInfo, Rejected, Request, RequestId,
};

/// Which order queued requests finish in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionOrder {
    /// Oldest first.
    Fifo,
    /// Newest first, to catch callers that assume completions arrive in submission order.
    Lifo,
}

/// What survives of the un-flushed writes when the power is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLoss {
    /// Nothing written since the last flush survives.
    DropAll,
    /// Everything reached the medium just before the cut.
    KeepAll,
    /// The first `n` sector writes (in the order they were written) survive.
    KeepFirst(usize),
    /// A pseudo-random subset of sector writes, chosen by `seed`, survives (in order).
    Random { seed: u64 },
}

/// Geometry and behaviour of a [`MemDisk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDiskConfig {
    pub sector_size: u32,
    pub capacity_sectors: u64,
    pub queue_depth: u16,
    pub max_transfer_sectors: u32,
    pub volatile_write_cache: bool,
    pub supports_discard: bool,
    pub identity: String,
    pub completion_order: CompletionOrder,
}

impl MemDiskConfig {
    /// A disk of `capacity_sectors` sectors of `sector_size` bytes with a write cache.
    pub fn new(sector_size: u32, capacity_sectors: u64) -> Self {
        MemDiskConfig {
            sector_size,
            capacity_sectors,
            queue_depth: 32,
            max_transfer_sectors: 1 << 16,
            volatile_write_cache: true,
            supports_discard: true,
            identity: String::from("memdisk0"),
            completion_order: CompletionOrder::Fifo,
        }
    }
}

/// Counters of executed requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub sectors_written: u64,
    /// Writes + flushes + discards: the boundaries at which a power cut can be planned.
    pub mutations: u64,
}

#[derive(Debug, Default)]
struct Faults {
    /// (index of the write to fail, sectors of it applied before failing)
    write: Option<(u64, u64)>,
    read: Option<u64>,
    flush: Option<u64>,
    cut_after_mutations: Option<u64>,
}

#[derive(Debug)]
struct State {
    durable: BTreeMap<u64, Box<[u8]>>,
    /// Sector writes since the last flush, oldest first.
    cache_log: Vec<(u64, Box<[u8]>)>,
    /// Latest cached copy of each sector: index into `cache_log`.
    cache_latest: BTreeMap<u64, usize>,
    queue: VecDeque<(RequestId, Request)>,
    next_id: u64,
    powered: bool,
    stats: DiskStats,
    faults: Faults,
}

/// An in-memory disk; clones share the same medium.
#[derive(Debug, Clone)]
pub struct MemDisk {
    info: DeviceInfo,
    order: CompletionOrder,
    state: Rc<RefCell<State>>,
}

impl MemDisk {
    pub fn new(config: MemDiskConfig) -> Self {
        MemDisk {
            info: DeviceInfo {
                sector_size: config.sector_size,
                capacity_sectors: config.capacity_sectors,
                queue_depth: config.queue_depth,
                max_transfer_sectors: config.max_transfer_sectors,
                read_only: false,
                supports_discard: config.supports_discard,
                volatile_write_cache: config.volatile_write_cache,
                identity: config.identity,
            },
            order: config.completion_order,
            state: Rc::new(RefCell::new(State {
                durable: BTreeMap::new(),
                cache_log: Vec::new(),
                cache_latest: BTreeMap::new(),
                queue: VecDeque::new(),
                next_id: 0,
                powered: true,
                stats: DiskStats::default(),
                faults: Faults::default(),
            })),
        }
    }

    /// A disk with a write cache and default queue settings.
    pub fn with_geometry(sector_size: u32, capacity_sectors: u64) -> Self {
        Self::new(MemDiskConfig::new(sector_size, capacity_sectors))
    }

    pub fn stats(&self) -> DiskStats {
        self.state.borrow().stats
    }

    /// The `index`-th write from now on (0 = the next one, counted by `stats().writes`)
    /// applies its first `sectors_applied` sectors and then fails with `Io`.
    pub fn fail_write(&self, index: u64, sectors_applied: u64) {
        let mut state = self.state.borrow_mut();
        let at = state.stats.writes + index;
        state.faults.write = Some((at, sectors_applied));
    }

    /// The `index`-th read from now on fails with `Io`.
    pub fn fail_read(&self, index: u64) {
        let mut state = self.state.borrow_mut();
        let at = state.stats.reads + index;
        state.faults.read = Some(at);
    }

    /// The `index`-th flush from now on fails with `Io` (and makes nothing durable).
    pub fn fail_flush(&self, index: u64) {
        let mut state = self.state.borrow_mut();
        let at = state.stats.flushes + index;
        state.faults.flush = Some(at);
    }

    /// Cuts the power once `k` more mutating requests have executed: the `k`-th one from now
    /// (0-based) and everything after it fails with `DeviceGone`.
    pub fn cut_power_after(&self, k: u64) {
        let mut state = self.state.borrow_mut();
        let at = state.stats.mutations + k;
        state.faults.cut_after_mutations = Some(at);
    }

    /// Cuts the power now.
    pub fn cut_power(&self) {
        self.state.borrow_mut().powered = false;
    }

    pub fn is_powered(&self) -> bool {
        self.state.borrow().powered
    }

    /// Restores power after a cut: the write cache is resolved according to `loss`, queued
    /// requests are forgotten (as a rebooted host forgets them), and planned faults are
    /// cleared. Also valid on a powered disk, which then loses its cache as if cut.
    pub fn power_cycle(&self, loss: CacheLoss) {
        let mut state = self.state.borrow_mut();
        let log = core::mem::take(&mut state.cache_log);
        state.cache_latest.clear();
        let mut rng = match loss {
            CacheLoss::Random { seed } => seed | 1,
            _ => 1,
        };
        for (position, (lba, data)) in log.into_iter().enumerate() {
            let keep = match loss {
                CacheLoss::DropAll => false,
                CacheLoss::KeepAll => true,
                CacheLoss::KeepFirst(n) => position < n,
                CacheLoss::Random { .. } => {
                    // xorshift64: deterministic per seed, good enough to pick subsets.
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng & 1 == 1
                }
            };
            if keep {
                state.durable.insert(lba, data);
            }
        }
        state.queue.clear();
        state.powered = true;
        state.faults = Faults::default();
    }

    /// How many sector writes are in the volatile cache.
    pub fn cached_sector_writes(&self) -> usize {
        self.state.borrow().cache_log.len()
    }

    /// Reads what the host would read now (cache first), bypassing queue, power and faults.
    /// `byte_offset` and `len` need not be aligned.
    pub fn peek(&self, byte_offset: u64, len: usize) -> Vec<u8> {
        let state = self.state.borrow();
        let sector_size = u64::from(self.info.sector_size);
        let mut out = vec![0u8; len];
        for (i, byte) in out.iter_mut().enumerate() {
            let pos = byte_offset + i as u64;
            let sector = state.sector(pos / sector_size);
            if let Some(data) = sector {
                *byte = data[(pos % sector_size) as usize];
            }
        }
        out
    }

    /// Overwrites bytes on the medium directly (durable, bypassing cache and faults): for
    /// planting foreign data or corrupting metadata in tests. Cached copies are updated too.
    pub fn poke(&self, byte_offset: u64, data: &[u8]) {
        self.modify(byte_offset, data.len(), |i, byte| *byte = data[i]);
    }

    /// Flips bits (`xor` with `mask`) of the byte at `byte_offset`, on the medium and in the
    /// cache.
    pub fn flip_bits(&self, byte_offset: u64, mask: u8) {
        self.modify(byte_offset, 1, |_, byte| *byte ^= mask);
    }

    fn modify(&self, byte_offset: u64, len: usize, mut f: impl FnMut(usize, &mut u8)) {
        let mut state = self.state.borrow_mut();
        let sector_size = u64::from(self.info.sector_size);
        for i in 0..len {
            let pos = byte_offset + i as u64;
            let lba = pos / sector_size;
            let within = (pos % sector_size) as usize;
            let size = self.info.sector_size as usize;
            let durable = state
                .durable
                .entry(lba)
                .or_insert_with(|| vec![0u8; size].into_boxed_slice());
            f(i, &mut durable[within]);
            if let Some(&index) = state.cache_latest.get(&lba) {
                f(i, &mut state.cache_log[index].1[within]);
            }
        }
    }

    fn execute(
        &self,
        state: &mut State,
        request: Request,
    ) -> (Result<(), BlockError>, Option<Vec<u8>>) {
        let size = self.info.sector_size as usize;
        let mutating = !matches!(request, Request::Read { .. });
        if mutating {
            if state.faults.cut_after_mutations == Some(state.stats.mutations) {
                state.powered = false;
            }
            if state.powered {
                state.stats.mutations += 1;
            }
        }
        if !state.powered {
            return (Err(BlockError::DeviceGone), request.into_buffer());
        }
        match request {
            Request::Read { lba, mut buffer } => {
                let index = state.stats.reads;
                state.stats.reads += 1;
                if state.faults.read == Some(index) {
                    return (
                        Err(BlockError::Io {
                            first_failed_lba: lba,
                        }),
                        Some(buffer),
                    );
                }
                for (i, chunk) in buffer.chunks_mut(size).enumerate() {
                    match state.sector(lba + i as u64) {
                        Some(data) => chunk.copy_from_slice(data),
                        None => chunk.fill(0),
                    }
                }
                (Ok(()), Some(buffer))
            }
            Request::Write { lba, buffer } => {
                let index = state.stats.writes;
                state.stats.writes += 1;
                let (limit, result) = match state.faults.write {
                    Some((at, applied)) if at == index => {
                        let applied = applied.min((buffer.len() / size) as u64);
                        (
                            applied,
                            Err(BlockError::Io {
                                first_failed_lba: lba + applied,
                            }),
                        )
                    }
                    _ => (u64::MAX, Ok(())),
                };
                for (i, chunk) in buffer
                    .chunks(size)
                    .enumerate()
                    .take(limit.min(usize::MAX as u64) as usize)
                {
                    state.store(lba + i as u64, chunk, self.info.volatile_write_cache);
                }
                (result, Some(buffer))
            }
            Request::Flush => {
                let index = state.stats.flushes;
                state.stats.flushes += 1;
                if state.faults.flush == Some(index) {
                    return (
                        Err(BlockError::Io {
                            first_failed_lba: 0,
                        }),
                        None,
                    );
                }
                let log = core::mem::take(&mut state.cache_log);
                state.cache_latest.clear();
                for (lba, data) in log {
                    state.durable.insert(lba, data);
                }
                (Ok(()), None)
            }
            Request::Discard { lba, sectors } => {
                state.stats.discards += 1;
                // Discarded sectors read back as zeros here; real devices may differ, which is
                // why nothing in Keel relies on it.
                let zeros = vec![0u8; size];
                for i in 0..sectors {
                    state.store(lba + i, &zeros, self.info.volatile_write_cache);
                }
                (Ok(()), None)
            }
        }
    }
}

impl State {
    fn sector(&self, lba: u64) -> Option<&[u8]> {
        match self.cache_latest.get(&lba) {
            Some(&index) => self.cache_log.get(index).map(|(_, data)| &data[..]),
            None => self.durable.get(&lba).map(|data| &data[..]),
        }
    }

    fn store(&mut self, lba: u64, data: &[u8], cached: bool) {
        self.stats.sectors_written += 1;
        let data: Box<[u8]> = data.into();
        if cached {
            self.cache_latest.insert(lba, self.cache_log.len());
            self.cache_log.push((lba, data));
        } else {
            self.durable.insert(lba, data);
        }
    }
}

impl BlockDevice for MemDisk {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn submit(&mut self, request: Request) -> Result<RequestId, Rejected> {
        if let Err(error) = validate(&self.info, &request) {
            return Err(Rejected { error, request });
        }
        let mut state = self.state.borrow_mut();
        if state.queue.len() >= usize::from(self.info.queue_depth) {
            return Err(Rejected {
                error: BlockError::Busy,
                request,
            });
        }
        let id = RequestId(state.next_id);
        state.next_id += 1;
        state.queue.push_back((id, request));
        Ok(id)
    }

    fn poll_completion(&mut self) -> Option<Completion> {
        let mut state = self.state.borrow_mut();
        let (id, request) = match self.order {
            CompletionOrder::Fifo => state.queue.pop_front()?,
            CompletionOrder::Lifo => state.queue.pop_back()?,
        };
        let kind = request.kind();
        let (result, buffer) = self.execute(&mut state, request);
        Some(Completion {
            id,
            kind,
            result,
            buffer,
        })
    }

    fn in_flight(&self) -> usize {
        self.state.borrow().queue.len()
    }
}
