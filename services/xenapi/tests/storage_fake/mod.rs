//! An in-memory storage manager behind the `StorageBackend` trait: SRs of a fixed size,
//! sparse VDIs (unwritten 64 KiB blocks are holes), snapshots and clones that copy data,
//! flush counting and planned failures (of writes and renames). Handles share one state, so
//! a test can look inside while the service owns the backend.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use keel_xenapi::{SrFacts, StorageBackend, StorageError, VdiFacts};

pub const SECTOR: u64 = 512;
const BLOCK: u64 = 64 * 1024;

#[derive(Clone, Debug)]
pub struct FakeVdi {
    pub facts: VdiFacts,
    /// Written 64 KiB blocks by index.
    pub blocks: BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug)]
pub struct FakeSr {
    pub uuid: String,
    pub device: String,
    pub size: u64,
    pub vdis: BTreeMap<String, FakeVdi>,
}

#[derive(Default, Debug)]
pub struct State {
    pub srs: Vec<FakeSr>,
    pub serial: u64,
    pub flushes: u64,
    /// Bytes written (by `write`) when each flush happened.
    pub written_at_flush: Vec<u64>,
    pub written: u64,
    pub writes: u64,
    /// Fail every write after this many more.
    pub fail_writes_after: Option<u64>,
    /// Fail every rename (as a disk error would).
    pub fail_renames: bool,
}

#[derive(Clone, Default)]
pub struct FakeStorage(pub Rc<RefCell<State>>);

impl FakeStorage {
    /// Two SRs of `size` bytes: `sr-a` on nvme-a, `sr-b` on virtio-b.
    pub fn two_srs(size: u64) -> Self {
        let fake = FakeStorage::default();
        for (uuid, device) in [("sr-a", "nvme-a"), ("sr-b", "virtio-b")] {
            fake.0.borrow_mut().srs.push(FakeSr {
                uuid: uuid.into(),
                device: device.into(),
                size,
                vdis: BTreeMap::new(),
            });
        }
        fake
    }

    /// Adds a VDI behind the service's back (as if created before boot).
    pub fn add_vdi(&self, sr: &str, name: &str, size: u64) -> String {
        let mut state = self.0.borrow_mut();
        state.serial += 1;
        let uuid = format!("00000000-0000-4000-8000-{:012}", state.serial);
        let vdi = FakeVdi {
            facts: VdiFacts {
                uuid: uuid.clone(),
                name: name.into(),
                virtual_size: size,
                physical_utilisation: 0,
                read_only: false,
                is_snapshot: false,
                snapshot_of: None,
                parent: None,
            },
            blocks: BTreeMap::new(),
        };
        state
            .srs
            .iter_mut()
            .find(|s| s.uuid == sr)
            .unwrap()
            .vdis
            .insert(uuid.clone(), vdi);
        uuid
    }

    pub fn remove_vdi(&self, sr: &str, uuid: &str) {
        let mut state = self.0.borrow_mut();
        state
            .srs
            .iter_mut()
            .find(|s| s.uuid == sr)
            .unwrap()
            .vdis
            .remove(uuid);
    }

    pub fn vdi(&self, sr: &str, uuid: &str) -> Option<FakeVdi> {
        let state = self.0.borrow();
        state
            .srs
            .iter()
            .find(|s| s.uuid == sr)?
            .vdis
            .get(uuid)
            .cloned()
    }

    /// The bytes of a VDI (holes as zeros).
    pub fn data(&self, sr: &str, uuid: &str) -> Vec<u8> {
        let vdi = self.vdi(sr, uuid).unwrap();
        let mut out = vec![0u8; vdi.facts.virtual_size as usize];
        for (index, block) in &vdi.blocks {
            let at = (index * BLOCK) as usize;
            let n = block.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&block[..n]);
        }
        out
    }

    pub fn vdis_in(&self, sr: &str) -> usize {
        let state = self.0.borrow();
        state
            .srs
            .iter()
            .find(|s| s.uuid == sr)
            .map_or(0, |s| s.vdis.len())
    }

    pub fn used(sr: &FakeSr) -> u64 {
        sr.vdis
            .values()
            .map(|v| v.blocks.len() as u64 * BLOCK)
            .sum()
    }
}

