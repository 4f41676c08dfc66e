//! `VIRTIO_F_ACCESS_PLATFORM` for devices behind an IOMMU.
//!
//! A device that offers this feature (QEMU's `iommu_platform=on`, as under Xen with an
//! emulated IOMMU) translates every DMA address through the platform IOMMU and refuses to
//! start unless the driver accepts the feature. `virtio-drivers` never accepts it, so this
//! transport adds it to what the driver writes whenever the device offered it.
//!
//! That is correct for Keel because Keel hands devices the addresses the platform expects:
//! its own physical addresses. On bare metal they are the bus addresses; under Xen the IOMMU
//! maps dom0's physical addresses to machine ones. No Xen-specific code is involved.

use core::fmt::Debug;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Feature bit 33.
pub const ACCESS_PLATFORM: u64 = 1 << 33;

/// The feature bits to write: the driver's choice, plus ACCESS_PLATFORM if the device offered it.
pub fn with_access_platform(device_features: u64, driver_features: u64) -> u64 {
    driver_features | (device_features & ACCESS_PLATFORM)
}

/// A transport that accepts `VIRTIO_F_ACCESS_PLATFORM` on the driver's behalf.
pub struct PlatformTransport<T> {
    inner: T,
    device_features: u64,
}

impl<T: Transport> PlatformTransport<T> {
    pub fn new(inner: T) -> Self {
        PlatformTransport {
            inner,
            device_features: 0,
        }
    }

    /// Whether the device asked for IOMMU-translated DMA.
    pub fn behind_iommu(&self) -> bool {
        self.device_features & ACCESS_PLATFORM != 0
    }
}

impl<T: Transport> Transport for PlatformTransport<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.device_features = self.inner.read_device_features();
        self.device_features
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner
            .write_driver_features(with_access_platform(self.device_features, driver_features))
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<V: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<V> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<V: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

impl<T: Debug> Debug for PlatformTransport<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PlatformTransport")
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_platform_is_added_only_when_offered() {
        let version_1 = 1 << 32;
        assert_eq!(
            with_access_platform(version_1 | ACCESS_PLATFORM, version_1),
            version_1 | ACCESS_PLATFORM
        );
        assert_eq!(with_access_platform(version_1, version_1), version_1);
        // Never adds anything else the device offered.
        assert_eq!(with_access_platform(u64::MAX, 0), ACCESS_PLATFORM);
    }
}
