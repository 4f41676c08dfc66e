//! The usage ledger in memory: hourly rows per VM, the VMs' identities and the counter
//! baselines, changed only by applying journal [`Entry`]s, so replaying the journal rebuilds
//! exactly the state that was acknowledged.
//!
//! Amounts are integers (nanoseconds, byte·milliseconds, bytes) so that replays and sums
//! are exact; they become vCPU-seconds and GiB-hours only when exported.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::codec::{DecodeError, Reader, Writer};
use crate::figures::VmFigures;

/// One VM's usage over some time, in exact units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounters {
    pub vcpu_ns: u64,
    /// Memory held × time.
    pub memory_byte_ms: u128,
    /// Σ over the VM's disks of virtual size × time, and of space really used × time.
    pub disk_provisioned_byte_ms: u128,
    pub disk_used_byte_ms: u128,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    /// Towards the guest (rx) and from it (tx).
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

impl UsageCounters {
    pub fn add(&mut self, other: &UsageCounters) {
        self.vcpu_ns = self.vcpu_ns.saturating_add(other.vcpu_ns);
        self.memory_byte_ms = self.memory_byte_ms.saturating_add(other.memory_byte_ms);
        self.disk_provisioned_byte_ms = self
            .disk_provisioned_byte_ms
            .saturating_add(other.disk_provisioned_byte_ms);
        self.disk_used_byte_ms = self
            .disk_used_byte_ms
            .saturating_add(other.disk_used_byte_ms);
        self.disk_read_bytes = self.disk_read_bytes.saturating_add(other.disk_read_bytes);
        self.disk_write_bytes = self.disk_write_bytes.saturating_add(other.disk_write_bytes);
        self.net_rx_bytes = self.net_rx_bytes.saturating_add(other.net_rx_bytes);
        self.net_tx_bytes = self.net_tx_bytes.saturating_add(other.net_tx_bytes);
    }

    pub fn is_zero(&self) -> bool {
        *self == UsageCounters::default()
    }

    fn encode(&self, w: &mut Writer) {
        w.u64(self.vcpu_ns);
        w.u128(self.memory_byte_ms);
        w.u128(self.disk_provisioned_byte_ms);
        w.u128(self.disk_used_byte_ms);
        w.u64(self.disk_read_bytes);
        w.u64(self.disk_write_bytes);
        w.u64(self.net_rx_bytes);
        w.u64(self.net_tx_bytes);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(UsageCounters {
            vcpu_ns: r.u64()?,
            memory_byte_ms: r.u128()?,
            disk_provisioned_byte_ms: r.u128()?,
            disk_used_byte_ms: r.u128()?,
            disk_read_bytes: r.u64()?,
            disk_write_bytes: r.u64()?,
            net_rx_bytes: r.u64()?,
            net_tx_bytes: r.u64()?,
        })
    }
}

/// Who a VM is on the bill. `tenant` is resolved by [`tenant_of`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmIdentity {
    pub name: String,
    pub tags: Vec<String>,
    pub tenant: Option<String>,
}

/// The most tags kept per VM on the bill.
pub const MAX_TAGS: usize = 32;

impl VmIdentity {
    fn encode(&self, w: &mut Writer) {
        w.text(&self.name);
        let tags = &self.tags[..self.tags.len().min(MAX_TAGS)];
        w.len(tags.len());
        for tag in tags {
            w.text(tag);
        }
        match &self.tenant {
            Some(t) => {
                w.bool(true);
                w.text(t);
            }
            None => w.bool(false),
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = r.text()?;
        let count = r.len(4)?;
        if count > MAX_TAGS {
            return Err(DecodeError::TooLong);
        }
        let mut tags = Vec::new();
        for _ in 0..count {
            tags.push(r.text()?);
        }
        let tenant = if r.bool()? { Some(r.text()?) } else { None };
        Ok(VmIdentity { name, tags, tenant })
    }

    /// The identity as it will read back from the journal (texts clipped, tags bounded).
    pub fn normalized(&self) -> VmIdentity {
        let mut w = Writer::default();
        self.encode(&mut w);
        VmIdentity::decode(&mut Reader::new(&w.bytes)).unwrap_or_default()
    }
}

/// The tenant a VM is billed to: `other_config["tenant"]` if set and not empty, otherwise
/// the first tag `tenant=<name>` or `tenant:<name>`, otherwise none.
pub fn tenant_of<'a>(
    tags: impl IntoIterator<Item = &'a str>,
    other_config: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    if let Some((_, v)) = other_config
        .into_iter()
        .find(|(k, v)| *k == "tenant" && !v.is_empty())
    {
        return Some(String::from(v));
    }
    tags.into_iter().find_map(|tag| {
        tag.strip_prefix("tenant=")
            .or_else(|| tag.strip_prefix("tenant:"))
            .filter(|t| !t.is_empty())
            .map(String::from)
    })
}

