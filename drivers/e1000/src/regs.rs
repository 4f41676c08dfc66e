//! Register offsets and the fields Keel uses (Intel PCI/PCI-X Family of Gigabit Ethernet
//! Controllers Software Developer's Manual for the 8254x, and the 82574 GbE Controller
//! Datasheet; the two share this register map for everything the driver touches).

/// Device Control.
pub const CTRL: usize = 0x0000;
/// Device Status (read-only).
pub const STATUS: usize = 0x0008;
/// EEPROM Read: start a word read and collect its data.
pub const EERD: usize = 0x0014;
/// Interrupt Cause Read (clears on read).
pub const ICR: usize = 0x00c0;
/// Interrupt Mask Set/Read.
pub const IMS: usize = 0x00d0;
/// Interrupt Mask Clear (write-only).
pub const IMC: usize = 0x00d8;
/// Receive Control.
pub const RCTL: usize = 0x0100;
/// Transmit Control.
pub const TCTL: usize = 0x0400;
/// Transmit Inter-Packet Gap.
pub const TIPG: usize = 0x0410;
/// Receive descriptor ring 0: base (low, high), length in bytes, head, tail.
pub const RDBAL: usize = 0x2800;
pub const RDBAH: usize = 0x2804;
pub const RDLEN: usize = 0x2808;
pub const RDH: usize = 0x2810;
pub const RDT: usize = 0x2818;
/// Transmit descriptor ring 0: base (low, high), length in bytes, head, tail.
pub const TDBAL: usize = 0x3800;
pub const TDBAH: usize = 0x3804;
pub const TDLEN: usize = 0x3808;
pub const TDH: usize = 0x3810;
pub const TDT: usize = 0x3818;
/// Missed Packets Count (clears on read): frames dropped for want of a receive descriptor.
pub const MPC: usize = 0x4010;
/// Multicast Table Array: 128 dwords.
pub const MTA: usize = 0x5200;
pub const MTA_ENTRIES: usize = 128;
/// Receive Address 0, low and high halves.
pub const RAL0: usize = 0x5400;
pub const RAH0: usize = 0x5404;

/// CTRL: full duplex.
pub const CTRL_FD: u32 = 1 << 0;
/// CTRL: link reset.
pub const CTRL_LRST: u32 = 1 << 3;
/// CTRL: auto-speed detection.
pub const CTRL_ASDE: u32 = 1 << 5;
/// CTRL: set link up.
pub const CTRL_SLU: u32 = 1 << 6;
/// CTRL: software reset of the MAC (self-clearing).
pub const CTRL_RST: u32 = 1 << 26;
/// CTRL: VLAN mode (tag stripping), which Keel leaves off: tags belong to the switch.
pub const CTRL_VME: u32 = 1 << 30;
/// CTRL: PHY reset.
pub const CTRL_PHY_RST: u32 = 1 << 31;

/// STATUS: link up.
pub const STATUS_LU: u32 = 1 << 1;
/// STATUS: speed, bits 7:6 (0 = 10, 1 = 100, 2 and 3 = 1000 Mb/s).
pub const STATUS_SPEED_SHIFT: u32 = 6;

/// RCTL: receiver enable.
pub const RCTL_EN: u32 = 1 << 1;
/// RCTL: unicast promiscuous.
pub const RCTL_UPE: u32 = 1 << 3;
/// RCTL: multicast promiscuous.
pub const RCTL_MPE: u32 = 1 << 4;
/// RCTL: accept broadcast (ARP and DHCP need it).
pub const RCTL_BAM: u32 = 1 << 15;
/// RCTL: buffer size 2048 bytes is BSIZE = 0 with BSEX = 0.
pub const RCTL_BSIZE_2048: u32 = 0;
/// RCTL: strip the Ethernet CRC, so frames arrive as the stack expects them.
pub const RCTL_SECRC: u32 = 1 << 26;

/// TCTL: transmitter enable.
pub const TCTL_EN: u32 = 1 << 1;
/// TCTL: pad short packets to 64 bytes.
pub const TCTL_PSP: u32 = 1 << 3;
/// TCTL: collision threshold (bits 11:4), the manuals' recommended 0x0F.
pub const TCTL_CT_RECOMMENDED: u32 = 0x0f << 4;
/// TCTL: collision distance (bits 21:12) for full duplex, 0x3F as recommended.
pub const TCTL_COLD_FULL_DUPLEX: u32 = 0x3f << 12;

/// Every interrupt cause: written to IMC, Keel polls instead.
pub const INTERRUPTS_ALL: u32 = 0xffff_ffff;

/// RAH: address valid.
pub const RAH_AV: u32 = 1 << 31;

/// Bytes of one legacy descriptor (receive and transmit alike).
pub const DESCRIPTOR_LEN: usize = 16;
/// Receive buffer size programmed in RCTL.
pub const RX_BUFFER_LEN: usize = 2048;

/// The two programming models of EERD (the 8254x one and the one PCIe parts like the 82574
/// introduced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EerdLayout {
    pub start: u32,
    pub done: u32,
    pub address_shift: u32,
}

impl EerdLayout {
    /// 8254x: START bit 0, DONE bit 4, word address in bits 15:8.
    pub const I8254X: EerdLayout = EerdLayout {
        start: 1 << 0,
        done: 1 << 4,
        address_shift: 8,
    };
    /// 82574: START bit 0, DONE bit 1, word address in bits 15:2.
    pub const I82574: EerdLayout = EerdLayout {
        start: 1 << 0,
        done: 1 << 1,
        address_shift: 2,
    };

    /// The value that starts a read of `word`.
    pub fn request(self, word: u8) -> u32 {
        self.start | (u32::from(word) << self.address_shift)
    }

    /// The data of a finished read, or `None` while it is in progress.
    pub fn data(self, eerd: u32) -> Option<u16> {
        (eerd & self.done != 0).then_some((eerd >> 16) as u16)
    }
}

/// Transmit inter-packet gap for copper: IPGT (bits 9:0), IPGR1 (19:10), IPGR2 (29:20).
pub const fn tipg(ipgt: u32, ipgr1: u32, ipgr2: u32) -> u32 {
    ipgt | (ipgr1 << 10) | (ipgr2 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eerd_layouts_differ_in_done_bit_and_address_field() {
        assert_eq!(EerdLayout::I8254X.request(2), 0x201);
        assert_eq!(EerdLayout::I82574.request(2), 0x9);
        assert_eq!(EerdLayout::I8254X.data(0x5254_0210), Some(0x5254));
        // The 8254x done bit means nothing to the 82574 layout and vice versa.
        assert_eq!(EerdLayout::I82574.data(0x5254_0011), None);
        assert_eq!(EerdLayout::I8254X.data(0x5254_000b), None);
        assert_eq!(EerdLayout::I82574.data(0x1234_000b), Some(0x1234));
    }

    #[test]
    fn tipg_packs_three_fields() {
        assert_eq!(tipg(10, 8, 6), 10 | (8 << 10) | (6 << 20));
    }
}
