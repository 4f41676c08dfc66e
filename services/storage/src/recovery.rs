//! Attach: find the superblock, pick the newest root whose whole tree is valid, and rebuild
//! the in-memory state (maps, reference counts, pinned blocks) from it.
//!
//! Recovery writes nothing. A commit that was cut short left either an unreadable root slot or
//! a root slot still holding the older root; either way the newest fully valid tree is the
//! last completed commit, and the blocks an interrupted commit wrote are simply unreferenced.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use keel_block::BlockDevice;
use serde::de::DeserializeOwned;

use crate::engine::Engine;
use crate::error::{Corruption, FrameProblem, Inconsistency, SrError};
use crate::frame::{has_any_magic, open, BlockKind};
use crate::io;
use crate::layout::{
    backup_superblock_offset, check_sector_size, chunks_for, Geometry, BLOCK_SIZE, CHUNK_ENTRIES,
    FORMAT_VERSION, MAX_NAME_LEN, MAX_VIRTUAL_EXTENTS, ROOT_SLOT_BLOCKS,
};
use crate::records::{BlockRef, CatalogRecord, MapChunkRecord, RootRecord, SuperblockRecord};
use crate::space::{ExtentTable, MetadataSpace};
use crate::sr::{RecoveryReport, Sr};
use crate::vdi::{ChunkSlot, Persisted, Vdi, HOLE};
use crate::Uuid;

/// A fully validated metadata tree.
pub(crate) struct Tree {
    pub generation: u64,
    pub next_vdi_serial: u64,
    pub vdis: BTreeMap<Uuid, Vdi>,
    /// Metadata blocks the tree uses.
    pub blocks: Vec<bool>,
    /// References to each physical extent.
    pub refs: Vec<u32>,
}

pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8], block: u32) -> Result<T, SrError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok(value),
        _ => Err(SrError::corrupt(Corruption::MetadataBlock {
            block,
            problem: FrameProblem::Decode,
        })),
    }
}

/// Reads the primary superblock, or the backup if the primary is damaged.
pub(crate) fn read_superblock(dev: &mut impl BlockDevice) -> Result<SuperblockRecord, SrError> {
    let capacity = dev.info().capacity_bytes();
    let mut locations = vec![0u64];
    if let Some(backup) = backup_superblock_offset(capacity) {
        locations.push(backup);
    }
    let mut damage = None;
    for offset in locations {
        let block = io::read_block(dev, offset)?;
        let problem = match open(BlockKind::Superblock, &block, None) {
            Ok(opened) => {
                match postcard::take_from_bytes::<u32>(opened.payload) {
                    Ok((version, _)) if version != FORMAT_VERSION => {
                        return Err(SrError::UnsupportedVersion(version))
                    }
                    _ => {}
                }
                match postcard::take_from_bytes::<SuperblockRecord>(opened.payload) {
                    Ok((record, [])) if record.sr == opened.sr => return Ok(record),
                    _ => FrameProblem::Decode,
                }
            }
            Err(problem) => problem,
        };
        if has_any_magic(&block) {
            damage.get_or_insert(problem);
        }
    }
    match damage {
        Some(problem) => Err(SrError::corrupt(Corruption::Superblock(problem))),
        None => Err(SrError::NotAnSr),
    }
}

/// Checks a superblock against the device and turns it into a geometry.
fn geometry_of(record: &SuperblockRecord, dev: &impl BlockDevice) -> Result<Geometry, SrError> {
    let info = dev.info();
    check_sector_size(info.sector_size)?;
    let bad = SrError::inconsistent(Inconsistency::Geometry);
    if record.sector_size != info.sector_size {
        return Err(bad);
    }
    let planned = Geometry::plan(
        record.sector_size,
        info.capacity_bytes(),
        record.extent_size,
        Some(record.metadata_blocks),
    )
    .map_err(|_| bad.clone())?;
    if planned.data_start != record.data_start
        || planned.backup_superblock != record.backup_superblock
        || planned.extent_count != record.extent_count
    {
        return Err(bad);
    }
    Ok(planned)
}

