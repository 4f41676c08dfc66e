//! SR, PBD and VDI objects kept in step with the storage manager, and what the storage
//! handlers share: finding a VDI in the storage manager, marking it busy, its errors.
//!
//! The storage manager is the truth: every operation goes to it first, and the objects are
//! updated from what it answers. `SR.scan` re-reads everything (and forgets VDI objects whose
//! VDI is gone). The storage manager keeps a VDI's name (as `storage_name` shapes it);
//! what it does not keep — descriptions, `other_config` — lives in the objects, which the host
//! database keeps across reboots (persist.rs).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::api::State;
use crate::classes_storage::{PBD, SR, SR_TYPE, VDI};
use crate::error::ApiError;
use crate::storage::{SrFacts, StorageBackend, StorageError, VdiFacts};
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

/// Name the storage manager keeps for a VDI created with an empty `name_label`.
const UNNAMED: &str = "vdi";
/// Longest name the storage manager keeps.
const MAX_NAME: usize = 255;

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

/// Where a VDI object's data lives: the object and its SR's, and the storage manager's
/// names for both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VdiLocation {
    /// The VDI object's reference.
    pub vdi: String,
    /// Its SR object's reference.
    pub sr: String,
    /// The storage manager's name of the SR.
    pub sr_uuid: String,
    /// The storage manager's name of the VDI.
    pub vdi_uuid: String,
}

pub(crate) fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

