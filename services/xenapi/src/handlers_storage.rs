//! Handlers of the storage classes (SR, PBD, VDI) and the mirroring of the storage
//! manager's SRs and VDIs into XenAPI objects.
//!
//! The storage manager is the truth: every operation goes to it first, and the objects are
//! updated from what it answers. `SR.scan` re-reads everything (and forgets VDI objects whose
//! VDI is gone). The storage manager keeps a VDI's name (as `storage_name` shapes it);
//! what it does not keep — descriptions, `other_config` — lives in the objects only and does
//! not survive a reboot.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::api::State;
use crate::classes_storage::{PBD, SR, SR_TYPE, VDI, VDI_TYPES};
use crate::dispatch::{coerce, Args, CallContext, Job, JobStep, Outcome};
use crate::error::ApiError;
use crate::schema::FieldType;
use crate::storage::{SrFacts, StorageBackend, StorageError, VdiFacts};
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

/// Name the storage manager keeps for a VDI created with an empty `name_label`.
const UNNAMED: &str = "vdi";
/// Longest name the storage manager keeps.
const MAX_NAME: usize = 255;
/// Cross-SR copies move this much per read and write...
const COPY_CHUNK: usize = 1 << 20;
/// ...and this many chunks per job step, so other work interleaves.
const COPY_CHUNKS_PER_STEP: usize = 4;

const SR_ALLOWED: &[&str] = &[
    "scan",
    "update",
    "vdi_create",
    "vdi_destroy",
    "vdi_resize",
    "vdi_clone",
    "vdi_snapshot",
    "vdi_copy",
];
const VDI_ALLOWED: &[&str] = &["clone", "copy", "destroy", "resize", "snapshot"];
const SNAPSHOT_ALLOWED: &[&str] = &["clone", "copy", "destroy", "snapshot"];

fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn no_storage() -> ApiError {
    ApiError::InternalError {
        message: "this host has no storage".to_string(),
    }
}

pub(crate) fn backend(state: &mut State) -> Result<&mut dyn StorageBackend, ApiError> {
    match state.storage.as_deref_mut() {
        Some(storage) => Ok(storage),
        None => Err(no_storage()),
    }
}

