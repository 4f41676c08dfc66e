//! The queued path against a model, with random work: batches of writes, reads and discards
//! on several VDIs in flight together (disjoint within a batch, so the outcome is defined),
//! flushes among them, snapshots, clones and destroys between batches, devices completing in
//! either order, and power cycles after a flush. After every batch each VDI reads back as the
//! model says, every snapshot still holds what it held when taken, and the SR checks clean.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use keel_block::fakes::{CacheLoss, CompletionOrder, MemDisk, MemDiskConfig};
use keel_storage::{Sr, SrError, Uuid, VdiIo, VdiIoKind};

const SECTOR: u64 = 512;
const VDI_BYTES: u64 = 64 * 1024;

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Model {
    /// Writable VDIs and what they hold.
    live: BTreeMap<Uuid, Vec<u8>>,
    /// Snapshots and what they held when taken (never changes).
    frozen: BTreeMap<Uuid, Vec<u8>>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

fn run(seed: u64, order: CompletionOrder) {
    let mut config = MemDiskConfig::new(512, 8192);
    config.completion_order = order;
    config.queue_depth = 1 + (seed % 16) as u16;
    let disk = MemDisk::new(config);
    let mut sr = Sr::format(disk.clone(), options()).unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut model = Model {
        live: BTreeMap::new(),
        frozen: BTreeMap::new(),
    };
    for _ in 0..3 {
        let uuid = sr.create_vdi("disk", VDI_BYTES).unwrap();
        model.live.insert(uuid, vec![0; VDI_BYTES as usize]);
    }
    let extent = EXTENT;
    let mut written = 0;
    for batch in 0..40u64 {
        let what = format!("seed {seed} {order:?} batch {batch}");
        // (vdi, offset, len) of the batch's writes and discards, to keep them disjoint.
        let mut touched: Vec<(Uuid, (u64, u64))> = Vec::new();
        let mut writes: BTreeMap<u64, (Uuid, u64, Vec<u8>)> = BTreeMap::new();
        let mut discards: BTreeMap<u64, (Uuid, u64, u64)> = BTreeMap::new();
        let mut reads: BTreeMap<u64, (Uuid, u64, u64)> = BTreeMap::new();
        let vdis: Vec<Uuid> = model.live.keys().copied().collect();
        for tag in 0..(4 + rng.below(24)) {
            let vdi = vdis[rng.below(vdis.len() as u64) as usize];
            let offset = rng.below(VDI_BYTES / SECTOR) * SECTOR;
            let len = ((1 + rng.below(24)) * SECTOR).min(VDI_BYTES - offset);
            let range = (offset, len);
            let clash = touched.iter().any(|&(v, r)| v == vdi && overlaps(r, range));
            match rng.below(10) {
                0..=5 if !clash => {
                    let data = pattern((seed + batch * 31 + tag) as u8, len as usize);
                    sr.submit_io(
                        vdi,
                        tag,
                        VdiIo::Write {
                            offset,
                            buffer: data.clone(),
                        },
                    )
                    .unwrap();
                    touched.push((vdi, range));
                    writes.insert(tag, (vdi, offset, data));
                }
                6 if !clash => {
                    // Whole extents, so the model knows what reads back.
                    let first = rng.below(VDI_BYTES / extent);
                    let count = (1 + rng.below(3)).min(VDI_BYTES / extent - first);
                    let range = (first * extent, count * extent);
                    if touched.iter().any(|&(v, r)| v == vdi && overlaps(r, range)) {
                        continue;
                    }
                    sr.submit_io(
                        vdi,
                        tag,
                        VdiIo::Discard {
                            offset: range.0,
                            len: range.1,
                        },
                    )
                    .unwrap();
                    touched.push((vdi, range));
                    discards.insert(tag, (vdi, range.0, range.1));
                }
                7 => {
                    sr.submit_io(vdi, tag, VdiIo::Flush).unwrap();
                }
                _ => {
                    // Reads of ranges no write of the batch touches: defined.
                    if clash {
                        continue;
                    }
                    sr.submit_io(
                        vdi,
                        tag,
                        VdiIo::Read {
                            offset,
                            buffer: vec![0xa5; len as usize],
                        },
                    )
                    .unwrap();
                    touched.push((vdi, range));
                    reads.insert(tag, (vdi, offset, len));
                }
            }
        }
        // Reads see the state before the batch.
        let before: BTreeMap<Uuid, Vec<u8>> = model.live.clone();
        let mut polls = 0;
        while sr.io_in_flight() > 0 {
            sr.poll_io();
            polls += 1;
            assert!(polls < 1_000_000, "{what}: the queue never drained");
        }
        for completion in std::iter::from_fn(|| sr.take_io_completion()) {
            let tag = completion.tag;
            match completion.kind {
                VdiIoKind::Write => {
                    let (vdi, offset, data) = writes.remove(&tag).unwrap();
                    match completion.result {
                        Ok(()) => {
                            written += 1;
                            let bytes = model.live.get_mut(&vdi).unwrap();
                            bytes[offset as usize..][..data.len()].copy_from_slice(&data);
                        }
                        // Refused at start for want of space: nothing was written.
                        Err(SrError::SrFull { .. }) => {}
                        Err(e) => panic!("{what}: write {tag}: {e:?}"),
                    }
                }
                VdiIoKind::Discard => {
                    completion.result.unwrap();
                    let (vdi, offset, len) = discards.remove(&tag).unwrap();
                    let bytes = model.live.get_mut(&vdi).unwrap();
                    bytes[offset as usize..][..len as usize].fill(0);
                }
                VdiIoKind::Read => {
                    completion.result.unwrap();
                    let (vdi, offset, len) = reads.remove(&tag).unwrap();
                    assert_eq!(
                        completion.buffer.unwrap(),
                        before[&vdi][offset as usize..][..len as usize],
                        "{what}: read {tag}"
                    );
                }
                VdiIoKind::Flush => completion.result.unwrap(),
            }
        }
        assert!(writes.is_empty() && discards.is_empty() && reads.is_empty());
        // Between batches: metadata work, and now and then a power cycle after a flush.
        match rng.below(8) {
            0 if model.frozen.len() < 3 => {
                let source = vdis[rng.below(vdis.len() as u64) as usize];
                let snap = sr.snapshot_vdi(source).unwrap();
                model.frozen.insert(snap, model.live[&source].clone());
            }
            1 if !model.frozen.is_empty() && model.live.len() < 5 => {
                let (&snap, data) = model.frozen.iter().next().unwrap();
                let data = data.clone();
                let clone = sr.clone_vdi(snap, "clone").unwrap();
                model.live.insert(clone, data);
            }
            2 if !model.frozen.is_empty() => {
                let snap = *model.frozen.keys().next().unwrap();
                sr.destroy_vdi(snap).unwrap();
                model.frozen.remove(&snap);
            }
            3 => {
                sr.flush().unwrap();
                drop(sr);
                disk.power_cycle(CacheLoss::DropAll);
                sr = Sr::attach(disk.clone()).unwrap();
            }
            _ => {}
        }
        for (uuid, bytes) in model.live.iter().chain(&model.frozen) {
            assert!(
                &read_all(&mut sr, *uuid) == bytes,
                "{what}: VDI {uuid} differs from the model"
            );
        }
        sr.check()
            .unwrap_or_else(|e| panic!("{what}: check failed: {e:?}"));
    }
    assert!(written > 100, "seed {seed}: only {written} writes landed");
}

#[test]
fn random_queued_work_matches_the_model() {
    for seed in 1..=12 {
        for order in [CompletionOrder::Fifo, CompletionOrder::Lifo] {
            run(seed, order);
        }
    }
}
