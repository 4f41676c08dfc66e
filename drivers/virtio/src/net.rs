//! virtio-net as a [`NetDevice`], over `virtio-drivers`' raw interface.
//!
//! Every receive-queue slot holds a posted buffer; a received frame is copied out and its
//! buffer posted again at once. Transmission copies each frame into a buffer of a fixed pool
//! and hands it to the device without waiting: completed buffers are reclaimed before the
//! next send, so a burst of segments (an HTTP response, a VDI export) streams instead of
//! paying one device round trip per frame.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use keel_netdev::{Counters, NetDevice, NetDeviceError, MAX_FRAME};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::Hal;

use crate::Transport;

/// Queue depth: QEMU's maximum, so bursts (many clients at once) find a posted buffer
/// instead of being dropped by the device.
const QUEUE_SIZE: usize = 256;
/// Frames in flight towards the device.
const TX_SLOTS: usize = 128;
/// Room for a frame plus the virtio-net header.
const BUFFER_LEN: usize = 2048;

type Buffer = Box<[u8; BUFFER_LEN]>;

/// A virtio-net device.
pub struct VirtioNet<H: Hal> {
    device: VirtIONetRaw<H, Transport, QUEUE_SIZE>,
    /// Receive buffers by descriptor token.
    rx: Vec<Option<Buffer>>,
    /// Transmit buffers; `in_flight[slot]` holds the token and length while the device owns it.
    tx: Vec<Buffer>,
    in_flight: Vec<Option<(u16, usize)>>,
    free_tx: Vec<usize>,
    counters: Counters,
}

impl<H: Hal> VirtioNet<H> {
    pub fn new(transport: Transport) -> Result<Self, virtio_drivers::Error> {
        let mut net = VirtioNet {
            device: VirtIONetRaw::new(transport)?,
            rx: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx: (0..TX_SLOTS).map(|_| Box::new([0u8; BUFFER_LEN])).collect(),
            in_flight: vec![None; TX_SLOTS],
            free_tx: (0..TX_SLOTS).rev().collect(),
            counters: Counters::default(),
        };
        for _ in 0..QUEUE_SIZE {
            net.post_rx(Box::new([0u8; BUFFER_LEN]))?;
        }
        Ok(net)
    }

    fn post_rx(&mut self, mut buf: Buffer) -> Result<(), virtio_drivers::Error> {
        // SAFETY: the buffer is boxed (it never moves) and kept in `self.rx` untouched until
        // the device returns it through `poll_receive`.
        let token = unsafe { self.device.receive_begin(buf.as_mut_slice())? };
        match self.rx.get_mut(usize::from(token)) {
            Some(slot) => {
                *slot = Some(buf);
                Ok(())
            }
            None => Err(virtio_drivers::Error::WrongToken),
        }
    }

    /// Takes back every transmit buffer the device has finished with.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.device.poll_transmit() {
            let Some(slot) = self
                .in_flight
                .iter()
                .position(|f| f.is_some_and(|(t, _)| t == token))
            else {
                // A token we never issued: the device is confused; stop rather than loop.
                self.counters.errors += 1;
                return;
            };
            let Some((_, len)) = self.in_flight[slot].take() else {
                return;
            };
            // SAFETY: the same buffer and length that `transmit_begin` was given for this token.
            if unsafe { self.device.transmit_complete(token, &self.tx[slot][..len]) }.is_err() {
                self.counters.errors += 1;
            }
            self.free_tx.push(slot);
        }
    }
}

impl<H: Hal> NetDevice for VirtioNet<H> {
    fn mac_address(&self) -> [u8; 6] {
        self.device.mac_address()
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetDeviceError> {
        let Some(token) = self.device.poll_receive() else {
            return Ok(None);
        };
        let Some(mut rx) = self.rx.get_mut(usize::from(token)).and_then(Option::take) else {
            self.counters.errors += 1;
            return Err(NetDeviceError::Device);
        };
        // SAFETY: `rx` is the buffer posted with this token.
        let result = unsafe { self.device.receive_complete(token, rx.as_mut_slice()) };
        let frame = match result {
            Ok((header, len)) => rx.get(header..header + len).and_then(|packet| {
                let dst = buf.get_mut(..packet.len())?;
                dst.copy_from_slice(packet);
                Some(packet.len())
            }),
            Err(_) => {
                self.counters.errors += 1;
                None
            }
        };
        match frame {
            Some(len) => {
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += len as u64;
            }
            None => self.counters.rx_dropped += 1,
        }
        if self.post_rx(rx).is_err() {
            self.counters.errors += 1;
            return Err(NetDeviceError::Device);
        }
        Ok(frame)
    }

    fn can_transmit(&mut self) -> bool {
        self.reclaim_tx();
        !self.free_tx.is_empty()
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), NetDeviceError> {
        if frame.len() > MAX_FRAME {
            self.counters.tx_dropped += 1;
            return Err(NetDeviceError::FrameTooLarge { len: frame.len() });
        }
        self.reclaim_tx();
        let Some(slot) = self.free_tx.pop() else {
            self.counters.tx_dropped += 1;
            return Err(NetDeviceError::Busy);
        };
        let buf = &mut self.tx[slot];
        let header = match self.device.fill_buffer_header(buf.as_mut_slice()) {
            Ok(h) => h,
            Err(_) => {
                self.free_tx.push(slot);
                self.counters.errors += 1;
                return Err(NetDeviceError::Device);
            }
        };
        let len = header + frame.len();
        buf[header..len].copy_from_slice(frame);
        // SAFETY: the buffer is boxed and not touched again until `reclaim_tx` has seen its
        // token come back from the device.
        match unsafe { self.device.transmit_begin(&self.tx[slot][..len]) } {
            Ok(token) => {
                self.in_flight[slot] = Some((token, len));
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += frame.len() as u64;
                Ok(())
            }
            Err(virtio_drivers::Error::QueueFull) => {
                self.free_tx.push(slot);
                self.counters.tx_dropped += 1;
                Err(NetDeviceError::Busy)
            }
            Err(_) => {
                self.free_tx.push(slot);
                self.counters.errors += 1;
                Err(NetDeviceError::Device)
            }
        }
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}
