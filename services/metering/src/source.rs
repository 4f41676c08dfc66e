//! Data sources: what is sampled, under xapi's (xcp-rrdd's) names, types and units.
//!
//! A data source is one time series of one owner (the host or a VM). Its type says how a raw
//! sample becomes the rate stored in the archives, as rrdtool defines the types:
//! - `Gauge`: the sample is the value itself (memory in use, a latency);
//! - `Derive`: the sample is a counter; the stored value is its change per second (bytes
//!   read → bytes/s; CPU time in seconds → fraction of one CPU). A counter that goes
//!   backwards (a VM rebooted, a device reconnected) gives an unknown value, not a negative
//!   rate;
//! - `Absolute`: the sample is a count since the previous sample (reset on read); the stored
//!   value is that count divided by the interval.
//!
//! The catalogue functions ([`host_sources`], [`vm_sources`]) list what Keel records for an
//! owner of a given shape; docs/metering.md lists every name.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// How a raw sample becomes a stored rate (rrdtool's data source types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsType {
    Gauge,
    Derive,
    Absolute,
}

impl DsType {
    /// The name rrdtool and xapi write in an RRD dump.
    pub fn as_str(self) -> &'static str {
        match self {
            DsType::Gauge => "GAUGE",
            DsType::Derive => "DERIVE",
            DsType::Absolute => "ABSOLUTE",
        }
    }
}

/// The description of one data source, as `host.get_data_sources` reports it (without the
/// current value, which comes from the archives).
#[derive(Debug, Clone, PartialEq)]
pub struct DataSourceSpec {
    /// xapi's name, e.g. `cpu0`, `memory_free_kib`, `vbd_xvda_read`.
    pub name: String,
    pub description: String,
    /// xapi's unit strings, e.g. `(fraction)`, `KiB`, `B/s`.
    pub units: &'static str,
    pub ds_type: DsType,
    /// Rates outside [min, max] are stored as unknown (rrdtool's range check).
    pub min: f64,
    pub max: f64,
    /// Recorded by default in xapi (every source Keel records is enabled; `standard` tells
    /// clients which ones xapi would record without being asked).
    pub standard: bool,
}

impl DataSourceSpec {
    fn new(
        name: String,
        description: String,
        units: &'static str,
        ds_type: DsType,
        min: f64,
        max: f64,
    ) -> Self {
        DataSourceSpec {
            name,
            description,
            units,
            ds_type,
            min,
            max,
            standard: true,
        }
    }
}

/// One row of `host.get_data_sources` / `VM.get_data_sources` (xapi's `data_source` record).
#[derive(Debug, Clone, PartialEq)]
pub struct DataSourceRecord {
    pub name_label: String,
    pub name_description: String,
    pub enabled: bool,
    pub standard: bool,
    pub units: String,
    pub min: f64,
    pub max: f64,
    /// The latest value (finest AVERAGE archive), NaN while unknown.
    pub value: f64,
}

/// The most physical CPUs, vCPUs, VBDs, VIFs and PIFs one owner's RRD describes; more are
/// refused ([`ShapeError`]) so the memory of one RRD stays bounded (docs/metering.md).
pub const MAX_CPUS: usize = 128;
pub const MAX_VBDS: usize = 16;
pub const MAX_VIFS: usize = 16;
pub const MAX_PIFS: usize = 16;
/// The longest device name accepted in a data source name (`xvda`, `eth0`).
pub const MAX_DEVICE_NAME: usize = 15;

/// An owner's shape that the catalogue refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    TooManyCpus(usize),
    TooManyVbds(usize),
    TooManyVifs(usize),
    TooManyPifs(usize),
    /// Empty, too long, or not made of ASCII letters, digits, `-` and `.`.
    BadDeviceName(String),
    DuplicateDevice(String),
}

/// The host's shape: how many physical CPUs, and its physical interfaces by device name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShape {
    pub cpus: usize,
    pub pifs: Vec<String>,
}

/// A VM's shape: vCPUs, VBDs by device name (`xvda`), VIFs by device index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmShape {
    pub vcpus: usize,
    pub vbds: Vec<String>,
    pub vifs: Vec<u32>,
}

const UNBOUNDED: f64 = f64::INFINITY;

/// The host source carrying Keel's heap in use (KiB).
pub const HEAP_USED_SOURCE: &str = "keel_heap_used_kib";

/// Every unit string the catalogue uses.
const UNITS: [&str; 7] = [
    "(fraction)",
    "KiB",
    "B",
    "B/s",
    "μs",
    "requests/s",
    "(errors/s)",
];

