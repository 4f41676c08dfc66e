//! The in-memory form of a VDI: attributes and its block map, chunk by chunk.
//!
//! A map chunk's entries are shared (`Arc`) between a VDI and its snapshots and clones until
//! one of them changes it, so snapshotting costs one pointer per chunk. Each chunk also
//! remembers whether it matches a block on disk (`Clean`) or must be written at the next
//! commit (`Dirty`).

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::layout::{chunks_for, CHUNK_ENTRIES};
use crate::records::BlockRef;
use crate::Uuid;

/// Marks an unallocated virtual extent in memory (`None` on disk).
pub const HOLE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// All holes; nothing on disk.
    Hole,
    /// Identical to this committed block.
    Clean(BlockRef),
    /// Changed since the last commit.
    Dirty,
}

#[derive(Debug, Clone)]
pub struct ChunkSlot {
    /// `CHUNK_ENTRIES` physical extents or `HOLE`; `None` while the chunk is all holes.
    pub entries: Option<Arc<Vec<u32>>>,
    pub persisted: Persisted,
}

impl ChunkSlot {
    pub const HOLE: ChunkSlot = ChunkSlot {
        entries: None,
        persisted: Persisted::Hole,
    };
}

#[derive(Debug, Clone)]
pub struct Vdi {
    pub uuid: Uuid,
    pub name: String,
    pub virtual_size: u64,
    pub read_only: bool,
    pub is_snapshot: bool,
    pub snapshot_of: Option<Uuid>,
    pub parent: Option<Uuid>,
    /// Number of virtual extents (`virtual_size` rounded up to extents).
    pub extents: u64,
    pub chunks: Vec<ChunkSlot>,
}

impl Vdi {
    pub fn new(uuid: Uuid, name: String, virtual_size: u64, extents: u64) -> Self {
        Vdi {
            uuid,
            name,
            virtual_size,
            read_only: false,
            is_snapshot: false,
            snapshot_of: None,
            parent: None,
            extents,
            chunks: vec![ChunkSlot::HOLE; chunks_for(extents)],
        }
    }

    /// The physical extent behind virtual extent `vext`, if allocated.
    pub fn get(&self, vext: u64) -> Option<u32> {
        let (chunk, within) = split(vext);
        let entries = self.chunks.get(chunk)?.entries.as_ref()?;
        entries.get(within).copied().filter(|&p| p != HOLE)
    }

    /// Maps (or unmaps) virtual extent `vext`, which must be below `self.extents`.
    pub fn set(&mut self, vext: u64, physical: Option<u32>) {
        let (chunk, within) = split(vext);
        let Some(slot) = self.chunks.get_mut(chunk) else {
            return;
        };
        let entries = slot
            .entries
            .get_or_insert_with(|| Arc::new(vec![HOLE; CHUNK_ENTRIES]));
        if let Some(entry) = Arc::make_mut(entries).get_mut(within) {
            *entry = physical.unwrap_or(HOLE);
        }
        slot.persisted = Persisted::Dirty;
    }

    /// Every allocated (virtual extent, physical extent) pair, in virtual order.
    pub fn mapped(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(chunk, slot)| {
            slot.entries.iter().flat_map(move |entries| {
                entries
                    .iter()
                    .enumerate()
                    .filter(|(_, &p)| p != HOLE)
                    .map(move |(i, &p)| ((chunk * CHUNK_ENTRIES + i) as u64, p))
            })
        })
    }

    pub fn mapped_count(&self) -> u64 {
        self.mapped().count() as u64
    }

    /// Changes the number of virtual extents. Returns the physical extents that were mapped
    /// beyond the new end (the caller drops their references).
    pub fn set_extents(&mut self, extents: u64) -> Vec<u32> {
        let dropped: Vec<u32> = self
            .mapped()
            .filter(|&(vext, _)| vext >= extents)
            .map(|(_, p)| p)
            .collect();
        for vext in self
            .mapped()
            .filter(|&(vext, _)| vext >= extents)
            .map(|(vext, _)| vext)
            .collect::<Vec<_>>()
        {
            self.set(vext, None);
        }
        self.chunks.resize(chunks_for(extents), ChunkSlot::HOLE);
        self.extents = extents;
        dropped
    }
}

fn split(vext: u64) -> (usize, usize) {
    (
        (vext / CHUNK_ENTRIES as u64) as usize,
        (vext % CHUNK_ENTRIES as u64) as usize,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_shrink() {
        let mut vdi = Vdi::new(Uuid([1; 16]), "a".into(), 0, 1000);
        assert_eq!(vdi.chunks.len(), 2);
        vdi.set(3, Some(7));
        vdi.set(600, Some(9));
        assert_eq!(vdi.get(3), Some(7));
        assert_eq!(vdi.get(4), None);
        assert_eq!(vdi.mapped().collect::<Vec<_>>(), vec![(3, 7), (600, 9)]);
        assert_eq!(vdi.set_extents(100), vec![9]);
        assert_eq!(vdi.chunks.len(), 1);
        assert_eq!(vdi.get(600), None);
        assert_eq!(vdi.get(u64::MAX), None);
    }

    #[test]
    fn clones_share_entries_until_written() {
        let mut a = Vdi::new(Uuid([1; 16]), "a".into(), 0, 10);
        a.set(1, Some(5));
        let mut b = a.clone();
        b.set(1, Some(6));
        assert_eq!((a.get(1), b.get(1)), (Some(5), Some(6)));
    }
}
