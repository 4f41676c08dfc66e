//! VDI data I/O, the synchronous facade: reads, writes and flush that wait for the device,
//! over the queued path in `engine` (so both share one implementation), and the in-place
//! zero fill that resize uses inside its transaction.
//!
//! A write goes to the VDI's extent in place only if no other map — in memory, in the
//! committed root or in the root before it — references that extent. Otherwise (unallocated,
//! or shared with a snapshot or clone) a fresh extent is allocated, filled with the old
//! contents (or zeros) around the written range, written, and only then mapped. Writes are
//! acknowledged by `flush`, which commits the changed maps.

use alloc::vec::Vec;

use keel_block::BlockDevice;

use crate::error::SrError;
use crate::io;
use crate::sr::Sr;
use crate::vdi_io::VdiIo;
use crate::Uuid;

impl<D: BlockDevice> Sr<D> {
    pub(crate) fn check_range(&self, uuid: Uuid, offset: u64, len: u64) -> Result<(), SrError> {
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
    /// length must be multiples of the sector size. Waits for the device (the queued form is
    /// [`Sr::submit_io`]).
    pub fn read(&mut self, uuid: Uuid, offset: u64, out: &mut [u8]) -> Result<(), SrError> {
        let mut buffer = Vec::new();
        buffer
            .try_reserve_exact(out.len())
            .map_err(|_| SrError::OutOfMemory)?;
        buffer.resize(out.len(), 0);
        let done = self.run_io(uuid, VdiIo::Read { offset, buffer })?;
        done.result?;
        match done.buffer {
            Some(buffer) if buffer.len() == out.len() => {
                out.copy_from_slice(&buffer);
                Ok(())
            }
            _ => Err(SrError::OutOfMemory),
        }
    }

    /// Writes `data` at `offset`. The data is visible to reads at once and durable once
    /// [`Sr::flush`] (or any metadata operation) returns. Fails with `SrFull` before writing
    /// anything if the extents it needs are not available. Waits for the device (the queued
    /// form is [`Sr::submit_io`]).
    pub fn write(&mut self, uuid: Uuid, offset: u64, data: &[u8]) -> Result<(), SrError> {
        let mut buffer = Vec::new();
        buffer
            .try_reserve_exact(data.len())
            .map_err(|_| SrError::OutOfMemory)?;
        buffer.extend_from_slice(data);
        self.run_io(uuid, VdiIo::Write { offset, buffer })?.result
    }

    /// Writes zeros over `len` bytes at `offset`, waiting for the device: resize uses it
    /// inside its transaction (the queue is drained) to clear the tail of a grown VDI's last
    /// extent.
    pub(crate) fn zero_fill(&mut self, uuid: Uuid, offset: u64, len: u64) -> Result<(), SrError> {
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
            self.zero_piece(uuid, position / extent_size, within, n)?;
            done += n;
        }
        Ok(())
    }

    /// Zeroes `len` bytes from `within` in one virtual extent.
    fn zero_piece(&mut self, uuid: Uuid, vext: u64, within: u64, len: u64) -> Result<(), SrError> {
        let current = self.vdi(uuid)?.get(vext);
        if let Some(extent) = current.filter(|&p| self.extents.exclusive(p)) {
            let at = self.geometry.extent_offset(extent) + within;
            return io::zero_range(&mut self.dev, at, len);
        }
        let extent_size = self.geometry.extent_size;
        let fresh = self.extents.allocate().ok_or(SrError::SrFull {
            space: crate::error::Space::Data,
        })?;
        let to = self.geometry.extent_offset(fresh);
        let end = within + len;
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
        .and_then(|()| io::zero_range(&mut self.dev, to + within, len));
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
        self.maps_changed();
        Ok(())
    }

    /// Makes every write so far durable: commits changed maps (one root switch) or, if no map
    /// changed, flushes the device. This is the acknowledgement point for data writes. Waits
    /// for the device (the queued form is [`VdiIo::Flush`]).
    pub fn flush(&mut self) -> Result<(), SrError> {
        self.ensure_usable()?;
        let sr = self.sr_uuid;
        self.run_io(sr, VdiIo::Flush)?.result
    }
}