fn text(db: &Db, r: &str, field: &str) -> String {
    db.get(r, field)
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// A name the storage manager accepts: the label cut to 255 bytes, or a placeholder.
fn storage_name(label: &str) -> String {
    if label.is_empty() {
        return UNNAMED.to_string();
    }
    let mut end = label.len().min(MAX_NAME);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    label.get(..end).unwrap_or(UNNAMED).to_string()
}

/// Writes only the fields whose value changed (one `mod` event, or none).
fn update(db: &mut Db, r: &str, changes: Vec<(&'static str, Value)>, now: Timestamp) {
    let changed: Vec<_> = changes
        .into_iter()
        .filter(|(k, v)| db.get(r, k).as_ref() != Some(v))
        .collect();
    if !changed.is_empty() {
        let _ = db.set(r, changed, now);
    }
}

// ---------------------------------------------------------------------------------------
// Mirroring

/// Creates or refreshes every SR (with its PBD) and VDI object from the storage manager.
pub(crate) fn sync_all(state: &mut State, now: Timestamp) {
    let Some(storage) = state.storage.as_deref() else {
        return;
    };
    for facts in storage.srs() {
        let sr = put_sr(&mut state.db, &state.host, &facts, now);
        if let Ok(vdis) = storage.vdis(&facts.uuid) {
            sync_vdis(&mut state.db, &sr, &vdis, now);
        }
    }
}

fn sr_fields(facts: &SrFacts) -> Vec<(&'static str, Value)> {
    vec![
        ("physical_size", int(facts.physical_size)),
        ("physical_utilisation", int(facts.physical_utilisation)),
        ("virtual_allocation", int(facts.virtual_allocation)),
    ]
}

fn put_sr(db: &mut Db, host: &str, facts: &SrFacts, now: Timestamp) -> String {
    if let Some(sr) = db.find_by_uuid("SR", &facts.uuid) {
        update(db, &sr, sr_fields(facts), now);
        return sr;
    }
    let mut fields = sr_fields(facts);
    fields.extend([
        ("uuid", Value::String(facts.uuid.clone())),
        (
            "name_label",
            Value::String(format!("Local storage on {}", facts.device)),
        ),
        (
            "name_description",
            Value::String(format!("Keel SR on {} disk {}", facts.bus, facts.device)),
        ),
        ("type", Value::str(SR_TYPE)),
        ("content_type", Value::str("user")),
        (
            "allowed_operations",
            Value::string_array(SR_ALLOWED.iter().copied()),
        ),
        (
            "sm_config",
            Value::string_map([("device", facts.device.as_str())]),
        ),
    ]);
    let sr = db.create(&SR, fields, now);
    db.create(
        &PBD,
        vec![
            ("host", Value::str(host)),
            ("SR", Value::String(sr.clone())),
            (
                "device_config",
                Value::string_map([
                    ("device", facts.device.as_str()),
                    ("bus", facts.bus.as_str()),
                ]),
            ),
            ("currently_attached", Value::Bool(true)),
        ],
        now,
    );
    sr
}

fn vdi_fields(facts: &VdiFacts) -> Vec<(&'static str, Value)> {
    let allowed = if facts.read_only {
        SNAPSHOT_ALLOWED
    } else {
        VDI_ALLOWED
    };
    vec![
        ("virtual_size", int(facts.virtual_size)),
        ("physical_utilisation", int(facts.physical_utilisation)),
        ("read_only", Value::Bool(facts.read_only)),
        ("is_a_snapshot", Value::Bool(facts.is_snapshot)),
        (
            "allowed_operations",
            Value::string_array(allowed.iter().copied()),
        ),
    ]
}

/// Creates the object of a VDI (with `initial` fields) or refreshes an existing one.
fn put_vdi(
    db: &mut Db,
    sr: &str,
    facts: &VdiFacts,
    initial: Vec<(&'static str, Value)>,
    now: Timestamp,
) -> String {
    if let Some(vdi) = db.find_by_uuid("VDI", &facts.uuid) {
        update(db, &vdi, vdi_fields(facts), now);
        return vdi;
    }
    let mut fields = vdi_fields(facts);
    fields.extend([
        ("uuid", Value::String(facts.uuid.clone())),
        ("name_label", Value::String(facts.name.clone())),
        ("SR", Value::str(sr)),
        ("type", Value::str("user")),
        ("location", Value::String(facts.uuid.clone())),
        ("managed", Value::Bool(true)),
        ("on_boot", Value::str("persist")),
    ]);
    // Later entries win: `initial` overrides the defaults above.
    let mut merged: BTreeMap<&'static str, Value> = BTreeMap::new();
    for (k, v) in fields.into_iter().chain(initial) {
        merged.insert(k, v);
    }
    db.create(&VDI, merged.into_iter().collect(), now)
}

/// Points `snapshot_of` and `parent` at the objects of the VDIs they name.
fn link_vdi(db: &mut Db, vdi: &str, facts: &VdiFacts, now: Timestamp) {
    let by_uuid = |db: &Db, uuid: &Option<String>| {
        uuid.as_ref()
            .and_then(|u| db.find_by_uuid("VDI", u))
            .unwrap_or_else(|| NULL_REF.to_string())
    };
    let snapshot_of = by_uuid(db, &facts.snapshot_of);
    let parent = by_uuid(db, &facts.parent);
    update(
        db,
        vdi,
        vec![
            ("snapshot_of", Value::String(snapshot_of)),
            ("parent", Value::String(parent)),
        ],
        now,
    );
}

/// Mirrors the VDIs of one SR; objects of VDIs that no longer exist are destroyed.
fn sync_vdis(db: &mut Db, sr: &str, vdis: &[VdiFacts], now: Timestamp) {
    let refs: Vec<String> = vdis
        .iter()
        .map(|facts| put_vdi(db, sr, facts, Vec::new(), now))
        .collect();
    for (vdi, facts) in refs.iter().zip(vdis) {
        link_vdi(db, vdi, facts, now);
    }
    for stale in db.refs("VDI") {
        let in_sr = db.get(&stale, "SR").as_ref().and_then(Value::as_str) == Some(sr);
        if in_sr && !refs.contains(&stale) {
            let _ = db.destroy(&stale, now);
        }
    }
}

/// Refreshes an SR's sizes from the storage manager.
fn refresh_sr(state: &mut State, sr: &str, now: Timestamp) {
    let uuid = text(&state.db, sr, "uuid");
    let Some(storage) = state.storage.as_deref() else {
        return;
    };
    if let Some(facts) = storage.srs().into_iter().find(|f| f.uuid == uuid) {
        update(&mut state.db, sr, sr_fields(&facts), now);
    }
}

/// Refreshes one VDI's sizes from the storage manager.
pub(crate) fn refresh_vdi(state: &mut State, vdi: &str, now: Timestamp) {
    let Ok((sr, sr_uuid, vdi_uuid)) = locate(&state.db, vdi) else {
        return;
    };
    if let Some(storage) = state.storage.as_deref() {
        if let Ok(vdis) = storage.vdis(&sr_uuid) {
            if let Some(facts) = vdis.iter().find(|f| f.uuid == vdi_uuid) {
                update(&mut state.db, vdi, vdi_fields(facts), now);
            }
        }
    }
    refresh_sr(state, &sr, now);
}

/// (SR ref, SR uuid, VDI uuid) of a VDI object.
pub(crate) fn locate(db: &Db, vdi: &str) -> Result<(String, String, String), ApiError> {
    db.expect("VDI", vdi)?;
    let sr = text(db, vdi, "SR");
    if !db.is_a(&sr, "SR") {
        return Err(ApiError::handle_invalid("SR", &sr));
    }
    Ok((sr.clone(), text(db, &sr, "uuid"), text(db, vdi, "uuid")))
}

/// Free bytes of an SR (for `SR_FULL`).
fn free_bytes(db: &Db, sr: &str) -> u64 {
    let get = |f| db.get(sr, f).and_then(|v| v.as_int()).unwrap_or(0).max(0) as u64;
    get("physical_size").saturating_sub(get("physical_utilisation"))
}

/// The operation holding a VDI busy, if any.
pub(crate) fn busy_with(db: &Db, vdi: &str) -> Option<String> {
    match db.get(vdi, "current_operations") {
        Some(Value::Struct(ops)) => ops.values().find_map(|v| v.as_str().map(String::from)),
        _ => None,
    }
}

/// `VDI_IN_USE [vdi, operation]` while a transfer or copy runs on the VDI.
pub(crate) fn ensure_idle(db: &Db, vdi: &str, operation: &str) -> Result<(), ApiError> {
    match busy_with(db, vdi) {
        Some(_) => Err(ApiError::VdiInUse {
            vdi: vdi.to_string(),
            operation: operation.to_string(),
        }),
        None => Ok(()),
    }
}

/// Marks a VDI busy with `operation` under `key` (a task reference), or clears the mark.
pub(crate) fn mark_busy(
    db: &mut Db,
    vdi: &str,
    key: &str,
    operation: Option<&str>,
    now: Timestamp,
) {
    let mut ops = match db.get(vdi, "current_operations") {
        Some(Value::Struct(ops)) => ops,
        _ => BTreeMap::new(),
    };
    match operation {
        Some(op) => {
            ops.insert(key.to_string(), Value::str(op));
        }
        None => {
            if ops.remove(key).is_none() {
                return;
            }
        }
    }
    let _ = db.set(vdi, vec![("current_operations", Value::Struct(ops))], now);
}

fn storage_error(db: &Db, sr: &str, vdi: &str, e: &StorageError) -> ApiError {
    e.to_api_error(vdi, free_bytes(db, sr))
}

// ---------------------------------------------------------------------------------------
// SR and PBD

/// `SR.scan(sr)` and `SR.update(sr)`: re-read the SR's sizes and VDIs.
pub fn sr_scan(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let sr = args.str(0)?.to_string();
    let uuid = text(&ctx.state.db, &sr, "uuid");
    let now = ctx.now;
    let state = &mut *ctx.state;
    let storage = state.storage.as_deref().ok_or_else(no_storage)?;
    let vdis = storage.vdis(&uuid).map_err(|e| e.to_api_error("", 0))?;
    sync_vdis(&mut state.db, &sr, &vdis, now);
    refresh_sr(state, &sr, now);
    Ok(Outcome::Value(Value::void()))
}

/// `SR.get_supported_types()`.
pub fn sr_get_supported_types(_: &mut CallContext<'_>, _: &Args) -> Result<Outcome, ApiError> {
    Ok(Outcome::Value(Value::string_array([SR_TYPE])))
}

/// `PBD.plug`: Keel's PBDs are always plugged.
pub fn pbd_plug(_: &mut CallContext<'_>, _: &Args) -> Result<Outcome, ApiError> {
    Ok(Outcome::Value(Value::void()))
}

/// `PBD.unplug`: local SRs stay attached while Keel runs.
pub fn pbd_unplug(_: &mut CallContext<'_>, _: &Args) -> Result<Outcome, ApiError> {
    Err(ApiError::OperationNotAllowed {
        reason: "Keel keeps its local SRs plugged".to_string(),
    })
}

// ---------------------------------------------------------------------------------------
// VDI

/// A record field of `VDI.create`'s argument, checked against its declared type.
fn record_field(
    record: &BTreeMap<String, Value>,
    name: &str,
    ty: &FieldType,
) -> Result<Option<Value>, ApiError> {
    match record.get(name) {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => coerce(ty, v.clone(), name).map(Some),
    }
}

/// `VDI.create(args)`: `args` is a VDI record; `SR` and `virtual_size` are required.
pub fn vdi_create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let record = args
        .value(0)
        .as_struct()
        .ok_or_else(|| ApiError::field_type("args"))?;
    let sr = match record_field(record, "SR", &FieldType::Ref("SR"))? {
        Some(Value::String(r)) => r,
        _ => return Err(ApiError::field_type("SR")),
    };
    ctx.state.db.expect("SR", &sr)?;
    let size = match record_field(record, "virtual_size", &FieldType::Int)? {
        Some(Value::Int(size)) => size,
        _ => return Err(ApiError::field_type("virtual_size")),
    };
    let size = u64::try_from(size).map_err(|_| ApiError::ValueNotSupported {
        field: "virtual_size".to_string(),
        value: size.to_string(),
        reason: "must not be negative".to_string(),
    })?;
    if let Some(Value::Bool(true)) = record_field(record, "read_only", &FieldType::Bool)? {
        return Err(ApiError::ValueNotSupported {
            field: "read_only".to_string(),
            value: "true".to_string(),
            reason: "read-only VDIs are made with VDI.snapshot".to_string(),
        });
    }
    let label = match record_field(record, "name_label", &FieldType::String)? {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let mut initial: Vec<(&'static str, Value)> =
        vec![("name_label", Value::String(label.clone()))];
    let optional: [(&'static str, FieldType); 7] = [
        ("name_description", FieldType::String),
        ("type", FieldType::Enum(VDI_TYPES)),
        ("sharable", FieldType::Bool),
        (
            "other_config",
            FieldType::Map(&FieldType::String, &FieldType::String),
        ),
        (
            "sm_config",
            FieldType::Map(&FieldType::String, &FieldType::String),
        ),
        (
            "xenstore_data",
            FieldType::Map(&FieldType::String, &FieldType::String),
        ),
        ("tags", FieldType::Set(&FieldType::String)),
    ];
    for (name, ty) in optional {
        if let Some(v) = record_field(record, name, &ty)? {
            initial.push((name, v));
        }
    }
    let sr_uuid = text(&ctx.state.db, &sr, "uuid");
    // VDI sizes are whole sectors; round up as xapi's storage backends do.
    let sector = ctx
        .state
        .storage
        .as_deref()
        .and_then(|s| s.srs().into_iter().find(|f| f.uuid == sr_uuid))
        .map_or(512, |f| u64::from(f.sector_size.max(1)));
    let size = size.div_ceil(sector).saturating_mul(sector);
    let now = ctx.now;
    let result = backend(ctx.state)?.create_vdi(&sr_uuid, &storage_name(&label), size);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &sr, "", &e))?;
    let vdi = put_vdi(&mut ctx.state.db, &sr, &facts, initial, now);
    refresh_sr(ctx.state, &sr, now);
    Ok(Outcome::Value(Value::String(vdi)))
}

/// `VDI.destroy(self)`.
pub fn vdi_destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let (sr, sr_uuid, vdi_uuid) = locate(&ctx.state.db, &vdi)?;
    ensure_idle(&ctx.state.db, &vdi, "destroy")?;
    let now = ctx.now;
    let result = backend(ctx.state)?.destroy_vdi(&sr_uuid, &vdi_uuid);
    result.map_err(|e| storage_error(&ctx.state.db, &sr, &vdi, &e))?;
    let db = &mut ctx.state.db;
    let _ = db.destroy(&vdi, now);
    // Snapshots and clones of it now point at nothing, as in xapi.
    for other in db.refs("VDI") {
        for field in ["snapshot_of", "parent"] {
            if db.get(&other, field).as_ref().and_then(Value::as_str) == Some(vdi.as_str()) {
                let _ = db.set(&other, vec![(field, Value::str(NULL_REF))], now);
            }
        }
    }
    refresh_sr(ctx.state, &sr, now);
    Ok(Outcome::Value(Value::void()))
}

/// `VDI.resize(vdi, size)`: grows a writable VDI (shrinking would lose data: refused).
pub fn vdi_resize(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let requested = args.int(1)?;
    let (sr, sr_uuid, vdi_uuid) = locate(&ctx.state.db, &vdi)?;
    ensure_idle(&ctx.state.db, &vdi, "resize")?;
    let db = &ctx.state.db;
    if db.get(&vdi, "read_only").and_then(|v| v.as_bool()) == Some(true) {
        return Err(ApiError::VdiReadOnly { vdi });
    }
    let current = db
        .get(&vdi, "virtual_size")
        .and_then(|v| v.as_int())
        .unwrap_or(0);
    if requested < current {
        return Err(ApiError::ValueNotSupported {
            field: "size".to_string(),
            value: requested.to_string(),
            reason: format!("smaller than the current {current} bytes: VDIs only grow"),
        });
    }
    let sector = ctx
        .state
        .storage
        .as_deref()
        .and_then(|s| s.srs().into_iter().find(|f| f.uuid == sr_uuid))
        .map_or(512, |f| u64::from(f.sector_size.max(1)));
    let size = (requested as u64).div_ceil(sector).saturating_mul(sector);
    let now = ctx.now;
    let result = backend(ctx.state)?.resize_vdi(&sr_uuid, &vdi_uuid, size);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &sr, &vdi, &e))?;
    update(&mut ctx.state.db, &vdi, vdi_fields(&facts), now);
    refresh_sr(ctx.state, &sr, now);
    Ok(Outcome::Value(Value::void()))
}

