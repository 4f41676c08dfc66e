//! Performance data through the XenAPI (docs/metering.md): `host.get_data_sources`,
//! `host.query_data_source`, `host.record_data_source` and the same three on `VM`, read from
//! the host's metering through [`MeteringView`] (the kernel hands one over in
//! [`crate::Config::metering`]); and what the metering needs back from the XenAPI: which VMs
//! run as which domain, under which name, tags and tenant ([`XenApi::metered_vms`]), and
//! `VM_metrics.memory_actual` / `host_metrics` filled from the samples
//! ([`XenApi::apply_metering`]).
//!
//! Without a metering (`None`), `get_data_sources` answers an empty set and
//! `query_data_source` fails as for an unknown source, as xapi does for a host whose rrdd
//! holds nothing yet.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use keel_metering::source::DataSourceRecord;
use keel_metering::{tenant_of, Metering, VmIdentity};

use crate::api::XenApi;
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::time::Timestamp;
use crate::value::Value;

/// What the data source calls read: the latest samples of the host's and the VMs' RRDs.
/// The kernel implements it over its shared metering; tests hand a [`Metering`] itself.
pub trait MeteringView {
    /// `host.get_data_sources`.
    fn host_data_sources(&self) -> Vec<DataSourceRecord>;
    /// `VM.get_data_sources`; `None` when the VM is not metered (never ran on this host).
    fn vm_data_sources(&self, vm_uuid: &str) -> Option<Vec<DataSourceRecord>>;
    /// The latest 5 s average of a host source; `None` for an unknown source.
    fn query_host(&self, name: &str) -> Option<f64>;
    /// The latest 5 s average of a VM's source; `None` for an unknown VM or source.
    fn query_vm(&self, vm_uuid: &str, name: &str) -> Option<f64>;
}

impl MeteringView for Metering {
    fn host_data_sources(&self) -> Vec<DataSourceRecord> {
        Metering::host_data_sources(self)
    }

    fn vm_data_sources(&self, vm_uuid: &str) -> Option<Vec<DataSourceRecord>> {
        Metering::vm_data_sources(self, vm_uuid).ok()
    }

    fn query_host(&self, name: &str) -> Option<f64> {
        Metering::query_host(self, name).ok()
    }

    fn query_vm(&self, vm_uuid: &str, name: &str) -> Option<f64> {
        Metering::query_vm(self, vm_uuid, name).ok()
    }
}

/// Shared ownership, as the kernel keeps the metering beside the XenAPI.
impl<M: MeteringView> MeteringView for alloc::rc::Rc<core::cell::RefCell<M>> {
    fn host_data_sources(&self) -> Vec<DataSourceRecord> {
        self.borrow().host_data_sources()
    }

    fn vm_data_sources(&self, vm_uuid: &str) -> Option<Vec<DataSourceRecord>> {
        self.borrow().vm_data_sources(vm_uuid)
    }

    fn query_host(&self, name: &str) -> Option<f64> {
        self.borrow().query_host(name)
    }

    fn query_vm(&self, vm_uuid: &str, name: &str) -> Option<f64> {
        self.borrow().query_vm(vm_uuid, name)
    }
}

/// A metering not made yet (the kernel makes it once it knows the host's uuid): nothing
/// to show.
impl<M: MeteringView> MeteringView for Option<M> {
    fn host_data_sources(&self) -> Vec<DataSourceRecord> {
        self.as_ref()
            .map(|m| m.host_data_sources())
            .unwrap_or_default()
    }

    fn vm_data_sources(&self, vm_uuid: &str) -> Option<Vec<DataSourceRecord>> {
        self.as_ref()?.vm_data_sources(vm_uuid)
    }

    fn query_host(&self, name: &str) -> Option<f64> {
        self.as_ref()?.query_host(name)
    }

    fn query_vm(&self, vm_uuid: &str, name: &str) -> Option<f64> {
        self.as_ref()?.query_vm(vm_uuid, name)
    }
}

