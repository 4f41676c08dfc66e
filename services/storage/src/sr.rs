//! The storage repository handle: state, queries, and the transaction wrapper that every
//! metadata operation goes through.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use keel_block::BlockDevice;

use crate::engine::Engine;
use crate::error::{Space, SrError};
use crate::frame::PAYLOAD_MAX;
use crate::layout::{Geometry, MAX_NAME_LEN};
use crate::records::{root_record_worst_len, vdi_record_worst_len};
use crate::space::{ExtentTable, MetadataSpace};
use crate::vdi::Vdi;
use crate::Uuid;

/// What attach found and chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Generation of the root in use.
    pub generation: u64,
    /// Root slot (0 or 1) it was read from.
    pub slot: usize,
    /// A root with a higher generation was intact but its tree was damaged; the SR rolled
    /// back to the older root (the changes of that commit are lost).
    pub fell_back: bool,
    /// The other root slot holds a damaged root (torn by a crash during a commit, which then
    /// was never acknowledged, or corrupted). If it was the newer root, its commit is lost.
    pub other_slot_damaged: bool,
}

/// A VDI as the management layer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiInfo {
    pub uuid: Uuid,
    pub name: String,
    pub virtual_size: u64,
    /// Bytes of extents this VDI's map references (shared extents count for each sharer).
    pub physical_utilisation: u64,
    pub read_only: bool,
    pub is_snapshot: bool,
    /// For a snapshot: the VDI it was taken of.
    pub snapshot_of: Option<Uuid>,
    /// For a snapshot or clone: the VDI it was made from.
    pub parent: Option<Uuid>,
}

/// A storage repository attached on a block device.
pub struct Sr<D: BlockDevice> {
    pub(crate) dev: D,
    pub(crate) geometry: Geometry,
    pub(crate) sr_uuid: Uuid,
    pub(crate) vdis: BTreeMap<Uuid, Vdi>,
    pub(crate) extents: ExtentTable,
    pub(crate) metadata: MetadataSpace,
    /// Generation of the committed root.
    pub(crate) generation: u64,
    /// Root slot the next commit writes (never the one holding the committed root).
    pub(crate) next_slot: usize,
    pub(crate) next_vdi_serial: u64,
    /// Maps changed since the last commit.
    pub(crate) dirty: bool,
    /// A commit failed after its root may have been written; only re-attach helps.
    pub(crate) poisoned: bool,
    pub(crate) recovery: RecoveryReport,
    /// Counts map changes, so a commit planned before a change knows it did not cover it.
    pub(crate) map_changes: u64,
    /// The queued data path.
    pub(crate) engine: Engine,
}

/// In-memory state a failed metadata operation rolls back to.
pub(crate) struct Saved {
    vdis: BTreeMap<Uuid, Vdi>,
    live: Vec<u32>,
    next_vdi_serial: u64,
    dirty: bool,
}

