//! smoltcp's `Device` over a [`NetDevice`]: one receive buffer, frames copied in and out.

use alloc::vec;
use alloc::vec::Vec;

use keel_netdev::{NetDevice, MAX_FRAME};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Adapts a [`NetDevice`] to smoltcp.
pub struct DeviceAdapter<D> {
    device: D,
    rx: Vec<u8>,
    tx: Vec<u8>,
}

impl<D: NetDevice> DeviceAdapter<D> {
    pub fn new(device: D) -> Self {
        DeviceAdapter {
            device,
            rx: vec![0; MAX_FRAME],
            tx: vec![0; MAX_FRAME],
        }
    }

    pub fn inner(&self) -> &D {
        &self.device
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

pub struct TxToken<'a, D: NetDevice> {
    device: &'a mut D,
    buf: &'a mut Vec<u8>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl<D: NetDevice> phy::TxToken for TxToken<'_, D> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // smoltcp never builds frames above the MTU we advertise; clamp anyway so a bug
        // there cannot index out of bounds here.
        let len = len.min(self.buf.len());
        let result = f(&mut self.buf[..len]);
        // A full queue drops the frame (counted by the device); TCP retransmits.
        let _ = self.device.transmit(&self.buf[..len]);
        result
    }
}

impl<D: NetDevice> phy::Device for DeviceAdapter<D> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, D>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.device.can_transmit() {
            // Every received frame may need an answer; leave it queued until there is room.
            return None;
        }
        let len = self.device.receive(&mut self.rx).ok().flatten()?;
        let Self { device, rx, tx } = self;
        Some((RxToken { frame: &rx[..len] }, TxToken { device, buf: tx }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.device.can_transmit() {
            return None;
        }
        Some(TxToken {
            device: &mut self.device,
            buf: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = None;
        caps
    }
}
