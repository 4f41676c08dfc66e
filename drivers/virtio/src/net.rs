//! virtio-net as a [`NetDevice`].
//!
//! `VirtIONet` keeps a receive buffer posted in every queue slot and recycles each one after
//! its frame is copied out. Transmission waits for the device to take the frame (one frame in
//! flight), which is quick because the device only copies it.

use keel_netdev::{Counters, NetDevice, NetDeviceError, MAX_FRAME};
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::Hal;

/// Receive queue depth.
const QUEUE_SIZE: usize = 64;
/// Room for a frame plus the virtio-net header.
const BUFFER_LEN: usize = 2048;

/// A virtio-net device.
pub struct VirtioNet<H: Hal> {
    device: VirtIONet<H, PciTransport, QUEUE_SIZE>,
    counters: Counters,
}

impl<H: Hal> VirtioNet<H> {
    pub fn new(transport: PciTransport) -> Result<Self, virtio_drivers::Error> {
        Ok(VirtioNet {
            device: VirtIONet::new(transport, BUFFER_LEN)?,
            counters: Counters::default(),
        })
    }
}

impl<H: Hal> NetDevice for VirtioNet<H> {
    fn mac_address(&self) -> [u8; 6] {
        self.device.mac_address()
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetDeviceError> {
        if !self.device.can_recv() {
            return Ok(None);
        }
        let rx = match self.device.receive() {
            Ok(rx) => rx,
            Err(virtio_drivers::Error::NotReady) => return Ok(None),
            Err(_) => {
                self.counters.errors += 1;
                return Err(NetDeviceError::Device);
            }
        };
        let packet = rx.packet();
        let result = match buf.get_mut(..packet.len()) {
            Some(dst) => {
                dst.copy_from_slice(packet);
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += packet.len() as u64;
                Some(packet.len())
            }
            None => {
                self.counters.rx_dropped += 1;
                None
            }
        };
        if self.device.recycle_rx_buffer(rx).is_err() {
            self.counters.errors += 1;
            return Err(NetDeviceError::Device);
        }
        Ok(result)
    }

    fn can_transmit(&mut self) -> bool {
        self.device.can_send()
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), NetDeviceError> {
        if frame.len() > MAX_FRAME {
            self.counters.tx_dropped += 1;
            return Err(NetDeviceError::FrameTooLarge { len: frame.len() });
        }
        let mut tx = self.device.new_tx_buffer(frame.len());
        tx.packet_mut().copy_from_slice(frame);
        match self.device.send(tx) {
            Ok(()) => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += frame.len() as u64;
                Ok(())
            }
            Err(virtio_drivers::Error::QueueFull) => {
                self.counters.tx_dropped += 1;
                Err(NetDeviceError::Busy)
            }
            Err(_) => {
                self.counters.errors += 1;
                Err(NetDeviceError::Device)
            }
        }
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}
