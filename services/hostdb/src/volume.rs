//! The storage a host database lives in.

/// Every offset and length [`crate::HostDb`] passes to a volume is a multiple of this, which
/// every supported sector size (512 to 4096 bytes) divides.
pub const BLOCK: usize = 4096;

/// A fixed-size byte range with a write cache: what the host database is stored in.
///
/// The contract is a disk's: a completed `write` may be lost, wholly or in part at sector
/// granularity, by a power cut until a later `flush` completes; after `flush` returns `Ok`
/// every earlier write is durable. Writes never disturb sectors outside their range. A VDI of
/// a keel-storage SR ([`crate::SrVolume`]) meets it; so does a raw partition.
pub trait DbVolume {
    type Error: core::fmt::Debug;

    /// Usable bytes. Must not change while a database lives in the volume (the slot layout
    /// derives from it).
    fn capacity(&self) -> u64;

    /// Reads `out.len()` bytes at `offset` (both multiples of [`BLOCK`], within capacity).
    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), Self::Error>;

    /// Writes `data` at `offset` (both multiples of [`BLOCK`], within capacity).
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Self::Error>;

    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), Self::Error>;
}
