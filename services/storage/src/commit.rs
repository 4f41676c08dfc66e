//! Writing a new metadata tree and switching the root: the single durability point of the SR.
//!
//! Order: (1) write every changed map chunk and the whole catalog into metadata blocks that
//! neither of the two most recent roots uses, (2) flush — this also makes all data written so
//! far durable, (3) write the root record into the slot not holding the committed root,
//! (4) flush. A crash before (3) completes leaves the old root in charge; after (4) the new
//! one. Nothing the committed root references is ever overwritten, so every crash point leaves
//! one complete, checksummed tree.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use keel_block::BlockDevice;

use crate::error::{Space, SrError};
use crate::frame::{seal, BlockKind, PAYLOAD_MAX};
use crate::io;
use crate::layout::{BLOCK_SIZE, CHUNK_ENTRIES, ROOT_SLOT_BLOCKS};
use crate::records::{BlockRef, CatalogRecord, MapChunkRecord, RootRecord, VdiRecord};
use crate::sr::Sr;
use crate::vdi::{Persisted, HOLE};
use crate::Uuid;

/// Chooses metadata blocks for one commit.
struct BlockPicker {
    /// Blocks the new tree uses (unchanged ones and newly written ones).
    reachable: Vec<bool>,
    cursor: usize,
}

impl BlockPicker {
    fn pick<D: BlockDevice>(&mut self, sr: &Sr<D>) -> Result<u32, SrError> {
        while self.cursor < self.reachable.len() {
            let block = self.cursor;
            self.cursor += 1;
            if !sr.metadata.pinned(block) && !self.reachable[block] {
                self.reachable[block] = true;
                return u32::try_from(block).map_err(|_| SrError::SrFull {
                    space: Space::Metadata,
                });
            }
        }
        Err(SrError::SrFull {
            space: Space::Metadata,
        })
    }
}

/// A chunk a commit wrote: (VDI, chunk index, the entries it saw, what it is on disk now).
type ChunkUpdate = (Uuid, usize, Option<Arc<Vec<u32>>>, Persisted);

/// Everything one commit writes, worked out in memory before the first write: the metadata
/// blocks of the new tree, then the root record. The synchronous path (metadata operations)
/// and the queued path (a VDI flush) both execute a plan and finish it with
/// [`Sr::finish_commit`].
pub(crate) struct CommitPlan {
    pub generation: u64,
    /// (byte offset, sealed block) of every new map chunk and catalog block.
    pub blocks: Vec<(u64, Vec<u8>)>,
    /// Byte offset and sealed block of the root record.
    pub root: (u64, Vec<u8>),
    /// Chunks this commit wrote (or found to be all holes), with the entries it saw: a chunk
    /// is marked clean afterwards only if no write changed it meanwhile.
    updates: Vec<ChunkUpdate>,
    reachable: Vec<bool>,
    /// Extent reference counts of the maps this commit describes.
    live: Vec<u32>,
    /// `Sr::map_changes` when the plan was made.
    map_changes: u64,
}

