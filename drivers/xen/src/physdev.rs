//! `physdev_op` hypercall (`xen/include/public/physdev.h`), the minimum a PVH dom0 needs:
//! reporting the PCI devices it enumerates so Xen sets up IOMMU contexts and MSI for them.

use crate::error::XenError;
use crate::hypercall::{call_with, HypercallOp, Hypervisor};

const PHYSDEVOP_PCI_DEVICE_ADD: u64 = 25;
const PHYSDEVOP_PCI_DEVICE_REMOVE: u64 = 26;

/// `XEN_PCI_DEV_*` flags of [`PhysdevPciDeviceAdd`].
pub mod pci_dev_flags {
    pub const EXTFN: u32 = 0x1;
    pub const VIRTFN: u32 = 0x2;
}

/// `struct physdev_pci_device_add` without the optional trailing array (12 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysdevPciDeviceAdd {
    pub seg: u16,
    pub bus: u8,
    pub devfn: u8,
    pub flags: u32,
    /// For a virtual function: its physical function.
    pub physfn_bus: u8,
    pub physfn_devfn: u8,
    pub pad: u16,
}

/// `struct physdev_pci_device` (4 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysdevPciDevice {
    pub seg: u16,
    pub bus: u8,
    pub devfn: u8,
}

/// A PCI function's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddress {
    pub seg: u16,
    pub bus: u8,
    pub devfn: u8,
}

/// `PHYSDEVOP_pci_device_add` for a physical function (or an extended function with
/// `pci_dev_flags::EXTFN`). `EEXIST` means Xen already knows the device, which is success.
pub fn pci_device_add<H: Hypervisor + ?Sized>(
    hv: &H,
    dev: PciAddress,
    flags: u32,
) -> Result<(), XenError> {
    let mut arg = PhysdevPciDeviceAdd {
        seg: dev.seg,
        bus: dev.bus,
        devfn: dev.devfn,
        flags,
        physfn_bus: 0,
        physfn_devfn: 0,
        pad: 0,
    };
    match call_with(
        hv,
        HypercallOp::PhysdevOp,
        PHYSDEVOP_PCI_DEVICE_ADD,
        &mut arg,
    ) {
        Ok(_) | Err(XenError::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `PHYSDEVOP_pci_device_remove`.
pub fn pci_device_remove<H: Hypervisor + ?Sized>(hv: &H, dev: PciAddress) -> Result<(), XenError> {
    let mut arg = PhysdevPciDevice {
        seg: dev.seg,
        bus: dev.bus,
        devfn: dev.devfn,
    };
    call_with(
        hv,
        HypercallOp::PhysdevOp,
        PHYSDEVOP_PCI_DEVICE_REMOVE,
        &mut arg,
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        // 12 bytes in C; the flexible `optarr` starts at 12 and is not sent.
        assert_eq!(size_of::<PhysdevPciDeviceAdd>(), 12);
        assert_eq!(offset_of!(PhysdevPciDeviceAdd, flags), 4);
        assert_eq!(offset_of!(PhysdevPciDeviceAdd, physfn_bus), 8);
        assert_eq!(size_of::<PhysdevPciDevice>(), 4);
    }

    #[test]
    fn reports_devices_and_tolerates_known_ones() {
        let xen = FakeXen::new();
        let nvme = PciAddress {
            seg: 0,
            bus: 0,
            devfn: 0x20,
        };
        pci_device_add(&xen, nvme, 0).unwrap();
        pci_device_add(&xen, nvme, 0).unwrap();
        assert_eq!(xen.pci_devices(), [(0, 0, 0x20)]);
        pci_device_remove(&xen, nvme).unwrap();
        assert!(xen.pci_devices().is_empty());
        assert_eq!(pci_device_remove(&xen, nvme), Err(XenError::ENODEV));
    }
}
