//! Helpers shared by the storage tests: small SRs on the in-memory disk, a file-backed disk,
//! and a whole-SR snapshot for before/after comparisons.
#![allow(dead_code)]

pub mod file_disk;

use keel_block::fakes::MemDisk;
use keel_block::BlockDevice;
use keel_storage::{FormatOptions, Sr, Uuid, VdiInfo};

pub const EXTENT: u64 = 4096;
pub const SR_UUID: Uuid = Uuid([0x5a; 16]);

/// A 1 MiB disk of 512-byte sectors.
pub fn mem_disk() -> MemDisk {
    MemDisk::with_geometry(512, 2048)
}

pub fn options() -> FormatOptions {
    let mut options = FormatOptions::new(SR_UUID);
    options.extent_size = EXTENT;
    options.metadata_blocks = Some(32);
    options
}

/// A fresh SR with 4 KiB extents and a 32-block metadata area on a 1 MiB disk; the test keeps
/// a handle on the disk.
pub fn mem_sr() -> (Sr<MemDisk>, MemDisk) {
    let disk = mem_disk();
    let sr = Sr::format(disk.clone(), options()).expect("format");
    (sr, disk)
}

/// Deterministic, position-dependent data so misplaced blocks are noticed.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            seed.wrapping_mul(31)
                .wrapping_add((i / 512) as u8)
                .wrapping_add(i as u8 ^ seed)
        })
        .collect()
}

pub fn read_all<D: BlockDevice>(sr: &mut Sr<D>, uuid: Uuid) -> Vec<u8> {
    let size = sr.vdi_info(uuid).expect("vdi").virtual_size as usize;
    let mut out = vec![0; size];
    sr.read(uuid, 0, &mut out).expect("read");
    out
}

/// Everything a user can observe of an SR: every VDI's attributes and contents.
pub type Observed = Vec<(VdiInfo, Vec<u8>)>;

pub fn observe<D: BlockDevice>(sr: &mut Sr<D>) -> Observed {
    let infos = sr.list_vdis();
    infos
        .into_iter()
        .map(|info| {
            let data = read_all(sr, info.uuid);
            (info, data)
        })
        .collect()
}
