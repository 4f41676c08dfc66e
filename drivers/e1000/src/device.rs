//! The controller as a [`NetDevice`]: reset, station address, link, the two rings, and the
//! frame-level receive and transmit paths.
//!
//! Interrupts stay masked (IMC all): Keel has no MSI setup and legacy INTx routing needs AML
//! it does not interpret, so the management stack polls. Polling costs no register access
//! while idle: the driver reads the DD bits the device writes into memory.

use keel_netdev::{Counters, NetDevice, NetDeviceError, MAX_FRAME};

use crate::error::E1000Error;
use crate::hal::{Hal, Registers};
use crate::mac;
use crate::model::Model;
use crate::regs;
use crate::rx::{DropReason, Received, RxRing, RETURN_BATCH};
use crate::tx::TxRing;

/// How to start a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Receive descriptors: a multiple of 8 (RDLEN counts 128-byte units), 8 to 4096.
    pub rx_descriptors: u16,
    /// Transmit descriptors, likewise.
    pub tx_descriptors: u16,
}

impl Default for Options {
    /// 256 receive descriptors, so a burst (many clients at once) finds buffers; 128
    /// transmit descriptors, so a long response streams without waiting.
    fn default() -> Self {
        Options {
            rx_descriptors: 256,
            tx_descriptors: 128,
        }
    }
}

/// Polls of CTRL.RST after a software reset (100 µs apart: 100 ms in all).
const RESET_POLLS: u32 = 1000;

fn valid_ring(descriptors: u16) -> bool {
    (8..=4096).contains(&descriptors) && descriptors.is_multiple_of(8)
}

/// A started controller.
pub struct E1000<R: Registers, H: Hal> {
    regs: R,
    hal: H,
    model: Model,
    mac: [u8; 6],
    rx: RxRing,
    tx: TxRing,
    counters: Counters,
}

impl<R: Registers, H: Hal> E1000<R, H> {
    /// Resets the controller, finds its address and starts both rings. On failure the
    /// controller is left reset (no DMA) and every allocation returned.
    pub fn start(
        mut regs: R,
        mut hal: H,
        model: Model,
        options: Options,
    ) -> Result<Self, E1000Error> {
        for descriptors in [options.rx_descriptors, options.tx_descriptors] {
            if !valid_ring(descriptors) {
                return Err(E1000Error::RingSize { descriptors });
            }
        }
        let mut rx = RxRing::new(&mut hal, options.rx_descriptors)?;
        let mut tx = match TxRing::new(&mut hal, options.tx_descriptors) {
            Ok(tx) => tx,
            Err(e) => {
                rx.free(&mut hal);
                return Err(e);
            }
        };
        let mac = match reset(&mut regs, &mut hal)
            .and_then(|()| mac::station_address(&mut regs, &mut hal, model))
        {
            Ok(mac) => mac,
            Err(e) => {
                // Both DMA engines were stopped before the reset and a reset leaves them
                // off, so the rings can go back; a MAC stuck in reset is not touched again.
                rx.free(&mut hal);
                tx.free(&mut hal);
                return Err(e);
            }
        };
        let mut nic = E1000 {
            regs,
            hal,
            model,
            mac,
            rx,
            tx,
            counters: Counters::default(),
        };
        nic.configure();
        Ok(nic)
    }

    /// Link, filters and rings, after a reset.
    fn configure(&mut self) {
        let regs = &mut self.regs;
        // Link up with auto-negotiated speed; no link or PHY reset in progress, and VLAN
        // tags left in the frames (the switch owns them).
        let ctrl = regs.read32(regs::CTRL);
        let ctrl = (ctrl | regs::CTRL_SLU | regs::CTRL_ASDE)
            & !(regs::CTRL_LRST | regs::CTRL_PHY_RST | regs::CTRL_VME);
        regs.write32(regs::CTRL, ctrl);
        // A reset leaves the multicast table undefined; Keel joins no multicast group.
        for i in 0..regs::MTA_ENTRIES {
            regs.write32(regs::MTA + 4 * i, 0);
        }
        self.rx.program(regs);
        self.tx.program(regs);
        regs.write32(regs::TIPG, self.model.tipg());
        regs.write32(
            regs::TCTL,
            regs::TCTL_EN
                | regs::TCTL_PSP
                | regs::TCTL_CT_RECOMMENDED
                | regs::TCTL_COLD_FULL_DUPLEX,
        );
        // Promiscuous: the NIC is the virtual switch's uplink, so frames for guests' MACs
        // (and their multicast groups) must come in too; the switch filters.
        regs.write32(
            regs::RCTL,
            regs::RCTL_EN
                | regs::RCTL_UPE
                | regs::RCTL_MPE
                | regs::RCTL_BAM
                | regs::RCTL_SECRC
                | regs::RCTL_BSIZE_2048,
        );
    }

