//! The attached SRs as the XenAPI's storage backend ([`keel_xenapi::StorageBackend`]).
//!
//! The host database's VDI (keel-hostdb, docs/hostdb.md) does not exist for clients: it is
//! never listed, every operation naming it answers `VdiNotFound`, and its reserved name is
//! refused for every VDI a client names, so no second candidate can appear. The metering's
//! VDIs (`keel-usage-journal`, `keel-rrd-archive`; docs/metering.md) are reserved the same
//! way.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use keel_block::BlockDevice;
use keel_hostdb::{is_host_database, VDI_NAME};
use keel_storage::{Sr, SrError, Uuid, VdiInfo};
use keel_xenapi::keel_metering::is_metering_volume;
use keel_xenapi::{SrFacts, StorageBackend, StorageError, VdiFacts};

/// One attached SR and the disk under it.
pub struct Repository<D: BlockDevice> {
    pub sr: Sr<D>,
    /// The disk's identity (`nvme-keel0-n1`).
    pub device: String,
    /// How the disk is attached (`nvme`, `virtio-blk`).
    pub bus: String,
}

/// Every attached SR.
pub struct Repositories<D: BlockDevice> {
    pub srs: Vec<Repository<D>>,
}

impl<D: BlockDevice> Default for Repositories<D> {
    fn default() -> Self {
        Repositories { srs: Vec::new() }
    }
}

impl<D: BlockDevice> Repositories<D> {
    /// The SR with this UUID.
    pub fn sr(&self, uuid: Uuid) -> Option<&Sr<D>> {
        self.srs.iter().map(|r| &r.sr).find(|sr| sr.uuid() == uuid)
    }

    /// The SR with this UUID, for I/O and metadata operations.
    pub fn sr_mut(&mut self, uuid: Uuid) -> Option<&mut Sr<D>> {
        self.srs
            .iter_mut()
            .map(|r| &mut r.sr)
            .find(|sr| sr.uuid() == uuid)
    }

    /// Moves every SR's queued I/O on (see [`Sr::poll_io`]). Returns whether anything
    /// happened. Whoever serves queued requests (a disk backend) calls it when a device may
    /// have finished something.
    pub fn poll_io(&mut self) -> bool {
        let mut progress = false;
        for repository in &mut self.srs {
            progress |= repository.sr.poll_io();
        }
        progress
    }

    /// Queued requests not yet completed, over every SR.
    pub fn io_in_flight(&self) -> usize {
        self.srs.iter().map(|r| r.sr.io_in_flight()).sum()
    }
}

/// Parses the hyphenated text form of a UUID (either case).
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    let hex: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
    let hyphens_ok = text.len() == 36
        && [8, 13, 18, 23]
            .iter()
            .all(|&i| text.as_bytes().get(i) == Some(&b'-'));
    if !hyphens_ok || hex.len() != 32 {
        return None;
    }
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = nibble(*hex.get(2 * i)?)?;
        let lo = nibble(*hex.get(2 * i + 1)?)?;
        *byte = (hi << 4) | lo;
    }
    Some(Uuid(out))
}

fn vdi_facts(info: VdiInfo) -> VdiFacts {
    VdiFacts {
        uuid: info.uuid.to_string(),
        name: info.name,
        virtual_size: info.virtual_size,
        physical_utilisation: info.physical_utilisation,
        read_only: info.read_only,
        is_snapshot: info.is_snapshot,
        snapshot_of: info.snapshot_of.map(|u| u.to_string()),
        parent: info.parent.map(|u| u.to_string()),
    }
}

