//! A register-level model of an 82540EM / 82574L, for host tests of the driver.
//!
//! The model is the controller's side of the protocol: the registers the driver touches
//! (with CTRL.RST self-clearing after a reset that restores defaults, ICR clearing on read,
//! IMS/IMC, EERD in each part's own layout), the receive ring it writes frames into at RDH
//! and the transmit ring it fetches frames from up to TDT, with DD write-back, head wrap and
//! the receive filter (own address, broadcast, multicast table, promiscuous bits).
//!
//! Like an IOMMU it refuses (panics, failing the test) DMA outside memory the driver
//! allocated, and it checks the protocol: ring registers programmed while the MAC is out of
//! reset, lengths in 128-byte units, tails inside the ring, descriptors handed to the device
//! with DD clear, no change to a transmit descriptor while the device owns it, no memory freed
//! while a DMA engine still runs, and interrupts never unmasked (Keel polls).
//!
//! Bus addresses differ from CPU addresses by [`BUS_OFFSET`], as they do behind Xen's IOMMU,
//! so a driver that hands the device a CPU pointer is caught.

#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ptr::NonNull;
use std::rc::Rc;

use keel_e1000::regs::*;
use keel_e1000::{DmaRegion, Hal, Model, Registers, PAGE_SIZE};

/// What the device sees for CPU address `p` is `p + BUS_OFFSET`.
pub const BUS_OFFSET: u64 = 0x10_0000_0000_0000;

#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub model: Model,
    /// The EEPROM's station address (words 0..3).
    pub eeprom_mac: [u8; 6],
    /// Whether a reset loads RAL0/RAH0 from the EEPROM (hardware and QEMU do; a blank
    /// receive address forces the driver to read the EEPROM itself).
    pub load_receive_address: bool,
    /// CTRL reads that still show RST after a reset (`None`: it never clears).
    pub reset_reads: Option<u32>,
    /// EERD reads before a word read is done (`None`: never).
    pub eerd_reads: Option<u32>,
    pub link_up: bool,
}

impl FakeConfig {
    pub fn new(model: Model) -> Self {
        FakeConfig {
            model,
            eeprom_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            load_receive_address: true,
            reset_reads: Some(2),
            eerd_reads: Some(1),
            link_up: true,
        }
    }
}

/// What became of a frame put on the wire towards the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written into a receive descriptor.
    Delivered,
    /// Not for this station (or the receiver is off).
    Filtered,
    /// No descriptor available: counted in MPC.
    Missed,
}

struct Region {
    virt: *mut u8,
    len: usize,
    layout: Layout,
}

pub struct State {
    pub config: FakeConfig,
    regs: BTreeMap<usize, u32>,
    /// Remaining CTRL reads showing RST.
    resetting: Option<u32>,
    /// Remaining EERD reads before DONE, and the word asked for.
    eerd_pending: Option<(u32, u8)>,
    memory: BTreeMap<u64, Region>,
    /// Transmit descriptors as the device was handed them (by index).
    tx_owned: BTreeMap<u16, [u8; 16]>,
    /// Frames the device sent, in order.
    pub sent: VecDeque<Vec<u8>>,
    /// Hold transmit descriptors instead of sending at once (to fill the ring).
    pub hold_tx: bool,
    pub resets: u32,
    pub rdt_writes: u32,
    pub tdt_writes: u32,
    pub eeprom_reads: u32,
    pub missed: u32,
    pub frees: u32,
}

/// A handle on the model; clones share it (one for the driver's registers, one for its
/// DMA, one for the test).
#[derive(Clone)]
pub struct FakeNic(Rc<RefCell<State>>);

impl FakeNic {
    pub fn new(config: FakeConfig) -> Self {
        let nic = FakeNic(Rc::new(RefCell::new(State {
            config,
            regs: BTreeMap::new(),
            resetting: None,
            eerd_pending: None,
            memory: BTreeMap::new(),
            tx_owned: BTreeMap::new(),
            sent: VecDeque::new(),
            hold_tx: false,
            resets: 0,
            rdt_writes: 0,
            tdt_writes: 0,
            eeprom_reads: 0,
            missed: 0,
            frees: 0,
        })));
        {
            let mut s = nic.0.borrow_mut();
            s.power_on_defaults();
            // Firmware (or a previous driver) left the multicast table with junk in it.
            for i in 0..MTA_ENTRIES {
                s.regs.insert(MTA + 4 * i, 0xdead_beef);
            }
        }
        nic
    }

