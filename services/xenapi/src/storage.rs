//! The storage seam: what the XenAPI needs from the storage manager, as a trait the kernel
//! implements over its SRs (so this crate stays independent of how SRs are stored).
//!
//! SRs and VDIs are named by their UUIDs (stable across reboots); XenAPI references are this
//! service's business. Every operation is synchronous and leaves the storage consistent when
//! it returns: metadata operations are durable when they return `Ok`, data writes once
//! [`StorageBackend::flush`] returns.

use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::error::ApiError;

/// An attached SR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrFacts {
    pub uuid: String,
    /// Identity of the disk it lives on (`nvme-keel0-n1`, ...).
    pub device: String,
    /// How the disk is attached (`nvme`, `virtio-blk`).
    pub bus: String,
    /// Bytes available for VDI data.
    pub physical_size: u64,
    /// Bytes of it in use.
    pub physical_utilisation: u64,
    /// Sum of the VDIs' virtual sizes.
    pub virtual_allocation: u64,
    /// VDI sizes and data offsets are multiples of this.
    pub sector_size: u32,
}

/// A VDI as the storage manager knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdiFacts {
    pub uuid: String,
    pub name: String,
    pub virtual_size: u64,
    pub physical_utilisation: u64,
    pub read_only: bool,
    pub is_snapshot: bool,
    /// UUID of the VDI a snapshot was taken of.
    pub snapshot_of: Option<String>,
    /// UUID of the VDI a snapshot or clone was made from.
    pub parent: Option<String>,
}

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageError {
    SrNotFound(String),
    VdiNotFound(String),
    /// Not enough free data (or metadata) space; nothing changed.
    SrFull,
    /// The VDI is a read-only snapshot.
    ReadOnly(String),
    /// A size of zero, beyond the per-VDI limit, or not a whole number of sectors.
    InvalidSize(u64),
    /// Names are 1 to 255 bytes.
    InvalidName,
    /// I/O past the end of the VDI.
    OutOfRange {
        offset: u64,
        len: u64,
    },
    /// I/O not aligned to the sector size.
    Unaligned {
        offset: u64,
        len: u64,
    },
    /// The disk failed or the SR needs re-attaching; the message says which.
    Failed(String),
}

impl StorageError {
    /// The XenAPI error for this failure of an operation on `vdi_ref` (may be empty).
    pub fn to_api_error(&self, vdi_ref: &str, maximum_free: u64) -> ApiError {
        match self {
            StorageError::SrNotFound(uuid) => ApiError::UuidInvalid {
                class: "SR".to_string(),
                uuid: uuid.clone(),
            },
            StorageError::VdiNotFound(uuid) => ApiError::UuidInvalid {
                class: "VDI".to_string(),
                uuid: uuid.clone(),
            },
            StorageError::SrFull => ApiError::SrFull {
                requested: 0,
                maximum: maximum_free,
            },
            StorageError::ReadOnly(_) => ApiError::VdiReadOnly {
                vdi: vdi_ref.to_string(),
            },
            StorageError::InvalidSize(size) => ApiError::ValueNotSupported {
                field: "virtual_size".to_string(),
                value: size.to_string(),
                reason: "must be a non-zero number of sectors within the SR's limit".to_string(),
            },
            StorageError::InvalidName => ApiError::ValueNotSupported {
                field: "name_label".to_string(),
                value: String::new(),
                reason: "must be at most 255 bytes and not the reserved keel-host-database"
                    .to_string(),
            },
            StorageError::OutOfRange { offset, len } => ApiError::ValueNotSupported {
                field: "data".to_string(),
                value: alloc::format!("{len} bytes at {offset}"),
                reason: "beyond the end of the VDI".to_string(),
            },
            StorageError::Unaligned { offset, len } => ApiError::ValueNotSupported {
                field: "data".to_string(),
                value: alloc::format!("{len} bytes at {offset}"),
                reason: "not a whole number of sectors".to_string(),
            },
            StorageError::Failed(message) => ApiError::SrBackendFailure {
                code: "EIO".to_string(),
                message: message.clone(),
            },
        }
    }
}

