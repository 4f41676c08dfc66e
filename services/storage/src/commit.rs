//! Writing a new metadata tree and switching the root: the single durability point of the SR.
//!
//! Order: (1) write every changed map chunk and the whole catalog into metadata blocks that
//! neither of the two most recent roots uses, (2) flush — this also makes all data written so
//! far durable, (3) write the root record into the slot not holding the committed root,
//! (4) flush. A crash before (3) completes leaves the old root in charge; after (4) the new
//! one. Nothing the committed root references is ever overwritten, so every crash point leaves
//! one complete, checksummed tree.

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

impl<D: BlockDevice> Sr<D> {
    fn write_metadata_block(
        &mut self,
        picker: &mut BlockPicker,
        kind: BlockKind,
        generation: u64,
        payload: &[u8],
    ) -> Result<BlockRef, SrError> {
        let (block, crc) =
            seal(kind, self.sr_uuid, generation, payload).ok_or(SrError::SrFull {
                space: Space::Metadata,
            })?;
        let index = picker.pick(self)?;
        io::write_at(
            &mut self.dev,
            self.geometry.metadata_block_offset(index),
            &block,
        )?;
        Ok(BlockRef { block: index, crc })
    }

    /// Commits the in-memory state as a new root. On failure before the root write the
    /// in-memory state is unchanged; after it, the SR is poisoned (`NeedsReattach`).
    pub(crate) fn commit(&mut self) -> Result<(), SrError> {
        self.ensure_usable()?;
        let generation = self.generation + 1;
        let mut picker = BlockPicker {
            reachable: vec![false; self.metadata.blocks()],
            cursor: 0,
        };
        // (1a) Changed map chunks.
        let mut updates: Vec<(Uuid, usize, Persisted)> = Vec::new();
        let mut records: Vec<VdiRecord> = Vec::with_capacity(self.vdis.len());
        let uuids: Vec<Uuid> = self.vdis.keys().copied().collect();
        for uuid in uuids {
            let Some(vdi) = self.vdis.get(&uuid) else {
                continue;
            };
            let slots: Vec<_> = vdi.chunks.clone();
            let mut chunk_refs = Vec::with_capacity(slots.len());
            for (index, slot) in slots.iter().enumerate() {
                let reference = match slot.persisted {
                    Persisted::Hole => None,
                    Persisted::Clean(reference) => {
                        if let Some(used) = picker.reachable.get_mut(reference.block as usize) {
                            *used = true;
                        }
                        Some(reference)
                    }
                    Persisted::Dirty => {
                        let reference = match &slot.entries {
                            Some(entries) if entries.iter().any(|&p| p != HOLE) => {
                                let record = chunk_record(index, entries);
                                let payload = encode(&record)?;
                                let reference = self.write_metadata_block(
                                    &mut picker,
                                    BlockKind::MapChunk,
                                    generation,
                                    &payload,
                                )?;
                                updates.push((uuid, index, Persisted::Clean(reference)));
                                Some(reference)
                            }
                            _ => {
                                updates.push((uuid, index, Persisted::Hole));
                                None
                            }
                        };
                        reference
                    }
                };
                chunk_refs.push(reference);
            }
            let Some(vdi) = self.vdis.get(&uuid) else {
                continue;
            };
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
            catalog_refs.push(self.write_metadata_block(
                &mut picker,
                BlockKind::Catalog,
                generation,
                piece,
            )?);
        }
        // (2) Children (and all data written so far) durable before the root names them.
        io::flush(&mut self.dev)?;
        // (3) The root record.
        let root = RootRecord {
            generation,
            next_vdi_serial: self.next_vdi_serial,
            catalog_len: u32::try_from(catalog.len()).map_err(|_| SrError::SrFull {
                space: Space::Metadata,
            })?,
            catalog: catalog_refs,
        };
        let payload = encode(&root)?;
        let (block, _) =
            seal(BlockKind::Root, self.sr_uuid, generation, &payload).ok_or(SrError::SrFull {
                space: Space::Metadata,
            })?;
        let slot_offset = ROOT_SLOT_BLOCKS[self.next_slot] * BLOCK_SIZE as u64;
        // From here on the device may hold either root; if we cannot tell, stop.
        let written = io::write_at(&mut self.dev, slot_offset, &block)
            .and_then(|()| io::flush(&mut self.dev));
        if let Err(error) = written {
            self.poisoned = true;
            return Err(error);
        }
        // (5) The new root is in charge.
        for (uuid, index, persisted) in updates {
            if let Some(slot) = self
                .vdis
                .get_mut(&uuid)
                .and_then(|vdi| vdi.chunks.get_mut(index))
            {
                slot.persisted = persisted;
            }
        }
        self.metadata.committed_now(picker.reachable);
        self.extents.committed_now();
        self.generation = generation;
        self.next_slot ^= 1;
        self.dirty = false;
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
