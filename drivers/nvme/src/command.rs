//! Submission entries (64 bytes) and completion entries (16 bytes), as the controller reads
//! and writes them in queue memory (little endian).

use crate::status::Status;

pub const SQE_SIZE: usize = 64;
pub const CQE_SIZE: usize = 16;

/// Admin command opcodes.
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;
}

/// NVM command set opcodes.
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Identify's CNS values.
pub mod cns {
    pub const NAMESPACE: u32 = 0x00;
    pub const CONTROLLER: u32 = 0x01;
    pub const ACTIVE_NAMESPACES: u32 = 0x02;
}

/// Feature identifiers.
pub const FEATURE_NUMBER_OF_QUEUES: u32 = 0x07;

/// A submission queue entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Command {
    pub opcode: u8,
    pub cid: u16,
    pub nsid: u32,
    pub prp1: u64,
    pub prp2: u64,
    /// CDW10 to CDW15.
    pub cdw: [u32; 6],
}

impl Command {
    pub fn new(opcode: u8) -> Self {
        Command {
            opcode,
            ..Command::default()
        }
    }

    /// The 64 bytes the controller fetches (PSDT = 0: PRPs, no fused operation).
    pub fn to_bytes(&self) -> [u8; SQE_SIZE] {
        let mut out = [0u8; SQE_SIZE];
        let dw0 = u32::from(self.opcode) | (u32::from(self.cid) << 16);
        out[0..4].copy_from_slice(&dw0.to_le_bytes());
        out[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        out[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        out[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        for (i, dw) in self.cdw.iter().enumerate() {
            let at = 40 + 4 * i;
            out[at..at + 4].copy_from_slice(&dw.to_le_bytes());
        }
        out
    }

    /// Parses an entry (the inverse of [`Command::to_bytes`]; used by the test double).
    pub fn from_bytes(bytes: &[u8; SQE_SIZE]) -> Self {
        let dw =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let qw = |i: usize| u64::from(dw(i)) | (u64::from(dw(i + 4)) << 32);
        let dw0 = dw(0);
        Command {
            opcode: dw0 as u8,
            cid: (dw0 >> 16) as u16,
            nsid: dw(4),
            prp1: qw(24),
            prp2: qw(32),
            cdw: core::array::from_fn(|i| dw(40 + 4 * i)),
        }
    }

    /// Starting LBA of a read or write (CDW10-11).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw[0]) | (u64::from(self.cdw[1]) << 32)
    }

    /// Number of logical blocks of a read or write (CDW12 bits 15:0 are zero-based).
    pub fn blocks(&self) -> u32 {
        (self.cdw[2] & 0xffff) + 1
    }
}

/// A read or write of `blocks` (at least 1, at most 65 536) logical blocks at `slba`.
pub fn read_write(opcode: u8, nsid: u32, slba: u64, blocks: u32) -> Command {
    let mut c = Command::new(opcode);
    c.nsid = nsid;
    c.cdw[0] = slba as u32;
    c.cdw[1] = (slba >> 32) as u32;
    c.cdw[2] = blocks.saturating_sub(1) & 0xffff;
    c
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletionEntry {
    /// Command-specific result (DW0).
    pub result: u32,
    /// How far the controller has consumed the submission queue.
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    pub phase: bool,
    pub status: Status,
}

impl CompletionEntry {
    pub fn from_bytes(bytes: &[u8; CQE_SIZE]) -> Self {
        let dw =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let dw2 = dw(8);
        let dw3 = dw(12);
        CompletionEntry {
            result: dw(0),
            sq_head: dw2 as u16,
            sq_id: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            phase: dw3 & (1 << 16) != 0,
            status: Status::from_dw3(dw3),
        }
    }

    /// Encodes an entry with a raw status field (used by the test double).
    pub fn encode(
        result: u32,
        sq_head: u16,
        sq_id: u16,
        cid: u16,
        phase: bool,
        status_field: u16,
    ) -> [u8; CQE_SIZE] {
        let mut out = [0u8; CQE_SIZE];
        out[0..4].copy_from_slice(&result.to_le_bytes());
        let dw2 = u32::from(sq_head) | (u32::from(sq_id) << 16);
        out[8..12].copy_from_slice(&dw2.to_le_bytes());
        let dw3 =
            u32::from(cid) | (u32::from(phase) << 16) | (u32::from(status_field & 0x7fff) << 17);
        out[12..16].copy_from_slice(&dw3.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StatusCode;

    #[test]
    fn command_round_trips_through_bytes() {
        let mut c = read_write(io::WRITE, 1, 0x1_2345_6789, 8);
        c.cid = 0x42;
        c.prp1 = 0x1000;
        c.prp2 = 0xdead_b000;
        let bytes = c.to_bytes();
        assert_eq!(bytes[0], io::WRITE);
        assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]), 0x42);
        let back = Command::from_bytes(&bytes);
        assert_eq!(back, c);
        assert_eq!(back.slba(), 0x1_2345_6789);
        assert_eq!(back.blocks(), 8);
    }

    #[test]
    fn completion_entry_decodes_fields() {
        // Status field: SCT 2, SC 0x80 (write fault), DNR.
        let status = 0x80 | (2 << 8) | (1 << 14);
        let bytes = CompletionEntry::encode(7, 3, 1, 0x99, true, status);
        let e = CompletionEntry::from_bytes(&bytes);
        assert_eq!(
            (e.result, e.sq_head, e.sq_id, e.cid, e.phase),
            (7, 3, 1, 0x99, true)
        );
        assert_eq!(e.status.code, StatusCode::WriteFault);
        assert!(e.status.do_not_retry);
    }
}