pub(crate) fn no_storage() -> ApiError {
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

/// A string field's value ("" when absent).
pub(crate) fn text(db: &Db, r: &str, field: &str) -> String {
    db.get(r, field)
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// A name the storage manager accepts: the label cut to 255 bytes, or a placeholder.
pub(crate) fn storage_name(label: &str) -> String {
    if label.is_empty() {
        return UNNAMED.to_string();
    }
    let mut end = label.len().min(MAX_NAME);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    label.get(..end).unwrap_or(UNNAMED).to_string()
}

/// Creates or refreshes every SR (with its PBD) and VDI object from the storage manager.
pub(crate) fn sync_all(state: &mut State, now: Timestamp) -> Result<(), ApiError> {
    let Some(storage) = state.storage.as_deref() else {
        return Ok(());
    };
    for facts in storage.srs() {
        let sr = put_sr(&mut state.db, &state.host, &facts, now)?;
        if let Ok(vdis) = storage.vdis(&facts.uuid) {
            sync_vdis(&mut state.db, &sr, &vdis, now)?;
        }
    }
    Ok(())
}

fn sr_fields(facts: &SrFacts) -> Vec<(&'static str, Value)> {
    vec![
        ("physical_size", int(facts.physical_size)),
        ("physical_utilisation", int(facts.physical_utilisation)),
        ("virtual_allocation", int(facts.virtual_allocation)),
    ]
}

fn put_sr(db: &mut Db, host: &str, facts: &SrFacts, now: Timestamp) -> Result<String, ApiError> {
    if let Some(sr) = db.find_by_uuid("SR", &facts.uuid) {
        db.update(&sr, sr_fields(facts), now)?;
        return Ok(sr);
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
    Ok(sr)
}

pub(crate) fn vdi_fields(facts: &VdiFacts) -> Vec<(&'static str, Value)> {
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
pub(crate) fn put_vdi(
    db: &mut Db,
    sr: &str,
    facts: &VdiFacts,
    initial: Vec<(&'static str, Value)>,
    now: Timestamp,
) -> Result<String, ApiError> {
    if let Some(vdi) = db.find_by_uuid("VDI", &facts.uuid) {
        db.update(&vdi, vdi_fields(facts), now)?;
        return Ok(vdi);
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
    Ok(db.create(&VDI, merged.into_iter().collect(), now))
}

/// Points `snapshot_of` and `parent` at the objects of the VDIs they name.
fn link_vdi(db: &mut Db, vdi: &str, facts: &VdiFacts, now: Timestamp) -> Result<(), ApiError> {
    let by_uuid = |db: &Db, uuid: &Option<String>| {
        uuid.as_ref()
            .and_then(|u| db.find_by_uuid("VDI", u))
            .unwrap_or_else(|| NULL_REF.to_string())
    };
    let snapshot_of = by_uuid(db, &facts.snapshot_of);
    let parent = by_uuid(db, &facts.parent);
    db.update(
        vdi,
        vec![
            ("snapshot_of", Value::String(snapshot_of)),
            ("parent", Value::String(parent)),
        ],
        now,
    )?;
    Ok(())
}

/// Mirrors the VDIs of one SR; objects of VDIs that no longer exist are destroyed.
pub(crate) fn sync_vdis(
    db: &mut Db,
    sr: &str,
    vdis: &[VdiFacts],
    now: Timestamp,
) -> Result<(), ApiError> {
    let refs = vdis
        .iter()
        .map(|facts| put_vdi(db, sr, facts, Vec::new(), now))
        .collect::<Result<Vec<String>, ApiError>>()?;
    for (vdi, facts) in refs.iter().zip(vdis) {
        link_vdi(db, vdi, facts, now)?;
    }
    for stale in db.refs("VDI") {
        let in_sr = db.get(&stale, "SR").as_ref().and_then(Value::as_str) == Some(sr);
        if in_sr && !refs.contains(&stale) {
            db.destroy(&stale, now)?;
        }
    }
    Ok(())
}

/// Refreshes an SR's sizes from the storage manager.
pub(crate) fn refresh_sr(state: &mut State, sr: &str, now: Timestamp) -> Result<(), ApiError> {
    let uuid = text(&state.db, sr, "uuid");
    let Some(storage) = state.storage.as_deref() else {
        return Ok(());
    };
    if let Some(facts) = storage.srs().into_iter().find(|f| f.uuid == uuid) {
        state.db.update(sr, sr_fields(&facts), now)?;
    }
    Ok(())
}

/// Refreshes one VDI's sizes (and its SR's) from the storage manager.
pub(crate) fn refresh_vdi(state: &mut State, vdi: &str, now: Timestamp) -> Result<(), ApiError> {
    let at = locate(&state.db, vdi)?;
    if let Some(storage) = state.storage.as_deref() {
        if let Ok(vdis) = storage.vdis(&at.sr_uuid) {
            if let Some(facts) = vdis.iter().find(|f| f.uuid == at.vdi_uuid) {
                state.db.update(vdi, vdi_fields(facts), now)?;
            }
        }
    }
    refresh_sr(state, &at.sr, now)
}

/// Where a VDI object's data lives (`HANDLE_INVALID` for a VDI or SR object that is gone).
pub(crate) fn locate(db: &Db, vdi: &str) -> Result<VdiLocation, ApiError> {
    db.expect("VDI", vdi)?;
    let sr = text(db, vdi, "SR");
    if !db.is_a(&sr, "SR") {
        return Err(ApiError::handle_invalid("SR", &sr));
    }
    Ok(VdiLocation {
        vdi: vdi.to_string(),
        sr_uuid: text(db, &sr, "uuid"),
        vdi_uuid: text(db, vdi, "uuid"),
        sr,
    })
}

/// Free bytes of an SR (for `SR_FULL`).
fn free_bytes(db: &Db, sr: &str) -> u64 {
    let get = |f| db.get(sr, f).and_then(|v| v.as_int()).unwrap_or(0).max(0) as u64;
    get("physical_size").saturating_sub(get("physical_utilisation"))
}

/// The sector size of an SR (VDI sizes are multiples of it); 512 when unknown.
pub(crate) fn sector_size(state: &State, sr_uuid: &str) -> u64 {
    state
        .storage
        .as_deref()
        .and_then(|s| s.srs().into_iter().find(|f| f.uuid == sr_uuid))
        .map_or(512, |f| u64::from(f.sector_size.max(1)))
}

/// The operation holding a VDI busy, if any.
pub(crate) fn busy_with(db: &Db, vdi: &str) -> Option<String> {
    match db.get(vdi, "current_operations") {
        Some(Value::Struct(ops)) => ops.values().find_map(|v| v.as_str().map(String::from)),
        _ => None,
    }
}

/// `VDI_IN_USE [vdi, operation]` while a transfer or copy runs on the VDI, or while a guest
/// has it attached (its disk backend may be writing it); an export of a disk attached only
/// read-only is fine.
pub(crate) fn ensure_idle(db: &Db, vdi: &str, operation: &str) -> Result<(), ApiError> {
    let (readers, writers) = super::vbd::attachments(db, vdi);
    let attached = writers > 0 || (readers > 0 && operation != "export");
    match busy_with(db, vdi) {
        Some(_) => Err(ApiError::VdiInUse {
            vdi: vdi.to_string(),
            operation: operation.to_string(),
        }),
        None if attached => Err(ApiError::VdiInUse {
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
) -> Result<(), ApiError> {
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
                return Ok(());
            }
        }
    }
    db.set(vdi, vec![("current_operations", Value::Struct(ops))], now)
}

/// The XenAPI error for a storage failure on a VDI (`vdi` may be empty) of an SR.
pub(crate) fn storage_error(db: &Db, sr: &str, vdi: &str, e: &StorageError) -> ApiError {
    e.to_api_error(vdi, free_bytes(db, sr))
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