/// What the XenAPI learns from a storage-manager failure.
pub fn storage_error(error: SrError) -> StorageError {
    match error {
        SrError::VdiNotFound(uuid) => StorageError::VdiNotFound(uuid.to_string()),
        SrError::ReadOnly(uuid) => StorageError::ReadOnly(uuid.to_string()),
        SrError::SrFull { .. } => StorageError::SrFull,
        SrError::InvalidSize(size) => StorageError::InvalidSize(size),
        SrError::InvalidName => StorageError::InvalidName,
        SrError::OutOfRange { offset, len, .. } => StorageError::OutOfRange { offset, len },
        SrError::Unaligned { offset, len, .. } => StorageError::Unaligned { offset, len },
        SrError::NeedsReattach => StorageError::Failed(
            "a metadata commit failed midway; the SR is attached again at the next boot"
                .to_string(),
        ),
        SrError::Device(e) => StorageError::Failed(format!("disk error: {e}")),
        other => StorageError::Failed(format!("{other}")),
    }
}

impl<D: BlockDevice> Repositories<D> {
    // The XenAPI names SRs and VDIs by their UUIDs' text: parsed here, once per call.
    fn find(&self, sr: &str) -> Result<&Repository<D>, StorageError> {
        let uuid = parse_uuid(sr).ok_or_else(|| StorageError::SrNotFound(sr.to_string()))?;
        self.srs
            .iter()
            .find(|r| r.sr.uuid() == uuid)
            .ok_or_else(|| StorageError::SrNotFound(sr.to_string()))
    }

    fn find_mut(&mut self, sr: &str) -> Result<&mut Sr<D>, StorageError> {
        let uuid = parse_uuid(sr).ok_or_else(|| StorageError::SrNotFound(sr.to_string()))?;
        self.srs
            .iter_mut()
            .find(|r| r.sr.uuid() == uuid)
            .map(|r| &mut r.sr)
            .ok_or_else(|| StorageError::SrNotFound(sr.to_string()))
    }
}

fn vdi_uuid(vdi: &str) -> Result<Uuid, StorageError> {
    parse_uuid(vdi).ok_or_else(|| StorageError::VdiNotFound(vdi.to_string()))
}

/// A VDI Keel keeps for itself: the host database's, the metering's (found by name as
/// the host database's is: writable, not a snapshot).
fn is_reserved(info: &VdiInfo) -> bool {
    is_host_database(info)
        || (is_metering_volume(&info.name) && !info.read_only && !info.is_snapshot)
}

/// The VDI a client names: not found if it is one Keel keeps for itself. (A VDI that does
/// not exist is left to the operation, which says so.)
fn client_vdi<D: BlockDevice>(sr: &Sr<D>, vdi: &str) -> Result<Uuid, StorageError> {
    let uuid = vdi_uuid(vdi)?;
    match sr.vdi_info(uuid) {
        Ok(info) if is_reserved(&info) => Err(StorageError::VdiNotFound(vdi.to_string())),
        _ => Ok(uuid),
    }
}

/// A name a client may give a VDI: anything but a reserved VDI's.
fn client_name(name: &str) -> Result<&str, StorageError> {
    if name == VDI_NAME || is_metering_volume(name) {
        return Err(StorageError::InvalidName);
    }
    Ok(name)
}

/// Runs an operation that yields a VDI and describes the result.
fn describe<D: BlockDevice>(
    sr: &mut Sr<D>,
    op: impl FnOnce(&mut Sr<D>) -> Result<Uuid, SrError>,
) -> Result<VdiFacts, StorageError> {
    let uuid = op(sr).map_err(storage_error)?;
    sr.vdi_info(uuid).map(vdi_facts).map_err(storage_error)
}

impl<D: BlockDevice> StorageBackend for Repositories<D> {
    fn srs(&self) -> Vec<SrFacts> {
        self.srs
            .iter()
            .map(|r| SrFacts {
                uuid: r.sr.uuid().to_string(),
                device: r.device.clone(),
                bus: r.bus.clone(),
                physical_size: r.sr.physical_size(),
                physical_utilisation: r.sr.physical_utilisation(),
                virtual_allocation: r.sr.virtual_allocation(),
                sector_size: r.sr.geometry().sector_size,
            })
            .collect()
    }