/// A VM with a domain on this host, as the metering samples it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredVm {
    pub uuid: String,
    pub domid: u32,
    /// `memory_target` of the VM record, in bytes.
    pub memory_target_bytes: u64,
    /// Name, tags and tenant (`other_config:tenant`, else a `tenant=`/`tenant:` tag).
    pub identity: VmIdentity,
    pub is_control_domain: bool,
}

/// xapi's `data_source` record.
fn record_value(record: &DataSourceRecord) -> Value {
    let mut fields = BTreeMap::new();
    fields.insert("name_label".into(), Value::str(&record.name_label));
    fields.insert(
        "name_description".into(),
        Value::str(&record.name_description),
    );
    fields.insert("enabled".into(), Value::Bool(record.enabled));
    fields.insert("standard".into(), Value::Bool(record.standard));
    fields.insert("units".into(), Value::str(&record.units));
    fields.insert("min".into(), Value::Float(record.min));
    fields.insert("max".into(), Value::Float(record.max));
    fields.insert("value".into(), Value::Float(record.value));
    Value::Struct(fields)
}

fn records(list: Vec<DataSourceRecord>) -> Value {
    Value::Array(list.iter().map(record_value).collect())
}

/// What xapi answers for a source its rrdd does not have (`Failure "Not_found"` surfaces as
/// an internal error naming it).
fn unknown_source(owner: &str, name: &str) -> ApiError {
    ApiError::InternalError {
        message: format!("data source {name} not found on {owner}"),
    }
}

fn vm_uuid(ctx: &CallContext<'_>, vm: &str) -> Result<String, ApiError> {
    ctx.db()
        .get(vm, "uuid")
        .and_then(|v| v.as_str().map(String::from))
        .ok_or_else(|| ApiError::handle_invalid("VM", vm))
}

pub(crate) fn host_get_data_sources(
    ctx: &mut CallContext<'_>,
    _args: &Args,
) -> Result<Outcome, ApiError> {
    let list = ctx
        .state
        .metering
        .as_deref()
        .map(|m| m.host_data_sources())
        .unwrap_or_default();
    Ok(Outcome::Value(records(list)))
}

fn query_host(ctx: &CallContext<'_>, host: &str, name: &str) -> Result<f64, ApiError> {
    ctx.state
        .metering
        .as_deref()
        .and_then(|m| m.query_host(name))
        .ok_or_else(|| unknown_source(host, name))
}

pub(crate) fn host_query_data_source(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let value = query_host(ctx, args.str(0)?, args.str(1)?)?;
    Ok(Outcome::Value(Value::Float(value)))
}

/// Every source Keel has is recorded all the time (`enabled`): recording one that exists
/// is already done; one that does not is refused.
pub(crate) fn host_record_data_source(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    query_host(ctx, args.str(0)?, args.str(1)?)?;
    Ok(Outcome::Value(Value::Nil))
}

pub(crate) fn vm_get_data_sources(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let uuid = vm_uuid(ctx, args.str(0)?)?;
    let list = ctx
        .state
        .metering
        .as_deref()
        .and_then(|m| m.vm_data_sources(&uuid))
        .unwrap_or_default();
    Ok(Outcome::Value(records(list)))
}

fn query_vm(ctx: &CallContext<'_>, vm: &str, name: &str) -> Result<f64, ApiError> {
    let uuid = vm_uuid(ctx, vm)?;
    ctx.state
        .metering
        .as_deref()
        .and_then(|m| m.query_vm(&uuid, name))
        .ok_or_else(|| unknown_source(vm, name))
}

pub(crate) fn vm_query_data_source(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let value = query_vm(ctx, args.str(0)?, args.str(1)?)?;
    Ok(Outcome::Value(Value::Float(value)))
}

pub(crate) fn vm_record_data_source(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    query_vm(ctx, args.str(0)?, args.str(1)?)?;
    Ok(Outcome::Value(Value::Nil))
}

