//! The raw-disk benchmark: sequential and 4 KiB random reads and writes at a queue depth,
//! driven through the block-device interface exactly as `cargo xtask bench storage`'s Linux
//! baseline drives the same disk (same workloads, same block sizes, same offsets from the
//! same generator), so the two can be compared as ratios.
//!
//! It writes to the disk: it runs only on scratch disks (`keel.test=bench-storage`).

use alloc::vec;
use alloc::vec::Vec;

use keel_block::{BlockDevice, BlockError, Request};

/// What a workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    SeqRead,
    SeqWrite,
    RandRead,
    RandWrite,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::SeqRead => "seq-read",
            Pattern::SeqWrite => "seq-write",
            Pattern::RandRead => "rand-read",
            Pattern::RandWrite => "rand-write",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Pattern::SeqWrite | Pattern::RandWrite)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub pattern: Pattern,
    pub block_bytes: u32,
    pub queue_depth: u16,
    /// Requests to complete.
    pub ops: u32,
    /// The disk region used, from offset 0.
    pub region_bytes: u64,
}

/// The workloads both systems run, in this order (writes first, so reads find data).
pub fn standard_workloads() -> Vec<Workload> {
    const REGION: u64 = 64 << 20;
    let w = |pattern, block_bytes, queue_depth, ops| Workload {
        pattern,
        block_bytes,
        queue_depth,
        ops,
        region_bytes: REGION,
    };
    vec![
        w(Pattern::SeqWrite, 512 << 10, 1, 512),
        w(Pattern::SeqWrite, 512 << 10, 32, 1024),
        w(Pattern::SeqRead, 512 << 10, 1, 512),
        w(Pattern::SeqRead, 512 << 10, 32, 1024),
        w(Pattern::RandWrite, 4096, 1, 8000),
        w(Pattern::RandWrite, 4096, 32, 32000),
        w(Pattern::RandRead, 4096, 1, 8000),
        w(Pattern::RandRead, 4096, 32, 32000),
    ]
}

/// What one workload measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    pub workload: Workload,
    /// The queue depth actually used (the device's may be lower than asked).
    pub queue_depth: u16,
    pub ops: u32,
    pub bytes: u64,
    pub nanoseconds: u64,
}

impl Measurement {
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / (self.nanoseconds.max(1) as f64 / 1e9)
    }

    pub fn iops(&self) -> f64 {
        f64::from(self.ops) / (self.nanoseconds.max(1) as f64 / 1e9)
    }

    /// One console line: `bench-storage: <disk> <pattern> bs=<B> qd=<Q> ops=<N> ns=<T>`;
    /// the xtask reads it back.
    pub fn line(&self, disk: &str) -> alloc::string::String {
        alloc::format!(
            "bench-storage: {disk} {} bs={} qd={} ops={} ns={}",
            self.workload.pattern.name(),
            self.workload.block_bytes,
            self.queue_depth,
            self.ops,
            self.nanoseconds
        )
    }
}

/// A `bench-storage:` line read back (from Keel's console or the Linux baseline's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    pub disk: alloc::string::String,
    pub pattern: Pattern,
    pub block_bytes: u32,
    pub queue_depth: u16,
    pub ops: u32,
    pub nanoseconds: u64,
}

impl Figures {
    /// Parses `bench-storage: <disk> <pattern> bs=<B> qd=<Q> ops=<N> ns=<T>` anywhere in a
    /// line.
    pub fn parse(line: &str) -> Option<Figures> {
        let rest = line.split("bench-storage: ").nth(1)?;
        let mut words = rest.split_whitespace();
        let disk = words.next()?;
        let pattern = match words.next()? {
            "seq-read" => Pattern::SeqRead,
            "seq-write" => Pattern::SeqWrite,
            "rand-read" => Pattern::RandRead,
            "rand-write" => Pattern::RandWrite,
            _ => return None,
        };
        let mut field = |name: &str| -> Option<u64> {
            words
                .next()?
                .strip_prefix(name)?
                .strip_prefix('=')?
                .parse()
                .ok()
        };
        Some(Figures {
            disk: disk.into(),
            pattern,
            block_bytes: u32::try_from(field("bs")?).ok()?,
            queue_depth: u16::try_from(field("qd")?).ok()?,
            ops: u32::try_from(field("ops")?).ok()?,
            nanoseconds: field("ns")?,
        })
    }

