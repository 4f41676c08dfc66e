//! `VM` records: creating, cloning, copying, provisioning and destroying them, templates
//! and `blocked_operations`. The rules operations are checked against are in `vm_rules`,
//! memory and vCPU settings in `vm_resources`, power operations in `vm_power`.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::value;
use super::vm_rules::{allowed, check_memory, check_operation, check_vcpus, text, view, write_vm};
use crate::classes_vm::{VM, VM_METRICS};
use crate::dispatch::{check_refs_exist, coerce, Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::schema::Source;
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

/// Fields that describe the running domain or are set by Keel, never by `VM.create`.
const RUNTIME_FIELDS: &[&str] = &[
    "uuid",
    "allowed_operations",
    "current_operations",
    "power_state",
    "is_default_template",
    "suspend_VDI",
    "resident_on",
    "scheduled_to_be_resident_on",
    "memory_overhead",
    "memory_target",
    "domid",
    "domarch",
    "last_boot_CPU_flags",
    "is_control_domain",
    "metrics",
    "guest_metrics",
    "last_booted_record",
    "is_a_snapshot",
    "snapshot_of",
    "snapshot_time",
    "transportable_snapshot_id",
    "blobs",
    "snapshot_info",
    "snapshot_metadata",
    "parent",
    "attached_PCIs",
    "requires_reboot",
    "pending_guidances",
    "pending_guidances_recommended",
    "pending_guidances_full",
    "groups",
];

/// The values a new VM has where the type's default is not xapi's.
fn creation_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("power_state", Value::str("Halted")),
        ("user_version", Value::Int(1)),
        ("domid", Value::Int(-1)),
        ("HVM_shadow_multiplier", Value::Float(1.0)),
        ("actions_after_softreboot", Value::str("soft_reboot")),
        ("actions_after_shutdown", Value::str("destroy")),
        ("actions_after_reboot", Value::str("restart")),
        ("actions_after_crash", Value::str("restart")),
        ("domain_type", Value::str("pvh")),
        ("generation_id", Value::str("0:0")),
    ]
}

/// Creates a VM (and its `VM_metrics`) from `fields` over the creation defaults, with
/// `allowed_operations` computed. Returns its reference.
pub(crate) fn create_vm(
    db: &mut Db,
    fields: Vec<(&'static str, Value)>,
    now: Timestamp,
) -> Result<String, ApiError> {
    let metrics = db.create(
        &VM_METRICS,
        vec![
            ("install_time", Value::DateTime(now.to_xapi_datetime())),
            ("last_updated", Value::DateTime(now.to_xapi_datetime())),
            ("current_domain_type", Value::str("unspecified")),
        ],
        now,
    );
    let mut merged: BTreeMap<&'static str, Value> = creation_defaults().into_iter().collect();
    merged.extend(fields);
    merged.insert("metrics", Value::String(metrics));
    let mut fields: Vec<_> = merged.into_iter().collect();
    let vm = db.create(&VM, Vec::new(), now);
    let ops = allowed(&view(db, &vm, &fields), &vm);
    fields.push(("allowed_operations", ops));
    db.set(&vm, fields, now)?;
    Ok(vm)
}

/// `VM.create(args)`: `args` is a VM record; fields Keel sets itself are ignored.
pub fn create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let record = args
        .value(0)
        .as_struct()
        .ok_or_else(|| ApiError::field_type("args"))?;
    let mut fields = Vec::new();
    for decl in VM.fields {
        if decl.source != Source::Stored || RUNTIME_FIELDS.contains(&decl.name) {
            continue;
        }
        match record.get(decl.name) {
            None | Some(Value::Nil) => {}
            Some(v) => {
                let v = coerce(&decl.ty, v.clone(), decl.name)?;
                check_refs_exist(&ctx.state.db, &decl.ty, &v)?;
                fields.push((decl.name, v));
            }
        }
    }
    let get = |name: &str, default: i64| {
        fields
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.as_int())
            .unwrap_or(default)
    };
    let static_max = get("memory_static_max", 0);
    let dynamic_max = get("memory_dynamic_max", static_max);
    let dynamic_min = get("memory_dynamic_min", dynamic_max);
    let static_min = get("memory_static_min", dynamic_min);
    check_memory(static_min, dynamic_min, dynamic_max, static_max)?;
    let vcpus_max = get("VCPUs_max", 1);
    check_vcpus(vcpus_max, get("VCPUs_at_startup", vcpus_max))?;
    let now = ctx.now;
    let vm = create_vm(&mut ctx.state.db, fields, now)?;
    value(Value::String(vm))
}