fn string_list(value: Option<Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

fn string_map(value: Option<Value>) -> Vec<(String, String)> {
    match value {
        Some(Value::Struct(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, String::from(v))))
            .collect(),
        _ => Vec::new(),
    }
}

impl XenApi {
    /// Whether `session_id` is a live session: the check the HTTP handlers beside the API
    /// (`/rrd_updates`, `/usage`) make, as xapi checks theirs.
    pub fn session_is_valid(&self, session_id: &str) -> bool {
        self.state.db.is_a(session_id, "session")
    }

    /// Hands the service the host's metering (when it is made after the service).
    pub fn set_metering(&mut self, metering: Box<dyn MeteringView>) {
        self.state.metering = Some(metering);
    }

    /// This host's uuid (the metering's legends name it).
    pub fn host_uuid(&self) -> String {
        self.state
            .db
            .get(&self.state.host, "uuid")
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    }

    /// The VMs that have a domain on this host (the control domain included), with what the
    /// bill shows of them.
    pub fn metered_vms(&self) -> Vec<MeteredVm> {
        let db = &self.state.db;
        let mut out = Vec::new();
        for vm in db.refs("VM") {
            let Some(domid) = db
                .get(&vm, "domid")
                .and_then(|v| v.as_int())
                .and_then(|d| u32::try_from(d).ok())
            else {
                continue;
            };
            let Some(uuid) = db
                .get(&vm, "uuid")
                .and_then(|v| v.as_str().map(String::from))
            else {
                continue;
            };
            let is_control_domain =
                db.get(&vm, "is_control_domain").and_then(|v| v.as_bool()) == Some(true);
            // A halted VM keeps its domid field at -1; the control domain is always 0.
            if domid == 0 && !is_control_domain {
                continue;
            }
            let tags = string_list(db.get(&vm, "tags"));
            let other_config = string_map(db.get(&vm, "other_config"));
            let tenant = tenant_of(
                tags.iter().map(String::as_str),
                other_config.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let name = db
                .get(&vm, "name_label")
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let memory_target_bytes = db
                .get(&vm, "memory_target")
                .and_then(|v| v.as_int())
                .and_then(|m| u64::try_from(m).ok())
                .unwrap_or(0);
            out.push(MeteredVm {
                uuid,
                domid,
                memory_target_bytes,
                identity: VmIdentity { name, tags, tenant },
                is_control_domain,
            });
        }
        out
    }

    /// The uuids of every VM this host knows (running or not): a metered uuid missing from
    /// it belongs to a destroyed VM.
    pub fn vm_uuids(&self) -> Vec<String> {
        let db = &self.state.db;
        db.refs("VM")
            .iter()
            .filter_map(|vm| {
                db.get(vm, "uuid")
                    .and_then(|v| v.as_str().map(String::from))
            })
            .collect()
    }

    /// Fills `VM_metrics.memory_actual` of the running VMs, the `VBD_metrics` and
    /// `VIF_metrics` rates of their attached devices, and `host_metrics.memory_total` and
    /// `memory_free` from the latest samples (docs/metering.md, "Data sources"). A field
    /// is only written when its value changed, so steady figures make no events (and, for
    /// the kept `VM_metrics`, no host database save).
    pub fn apply_metering(&mut self, now: Timestamp) {
        let Some(view) = self.state.metering.as_deref() else {
            return;
        };
        let mut updates: Vec<(String, Vec<(&'static str, Value)>)> = Vec::new();
        // Under Xen `memory_free` is Xen's figure at the moment (read when guests start and
        // stop, and here), not a 5-second sample that may predate the last `VM.start`.
        let live_free = self.state.guests.as_deref().map(|g| g.free_memory());
        let host_fields: Vec<(&'static str, Value)> = [
            ("memory_total", "memory_total_kib"),
            ("memory_free", "memory_free_kib"),
        ]
        .into_iter()
        .filter(|(field, _)| live_free.is_none() || *field != "memory_free")
        .filter_map(|(field, source)| {
            let kib = view.query_host(source)?;
            (kib.is_finite() && kib >= 0.0).then_some((field, Value::Int((kib * 1024.0) as i64)))
        })
        .collect();
        let mut host_fields = host_fields;
        if let Some(free) = live_free {
            host_fields.push(("memory_free", Value::Int(clamp_free(free))));
        }
        if !host_fields.is_empty() {
            updates.push((self.state.host_metrics.clone(), host_fields));
        }
        let db = &self.state.db;
        // The control domain's `memory` is Keel's heap in use, which moves all the time;
        // its VM_metrics (a kept class: every change is a host database save) keep the
        // figure the control domain was made with.
        for vm in self
            .metered_vms()
            .into_iter()
            .filter(|vm| !vm.is_control_domain)
        {
            let Some(bytes) = view.query_vm(&vm.uuid, "memory") else {
                continue;
            };
            if !bytes.is_finite() || bytes < 0.0 {
                continue;
            }
            let Some(vm_ref) = db.find_by_uuid("VM", &vm.uuid) else {
                continue;
            };
            let Some(metrics) = db
                .get(&vm_ref, "metrics")
                .and_then(|v| v.as_str().map(String::from))
                .filter(|m| db.is_a(m, "VM_metrics"))
            else {
                continue;
            };
            updates.push((
                metrics,
                alloc::vec![("memory_actual", Value::Int(bytes as i64))],
            ));
            device_rates(db, view, &vm.uuid, &vm_ref, &mut updates);
        }
        for (reference, fields) in updates {
            // Unchanged fields, or an object gone between listing and updating: nothing
            // to stamp.
            if let Ok(true) = self.state.db.update(&reference, fields, now) {
                let stamp = Value::DateTime(now.to_xapi_datetime());
                let _ = self
                    .state
                    .db
                    .set(&reference, alloc::vec![("last_updated", stamp)], now);
            }
        }
    }
}

/// `VBD_metrics` and `VIF_metrics` of `vm`'s attached devices: `io_read_kbs` /
/// `io_write_kbs` are the latest 5 s averages of `vbd_<device>_read` / `_write` and
/// `vif_<device>_rx` / `_tx` (received by the guest / sent by it), in KiB/s. A device the
/// metering has no known figure for yet is left as it is.
fn device_rates(
    db: &crate::store::Db,
    view: &dyn MeteringView,
    vm_uuid: &str,
    vm_ref: &str,
    updates: &mut Vec<(String, Vec<(&'static str, Value)>)>,
) {
    let kinds = [
        ("VBDs", "VBD_metrics", "vbd", "read", "write"),
        ("VIFs", "VIF_metrics", "vif", "rx", "tx"),
    ];
    for (field, class, prefix, read, write) in kinds {
        for device in string_list(db.get(vm_ref, field)) {
            let attached = db
                .get(&device, "currently_attached")
                .and_then(|v| v.as_bool());
            let name = db
                .get(&device, "device")
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let Some(metrics) = db
                .get(&device, "metrics")
                .and_then(|v| v.as_str().map(String::from))
                .filter(|m| db.is_a(m, class))
            else {
                continue;
            };
            if attached != Some(true) || name.is_empty() {
                continue;
            }
            let kbs = |direction: &str| {
                let rate = view.query_vm(vm_uuid, &format!("{prefix}_{name}_{direction}"))?;
                (rate.is_finite() && rate >= 0.0).then(|| Value::Float(rate / 1024.0))
            };
            if let (Some(read_kbs), Some(write_kbs)) = (kbs(read), kbs(write)) {
                updates.push((
                    metrics,
                    alloc::vec![("io_read_kbs", read_kbs), ("io_write_kbs", write_kbs)],
                ));
            }
        }
    }
}

fn clamp_free(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