impl<D: BlockDevice> Sr<D> {
    fn seal_metadata_block(
        &self,
        picker: &mut BlockPicker,
        kind: BlockKind,
        generation: u64,
        payload: &[u8],
        blocks: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<BlockRef, SrError> {
        let (block, crc) =
            seal(kind, self.sr_uuid, generation, payload).ok_or(SrError::SrFull {
                space: Space::Metadata,
            })?;
        let index = picker.pick(self)?;
        blocks.push((self.geometry.metadata_block_offset(index), block));
        Ok(BlockRef { block: index, crc })
    }

    /// Works out the commit of the in-memory state. Changes nothing.
    pub(crate) fn plan_commit(&self) -> Result<CommitPlan, SrError> {
        self.ensure_usable()?;
        let generation = self.generation + 1;
        let mut picker = BlockPicker {
            reachable: vec![false; self.metadata.blocks()],
            cursor: 0,
        };
        let mut blocks = Vec::new();
        // (1a) Changed map chunks.
        let mut updates = Vec::new();
        let mut records: Vec<VdiRecord> = Vec::with_capacity(self.vdis.len());
        for (&uuid, vdi) in &self.vdis {
            let mut chunk_refs = Vec::with_capacity(vdi.chunks.len());
            for (index, slot) in vdi.chunks.iter().enumerate() {
                let reference = match slot.persisted {
                    Persisted::Hole => None,
                    Persisted::Clean(reference) => {
                        if let Some(used) = picker.reachable.get_mut(reference.block as usize) {
                            *used = true;
                        }
                        Some(reference)
                    }
                    Persisted::Dirty => match &slot.entries {
                        Some(entries) if entries.iter().any(|&p| p != HOLE) => {
                            let payload = encode(&chunk_record(index, entries))?;
                            let reference = self.seal_metadata_block(
                                &mut picker,
                                BlockKind::MapChunk,
                                generation,
                                &payload,
                                &mut blocks,
                            )?;
                            updates.push((
                                uuid,
                                index,
                                slot.entries.clone(),
                                Persisted::Clean(reference),
                            ));
                            Some(reference)
                        }
                        _ => {
                            updates.push((uuid, index, slot.entries.clone(), Persisted::Hole));
                            None
                        }
                    },
                };
                chunk_refs.push(reference);
            }
            records.push(VdiRecord {
                uuid,
                name: vdi.name.clone(),
                virtual_size: vdi.virtual_size,
                read_only: vdi.read_only,
                is_snapshot: vdi.is_snapshot,
                snapshot_of: vdi.snapshot_of,
                parent: vdi.parent,
                chunks: chunk_refs,
            });
        }
        // (1b) The catalog, split over as many blocks as it needs.
        let catalog = encode(&CatalogRecord { vdis: records })?;
        let mut catalog_refs = Vec::new();
        for piece in catalog.chunks(PAYLOAD_MAX) {
            catalog_refs.push(self.seal_metadata_block(
                &mut picker,
                BlockKind::Catalog,
                generation,
                piece,
                &mut blocks,
            )?);
        }
        // (3) The root record, written after (2) the flush.
        let root = RootRecord {
            generation,
            next_vdi_serial: self.next_vdi_serial,
            catalog_len: u32::try_from(catalog.len()).map_err(|_| SrError::SrFull {
                space: Space::Metadata,
            })?,
            catalog: catalog_refs,
        };
        let payload = encode(&root)?;
        let (root_block, _) =
            seal(BlockKind::Root, self.sr_uuid, generation, &payload).ok_or(SrError::SrFull {
                space: Space::Metadata,
            })?;
        let slot_offset = ROOT_SLOT_BLOCKS[self.next_slot] * BLOCK_SIZE as u64;
        Ok(CommitPlan {
            generation,
            blocks,
            root: (slot_offset, root_block),
            updates,
            reachable: picker.reachable,
            live: self.extents.live().to_vec(),
            map_changes: self.map_changes,
        })
    }

    /// The new root is durable: it is in charge now.
    pub(crate) fn finish_commit(&mut self, plan: CommitPlan) {
        for (uuid, index, seen, persisted) in plan.updates {
            let Some(slot) = self
                .vdis
                .get_mut(&uuid)
                .and_then(|vdi| vdi.chunks.get_mut(index))
            else {
                continue;
            };
            let unchanged = match (&slot.entries, &seen) {
                (Some(now), Some(then)) => Arc::ptr_eq(now, then),
                (None, None) => true,
                _ => false,
            };
            if unchanged && slot.persisted == Persisted::Dirty {
                slot.persisted = persisted;
            }
        }
        self.metadata.committed_now(plan.reachable);
        self.extents.committed_now(plan.live);
        self.generation = plan.generation;
        self.next_slot ^= 1;
        self.dirty = self.map_changes != plan.map_changes;
    }

    /// Commits the in-memory state as a new root, waiting for the device. Queued VDI I/O is
    /// drained first. On failure before the root write the in-memory state is unchanged;
    /// after it, the SR is poisoned (`NeedsReattach`).
    pub(crate) fn commit(&mut self) -> Result<(), SrError> {
        self.drain()?;
        let plan = self.plan_commit()?;
        for (offset, block) in &plan.blocks {
            io::write_at(&mut self.dev, *offset, block)?;
        }
        // (2) Children (and all data written so far) durable before the root names them.
        io::flush(&mut self.dev)?;
        // From here on the device may hold either root; if we cannot tell, stop.
        let written = io::write_at(&mut self.dev, plan.root.0, &plan.root.1)
            .and_then(|()| io::flush(&mut self.dev));
        if let Err(error) = written {
            self.poisoned = true;
            return Err(error);
        }
        self.finish_commit(plan);
        Ok(())
    }
}

fn chunk_record(index: usize, entries: &[u32]) -> MapChunkRecord {
    let used = entries
        .iter()
        .rposition(|&p| p != HOLE)
        .map_or(0, |last| last + 1);
    MapChunkRecord {
        first_virtual_extent: (index * CHUNK_ENTRIES) as u64,
        entries: entries
            .iter()
            .take(used)
            .map(|&p| (p != HOLE).then_some(p))
            .collect(),
    }
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, SrError> {
    postcard::to_allocvec(value).map_err(|_| SrError::Encode)
}