/// Fields a clone or copy does not take from its source.
const NOT_INHERITED: &[&str] = &["uuid", "name_label", "is_default_template", "metrics"];

/// The configuration of a VM a clone, copy or snapshot takes over (or a revert puts back).
pub(crate) fn configuration(db: &Db, source: &str) -> Vec<(&'static str, Value)> {
    VM.fields
        .iter()
        .filter(|decl| {
            decl.source == Source::Stored
                && !NOT_INHERITED.contains(&decl.name)
                && !RUNTIME_FIELDS.contains(&decl.name)
        })
        .filter_map(|decl| Some((decl.name, db.get(source, decl.name)?)))
        .collect()
}

/// A new VM with `source`'s configuration, named `name`, with `extra` fields over it (and
/// no VBDs: the caller gives it disks).
pub(crate) fn duplicate(
    ctx: &mut CallContext<'_>,
    source: &str,
    name: &str,
    extra: Vec<(&'static str, Value)>,
) -> Result<String, ApiError> {
    let mut fields = configuration(&ctx.state.db, source);
    fields.push(("name_label", Value::str(name)));
    fields.extend(extra);
    // A copy of a built-in template is the client's own: not marked as built in.
    if let Some((_, Value::Struct(other))) = fields.iter_mut().find(|(k, _)| *k == "other_config") {
        other.remove("default_template");
    }
    let now = ctx.now;
    let copy = create_vm(&mut ctx.state.db, fields, now)?;
    // Its VIFs, with fresh MACs (vif.rs).
    super::vif::copy_vm_vifs(&mut ctx.state.db, source, &copy, now)?;
    Ok(copy)
}

/// `VM.clone(vm, new_name)`: a new halted VM (a template if `vm` is one) with `vm`'s
/// configuration and VBDs; its disks are clones of `vm`'s VDIs (`VDI.clone`: sharing the
/// data until written), its CD drives hold the same media.
pub fn clone(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    check_operation(&ctx.state.db, &vm, "clone")?;
    let name = args.str(1)?.to_string();
    let copy = super::vm_disks::clone_with_disks(ctx, &vm, &name)?;
    value(Value::String(copy))
}

/// `VM.copy(vm, new_name, sr)`: as clone, but every disk is a full, independent copy
/// (`VDI.copy`) in `sr`, or in its own SR when `sr` is NULL; a job (the copies take time).
pub fn copy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let sr = args.str(2)?;
    let sr = if sr.is_empty() || sr == NULL_REF {
        None
    } else if ctx.state.db.is_a(sr, "SR") {
        Some(sr.to_string())
    } else {
        return Err(ApiError::handle_invalid("SR", sr));
    };
    check_operation(&ctx.state.db, &vm, "copy")?;
    let job = super::vm_disks::CopyVmJob::new(&ctx.state.db, &vm, args.str(1)?, sr);
    Ok(Outcome::Job(alloc::boxed::Box::new(job)))
}

/// `VM.provision(vm)`: creates the disks a template's `other_config:disks` describes. Keel's
/// built-in templates describe none; a description of disks is refused rather than ignored.
pub fn provision(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    check_operation(&ctx.state.db, &vm, "provision")?;
    let disks = match ctx.state.db.get(&vm, "other_config") {
        Some(Value::Struct(m)) => m.get("disks").and_then(|v| v.as_str().map(String::from)),
        _ => None,
    };
    if let Some(disks) = disks.filter(|d| d.contains("<disk")) {
        return Err(ApiError::ValueNotSupported {
            field: "other_config:disks".to_string(),
            value: crate::codec::truncate(disks, 64),
            reason: "Keel does not provision disks from a template yet".to_string(),
        });
    }
    value(Value::void())
}

