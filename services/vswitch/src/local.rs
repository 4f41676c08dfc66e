//! Keel's own TCP/IP stack as a switch port.
//!
//! [`local_link`] makes the two ends of a link: a [`LocalDevice`], the [`NetDevice`] the
//! management stack (`keel-net`'s `NetStack`) owns in place of the NIC, and a
//! [`LocalPortEnd`] the switch glue keeps. Frames the stack transmits wait in one bounded
//! queue until the glue feeds them to [`crate::Switch::ingress`]; frames the switch delivers
//! to the local port wait in the other until the stack receives them.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use keel_netdev::{Counters, NetDevice, NetDeviceError};

use crate::forward::FrameEdit;
use crate::mac::MacAddr;
use crate::queue::{FrameQueue, QueueError};

/// Largest frame on the local port: 14-byte header + 1500 bytes, as the stack advertises
/// (`keel_netdev::MAX_FRAME`). The local port's network must not have a larger MTU.
pub const LOCAL_MAX_FRAME: usize = keel_netdev::MAX_FRAME;

#[derive(Debug)]
struct Link {
    to_switch: FrameQueue,
    to_stack: FrameQueue,
    counters: Counters,
}

/// The stack's end: a [`NetDevice`].
#[derive(Debug)]
pub struct LocalDevice {
    mac: MacAddr,
    link: Rc<RefCell<Link>>,
}

/// The switch glue's end.
#[derive(Debug, Clone)]
pub struct LocalPortEnd {
    link: Rc<RefCell<Link>>,
}

/// A link whose queues each hold `depth` frames.
pub fn local_link(mac: MacAddr, depth: usize) -> Result<(LocalDevice, LocalPortEnd), QueueError> {
    let link = Rc::new(RefCell::new(Link {
        to_switch: FrameQueue::new(depth, LOCAL_MAX_FRAME)?,
        to_stack: FrameQueue::new(depth, LOCAL_MAX_FRAME)?,
        counters: Counters::default(),
    }));
    Ok((
        LocalDevice {
            mac,
            link: link.clone(),
        },
        LocalPortEnd { link },
    ))
}

impl LocalPortEnd {
    /// Queues a frame the switch delivered to the local port for the stack. A full queue
    /// drops it (counted as `rx_dropped`; report it with `Switch::record_egress_drop`).
    pub fn deliver(&self, frame: &[u8], edit: FrameEdit) -> Result<(), QueueError> {
        let mut link = self.link.borrow_mut();
        let result = link.to_stack.push(frame, edit);
        if result.is_err() {
            link.counters.rx_dropped = link.counters.rx_dropped.saturating_add(1);
        }
        result
    }

    /// Runs `f` on the oldest frame the stack transmitted and releases it. The link is not
    /// borrowed while `f` runs, so `f` may deliver to this end again.
    pub fn with_transmitted<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let frame: Vec<u8> = self.link.borrow_mut().to_switch.pop()?;
        let result = f(&frame);
        self.link.borrow_mut().to_switch.recycle(frame);
        Some(result)
    }

    /// Frames the stack transmitted that the switch has not taken yet.
    pub fn pending(&self) -> usize {
        self.link.borrow().to_switch.len()
    }
}

impl NetDevice for LocalDevice {
    fn mac_address(&self) -> [u8; 6] {
        self.mac.0
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetDeviceError> {
        let mut link = self.link.borrow_mut();
        loop {
            match link.to_stack.pop_into(buf) {
                None => return Ok(None),
                Some(Ok(len)) => {
                    link.counters.rx_frames = link.counters.rx_frames.saturating_add(1);
                    link.counters.rx_bytes = link.counters.rx_bytes.saturating_add(len as u64);
                    return Ok(Some(len));
                }
                // Longer than the caller's buffer: dropped and counted, never truncated.
                Some(Err(_)) => {
                    link.counters.rx_dropped = link.counters.rx_dropped.saturating_add(1)
                }
            }
        }
    }

    fn can_transmit(&mut self) -> bool {
        !self.link.borrow().to_switch.is_full()
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), NetDeviceError> {
        let mut link = self.link.borrow_mut();
        match link.to_switch.push(frame, FrameEdit::AsIs) {
            Ok(()) => {
                link.counters.tx_frames = link.counters.tx_frames.saturating_add(1);
                link.counters.tx_bytes = link.counters.tx_bytes.saturating_add(frame.len() as u64);
                Ok(())
            }
            Err(e) => {
                link.counters.tx_dropped = link.counters.tx_dropped.saturating_add(1);
                Err(match e {
                    QueueError::TooLarge { len } => NetDeviceError::FrameTooLarge { len },
                    _ => NetDeviceError::Busy,
                })
            }
        }
    }

    fn counters(&self) -> Counters {
        self.link.borrow().counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_pass_both_ways_bounded() {
        let (mut dev, end) = local_link(MacAddr([2, 0, 0, 0, 0, 1]), 2).unwrap();
        assert_eq!(dev.mac_address(), [2, 0, 0, 0, 0, 1]);
        let f = [0xffu8; 20];
        dev.transmit(&f).unwrap();
        dev.transmit(&f).unwrap();
        assert!(!dev.can_transmit());
        assert_eq!(dev.transmit(&f), Err(NetDeviceError::Busy));
        assert_eq!(
            dev.transmit(&[0; LOCAL_MAX_FRAME + 1]),
            Err(NetDeviceError::FrameTooLarge {
                len: LOCAL_MAX_FRAME + 1
            })
        );
        assert_eq!(end.pending(), 2);
        // The glue may deliver back into the link while it holds a transmitted frame.
        let got = end.with_transmitted(|frame| {
            end.deliver(frame, FrameEdit::AsIs).unwrap();
            frame.len()
        });
        assert_eq!(got, Some(20));
        let mut buf = [0u8; LOCAL_MAX_FRAME];
        assert_eq!(dev.receive(&mut buf), Ok(Some(20)));
        assert_eq!(dev.receive(&mut buf), Ok(None));
        let c = dev.counters();
        assert_eq!(
            (c.tx_frames, c.tx_dropped, c.rx_frames, c.rx_bytes),
            (2, 2, 1, 20)
        );
        // A frame too long for the stack's buffer is dropped, not truncated.
        end.deliver(&[0xff; 100], FrameEdit::AsIs).unwrap();
        assert_eq!(dev.receive(&mut buf[..50]), Ok(None));
        assert_eq!(dev.counters().rx_dropped, 1);
    }
}
