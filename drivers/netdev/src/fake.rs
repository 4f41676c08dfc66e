//! An in-memory [`NetDevice`]: two ends of a wire, with an optional transmit-queue limit
//! and frame loss, so host tests can run real stacks against each other.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::{Counters, NetDevice, NetDeviceError, MAX_FRAME};

#[derive(Default)]
struct Queues {
    /// Frames travelling towards end 0 and end 1.
    to: [VecDeque<Vec<u8>>; 2],
}

/// One end of a [`Wire`].
pub struct FakeNic {
    mac: [u8; 6],
    end: usize,
    queues: Rc<RefCell<Queues>>,
    /// Frames the peer may have waiting before transmit says `Busy`.
    pub queue_limit: usize,
    /// Drop every n-th transmitted frame (0 = never), to exercise retransmission.
    pub drop_every: u64,
    counters: Counters,
}

/// Two connected fake NICs.
pub struct Wire;

impl Wire {
    pub fn pair(mac_a: [u8; 6], mac_b: [u8; 6]) -> (FakeNic, FakeNic) {
        let queues = Rc::new(RefCell::new(Queues::default()));
        let nic = |mac, end| FakeNic {
            mac,
            end,
            queues: queues.clone(),
            queue_limit: 256,
            drop_every: 0,
            counters: Counters::default(),
        };
        (nic(mac_a, 0), nic(mac_b, 1))
    }
}

impl FakeNic {
    /// Puts a frame on the wire towards this NIC, as if the peer sent it.
    pub fn inject(&self, frame: &[u8]) {
        self.queues.borrow_mut().to[self.end].push_back(frame.to_vec());
    }

    /// Puts arbitrary bytes on the wire towards the peer, skipping every check, as a
    /// misbehaving sender would.
    pub fn send_unchecked(&self, frame: &[u8]) {
        self.queues.borrow_mut().to[1 - self.end].push_back(frame.to_vec());
    }

    /// Takes the oldest frame this NIC sent that the peer has not received.
    pub fn take_sent(&self) -> Option<Vec<u8>> {
        self.queues.borrow_mut().to[1 - self.end].pop_front()
    }
}

impl NetDevice for FakeNic {
    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetDeviceError> {
        loop {
            let Some(frame) = self.queues.borrow_mut().to[self.end].pop_front() else {
                return Ok(None);
            };
            match buf.get_mut(..frame.len()) {
                Some(dst) => {
                    dst.copy_from_slice(&frame);
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += frame.len() as u64;
                    return Ok(Some(frame.len()));
                }
                None => self.counters.rx_dropped += 1,
            }
        }
    }

    fn can_transmit(&mut self) -> bool {
        self.queues.borrow().to[1 - self.end].len() < self.queue_limit
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), NetDeviceError> {
        if frame.len() > MAX_FRAME {
            self.counters.tx_dropped += 1;
            return Err(NetDeviceError::FrameTooLarge { len: frame.len() });
        }
        if !self.can_transmit() {
            self.counters.tx_dropped += 1;
            return Err(NetDeviceError::Busy);
        }
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        if self.drop_every != 0 && self.counters.tx_frames.is_multiple_of(self.drop_every) {
            return Ok(());
        }
        self.queues.borrow_mut().to[1 - self.end].push_back(frame.to_vec());
        Ok(())
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_the_wire_in_order() {
        let (mut a, mut b) = Wire::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        a.transmit(b"one").unwrap();
        a.transmit(b"two").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(b.receive(&mut buf).unwrap(), Some(3));
        assert_eq!(&buf[..3], b"one");
        assert_eq!(b.receive(&mut buf).unwrap(), Some(3));
        assert_eq!(&buf[..3], b"two");
        assert_eq!(b.receive(&mut buf).unwrap(), None);
        assert_eq!(a.counters().tx_frames, 2);
        assert_eq!(b.counters().rx_bytes, 6);
    }

    #[test]
    fn oversized_frames_are_refused_or_dropped_never_truncated() {
        let (mut a, mut b) = Wire::pair([2; 6], [4; 6]);
        assert_eq!(
            a.transmit(&[0; MAX_FRAME + 1]),
            Err(NetDeviceError::FrameTooLarge { len: MAX_FRAME + 1 })
        );
        a.transmit(&[7; 100]).unwrap();
        let mut small = [0u8; 10];
        assert_eq!(b.receive(&mut small).unwrap(), None);
        assert_eq!(b.counters().rx_dropped, 1);
    }

    #[test]
    fn full_queue_reports_busy() {
        let (mut a, _b) = Wire::pair([2; 6], [4; 6]);
        a.queue_limit = 1;
        a.transmit(b"x").unwrap();
        assert!(!a.can_transmit());
        assert_eq!(a.transmit(b"y"), Err(NetDeviceError::Busy));
        assert_eq!(a.counters().tx_dropped, 1);
    }
}