    pub fn state(&self) -> std::cell::RefMut<'_, State> {
        self.0.borrow_mut()
    }

    pub fn reg(&self, offset: usize) -> u32 {
        self.0.borrow().reg(offset)
    }

    /// Puts a frame on the wire towards the NIC.
    pub fn inject(&self, frame: &[u8]) -> Delivery {
        self.0.borrow_mut().receive(frame, 0, None)
    }

    /// Puts a frame on the wire that the device flags with `errors` in its descriptor.
    pub fn inject_with_errors(&self, frame: &[u8], errors: u8) -> Delivery {
        self.0.borrow_mut().receive(frame, errors, None)
    }

    /// Delivers a frame split over descriptors of `chunk` bytes each, as a device
    /// configured for smaller buffers would.
    pub fn inject_split(&self, frame: &[u8], chunk: usize) -> Delivery {
        self.0.borrow_mut().receive(frame, 0, Some(chunk))
    }

    /// Writes a descriptor with DD set and a length beyond any buffer: a confused device.
    pub fn inject_bad_length(&self) -> Delivery {
        let mut s = self.0.borrow_mut();
        let Some(index) = s.next_rx_descriptor() else {
            return Delivery::Missed;
        };
        let addr = s.rx_descriptor_addr(index);
        let mut raw = s.dma_read_array::<16>(addr);
        raw[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        raw[12] = keel_e1000::STATUS_DD | keel_e1000::RX_STATUS_EOP;
        s.dma_write(addr, &raw);
        s.advance_rdh();
        Delivery::Delivered
    }

    /// Sends what is held (with `hold_tx`), as if the wire had caught up.
    pub fn release_tx(&self) {
        let mut s = self.0.borrow_mut();
        s.hold_tx = false;
        s.process_tx();
    }

    pub fn take_sent(&self) -> Option<Vec<u8>> {
        self.0.borrow_mut().sent.pop_front()
    }

    pub fn regs(&self) -> FakeRegs {
        FakeRegs(self.clone())
    }

    pub fn hal(&self) -> FakeHal {
        FakeHal(self.clone())
    }

    /// DMA regions the driver holds.
    pub fn allocated_regions(&self) -> usize {
        self.0.borrow().memory.len()
    }
}

impl State {
    fn reg(&self, offset: usize) -> u32 {
        self.regs.get(&offset).copied().unwrap_or(0)
    }

    fn set(&mut self, offset: usize, value: u32) {
        self.regs.insert(offset, value);
    }