/// Reads and checks one metadata block against the reference its parent holds.
fn read_child(
    dev: &mut impl BlockDevice,
    geometry: &Geometry,
    sr: Uuid,
    kind: BlockKind,
    reference: BlockRef,
    root_generation: u64,
) -> Result<Vec<u8>, SrError> {
    if reference.block >= geometry.metadata_blocks {
        return Err(SrError::inconsistent(Inconsistency::BlockOutOfRange));
    }
    let block = io::read_block(dev, geometry.metadata_block_offset(reference.block))?;
    let fail = |problem| {
        SrError::corrupt(Corruption::MetadataBlock {
            block: reference.block,
            problem,
        })
    };
    let opened = open(kind, &block, Some(sr)).map_err(fail)?;
    if opened.crc != reference.crc {
        return Err(fail(FrameProblem::ParentChecksum));
    }
    if opened.generation > root_generation {
        return Err(fail(FrameProblem::Generation));
    }
    Ok(opened.payload.to_vec())
}

/// Loads and validates the whole tree under `root`.
pub(crate) fn load_tree(
    dev: &mut impl BlockDevice,
    geometry: &Geometry,
    sr: Uuid,
    root: &RootRecord,
) -> Result<Tree, SrError> {
    let mut blocks = vec![false; geometry.metadata_blocks as usize];
    let mut refs = vec![0u32; geometry.extent_count as usize];
    let mut catalog_bytes = Vec::new();
    for reference in &root.catalog {
        let payload = read_child(
            dev,
            geometry,
            sr,
            BlockKind::Catalog,
            *reference,
            root.generation,
        )?;
        catalog_bytes.extend_from_slice(&payload);
        if let Some(used) = blocks.get_mut(reference.block as usize) {
            *used = true;
        }
    }
    if catalog_bytes.len() != root.catalog_len as usize {
        return Err(SrError::inconsistent(Inconsistency::CatalogLength));
    }
    let first_block = root.catalog.first().map_or(0, |r| r.block);
    let catalog: CatalogRecord = decode(&catalog_bytes, first_block)?;
    let sector = u64::from(geometry.sector_size);
    let mut loaded: BTreeMap<u32, Arc<Vec<u32>>> = BTreeMap::new();
    let mut vdis = BTreeMap::new();
    for record in catalog.vdis {
        let extents = geometry.extents_for(record.virtual_size);
        if record.virtual_size == 0
            || !record.virtual_size.is_multiple_of(sector)
            || extents > MAX_VIRTUAL_EXTENTS
            || record.chunks.len() != chunks_for(extents)
            || record.name.is_empty()
            || record.name.len() > MAX_NAME_LEN
        {
            return Err(SrError::inconsistent(Inconsistency::VdiSize));
        }
        let mut chunks = Vec::with_capacity(record.chunks.len());
        for (index, reference) in record.chunks.iter().enumerate() {
            let Some(reference) = *reference else {
                chunks.push(ChunkSlot::HOLE);
                continue;
            };
            let entries = match loaded.get(&reference.block) {
                Some(entries) => entries.clone(),
                None => {
                    let payload = read_child(
                        dev,
                        geometry,
                        sr,
                        BlockKind::MapChunk,
                        reference,
                        root.generation,
                    )?;
                    let chunk: MapChunkRecord = decode(&payload, reference.block)?;
                    if chunk.first_virtual_extent != (index * CHUNK_ENTRIES) as u64
                        || chunk.entries.len() > CHUNK_ENTRIES
                    {
                        return Err(SrError::inconsistent(Inconsistency::ChunkShape));
                    }
                    let mut entries = vec![HOLE; CHUNK_ENTRIES];
                    for (slot, entry) in entries.iter_mut().zip(&chunk.entries) {
                        if let Some(physical) = *entry {
                            if physical >= geometry.extent_count {
                                return Err(SrError::inconsistent(Inconsistency::ExtentOutOfRange));
                            }
                            *slot = physical;
                        }
                    }
                    let entries = Arc::new(entries);
                    loaded.insert(reference.block, entries.clone());
                    if let Some(used) = blocks.get_mut(reference.block as usize) {
                        *used = true;
                    }
                    entries
                }
            };
            // A chunk shared with a VDI of another size must not map beyond this VDI's end.
            let span =
                (extents - (index * CHUNK_ENTRIES) as u64).min(CHUNK_ENTRIES as u64) as usize;
            if entries.iter().skip(span).any(|&p| p != HOLE) {
                return Err(SrError::inconsistent(Inconsistency::ChunkShape));
            }
            for &physical in entries.iter().filter(|&&p| p != HOLE) {
                if let Some(count) = refs.get_mut(physical as usize) {
                    *count = count.saturating_add(1);
                }
            }
            chunks.push(ChunkSlot {
                entries: Some(entries),
                persisted: Persisted::Clean(reference),
            });
        }
        let vdi = Vdi {
            uuid: record.uuid,
            name: record.name,
            virtual_size: record.virtual_size,
            read_only: record.read_only,
            is_snapshot: record.is_snapshot,
            snapshot_of: record.snapshot_of,
            parent: record.parent,
            extents,
            chunks,
        };
        if vdis.insert(record.uuid, vdi).is_some() {
            return Err(SrError::inconsistent(Inconsistency::DuplicateVdi));
        }
    }
    Ok(Tree {
        generation: root.generation,
        next_vdi_serial: root.next_vdi_serial,
        vdis,
        blocks,
        refs,
    })
}