/// The counters of a VM's domain at its last recorded sample, so the next delta continues
/// from them (also after the metering restarts while the domain lives on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    pub instance: u64,
    pub vcpu_ns: Vec<u64>,
    /// (device, read bytes, write bytes)
    pub vbds: Vec<(String, u64, u64)>,
    /// (index, rx bytes, tx bytes)
    pub vifs: Vec<(u32, u64, u64)>,
}

impl Baseline {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.instance);
        w.len(self.vcpu_ns.len());
        for v in &self.vcpu_ns {
            w.u64(*v);
        }
        w.len(self.vbds.len());
        for (d, r, wr) in &self.vbds {
            w.text(d);
            w.u64(*r);
            w.u64(*wr);
        }
        w.len(self.vifs.len());
        for (i, rx, tx) in &self.vifs {
            w.u32(*i);
            w.u64(*rx);
            w.u64(*tx);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let instance = r.u64()?;
        let mut vcpu_ns = Vec::new();
        for _ in 0..r.len(8)? {
            vcpu_ns.push(r.u64()?);
        }
        let mut vbds = Vec::new();
        for _ in 0..r.len(20)? {
            vbds.push((r.text()?, r.u64()?, r.u64()?));
        }
        let mut vifs = Vec::new();
        for _ in 0..r.len(20)? {
            vifs.push((r.u32()?, r.u64()?, r.u64()?));
        }
        Ok(Baseline {
            instance,
            vcpu_ns,
            vbds,
            vifs,
        })
    }
}

/// A counter's growth since `before`; a counter below it restarted from zero.
fn growth(now: u64, before: Option<u64>) -> u64 {
    match before {
        Some(b) if now >= b => now - b,
        _ => now,
    }
}

/// The usage of one VM since its baseline, over `interval_ms` of wall time (the time
/// integrals use the current memory and disk sizes), and its new baseline.
pub fn delta(
    baseline: Option<&Baseline>,
    figures: &VmFigures,
    interval_ms: u64,
) -> (UsageCounters, Baseline) {
    let base = baseline.filter(|b| b.instance == figures.instance);
    let mut d = UsageCounters::default();
    for (i, now) in figures.vcpu_time_ns.iter().enumerate() {
        let before = base.and_then(|b| b.vcpu_ns.get(i).copied());
        d.vcpu_ns = d.vcpu_ns.saturating_add(growth(*now, before));
    }
    let ms = u128::from(interval_ms);
    d.memory_byte_ms = u128::from(figures.memory_actual_bytes) * ms;
    for vbd in &figures.vbds {
        let before = base.and_then(|b| b.vbds.iter().find(|(dev, _, _)| *dev == vbd.device));
        d.disk_read_bytes = d
            .disk_read_bytes
            .saturating_add(growth(vbd.read_bytes, before.map(|b| b.1)));
        d.disk_write_bytes = d
            .disk_write_bytes
            .saturating_add(growth(vbd.write_bytes, before.map(|b| b.2)));
        d.disk_provisioned_byte_ms = d
            .disk_provisioned_byte_ms
            .saturating_add(u128::from(vbd.provisioned_bytes) * ms);
        d.disk_used_byte_ms = d
            .disk_used_byte_ms
            .saturating_add(u128::from(vbd.used_bytes) * ms);
    }
    for vif in &figures.vifs {
        let before = base.and_then(|b| b.vifs.iter().find(|(i, _, _)| *i == vif.index));
        d.net_rx_bytes = d
            .net_rx_bytes
            .saturating_add(growth(vif.rx_bytes, before.map(|b| b.1)));
        d.net_tx_bytes = d
            .net_tx_bytes
            .saturating_add(growth(vif.tx_bytes, before.map(|b| b.2)));
    }
    let next = Baseline {
        instance: figures.instance,
        vcpu_ns: figures.vcpu_time_ns.clone(),
        vbds: figures
            .vbds
            .iter()
            .map(|v| {
                (
                    String::from(crate::codec::clip(&v.device)),
                    v.read_bytes,
                    v.write_bytes,
                )
            })
            .collect(),
        vifs: figures
            .vifs
            .iter()
            .map(|v| (v.index, v.rx_bytes, v.tx_bytes))
            .collect(),
    };
    (d, next)
}