fn facts_of(vdi: &FakeVdi) -> VdiFacts {
    let mut facts = vdi.facts.clone();
    facts.physical_utilisation = vdi.blocks.len() as u64 * BLOCK;
    facts
}

impl State {
    fn sr(&mut self, sr: &str) -> Result<&mut FakeSr, StorageError> {
        self.srs
            .iter_mut()
            .find(|s| s.uuid == sr)
            .ok_or_else(|| StorageError::SrNotFound(sr.into()))
    }

    fn vdi(&mut self, sr: &str, vdi: &str) -> Result<&mut FakeVdi, StorageError> {
        self.sr(sr)?
            .vdis
            .get_mut(vdi)
            .ok_or_else(|| StorageError::VdiNotFound(vdi.into()))
    }

    fn fresh(&mut self) -> String {
        self.serial += 1;
        format!("00000000-0000-4000-8000-{:012}", self.serial)
    }

    fn check_size(size: u64) -> Result<(), StorageError> {
        if size == 0 || !size.is_multiple_of(SECTOR) || size > 1 << 40 {
            Err(StorageError::InvalidSize(size))
        } else {
            Ok(())
        }
    }

    fn derive(
        &mut self,
        sr: &str,
        vdi: &str,
        make: impl FnOnce(&mut FakeVdi),
    ) -> Result<VdiFacts, StorageError> {
        let mut copy = self.vdi(sr, vdi)?.clone();
        let uuid = self.fresh();
        copy.facts.uuid = uuid.clone();
        make(&mut copy);
        let facts = facts_of(&copy);
        let target = self.sr(sr)?;
        if FakeStorage::used(target) + copy.blocks.len() as u64 * BLOCK > target.size {
            return Err(StorageError::SrFull);
        }
        target.vdis.insert(uuid, copy);
        Ok(facts)
    }
}

impl StorageBackend for FakeStorage {
    fn srs(&self) -> Vec<SrFacts> {
        self.0
            .borrow()
            .srs
            .iter()
            .map(|sr| SrFacts {
                uuid: sr.uuid.clone(),
                device: sr.device.clone(),
                bus: if sr.device.starts_with("nvme") {
                    "nvme"
                } else {
                    "virtio-blk"
                }
                .into(),
                physical_size: sr.size,
                physical_utilisation: FakeStorage::used(sr),
                virtual_allocation: sr.vdis.values().map(|v| v.facts.virtual_size).sum(),
                sector_size: SECTOR as u32,
            })
            .collect()
    }

    fn vdis(&self, sr: &str) -> Result<Vec<VdiFacts>, StorageError> {
        let state = self.0.borrow();
        let sr = state
            .srs
            .iter()
            .find(|s| s.uuid == sr)
            .ok_or_else(|| StorageError::SrNotFound(sr.into()))?;
        Ok(sr.vdis.values().map(facts_of).collect())
    }

    fn create_vdi(&mut self, sr: &str, name: &str, size: u64) -> Result<VdiFacts, StorageError> {
        State::check_size(size)?;
        if name.is_empty() || name.len() > 255 {
            return Err(StorageError::InvalidName);
        }
        let mut state = self.0.borrow_mut();
        state.sr(sr)?;
        let uuid = state.fresh();
        let vdi = FakeVdi {
            facts: VdiFacts {
                uuid: uuid.clone(),
                name: name.into(),
                virtual_size: size,
                physical_utilisation: 0,
                read_only: false,
                is_snapshot: false,
                snapshot_of: None,
                parent: None,
            },
            blocks: BTreeMap::new(),
        };
        let facts = facts_of(&vdi);
        state.sr(sr)?.vdis.insert(uuid, vdi);
        Ok(facts)
    }

    fn destroy_vdi(&mut self, sr: &str, vdi: &str) -> Result<(), StorageError> {
        let mut state = self.0.borrow_mut();
        state.vdi(sr, vdi)?;
        state.sr(sr)?.vdis.remove(vdi);
        Ok(())
    }