    fn vdis(&self, sr: &str) -> Result<Vec<VdiFacts>, StorageError> {
        Ok(self
            .find(sr)?
            .sr
            .list_vdis()
            .into_iter()
            .filter(|info| !is_reserved(info))
            .map(vdi_facts)
            .collect())
    }

    fn create_vdi(
        &mut self,
        sr: &str,
        name: &str,
        virtual_size: u64,
    ) -> Result<VdiFacts, StorageError> {
        let name = client_name(name)?;
        describe(self.find_mut(sr)?, |sr| sr.create_vdi(name, virtual_size))
    }

    fn destroy_vdi(&mut self, sr: &str, vdi: &str) -> Result<(), StorageError> {
        let sr = self.find_mut(sr)?;
        let uuid = client_vdi(sr, vdi)?;
        sr.destroy_vdi(uuid).map_err(storage_error)
    }

    fn resize_vdi(
        &mut self,
        sr: &str,
        vdi: &str,
        virtual_size: u64,
    ) -> Result<VdiFacts, StorageError> {
        let sr = self.find_mut(sr)?;
        let uuid = client_vdi(sr, vdi)?;
        describe(sr, |sr| sr.resize_vdi(uuid, virtual_size).map(|()| uuid))
    }

    fn set_vdi_name(&mut self, sr: &str, vdi: &str, name: &str) -> Result<(), StorageError> {
        let name = client_name(name)?;
        let sr = self.find_mut(sr)?;
        let uuid = client_vdi(sr, vdi)?;
        sr.rename_vdi(uuid, name).map_err(storage_error)
    }

    fn snapshot_vdi(&mut self, sr: &str, vdi: &str) -> Result<VdiFacts, StorageError> {
        let sr = self.find_mut(sr)?;
        let uuid = client_vdi(sr, vdi)?;
        describe(sr, |sr| sr.snapshot_vdi(uuid))
    }

    fn clone_vdi(&mut self, sr: &str, vdi: &str, name: &str) -> Result<VdiFacts, StorageError> {
        let name = client_name(name)?;
        let sr = self.find_mut(sr)?;
        let uuid = client_vdi(sr, vdi)?;
        describe(sr, |sr| sr.clone_vdi(uuid, name))
    }

    fn copy_vdi(&mut self, sr: &str, vdi: &str, name: &str) -> Result<VdiFacts, StorageError> {
        let name = client_name(name)?;
        let sr = self.find_mut(sr)?;
        let uuid = client_vdi(sr, vdi)?;
        describe(sr, |sr| sr.copy_vdi(uuid, name))
    }

    fn read(
        &mut self,
        sr: &str,
        vdi: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), StorageError> {
        let sr = self.find_mut(sr)?;
        let uuid = client_vdi(sr, vdi)?;
        sr.read(uuid, offset, out).map_err(storage_error)
    }

    fn write(&mut self, sr: &str, vdi: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let sr = self.find_mut(sr)?;
        let uuid = client_vdi(sr, vdi)?;
        sr.write(uuid, offset, data).map_err(storage_error)
    }

    fn flush(&mut self, sr: &str) -> Result<(), StorageError> {
        self.find_mut(sr)?.flush().map_err(storage_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_parse_in_either_case_and_only_well_formed() {
        let uuid = Uuid([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        assert_eq!(
            parse_uuid("12345678-9abc-def0-0123-456789abcdef"),
            Some(uuid)
        );
        assert_eq!(
            parse_uuid("12345678-9ABC-DEF0-0123-456789ABCDEF"),
            Some(uuid)
        );
        assert_eq!(parse_uuid(&uuid.to_string()), Some(uuid));
        for bad in [
            "",
            "12345678-9abc-def0-0123-456789abcde",
            "123456789-abc-def0-0123-456789abcdef",
            "12345678-9abc-def0-0123-456789abcdeg",
            "12345678+9abc-def0-0123-456789abcdef",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }
}
