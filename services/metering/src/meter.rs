//! The performance side of metering: the host's RRD and one RRD per VM, fed from the figures
//! sampled every 5 s, and what the XenAPI and the HTTP endpoints read from them.
//!
//! A VM missing from a sample is not running: it leaves `rrd_updates` (xapi exports resident
//! VMs only) but its RRD stays for `/vm_rrd` and `VM.get_data_sources` until
//! [`Metering::forget_vm`] (VM destroyed). At most [`Metering::max_vms`] VM RRDs are kept.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::dump::dump_xml;
use crate::figures::{HostFigures, VmFigures};
use crate::rrd::{Rrd, RrdError};
use crate::source::{
    host_sources, vm_sources, DataSourceRecord, DataSourceSpec, HostShape, ShapeError, VmShape,
    HEAP_USED_SOURCE,
};
use crate::updates::{export, ExportError, Owner, OwnerKind, UpdatesQuery, VmFilter};

/// The default bound on VM RRDs (running or not).
pub const DEFAULT_MAX_VMS: usize = 512;

/// Why a sample or a query was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeterError {
    UnknownUuid(String),
    UnknownDataSource(String),
    /// Not a uuid (8-4-4-4-12 hex digits).
    BadUuid(String),
    Shape(ShapeError),
    Rrd(RrdError),
    /// More VMs than [`Metering::max_vms`].
    TooManyVms,
}

impl From<ShapeError> for MeterError {
    fn from(e: ShapeError) -> Self {
        MeterError::Shape(e)
    }
}

impl From<RrdError> for MeterError {
    fn from(e: RrdError) -> Self {
        MeterError::Rrd(e)
    }
}

/// What one sample did for each VM that could not be recorded (the rest were).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleReport {
    pub host_error: Option<MeterError>,
    pub vm_errors: Vec<(String, MeterError)>,
}