/// The catalogue's own copy of a unit string (restoring a saved RRD).
pub(crate) fn known_units(units: &str) -> Option<&'static str> {
    UNITS.iter().copied().find(|u| *u == units)
}

fn check_device(name: &str, seen: &[String]) -> Result<(), ShapeError> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_DEVICE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !well_formed {
        return Err(ShapeError::BadDeviceName(String::from(name)));
    }
    if seen.iter().any(|s| s == name) {
        return Err(ShapeError::DuplicateDevice(String::from(name)));
    }
    Ok(())
}

/// The host's data sources, in the order its RRD stores them.
pub fn host_sources(shape: &HostShape) -> Result<Vec<DataSourceSpec>, ShapeError> {
    if shape.cpus > MAX_CPUS {
        return Err(ShapeError::TooManyCpus(shape.cpus));
    }
    if shape.pifs.len() > MAX_PIFS {
        return Err(ShapeError::TooManyPifs(shape.pifs.len()));
    }
    for (i, pif) in shape.pifs.iter().enumerate() {
        check_device(pif, &shape.pifs[..i])?;
    }
    let mut out = Vec::new();
    for cpu in 0..shape.cpus {
        out.push(DataSourceSpec::new(
            format!("cpu{cpu}"),
            format!("Physical cpu usage for cpu {cpu}"),
            "(fraction)",
            DsType::Derive,
            0.0,
            1.0,
        ));
    }
    out.push(DataSourceSpec::new(
        String::from("cpu_avg"),
        String::from("Average physical cpu usage"),
        "(fraction)",
        DsType::Gauge,
        0.0,
        1.0,
    ));
    out.push(DataSourceSpec::new(
        String::from("memory_total_kib"),
        String::from("Total amount of memory in use by the host and its guests"),
        "KiB",
        DsType::Gauge,
        0.0,
        UNBOUNDED,
    ));
    out.push(DataSourceSpec::new(
        String::from("memory_free_kib"),
        String::from("Total amount of free memory (Xen's free heap)"),
        "KiB",
        DsType::Gauge,
        0.0,
        UNBOUNDED,
    ));
    // xapi records its own memory as host sources (`xapi_memory_usage_kib`); Keel is the
    // whole control domain, so its heap in use is what dom0 costs.
    out.push(DataSourceSpec::new(
        String::from(HEAP_USED_SOURCE),
        String::from("Memory in use by the control domain's heap (Keel)"),
        "KiB",
        DsType::Gauge,
        0.0,
        UNBOUNDED,
    ));
    for pif in &shape.pifs {
        out.push(DataSourceSpec::new(
            format!("pif_{pif}_rx"),
            format!("Bytes per second received on physical interface {pif}"),
            "B/s",
            DsType::Derive,
            0.0,
            UNBOUNDED,
        ));
        out.push(DataSourceSpec::new(
            format!("pif_{pif}_tx"),
            format!("Bytes per second sent on physical interface {pif}"),
            "B/s",
            DsType::Derive,
            0.0,
            UNBOUNDED,
        ));
    }
    Ok(out)
}