/// One change to the ledger, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Identity {
        uuid: String,
        identity: VmIdentity,
    },
    Usage {
        uuid: String,
        /// Hours since the epoch (the hour the sample ended in).
        hour: u64,
        delta: UsageCounters,
        baseline: Baseline,
    },
    Destroyed {
        uuid: String,
    },
    /// Rows of hours [from, to) were exported.
    Exported {
        from_hour: u64,
        to_hour: u64,
    },
    /// Exported rows of hours [from, to) were acknowledged and may go.
    Acked {
        from_hour: u64,
        to_hour: u64,
    },
}

const TAG_IDENTITY: u8 = 1;
const TAG_USAGE: u8 = 2;
const TAG_DESTROYED: u8 = 3;
const TAG_EXPORTED: u8 = 4;
const TAG_ACKED: u8 = 5;

impl Entry {
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Entry::Identity { uuid, identity } => {
                w.u8(TAG_IDENTITY);
                w.text(uuid);
                identity.encode(w);
            }
            Entry::Usage {
                uuid,
                hour,
                delta,
                baseline,
            } => {
                w.u8(TAG_USAGE);
                w.text(uuid);
                w.u64(*hour);
                delta.encode(w);
                baseline.encode(w);
            }
            Entry::Destroyed { uuid } => {
                w.u8(TAG_DESTROYED);
                w.text(uuid);
            }
            Entry::Exported { from_hour, to_hour } => {
                w.u8(TAG_EXPORTED);
                w.u64(*from_hour);
                w.u64(*to_hour);
            }
            Entry::Acked { from_hour, to_hour } => {
                w.u8(TAG_ACKED);
                w.u64(*from_hour);
                w.u64(*to_hour);
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            TAG_IDENTITY => Entry::Identity {
                uuid: r.text()?,
                identity: VmIdentity::decode(r)?,
            },
            TAG_USAGE => Entry::Usage {
                uuid: r.text()?,
                hour: r.u64()?,
                delta: UsageCounters::decode(r)?,
                baseline: Baseline::decode(r)?,
            },
            TAG_DESTROYED => Entry::Destroyed { uuid: r.text()? },
            TAG_EXPORTED => Entry::Exported {
                from_hour: r.u64()?,
                to_hour: r.u64()?,
            },
            TAG_ACKED => Entry::Acked {
                from_hour: r.u64()?,
                to_hour: r.u64()?,
            },
            t => return Err(DecodeError::BadTag(t)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VmRecord {
    pub identity: VmIdentity,
    pub destroyed: bool,
    pub baseline: Option<Baseline>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowState {
    pub counters: UsageCounters,
    /// Exported, and unchanged since.
    pub exported: bool,
}

/// The whole usage state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub(crate) vms: BTreeMap<String, VmRecord>,
    /// (hour, VM uuid) → row.
    pub(crate) rows: BTreeMap<(u64, String), RowState>,
}

impl Ledger {
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn baseline(&self, uuid: &str) -> Option<&Baseline> {
        self.vms.get(uuid).and_then(|v| v.baseline.as_ref())
    }

    pub(crate) fn identity(&self, uuid: &str) -> Option<&VmIdentity> {
        self.vms.get(uuid).map(|v| &v.identity)
    }

    pub(crate) fn has_row(&self, hour: u64, uuid: &str) -> bool {
        self.rows.contains_key(&(hour, String::from(uuid)))
    }

    pub(crate) fn rows_in(
        &self,
        from_hour: u64,
        to_hour: u64,
    ) -> impl Iterator<Item = (&(u64, String), &RowState)> {
        let start = (from_hour, String::new());
        self.rows
            .range(start..)
            .take_while(move |((hour, _), _)| *hour < to_hour)
    }

    pub fn apply(&mut self, entry: &Entry) {
        match entry {
            Entry::Identity { uuid, identity } => {
                let record = self.vms.entry(uuid.clone()).or_insert_with(|| VmRecord {
                    identity: VmIdentity::default(),
                    destroyed: false,
                    baseline: None,
                });
                record.identity = identity.clone();
                record.destroyed = false;
            }
            Entry::Usage {
                uuid,
                hour,
                delta,
                baseline,
            } => {
                let record = self.vms.entry(uuid.clone()).or_insert_with(|| VmRecord {
                    identity: VmIdentity::default(),
                    destroyed: false,
                    baseline: None,
                });
                record.baseline = Some(baseline.clone());
                if !delta.is_zero() || !self.rows.contains_key(&(*hour, uuid.clone())) {
                    let row = self.rows.entry((*hour, uuid.clone())).or_insert(RowState {
                        counters: UsageCounters::default(),
                        exported: false,
                    });
                    row.counters.add(delta);
                    if !delta.is_zero() {
                        row.exported = false;
                    }
                }
            }
            Entry::Destroyed { uuid } => {
                if let Some(record) = self.vms.get_mut(uuid) {
                    record.destroyed = true;
                    record.baseline = None;
                }
                self.drop_forgotten();
            }
            Entry::Exported { from_hour, to_hour } => {
                let keys: Vec<(u64, String)> = self
                    .rows_in(*from_hour, *to_hour)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    if let Some(row) = self.rows.get_mut(&key) {
                        row.exported = true;
                    }
                }
            }
            Entry::Acked { from_hour, to_hour } => {
                let keys: Vec<(u64, String)> = self
                    .rows_in(*from_hour, *to_hour)
                    .filter(|(_, row)| row.exported)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    self.rows.remove(&key);
                }
                self.drop_forgotten();
            }
        }
    }

    /// Destroyed VMs with no row left are forgotten.
    fn drop_forgotten(&mut self) {
        let billed: alloc::collections::BTreeSet<&String> =
            self.rows.keys().map(|(_, uuid)| uuid).collect();
        let gone: Vec<String> = self
            .vms
            .iter()
            .filter(|(uuid, record)| record.destroyed && !billed.contains(uuid))
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in gone {
            self.vms.remove(&uuid);
        }
    }

    pub fn encode(&self, w: &mut Writer) {
        w.len(self.vms.len());
        for (uuid, record) in &self.vms {
            w.text(uuid);
            record.identity.encode(w);
            w.bool(record.destroyed);
            match &record.baseline {
                Some(b) => {
                    w.bool(true);
                    b.encode(w);
                }
                None => w.bool(false),
            }
        }
        w.len(self.rows.len());
        for ((hour, uuid), row) in &self.rows {
            w.u64(*hour);
            w.text(uuid);
            row.counters.encode(w);
            w.bool(row.exported);
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut ledger = Ledger::default();
        for _ in 0..r.len(12)? {
            let uuid = r.text()?;
            let identity = VmIdentity::decode(r)?;
            let destroyed = r.bool()?;
            let baseline = if r.bool()? {
                Some(Baseline::decode(r)?)
            } else {
                None
            };
            ledger.vms.insert(
                uuid,
                VmRecord {
                    identity,
                    destroyed,
                    baseline,
                },
            );
        }
        for _ in 0..r.len(100)? {
            let hour = r.u64()?;
            let uuid = r.text()?;
            let counters = UsageCounters::decode(r)?;
            let exported = r.bool()?;
            ledger
                .rows
                .insert((hour, uuid), RowState { counters, exported });
        }
        Ok(ledger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::{VbdFigures, VifFigures};
    use alloc::vec;

    fn figures(instance: u64, cpu: u64, read: u64, rx: u64) -> VmFigures {
        VmFigures {
            uuid: String::from("u"),
            instance,
            vcpu_time_ns: vec![cpu],
            memory_actual_bytes: 1 << 30,
            memory_target_bytes: 1 << 30,
            vbds: vec![VbdFigures {
                device: String::from("xvda"),
                read_bytes: read,
                provisioned_bytes: 10 << 30,
                used_bytes: 1 << 30,
                ..VbdFigures::default()
            }],
            vifs: vec![VifFigures {
                index: 0,
                rx_bytes: rx,
                ..VifFigures::default()
            }],
        }
    }

    #[test]
    fn delta_continues_from_the_baseline_and_restarts_with_the_domain() {
        let (first, base) = delta(None, &figures(1, 100, 10, 5), 0);
        assert_eq!(first.vcpu_ns, 100, "a new domain's counters are all usage");
        assert_eq!(first.memory_byte_ms, 0);
        let (second, base) = delta(Some(&base), &figures(1, 150, 30, 9), 5000);
        assert_eq!(second.vcpu_ns, 50);
        assert_eq!(second.disk_read_bytes, 20);
        assert_eq!(second.net_rx_bytes, 4);
        assert_eq!(second.memory_byte_ms, (1u128 << 30) * 5000);
        assert_eq!(second.disk_provisioned_byte_ms, (10u128 << 30) * 5000);
        // Same counters but a new domain: counted from zero.
        let (third, _) = delta(Some(&base), &figures(2, 400, 30, 9), 5000);
        assert_eq!(third.vcpu_ns, 400);
        assert_eq!(third.disk_read_bytes, 30);
    }

    #[test]
    fn tenants() {
        assert_eq!(
            tenant_of(["tenant=acme"], [("tenant", "globex")]),
            Some(String::from("globex"))
        );
        assert_eq!(
            tenant_of(["web", "tenant:acme"], [("tenant", "")]),
            Some(String::from("acme"))
        );
        assert_eq!(tenant_of(["web"], []), None);
    }

    #[test]
    fn entries_and_snapshots_round_trip() {
        let mut ledger = Ledger::default();
        let (d, b) = delta(None, &figures(1, 100, 10, 5), 5000);
        let entries = [
            Entry::Identity {
                uuid: String::from("u"),
                identity: VmIdentity {
                    name: String::from("web"),
                    tags: vec![String::from("tenant=acme")],
                    tenant: Some(String::from("acme")),
                },
            },
            Entry::Usage {
                uuid: String::from("u"),
                hour: 7,
                delta: d,
                baseline: b,
            },
            Entry::Exported {
                from_hour: 0,
                to_hour: 8,
            },
        ];
        for e in &entries {
            let mut w = Writer::default();
            e.encode(&mut w);
            let back = Entry::decode(&mut Reader::new(&w.bytes)).unwrap();
            assert_eq!(&back, e);
            ledger.apply(e);
        }
        let mut w = Writer::default();
        ledger.encode(&mut w);
        let back = Ledger::decode(&mut Reader::new(&w.bytes)).unwrap();
        assert_eq!(back, ledger);
        assert!(ledger.rows_in(7, 8).all(|(_, row)| row.exported));
    }

    #[test]
    fn destroyed_vm_stays_until_its_rows_are_acked() {
        let mut ledger = Ledger::default();
        let (d, b) = delta(None, &figures(1, 100, 10, 5), 5000);
        let uuid = String::from("u");
        ledger.apply(&Entry::Usage {
            uuid: uuid.clone(),
            hour: 3,
            delta: d,
            baseline: b,
        });
        ledger.apply(&Entry::Destroyed { uuid: uuid.clone() });
        assert!(ledger.identity("u").is_some());
        // Acknowledging what was never exported removes nothing.
        ledger.apply(&Entry::Acked {
            from_hour: 0,
            to_hour: 10,
        });
        assert_eq!(ledger.row_count(), 1);
        ledger.apply(&Entry::Exported {
            from_hour: 0,
            to_hour: 10,
        });
        ledger.apply(&Entry::Acked {
            from_hour: 0,
            to_hour: 10,
        });
        assert_eq!(ledger.row_count(), 0);
        assert!(ledger.identity("u").is_none());
    }

    #[test]
    fn usage_after_export_unmarks_the_row() {
        let mut ledger = Ledger::default();
        let uuid = String::from("u");
        let (d, b) = delta(None, &figures(1, 100, 10, 5), 5000);
        ledger.apply(&Entry::Usage {
            uuid: uuid.clone(),
            hour: 3,
            delta: d,
            baseline: b.clone(),
        });
        ledger.apply(&Entry::Exported {
            from_hour: 3,
            to_hour: 4,
        });
        ledger.apply(&Entry::Usage {
            uuid,
            hour: 3,
            delta: d,
            baseline: b,
        });
        ledger.apply(&Entry::Acked {
            from_hour: 3,
            to_hour: 4,
        });
        assert_eq!(
            ledger.row_count(),
            1,
            "late usage is not acknowledged unseen"
        );
    }
}