/// `VDI.set_name_label(self, value)`: the storage manager records the name first (durably),
/// then the object follows, so a failure leaves both with the old name.
pub fn vdi_set_name_label(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let label = args.str(1)?.to_string();
    let (sr, sr_uuid, vdi_uuid) = locate(&ctx.state.db, &vdi)?;
    let now = ctx.now;
    let result = backend(ctx.state)?.set_vdi_name(&sr_uuid, &vdi_uuid, &storage_name(&label));
    result.map_err(|e| storage_error(&ctx.state.db, &sr, &vdi, &e))?;
    update(
        &mut ctx.state.db,
        &vdi,
        vec![("name_label", Value::String(label))],
        now,
    );
    Ok(Outcome::Value(Value::void()))
}

/// Fields a snapshot, clone or copy inherits from its source object.
fn inherited(db: &Db, source: &str) -> Vec<(&'static str, Value)> {
    [
        "name_label",
        "name_description",
        "type",
        "sharable",
        "other_config",
        "tags",
    ]
    .into_iter()
    .filter_map(|f| db.get(source, f).map(|v| (f, v)))
    .collect()
}

/// `VDI.snapshot(vdi, [driver_params])`: a read-only snapshot.
pub fn vdi_snapshot(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let (sr, sr_uuid, vdi_uuid) = locate(&ctx.state.db, &vdi)?;
    let now = ctx.now;
    let result = backend(ctx.state)?.snapshot_vdi(&sr_uuid, &vdi_uuid);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &sr, &vdi, &e))?;
    let mut initial = inherited(&ctx.state.db, &vdi);
    initial.extend([
        ("snapshot_of", Value::String(vdi.clone())),
        ("parent", Value::String(vdi.clone())),
        ("snapshot_time", Value::DateTime(now.to_xapi_datetime())),
    ]);
    let snapshot = put_vdi(&mut ctx.state.db, &sr, &facts, initial, now);
    refresh_vdi(ctx.state, &vdi, now);
    Ok(Outcome::Value(Value::String(snapshot)))
}

