//! VDI data I/O: reads (holes read as zeros), copy-on-write writes, and flush.
//!
//! A write goes to the VDI's extent in place only if no other map — in memory, in the
//! committed root or in the root before it — references that extent. Otherwise (unallocated,
//! or shared with a snapshot or clone) a fresh extent is allocated, filled with the old
//! contents (or zeros) around the written range, written, and only then mapped. Writes are
//! acknowledged by `flush`, which commits the changed maps.

use keel_block::BlockDevice;

use crate::error::SrError;
use crate::io;
use crate::sr::Sr;
use crate::Uuid;

/// What a write puts into the range.
#[derive(Clone, Copy)]
pub(crate) enum Fill<'a> {
    Data(&'a [u8]),
    Zeros(u64),
}

impl Fill<'_> {
    fn len(&self) -> u64 {
        match self {
            Fill::Data(data) => data.len() as u64,
            Fill::Zeros(len) => *len,
        }
    }
}

impl<D: BlockDevice> Sr<D> {
    fn check_range(&self, uuid: Uuid, offset: u64, len: u64) -> Result<(), SrError> {
        let vdi = self.vdi(uuid)?;
        let sector = u64::from(self.geometry.sector_size);
        if !offset.is_multiple_of(sector) || !len.is_multiple_of(sector) {
            return Err(SrError::Unaligned {
                offset,
                len,
                sector_size: self.geometry.sector_size,
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= vdi.virtual_size => Ok(()),
            _ => Err(SrError::OutOfRange {
                offset,
                len,
                virtual_size: vdi.virtual_size,
            }),
        }
    }

    /// Reads `out.len()` bytes at `offset`; unallocated ranges read as zeros. Offset and
    /// length must be multiples of the sector size.
    pub fn read(&mut self, uuid: Uuid, offset: u64, out: &mut [u8]) -> Result<(), SrError> {
        self.ensure_usable()?;
        self.check_range(uuid, offset, out.len() as u64)?;
        let extent_size = self.geometry.extent_size;
        let mut done = 0usize;
        while done < out.len() {
            let position = offset + done as u64;
            let within = position % extent_size;
            let n = ((extent_size - within) as usize).min(out.len() - done);
            let physical = self.vdi(uuid)?.get(position / extent_size);
            let part = out.get_mut(done..done + n).unwrap_or_default();
            match physical {
                Some(extent) => io::read_at(
                    &mut self.dev,
                    self.geometry.extent_offset(extent) + within,
                    part,
                )?,
                None => part.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset`. The data is visible to reads at once and durable once
    /// [`Sr::flush`] (or any metadata operation) returns. Fails with `SrFull` before writing
    /// anything if the extents it needs are not available.
    pub fn write(&mut self, uuid: Uuid, offset: u64, data: &[u8]) -> Result<(), SrError> {
        self.ensure_usable()?;
        if self.vdi(uuid)?.read_only {
            return Err(SrError::ReadOnly(uuid));
        }
        self.write_fill(uuid, offset, Fill::Data(data))
    }

    /// The write path shared with resize (which zeroes with `Fill::Zeros`).
    pub(crate) fn write_fill(
        &mut self,
        uuid: Uuid,
        offset: u64,
        fill: Fill<'_>,
    ) -> Result<(), SrError> {
        let len = fill.len();
        self.check_range(uuid, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let extent_size = self.geometry.extent_size;
        let first = offset / extent_size;
        let last = (offset + len - 1) / extent_size;
        let needed = {
            let vdi = self.vdi(uuid)?;
            (first..=last)
                .filter(|&vext| !vdi.get(vext).is_some_and(|p| self.extents.exclusive(p)))
                .count() as u64
        };
        self.reserve_extents(needed)?;
        let mut done = 0u64;
        while done < len {
            let position = offset + done;
            let within = position % extent_size;
            let n = (extent_size - within).min(len - done);
            let piece = match fill {
                Fill::Data(data) => Fill::Data(
                    data.get(done as usize..(done + n) as usize)
                        .unwrap_or_default(),
                ),
                Fill::Zeros(_) => Fill::Zeros(n),
            };
            self.write_piece(uuid, position / extent_size, within, piece)?;
            done += n;
        }
        Ok(())
    }

    /// Writes within one virtual extent.
    fn write_piece(
        &mut self,
        uuid: Uuid,
        vext: u64,
        within: u64,
        fill: Fill<'_>,
    ) -> Result<(), SrError> {
        let current = self.vdi(uuid)?.get(vext);
        if let Some(extent) = current.filter(|&p| self.extents.exclusive(p)) {
            let at = self.geometry.extent_offset(extent) + within;
            return self.put(at, fill);
        }
        let extent_size = self.geometry.extent_size;
        let fresh = self.extents.allocate().ok_or(SrError::SrFull {
            space: crate::error::Space::Data,
        })?;
        let to = self.geometry.extent_offset(fresh);
        let end = within + fill.len();
        let filled = match current {
            Some(old) => {
                let from = self.geometry.extent_offset(old);
                io::copy_range(&mut self.dev, from, to, within).and_then(|()| {
                    io::copy_range(&mut self.dev, from + end, to + end, extent_size - end)
                })
            }
            None => io::zero_range(&mut self.dev, to, within)
                .and_then(|()| io::zero_range(&mut self.dev, to + end, extent_size - end)),
        }
        .and_then(|()| self.put(to + within, fill));
        if let Err(error) = filled {
            self.extents.release(fresh);
            return Err(error);
        }
        if let Some(vdi) = self.vdis.get_mut(&uuid) {
            vdi.set(vext, Some(fresh));
        }
        if let Some(old) = current {
            self.extents.release(old);
        }
        self.dirty = true;
        Ok(())
    }

    fn put(&mut self, at: u64, fill: Fill<'_>) -> Result<(), SrError> {
        match fill {
            Fill::Data(data) => io::write_at(&mut self.dev, at, data),
            Fill::Zeros(len) => io::zero_range(&mut self.dev, at, len),
        }
    }

    /// Makes every write so far durable: commits changed maps (one root switch) or, if no map
    /// changed, flushes the device. This is the acknowledgement point for data writes.
    pub fn flush(&mut self) -> Result<(), SrError> {
        self.ensure_usable()?;
        if self.dirty {
            self.commit()
        } else {
            io::flush(&mut self.dev)
        }
    }
}