    pub fn model(&self) -> Model {
        self.model
    }

    /// Whether the PHY reports link (STATUS.LU).
    pub fn link_up(&self) -> bool {
        self.regs.read32(regs::STATUS) & regs::STATUS_LU != 0
    }

    /// Link speed in Mb/s, when the link is up.
    pub fn speed_mbps(&self) -> Option<u32> {
        let status = self.regs.read32(regs::STATUS);
        (status & regs::STATUS_LU != 0).then_some(match (status >> regs::STATUS_SPEED_SHIFT) & 3 {
            0 => 10,
            1 => 100,
            _ => 1000,
        })
    }

    /// Frames handed to the device and not yet reclaimed.
    pub fn tx_in_flight(&mut self) -> u16 {
        self.tx.reclaim();
        self.tx.in_flight()
    }

    /// Hands cleared receive descriptors back, and counts the frames the device had to
    /// drop for want of one (MPC, clear-on-read). Both happen only after traffic, so an idle
    /// NIC costs no register access.
    fn give_back_rx(&mut self) {
        if self.rx.unreturned() == 0 {
            return;
        }
        self.rx.give_back(&mut self.regs);
        self.counters.rx_dropped += u64::from(self.regs.read32(regs::MPC));
    }

    fn count_drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::TooLarge | DropReason::Fragment => self.counters.rx_dropped += 1,
            DropReason::DeviceError | DropReason::BadLength => {
                self.counters.rx_dropped += 1;
                self.counters.errors += 1;
            }
        }
    }
}

/// Stops both DMA engines and masks every interrupt.
fn quiesce(regs: &mut impl Registers) {
    regs.write32(regs::IMC, regs::INTERRUPTS_ALL);
    regs.write32(regs::RCTL, 0);
    regs.write32(regs::TCTL, 0);
}

/// A software reset of the MAC, with interrupts masked before and after (the reset unmasks
/// nothing, but a cause latched before it must not linger).
fn reset(regs: &mut impl Registers, hal: &mut impl Hal) -> Result<(), E1000Error> {
    quiesce(regs);
    let ctrl = regs.read32(regs::CTRL);
    regs.write32(regs::CTRL, ctrl | regs::CTRL_RST);
    // The manuals ask for at least 1 µs before the first access after a reset.
    hal.delay_us(10);
    let mut cleared = false;
    for _ in 0..RESET_POLLS {
        if regs.read32(regs::CTRL) & regs::CTRL_RST == 0 {
            cleared = true;
            break;
        }
        hal.delay_us(100);
    }
    if !cleared {
        return Err(E1000Error::ResetTimeout);
    }
    regs.write32(regs::IMC, regs::INTERRUPTS_ALL);
    // Reading ICR clears whatever the reset left latched.
    let _ = regs.read32(regs::ICR);
    Ok(())
}

impl<R: Registers, H: Hal> NetDevice for E1000<R, H> {
    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetDeviceError> {
        // At most one lap of the ring per call, whatever the device writes meanwhile.
        for _ in 0..self.rx.entries() {
            match self.rx.poll(buf) {
                Received::Empty => break,
                Received::Frame(len) => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                    if self.rx.unreturned() >= RETURN_BATCH {
                        self.give_back_rx();
                    }
                    return Ok(Some(len));
                }
                Received::Dropped(reason) => self.count_drop(reason),
            }
        }
        // Nothing (more) waiting: the device gets every cleared buffer back before the
        // stack goes idle.
        self.give_back_rx();
        Ok(None)
    }

    fn can_transmit(&mut self) -> bool {
        self.tx.reclaim();
        self.tx.has_room()
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), NetDeviceError> {
        if frame.len() > MAX_FRAME {
            self.counters.tx_dropped += 1;
            return Err(NetDeviceError::FrameTooLarge { len: frame.len() });
        }
        if frame.is_empty() {
            self.counters.tx_dropped += 1;
            return Err(NetDeviceError::Device);
        }
        self.tx.reclaim();
        if !self.tx.push(frame, &mut self.regs) {
            self.counters.tx_dropped += 1;
            return Err(NetDeviceError::Busy);
        }
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

impl<R: Registers, H: Hal> Drop for E1000<R, H> {
    /// Stops the device before its memory goes back: a device still receiving into freed
    /// buffers would corrupt whatever is allocated there next.
    fn drop(&mut self) {
        // Even a reset that does not finish has stopped DMA: it starts with `quiesce`.
        let _ = reset(&mut self.regs, &mut self.hal);
        self.rx.free(&mut self.hal);
        self.tx.free(&mut self.hal);
    }
}