/// `VDI.clone(vdi, [driver_params])`: a writable clone sharing the data.
pub fn vdi_clone(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let (sr, sr_uuid, vdi_uuid) = locate(&ctx.state.db, &vdi)?;
    let name = storage_name(&text(&ctx.state.db, &vdi, "name_label"));
    let now = ctx.now;
    let result = backend(ctx.state)?.clone_vdi(&sr_uuid, &vdi_uuid, &name);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &sr, &vdi, &e))?;
    let mut initial = inherited(&ctx.state.db, &vdi);
    initial.push(("parent", Value::String(vdi.clone())));
    let clone = put_vdi(&mut ctx.state.db, &sr, &facts, initial, now);
    refresh_sr(ctx.state, &sr, now);
    Ok(Outcome::Value(Value::String(clone)))
}

/// `VDI.copy(vdi, sr, [base_vdi], [into_vdi])`: a full, independent copy in `sr`. Within one
/// SR the storage manager copies directly; across SRs the data is moved by a job (a task
/// with progress).
pub fn vdi_copy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let dest_sr = args.str(1)?.to_string();
    for (index, name) in [(2, "base_vdi"), (3, "into_vdi")] {
        match args.opt_str(index) {
            None | Some("") | Some(NULL_REF) => {}
            Some(other) => {
                return Err(ApiError::ValueNotSupported {
                    field: name.to_string(),
                    value: other.to_string(),
                    reason: "incremental copies are not supported".to_string(),
                })
            }
        }
    }
    let (sr, sr_uuid, vdi_uuid) = locate(&ctx.state.db, &vdi)?;
    let name = storage_name(&text(&ctx.state.db, &vdi, "name_label"));
    let mut initial = inherited(&ctx.state.db, &vdi);
    let now = ctx.now;
    if dest_sr == sr {
        let result = backend(ctx.state)?.copy_vdi(&sr_uuid, &vdi_uuid, &name);
        let facts = result.map_err(|e| storage_error(&ctx.state.db, &sr, &vdi, &e))?;
        let copy = put_vdi(&mut ctx.state.db, &sr, &facts, initial, now);
        refresh_sr(ctx.state, &sr, now);
        return Ok(Outcome::Value(Value::String(copy)));
    }
    let dest_uuid = text(&ctx.state.db, &dest_sr, "uuid");
    let size = ctx
        .state
        .db
        .get(&vdi, "virtual_size")
        .and_then(|v| v.as_int())
        .unwrap_or(0)
        .max(0) as u64;
    let result = backend(ctx.state)?.create_vdi(&dest_uuid, &name, size);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &dest_sr, "", &e))?;
    initial.push(("SR", Value::String(dest_sr.clone())));
    let copy = put_vdi(&mut ctx.state.db, &dest_sr, &facts, initial, now);
    let key = format!("copy to {copy}");
    mark_busy(&mut ctx.state.db, &vdi, &key, Some("copy"), now);
    mark_busy(&mut ctx.state.db, &copy, &key, Some("copy"), now);
    Ok(Outcome::Job(Box::new(CopyJob {
        source: (vdi, sr_uuid, vdi_uuid),
        dest: (copy, dest_sr, dest_uuid, facts.uuid),
        key,
        size,
        offset: 0,
        cancelled: false,
    })))
}

