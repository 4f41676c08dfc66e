//! Legacy receive and transmit descriptors: 16 bytes each, little-endian, the same layout on
//! the 8254x and the 82574 (which keeps it unless RFCTL.EXSTEN selects extended ones).
//!
//! Receive: buffer address (0..8), length (8..10), checksum (10..12), status (12), errors
//! (13), special (14..16). Transmit: buffer address (0..8), length (8..10), CSO (10), command
//! (11), status (12), CSS (13), special (14..16).

use crate::regs::DESCRIPTOR_LEN;

/// Offset of the status byte, where the device reports Descriptor Done.
pub const STATUS_OFFSET: usize = 12;

/// Status: the device is done with the descriptor (written back).
pub const STATUS_DD: u8 = 1 << 0;
/// Receive status: last descriptor of a frame.
pub const RX_STATUS_EOP: u8 = 1 << 1;

/// Receive errors that make a frame unusable: CRC/alignment (CE), symbol (SE), sequence
/// (SEQ), carrier extension (CXE), data (RXE). IPE and TCPE report checksum offload, which
/// Keel does not enable, so they do not drop a frame.
pub const RX_ERRORS_FATAL: u8 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 4) | (1 << 7);

/// Transmit command: end of packet.
pub const TX_CMD_EOP: u8 = 1 << 0;
/// Transmit command: insert the FCS.
pub const TX_CMD_IFCS: u8 = 1 << 1;
/// Transmit command: report status (set DD when done), which reclaiming relies on.
pub const TX_CMD_RS: u8 = 1 << 3;

pub type Raw = [u8; DESCRIPTOR_LEN];

/// A receive descriptor as the driver posts it: only the buffer, everything else zero (so
/// DD is clear and the write-back is unambiguous).
pub fn rx_posted(buffer: u64) -> Raw {
    let mut raw = [0u8; DESCRIPTOR_LEN];
    raw[..8].copy_from_slice(&buffer.to_le_bytes());
    raw
}

/// What the device wrote back into a receive descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxWriteBack {
    pub length: u16,
    pub status: u8,
    pub errors: u8,
}

impl RxWriteBack {
    pub fn decode(raw: &Raw) -> Self {
        RxWriteBack {
            length: u16::from_le_bytes([raw[8], raw[9]]),
            status: raw[STATUS_OFFSET],
            errors: raw[13],
        }
    }

    pub fn end_of_packet(&self) -> bool {
        self.status & RX_STATUS_EOP != 0
    }
}

/// A transmit descriptor carrying one whole frame.
pub fn tx_frame(buffer: u64, length: u16) -> Raw {
    let mut raw = [0u8; DESCRIPTOR_LEN];
    raw[..8].copy_from_slice(&buffer.to_le_bytes());
    raw[8..10].copy_from_slice(&length.to_le_bytes());
    raw[11] = TX_CMD_EOP | TX_CMD_IFCS | TX_CMD_RS;
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_descriptor_round_trip() {
        let posted = rx_posted(0x1_2345_6000);
        assert_eq!(posted[..8], 0x1_2345_6000u64.to_le_bytes());
        assert_eq!(RxWriteBack::decode(&posted).status & STATUS_DD, 0);
        let mut written = posted;
        written[8..10].copy_from_slice(&60u16.to_le_bytes());
        written[12] = STATUS_DD | RX_STATUS_EOP;
        written[13] = 1;
        let wb = RxWriteBack::decode(&written);
        assert_eq!(wb.length, 60);
        assert!(wb.status & STATUS_DD != 0 && wb.end_of_packet());
        assert_ne!(wb.errors & RX_ERRORS_FATAL, 0);
    }

    #[test]
    fn tx_descriptor_asks_for_fcs_and_status() {
        let raw = tx_frame(0xabc0, 1514);
        assert_eq!(raw[..8], 0xabc0u64.to_le_bytes());
        assert_eq!(u16::from_le_bytes([raw[8], raw[9]]), 1514);
        assert_eq!(raw[11], 0b1011);
        assert_eq!(raw[STATUS_OFFSET], 0);
    }
}