/// The storage manager, as the XenAPI uses it.
pub trait StorageBackend {
    /// Every attached SR.
    fn srs(&self) -> Vec<SrFacts>;
    /// The VDIs of one SR.
    fn vdis(&self, sr: &str) -> Result<Vec<VdiFacts>, StorageError>;
    /// Creates an empty VDI of `virtual_size` bytes (a multiple of the sector size).
    fn create_vdi(
        &mut self,
        sr: &str,
        name: &str,
        virtual_size: u64,
    ) -> Result<VdiFacts, StorageError>;
    fn destroy_vdi(&mut self, sr: &str, vdi: &str) -> Result<(), StorageError>;
    fn resize_vdi(
        &mut self,
        sr: &str,
        vdi: &str,
        virtual_size: u64,
    ) -> Result<VdiFacts, StorageError>;
    /// Renames a VDI (`name` is 1 to 255 bytes); durable when it returns `Ok`.
    fn set_vdi_name(&mut self, sr: &str, vdi: &str, name: &str) -> Result<(), StorageError>;
    /// A read-only snapshot sharing the VDI's data.
    fn snapshot_vdi(&mut self, sr: &str, vdi: &str) -> Result<VdiFacts, StorageError>;
    /// A writable clone sharing the VDI's data.
    fn clone_vdi(&mut self, sr: &str, vdi: &str, name: &str) -> Result<VdiFacts, StorageError>;
    /// A full, independent copy in the same SR.
    fn copy_vdi(&mut self, sr: &str, vdi: &str, name: &str) -> Result<VdiFacts, StorageError>;
    /// Reads `out.len()` bytes at `offset` (sector aligned); holes read as zeros.
    fn read(
        &mut self,
        sr: &str,
        vdi: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), StorageError>;
    /// Writes at `offset` (sector aligned); durable after [`StorageBackend::flush`].
    fn write(&mut self, sr: &str, vdi: &str, offset: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Makes every write to the SR so far durable.
    fn flush(&mut self, sr: &str) -> Result<(), StorageError>;
}

/// A storage manager shared by several users (the XenAPI, the host database, the disk
/// backends of guests), each handed its own handle: every call borrows it for its own length.
/// Keel runs its tasks one at a time on one CPU, so a call never finds it borrowed.
impl<T: StorageBackend + ?Sized> StorageBackend for Rc<RefCell<T>> {
    fn srs(&self) -> Vec<SrFacts> {
        self.borrow().srs()
    }
    fn vdis(&self, sr: &str) -> Result<Vec<VdiFacts>, StorageError> {
        self.borrow().vdis(sr)
    }
    fn create_vdi(&mut self, sr: &str, name: &str, size: u64) -> Result<VdiFacts, StorageError> {
        self.borrow_mut().create_vdi(sr, name, size)
    }
    fn destroy_vdi(&mut self, sr: &str, vdi: &str) -> Result<(), StorageError> {
        self.borrow_mut().destroy_vdi(sr, vdi)
    }
    fn resize_vdi(&mut self, sr: &str, vdi: &str, size: u64) -> Result<VdiFacts, StorageError> {
        self.borrow_mut().resize_vdi(sr, vdi, size)
    }
    fn set_vdi_name(&mut self, sr: &str, vdi: &str, name: &str) -> Result<(), StorageError> {
        self.borrow_mut().set_vdi_name(sr, vdi, name)
    }
    fn snapshot_vdi(&mut self, sr: &str, vdi: &str) -> Result<VdiFacts, StorageError> {
        self.borrow_mut().snapshot_vdi(sr, vdi)
    }
    fn clone_vdi(&mut self, sr: &str, vdi: &str, name: &str) -> Result<VdiFacts, StorageError> {
        self.borrow_mut().clone_vdi(sr, vdi, name)
    }
    fn copy_vdi(&mut self, sr: &str, vdi: &str, name: &str) -> Result<VdiFacts, StorageError> {
        self.borrow_mut().copy_vdi(sr, vdi, name)
    }
    fn read(
        &mut self,
        sr: &str,
        vdi: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), StorageError> {
        self.borrow_mut().read(sr, vdi, offset, out)
    }
    fn write(&mut self, sr: &str, vdi: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.borrow_mut().write(sr, vdi, offset, data)
    }
    fn flush(&mut self, sr: &str) -> Result<(), StorageError> {
        self.borrow_mut().flush(sr)
    }
}
