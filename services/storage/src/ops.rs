//! Metadata operations on VDIs. Each is one transaction: durable when it returns `Ok`, and
//! absent (in memory and on disk) when it returns an error other than `NeedsReattach`.

use alloc::string::String;

use keel_block::BlockDevice;

use crate::error::SrError;
use crate::io;
use crate::layout::MAX_VIRTUAL_EXTENTS;
use crate::sr::Sr;
use crate::vdi::Vdi;
use crate::Uuid;

impl<D: BlockDevice> Sr<D> {
    fn check_size(&self, virtual_size: u64) -> Result<u64, SrError> {
        let extents = self.geometry.extents_for(virtual_size);
        if virtual_size == 0
            || !virtual_size.is_multiple_of(u64::from(self.geometry.sector_size))
            || extents > MAX_VIRTUAL_EXTENTS
        {
            return Err(SrError::InvalidSize(virtual_size));
        }
        Ok(extents)
    }

    /// Creates an empty (all holes) VDI and returns its UUID.
    pub fn create_vdi(&mut self, name: &str, virtual_size: u64) -> Result<Uuid, SrError> {
        Self::check_name(name)?;
        let extents = self.check_size(virtual_size)?;
        self.transaction(|sr| {
            let uuid = sr.fresh_vdi_uuid();
            sr.vdis.insert(
                uuid,
                Vdi::new(uuid, String::from(name), virtual_size, extents),
            );
            Ok(uuid)
        })
    }

    /// Deletes a VDI; extents no other VDI shares become free.
    pub fn destroy_vdi(&mut self, uuid: Uuid) -> Result<(), SrError> {
        self.vdi(uuid)?;
        self.transaction(|sr| {
            let vdi = sr.vdis.remove(&uuid).ok_or(SrError::VdiNotFound(uuid))?;
            for (_, extent) in vdi.mapped() {
                sr.extents.release(extent);
            }
            Ok(())
        })
    }

    /// Changes a writable VDI's virtual size. Growing exposes zeros; shrinking frees the
    /// extents past the new end.
    pub fn resize_vdi(&mut self, uuid: Uuid, virtual_size: u64) -> Result<(), SrError> {
        let extents = self.check_size(virtual_size)?;
        let vdi = self.vdi(uuid)?;
        if vdi.read_only {
            return Err(SrError::ReadOnly(uuid));
        }
        let old_size = vdi.virtual_size;
        // Bytes past the old end inside its last extent may hold data from before an earlier
        // shrink; growing must show zeros there.
        let tail_end = old_size
            .div_ceil(self.geometry.extent_size)
            .saturating_mul(self.geometry.extent_size)
            .min(virtual_size);
        let zero_tail = virtual_size > old_size
            && tail_end > old_size
            && vdi.get(old_size / self.geometry.extent_size).is_some();
        if zero_tail {
            self.ensure_usable()?;
            self.reserve_extents(1)?;
        }
        self.transaction(|sr| {
            let vdi = sr.vdis.get_mut(&uuid).ok_or(SrError::VdiNotFound(uuid))?;
            if virtual_size > old_size {
                vdi.set_extents(extents);
                vdi.virtual_size = virtual_size;
                if zero_tail {
                    sr.zero_fill(uuid, old_size, tail_end - old_size)?;
                }
            } else {
                vdi.virtual_size = virtual_size;
                for extent in vdi.set_extents(extents) {
                    sr.extents.release(extent);
                }
            }
            Ok(())
        })
    }

    /// Renames a VDI (snapshots too: the name is metadata, not data). Durable when it returns
    /// `Ok`; after a power cut the VDI has either the old or the new name.
    pub fn rename_vdi(&mut self, uuid: Uuid, name: &str) -> Result<(), SrError> {
        Self::check_name(name)?;
        self.vdi(uuid)?;
        // A longer name lengthens the catalog: the transaction's metadata bound applies.
        self.transaction(|sr| {
            let vdi = sr.vdis.get_mut(&uuid).ok_or(SrError::VdiNotFound(uuid))?;
            vdi.name = String::from(name);
            Ok(())
        })
    }

    /// Takes a read-only snapshot sharing all extents with `uuid`. The source keeps writing
    /// into fresh extents from now on, so the snapshot never changes.
    pub fn snapshot_vdi(&mut self, uuid: Uuid) -> Result<Uuid, SrError> {
        self.vdi(uuid)?;
        self.transaction(|sr| {
            let new = sr.fresh_vdi_uuid();
            let mut snapshot = sr.vdi(uuid)?.clone();
            snapshot.uuid = new;
            snapshot.read_only = true;
            snapshot.is_snapshot = true;
            snapshot.snapshot_of = Some(uuid);
            snapshot.parent = Some(uuid);
            sr.add_sharing(snapshot);
            Ok(new)
        })
    }

    /// Makes a writable clone sharing all extents with `uuid` (which may be a snapshot).
    pub fn clone_vdi(&mut self, uuid: Uuid, name: &str) -> Result<Uuid, SrError> {
        Self::check_name(name)?;
        self.vdi(uuid)?;
        self.transaction(|sr| {
            let new = sr.fresh_vdi_uuid();
            let mut clone = sr.vdi(uuid)?.clone();
            clone.uuid = new;
            clone.name = String::from(name);
            clone.read_only = false;
            clone.is_snapshot = false;
            clone.snapshot_of = None;
            clone.parent = Some(uuid);
            sr.add_sharing(clone);
            Ok(new)
        })
    }

    fn add_sharing(&mut self, vdi: Vdi) {
        for (_, extent) in vdi.mapped() {
            self.extents.share(extent);
        }
        self.vdis.insert(vdi.uuid, vdi);
    }

    /// Makes an independent, writable full copy of `uuid` in new extents (holes stay holes).
    pub fn copy_vdi(&mut self, uuid: Uuid, name: &str) -> Result<Uuid, SrError> {
        Self::check_name(name)?;
        self.ensure_usable()?;
        let needed = self.vdi(uuid)?.mapped_count();
        self.reserve_extents(needed)?;
        self.transaction(|sr| {
            let source = sr.vdi(uuid)?.clone();
            let new = sr.fresh_vdi_uuid();
            let mut copy = Vdi::new(new, String::from(name), source.virtual_size, source.extents);
            let extent_size = sr.geometry.extent_size;
            for (vext, from) in source.mapped() {
                let to = sr.extents.allocate().ok_or(SrError::SrFull {
                    space: crate::error::Space::Data,
                })?;
                copy.set(vext, Some(to));
                let (from, to) = (
                    sr.geometry.extent_offset(from),
                    sr.geometry.extent_offset(to),
                );
                io::copy_range(&mut sr.dev, from, to, extent_size)?;
            }
            sr.vdis.insert(new, copy);
            Ok(new)
        })
    }
}
