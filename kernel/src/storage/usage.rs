//! Where the metering keeps what must outlive the host (docs/metering.md, "Durability"):
//! the usage journal and the RRD snapshot, each a `keel_metering::VolumeStore` on a VDI of
//! its own on the first SR (`keel-usage-journal`, `keel-rrd-archive`; thin, so only what is
//! written takes space). Without an SR both live in memory and Keel says once that usage
//! will not persist.

use alloc::string::String;
use alloc::vec::Vec;

use keel_storage::{SrError, Uuid};
use keel_xenapi::keel_metering::{JournalVolume, UsageStore, VolumeStore, VolumeStoreError};

use super::SharedRepositories;

/// The usage journal's VDI and its size: two 32 MiB slots (a checkpoint of 100 VMs with a
/// day of unacknowledged rows is ~340 KB).
pub const USAGE_VDI: &str = keel_xenapi::keel_metering::USAGE_VOLUME_NAME;
pub const USAGE_VDI_BYTES: u64 = 64 << 20;
/// The RRD snapshot's VDI: two 48 MiB slots (~18.6 KB per data source: 2 500 sources).
pub const RRD_VDI: &str = keel_xenapi::keel_metering::RRD_VOLUME_NAME;
pub const RRD_VDI_BYTES: u64 = 96 << 20;

/// A VDI as a block volume; borrows the SRs for each access.
pub struct VdiVolume {
    storage: SharedRepositories,
    sr: Uuid,
    vdi: Uuid,
    capacity: u64,
}

#[derive(Debug)]
pub enum VdiVolumeError {
    /// The SR was detached.
    NoSr,
    Sr(SrError),
}

impl core::fmt::Display for VdiVolumeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VdiVolumeError::NoSr => write!(f, "the SR is no longer attached"),
            VdiVolumeError::Sr(e) => write!(f, "{e}"),
        }
    }
}

impl JournalVolume for VdiVolume {
    type Error = VdiVolumeError;

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), VdiVolumeError> {
        let mut repositories = self.storage.borrow_mut();
        let sr = repositories.sr_mut(self.sr).ok_or(VdiVolumeError::NoSr)?;
        sr.read(self.vdi, offset, out).map_err(VdiVolumeError::Sr)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), VdiVolumeError> {
        let mut repositories = self.storage.borrow_mut();
        let sr = repositories.sr_mut(self.sr).ok_or(VdiVolumeError::NoSr)?;
        sr.write(self.vdi, offset, data).map_err(VdiVolumeError::Sr)
    }

    fn flush(&mut self) -> Result<(), VdiVolumeError> {
        let mut repositories = self.storage.borrow_mut();
        let sr = repositories.sr_mut(self.sr).ok_or(VdiVolumeError::NoSr)?;
        sr.flush().map_err(VdiVolumeError::Sr)
    }
}

/// A journal on a VDI, or in memory when the host has no SR.
pub enum Backing {
    Vdi(VolumeStore<VdiVolume>),
    Memory(Vec<u8>),
}

impl Backing {
    pub fn persists(&self) -> bool {
        matches!(self, Backing::Vdi(_))
    }
}

impl UsageStore for Backing {
    type Error = VolumeStoreError<VdiVolumeError>;

    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        match self {
            Backing::Vdi(store) => store.append(bytes),
            Backing::Memory(journal) => {
                journal.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn read_all(&mut self) -> Result<Vec<u8>, Self::Error> {
        match self {
            Backing::Vdi(store) => store.read_all(),
            Backing::Memory(journal) => Ok(journal.clone()),
        }
    }

    fn compact(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        match self {
            Backing::Vdi(store) => store.compact(bytes),
            Backing::Memory(journal) => {
                *journal = bytes.to_vec();
                Ok(())
            }
        }
    }
}

/// Opens (making it if absent) the VDI named `name` on the first SR as a journal; in memory
/// when there is no SR or it cannot be opened (with a log line saying why).
pub fn open(storage: Option<&SharedRepositories>, name: &str, size: u64) -> Backing {
    let Some(storage) = storage else {
        return Backing::Memory(Vec::new());
    };
    match locate(storage, name, size) {
        Ok(Some((sr, vdi, capacity))) => {
            let volume = VdiVolume {
                storage: storage.clone(),
                sr,
                vdi,
                capacity,
            };
            match VolumeStore::open(volume) {
                Ok(store) => {
                    log::info!(
                        "metering: {name} is VDI {vdi} on SR {sr} ({} bytes journaled)",
                        store.len()
                    );
                    Backing::Vdi(store)
                }
                Err(e) => {
                    log::error!("metering: cannot open {name} (VDI {vdi} on SR {sr}): {e:?}");
                    Backing::Memory(Vec::new())
                }
            }
        }
        Ok(None) => Backing::Memory(Vec::new()),
        Err(why) => {
            log::error!("metering: {name}: {why}");
            Backing::Memory(Vec::new())
        }
    }
}

/// The SR, VDI and usable size of `name`: the first SR holding one, else made on the first.
fn locate(
    storage: &SharedRepositories,
    name: &str,
    size: u64,
) -> Result<Option<(Uuid, Uuid, u64)>, String> {
    let mut repositories = storage.borrow_mut();
    for repository in repositories.srs.iter() {
        let found: Vec<_> = repository
            .sr
            .list_vdis()
            .into_iter()
            .filter(|info| info.name == name && !info.read_only && !info.is_snapshot)
            .collect();
        match found.as_slice() {
            [] => {}
            [info] => return Ok(Some((repository.sr.uuid(), info.uuid, info.virtual_size))),
            _ => {
                return Err(alloc::format!(
                    "SR {} holds {} VDIs named {name}; using none",
                    repository.sr.uuid(),
                    found.len()
                ))
            }
        }
    }
    let Some(first) = repositories.srs.first_mut() else {
        return Ok(None);
    };
    let sr = first.sr.uuid();
    match first.sr.create_vdi(name, size) {
        Ok(vdi) => Ok(Some((sr, vdi, size))),
        Err(e) => Err(alloc::format!("cannot create the VDI on SR {sr}: {e}")),
    }
}
