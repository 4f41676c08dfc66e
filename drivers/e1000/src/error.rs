//! Why a controller could not be started.

use core::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E1000Error {
    /// No DMA memory for rings or buffers.
    NoMemory,
    /// A ring size the hardware cannot take (a multiple of 8 descriptors, 8 to 4096).
    RingSize { descriptors: u16 },
    /// CTRL.RST did not clear after a software reset.
    ResetTimeout,
    /// An EEPROM read did not finish.
    EepromTimeout { word: u8 },
    /// Neither the receive-address registers nor the EEPROM hold a usable station address.
    NoMacAddress,
}

impl fmt::Display for E1000Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E1000Error::NoMemory => write!(f, "out of DMA memory"),
            E1000Error::RingSize { descriptors } => {
                write!(f, "{descriptors} descriptors is not a valid ring size")
            }
            E1000Error::ResetTimeout => write!(f, "controller did not finish its reset"),
            E1000Error::EepromTimeout { word } => {
                write!(f, "EEPROM read of word {word} did not finish")
            }
            E1000Error::NoMacAddress => write!(f, "no usable MAC address"),
        }
    }
}
