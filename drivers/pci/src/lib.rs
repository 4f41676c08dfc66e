//! PCI enumeration, BAR sizing and capability walking over a config-space access trait.
//!
//! The kernel supplies a [`ConfigSpace`] (ECAM from ACPI's MCFG, or the legacy 0xCF8/0xCFC
//! ports); everything above that — walking buses through bridges, decoding headers, sizing
//! BARs, naming devices for the console table — is here and runs in host tests against a
//! fake config space.
//!
//! We do not use `pci_types` for BARs: its sizing panics on a reserved BAR type, does not
//! size I/O BARs, and leaves decoding on while all-ones are written to a live BAR.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// A function's address on segment 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Address {
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Address {
            bus,
            device,
            function,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// 32-bit config-space access. `offset` is 4-byte aligned; implementations return all-ones
/// for absent functions and offsets they cannot reach, as hardware does.
pub trait ConfigSpace {
    fn read32(&self, address: Address, offset: u16) -> u32;
    fn write32(&self, address: Address, offset: u16, value: u32);

    fn read16(&self, address: Address, offset: u16) -> u16 {
        (self.read32(address, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    fn read8(&self, address: Address, offset: u16) -> u8 {
        (self.read32(address, offset & !3) >> ((offset & 3) * 8)) as u8
    }
}

pub mod reg {
    pub const ID: u16 = 0x00;
    pub const COMMAND: u16 = 0x04;
    pub const CLASS: u16 = 0x08;
    pub const HEADER: u16 = 0x0c;
    pub const BAR0: u16 = 0x10;
    pub const BUSES: u16 = 0x18;
    pub const CAP_PTR: u16 = 0x34;
    pub const STATUS_HAS_CAPS: u32 = 1 << (16 + 4);
    pub const CMD_IO: u32 = 1 << 0;
    pub const CMD_MEMORY: u32 = 1 << 1;
    pub const CMD_BUS_MASTER: u32 = 1 << 2;
}

/// A decoded base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    Memory {
        base: u64,
        size: u64,
        is_64bit: bool,
        prefetchable: bool,
    },
    Io {
        port: u32,
        size: u32,
    },
}

/// What a function is, as far as Keel cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    VirtioNet,
    VirtioBlk,
    VirtioOther,
    Nvme,
    E1000,
    E1000e,
    HostBridge,
    IsaBridge,
    PciBridge,
    SataAhci,
    Smbus,
    Vga,
    Unknown,
}

impl DeviceKind {
    pub fn classify(vendor: u16, device: u16, class: u8, subclass: u8, prog_if: u8) -> Self {
        match (vendor, device) {
            (0x1af4, 0x1000 | 0x1041) => return DeviceKind::VirtioNet,
            (0x1af4, 0x1001 | 0x1042) => return DeviceKind::VirtioBlk,
            (0x1af4, 0x1000..=0x107f) => return DeviceKind::VirtioOther,
            // 8254x parts driven by the classic e1000 programming model.
            (0x8086, 0x100e | 0x100f | 0x1004 | 0x1026 | 0x1075 | 0x1076 | 0x1079 | 0x107c) => {
                return DeviceKind::E1000
            }
            // 82574L and later PCIe parts (QEMU's `e1000e` is an 82574L).
            (0x8086, 0x10d3 | 0x10f6 | 0x150c | 0x1502 | 0x1503 | 0x153a | 0x153b) => {
                return DeviceKind::E1000e
            }
            _ => {}
        }
        match (class, subclass, prog_if) {
            (0x01, 0x08, 0x02) => DeviceKind::Nvme,
            (0x01, 0x06, 0x01) => DeviceKind::SataAhci,
            (0x06, 0x00, _) => DeviceKind::HostBridge,
            (0x06, 0x01, _) => DeviceKind::IsaBridge,
            (0x06, 0x04, _) => DeviceKind::PciBridge,
            (0x0c, 0x05, _) => DeviceKind::Smbus,
            (0x03, 0x00, _) => DeviceKind::Vga,
            _ => DeviceKind::Unknown,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DeviceKind::VirtioNet => "virtio-net",
            DeviceKind::VirtioBlk => "virtio-blk",
            DeviceKind::VirtioOther => "virtio",
            DeviceKind::Nvme => "nvme",
            DeviceKind::E1000 => "e1000",
            DeviceKind::E1000e => "e1000e",
            DeviceKind::HostBridge => "host-bridge",
            DeviceKind::IsaBridge => "isa-bridge",
            DeviceKind::PciBridge => "pci-bridge",
            DeviceKind::SataAhci => "sata-ahci",
            DeviceKind::Smbus => "smbus",
            DeviceKind::Vga => "vga",
            DeviceKind::Unknown => "unknown",
        }
    }
}

/// One enumerated function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub address: Address,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    /// Header layout (0 = endpoint, 1 = PCI-PCI bridge, 2 = CardBus), multi-function bit cleared.
    pub header_type: u8,
    /// Indexed by BAR slot; the upper half of a 64-bit BAR is `None`.
    pub bars: [Option<Bar>; 6],
    pub kind: DeviceKind,
}

