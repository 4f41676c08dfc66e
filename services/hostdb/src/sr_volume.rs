//! The host database's volume inside an SR: one ordinary thin VDI with a reserved name.
//!
//! The SR format needs no change: the database is VDI data, and an SR's data writes are
//! durable at `Sr::flush` and never disturb other sectors, which is the [`DbVolume`] contract.
//! The XenAPI layer hides this VDI from clients and refuses the reserved name (see
//! docs/hostdb.md).

use alloc::vec::Vec;

use keel_block::BlockDevice;
use keel_storage::{Sr, SrError, Uuid, VdiInfo};

use crate::volume::{DbVolume, BLOCK};

/// The name of the VDI that holds the host database.
pub const VDI_NAME: &str = "keel-host-database";
/// Size the database VDI is created with: two slots of 4 MiB. Thin, so only what saves
/// write takes space.
pub const DEFAULT_VOLUME_BYTES: u64 = 8 << 20;

/// True for the VDI that holds the host database: the reserved name on a writable,
/// non-snapshot VDI. The XenAPI layer must not show such a VDI to clients.
pub fn is_host_database(info: &VdiInfo) -> bool {
    info.name == VDI_NAME && !info.read_only && !info.is_snapshot
}

/// Why the database VDI could not be found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocateError {
    Sr(SrError),
    /// More than one VDI qualifies ([`is_host_database`]); which one is the database is
    /// unknowable, so none is used.
    Ambiguous {
        candidates: Vec<Uuid>,
    },
}

impl From<SrError> for LocateError {
    fn from(error: SrError) -> Self {
        LocateError::Sr(error)
    }
}

/// The database VDI of `sr`, if it has one.
pub fn find_database_vdi<D: BlockDevice>(sr: &Sr<D>) -> Result<Option<Uuid>, LocateError> {
    let candidates: Vec<Uuid> = sr
        .list_vdis()
        .iter()
        .filter(|info| is_host_database(info))
        .map(|info| info.uuid)
        .collect();
    match candidates.as_slice() {
        [] => Ok(None),
        [only] => Ok(Some(*only)),
        _ => Err(LocateError::Ambiguous { candidates }),
    }
}

/// Whether [`find_or_create_database_vdi`] found the VDI or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    Found(Uuid),
    Created(Uuid),
}

impl Located {
    pub fn uuid(self) -> Uuid {
        match self {
            Located::Found(uuid) | Located::Created(uuid) => uuid,
        }
    }
}

/// The database VDI of `sr`, created (empty, `size` bytes, durable on return) if absent.
pub fn find_or_create_database_vdi<D: BlockDevice>(
    sr: &mut Sr<D>,
    size: u64,
) -> Result<Located, LocateError> {
    if let Some(uuid) = find_database_vdi(sr)? {
        return Ok(Located::Found(uuid));
    }
    Ok(Located::Created(sr.create_vdi(VDI_NAME, size)?))
}

/// A VDI of an attached SR as a [`DbVolume`]; borrows the SR for one load or save.
pub struct SrVolume<'a, D: BlockDevice> {
    sr: &'a mut Sr<D>,
    vdi: Uuid,
    capacity: u64,
}

impl<'a, D: BlockDevice> SrVolume<'a, D> {
    pub fn new(sr: &'a mut Sr<D>, vdi: Uuid) -> Result<Self, SrError> {
        let size = sr.vdi_info(vdi)?.virtual_size;
        Ok(SrVolume {
            sr,
            vdi,
            capacity: size / BLOCK as u64 * BLOCK as u64,
        })
    }
}

impl<D: BlockDevice> DbVolume for SrVolume<'_, D> {
    type Error = SrError;

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), SrError> {
        self.sr.read(self.vdi, offset, out)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), SrError> {
        self.sr.write(self.vdi, offset, data)
    }

    fn flush(&mut self) -> Result<(), SrError> {
        self.sr.flush()
    }
}
