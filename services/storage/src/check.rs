//! A consistency check of the attached SR (an fsck): reference counts recomputed from every
//! map must equal the allocator's, shared extents must sit at the same virtual position in
//! every sharer, and the committed tree on disk must validate and match memory.

use alloc::vec;

use keel_block::BlockDevice;

use crate::error::SrError;
use crate::recovery::{load_tree, read_roots};
use crate::sr::Sr;

/// A failed consistency check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    /// The allocator's count for `extent` disagrees with the maps.
    RefcountMismatch {
        extent: u32,
        maps: u32,
        allocator: u32,
    },
    /// A physical extent is mapped at two different virtual positions (never legitimate:
    /// sharing only arises from snapshots and clones, which keep positions).
    ExtentDoublyUsed { extent: u32 },
    /// The committed root on disk does not validate, or differs from memory.
    OnDisk(SrError),
    /// The committed tree on disk describes different VDIs or maps than memory.
    DiskMemoryMismatch,
}

/// Totals from a successful check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    pub vdis: usize,
    pub extents_in_use: u64,
    /// Metadata blocks the committed root's tree uses.
    pub metadata_blocks_in_use: u64,
    pub generation: u64,
}

impl<D: BlockDevice> Sr<D> {
    /// Checks the SR's invariants; see [`CheckFailure`]. The on-disk comparison is made only
    /// when nothing is waiting for a flush.
    pub fn check(&mut self) -> Result<CheckReport, CheckFailure> {
        self.drain().map_err(CheckFailure::OnDisk)?;
        let count = self.geometry.extent_count as usize;
        let mut refs = vec![0u32; count];
        let mut position = vec![u64::MAX; count];
        for vdi in self.vdis.values() {
            for (vext, extent) in vdi.mapped() {
                let e = extent as usize;
                let (Some(r), Some(p)) = (refs.get_mut(e), position.get_mut(e)) else {
                    return Err(CheckFailure::ExtentDoublyUsed { extent });
                };
                *r += 1;
                if *p != u64::MAX && *p != vext {
                    return Err(CheckFailure::ExtentDoublyUsed { extent });
                }
                *p = vext;
            }
        }
        for (extent, (&maps, &allocator)) in refs.iter().zip(self.extents.live()).enumerate() {
            if maps != allocator {
                return Err(CheckFailure::RefcountMismatch {
                    extent: extent as u32,
                    maps,
                    allocator,
                });
            }
        }
        if !self.dirty && !self.poisoned {
            // The committed root is in the slot the next commit will not write.
            let current_slot = self.next_slot ^ 1;
            let roots = read_roots(&mut self.dev, self.sr_uuid)
                .map_err(CheckFailure::OnDisk)?
                .roots;
            let newest = roots.iter().find(|(slot, _)| *slot == current_slot).ok_or(
                CheckFailure::OnDisk(SrError::corrupt(crate::error::Corruption::NoValidRoot)),
            )?;
            if newest.1.generation != self.generation {
                return Err(CheckFailure::DiskMemoryMismatch);
            }
            let tree = load_tree(&mut self.dev, &self.geometry, self.sr_uuid, &newest.1)
                .map_err(CheckFailure::OnDisk)?;
            if tree.refs != refs || tree.vdis.len() != self.vdis.len() {
                return Err(CheckFailure::DiskMemoryMismatch);
            }
            for (uuid, on_disk) in &tree.vdis {
                let Some(in_memory) = self.vdis.get(uuid) else {
                    return Err(CheckFailure::DiskMemoryMismatch);
                };
                let same = on_disk.name == in_memory.name
                    && on_disk.virtual_size == in_memory.virtual_size
                    && on_disk.read_only == in_memory.read_only
                    && on_disk.is_snapshot == in_memory.is_snapshot
                    && on_disk.parent == in_memory.parent
                    && on_disk.snapshot_of == in_memory.snapshot_of
                    && on_disk.mapped().eq(in_memory.mapped());
                if !same {
                    return Err(CheckFailure::DiskMemoryMismatch);
                }
            }
        }
        Ok(CheckReport {
            vdis: self.vdis.len(),
            extents_in_use: self.extents.in_use(),
            metadata_blocks_in_use: self.metadata.committed_count(),
            generation: self.generation,
        })
    }
}
