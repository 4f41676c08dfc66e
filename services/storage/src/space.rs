//! Bookkeeping of physical extents and metadata blocks: who uses what, and what is free.
//!
//! Reference counts are derived state: they are recomputed from the block maps on attach and
//! kept in memory, never written, so a crash cannot leave them wrong. Two extra generations of
//! counts protect what the last two commits reference: an extent is free only when no in-memory
//! map, no map of the committed root and no map of the root before it uses it, and it is
//! written in place only when nobody else can see it (see docs/storage-format.md).

use alloc::vec;
use alloc::vec::Vec;

/// Reference counts of the physical extents.
#[derive(Debug, Clone)]
pub struct ExtentTable {
    /// References from the in-memory maps.
    live: Vec<u32>,
    /// References from the maps of the committed root.
    committed: Vec<u32>,
    /// References from the maps of the root before it (kept for fallback on corruption).
    previous: Vec<u32>,
    /// Device requests in flight on each extent. An extent with I/O in flight is never
    /// handed out again, even after every map dropped it: a read still filling a buffer from
    /// it, or a write still landing in it, must not meet another VDI's data.
    io_pins: Vec<u32>,
    cursor: usize,
}

impl ExtentTable {
    pub fn new(live: Vec<u32>, previous: Vec<u32>) -> Self {
        ExtentTable {
            committed: live.clone(),
            io_pins: vec![0; live.len()],
            live,
            previous,
            cursor: 0,
        }
    }

    pub fn live(&self) -> &[u32] {
        &self.live
    }

    pub fn replace_live(&mut self, live: Vec<u32>) {
        self.live = live;
    }

    fn is_free(&self, extent: usize) -> bool {
        self.live.get(extent) == Some(&0)
            && self.committed.get(extent) == Some(&0)
            && self.previous.get(extent) == Some(&0)
            && self.io_pins.get(extent) == Some(&0)
    }

    /// A device request on `extent` was submitted.
    pub fn pin_io(&mut self, extent: u32) {
        if let Some(count) = self.io_pins.get_mut(extent as usize) {
            *count = count.saturating_add(1);
        }
    }

    /// A device request on `extent` completed.
    pub fn unpin_io(&mut self, extent: u32) {
        if let Some(count) = self.io_pins.get_mut(extent as usize) {
            *count = count.saturating_sub(1);
        }
    }

    /// True if at least `needed` extents are free now.
    pub fn has_free(&self, needed: u64) -> bool {
        if needed == 0 {
            return true;
        }
        let mut found = 0;
        for extent in 0..self.live.len() {
            if self.is_free(extent) {
                found += 1;
                if found >= needed {
                    return true;
                }
            }
        }
        false
    }

    /// True if some extent is unused in memory but still held by a recent root.
    pub fn has_pinned(&self) -> bool {
        (0..self.live.len()).any(|e| self.live[e] == 0 && !self.is_free(e))
    }

    /// Takes a free extent with one reference.
    pub fn allocate(&mut self) -> Option<u32> {
        let count = self.live.len();
        for step in 0..count {
            let extent = (self.cursor + step) % count;
            if self.is_free(extent) {
                self.live[extent] = 1;
                self.cursor = (extent + 1) % count;
                return u32::try_from(extent).ok();
            }
        }
        None
    }

    pub fn share(&mut self, extent: u32) {
        if let Some(count) = self.live.get_mut(extent as usize) {
            *count = count.saturating_add(1);
        }
    }

    pub fn release(&mut self, extent: u32) {
        if let Some(count) = self.live.get_mut(extent as usize) {
            *count = count.saturating_sub(1);
        }
    }

    /// True if exactly one in-memory map uses the extent and no recent root shares it with
    /// anybody else, so overwriting it in place cannot change what another VDI (or a root
    /// recovery may fall back to) sees.
    pub fn exclusive(&self, extent: u32) -> bool {
        let e = extent as usize;
        self.live.get(e) == Some(&1)
            && self.committed.get(e).is_some_and(|&c| c <= 1)
            && self.previous.get(e).is_some_and(|&c| c <= 1)
    }

    /// Extents referenced by at least one in-memory map.
    pub fn in_use(&self) -> u64 {
        self.live.iter().filter(|&&c| c > 0).count() as u64
    }

    /// A commit made the maps whose reference counts were `live` (taken when the commit was
    /// planned; data writes may have changed the in-memory maps since) the committed ones.
    pub fn committed_now(&mut self, live: Vec<u32>) {
        self.previous = core::mem::replace(&mut self.committed, live);
    }
}

/// Which metadata blocks the two most recent roots use.
#[derive(Debug, Clone)]
pub struct MetadataSpace {
    committed: Vec<bool>,
    previous: Vec<bool>,
}

impl MetadataSpace {
    pub fn new(committed: Vec<bool>, previous: Vec<bool>) -> Self {
        MetadataSpace {
            committed,
            previous,
        }
    }

    pub fn empty(blocks: usize) -> Vec<bool> {
        vec![false; blocks]
    }

    pub fn blocks(&self) -> usize {
        self.committed.len()
    }

    /// True if a recent root references the block, so a commit must not overwrite it.
    pub fn pinned(&self, block: usize) -> bool {
        self.committed.get(block).copied().unwrap_or(true)
            || self.previous.get(block).copied().unwrap_or(true)
    }

    pub fn committed_count(&self) -> u64 {
        self.committed.iter().filter(|&&b| b).count() as u64
    }

    /// A commit made `reachable` the blocks of the committed root.
    pub fn committed_now(&mut self, reachable: Vec<bool>) {
        self.previous = core::mem::replace(&mut self.committed, reachable);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_extents_stay_pinned_for_two_commits() {
        let mut table = ExtentTable::new(vec![0; 2], vec![0; 2]);
        let a = table.allocate().unwrap();
        table.committed_now(table.live().to_vec());
        table.release(a);
        assert!(table.has_pinned());
        let b = table.allocate().unwrap();
        assert_ne!(a, b);
        assert_eq!(table.allocate(), None);
        table.committed_now(table.live().to_vec());
        assert_eq!(
            table.allocate(),
            None,
            "still referenced by the previous root"
        );
        table.committed_now(table.live().to_vec());
        assert_eq!(table.allocate(), Some(a));
    }

    #[test]
    fn in_place_writes_need_exclusive_ownership_in_every_recent_root() {
        let mut table = ExtentTable::new(vec![2, 0], vec![0, 0]);
        table.release(0);
        assert!(!table.exclusive(0), "the committed root still shares it");
        table.committed_now(table.live().to_vec());
        assert!(!table.exclusive(0), "the previous root still shares it");
        table.committed_now(table.live().to_vec());
        assert!(table.exclusive(0));
        assert!(!table.exclusive(1));
        assert!(!table.exclusive(9));
    }
}