impl fmt::Display for Function {
    /// One line of the console's PCI table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pci {} {:04x}:{:04x} class {:02x}.{:02x}.{:02x} {:<11}",
            self.address,
            self.vendor_id,
            self.device_id,
            self.class,
            self.subclass,
            self.prog_if,
            self.kind.name()
        )?;
        for (slot, bar) in self.bars.iter().enumerate() {
            match bar {
                Some(Bar::Io { port, size }) => write!(f, " bar{slot}=io:{port:#x}/{size:#x}")?,
                Some(Bar::Memory {
                    base,
                    size,
                    is_64bit,
                    prefetchable,
                }) => {
                    let width = if *is_64bit { "mem64" } else { "mem32" };
                    let pf = if *prefetchable { "p" } else { "" };
                    write!(f, " bar{slot}={width}{pf}:{base:#x}/{size:#x}")?
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// Enumerates every function reachable from the root bus(es), following PCI-PCI bridges.
/// Each bus is scanned at most once, so a misprogrammed bridge cannot cause a loop.
pub fn enumerate(cfg: &(impl ConfigSpace + ?Sized)) -> Vec<Function> {
    let mut seen = [false; 256];
    let mut out = Vec::new();
    let host = Address::new(0, 0, 0);
    let multi_root = cfg.read32(host, reg::ID) != u32::MAX
        && cfg.read8(host, reg::HEADER + 2) & 0x80 != 0
        && DeviceKind::classify(0, 0, cfg.read8(host, 0x0b), cfg.read8(host, 0x0a), 0)
            == DeviceKind::HostBridge;
    if multi_root {
        // Several host controllers: function N of 00:00 decodes bus N.
        for func in 0..8u8 {
            if cfg.read32(Address::new(0, 0, func), reg::ID) != u32::MAX {
                scan_bus(cfg, func, &mut seen, &mut out);
            }
        }
    } else {
        scan_bus(cfg, 0, &mut seen, &mut out);
    }
    out
}

fn scan_bus(
    cfg: &(impl ConfigSpace + ?Sized),
    bus: u8,
    seen: &mut [bool; 256],
    out: &mut Vec<Function>,
) {
    if core::mem::replace(&mut seen[bus as usize], true) {
        return;
    }
    for device in 0..32u8 {
        let first = Address::new(bus, device, 0);
        if cfg.read16(first, reg::ID) == 0xffff {
            continue;
        }
        let functions = if cfg.read8(first, reg::HEADER + 2) & 0x80 != 0 {
            8
        } else {
            1
        };
        for function in 0..functions {
            let address = Address::new(bus, device, function);
            if cfg.read16(address, reg::ID) == 0xffff {
                continue;
            }
            let f = probe(cfg, address);
            let secondary = (f.header_type == 1).then(|| cfg.read8(address, reg::BUSES + 1));
            out.push(f);
            if let Some(secondary) = secondary.filter(|&s| s != 0) {
                scan_bus(cfg, secondary, seen, out);
            }
        }
    }
}

/// Reads one present function's header and sizes its BARs.
pub fn probe(cfg: &(impl ConfigSpace + ?Sized), address: Address) -> Function {
    let id = cfg.read32(address, reg::ID);
    let class = cfg.read32(address, reg::CLASS);
    let header_type = cfg.read8(address, reg::HEADER + 2) & 0x7f;
    let (vendor_id, device_id) = (id as u16, (id >> 16) as u16);
    let (class_code, subclass, prog_if) =
        ((class >> 24) as u8, (class >> 16) as u8, (class >> 8) as u8);
    let bar_count = match header_type {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    Function {
        address,
        vendor_id,
        device_id,
        class: class_code,
        subclass,
        prog_if,
        revision: class as u8,
        header_type,
        bars: size_bars(cfg, address, bar_count),
        kind: DeviceKind::classify(vendor_id, device_id, class_code, subclass, prog_if),
    }
}

/// Sizes the first `count` BARs. Decoding is switched off while all-ones sit in a BAR, so
/// the device never claims a bogus window, and every register is restored afterwards.
fn size_bars(
    cfg: &(impl ConfigSpace + ?Sized),
    address: Address,
    count: usize,
) -> [Option<Bar>; 6] {
    let mut bars = [None; 6];
    let command = cfg.read32(address, reg::COMMAND);
    cfg.write32(
        address,
        reg::COMMAND,
        command & !(reg::CMD_IO | reg::CMD_MEMORY),
    );
    let mut slot = 0;
    while slot < count {
        let offset = reg::BAR0 + 4 * slot as u16;
        let original = cfg.read32(address, offset);
        cfg.write32(address, offset, u32::MAX);
        let mask = cfg.read32(address, offset);
        cfg.write32(address, offset, original);
        if original & 1 == 1 {
            let size_mask = mask & !0x3 & 0xffff;
            if size_mask != 0 {
                let size = (!size_mask & 0xffff).wrapping_add(1);
                bars[slot] = Some(Bar::Io {
                    port: original & !0x3,
                    size,
                });
            }
            slot += 1;
            continue;
        }
        let prefetchable = original & 0x8 != 0;
        match (original >> 1) & 0x3 {
            0b10 if slot + 1 < count => {
                let upper = cfg.read32(address, offset + 4);
                cfg.write32(address, offset + 4, u32::MAX);
                let mask_hi = cfg.read32(address, offset + 4);
                cfg.write32(address, offset + 4, upper);
                let mask64 = (u64::from(mask_hi) << 32) | u64::from(mask & !0xf);
                if mask64 != 0 {
                    let base = (u64::from(upper) << 32) | u64::from(original & !0xf);
                    let size = (!mask64).wrapping_add(1);
                    bars[slot] = Some(Bar::Memory {
                        base,
                        size,
                        is_64bit: true,
                        prefetchable,
                    });
                }
                slot += 2;
            }
            0b00 => {
                let size_mask = mask & !0xf;
                if size_mask != 0 {
                    let size = u64::from((!size_mask).wrapping_add(1));
                    let base = u64::from(original & !0xf);
                    bars[slot] = Some(Bar::Memory {
                        base,
                        size,
                        is_64bit: false,
                        prefetchable,
                    });
                }
                slot += 1;
            }
            // Reserved type, or a 64-bit BAR in the last slot: not decodable, skip it.
            _ => slot += 1,
        }
    }
    cfg.write32(address, reg::COMMAND, command);
    bars
}

/// Walks a function's capability list, yielding `(capability id, offset)`. Stops after 48
/// entries or at a malformed pointer, so a looping list cannot hang the caller.
pub fn capabilities(cfg: &(impl ConfigSpace + ?Sized), address: Address) -> Vec<(u8, u8)> {
    let mut caps = Vec::new();
    if cfg.read32(address, reg::COMMAND) & reg::STATUS_HAS_CAPS == 0 {
        return caps;
    }
    let mut ptr = cfg.read8(address, reg::CAP_PTR) & !0x3;
    while ptr >= 0x40 && caps.len() < 48 {
        let id = cfg.read8(address, u16::from(ptr));
        caps.push((id, ptr));
        ptr = cfg.read8(address, u16::from(ptr) + 1) & !0x3;
    }
    caps
}

/// Sets the command-register bits a driver needs (memory/IO decode, bus mastering).
pub fn enable(cfg: &(impl ConfigSpace + ?Sized), address: Address, bits: u32) {
    let command = cfg.read32(address, reg::COMMAND) & 0xffff;
    cfg.write32(address, reg::COMMAND, command | bits);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A config space with BAR size masks, as hardware implements them.
    #[derive(Default)]
    struct FakeConfig {
        regs: RefCell<BTreeMap<(Address, u16), u32>>,
        /// Writable bits of each BAR register.
        bar_masks: BTreeMap<(Address, u16), u32>,
        /// Bar writes seen while decode was enabled.
        live_bar_writes: RefCell<u32>,
    }

    impl ConfigSpace for FakeConfig {
        fn read32(&self, a: Address, offset: u16) -> u32 {
            let present = self.regs.borrow().contains_key(&(a, reg::ID));
            if !present {
                return u32::MAX;
            }
            *self.regs.borrow().get(&(a, offset)).unwrap_or(&0)
        }
        fn write32(&self, a: Address, offset: u16, value: u32) {
            let mut regs = self.regs.borrow_mut();
            let old = *regs.get(&(a, offset)).unwrap_or(&0);
            let bar_register = (reg::BAR0..reg::BAR0 + 24).contains(&offset);
            // Unimplemented BARs are hardwired to zero.
            let mask = self
                .bar_masks
                .get(&(a, offset))
                .copied()
                .or(bar_register.then_some(0));
            let new = match mask {
                Some(mask) => {
                    let cmd = *regs.get(&(a, reg::COMMAND)).unwrap_or(&0);
                    if cmd & (reg::CMD_IO | reg::CMD_MEMORY) != 0 {
                        *self.live_bar_writes.borrow_mut() += 1;
                    }
                    (value & mask) | (old & !mask)
                }
                None if offset == reg::ID || offset == reg::CLASS => old,
                None => value,
            };
            regs.insert((a, offset), new);
        }
    }

    impl FakeConfig {
        fn add(&mut self, a: Address, vendor: u16, device: u16, class: u32, header: u8) {
            let mut regs = self.regs.borrow_mut();
            regs.insert((a, reg::ID), u32::from(device) << 16 | u32::from(vendor));
            regs.insert((a, reg::CLASS), class << 8 | 1);
            regs.insert((a, reg::HEADER), u32::from(header) << 16);
            regs.insert((a, reg::COMMAND), reg::CMD_IO | reg::CMD_MEMORY);
        }
        fn bar(&mut self, a: Address, slot: u16, value: u32, writable: u32) {
            let off = reg::BAR0 + 4 * slot;
            self.regs.borrow_mut().insert((a, off), value);
            self.bar_masks.insert((a, off), writable);
        }
    }

    fn q35_like() -> FakeConfig {
        let mut c = FakeConfig::default();
        c.add(Address::new(0, 0, 0), 0x8086, 0x29c0, 0x060000, 0);
        // virtio-net (legacy+modern transitional): I/O BAR 0x20, mem32 4K, mem64 prefetchable 16K.
        let net = Address::new(0, 2, 0);
        c.add(net, 0x1af4, 0x1000, 0x020000, 0);
        c.bar(net, 0, 0xc001, !0x1f);
        c.bar(net, 1, 0xfebd_1000, !0xfff);
        c.bar(net, 4, 0xfe00_000c, !0x3fff);
        c.bar(net, 5, 0, u32::MAX);
        // A bridge to bus 1 holding an NVMe controller.
        let bridge = Address::new(0, 0x1c, 0);
        c.add(bridge, 0x1b36, 0x000c, 0x060400, 1);
        c.regs
            .borrow_mut()
            .insert((bridge, reg::BUSES), 0x0001_0100);
        let nvme = Address::new(1, 0, 0);
        c.add(nvme, 0x1b36, 0x0010, 0x010802, 0);
        c.bar(nvme, 0, 0xfe80_0004, !0x3fff);
        c.bar(nvme, 1, 0, u32::MAX);
        // A multi-function ISA bridge + SMBus.
        c.add(Address::new(0, 0x1f, 0), 0x8086, 0x2918, 0x060100, 0x80);
        c.add(Address::new(0, 0x1f, 3), 0x8086, 0x2930, 0x0c0500, 0);
        c
    }

    #[test]
    fn enumerates_through_bridges_and_multifunction_devices() {
        let c = q35_like();
        let found: Vec<(String, &str)> = enumerate(&c)
            .iter()
            .map(|f| (f.address.to_string(), f.kind.name()))
            .collect();
        assert_eq!(
            found,
            vec![
                ("00:00.0".into(), "host-bridge"),
                ("00:02.0".into(), "virtio-net"),
                ("00:1c.0".into(), "pci-bridge"),
                ("01:00.0".into(), "nvme"),
                ("00:1f.0".into(), "isa-bridge"),
                ("00:1f.3".into(), "smbus"),
            ]
        );
    }

    #[test]
    fn sizes_io_mem32_and_mem64_bars_and_restores_them() {
        let c = q35_like();
        let net = probe(&c, Address::new(0, 2, 0));
        assert_eq!(
            net.bars[0],
            Some(Bar::Io {
                port: 0xc000,
                size: 0x20
            })
        );
        assert_eq!(
            net.bars[1],
            Some(Bar::Memory {
                base: 0xfebd_1000,
                size: 0x1000,
                is_64bit: false,
                prefetchable: false
            })
        );
        assert_eq!(
            net.bars[4],
            Some(Bar::Memory {
                base: 0xfe00_0000,
                size: 0x4000,
                is_64bit: true,
                prefetchable: true
            })
        );
        assert_eq!(net.bars[5], None, "upper half of a 64-bit BAR");
        assert_eq!(c.read32(net.address, reg::BAR0), 0xc001);
        assert_eq!(c.read32(net.address, reg::BAR0 + 16), 0xfe00_000c);
        assert_eq!(
            c.read32(net.address, reg::COMMAND),
            reg::CMD_IO | reg::CMD_MEMORY
        );
        assert_eq!(
            *c.live_bar_writes.borrow(),
            0,
            "BARs written while decoding"
        );
    }

    #[test]
    fn table_line_names_device_and_bars() {
        let c = q35_like();
        let line = probe(&c, Address::new(0, 2, 0)).to_string();
        assert_eq!(
            line,
            "pci 00:02.0 1af4:1000 class 02.00.00 virtio-net  bar0=io:0xc000/0x20 \
             bar1=mem32:0xfebd1000/0x1000 bar4=mem64p:0xfe000000/0x4000"
        );
    }

    #[test]
    fn bridge_loop_is_scanned_once() {
        let mut c = q35_like();
        // A bridge on bus 1 whose secondary bus is bus 1 again.
        let evil = Address::new(1, 3, 0);
        c.add(evil, 0x1b36, 0x000c, 0x060400, 1);
        c.regs.borrow_mut().insert((evil, reg::BUSES), 0x0001_0101);
        assert_eq!(enumerate(&c).len(), 7);
    }

    #[test]
    fn empty_space_yields_nothing() {
        assert!(enumerate(&FakeConfig::default()).is_empty());
    }

    #[test]
    fn capability_walk_stops_on_loops() {
        let mut c = FakeConfig::default();
        let a = Address::new(0, 3, 0);
        c.add(a, 0x1af4, 0x1041, 0x020000, 0);
        {
            let mut r = c.regs.borrow_mut();
            r.insert((a, reg::COMMAND), reg::STATUS_HAS_CAPS);
            r.insert((a, reg::CAP_PTR), 0x40);
            r.insert((a, 0x40), 0x5009); // vendor cap -> 0x50
            r.insert((a, 0x50), 0x4011); // MSI-X -> back to 0x40
        }
        let caps = capabilities(&c, a);
        assert_eq!(caps.len(), 48);
        assert_eq!(&caps[..2], &[(0x09, 0x40), (0x11, 0x50)]);
    }

    #[test]
    fn classification() {
        assert_eq!(
            DeviceKind::classify(0x1af4, 0x1042, 1, 0, 0),
            DeviceKind::VirtioBlk
        );
        assert_eq!(
            DeviceKind::classify(0x8086, 0x100e, 2, 0, 0),
            DeviceKind::E1000
        );
        assert_eq!(
            DeviceKind::classify(0x8086, 0x10d3, 2, 0, 0),
            DeviceKind::E1000e
        );
        assert_eq!(
            DeviceKind::classify(0x1234, 0x1111, 3, 0, 0),
            DeviceKind::Vga
        );
        assert_eq!(
            DeviceKind::classify(0x1234, 0x5678, 0xff, 0, 0),
            DeviceKind::Unknown
        );
    }
}