/// True for `8-4-4-4-12` hexadecimal digits.
pub fn is_uuid(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

pub(crate) struct HostMeter {
    pub shape: HostShape,
    pub rrd: Rrd,
    pub previous: Option<(u64, HostFigures)>,
}

pub(crate) struct VmMeter {
    pub shape: VmShape,
    pub rrd: Rrd,
    pub previous: Option<VmFigures>,
    pub running: bool,
}

/// The RRDs of one host and its VMs.
pub struct Metering {
    pub(crate) host_uuid: String,
    pub(crate) host: Option<HostMeter>,
    pub(crate) vms: BTreeMap<String, VmMeter>,
    pub(crate) max_vms: usize,
}

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Grows `rrd` with the sources of `specs` it lacks (a device plugged in).
fn add_missing(rrd: &mut Rrd, specs: Vec<DataSourceSpec>) -> Result<(), RrdError> {
    for spec in specs {
        if rrd.source_index(&spec.name).is_none() {
            rrd.add_source(spec)?;
        }
    }
    Ok(())
}

/// One raw value per data source of `rrd`, by name; sources not named are unknown.
fn in_rrd_order(rrd: &Rrd, named: &[(String, f64)]) -> Vec<Option<f64>> {
    rrd.specs()
        .map(|spec| {
            named
                .iter()
                .find(|(name, _)| *name == spec.name)
                .map(|(_, v)| *v)
        })
        .collect()
}

fn host_values(
    figures: &HostFigures,
    previous: Option<&(u64, HostFigures)>,
    now_ms: u64,
) -> Vec<(String, f64)> {
    let mut named = Vec::new();
    for (cpu, busy) in figures.cpu_busy_ns.iter().enumerate() {
        named.push((alloc::format!("cpu{cpu}"), ns_to_s(*busy)));
    }
    if let Some((then_ms, before)) = previous {
        let elapsed_s = now_ms.saturating_sub(*then_ms) as f64 / 1000.0;
        let cpus = figures.cpu_busy_ns.len();
        if elapsed_s > 0.0 && cpus > 0 && before.cpu_busy_ns.len() == cpus {
            let busy: u64 = figures
                .cpu_busy_ns
                .iter()
                .zip(&before.cpu_busy_ns)
                .map(|(now, then)| now.saturating_sub(*then))
                .sum();
            let avg = (ns_to_s(busy) / (elapsed_s * cpus as f64)).clamp(0.0, 1.0);
            named.push((String::from("cpu_avg"), avg));
        }
    }
    named.push((
        String::from("memory_total_kib"),
        (figures.memory_total_bytes / 1024) as f64,
    ));
    named.push((
        String::from("memory_free_kib"),
        (figures.memory_free_bytes / 1024) as f64,
    ));
    named.push((
        String::from(HEAP_USED_SOURCE),
        (figures.heap_used_bytes / 1024) as f64,
    ));
    for pif in &figures.pifs {
        named.push((alloc::format!("pif_{}_rx", pif.device), pif.rx_bytes as f64));
        named.push((alloc::format!("pif_{}_tx", pif.device), pif.tx_bytes as f64));
    }
    named
}

/// Mean latency of the requests completed since the previous sample (0 when none were).
fn mean_latency(total_now: u64, total_then: u64, reqs_now: u64, reqs_then: u64) -> Option<f64> {
    let reqs = reqs_now.checked_sub(reqs_then)?;
    let total = total_now.checked_sub(total_then)?;
    Some(if reqs == 0 {
        0.0
    } else {
        total as f64 / reqs as f64
    })
}

fn vm_values(figures: &VmFigures, previous: Option<&VmFigures>) -> Vec<(String, f64)> {
    let mut named = Vec::new();
    for (cpu, time) in figures.vcpu_time_ns.iter().enumerate() {
        named.push((alloc::format!("cpu{cpu}"), ns_to_s(*time)));
    }
    named.push((String::from("memory"), figures.memory_actual_bytes as f64));
    named.push((
        String::from("memory_target"),
        figures.memory_target_bytes as f64,
    ));
    let same_instance = previous.filter(|p| p.instance == figures.instance);
    for vbd in &figures.vbds {
        let d = &vbd.device;
        named.push((alloc::format!("vbd_{d}_read"), vbd.read_bytes as f64));
        named.push((alloc::format!("vbd_{d}_write"), vbd.write_bytes as f64));
        named.push((
            alloc::format!("vbd_{d}_iops_read"),
            vbd.read_requests as f64,
        ));
        named.push((
            alloc::format!("vbd_{d}_iops_write"),
            vbd.write_requests as f64,
        ));
        if let Some(before) = same_instance.and_then(|p| p.vbds.iter().find(|b| b.device == *d)) {
            if let Some(l) = mean_latency(
                vbd.read_latency_total_us,
                before.read_latency_total_us,
                vbd.read_requests,
                before.read_requests,
            ) {
                named.push((alloc::format!("vbd_{d}_read_latency"), l));
            }
            if let Some(l) = mean_latency(
                vbd.write_latency_total_us,
                before.write_latency_total_us,
                vbd.write_requests,
                before.write_requests,
            ) {
                named.push((alloc::format!("vbd_{d}_write_latency"), l));
            }
        }
    }
    for vif in &figures.vifs {
        let i = vif.index;
        named.push((alloc::format!("vif_{i}_rx"), vif.rx_bytes as f64));
        named.push((alloc::format!("vif_{i}_tx"), vif.tx_bytes as f64));
        named.push((alloc::format!("vif_{i}_rx_errors"), vif.rx_errors as f64));
        named.push((alloc::format!("vif_{i}_tx_errors"), vif.tx_errors as f64));
    }
    named
}

fn vm_shape(figures: &VmFigures) -> VmShape {
    VmShape {
        vcpus: figures.vcpu_time_ns.len(),
        vbds: figures.vbds.iter().map(|v| v.device.clone()).collect(),
        vifs: figures.vifs.iter().map(|v| v.index).collect(),
    }
}

/// Widens `known` with whatever `new` has that it lacks (devices only ever get added).
fn widen(known: &mut VmShape, new: &VmShape) {
    known.vcpus = known.vcpus.max(new.vcpus);
    for vbd in &new.vbds {
        if !known.vbds.contains(vbd) {
            known.vbds.push(vbd.clone());
        }
    }
    for vif in &new.vifs {
        if !known.vifs.contains(vif) {
            known.vifs.push(*vif);
        }
    }
}

fn records(rrd: &Rrd) -> Vec<DataSourceRecord> {
    rrd.specs()
        .enumerate()
        .map(|(index, spec)| DataSourceRecord {
            name_label: spec.name.clone(),
            name_description: spec.description.clone(),
            enabled: true,
            standard: spec.standard,
            units: String::from(spec.units),
            min: spec.min,
            max: spec.max,
            value: rrd.latest(index),
        })
        .collect()
}

impl Metering {
    pub fn new(host_uuid: &str) -> Result<Self, MeterError> {
        if !is_uuid(host_uuid) {
            return Err(MeterError::BadUuid(String::from(host_uuid)));
        }
        Ok(Metering {
            host_uuid: String::from(host_uuid),
            host: None,
            vms: BTreeMap::new(),
            max_vms: DEFAULT_MAX_VMS,
        })
    }

    pub fn with_max_vms(mut self, max_vms: usize) -> Self {
        self.max_vms = max_vms;
        self
    }

    pub fn max_vms(&self) -> usize {
        self.max_vms
    }

    /// Records the figures sampled at `now_ms`. `vms` are the running VMs; an error for one
    /// owner does not stop the others (they are listed in the report).
    pub fn sample(&mut self, now_ms: u64, host: &HostFigures, vms: &[VmFigures]) -> SampleReport {
        let mut report = SampleReport::default();
        if let Err(e) = self.sample_host(now_ms, host) {
            report.host_error = Some(e);
        }
        for meter in self.vms.values_mut() {
            meter.running = false;
        }
        for figures in vms {
            if let Err(e) = self.sample_vm(now_ms, figures) {
                report.vm_errors.push((figures.uuid.clone(), e));
            }
        }
        report
    }

    fn sample_host(&mut self, now_ms: u64, figures: &HostFigures) -> Result<(), MeterError> {
        let shape = HostShape {
            cpus: figures.cpu_busy_ns.len(),
            pifs: figures.pifs.iter().map(|p| p.device.clone()).collect(),
        };
        let specs = host_sources(&shape)?;
        let meter = match &mut self.host {
            Some(meter) => {
                // A host RRD restored from an archive saved before a source was added lacks
                // it although its shape is the same: check the names, not only the shape.
                let lacks_source = specs
                    .iter()
                    .any(|spec| meter.rrd.source_index(&spec.name).is_none());
                if meter.shape != shape || lacks_source {
                    let mut wider = meter.shape.clone();
                    wider.cpus = wider.cpus.max(shape.cpus);
                    for pif in &shape.pifs {
                        if !wider.pifs.contains(pif) {
                            wider.pifs.push(pif.clone());
                        }
                    }
                    add_missing(&mut meter.rrd, host_sources(&wider)?)?;
                    meter.shape = wider;
                }
                meter
            }
            None => {
                let mut rrd = Rrd::new(specs, now_ms)?;
                let named = host_values(figures, None, now_ms);
                let raw = in_rrd_order(&rrd, &named);
                rrd.seed(&raw);
                self.host.insert(HostMeter {
                    shape,
                    rrd,
                    previous: None,
                })
            }
        };
        if meter.rrd.last_update_ms() == now_ms {
            meter.previous = Some((now_ms, figures.clone()));
            return Ok(());
        }
        let named = host_values(figures, meter.previous.as_ref(), now_ms);
        let raw = in_rrd_order(&meter.rrd, &named);
        meter.rrd.update(now_ms, &raw)?;
        meter.previous = Some((now_ms, figures.clone()));
        Ok(())
    }

    fn sample_vm(&mut self, now_ms: u64, figures: &VmFigures) -> Result<(), MeterError> {
        if !is_uuid(&figures.uuid) {
            return Err(MeterError::BadUuid(figures.uuid.clone()));
        }
        let shape = vm_shape(figures);
        let specs = vm_sources(&shape)?;
        if !self.vms.contains_key(&figures.uuid) {
            if self.vms.len() >= self.max_vms {
                return Err(MeterError::TooManyVms);
            }
            let mut rrd = Rrd::new(specs, now_ms)?;
            let raw = in_rrd_order(&rrd, &vm_values(figures, None));
            rrd.seed(&raw);
            self.vms.insert(
                figures.uuid.clone(),
                VmMeter {
                    shape,
                    rrd,
                    previous: Some(figures.clone()),
                    running: true,
                },
            );
            return Ok(());
        }
        let Some(meter) = self.vms.get_mut(&figures.uuid) else {
            return Err(MeterError::UnknownUuid(figures.uuid.clone()));
        };
        meter.running = true;
        if meter.shape != shape {
            let mut wider = meter.shape.clone();
            widen(&mut wider, &shape);
            add_missing(&mut meter.rrd, vm_sources(&wider)?)?;
            meter.shape = wider;
        }
        let named = vm_values(figures, meter.previous.as_ref());
        let raw = in_rrd_order(&meter.rrd, &named);
        let result = meter.rrd.update(now_ms, &raw);
        meter.previous = Some(figures.clone());
        result.map_err(MeterError::from)
    }

    /// Drops a destroyed VM's RRD.
    pub fn forget_vm(&mut self, uuid: &str) -> bool {
        self.vms.remove(uuid).is_some()
    }

    pub fn host_rrd(&self) -> Option<&Rrd> {
        self.host.as_ref().map(|h| &h.rrd)
    }

    pub fn vm_rrd(&self, uuid: &str) -> Option<&Rrd> {
        self.vms.get(uuid).map(|v| &v.rrd)
    }

    /// `host.get_data_sources`.
    pub fn host_data_sources(&self) -> Vec<DataSourceRecord> {
        self.host
            .as_ref()
            .map_or_else(Vec::new, |h| records(&h.rrd))
    }

    /// `VM.get_data_sources`.
    pub fn vm_data_sources(&self, uuid: &str) -> Result<Vec<DataSourceRecord>, MeterError> {
        self.vm_rrd(uuid)
            .map(records)
            .ok_or_else(|| MeterError::UnknownUuid(String::from(uuid)))
    }

    /// `host.query_data_source`: the latest 5 s average.
    pub fn query_host(&self, name: &str) -> Result<f64, MeterError> {
        let rrd = self
            .host_rrd()
            .ok_or_else(|| MeterError::UnknownDataSource(String::from(name)))?;
        query(rrd, name)
    }

    /// `VM.query_data_source`.
    pub fn query_vm(&self, uuid: &str, name: &str) -> Result<f64, MeterError> {
        let rrd = self
            .vm_rrd(uuid)
            .ok_or_else(|| MeterError::UnknownUuid(String::from(uuid)))?;
        query(rrd, name)
    }

    /// `GET /rrd_updates`: validates the query against `now_s` and renders XML or JSON.
    pub fn rrd_updates(&self, now_s: u64, query: &UpdatesQuery) -> Result<String, ExportError> {
        query.validate(now_s)?;
        let mut owners = Vec::new();
        if query.host {
            if let Some(host) = &self.host {
                owners.push(Owner {
                    kind: OwnerKind::Host,
                    uuid: &self.host_uuid,
                    rrd: &host.rrd,
                });
            }
        }
        match &query.vm_uuid {
            VmFilter::None => {}
            VmFilter::One(uuid) => {
                let meter = self
                    .vms
                    .get(uuid)
                    .ok_or_else(|| ExportError::UnknownUuid(uuid.clone()))?;
                owners.push(Owner {
                    kind: OwnerKind::Vm,
                    uuid,
                    rrd: &meter.rrd,
                });
            }
            VmFilter::All => {
                for (uuid, meter) in self.vms.iter().filter(|(_, m)| m.running) {
                    owners.push(Owner {
                        kind: OwnerKind::Vm,
                        uuid,
                        rrd: &meter.rrd,
                    });
                }
            }
        }
        let xport = export(&owners, query)?;
        if query.json {
            xport.to_json()
        } else {
            xport.to_xml()
        }
    }

    /// `GET /host_rrd`.
    pub fn host_rrd_xml(&self) -> Result<String, ExportError> {
        let rrd = self
            .host_rrd()
            .ok_or_else(|| ExportError::UnknownUuid(self.host_uuid.clone()))?;
        dump_xml(rrd)
    }

    /// `GET /vm_rrd?uuid=`.
    pub fn vm_rrd_xml(&self, uuid: &str) -> Result<String, ExportError> {
        let rrd = self
            .vm_rrd(uuid)
            .ok_or_else(|| ExportError::UnknownUuid(String::from(uuid)))?;
        dump_xml(rrd)
    }

    /// Bytes held by all RRDs.
    pub fn memory_bytes(&self) -> usize {
        self.host.as_ref().map_or(0, |h| h.rrd.memory_bytes())
            + self
                .vms
                .values()
                .map(|v| v.rrd.memory_bytes())
                .sum::<usize>()
    }
}

fn query(rrd: &Rrd, name: &str) -> Result<f64, MeterError> {
    let index = rrd
        .source_index(name)
        .ok_or_else(|| MeterError::UnknownDataSource(String::from(name)))?;
    Ok(rrd.latest(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "00000000-0000-4000-8000-000000000001";

    fn figures(heap_kib: u64) -> HostFigures {
        HostFigures {
            cpu_busy_ns: alloc::vec![0],
            memory_total_bytes: 1 << 30,
            memory_free_bytes: 1 << 29,
            heap_used_bytes: heap_kib * 1024,
            pifs: Vec::new(),
        }
    }

    #[test]
    fn a_host_rrd_saved_before_the_heap_source_gains_it() {
        let mut metering = Metering::new(HOST).unwrap();
        let shape = HostShape {
            cpus: 1,
            pifs: Vec::new(),
        };
        let old_specs = host_sources(&shape)
            .unwrap()
            .into_iter()
            .filter(|spec| spec.name != HEAP_USED_SOURCE)
            .collect();
        metering.host = Some(HostMeter {
            shape,
            rrd: Rrd::new(old_specs, 0).unwrap(),
            previous: None,
        });
        assert_eq!(
            metering.query_host(HEAP_USED_SOURCE),
            Err(MeterError::UnknownDataSource(String::from(
                HEAP_USED_SOURCE
            )))
        );
        for step in 1..=3 {
            let report = metering.sample(step * 5_000, &figures(4096), &[]);
            assert_eq!(report.host_error, None);
        }
        assert_eq!(metering.query_host(HEAP_USED_SOURCE), Ok(4096.0));
        assert_eq!(metering.query_host("memory_free_kib"), Ok(524_288.0));
    }
}