    pub fn megabytes_per_second(&self) -> f64 {
        u64::from(self.ops) as f64 * f64::from(self.block_bytes)
            / 1e6
            / (self.nanoseconds.max(1) as f64 / 1e9)
    }

    pub fn iops(&self) -> f64 {
        f64::from(self.ops) / (self.nanoseconds.max(1) as f64 / 1e9)
    }
}

/// The offsets generator shared with the Linux baseline: xorshift64 from a fixed seed.
pub struct Offsets {
    state: u64,
    next_seq: u64,
}

pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

impl Offsets {
    pub fn new() -> Self {
        Offsets {
            state: SEED,
            next_seq: 0,
        }
    }

    /// The byte offset of the next request of `w`.
    pub fn next(&mut self, w: &Workload) -> u64 {
        let blocks = (w.region_bytes / u64::from(w.block_bytes)).max(1);
        match w.pattern {
            Pattern::SeqRead | Pattern::SeqWrite => {
                let at = self.next_seq % blocks;
                self.next_seq += 1;
                at * u64::from(w.block_bytes)
            }
            Pattern::RandRead | Pattern::RandWrite => {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                (self.state % blocks) * u64::from(w.block_bytes)
            }
        }
    }
}

impl Default for Offsets {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `w` on `dev`, keeping up to its queue depth in flight; `now_ns` is a monotonic
/// clock. Requests the device refuses as `Busy` are retried once a completion arrives.
pub fn run(
    dev: &mut impl BlockDevice,
    w: &Workload,
    mut now_ns: impl FnMut() -> u64,
) -> Result<Measurement, BlockError> {
    let info = dev.info().clone();
    let sector = u64::from(info.sector_size.max(1));
    let depth = w.queue_depth.min(info.queue_depth).max(1);
    let max_block = u64::from(info.max_transfer_sectors) * sector;
    if u64::from(w.block_bytes) > max_block || u64::from(w.block_bytes) % sector != 0 {
        return Err(BlockError::TooLarge {
            sectors: u64::from(w.block_bytes) / sector,
            max_sectors: info.max_transfer_sectors,
        });
    }
    let mut offsets = Offsets::new();
    let mut spare: Vec<Vec<u8>> = (0..depth)
        .map(|i| vec![i as u8 ^ 0x5a; w.block_bytes as usize])
        .collect();
    let (mut issued, mut done) = (0u32, 0u32);
    let start = now_ns();
    while done < w.ops {
        while issued < w.ops && dev.in_flight() < usize::from(depth) {
            let Some(buffer) = spare.pop() else { break };
            let lba = offsets.next(w) / sector;
            let request = if w.pattern.writes() {
                Request::Write { lba, buffer }
            } else {
                Request::Read { lba, buffer }
            };
            match dev.submit(request) {
                Ok(_) => issued += 1,
                Err(rejected) if rejected.error == BlockError::Busy => {
                    spare.extend(rejected.request.into_buffer());
                    break;
                }
                Err(rejected) => return Err(rejected.error),
            }
        }
        match dev.poll_completion() {
            Some(completion) => {
                completion.result?;
                spare.extend(completion.buffer);
                done += 1;
            }
            None if dev.in_flight() == 0 && issued < w.ops && spare.is_empty() => {
                return Err(BlockError::NotIdle)
            }
            None => core::hint::spin_loop(),
        }
    }
    Ok(Measurement {
        workload: *w,
        queue_depth: depth,
        ops: done,
        bytes: u64::from(done) * u64::from(w.block_bytes),
        nanoseconds: now_ns().saturating_sub(start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_block::fakes::{CompletionOrder, MemDisk, MemDiskConfig};

    fn disk(queue_depth: u16) -> MemDisk {
        let mut config = MemDiskConfig::new(512, (64 << 20) / 512);
        config.queue_depth = queue_depth;
        config.completion_order = CompletionOrder::Lifo;
        MemDisk::new(config)
    }

    fn clock() -> impl FnMut() -> u64 {
        let mut t = 0;
        move || {
            t += 1_000_000;
            t
        }
    }

    #[test]
    fn runs_every_op_within_the_queue_depth_and_writes_where_it_says() {
        let mut dev = disk(8);
        let w = Workload {
            pattern: Pattern::SeqWrite,
            block_bytes: 64 << 10,
            queue_depth: 32,
            ops: 40,
            region_bytes: 1 << 20,
        };
        let m = run(&mut dev, &w, clock()).unwrap();
        assert_eq!(m.queue_depth, 8, "capped by the device");
        assert_eq!((m.ops, m.bytes), (40, 40 * (64 << 10)));
        assert_eq!(dev.stats().writes, 40);
        // 40 blocks of 64 KiB wrap around a 1 MiB region: everything in it was written.
        assert_ne!(dev.peek(0, 1), vec![0]);
        assert_ne!(dev.peek((1 << 20) - 1, 1), vec![0]);
        assert_eq!(dev.peek(1 << 20, 1), vec![0], "nothing beyond the region");
        assert!(m.megabytes_per_second() > 0.0);
    }

    #[test]
    fn random_offsets_are_aligned_in_the_region_and_repeatable() {
        let w = Workload {
            pattern: Pattern::RandRead,
            block_bytes: 4096,
            queue_depth: 1,
            ops: 1000,
            region_bytes: 64 << 20,
        };
        let (mut a, mut b) = (Offsets::new(), Offsets::new());
        let first: Vec<u64> = (0..1000).map(|_| a.next(&w)).collect();
        assert!(first.iter().all(|&o| o % 4096 == 0 && o < 64 << 20));
        assert_eq!(first, (0..1000).map(|_| b.next(&w)).collect::<Vec<_>>());
        let distinct: alloc::collections::BTreeSet<_> = first.iter().collect();
        assert!(distinct.len() > 900);
    }

    #[test]
    fn errors_and_oversized_blocks_are_reported() {
        let mut dev = disk(4);
        dev.fail_read(3);
        let w = Workload {
            pattern: Pattern::RandRead,
            block_bytes: 4096,
            queue_depth: 4,
            ops: 10,
            region_bytes: 1 << 20,
        };
        assert!(matches!(
            run(&mut dev, &w, clock()),
            Err(BlockError::Io { .. })
        ));
        let big = Workload {
            block_bytes: 64 << 20,
            ..w
        };
        assert!(matches!(
            run(&mut disk(4), &big, clock()),
            Err(BlockError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_measurement_line_is_what_the_xtask_parses() {
        let m = Measurement {
            workload: standard_workloads()[0],
            queue_depth: 1,
            ops: 128,
            bytes: 128 * 512 * 1024,
            nanoseconds: 2_000_000_000,
        };
        assert_eq!(
            m.line("nvme-keel0-n1"),
            "bench-storage: nvme-keel0-n1 seq-write bs=524288 qd=1 ops=128 ns=2000000000"
        );
        let parsed = Figures::parse(&m.line("nvme-keel0-n1")).unwrap();
        assert_eq!(parsed.disk, "nvme-keel0-n1");
        assert_eq!(parsed.pattern, Pattern::SeqWrite);
        assert_eq!((parsed.block_bytes, parsed.queue_depth), (524288, 1));
        assert_eq!((parsed.ops, parsed.nanoseconds), (128, 2_000_000_000));
        assert!((parsed.megabytes_per_second() - 33.554432).abs() < 1e-6);
        assert!(Figures::parse("[ 1.0] INFO bench-storage: x failed").is_none());
        assert!(Figures::parse("bench-storage: d seq-nope bs=1 qd=1 ops=1 ns=1").is_none());
        assert!((m.megabytes_per_second() - 33.554432).abs() < 1e-6);
        assert!((m.iops() - 64.0).abs() < 1e-9);
    }
}