/// Moves a VDI's data to a VDI in another SR, a few chunks per step. All-zero chunks are not
/// written, so holes stay holes.
struct CopyJob {
    /// (ref, SR uuid, VDI uuid) of the source.
    source: (String, String, String),
    /// (ref, SR ref, SR uuid, VDI uuid) of the copy.
    dest: (String, String, String, String),
    key: String,
    size: u64,
    offset: u64,
    cancelled: bool,
}

impl CopyJob {
    fn copy_some(&mut self, storage: &mut dyn StorageBackend) -> Result<(), StorageError> {
        let mut buffer = vec![0u8; COPY_CHUNK];
        for _ in 0..COPY_CHUNKS_PER_STEP {
            if self.offset >= self.size {
                return storage.flush(&self.dest.2);
            }
            let n = (self.size - self.offset).min(COPY_CHUNK as u64) as usize;
            let piece = buffer.get_mut(..n).unwrap_or_default();
            storage.read(&self.source.1, &self.source.2, self.offset, piece)?;
            if piece.iter().any(|&b| b != 0) {
                storage.write(&self.dest.2, &self.dest.3, self.offset, piece)?;
            }
            self.offset += n as u64;
        }
        Ok(())
    }

    fn release(&self, state: &mut State, now: Timestamp) {
        mark_busy(&mut state.db, &self.source.0, &self.key, None, now);
        mark_busy(&mut state.db, &self.dest.0, &self.key, None, now);
    }

