//! What the kernel measures every 5 s and hands in: raw counters and gauges, read from Xen
//! (physinfo, vCPU runstate times, domain memory) and from Keel's own backends (blkback,
//! netback) and NIC drivers. Counters are cumulative since the device or domain started;
//! the metering turns them into rates (RRDs) and deltas (usage).

use alloc::string::String;
use alloc::vec::Vec;

/// The host's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFigures {
    /// Busy (non-idle) time of each physical CPU in nanoseconds, cumulative.
    pub cpu_busy_ns: Vec<u64>,
    /// Memory Xen manages, and the part of it that is free.
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
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
