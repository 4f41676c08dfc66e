//! `VDI`: creating, destroying, resizing, renaming, snapshotting, cloning and copying
//! virtual disks through the storage manager (data moves are in `transfer` and `vdi_copy`).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::storage_mirror::{
    backend, ensure_idle, locate, put_vdi, refresh_sr, refresh_vdi, sector_size, storage_error,
    storage_name, text, vdi_fields, VdiLocation,
};
use super::vdi_copy::CopyJob;
use crate::classes_storage::VDI_TYPES;
use crate::dispatch::{coerce, Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::schema::FieldType;
use crate::store::Db;
use crate::value::{Value, NULL_REF};

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
    let sector = sector_size(ctx.state, &sr_uuid);
    let size = size.div_ceil(sector).saturating_mul(sector);
    let now = ctx.now;
    let result = backend(ctx.state)?.create_vdi(&sr_uuid, &storage_name(&label), size);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &sr, "", &e))?;
    let vdi = put_vdi(&mut ctx.state.db, &sr, &facts, initial, now)?;
    refresh_sr(ctx.state, &sr, now)?;
    Ok(Outcome::Value(Value::String(vdi)))
}

/// `VDI.destroy(self)`.
pub fn vdi_destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let at = locate(&ctx.state.db, &vdi)?;
    ensure_idle(&ctx.state.db, &vdi, "destroy")?;
    let now = ctx.now;
    let result = backend(ctx.state)?.destroy_vdi(&at.sr_uuid, &at.vdi_uuid);
    result.map_err(|e| storage_error(&ctx.state.db, &at.sr, &vdi, &e))?;
    let db = &mut ctx.state.db;
    db.destroy(&vdi, now)?;
    // Snapshots and clones of it now point at nothing, as in xapi.
    for other in db.refs("VDI") {
        for field in ["snapshot_of", "parent"] {
            if db.get(&other, field).as_ref().and_then(Value::as_str) == Some(vdi.as_str()) {
                db.set(&other, vec![(field, Value::str(NULL_REF))], now)?;
            }
        }
    }
    refresh_sr(ctx.state, &at.sr, now)?;
    Ok(Outcome::Value(Value::void()))
}

/// `VDI.resize(vdi, size)`: grows a writable VDI (shrinking would lose data: refused).
pub fn vdi_resize(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let requested = args.int(1)?;
    let at = locate(&ctx.state.db, &vdi)?;
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
    let sector = sector_size(ctx.state, &at.sr_uuid);
    let size = (requested as u64).div_ceil(sector).saturating_mul(sector);
    let now = ctx.now;
    let result = backend(ctx.state)?.resize_vdi(&at.sr_uuid, &at.vdi_uuid, size);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &at.sr, &vdi, &e))?;
    ctx.state.db.update(&vdi, vdi_fields(&facts), now)?;
    refresh_sr(ctx.state, &at.sr, now)?;
    Ok(Outcome::Value(Value::void()))
}

/// `VDI.set_name_label(self, value)`: the storage manager records the name first (durably),
/// then the object follows, so a failure leaves both with the old name.
pub fn vdi_set_name_label(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let label = args.str(1)?.to_string();
    let at = locate(&ctx.state.db, &vdi)?;
    let now = ctx.now;
    let name = storage_name(&label);
    let result = backend(ctx.state)?.set_vdi_name(&at.sr_uuid, &at.vdi_uuid, &name);
    result.map_err(|e| storage_error(&ctx.state.db, &at.sr, &vdi, &e))?;
    ctx.state
        .db
        .update(&vdi, vec![("name_label", Value::String(label))], now)?;
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
    let at = locate(&ctx.state.db, &vdi)?;
    let now = ctx.now;
    let result = backend(ctx.state)?.snapshot_vdi(&at.sr_uuid, &at.vdi_uuid);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &at.sr, &vdi, &e))?;
    let mut initial = inherited(&ctx.state.db, &vdi);
    initial.extend([
        ("snapshot_of", Value::String(vdi.clone())),
        ("parent", Value::String(vdi.clone())),
        ("snapshot_time", Value::DateTime(now.to_xapi_datetime())),
    ]);
    let snapshot = put_vdi(&mut ctx.state.db, &at.sr, &facts, initial, now)?;
    refresh_vdi(ctx.state, &vdi, now)?;
    Ok(Outcome::Value(Value::String(snapshot)))
}

/// `VDI.clone(vdi, [driver_params])`: a writable clone sharing the data.
pub fn vdi_clone(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vdi = args.str(0)?.to_string();
    let at = locate(&ctx.state.db, &vdi)?;
    let name = storage_name(&text(&ctx.state.db, &vdi, "name_label"));
    let now = ctx.now;
    let result = backend(ctx.state)?.clone_vdi(&at.sr_uuid, &at.vdi_uuid, &name);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &at.sr, &vdi, &e))?;
    let mut initial = inherited(&ctx.state.db, &vdi);
    initial.push(("parent", Value::String(vdi.clone())));
    let clone = put_vdi(&mut ctx.state.db, &at.sr, &facts, initial, now)?;
    refresh_sr(ctx.state, &at.sr, now)?;
    Ok(Outcome::Value(Value::String(clone)))
}

/// `VDI.copy(vdi, sr, [base_vdi], [into_vdi])`: a full, independent copy in `sr` (the
/// source's SR or another). The data is moved by a job (a task with progress), a few MiB per
/// step, so a large copy never holds the host; the synchronous call waits for the task. An SR
/// without room for the source's allocated data answers `SR_FULL` before anything is made.
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
    let source = locate(&ctx.state.db, &vdi)?;
    let name = storage_name(&text(&ctx.state.db, &vdi, "name_label"));
    let mut initial = inherited(&ctx.state.db, &vdi);
    let now = ctx.now;
    let dest_uuid = text(&ctx.state.db, &dest_sr, "uuid");
    let storage = backend(ctx.state)?;
    let used = storage
        .vdis(&source.sr_uuid)
        .map_err(|e| e.to_api_error(&vdi, 0))?
        .into_iter()
        .find(|facts| facts.uuid == source.vdi_uuid)
        .map_or(0, |facts| facts.physical_utilisation);
    let free = storage
        .srs()
        .into_iter()
        .find(|facts| facts.uuid == dest_uuid)
        .map_or(0, |f| {
            f.physical_size.saturating_sub(f.physical_utilisation)
        });
    if used > free {
        return Err(ApiError::SrFull {
            requested: used,
            maximum: free,
        });
    }
    let size = ctx
        .state
        .db
        .get(&vdi, "virtual_size")
        .and_then(|v| v.as_int())
        .unwrap_or(0)
        .max(0) as u64;
    let result = backend(ctx.state)?.create_vdi(&dest_uuid, &name, size);
    let facts = result.map_err(|e| storage_error(&ctx.state.db, &dest_sr, "", &e))?;
    if dest_sr != source.sr {
        initial.push(("SR", Value::String(dest_sr.clone())));
    }
    let copy = put_vdi(&mut ctx.state.db, &dest_sr, &facts, initial, now)?;
    let dest = VdiLocation {
        vdi: copy,
        sr: dest_sr,
        sr_uuid: dest_uuid,
        vdi_uuid: facts.uuid,
    };
    let job = CopyJob::start(&mut ctx.state.db, source, dest, size, now)?;
    Ok(Outcome::Job(Box::new(job)))
}
