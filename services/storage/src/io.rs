//! Byte-addressed synchronous I/O over a [`BlockDevice`], in bounded pieces.
//!
//! Offsets and lengths handed to these helpers are multiples of the sector size (the SR checks
//! caller input before it gets here); no helper ever buffers more than `MAX_IO_BYTES`.

use alloc::vec;
use alloc::vec::Vec;

use keel_block::{sync, BlockDevice};

use crate::error::SrError;
use crate::layout::{BLOCK_SIZE, MAX_IO_BYTES};

/// The largest transfer to issue: `MAX_IO_BYTES`, or less if the device says so.
fn piece_len(dev: &impl BlockDevice) -> usize {
    transfer_len(dev, MAX_IO_BYTES)
}

/// The largest transfer of at most `limit` bytes the device takes, in whole sectors.
pub(crate) fn transfer_len(dev: &impl BlockDevice, limit: usize) -> usize {
    let info = dev.info();
    let sector = info.sector_size.max(1) as usize;
    let device_max = (info.max_transfer_sectors.max(1) as usize).saturating_mul(sector);
    (limit.min(device_max) / sector).max(1) * sector
}

fn lba(dev: &impl BlockDevice, offset: u64) -> u64 {
    offset / u64::from(dev.info().sector_size.max(1))
}

pub fn read_at(dev: &mut impl BlockDevice, offset: u64, out: &mut [u8]) -> Result<(), SrError> {
    let piece = piece_len(dev);
    for (i, part) in out.chunks_mut(piece).enumerate() {
        let at = offset + (i * piece) as u64;
        sync::read(dev, lba(dev, at), part)?;
    }
    Ok(())
}

pub fn write_at(dev: &mut impl BlockDevice, offset: u64, data: &[u8]) -> Result<(), SrError> {
    let piece = piece_len(dev);
    for (i, part) in data.chunks(piece).enumerate() {
        let at = offset + (i * piece) as u64;
        sync::write(dev, lba(dev, at), part)?;
    }
    Ok(())
}

pub fn zero_range(dev: &mut impl BlockDevice, offset: u64, len: u64) -> Result<(), SrError> {
    let piece = piece_len(dev) as u64;
    let mut done = 0;
    while done < len {
        let n = piece.min(len - done);
        sync::write_owned(dev, lba(dev, offset + done), vec![0u8; n as usize])?;
        done += n;
    }
    Ok(())
}

pub fn copy_range(dev: &mut impl BlockDevice, from: u64, to: u64, len: u64) -> Result<(), SrError> {
    let piece = piece_len(dev) as u64;
    let mut done = 0;
    while done < len {
        let n = piece.min(len - done);
        let buffer = sync::read_owned(dev, lba(dev, from + done), vec![0u8; n as usize])?;
        sync::write_owned(dev, lba(dev, to + done), buffer)?;
        done += n;
    }
    Ok(())
}

pub fn read_block(dev: &mut impl BlockDevice, offset: u64) -> Result<Vec<u8>, SrError> {
    Ok(sync::read_owned(
        dev,
        lba(dev, offset),
        vec![0u8; BLOCK_SIZE],
    )?)
}

pub fn flush(dev: &mut impl BlockDevice) -> Result<(), SrError> {
    Ok(sync::flush(dev)?)
}