/// The intact root records with their slot numbers (newest first), and which slots hold
/// something that failed validation.
pub(crate) struct RootSlots {
    pub roots: Vec<(usize, RootRecord)>,
    pub damaged: [bool; 2],
}

/// Reads both root slots.
pub(crate) fn read_roots(dev: &mut impl BlockDevice, sr: Uuid) -> Result<RootSlots, SrError> {
    let mut roots = Vec::new();
    let mut damaged = [false; 2];
    for (slot, block_index) in ROOT_SLOT_BLOCKS.iter().enumerate() {
        let block = io::read_block(dev, block_index * BLOCK_SIZE as u64)?;
        let root = open(BlockKind::Root, &block, Some(sr))
            .ok()
            .and_then(
                |opened| match postcard::take_from_bytes::<RootRecord>(opened.payload) {
                    Ok((root, [])) if root.generation == opened.generation => Some(root),
                    _ => None,
                },
            );
        match root {
            Some(root) => roots.push((slot, root)),
            None => damaged[slot] = block.iter().any(|&b| b != 0),
        }
    }
    roots.sort_by_key(|(_, root)| core::cmp::Reverse(root.generation));
    Ok(RootSlots { roots, damaged })
}

impl<D: BlockDevice> Sr<D> {
    /// Attaches the SR on `dev`, recovering from any interrupted commit: the newest root whose
    /// whole tree checks out wins; if the newest is damaged the previous one is used and
    /// [`RecoveryReport::fell_back`] says so. Writes nothing.
    pub fn attach(mut dev: D) -> Result<Sr<D>, SrError> {
        check_sector_size(dev.info().sector_size)?;
        let superblock = read_superblock(&mut dev)?;
        let geometry = geometry_of(&superblock, &dev)?;
        let sr = superblock.sr;
        let RootSlots { roots, damaged } = read_roots(&mut dev, sr)?;
        let mut chosen = None;
        let mut newest_failed = false;
        for (position, (slot, root)) in roots.iter().enumerate() {
            match load_tree(&mut dev, &geometry, sr, root) {
                Ok(tree) => {
                    chosen = Some((position, *slot, tree));
                    break;
                }
                // A device error is not corruption: report it instead of rolling back.
                Err(SrError::Device(error)) => return Err(SrError::Device(error)),
                Err(_) => newest_failed = true,
            }
        }
        let Some((position, slot, tree)) = chosen else {
            return Err(SrError::corrupt(Corruption::NoValidRoot));
        };
        // The older root stays a fallback until the next commit overwrites it; keep what it
        // references untouched.
        let previous = match roots.get(position + 1) {
            Some((_, older)) => load_tree(&mut dev, &geometry, sr, older).ok(),
            None => None,
        };
        let (previous_blocks, previous_refs) = match previous {
            Some(older) => (older.blocks, older.refs),
            None => (
                MetadataSpace::empty(geometry.metadata_blocks as usize),
                vec![0; geometry.extent_count as usize],
            ),
        };
        Ok(Sr {
            dev,
            geometry,
            sr_uuid: sr,
            extents: ExtentTable::new(tree.refs, previous_refs),
            metadata: MetadataSpace::new(tree.blocks, previous_blocks),
            vdis: tree.vdis,
            generation: tree.generation,
            next_slot: slot ^ 1,
            next_vdi_serial: tree.next_vdi_serial,
            dirty: false,
            poisoned: false,
            map_changes: 0,
            engine: Engine::default(),
            recovery: RecoveryReport {
                generation: tree.generation,
                slot,
                fell_back: newest_failed,
                other_slot_damaged: damaged[slot ^ 1],
            },
        })
    }
}