    fn power_on_defaults(&mut self) {
        let mta: Vec<(usize, u32)> = (0..MTA_ENTRIES)
            .map(|i| (MTA + 4 * i, self.reg(MTA + 4 * i)))
            .collect();
        self.regs.clear();
        // The multicast table survives a reset (its contents are undefined afterwards).
        self.regs.extend(mta);
        let status = if self.config.link_up {
            STATUS_LU | 1 | (2 << STATUS_SPEED_SHIFT)
        } else {
            0
        };
        self.set(STATUS, status);
        if self.config.load_receive_address {
            let mac = self.config.eeprom_mac;
            self.set(RAL0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
            self.set(
                RAH0,
                u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV,
            );
        }
        self.tx_owned.clear();
    }

    fn in_reset(&self) -> bool {
        self.resetting.is_some()
    }

    fn eeprom_word(&self, word: u8) -> u16 {
        let mac = self.config.eeprom_mac;
        match word {
            0..=2 => u16::from_le_bytes([mac[2 * word as usize], mac[2 * word as usize + 1]]),
            _ => 0xffff,
        }
    }

    fn read(&mut self, offset: usize) -> u32 {
        assert!(
            offset.is_multiple_of(4),
            "unaligned register read {offset:#x}"
        );
        match offset {
            CTRL => {
                if let Some(left) = self.resetting {
                    if left == 0 {
                        self.resetting = None;
                        self.power_on_defaults();
                        self.set(CTRL, 0);
                    } else {
                        self.resetting = Some(left - 1);
                        return self.reg(CTRL) | CTRL_RST;
                    }
                }
                self.reg(CTRL)
            }
            ICR => {
                let icr = self.reg(ICR);
                self.set(ICR, 0);
                icr
            }
            MPC => {
                let mpc = self.reg(MPC);
                self.set(MPC, 0);
                mpc
            }
            EERD => {
                let layout = self.config.model.eerd();
                match self.eerd_pending {
                    Some((0, word)) => {
                        self.eerd_pending = None;
                        let value = layout.done
                            | (u32::from(word) << layout.address_shift)
                            | (u32::from(self.eeprom_word(word)) << 16);
                        self.set(EERD, value);
                        self.eeprom_reads += 1;
                        value
                    }
                    Some((left, word)) => {
                        if self.config.eerd_reads.is_some() {
                            self.eerd_pending = Some((left - 1, word));
                        }
                        self.reg(EERD)
                    }
                    None => self.reg(EERD),
                }
            }
            IMC => panic!("IMC is write-only"),
            _ => {
                assert!(
                    !self.in_reset(),
                    "register {offset:#x} read while the MAC is in reset"
                );
                self.reg(offset)
            }
        }
    }

    fn write(&mut self, offset: usize, value: u32) {
        assert!(
            offset.is_multiple_of(4),
            "unaligned register write {offset:#x}"
        );
        if self.in_reset() {
            // Only CTRL (polled) may be touched while the reset runs.
            panic!("register {offset:#x} written while the MAC is in reset");
        }
        match offset {
            CTRL => {
                if value & CTRL_RST != 0 {
                    self.resets += 1;
                    self.set(CTRL, value & !CTRL_RST);
                    match self.config.reset_reads {
                        Some(0) => {
                            self.power_on_defaults();
                            self.set(CTRL, 0);
                        }
                        Some(n) => self.resetting = Some(n),
                        None => self.resetting = Some(u32::MAX),
                    }
                } else {
                    self.set(CTRL, value);
                }
            }
            STATUS | ICR | MPC => panic!("register {offset:#x} is read-only"),
            IMS => {
                assert_eq!(
                    value, 0,
                    "the driver unmasked interrupts {value:#x}; Keel polls"
                );
                self.set(IMS, self.reg(IMS) | value);
            }
            IMC => self.set(IMS, self.reg(IMS) & !value),
            EERD => {
                let layout = self.config.model.eerd();
                self.set(EERD, value & !layout.done);
                if value & layout.start != 0 {
                    let word = ((value >> layout.address_shift) & 0xff) as u8;
                    let reads = self.config.eerd_reads.unwrap_or(u32::MAX);
                    self.eerd_pending = Some((reads, word));
                }
            }
            RDLEN | TDLEN => {
                assert!(
                    value.is_multiple_of(128) && value > 0,
                    "ring length {value} is not a positive multiple of 128"
                );
                self.set(offset, value);
            }
            RDBAL | TDBAL => {
                assert!(
                    value.is_multiple_of(16),
                    "ring base {value:#x} not 16-byte aligned"
                );
                self.set(offset, value);
            }
            RDT => {
                self.rdt_writes += 1;
                let entries = self.entries(RDLEN);
                assert!(value < entries, "RDT {value} outside a ring of {entries}");
                // Descriptors newly handed over must come with DD clear.
                let mut i = self.reg(RDT);
                self.set(RDT, value);
                if self.reg(RCTL) & RCTL_EN != 0 || self.reg(RDBAL) != 0 {
                    while i != value {
                        let addr = self.rx_descriptor_addr(i);
                        let raw = self.dma_read_array::<16>(addr);
                        assert_eq!(
                            raw[12] & keel_e1000::STATUS_DD,
                            0,
                            "receive descriptor {i} handed to the device with DD set"
                        );
                        i = (i + 1) % entries;
                    }
                }
            }
            TDT => {
                self.tdt_writes += 1;
                let entries = self.entries(TDLEN);
                assert!(value < entries, "TDT {value} outside a ring of {entries}");
                let mut i = self.reg(TDT);
                self.set(TDT, value);
                while i != value {
                    let raw = self.dma_read_array::<16>(self.tx_descriptor_addr(i));
                    self.tx_owned.insert(i as u16, raw);
                    i = (i + 1) % entries;
                }
                self.process_tx();
            }
            RDH | TDH => {
                assert_eq!(
                    self.reg(if offset == RDH { RCTL } else { TCTL }) & (RCTL_EN | TCTL_EN),
                    0,
                    "head register written while its engine runs"
                );
                self.set(offset, value);
            }
            TCTL => {
                self.set(TCTL, value);
                self.process_tx();
            }
            _ => self.set(offset, value),
        }
    }

    fn entries(&self, len_reg: usize) -> u32 {
        self.reg(len_reg) / 16
    }

    fn ring_base(&self, low: usize) -> u64 {
        u64::from(self.reg(low)) | (u64::from(self.reg(low + 4)) << 32)
    }

    fn rx_descriptor_addr(&self, index: u32) -> u64 {
        self.ring_base(RDBAL) + u64::from(index) * 16
    }

    fn tx_descriptor_addr(&self, index: u32) -> u64 {
        self.ring_base(TDBAL) + u64::from(index) * 16
    }

    // --- DMA, checked like an IOMMU ---

    fn translate(&self, bus: u64, len: usize) -> *mut u8 {
        let found = self.memory.range(..=bus).next_back();
        match found {
            Some((start, region)) if bus + len as u64 <= start + region.len as u64 => {
                region.virt.wrapping_add((bus - start) as usize)
            }
            _ => panic!(
                "device access of {len} bytes at bus {bus:#x}: not memory the driver allocated"
            ),
        }
    }

    fn dma_read(&self, bus: u64, out: &mut [u8]) {
        let src = self.translate(bus, out.len());
        // SAFETY: inside a live allocation (checked by `translate`).
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
    }

    fn dma_read_array<const N: usize>(&self, bus: u64) -> [u8; N] {
        let mut out = [0u8; N];
        self.dma_read(bus, &mut out);
        out
    }

    fn dma_write(&self, bus: u64, data: &[u8]) {
        let dst = self.translate(bus, data.len());
        // SAFETY: inside a live allocation (checked by `translate`).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    }

    // --- receive ---

    fn accepts(&self, frame: &[u8]) -> bool {
        let rctl = self.reg(RCTL);
        let Some(dst) = frame.get(..6) else {
            return false;
        };
        if dst == [0xff; 6] {
            return rctl & RCTL_BAM != 0;
        }
        if dst[0] & 1 == 1 {
            // Multicast: the table, with the default offset (MO = 0: bits 47:36).
            let hash = ((u32::from(dst[4]) >> 4) | (u32::from(dst[5]) << 4)) & 0xfff;
            let bit = self.reg(MTA + 4 * (hash as usize >> 5)) & (1 << (hash & 31)) != 0;
            return bit || rctl & RCTL_MPE != 0;
        }
        let ral = self.reg(RAL0).to_le_bytes();
        let rah = self.reg(RAH0);
        let own =
            self.reg(RAH0) & RAH_AV != 0 && dst[..4] == ral && dst[4..6] == rah.to_le_bytes()[..2];
        own || rctl & RCTL_UPE != 0
    }

    fn next_rx_descriptor(&mut self) -> Option<u32> {
        let rdh = self.reg(RDH);
        if rdh == self.reg(RDT) {
            return None;
        }
        Some(rdh)
    }

    fn advance_rdh(&mut self) {
        let entries = self.entries(RDLEN);
        let rdh = (self.reg(RDH) + 1) % entries;
        self.set(RDH, rdh);
        self.set(ICR, self.reg(ICR) | 0x80);
    }

    fn receive(&mut self, frame: &[u8], errors: u8, chunk: Option<usize>) -> Delivery {
        if self.in_reset()
            || self.reg(RCTL) & RCTL_EN == 0
            || self.reg(STATUS) & STATUS_LU == 0
            || !self.accepts(frame)
        {
            return Delivery::Filtered;
        }
        assert!(frame.len() <= RX_BUFFER_LEN);
        let chunk = chunk.unwrap_or(RX_BUFFER_LEN);
        let pieces: Vec<&[u8]> = frame.chunks(chunk).collect();
        // The device takes the descriptors a frame needs, or drops the frame whole.
        let entries = self.entries(RDLEN);
        let available = (self.reg(RDT) + entries - self.reg(RDH)) % entries;
        if (available as usize) < pieces.len() {
            self.missed += 1;
            self.set(MPC, self.reg(MPC) + 1);
            return Delivery::Missed;
        }
        for (n, piece) in pieces.iter().enumerate() {
            let index = self.reg(RDH);
            let addr = self.rx_descriptor_addr(index);
            let mut raw = self.dma_read_array::<16>(addr);
            assert_eq!(
                raw[12] & keel_e1000::STATUS_DD,
                0,
                "device owns receive descriptor {index} but DD is still set"
            );
            let buffer = u64::from_le_bytes(raw[..8].try_into().unwrap());
            self.dma_write(buffer, piece);
            raw[8..10].copy_from_slice(&(piece.len() as u16).to_le_bytes());
            let last = n + 1 == pieces.len();
            raw[12] = keel_e1000::STATUS_DD | if last { keel_e1000::RX_STATUS_EOP } else { 0 };
            raw[13] = if last { errors } else { 0 };
            self.dma_write(addr, &raw);
            self.advance_rdh();
        }
        Delivery::Delivered
    }

    // --- transmit ---

    fn process_tx(&mut self) {
        if self.hold_tx || self.reg(TCTL) & TCTL_EN == 0 || self.reg(TDLEN) == 0 {
            return;
        }
        let entries = self.entries(TDLEN);
        let mut frame = Vec::new();
        while self.reg(TDH) != self.reg(TDT) {
            let index = self.reg(TDH);
            let addr = self.tx_descriptor_addr(index);
            let mut raw = self.dma_read_array::<16>(addr);
            let handed = self.tx_owned.remove(&(index as u16));
            assert_eq!(
                handed,
                Some(raw),
                "transmit descriptor {index} changed while the device owned it"
            );
            let buffer = u64::from_le_bytes(raw[..8].try_into().unwrap());
            let len = usize::from(u16::from_le_bytes([raw[8], raw[9]]));
            let mut data = vec![0u8; len];
            self.dma_read(buffer, &mut data);
            frame.extend_from_slice(&data);
            let cmd = raw[11];
            if cmd & keel_e1000::TX_CMD_RS != 0 {
                raw[12] |= keel_e1000::STATUS_DD;
                self.dma_write(addr, &raw);
            }
            if cmd & keel_e1000::TX_CMD_EOP != 0 {
                assert!(
                    cmd & keel_e1000::TX_CMD_IFCS != 0,
                    "frame sent without an FCS"
                );
                self.sent.push_back(std::mem::take(&mut frame));
            }
            self.set(TDH, (index + 1) % entries);
            self.set(ICR, self.reg(ICR) | 1);
        }
        assert!(frame.is_empty(), "transmit ring ends inside a frame");
    }
}

/// The driver's register window.
pub struct FakeRegs(FakeNic);

impl Registers for FakeRegs {
    fn read32(&self, offset: usize) -> u32 {
        self.0 .0.borrow_mut().read(offset)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        self.0 .0.borrow_mut().write(offset, value)
    }
}

/// The driver's DMA memory.
pub struct FakeHal(FakeNic);

// SAFETY: regions are fresh zeroed page-aligned allocations, exclusively the driver's until
// freed; the model reaches them only through their bus addresses.
unsafe impl Hal for FakeHal {
    fn allocate(&mut self, pages: usize) -> Option<DmaRegion> {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).ok()?;
        // SAFETY: a non-zero size.
        let virt = unsafe { alloc_zeroed(layout) };
        let virt = NonNull::new(virt)?;
        let bus = virt.as_ptr() as u64 + BUS_OFFSET;
        self.0 .0.borrow_mut().memory.insert(
            bus,
            Region {
                virt: virt.as_ptr(),
                len: pages * PAGE_SIZE,
                layout,
            },
        );
        Some(DmaRegion { bus, virt, pages })
    }

    fn free(&mut self, region: DmaRegion) {
        let mut s = self.0 .0.borrow_mut();
        let (rx_on, tx_on) = (s.reg(RCTL) & RCTL_EN != 0, s.reg(TCTL) & TCTL_EN != 0);
        assert!(
            !rx_on && !tx_on,
            "DMA memory freed while the device may still use it (RCTL.EN {rx_on}, TCTL.EN {tx_on})"
        );
        let r = s
            .memory
            .remove(&region.bus)
            .expect("freed a region the HAL never allocated");
        assert_eq!(r.virt, region.virt.as_ptr());
        s.frees += 1;
        // SAFETY: allocated in `allocate` with this layout.
        unsafe { dealloc(r.virt, r.layout) };
    }

    fn delay_us(&mut self, _us: u32) {}
}