/// `VM.destroy(self)`: forgets a halted VM with its metrics and consoles.
pub fn destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    check_operation(&ctx.state.db, &vm, "destroy")?;
    let now = ctx.now;
    let db = &mut ctx.state.db;
    for console in db
        .get(&vm, "consoles")
        .and_then(|v| v.as_array().map(<[Value]>::to_vec))
        .unwrap_or_default()
    {
        if let Some(c) = console.as_str() {
            db.destroy(c, now)?;
        }
    }
    // Its VBDs go with it (not their VDIs, as in xapi).
    for vbd in super::vbd::vbds_of(db, &vm) {
        super::vbd::destroy_vbd(db, &vbd, now)?;
    }
    // And its VIFs, with their metrics.
    super::vif::destroy_vm_vifs(db, &vm, now)?;
    for field in ["metrics", "guest_metrics"] {
        let r = text(db, &vm, field);
        if db.object(&r).is_some() {
            db.destroy(&r, now)?;
        }
    }
    db.destroy(&vm, now)?;
    value(Value::void())
}

/// `VM.assert_operation_valid(self, op)`: the error `op` would fail with now, if any.
pub fn assert_operation_valid(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    check_operation(&ctx.state.db, args.str(0)?, args.str(1)?)?;
    value(Value::void())
}

/// `VM.set_is_a_template(self, value)`: only a halted VM becomes (or stops being) a template.
pub fn set_is_a_template(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let template = args.value(1).as_bool().unwrap_or(false);
    check_operation(&ctx.state.db, &vm, "make_into_template")?;
    let mut changes = vec![("is_a_template", Value::Bool(template))];
    if !template {
        // A client's copy of a template is never a built-in one.
        changes.push(("is_default_template", Value::Bool(false)));
    }
    let now = ctx.now;
    write_vm(&mut ctx.state.db, &vm, changes, now)?;
    value(Value::void())
}

/// `VM.set_domain_type(self, value)`: only while halted; Keel runs `pvh` guests only, which
/// `start` checks.
pub fn set_domain_type(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    check_operation(&ctx.state.db, &vm, "changing_static_range")?;
    let now = ctx.now;
    let domain_type = args.value(1).clone();
    write_vm(
        &mut ctx.state.db,
        &vm,
        vec![("domain_type", domain_type)],
        now,
    )?;
    value(Value::void())
}

fn blocked_operations(db: &Db, vm: &str) -> BTreeMap<String, Value> {
    match db.get(vm, "blocked_operations") {
        Some(Value::Struct(m)) => m,
        _ => BTreeMap::new(),
    }
}

fn write_blocked(
    ctx: &mut CallContext<'_>,
    vm: &str,
    ops: BTreeMap<String, Value>,
) -> Result<Outcome, ApiError> {
    let now = ctx.now;
    write_vm(
        &mut ctx.state.db,
        vm,
        vec![("blocked_operations", Value::Struct(ops))],
        now,
    )?;
    value(Value::void())
}

/// `VM.set_blocked_operations(self, value)`.
pub fn set_blocked_operations(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let ops = args.value(1).as_struct().cloned().unwrap_or_default();
    write_blocked(ctx, &vm, ops)
}

/// `VM.add_to_blocked_operations(self, key, value)` (`MAP_DUPLICATE_KEY` if present).
pub fn add_to_blocked_operations(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let key = args.str(1)?.to_string();
    let mut ops = blocked_operations(&ctx.state.db, &vm);
    if ops.contains_key(&key) {
        return Err(ApiError::MapDuplicateKey {
            class: "VM".to_string(),
            field: "blocked_operations".to_string(),
            reference: vm,
            key,
        });
    }
    ops.insert(key, args.value(2).clone());
    write_blocked(ctx, &vm, ops)
}

/// `VM.remove_from_blocked_operations(self, key)` (an absent key changes nothing).
pub fn remove_from_blocked_operations(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let mut ops = blocked_operations(&ctx.state.db, &vm);
    ops.remove(args.str(1)?);
    write_blocked(ctx, &vm, ops)
}