/// A VM's data sources, in the order its RRD stores them. dom0 (Keel itself) is described
/// as a VM of the same shape, as xapi does for the control domain.
pub fn vm_sources(shape: &VmShape) -> Result<Vec<DataSourceSpec>, ShapeError> {
    if shape.vcpus > MAX_CPUS {
        return Err(ShapeError::TooManyCpus(shape.vcpus));
    }
    if shape.vbds.len() > MAX_VBDS {
        return Err(ShapeError::TooManyVbds(shape.vbds.len()));
    }
    if shape.vifs.len() > MAX_VIFS {
        return Err(ShapeError::TooManyVifs(shape.vifs.len()));
    }
    for (i, vbd) in shape.vbds.iter().enumerate() {
        check_device(vbd, &shape.vbds[..i])?;
    }
    for (i, vif) in shape.vifs.iter().enumerate() {
        if shape.vifs[..i].contains(vif) {
            return Err(ShapeError::DuplicateDevice(format!("{vif}")));
        }
    }
    let mut out = Vec::new();
    for cpu in 0..shape.vcpus {
        out.push(DataSourceSpec::new(
            format!("cpu{cpu}"),
            format!("CPU{cpu} usage"),
            "(fraction)",
            DsType::Derive,
            0.0,
            1.0,
        ));
    }
    out.push(DataSourceSpec::new(
        String::from("memory"),
        String::from("Memory currently allocated to VM"),
        "B",
        DsType::Gauge,
        0.0,
        UNBOUNDED,
    ));
    out.push(DataSourceSpec::new(
        String::from("memory_target"),
        String::from("Target of VM balloon driver"),
        "B",
        DsType::Gauge,
        0.0,
        UNBOUNDED,
    ));
    for vbd in &shape.vbds {
        let per_vbd: [(&str, String, &'static str, DsType); 6] = [
            (
                "read",
                format!("Reads from device {vbd} in bytes per second"),
                "B/s",
                DsType::Derive,
            ),
            (
                "write",
                format!("Writes to device {vbd} in bytes per second"),
                "B/s",
                DsType::Derive,
            ),
            (
                "read_latency",
                format!("Mean latency of reads from device {vbd} over the last interval"),
                "μs",
                DsType::Gauge,
            ),
            (
                "write_latency",
                format!("Mean latency of writes to device {vbd} over the last interval"),
                "μs",
                DsType::Gauge,
            ),
            (
                "iops_read",
                format!("Read requests per second on device {vbd}"),
                "requests/s",
                DsType::Derive,
            ),
            (
                "iops_write",
                format!("Write requests per second on device {vbd}"),
                "requests/s",
                DsType::Derive,
            ),
        ];
        for (suffix, description, units, ds_type) in per_vbd {
            out.push(DataSourceSpec::new(
                format!("vbd_{vbd}_{suffix}"),
                description,
                units,
                ds_type,
                0.0,
                UNBOUNDED,
            ));
        }
    }
    for vif in &shape.vifs {
        let per_vif: [(&str, String, &'static str); 4] = [
            (
                "rx",
                format!("Bytes per second received on virtual interface {vif}"),
                "B/s",
            ),
            (
                "tx",
                format!("Bytes per second sent on virtual interface {vif}"),
                "B/s",
            ),
            (
                "rx_errors",
                format!("Receive errors (frames dropped) per second on virtual interface {vif}"),
                "(errors/s)",
            ),
            (
                "tx_errors",
                format!("Transmit errors (frames dropped) per second on virtual interface {vif}"),
                "(errors/s)",
            ),
        ];
        for (suffix, description, units) in per_vif {
            out.push(DataSourceSpec::new(
                format!("vif_{vif}_{suffix}"),
                description,
                units,
                DsType::Derive,
                0.0,
                UNBOUNDED,
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn names(specs: &[DataSourceSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn host_names_follow_xapi() {
        let specs = host_sources(&HostShape {
            cpus: 2,
            pifs: vec![String::from("eth0")],
        })
        .unwrap();
        assert_eq!(
            names(&specs),
            [
                "cpu0",
                "cpu1",
                "cpu_avg",
                "memory_total_kib",
                "memory_free_kib",
                "keel_heap_used_kib",
                "pif_eth0_rx",
                "pif_eth0_tx"
            ]
        );
        assert_eq!(specs[0].ds_type, DsType::Derive);
        assert_eq!(specs[0].max, 1.0);
        assert_eq!(specs[3].units, "KiB");
        assert_eq!(specs[5].units, "KiB");
        assert_eq!(specs[5].ds_type, DsType::Gauge);
    }

    #[test]
    fn vm_names_follow_xapi() {
        let specs = vm_sources(&VmShape {
            vcpus: 1,
            vbds: vec![String::from("xvda")],
            vifs: vec![0],
        })
        .unwrap();
        assert_eq!(
            names(&specs),
            [
                "cpu0",
                "memory",
                "memory_target",
                "vbd_xvda_read",
                "vbd_xvda_write",
                "vbd_xvda_read_latency",
                "vbd_xvda_write_latency",
                "vbd_xvda_iops_read",
                "vbd_xvda_iops_write",
                "vif_0_rx",
                "vif_0_tx",
                "vif_0_rx_errors",
                "vif_0_tx_errors"
            ]
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        let too_many = VmShape {
            vcpus: MAX_CPUS + 1,
            vbds: vec![],
            vifs: vec![],
        };
        assert_eq!(
            vm_sources(&too_many),
            Err(ShapeError::TooManyCpus(MAX_CPUS + 1))
        );
        let bad_name = VmShape {
            vcpus: 1,
            vbds: vec![String::from("xv:da")],
            vifs: vec![],
        };
        assert!(matches!(
            vm_sources(&bad_name),
            Err(ShapeError::BadDeviceName(_))
        ));
        let dup = VmShape {
            vcpus: 1,
            vbds: vec![],
            vifs: vec![1, 1],
        };
        assert!(matches!(
            vm_sources(&dup),
            Err(ShapeError::DuplicateDevice(_))
        ));
        let dup_pif = HostShape {
            cpus: 1,
            pifs: vec![String::from("eth0"), String::from("eth0")],
        };
        assert!(matches!(
            host_sources(&dup_pif),
            Err(ShapeError::DuplicateDevice(_))
        ));
    }
}