impl<D: BlockDevice> Sr<D> {
    pub fn uuid(&self) -> Uuid {
        self.sr_uuid
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn recovery(&self) -> RecoveryReport {
        self.recovery
    }

    /// Generation of the committed root (increases by one per commit).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes available for VDI data.
    pub fn physical_size(&self) -> u64 {
        u64::from(self.geometry.extent_count) * self.geometry.extent_size
    }

    /// Bytes of data extents referenced by some VDI.
    pub fn physical_utilisation(&self) -> u64 {
        self.extents.in_use() * self.geometry.extent_size
    }

    /// Sum of the virtual sizes of all VDIs.
    pub fn virtual_allocation(&self) -> u64 {
        self.vdis.values().map(|vdi| vdi.virtual_size).sum()
    }

    pub fn list_vdis(&self) -> Vec<VdiInfo> {
        self.vdis.values().map(|vdi| self.info_of(vdi)).collect()
    }

    pub fn vdi_info(&self, uuid: Uuid) -> Result<VdiInfo, SrError> {
        Ok(self.info_of(self.vdi(uuid)?))
    }

    /// Gives the device back (after a failure, to power-cycle it in tests, or to detach).
    /// Queued requests still in flight are abandoned, as a power cut would.
    pub fn into_device(self) -> D {
        self.dev
    }

    fn info_of(&self, vdi: &Vdi) -> VdiInfo {
        VdiInfo {
            uuid: vdi.uuid,
            name: vdi.name.clone(),
            virtual_size: vdi.virtual_size,
            physical_utilisation: vdi.mapped_count() * self.geometry.extent_size,
            read_only: vdi.read_only,
            is_snapshot: vdi.is_snapshot,
            snapshot_of: vdi.snapshot_of,
            parent: vdi.parent,
        }
    }

    pub(crate) fn vdi(&self, uuid: Uuid) -> Result<&Vdi, SrError> {
        self.vdis.get(&uuid).ok_or(SrError::VdiNotFound(uuid))
    }

    pub(crate) fn ensure_usable(&self) -> Result<(), SrError> {
        if self.poisoned {
            Err(SrError::NeedsReattach)
        } else {
            Ok(())
        }
    }

    pub(crate) fn check_name(name: &str) -> Result<(), SrError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            Err(SrError::InvalidName)
        } else {
            Ok(())
        }
    }

    /// A UUID no VDI of this SR has.
    pub(crate) fn fresh_vdi_uuid(&mut self) -> Uuid {
        loop {
            let uuid = Uuid::derive(self.sr_uuid, self.next_vdi_serial);
            self.next_vdi_serial = self.next_vdi_serial.wrapping_add(1);
            if !self.vdis.contains_key(&uuid) {
                return uuid;
            }
        }
    }

    /// Makes sure `needed` extents can be allocated, committing (at most twice) to release
    /// extents that only the last two roots still hold.
    pub(crate) fn reserve_extents(&mut self, needed: u64) -> Result<(), SrError> {
        for _ in 0..2 {
            if self.extents.has_free(needed) {
                return Ok(());
            }
            if !self.extents.has_pinned() {
                break;
            }
            self.commit()?;
        }
        if self.extents.has_free(needed) {
            Ok(())
        } else {
            Err(SrError::SrFull { space: Space::Data })
        }
    }

    /// Metadata blocks the current state needs at worst (every chunk written, catalog at its
    /// longest). `None` if the catalog would not fit the root record at all.
    pub(crate) fn worst_case_metadata_blocks(&self) -> Option<u64> {
        let chunks: u64 = self.vdis.values().map(|vdi| vdi.chunks.len() as u64).sum();
        let catalog_bytes: usize = 8 + self
            .vdis
            .values()
            .map(|vdi| vdi_record_worst_len(vdi.name.len(), vdi.chunks.len()))
            .sum::<usize>();
        let catalog_blocks = catalog_bytes.div_ceil(PAYLOAD_MAX);
        (root_record_worst_len(catalog_blocks) <= PAYLOAD_MAX)
            .then_some(chunks + catalog_blocks as u64)
    }

    /// Refuses states whose worst-case metadata could not be committed while the two previous
    /// roots are kept: three times the worst case must fit the metadata area. Holding every
    /// committed state to this bound means a later `flush` can never run out of metadata space.
    pub(crate) fn check_metadata_space(&self) -> Result<(), SrError> {
        match self.worst_case_metadata_blocks() {
            Some(worst) if worst.saturating_mul(3) <= self.metadata.blocks() as u64 => Ok(()),
            _ => Err(SrError::SrFull {
                space: Space::Metadata,
            }),
        }
    }

    pub(crate) fn save(&self) -> Saved {
        Saved {
            vdis: self.vdis.clone(),
            live: self.extents.live().to_vec(),
            next_vdi_serial: self.next_vdi_serial,
            dirty: self.dirty,
        }
    }

    pub(crate) fn restore(&mut self, saved: Saved) {
        self.vdis = saved.vdis;
        self.extents.replace_live(saved.live);
        self.next_vdi_serial = saved.next_vdi_serial;
        self.dirty = saved.dirty;
    }

    /// Runs a metadata operation: apply `change` in memory, check the metadata bound, commit.
    /// On any failure before the commit's root write the in-memory state is rolled back, so
    /// the operation is all or nothing both in memory and on disk.
    pub(crate) fn transaction<T>(
        &mut self,
        change: impl FnOnce(&mut Self) -> Result<T, SrError>,
    ) -> Result<T, SrError> {
        self.ensure_usable()?;
        // A snapshot, resize or destroy must see no write half done.
        self.drain()?;
        let saved = self.save();
        let result = change(self).and_then(|value| {
            self.check_metadata_space()?;
            self.commit()?;
            Ok(value)
        });
        if result.is_err() && !self.poisoned {
            self.restore(saved);
        }
        result
    }
}
