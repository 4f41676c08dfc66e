//! What the kernel measures every 5 s and hands in: raw counters and gauges, read from Xen
//! (physinfo, vCPU runstate times, domain memory) and from Keel's own backends (blkback,
//! netback) and NIC drivers. Counters are cumulative since the device or domain started;
//! the metering turns them into rates (RRDs) and deltas (usage).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// The host's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFigures {
    /// Busy (non-idle) time of each physical CPU in nanoseconds, cumulative.
    pub cpu_busy_ns: Vec<u64>,
    /// Memory Xen manages, and the part of it that is free.
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// Bytes of the control domain's (Keel's) heap in use: what dom0 costs, which Xen's
    /// figures for dom0 (all the pages it was given) do not tell.
    pub heap_used_bytes: u64,
    pub pifs: Vec<PifFigures>,
}

/// A physical interface's byte counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PifFigures {
    /// Its device name (`eth0`).
    pub device: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A running VM's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFigures {
    pub uuid: String,
    /// Changes whenever the VM's domain is created anew (e.g. the domain's start time): the
    /// counters of a new domain start from zero, and usage must not subtract the old ones.
    pub instance: u64,
    /// Running time of each vCPU in nanoseconds (Xen's runstate), cumulative.
    pub vcpu_time_ns: Vec<u64>,
    /// Memory the domain holds now, and its balloon target.
    pub memory_actual_bytes: u64,
    pub memory_target_bytes: u64,
    pub vbds: Vec<VbdFigures>,
    pub vifs: Vec<VifFigures>,
}

/// A virtual block device, as blkback counts it, and the size of the VDI behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VbdFigures {
    /// The guest's device name (`xvda`).
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
    /// Sum over completed requests of their latency, in microseconds.
    pub read_latency_total_us: u64,
    pub write_latency_total_us: u64,
    /// The VDI's virtual size, and the bytes it really occupies (thin provisioning).
    pub provisioned_bytes: u64,
    pub used_bytes: u64,
}

/// A virtual interface, as netback counts it (rx = towards the guest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VifFigures {
    /// The VIF's device index (`vif_0_*`).
    pub index: u32,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Frames dropped or refused on each direction.
    pub rx_errors: u64,
    pub tx_errors: u64,
}

/// The name a guest gives the virtual block device `devid` (its xenstore `virtual-device`),
/// as xapi names `vbd_<dev>_*` sources: Xen's vbd numbering (xen/include/public/io/
/// blkif.h, docs/misc/vbd-interface.txt) — `xvd` (major 202: disk × 16 + partition, or
/// the extended form `1 << 28 | disk << 8 | partition`), `sd` (major 8), `hd` (majors 3
/// and 22); disks lettered as Linux does (`a`…`z`, `aa`…), a partition's number appended
/// (`xvda1`). Anything else is the number itself, which is still a valid source name.
pub fn vbd_device_name(devid: u32) -> String {
    let (prefix, disk, partition) = if devid & (1 << 28) != 0 && devid >> 29 == 0 {
        ("xvd", (devid >> 8) & 0xf_ffff, devid & 0xff)
    } else {
        match devid >> 8 {
            202 => ("xvd", (devid >> 4) & 0xf, devid & 0xf),
            8 => ("sd", (devid >> 4) & 0xf, devid & 0xf),
            3 => ("hd", (devid >> 6) & 1, devid & 0x3f),
            22 => ("hd", 2 + ((devid >> 6) & 1), devid & 0x3f),
            _ => return alloc::format!("{devid}"),
        }
    };
    let mut letters = [0u8; 5];
    let mut at = letters.len();
    let mut n = disk;
    loop {
        at -= 1;
        letters[at] = b'a' + (n % 26) as u8;
        if n < 26 || at == 0 {
            break;
        }
        n = n / 26 - 1;
    }
    let mut name = String::from(prefix);
    name.extend(letters[at..].iter().map(|&b| char::from(b)));
    if partition != 0 {
        let _ = write!(name, "{partition}");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{vm_sources, VmShape};

    #[test]
    fn vbd_names_follow_xens_numbering() {
        let cases = [
            (202 << 8, "xvda"),
            (51712, "xvda"),
            (51728, "xvdb"),
            ((202 << 8) | (15 << 4), "xvdp"),
            ((202 << 8) | 1, "xvda1"),
            ((1 << 28) | (16 << 8), "xvdq"),
            ((1 << 28) | (25 << 8), "xvdz"),
            ((1 << 28) | (26 << 8), "xvdaa"),
            ((1 << 28) | (701 << 8) | 3, "xvdzz3"),
            ((1 << 28) | (702 << 8), "xvdaaa"),
            ((1 << 28) | (0xf_ffff << 8) | 0xff, "xvdbgqcv255"),
            ((8 << 8) | (2 << 4), "sdc"),
            (3 << 8, "hda"),
            ((3 << 8) | (1 << 6) | 2, "hdb2"),
            (22 << 8, "hdc"),
            ((22 << 8) | (1 << 6), "hdd"),
            (768 + 0x100_0000, "16777984"),
            (7, "7"),
        ];
        for (devid, name) in cases {
            assert_eq!(vbd_device_name(devid), name, "devid {devid:#x}");
        }
    }

    #[test]
    fn every_vbd_name_is_a_valid_source_name() {
        let devids = [
            0,
            51712,
            0x1fff_ffff,
            (1 << 28) | (0xf_ffff << 8) | 0xff,
            u32::MAX,
        ];
        for devid in devids {
            let name = vbd_device_name(devid);
            let shape = VmShape {
                vcpus: 1,
                vbds: alloc::vec![name.clone()],
                vifs: Vec::new(),
            };
            assert!(vm_sources(&shape).is_ok(), "{devid:#x}: {name}");
        }
    }
}