    fn resize_vdi(&mut self, sr: &str, vdi: &str, size: u64) -> Result<VdiFacts, StorageError> {
        State::check_size(size)?;
        let mut state = self.0.borrow_mut();
        let v = state.vdi(sr, vdi)?;
        if v.facts.read_only {
            return Err(StorageError::ReadOnly(vdi.into()));
        }
        v.facts.virtual_size = size;
        Ok(facts_of(v))
    }

    fn set_vdi_name(&mut self, sr: &str, vdi: &str, name: &str) -> Result<(), StorageError> {
        let mut state = self.0.borrow_mut();
        if state.fail_renames {
            return Err(StorageError::Failed("planned rename failure".into()));
        }
        if name.is_empty() || name.len() > 255 {
            return Err(StorageError::InvalidName);
        }
        state.vdi(sr, vdi)?.facts.name = name.into();
        Ok(())
    }

    fn snapshot_vdi(&mut self, sr: &str, vdi: &str) -> Result<VdiFacts, StorageError> {
        let source = vdi.to_string();
        self.0.borrow_mut().derive(sr, vdi, |v| {
            v.facts.read_only = true;
            v.facts.is_snapshot = true;
            v.facts.snapshot_of = Some(source.clone());
            v.facts.parent = Some(source);
        })
    }

    fn clone_vdi(&mut self, sr: &str, vdi: &str, name: &str) -> Result<VdiFacts, StorageError> {
        let source = vdi.to_string();
        let name = name.to_string();
        self.0.borrow_mut().derive(sr, vdi, |v| {
            v.facts.name = name;
            v.facts.read_only = false;
            v.facts.is_snapshot = false;
            v.facts.snapshot_of = None;
            v.facts.parent = Some(source);
        })
    }

    fn copy_vdi(&mut self, sr: &str, vdi: &str, name: &str) -> Result<VdiFacts, StorageError> {
        let name = name.to_string();
        self.0.borrow_mut().derive(sr, vdi, |v| {
            v.facts.name = name;
            v.facts.read_only = false;
            v.facts.is_snapshot = false;
            v.facts.snapshot_of = None;
            v.facts.parent = None;
        })
    }

    fn read(
        &mut self,
        sr: &str,
        vdi: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), StorageError> {
        let mut state = self.0.borrow_mut();
        let v = state.vdi(sr, vdi)?;
        let len = out.len() as u64;
        if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
            return Err(StorageError::Unaligned { offset, len });
        }
        if offset + len > v.facts.virtual_size {
            return Err(StorageError::OutOfRange { offset, len });
        }
        let mut done = 0usize;
        while done < out.len() {
            let pos = offset + done as u64;
            let within = (pos % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(out.len() - done);
            match v.blocks.get(&(pos / BLOCK)) {
                Some(block) => out[done..done + n].copy_from_slice(&block[within..within + n]),
                None => out[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, sr: &str, vdi: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let mut state = self.0.borrow_mut();
        if let Some(left) = state.fail_writes_after {
            if left == 0 {
                return Err(StorageError::Failed("planned write failure".into()));
            }
            state.fail_writes_after = Some(left - 1);
        }
        state.writes += 1;
        state.written += data.len() as u64;
        let size = state.sr(sr)?.size;
        let used = FakeStorage::used(state.sr(sr)?);
        let v = state.vdi(sr, vdi)?;
        let len = data.len() as u64;
        if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
            return Err(StorageError::Unaligned { offset, len });
        }
        if offset + len > v.facts.virtual_size {
            return Err(StorageError::OutOfRange { offset, len });
        }
        if v.facts.read_only {
            return Err(StorageError::ReadOnly(vdi.into()));
        }
        let new_blocks = (offset / BLOCK..=(offset + len - 1) / BLOCK)
            .filter(|b| !v.blocks.contains_key(b))
            .count() as u64;
        if used + new_blocks * BLOCK > size {
            return Err(StorageError::SrFull);
        }
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let within = (pos % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(data.len() - done);
            let block = v
                .blocks
                .entry(pos / BLOCK)
                .or_insert_with(|| vec![0; BLOCK as usize]);
            block[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn flush(&mut self, sr: &str) -> Result<(), StorageError> {
        let mut state = self.0.borrow_mut();
        state.sr(sr)?;
        state.flushes += 1;
        let written = state.written;
        state.written_at_flush.push(written);
        Ok(())
    }
}