    /// Removes the unfinished copy after a failure or cancellation.
    fn discard(&self, state: &mut State, now: Timestamp) {
        self.release(state, now);
        if let Some(storage) = state.storage.as_deref_mut() {
            let _ = storage.destroy_vdi(&self.dest.2, &self.dest.3);
        }
        let _ = state.db.destroy(&self.dest.0, now);
        refresh_sr(state, &self.dest.1, now);
    }
}

impl Job for CopyJob {
    fn step(&mut self, ctx: &mut CallContext<'_>) -> JobStep {
        let now = ctx.now;
        if self.cancelled {
            self.discard(ctx.state, now);
            return JobStep::Failed(ApiError::TaskCancelled {
                task: String::new(),
            });
        }
        let Some(storage) = ctx.state.storage.as_deref_mut() else {
            return JobStep::Failed(no_storage());
        };
        if let Err(e) = self.copy_some(storage) {
            let error = storage_error(&ctx.state.db, &self.dest.1, &self.dest.0, &e);
            self.discard(ctx.state, now);
            return JobStep::Failed(error);
        }
        if self.offset < self.size {
            return JobStep::Progress(self.offset as f64 / self.size.max(1) as f64);
        }
        self.release(ctx.state, now);
        refresh_vdi(ctx.state, &self.dest.0, now);
        JobStep::Done(Value::String(self.dest.0.clone()))
    }

    fn cancel(&mut self) -> bool {
        // Stop at the next step, which removes the partial copy.
        self.cancelled = true;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_names_are_never_empty_and_fit_the_limit() {
        assert_eq!(storage_name(""), "vdi");
        assert_eq!(storage_name("disk"), "disk");
        let long = "é".repeat(200); // 400 bytes
        let cut = storage_name(&long);
        assert!(cut.len() <= 255 && cut.chars().all(|c| c == 'é'));
    }
}
