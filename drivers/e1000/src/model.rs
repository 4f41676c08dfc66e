//! Which controllers the driver knows, and the few places where they differ.

use crate::regs::{self, EerdLayout};

pub const INTEL: u16 = 0x8086;

/// A supported controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// 82540EM (PCI device 8086:100e), QEMU's `e1000`.
    I82540Em,
    /// 82574L (PCI device 8086:10d3), QEMU's `e1000e`.
    I82574L,
}

impl Model {
    /// The model of a PCI function, if the driver supports it.
    ///
    /// Only parts whose programming model was checked are listed: other 8254x and later
    /// PCIe parts differ in EEPROM access or need workarounds the driver does not have.
    pub fn from_pci_id(vendor: u16, device: u16) -> Option<Model> {
        match (vendor, device) {
            (INTEL, 0x100e) => Some(Model::I82540Em),
            (INTEL, 0x10d3) => Some(Model::I82574L),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Model::I82540Em => "82540EM",
            Model::I82574L => "82574L",
        }
    }

    /// The Linux driver family name, as operators know the NIC.
    pub const fn driver_name(self) -> &'static str {
        match self {
            Model::I82540Em => "e1000",
            Model::I82574L => "e1000e",
        }
    }

    pub const fn eerd(self) -> EerdLayout {
        match self {
            Model::I82540Em => EerdLayout::I8254X,
            Model::I82574L => EerdLayout::I82574,
        }
    }

    /// The inter-packet gap each manual recommends for copper at full duplex.
    pub const fn tipg(self) -> u32 {
        match self {
            Model::I82540Em => regs::tipg(10, 8, 6),
            Model::I82574L => regs::tipg(8, 8, 6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_exactly_the_checked_parts() {
        assert_eq!(Model::from_pci_id(0x8086, 0x100e), Some(Model::I82540Em));
        assert_eq!(Model::from_pci_id(0x8086, 0x10d3), Some(Model::I82574L));
        // An ICH-integrated part has no EERD: not ours.
        assert_eq!(Model::from_pci_id(0x8086, 0x1502), None);
        assert_eq!(Model::from_pci_id(0x1af4, 0x100e), None);
    }
}
