//! `virtio-drivers`' PCI configuration access over Keel's [`ConfigSpace`].

use core::fmt;

use keel_pci::{reg, Address, ConfigSpace};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};
use virtio_drivers::Hal;

use crate::access_platform::PlatformTransport;

/// The transport every Keel virtio driver uses: PCI, accepting `VIRTIO_F_ACCESS_PLATFORM`.
pub type Transport = PlatformTransport<PciTransport>;

/// Config-space access shared with the rest of the kernel.
pub struct SharedConfig(&'static (dyn ConfigSpace + Sync));

impl ConfigurationAccess for SharedConfig {
    fn read_word(&self, f: DeviceFunction, register_offset: u8) -> u32 {
        self.0.read32(
            Address::new(f.bus, f.device, f.function),
            u16::from(register_offset),
        )
    }
    fn write_word(&mut self, f: DeviceFunction, register_offset: u8, data: u32) {
        self.0.write32(
            Address::new(f.bus, f.device, f.function),
            u16::from(register_offset),
            data,
        )
    }
    unsafe fn unsafe_clone(&self) -> Self {
        SharedConfig(self.0)
    }
}

/// Why a virtio PCI function could not be opened.
#[derive(Debug)]
pub enum TransportError {
    /// The function is not a modern (virtio 1.0) device or its capabilities are malformed.
    Pci(VirtioPciError),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Pci(e) => write!(f, "virtio PCI transport: {e}"),
        }
    }
}

/// Enables memory decoding and bus mastering, then opens the virtio transport of `address`.
pub fn open_transport<H: Hal>(
    config: &'static (dyn ConfigSpace + Sync),
    address: Address,
) -> Result<Transport, TransportError> {
    keel_pci::enable(config, address, reg::CMD_MEMORY | reg::CMD_BUS_MASTER);
    let mut root = PciRoot::new(SharedConfig(config));
    let function = DeviceFunction {
        bus: address.bus,
        device: address.device,
        function: address.function,
    };
    PciTransport::new::<H, _>(&mut root, function)
        .map(PlatformTransport::new)
        .map_err(TransportError::Pci)
}
