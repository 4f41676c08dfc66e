//! The network-device interface every NIC driver (virtio-net, e1000) implements, and the
//! in-memory test double that host tests wire stacks together with.
//!
//! It moves whole Ethernet frames (no FCS) and copies them: the caller owns its buffers,
//! so no driver lifetime leaks into the TCP/IP stack. Counters are kept by the drivers
//! themselves, in the same [`Counters`] shape, so the console and the XenAPI `PIF_metrics`
//! read them the same way whatever the NIC.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod fake;

use core::fmt;

/// Largest Ethernet frame without FCS and VLAN tag: 14-byte header + 1500-byte payload.
pub const MAX_FRAME: usize = 1514;

/// Frame and error counters of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Received frames thrown away (too big for the caller's buffer, malformed).
    pub rx_dropped: u64,
    /// Frames that could not be queued for transmission (ring full).
    pub tx_dropped: u64,
    /// Device-reported errors.
    pub errors: u64,
}

/// What a device can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetDeviceError {
    /// No room to queue a frame right now; try after completions.
    Busy,
    /// The frame is larger than the device accepts.
    FrameTooLarge { len: usize },
    /// The device reported an error or stopped responding.
    Device,
}

impl fmt::Display for NetDeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetDeviceError::Busy => write!(f, "transmit queue full"),
            NetDeviceError::FrameTooLarge { len } => write!(f, "frame of {len} bytes is too large"),
            NetDeviceError::Device => write!(f, "device error"),
        }
    }
}

/// An Ethernet device.
pub trait NetDevice {
    /// The station address.
    fn mac_address(&self) -> [u8; 6];

    /// Copies the next received frame into `buf` and returns its length, or `None` when no
    /// frame is waiting. A frame longer than `buf` is dropped and counted, never truncated.
    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetDeviceError>;

    /// True when [`NetDevice::transmit`] would accept a frame now.
    fn can_transmit(&mut self) -> bool;

    /// Queues one frame for transmission.
    fn transmit(&mut self, frame: &[u8]) -> Result<(), NetDeviceError>;

    fn counters(&self) -> Counters;
}
