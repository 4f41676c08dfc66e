//! `VBD`: a VM's disks and CD drives — creating and destroying them, hot-plugging them into
//! a running guest and out again through the toolstack, CD media, and the rules that keep a
//! VDI from being written by two guests at once.
//!
//! # Rules
//! - `userdevice` is `0` to `15` (or `autodetect`: the lowest free one) and unique per VM;
//!   the guest sees it as `xvda` to `xvdp` (`device`), devid `202 << 8 | index << 4`.
//! - A CD is read-only (`VBD_CDS_MUST_BE_READONLY`) and holds an ISO VDI or nothing
//!   (`empty`; only CDs may be empty: `VBD_NOT_REMOVABLE_MEDIA`). A VDI is an ISO when its
//!   `name_label` ends in `.iso`, its `sm_config:type` is `iso`, or its SR's `content_type`
//!   is `iso` (`VDI_IS_NOT_ISO`). VDIs of xapi's internal types (`ha_statefile`,
//!   `redo_log`, `cbt_metadata`) are never attached (`VDI_INCOMPATIBLE_TYPE`).
//! - A VDI is attached read-write by at most one VBD, and never read-write while attached
//!   read-only elsewhere (`VDI_IN_USE`); a read-only VDI (a snapshot) only in `RO` mode
//!   (`VDI_READONLY`). Checked when the VBD is attached: at `VM.start` and `VBD.plug`.
//! - `plug`, `unplug` and `unplug_force` need a running VM; a VBD whose `unpluggable` is
//!   false stays (`VBD_NOT_UNPLUGGABLE`); an attached VBD is not destroyed.
//! - `allowed_operations` is exactly what these rules let through now, recomputed with
//!   every change of the VBD and of its VM's power state.
//!
//! Every change publishes events, also on the VM and VDI whose `VBDs` it changes.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::storage_mirror::{busy_with, locate};
use super::value;
use super::vm_domain::{domid_of, guests};
use super::vm_rules::{power_state, text, PowerState};
use crate::classes_vbd::{VBD, VBD_METRICS, VBD_MODES, VBD_TYPES};
use crate::dispatch::{check_refs_exist, coerce, Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::guest::{DiskSpec, DiskVdi, MAX_DISKS};
use crate::schema::FieldType;
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

/// `userdevice` asking for the lowest free slot.
pub const AUTODETECT: &str = "autodetect";

fn flag(db: &Db, r: &str, field: &str) -> bool {
    db.get(r, field).and_then(|v| v.as_bool()) == Some(true)
}

fn is_null(r: &str) -> bool {
    r.is_empty() || r == NULL_REF
}

/// The VBDs of a VM.
pub(crate) fn vbds_of(db: &Db, vm: &str) -> Vec<String> {
    match db.get(vm, "VBDs") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// The slot of a `userdevice` (`"0"` to `"15"`).
pub(crate) fn device_index(userdevice: &str) -> Option<u32> {
    // Decimal digits without leading zeros (`parse` would also take `+1`).
    let canonical = userdevice.bytes().all(|b| b.is_ascii_digit())
        && (userdevice == "0" || !userdevice.starts_with('0'));
    let index: u32 = userdevice.parse().ok().filter(|_| canonical)?;
    (index < MAX_DISKS).then_some(index)
}

/// The guest's name of a `userdevice` (`xvda`...), empty if it is not a valid one.
fn device_name(userdevice: &str) -> String {
    device_index(userdevice)
        .and_then(DiskSpec::name_for)
        .map(|(_, name)| name)
        .unwrap_or_default()
}

/// Resolves `userdevice` for a VBD of `vm` (`except` is the VBD itself when renumbering).
fn resolve_userdevice(
    db: &Db,
    vm: &str,
    requested: &str,
    except: Option<&str>,
) -> Result<String, ApiError> {
    let taken: Vec<u32> = vbds_of(db, vm)
        .iter()
        .filter(|v| Some(v.as_str()) != except)
        .filter_map(|v| device_index(&text(db, v, "userdevice")))
        .collect();
    if requested == AUTODETECT {
        return (0..MAX_DISKS)
            .find(|i| !taken.contains(i))
            .map(|i| i.to_string())
            .ok_or_else(|| ApiError::OperationNotAllowed {
                reason: format!("the VM already has {MAX_DISKS} VBDs"),
            });
    }
    let index = device_index(requested).ok_or_else(|| ApiError::InvalidDevice {
        device: crate::codec::truncate(requested.to_string(), 64),
    })?;
    if taken.contains(&index) {
        return Err(ApiError::DeviceAlreadyExists {
            device: requested.to_string(),
        });
    }
    Ok(index.to_string())
}

/// Whether a VDI can go into a CD drive (module docs).
fn is_iso(db: &Db, vdi: &str) -> bool {
    let name = text(db, vdi, "name_label").to_ascii_lowercase();
    let sm_type = match db.get(vdi, "sm_config") {
        Some(Value::Struct(m)) => m.get("type").and_then(|v| v.as_str().map(String::from)),
        _ => None,
    };
    let sr = text(db, vdi, "SR");
    name.ends_with(".iso")
        || sm_type.as_deref() == Some("iso")
        || text(db, &sr, "content_type") == "iso"
}

fn check_cd_medium(db: &Db, vdi: &str) -> Result<(), ApiError> {
    if is_iso(db, vdi) {
        return Ok(());
    }
    Err(ApiError::VdiIsNotIso {
        vdi: vdi.to_string(),
        reason: "not an ISO image (its name_label ends in .iso for one)".to_string(),
    })
}

/// xapi's VDI types a VBD may attach (not `ha_statefile`, `redo_log`, `cbt_metadata`).
const ATTACHABLE_TYPES: &[&str] = &[
    "system",
    "user",
    "ephemeral",
    "suspend",
    "crashdump",
    "metadata",
    "rrd",
    "pvs_cache",
];

fn check_vdi_type(db: &Db, vdi: &str) -> Result<(), ApiError> {
    let vdi_type = text(db, vdi, "type");
    if ATTACHABLE_TYPES.contains(&vdi_type.as_str()) {
        return Ok(());
    }
    Err(ApiError::VdiIncompatibleType {
        vdi: vdi.to_string(),
        vdi_type,
    })
}

// ---------------------------------------------------------------------------------------
// allowed_operations

/// What the rules look at, with pending changes applied.
struct VbdView {
    power: PowerState,
    vm_busy: bool,
    busy: bool,
    attached: bool,
    cd: bool,
    empty: bool,
    unpluggable: bool,
}

fn view(db: &Db, vbd: &str, changes: &[(&'static str, Value)]) -> VbdView {
    let pending = |field: &str| {
        changes
            .iter()
            .rev()
            .find(|(k, _)| *k == field)
            .map(|(_, v)| v.clone())
            .or_else(|| db.get(vbd, field))
    };
    let as_bool = |field: &str| pending(field).and_then(|v| v.as_bool()) == Some(true);
    let non_empty_map = |v: Option<Value>| matches!(v, Some(Value::Struct(m)) if !m.is_empty());
    let vm = pending("VM")
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    VbdView {
        power: power_state(db, &vm),
        vm_busy: non_empty_map(db.get(&vm, "current_operations")),
        busy: non_empty_map(pending("current_operations")),
        attached: as_bool("currently_attached"),
        cd: pending("type")
            .and_then(|v| v.as_str().map(String::from))
            .as_deref()
            == Some("CD"),
        empty: as_bool("empty"),
        unpluggable: as_bool("unpluggable"),
    }
}

fn allowed(view: &VbdView) -> Value {
    let mut ops = Vec::new();
    if !view.busy {
        let running = view.power == PowerState::Running && !view.vm_busy;
        if running && !view.attached {
            ops.push("plug");
        }
        if running && view.attached && view.unpluggable {
            ops.extend(["unplug", "unplug_force"]);
        }
        if view.cd && !view.vm_busy {
            ops.push(if view.empty { "insert" } else { "eject" });
        }
    }
    Value::string_array(ops)
}

/// Writes `changes` to a VBD with the `allowed_operations` they imply: one event.
pub(crate) fn write_vbd(
    db: &mut Db,
    vbd: &str,
    mut changes: Vec<(&'static str, Value)>,
    now: Timestamp,
) -> Result<(), ApiError> {
    let ops = allowed(&view(db, vbd, &changes));
    changes.push(("allowed_operations", ops));
    db.update(vbd, changes, now)?;
    Ok(())
}

/// Recomputes the `allowed_operations` of a VM's VBDs (its power state or operations
/// changed).
pub(crate) fn refresh_vm_vbds(db: &mut Db, vm: &str, now: Timestamp) -> Result<(), ApiError> {
    for vbd in vbds_of(db, vm) {
        write_vbd(db, &vbd, Vec::new(), now)?;
    }
    Ok(())
}

/// Marks every VBD of a VM attached (its domain started with them) or detached (its domain
/// is gone).
pub(crate) fn set_vm_vbds_attached(
    db: &mut Db,
    vm: &str,
    attached: bool,
    now: Timestamp,
) -> Result<(), ApiError> {
    for vbd in vbds_of(db, vm) {
        write_vbd(
            db,
            &vbd,
            vec![("currently_attached", Value::Bool(attached))],
            now,
        )?;
    }
    Ok(())
}

/// An `add`, `del` or change of a VBD changes its VM's and VDI's `VBDs`: publish them.
fn touch_owners(db: &mut Db, refs: &[&str], now: Timestamp) {
    for r in refs {
        if !is_null(r) {
            db.touch(r, now);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Attaching

/// The disk a VBD attaches as, checked: its VDI exists, is not read-only in `RW` mode, is
/// not busy. Read-write conflicts with other VBDs are [`check_vdi_free`]'s.
fn disk_spec(db: &Db, vbd: &str) -> Result<DiskSpec, ApiError> {
    let userdevice = text(db, vbd, "userdevice");
    let (devid, device) = device_index(&userdevice)
        .and_then(DiskSpec::name_for)
        .ok_or(ApiError::InvalidDevice { device: userdevice })?;
    let read_only = text(db, vbd, "mode") != "RW";
    let cdrom = text(db, vbd, "type") == "CD";
    let vdi = text(db, vbd, "VDI");
    let vdi = if flag(db, vbd, "empty") || (cdrom && is_null(&vdi)) {
        None
    } else {
        let at = locate(db, &vdi)?;
        if !read_only && flag(db, &vdi, "read_only") {
            return Err(ApiError::VdiReadOnly { vdi });
        }
        if let Some(operation) = busy_with(db, &vdi) {
            return Err(ApiError::VdiInUse { vdi, operation });
        }
        Some(DiskVdi {
            sr_uuid: at.sr_uuid,
            vdi_uuid: at.vdi_uuid,
        })
    };
    Ok(DiskSpec {
        devid,
        device,
        vdi,
        read_only,
        cdrom,
        bootable: flag(db, vbd, "bootable"),
    })
}

/// `VDI_IN_USE` unless attaching `vdi` (read-only or not) beside the attached VBDs and
/// `also` (VBDs being attached with it, as `(vdi, read_only)`) keeps the rule: one writer,
/// and no writer beside readers.
fn check_vdi_free(
    db: &Db,
    vdi: &str,
    read_only: bool,
    also: &[(String, bool)],
    operation: &str,
) -> Result<(), ApiError> {
    let attached = db
        .refs("VBD")
        .into_iter()
        .filter(|other| flag(db, other, "currently_attached") && text(db, other, "VDI") == vdi)
        .map(|other| text(db, &other, "mode") != "RW")
        .chain(also.iter().filter(|(v, _)| v == vdi).map(|(_, ro)| *ro));
    for other_read_only in attached {
        if !read_only || !other_read_only {
            return Err(ApiError::VdiInUse {
                vdi: vdi.to_string(),
                operation: operation.to_string(),
            });
        }
    }
    Ok(())
}

/// How many attached VBDs hold `vdi` read-only and read-write.
pub(crate) fn attachments(db: &Db, vdi: &str) -> (usize, usize) {
    let modes = match db.get(vdi, "VBDs") {
        Some(Value::Array(vbds)) => vbds
            .iter()
            .filter_map(Value::as_str)
            .filter(|vbd| flag(db, vbd, "currently_attached"))
            .map(|vbd| text(db, vbd, "mode") == "RW")
            .collect::<Vec<bool>>(),
        _ => Vec::new(),
    };
    let writers = modes.iter().filter(|rw| **rw).count();
    (modes.len() - writers, writers)
}

/// The disks a VM starts with, in `userdevice` order, checked (module docs).
pub(crate) fn plan_disks(db: &Db, vm: &str) -> Result<Vec<DiskSpec>, ApiError> {
    let mut vbds: Vec<(u32, String)> = vbds_of(db, vm)
        .into_iter()
        .map(|v| {
            (
                device_index(&text(db, &v, "userdevice")).unwrap_or(u32::MAX),
                v,
            )
        })
        .collect();
    vbds.sort();
    let mut disks = Vec::new();
    let mut planned: Vec<(String, bool)> = Vec::new();
    for (_, vbd) in vbds {
        let disk = disk_spec(db, &vbd)?;
        if disk.vdi.is_some() {
            let vdi = text(db, &vbd, "VDI");
            check_vdi_free(db, &vdi, disk.read_only, &planned, "start")?;
            planned.push((vdi, disk.read_only));
        }
        disks.push(disk);
    }
    Ok(disks)
}

// ---------------------------------------------------------------------------------------
// Records

/// Creates a VBD (and its `VBD_metrics`) from `fields`, with `device` and
/// `allowed_operations` computed. Fields are assumed checked.
pub(crate) fn create_vbd(
    db: &mut Db,
    mut fields: Vec<(&'static str, Value)>,
    now: Timestamp,
) -> Result<String, ApiError> {
    let metrics = db.create(
        &VBD_METRICS,
        vec![("last_updated", Value::DateTime(now.to_xapi_datetime()))],
        now,
    );
    let get = |fields: &[(&'static str, Value)], name: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    let (vm, vdi) = (get(&fields, "VM"), get(&fields, "VDI"));
    fields.push((
        "device",
        Value::String(device_name(&get(&fields, "userdevice"))),
    ));
    fields.push(("metrics", Value::String(metrics)));
    let vbd = db.create(&VBD, Vec::new(), now);
    let ops = allowed(&view(db, &vbd, &fields));
    fields.push(("allowed_operations", ops));
    db.set(&vbd, fields, now)?;
    touch_owners(db, &[&vm, &vdi], now);
    Ok(vbd)
}

/// Forgets a VBD and its metrics (it must not be attached).
pub(crate) fn destroy_vbd(db: &mut Db, vbd: &str, now: Timestamp) -> Result<(), ApiError> {
    let (vm, vdi, metrics) = (
        text(db, vbd, "VM"),
        text(db, vbd, "VDI"),
        text(db, vbd, "metrics"),
    );
    if db.is_a(&metrics, "VBD_metrics") {
        db.destroy(&metrics, now)?;
    }
    db.destroy(vbd, now)?;
    touch_owners(db, &[&vm, &vdi], now);
    Ok(())
}

/// A field of `VBD.create`'s record, checked against its declared type.
fn record_field(
    record: &BTreeMap<String, Value>,
    name: &'static str,
) -> Result<Option<Value>, ApiError> {
    let Some(decl) = VBD.field(name) else {
        return Ok(None);
    };
    match record.get(name) {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => coerce(&decl.ty, v.clone(), name).map(Some),
    }
}

fn vm_busy(db: &Db, vm: &str) -> Result<(), ApiError> {
    if let Some(Value::Struct(ops)) = db.get(vm, "current_operations") {
        if let Some(op) = ops.values().find_map(|v| v.as_str().map(String::from)) {
            return Err(ApiError::OtherOperationInProgress {
                class: "VM".to_string(),
                reference: vm.to_string(),
                operation: op,
            });
        }
    }
    Ok(())
}

/// `VBD.create(args)`: `args` is a VBD record; `VM` is required, `VDI` for a disk.
pub fn create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let record = args
        .value(0)
        .as_struct()
        .ok_or_else(|| ApiError::field_type("args"))?;
    let db = &ctx.state.db;
    let vm = match record_field(record, "VM")? {
        Some(Value::String(vm)) => vm,
        _ => return Err(ApiError::field_type("VM")),
    };
    db.expect("VM", &vm)?;
    if flag(db, &vm, "is_control_domain") {
        return Err(ApiError::OperationNotAllowed {
            reason: "the control domain gets no VBDs".to_string(),
        });
    }
    let string = |v: Option<Value>, default: &str| {
        v.and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| default.to_string())
    };
    let kind = string(record_field(record, "type")?, "Disk");
    let mode = string(record_field(record, "mode")?, "RW");
    let vdi = string(record_field(record, "VDI")?, NULL_REF);
    if kind == "Floppy" {
        return Err(ApiError::ValueNotSupported {
            field: "type".to_string(),
            value: kind,
            reason: "Keel's guests have disks and CD drives".to_string(),
        });
    }
    let cd = kind == "CD";
    if cd && mode != "RO" {
        return Err(ApiError::VbdCdsMustBeReadonly);
    }
    let empty = is_null(&vdi);
    // Only CDs may be empty (xapi's words: "in constructor").
    if empty && !cd {
        return Err(ApiError::VbdNotRemovableMedia {
            vbd: "in constructor".to_string(),
        });
    }
    if !empty {
        db.expect("VDI", &vdi)?;
        check_vdi_type(db, &vdi)?;
        if cd {
            check_cd_medium(db, &vdi)?;
        } else if mode == "RW" && flag(db, &vdi, "read_only") {
            return Err(ApiError::VdiReadOnly { vdi });
        }
    }
    let requested = string(record_field(record, "userdevice")?, AUTODETECT);
    let userdevice = resolve_userdevice(db, &vm, &requested, None)?;
    let mut fields: Vec<(&'static str, Value)> = vec![
        ("VM", Value::String(vm)),
        (
            "VDI",
            Value::String(if empty { NULL_REF.to_string() } else { vdi }),
        ),
        ("userdevice", Value::String(userdevice)),
        ("mode", Value::String(mode)),
        ("type", Value::String(kind)),
        ("empty", Value::Bool(empty)),
        ("unpluggable", Value::Bool(true)),
    ];
    for name in [
        "bootable",
        "unpluggable",
        "other_config",
        "qos_algorithm_type",
        "qos_algorithm_params",
    ] {
        if let Some(v) = record_field(record, name)? {
            fields.push((name, v));
        }
    }
    let now = ctx.now;
    let vbd = create_vbd(&mut ctx.state.db, fields, now)?;
    value(Value::String(vbd))
}

/// `VM.get_allowed_VBD_devices(vm)`: the `userdevice`s (`0` to `15`) no VBD of the VM has.
pub fn get_allowed_vbd_devices(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let db = &ctx.state.db;
    let vm = args.str(0)?;
    let taken: Vec<u32> = vbds_of(db, vm)
        .iter()
        .filter_map(|v| device_index(&text(db, v, "userdevice")))
        .collect();
    let free = (0..MAX_DISKS)
        .filter(|i| !taken.contains(i))
        .map(|i| Value::String(i.to_string()))
        .collect();
    value(Value::Array(free))
}

/// `VBD.destroy(self)`: only a detached VBD.
pub fn destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?.to_string();
    let db = &ctx.state.db;
    if flag(db, &vbd, "currently_attached") {
        let vm = text(db, &vbd, "VM");
        return Err(ApiError::OperationNotAllowed {
            reason: format!(
                "VBD '{}' still attached to '{}'",
                text(db, &vbd, "uuid"),
                text(db, &vm, "uuid")
            ),
        });
    }
    let now = ctx.now;
    destroy_vbd(&mut ctx.state.db, &vbd, now)?;
    value(Value::void())
}

/// The VM of a VBD, which must be running and not busy.
fn running_vm(db: &Db, vbd: &str) -> Result<String, ApiError> {
    let vm = text(db, vbd, "VM");
    db.expect("VM", &vm)?;
    vm_busy(db, &vm)?;
    let power = power_state(db, &vm);
    if power != PowerState::Running {
        return Err(ApiError::VmBadPowerState {
            vm,
            expected: "running".to_string(),
            actual: power.name().to_ascii_lowercase(),
        });
    }
    Ok(vm)
}

/// `VBD.assert_attachable(self)`: the error `plug` or `VM.start` would give this VBD's
/// disk now, if any.
pub fn assert_attachable(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?;
    let db = &ctx.state.db;
    let disk = disk_spec(db, vbd)?;
    if disk.vdi.is_some() && !flag(db, vbd, "currently_attached") {
        check_vdi_free(db, &text(db, vbd, "VDI"), disk.read_only, &[], "plug")?;
    }
    value(Value::void())
}

/// `VBD.plug(self)`: hot-plugs the VBD into its running VM.
pub fn plug(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?.to_string();
    let db = &ctx.state.db;
    let vm = running_vm(db, &vbd)?;
    if flag(db, &vbd, "currently_attached") {
        return Err(ApiError::DeviceAlreadyAttached { device: vbd });
    }
    let disk = disk_spec(db, &vbd)?;
    if disk.vdi.is_some() {
        check_vdi_free(db, &text(db, &vbd, "VDI"), disk.read_only, &[], "plug")?;
    }
    let domid = domid_of(db, &vm)?;
    guests(ctx.state)?
        .attach_disk(domid, disk)
        .map_err(|e| e.to_api_error(&vm))?;
    let now = ctx.now;
    write_vbd(
        &mut ctx.state.db,
        &vbd,
        vec![("currently_attached", Value::Bool(true))],
        now,
    )?;
    value(Value::void())
}

fn unplug_with(ctx: &mut CallContext<'_>, args: &Args, force: bool) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?.to_string();
    let db = &ctx.state.db;
    let vm = running_vm(db, &vbd)?;
    if !flag(db, &vbd, "currently_attached") {
        return Err(ApiError::DeviceAlreadyDetached { device: vbd });
    }
    if !flag(db, &vbd, "unpluggable") {
        return Err(ApiError::VbdNotUnpluggable { vbd });
    }
    let userdevice = text(db, &vbd, "userdevice");
    let (devid, _) = device_index(&userdevice)
        .and_then(DiskSpec::name_for)
        .ok_or(ApiError::InvalidDevice { device: userdevice })?;
    let domid = domid_of(db, &vm)?;
    guests(ctx.state)?
        .detach_disk(domid, devid, force)
        .map_err(|e| e.to_api_error(&vm))?;
    let now = ctx.now;
    if !force {
        return Ok(Outcome::Job(alloc::boxed::Box::new(
            super::vbd_unplug::UnplugJob::new(&vbd, now),
        )));
    }
    write_vbd(
        &mut ctx.state.db,
        &vbd,
        vec![("currently_attached", Value::Bool(false))],
        now,
    )?;
    value(Value::void())
}

/// `VBD.unplug(self)`: asks the guest to let go of the disk and waits until the toolstack
/// has removed it (the guest closed it, or its timeout forced it: `vbd_unplug`).
pub fn unplug(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    unplug_with(ctx, args, false)
}

/// `VBD.unplug_force(self)`: removes the disk from the guest at once.
pub fn unplug_force(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    unplug_with(ctx, args, true)
}

/// A CD VBD, whose VM is not busy.
fn cd_drive(db: &Db, vbd: &str) -> Result<String, ApiError> {
    if text(db, vbd, "type") != "CD" {
        return Err(ApiError::VbdNotRemovableMedia {
            vbd: vbd.to_string(),
        });
    }
    let vm = text(db, vbd, "VM");
    vm_busy(db, &vm)?;
    Ok(vm)
}

/// Tells a running guest's drive about its new medium.
fn change_medium(
    ctx: &mut CallContext<'_>,
    vbd: &str,
    vm: &str,
    vdi: Option<&str>,
) -> Result<(), ApiError> {
    let db = &ctx.state.db;
    if !flag(db, vbd, "currently_attached") {
        return Ok(());
    }
    let userdevice = text(db, vbd, "userdevice");
    let (devid, _) = device_index(&userdevice)
        .and_then(DiskSpec::name_for)
        .ok_or(ApiError::InvalidDevice { device: userdevice })?;
    let medium = match vdi {
        Some(vdi) => {
            let at = locate(db, vdi)?;
            Some(DiskVdi {
                sr_uuid: at.sr_uuid,
                vdi_uuid: at.vdi_uuid,
            })
        }
        None => None,
    };
    let domid = domid_of(db, vm)?;
    guests(ctx.state)?
        .change_medium(domid, devid, medium)
        .map_err(|e| e.to_api_error(vm))
}

/// `VBD.insert(vbd, vdi)`: puts an ISO VDI into an empty CD drive.
pub fn insert(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?.to_string();
    let vdi = args.str(1)?.to_string();
    let db = &ctx.state.db;
    let vm = cd_drive(db, &vbd)?;
    if !flag(db, &vbd, "empty") {
        return Err(ApiError::VbdNotEmpty { vbd });
    }
    check_vdi_type(db, &vdi)?;
    check_cd_medium(db, &vdi)?;
    if let Some(operation) = busy_with(db, &vdi) {
        return Err(ApiError::VdiInUse { vdi, operation });
    }
    if flag(db, &vbd, "currently_attached") {
        check_vdi_free(db, &vdi, true, &[], "insert")?;
    }
    change_medium(ctx, &vbd, &vm, Some(&vdi))?;
    let now = ctx.now;
    let db = &mut ctx.state.db;
    write_vbd(
        db,
        &vbd,
        vec![
            ("VDI", Value::String(vdi.clone())),
            ("empty", Value::Bool(false)),
        ],
        now,
    )?;
    touch_owners(db, &[&vdi], now);
    value(Value::void())
}

/// `VBD.eject(vbd)`: empties a CD drive.
pub fn eject(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?.to_string();
    let db = &ctx.state.db;
    let vm = cd_drive(db, &vbd)?;
    if flag(db, &vbd, "empty") {
        return Err(ApiError::VbdIsEmpty { vbd });
    }
    let vdi = text(db, &vbd, "VDI");
    change_medium(ctx, &vbd, &vm, None)?;
    let now = ctx.now;
    let db = &mut ctx.state.db;
    write_vbd(
        db,
        &vbd,
        vec![("VDI", Value::str(NULL_REF)), ("empty", Value::Bool(true))],
        now,
    )?;
    if db.is_a(&vdi, "VDI") {
        touch_owners(db, &[&vdi], now);
    }
    value(Value::void())
}

/// A VBD whose settings change: not while attached (they take effect at the next attach in
/// xapi, which Keel does not pretend).
fn detached(db: &Db, vbd: &str) -> Result<(), ApiError> {
    if flag(db, vbd, "currently_attached") {
        return Err(ApiError::DeviceAlreadyAttached {
            device: vbd.to_string(),
        });
    }
    Ok(())
}

/// `VBD.set_userdevice(self, value)`.
pub fn set_userdevice(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?.to_string();
    let db = &ctx.state.db;
    detached(db, &vbd)?;
    let vm = text(db, &vbd, "VM");
    let userdevice = resolve_userdevice(db, &vm, args.str(1)?, Some(&vbd))?;
    let now = ctx.now;
    write_vbd(
        &mut ctx.state.db,
        &vbd,
        vec![
            ("device", Value::String(device_name(&userdevice))),
            ("userdevice", Value::String(userdevice)),
        ],
        now,
    )?;
    value(Value::void())
}

/// `VBD.set_unpluggable(self, value)`.
pub fn set_unpluggable(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?.to_string();
    let unpluggable = args.value(1).clone();
    let now = ctx.now;
    write_vbd(
        &mut ctx.state.db,
        &vbd,
        vec![("unpluggable", unpluggable)],
        now,
    )?;
    value(Value::void())
}

/// `VBD.set_mode(self, value)`: CDs stay read-only; a read-only VDI is not made writable.
pub fn set_mode(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?.to_string();
    let mode = args.str(1)?.to_string();
    let db = &ctx.state.db;
    detached(db, &vbd)?;
    if mode == "RW" {
        if text(db, &vbd, "type") == "CD" {
            return Err(ApiError::VbdCdsMustBeReadonly);
        }
        let vdi = text(db, &vbd, "VDI");
        if flag(db, &vdi, "read_only") {
            return Err(ApiError::VdiReadOnly { vdi });
        }
    }
    debug_assert!(VBD_MODES.contains(&mode.as_str()));
    let now = ctx.now;
    write_vbd(
        &mut ctx.state.db,
        &vbd,
        vec![("mode", Value::String(mode))],
        now,
    )?;
    value(Value::void())
}

/// `VBD.set_type(self, value)`: a disk becomes a CD only if it is read-only and holds an
/// ISO (or nothing); a CD becomes a disk only if it holds a VDI.
pub fn set_type(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vbd = args.str(0)?.to_string();
    let kind = args.str(1)?.to_string();
    let db = &ctx.state.db;
    detached(db, &vbd)?;
    let vdi = text(db, &vbd, "VDI");
    match kind.as_str() {
        "CD" => {
            if text(db, &vbd, "mode") != "RO" {
                return Err(ApiError::VbdCdsMustBeReadonly);
            }
            if !flag(db, &vbd, "empty") {
                check_cd_medium(db, &vdi)?;
            }
        }
        "Disk" => {
            if flag(db, &vbd, "empty") {
                return Err(ApiError::VbdIsEmpty { vbd });
            }
        }
        _ => {
            return Err(ApiError::ValueNotSupported {
                field: "type".to_string(),
                value: kind,
                reason: "Keel's guests have disks and CD drives".to_string(),
            })
        }
    }
    debug_assert!(VBD_TYPES.contains(&kind.as_str()));
    let now = ctx.now;
    write_vbd(
        &mut ctx.state.db,
        &vbd,
        vec![("type", Value::String(kind))],
        now,
    )?;
    value(Value::void())
}

/// Copies of a VM's VBDs for `target` (a clone, copy or snapshot), each pointing at the VDI
/// `vdi_for` maps its VDI to (unmapped ones keep theirs, as CDs do); VBDs of the VDIs in
/// `skip` are left out.
pub(crate) fn duplicate_vbds(
    db: &mut Db,
    source: &str,
    target: &str,
    vdi_for: &BTreeMap<String, String>,
    skip: &[String],
    now: Timestamp,
) -> Result<(), ApiError> {
    for vbd in vbds_of(db, source) {
        if skip.contains(&text(db, &vbd, "VDI")) {
            continue;
        }
        let mut fields: Vec<(&'static str, Value)> = vec![("VM", Value::str(target))];
        for name in [
            "userdevice",
            "bootable",
            "mode",
            "type",
            "unpluggable",
            "empty",
            "other_config",
            "qos_algorithm_type",
            "qos_algorithm_params",
        ] {
            if let Some(v) = db.get(&vbd, name) {
                fields.push((name, v));
            }
        }
        let vdi = text(db, &vbd, "VDI");
        let vdi = vdi_for.get(&vdi).cloned().unwrap_or(vdi);
        let vdi = if db.is_a(&vdi, "VDI") {
            vdi
        } else {
            NULL_REF.to_string()
        };
        fields.push(("VDI", Value::String(vdi)));
        check_refs_exist(db, &FieldType::Ref("VM"), &Value::str(target))?;
        create_vbd(db, fields, now)?;
    }
    Ok(())
}

/// After a host boot: restored VBDs of VMs that did not come back are forgotten, references
/// to VDIs that did not come back become NULL (a CD is then empty; a disk refuses to attach
/// with `HANDLE_INVALID`), each VBD has its metrics, and metrics no VBD owns are forgotten.
/// (keel-hostdb's boot already marked them detached.)
pub(crate) fn repair_restored(
    db: &mut Db,
    vbds: &[String],
    now: Timestamp,
) -> Result<(), ApiError> {
    for vbd in vbds {
        if !db.is_a(&text(db, vbd, "VM"), "VM") {
            destroy_vbd(db, vbd, now)?;
            continue;
        }
        let mut changes = Vec::new();
        let vdi = text(db, vbd, "VDI");
        if !is_null(&vdi) && !db.is_a(&vdi, "VDI") {
            changes.push(("VDI", Value::str(NULL_REF)));
            if text(db, vbd, "type") == "CD" {
                changes.push(("empty", Value::Bool(true)));
            }
        }
        if !db.is_a(&text(db, vbd, "metrics"), "VBD_metrics") {
            let metrics = db.create(&VBD_METRICS, Vec::new(), now);
            changes.push(("metrics", Value::String(metrics)));
        }
        write_vbd(db, vbd, changes, now)?;
    }
    for metrics in db.refs("VBD_metrics") {
        let owned = db
            .refs("VBD")
            .iter()
            .any(|vbd| text(db, vbd, "metrics") == metrics);
        if !owned {
            db.destroy(&metrics, now)?;
        }
    }
    Ok(())
}
