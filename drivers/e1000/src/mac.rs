//! The station address: from Receive Address 0 (the controller loads it from the EEPROM
//! after a reset), or else read from the EEPROM's first three words through EERD and written
//! into Receive Address 0, so the receive filter accepts it.

use crate::error::E1000Error;
use crate::hal::{Hal, Registers};
use crate::model::Model;
use crate::regs;

/// Polls of EERD before a word read is given up (10 µs apart: 10 ms in all; QEMU answers
/// at once, hardware within microseconds).
const EERD_POLLS: u32 = 1000;

/// A usable station address: not all zeros and not multicast (which includes broadcast).
pub fn usable(mac: [u8; 6]) -> bool {
    mac != [0; 6] && mac[0] & 1 == 0
}

/// The address RAL0/RAH0 hold, if marked valid.
pub fn from_receive_address(ral: u32, rah: u32) -> Option<[u8; 6]> {
    if rah & regs::RAH_AV == 0 {
        return None;
    }
    let [a, b, c, d] = ral.to_le_bytes();
    let [e, f, ..] = rah.to_le_bytes();
    Some([a, b, c, d, e, f])
}

/// RAL0 and RAH0 (with Address Valid) for `mac`.
pub fn to_receive_address(mac: [u8; 6]) -> (u32, u32) {
    let ral = u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let rah = u32::from(u16::from_le_bytes([mac[4], mac[5]])) | regs::RAH_AV;
    (ral, rah)
}

/// Reads one 16-bit EEPROM word.
pub fn read_eeprom(
    regs: &mut impl Registers,
    hal: &mut impl Hal,
    model: Model,
    word: u8,
) -> Result<u16, E1000Error> {
    let layout = model.eerd();
    regs.write32(regs::EERD, layout.request(word));
    for _ in 0..EERD_POLLS {
        if let Some(data) = layout.data(regs.read32(regs::EERD)) {
            return Ok(data);
        }
        hal.delay_us(10);
    }
    Err(E1000Error::EepromTimeout { word })
}

/// Finds the station address and makes sure Receive Address 0 filters for it.
pub fn station_address(
    regs: &mut impl Registers,
    hal: &mut impl Hal,
    model: Model,
) -> Result<[u8; 6], E1000Error> {
    let loaded = from_receive_address(regs.read32(regs::RAL0), regs.read32(regs::RAH0));
    if let Some(mac) = loaded.filter(|m| usable(*m)) {
        return Ok(mac);
    }
    let mut mac = [0u8; 6];
    for (word, pair) in mac.chunks_exact_mut(2).enumerate() {
        let data = read_eeprom(regs, hal, model, word as u8)?;
        pair.copy_from_slice(&data.to_le_bytes());
    }
    if !usable(mac) {
        return Err(E1000Error::NoMacAddress);
    }
    let (ral, rah) = to_receive_address(mac);
    regs.write32(regs::RAL0, ral);
    regs.write32(regs::RAH0, rah);
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_address_round_trip() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let (ral, rah) = to_receive_address(mac);
        assert_eq!(ral, 0x1200_5452);
        assert_eq!(rah, 0x8000_5634);
        assert_eq!(from_receive_address(ral, rah), Some(mac));
        assert_eq!(from_receive_address(ral, rah & !regs::RAH_AV), None);
    }

    #[test]
    fn zero_and_multicast_addresses_are_unusable() {
        assert!(!usable([0; 6]));
        assert!(!usable([0xff; 6]));
        assert!(!usable([0x01, 0, 0x5e, 0, 0, 1]));
        assert!(usable([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
    }
}
