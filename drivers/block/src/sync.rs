//! Synchronous helpers: submit one request and wait for its completion.
//!
//! They are meant for a device that has nothing else in flight and for small, bounded work:
//! tests, and the storage manager's format, attach and metadata commits, which first drain
//! its queue. Data I/O does not use them: it is queued (many requests in flight, completions
//! polled) by `keel_storage::Sr::submit_io`. A completion belonging to someone else would
//! otherwise be swallowed, so they refuse with [`BlockError::NotIdle`] when `in_flight() != 0`.

use alloc::vec;
use alloc::vec::Vec;

use crate::{BlockDevice, BlockError, Completion, Request};

fn run(dev: &mut (impl BlockDevice + ?Sized), request: Request) -> Result<Completion, BlockError> {
    if dev.in_flight() != 0 {
        return Err(BlockError::NotIdle);
    }
    let id = dev.submit(request).map_err(|rejected| rejected.error)?;
    loop {
        match dev.poll_completion() {
            Some(completion) if completion.id == id => return Ok(completion),
            // Nothing else was in flight, so a foreign completion is a device bug.
            Some(_) => return Err(BlockError::NotIdle),
            None if dev.in_flight() == 0 => return Err(BlockError::NotIdle),
            None => core::hint::spin_loop(),
        }
    }
}

/// Reads whole sectors starting at `lba` into `out`.
pub fn read(
    dev: &mut (impl BlockDevice + ?Sized),
    lba: u64,
    out: &mut [u8],
) -> Result<(), BlockError> {
    let buffer = read_owned(dev, lba, vec![0; out.len()])?;
    out.copy_from_slice(&buffer);
    Ok(())
}

/// Reads whole sectors starting at `lba` into an owned buffer and returns it.
pub fn read_owned(
    dev: &mut (impl BlockDevice + ?Sized),
    lba: u64,
    buffer: Vec<u8>,
) -> Result<Vec<u8>, BlockError> {
    let len = buffer.len();
    let completion = run(dev, Request::Read { lba, buffer })?;
    completion.result?;
    match completion.buffer {
        Some(buffer) if buffer.len() == len => Ok(buffer),
        _ => Err(BlockError::Io {
            first_failed_lba: lba,
        }),
    }
}

/// Writes whole sectors starting at `lba`. Not durable until [`flush`] returns.
pub fn write(
    dev: &mut (impl BlockDevice + ?Sized),
    lba: u64,
    data: &[u8],
) -> Result<(), BlockError> {
    write_owned(dev, lba, data.to_vec())
}

/// Writes an owned buffer (no copy) starting at `lba`.
pub fn write_owned(
    dev: &mut (impl BlockDevice + ?Sized),
    lba: u64,
    buffer: Vec<u8>,
) -> Result<(), BlockError> {
    run(dev, Request::Write { lba, buffer })?.result
}

/// Makes every completed write durable.
pub fn flush(dev: &mut (impl BlockDevice + ?Sized)) -> Result<(), BlockError> {
    run(dev, Request::Flush)?.result
}

/// Tells the device the sectors are no longer needed.
pub fn discard(
    dev: &mut (impl BlockDevice + ?Sized),
    lba: u64,
    sectors: u64,
) -> Result<(), BlockError> {
    run(dev, Request::Discard { lba, sectors })?.result
}
