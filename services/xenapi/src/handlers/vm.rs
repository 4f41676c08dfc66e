//! `VM` records: creating, cloning, copying, provisioning and destroying them, their memory
//! and vCPU settings, and the rules every VM operation is checked against (which also give
//! `allowed_operations`). Power operations are in `vm_power`.
//!
//! # Operation rules
//! An operation is refused, in this order, when: the VM is the control domain
//! (`OPERATION_NOT_ALLOWED`); its `blocked_operations` names it (`OPERATION_BLOCKED`); it is a
//! template and the operation runs a guest (`VM_IS_TEMPLATE`); another operation is in
//! `current_operations` (`OTHER_OPERATION_IN_PROGRESS`; except that `hard_shutdown` and
//! `hard_reboot` take over from a `clean_shutdown` or `clean_reboot`); the power state is wrong
//! (`VM_BAD_POWER_STATE`). `allowed_operations` is exactly the set of operations these rules
//! let through, recomputed in the same write as every change it depends on.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::value;
use crate::api::{HostFacts, State};
use crate::classes_vm::{CONSOLE, VM, VM_METRICS};
use crate::dispatch::{check_refs_exist, coerce, Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::schema::Source;
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

const MIB: i64 = 1 << 20;
/// Most vCPUs a PVH guest may have (Xen's `HVM_MAX_VCPUS`).
pub const MAX_VCPUS: i64 = 128;
/// Name of the built-in direct-boot template.
pub const PVH_TEMPLATE_NAME: &str = "Keel Linux PVH (direct boot)";

/// A VM's power state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    Halted,
    Paused,
    Running,
    Suspended,
}

impl PowerState {
    pub fn parse(text: &str) -> PowerState {
        match text {
            "Paused" => PowerState::Paused,
            "Running" => PowerState::Running,
            "Suspended" => PowerState::Suspended,
            _ => PowerState::Halted,
        }
    }

    /// As stored in `power_state`.
    pub fn name(self) -> &'static str {
        match self {
            PowerState::Halted => "Halted",
            PowerState::Paused => "Paused",
            PowerState::Running => "Running",
            PowerState::Suspended => "Suspended",
        }
    }

    /// As `VM_BAD_POWER_STATE` writes it.
    fn wire(self) -> &'static str {
        match self {
            PowerState::Halted => "halted",
            PowerState::Paused => "paused",
            PowerState::Running => "running",
            PowerState::Suspended => "suspended",
        }
    }
}

use PowerState::{Halted, Paused, Running, Suspended};

/// What an operation needs.
struct Rule {
    op: &'static str,
    states: &'static [PowerState],
    /// Runs a guest, so templates cannot have it.
    runs_guest: bool,
}

const fn rule(op: &'static str, states: &'static [PowerState], runs_guest: bool) -> Rule {
    Rule {
        op,
        states,
        runs_guest,
    }
}

/// Every operation Keel implements, and what it needs.
const RULES: &[Rule] = &[
    rule("start", &[Halted], true),
    rule("start_on", &[Halted], true),
    rule("pause", &[Running], true),
    rule("unpause", &[Paused], true),
    rule("clean_shutdown", &[Running], true),
    rule("clean_reboot", &[Running], true),
    rule("hard_shutdown", &[Running, Paused, Suspended], true),
    rule("hard_reboot", &[Running, Paused], true),
    rule("clone", &[Halted], false),
    rule("copy", &[Halted], false),
    rule("provision", &[Halted], false),
    rule("destroy", &[Halted, Suspended], false),
    rule("changing_memory_limits", &[Halted], false),
    rule("changing_static_range", &[Halted], false),
    rule("changing_dynamic_range", &[Halted, Running, Paused], false),
    rule("changing_VCPUs", &[Halted], false),
    rule("changing_VCPUs_live", &[Running], true),
    rule("make_into_template", &[Halted], false),
];

/// What the rules look at, read from a VM (with pending changes applied).
struct VmView {
    power: PowerState,
    template: bool,
    default_template: bool,
    control_domain: bool,
    /// The operations in `current_operations`.
    busy_with: Vec<String>,
    /// Operation -> the code its refusal carries.
    blocked: BTreeMap<String, String>,
    /// The domain has shut down and is kept (`actions_after_crash = preserve`): only a hard
    /// shutdown or reboot makes sense.
    preserved: bool,
}

/// `VM_metrics.state` of a domain that shut down and is kept for inspection.
pub(crate) const PRESERVED_STATE: &str = "shutdown";

pub(crate) fn text(db: &Db, r: &str, field: &str) -> String {
    db.get(r, field)
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

pub(crate) fn int_field(db: &Db, r: &str, field: &str) -> i64 {
    db.get(r, field).and_then(|v| v.as_int()).unwrap_or(0)
}

pub(crate) fn power_state(db: &Db, vm: &str) -> PowerState {
    PowerState::parse(&text(db, vm, "power_state"))
}

fn view(db: &Db, vm: &str, changes: &[(&'static str, Value)]) -> VmView {
    let pending = |field: &str| {
        changes
            .iter()
            .rev()
            .find(|(k, _)| *k == field)
            .map(|(_, v)| v.clone())
            .or_else(|| db.get(vm, field))
    };
    let as_bool = |v: Option<Value>| v.and_then(|v| v.as_bool()) == Some(true);
    let keys = |v: Option<Value>| match v {
        Some(Value::Struct(m)) => m.into_iter().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    VmView {
        power: PowerState::parse(
            pending("power_state")
                .as_ref()
                .and_then(Value::as_str)
                .unwrap_or(""),
        ),
        template: as_bool(pending("is_a_template")),
        default_template: as_bool(pending("is_default_template")),
        control_domain: as_bool(pending("is_control_domain")),
        busy_with: keys(pending("current_operations"))
            .into_iter()
            .filter_map(|(_, op)| op.as_str().map(String::from))
            .collect(),
        preserved: match db.get(&text(db, vm, "metrics"), "state") {
            Some(Value::Array(states)) => {
                states.iter().any(|v| v.as_str() == Some(PRESERVED_STATE))
            }
            _ => false,
        },
        blocked: keys(pending("blocked_operations"))
            .into_iter()
            .map(|(op, code)| (op, code.as_str().unwrap_or("").to_string()))
            .collect(),
    }
}

fn check(view: &VmView, vm: &str, op: &str) -> Result<(), ApiError> {
    let Some(rule) = RULES.iter().find(|r| r.op == op) else {
        return Err(ApiError::OperationNotAllowed {
            reason: format!("{op} is not supported by Keel"),
        });
    };
    if view.control_domain {
        return Err(ApiError::OperationNotAllowed {
            reason: format!("{op} is not allowed on the control domain"),
        });
    }
    if let Some(reason) = view.blocked.get(op) {
        return Err(ApiError::OperationBlocked {
            reference: vm.to_string(),
            code: reason.clone(),
        });
    }
    if view.template && rule.runs_guest {
        return Err(ApiError::VmIsTemplate {
            vm: vm.to_string(),
            operation: op.to_string(),
        });
    }
    if view.default_template && op == "destroy" {
        return Err(ApiError::OperationNotAllowed {
            reason: "built-in templates cannot be destroyed".to_string(),
        });
    }
    // A hard shutdown or reboot takes over from clean ones waiting for their guest, as in
    // xapi (the clean one's task is cancelled); anything else waits its turn.
    let clean = |running: &String| matches!(running.as_str(), "clean_shutdown" | "clean_reboot");
    let takes_over =
        matches!(op, "hard_shutdown" | "hard_reboot") && view.busy_with.iter().all(clean);
    if let Some(running) = view.busy_with.first().filter(|_| !takes_over) {
        return Err(ApiError::OtherOperationInProgress {
            class: "VM".to_string(),
            reference: vm.to_string(),
            operation: running.clone(),
        });
    }
    if view.preserved && !matches!(op, "hard_shutdown" | "hard_reboot") {
        return Err(ApiError::OperationNotAllowed {
            reason: "the domain has shut down and is preserved: hard_shutdown or hard_reboot it"
                .to_string(),
        });
    }
    if !rule.states.contains(&view.power) {
        let expected = rule.states.first().copied().unwrap_or(Halted);
        return Err(ApiError::VmBadPowerState {
            vm: vm.to_string(),
            expected: expected.wire().to_string(),
            actual: view.power.wire().to_string(),
        });
    }
    Ok(())
}

/// Refuses `op` on `vm` unless the operation rules (module docs) allow it now.
pub(crate) fn check_operation(db: &Db, vm: &str, op: &str) -> Result<(), ApiError> {
    db.expect("VM", vm)?;
    check(&view(db, vm, &[]), vm, op)
}

fn allowed(view: &VmView, vm: &str) -> Value {
    Value::string_array(
        RULES
            .iter()
            .filter(|r| check(view, vm, r.op).is_ok())
            .map(|r| r.op),
    )
}

/// Writes `changes` to a VM together with the `allowed_operations` they imply: one event.
pub(crate) fn write_vm(
    db: &mut Db,
    vm: &str,
    mut changes: Vec<(&'static str, Value)>,
    now: Timestamp,
) -> Result<(), ApiError> {
    let ops = allowed(&view(db, vm, &changes), vm);
    changes.push(("allowed_operations", ops));
    db.update(vm, changes, now)?;
    Ok(())
}

/// Marks `vm` busy with `op` under `key` (a task reference), or clears the mark.
pub(crate) fn mark_operation(
    db: &mut Db,
    vm: &str,
    key: &str,
    op: Option<&str>,
    now: Timestamp,
) -> Result<(), ApiError> {
    let mut ops = match db.get(vm, "current_operations") {
        Some(Value::Struct(ops)) => ops,
        _ => BTreeMap::new(),
    };
    match op {
        Some(op) => {
            ops.insert(key.to_string(), Value::str(op));
        }
        None => {
            if ops.remove(key).is_none() {
                return Ok(());
            }
        }
    }
    write_vm(
        db,
        vm,
        vec![("current_operations", Value::Struct(ops))],
        now,
    )
}

// ---------------------------------------------------------------------------------------
// Creation

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

/// Checks `static_min <= dynamic_min <= dynamic_max <= static_max`, all positive.
pub(crate) fn check_memory(
    static_min: i64,
    dynamic_min: i64,
    dynamic_max: i64,
    static_max: i64,
) -> Result<(), ApiError> {
    if 0 <= static_min
        && static_min <= dynamic_min
        && dynamic_min <= dynamic_max
        && dynamic_max <= static_max
    {
        return Ok(());
    }
    Err(ApiError::MemoryConstraintViolation {
        constraint:
            "Memory limits must satisfy: static_min <= dynamic_min <= dynamic_max <= static_max"
                .to_string(),
    })
}

fn check_vcpus(max: i64, at_startup: i64) -> Result<(), ApiError> {
    if !(1..=MAX_VCPUS).contains(&max) {
        return Err(ApiError::ValueNotSupported {
            field: "VCPUs_max".to_string(),
            value: max.to_string(),
            reason: format!("must be between 1 and {MAX_VCPUS}"),
        });
    }
    if !(1..=max).contains(&at_startup) {
        return Err(ApiError::ValueNotSupported {
            field: "VCPUs_at_startup".to_string(),
            value: at_startup.to_string(),
            reason: "must be between 1 and VCPUs_max".to_string(),
        });
    }
    Ok(())
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

fn duplicate(ctx: &mut CallContext<'_>, source: &str, name: &str) -> Result<String, ApiError> {
    let db = &ctx.state.db;
    let mut fields = Vec::new();
    for decl in VM.fields {
        let inherit = decl.source == Source::Stored
            && !NOT_INHERITED.contains(&decl.name)
            && !RUNTIME_FIELDS.contains(&decl.name);
        if inherit {
            if let Some(v) = db.get(source, decl.name) {
                fields.push((decl.name, v));
            }
        }
    }
    fields.push(("name_label", Value::str(name)));
    // A copy of a built-in template is the client's own: not marked as built in.
    if let Some((_, Value::Struct(other))) = fields.iter_mut().find(|(k, _)| *k == "other_config") {
        other.remove("default_template");
    }
    let now = ctx.now;
    create_vm(&mut ctx.state.db, fields, now)
}

/// `VM.clone(vm, new_name)`: a new halted VM (a template if `vm` is one) with `vm`'s
/// configuration. Keel's VMs have no disks yet, so nothing else is copied.
pub fn clone(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    check_operation(&ctx.state.db, &vm, "clone")?;
    let copy = duplicate(ctx, &vm, args.str(1)?)?;
    value(Value::String(copy))
}

/// `VM.copy(vm, new_name, sr)`: as clone; `sr` (where disks would go) may be NULL.
pub fn copy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let sr = args.str(2)?;
    if !(sr.is_empty() || sr == NULL_REF || ctx.state.db.is_a(sr, "SR")) {
        return Err(ApiError::handle_invalid("SR", sr));
    }
    check_operation(&ctx.state.db, &vm, "copy")?;
    let copy = duplicate(ctx, &vm, args.str(1)?)?;
    value(Value::String(copy))
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

// ---------------------------------------------------------------------------------------
// Memory and vCPUs

struct Memory {
    static_min: i64,
    dynamic_min: i64,
    dynamic_max: i64,
    static_max: i64,
}

fn memory_of(db: &Db, vm: &str) -> Memory {
    Memory {
        static_min: int_field(db, vm, "memory_static_min"),
        dynamic_min: int_field(db, vm, "memory_dynamic_min"),
        dynamic_max: int_field(db, vm, "memory_dynamic_max"),
        static_max: int_field(db, vm, "memory_static_max"),
    }
}

/// Checks and writes new memory settings; `op` is the operation they count as. A running
/// VM's balloon target follows `dynamic_max`.
fn write_memory(
    ctx: &mut CallContext<'_>,
    vm: &str,
    op: &str,
    m: Memory,
) -> Result<Outcome, ApiError> {
    check_operation(&ctx.state.db, vm, op)?;
    check_memory(m.static_min, m.dynamic_min, m.dynamic_max, m.static_max)?;
    let now = ctx.now;
    let mut changes = vec![
        ("memory_static_min", Value::Int(m.static_min)),
        ("memory_dynamic_min", Value::Int(m.dynamic_min)),
        ("memory_dynamic_max", Value::Int(m.dynamic_max)),
        ("memory_static_max", Value::Int(m.static_max)),
    ];
    if power_state(&ctx.state.db, vm) != Halted {
        let domid = super::vm_power::domid_of(&ctx.state.db, vm)?;
        let target = u64::try_from(m.dynamic_max).unwrap_or(0);
        super::vm_power::guests(ctx.state)?
            .set_memory_target(domid, target)
            .map_err(|e| e.to_api_error(vm))?;
        changes.push(("memory_target", Value::Int(m.dynamic_max)));
    }
    write_vm(&mut ctx.state.db, vm, changes, now)?;
    value(Value::void())
}

/// Applies `f(memory, first argument, second argument)` to a VM's memory settings and
/// writes them as `op`.
fn change_memory<F: FnOnce(&mut Memory, i64, i64)>(
    ctx: &mut CallContext<'_>,
    args: &Args,
    op: &str,
    f: F,
) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let mut m = memory_of(&ctx.state.db, &vm);
    let a = args.int(1)?;
    let b = args.value(2).as_int().unwrap_or(0);
    f(&mut m, a, b);
    write_memory(ctx, &vm, op, m)
}

/// `VM.set_memory_static_max(self, value)` (halted only).
pub fn set_memory_static_max(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_static_range", |m, v, _| {
        m.static_max = v
    })
}

/// `VM.set_memory_static_min(self, value)` (halted only).
pub fn set_memory_static_min(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_static_range", |m, v, _| {
        m.static_min = v
    })
}

/// `VM.set_memory_dynamic_max(self, value)`.
pub fn set_memory_dynamic_max(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_dynamic_range", |m, v, _| {
        m.dynamic_max = v
    })
}

/// `VM.set_memory_dynamic_min(self, value)`.
pub fn set_memory_dynamic_min(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_dynamic_range", |m, v, _| {
        m.dynamic_min = v
    })
}

/// `VM.set_memory_dynamic_range(self, min, max)`: also on a running VM (balloon target).
pub fn set_memory_dynamic_range(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_dynamic_range", |m, min, max| {
        m.dynamic_min = min;
        m.dynamic_max = max;
    })
}

/// `VM.set_memory_static_range(self, min, max)` (halted only).
pub fn set_memory_static_range(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_static_range", |m, min, max| {
        m.static_min = min;
        m.static_max = max;
    })
}

/// `VM.set_memory_limits(self, static_min, static_max, dynamic_min, dynamic_max)`.
pub fn set_memory_limits(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let m = Memory {
        static_min: args.int(1)?,
        static_max: args.int(2)?,
        dynamic_min: args.int(3)?,
        dynamic_max: args.int(4)?,
    };
    write_memory(ctx, &vm, "changing_memory_limits", m)
}

/// `VM.set_memory(self, value)`: static_max, dynamic_min and dynamic_max all become `value`
/// (static_min stays), as in xapi.
pub fn set_memory(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_memory_limits", |m, v, _| {
        m.static_max = v;
        m.dynamic_min = v;
        m.dynamic_max = v;
    })
}

/// `VM.set_VCPUs_max(self, value)` (halted only; at least `VCPUs_at_startup`).
pub fn set_vcpus_max(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let max = args.int(1)?;
    check_operation(&ctx.state.db, &vm, "changing_VCPUs")?;
    check_vcpus(max, int_field(&ctx.state.db, &vm, "VCPUs_at_startup"))?;
    let now = ctx.now;
    write_vm(
        &mut ctx.state.db,
        &vm,
        vec![("VCPUs_max", Value::Int(max))],
        now,
    )?;
    value(Value::void())
}

/// `VM.set_VCPUs_at_startup(self, value)` (halted only; 1 to `VCPUs_max`).
pub fn set_vcpus_at_startup(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let n = args.int(1)?;
    check_operation(&ctx.state.db, &vm, "changing_VCPUs")?;
    check_vcpus(int_field(&ctx.state.db, &vm, "VCPUs_max"), n)?;
    let now = ctx.now;
    write_vm(
        &mut ctx.state.db,
        &vm,
        vec![("VCPUs_at_startup", Value::Int(n))],
        now,
    )?;
    value(Value::void())
}

/// `VM.set_VCPUs_number_live(self, nvcpu)`: vCPUs online in a running VM (1 to `VCPUs_max`).
pub fn set_vcpus_number_live(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let n = args.int(1)?;
    check_operation(&ctx.state.db, &vm, "changing_VCPUs_live")?;
    check_vcpus(int_field(&ctx.state.db, &vm, "VCPUs_max"), n)?;
    let domid = super::vm_power::domid_of(&ctx.state.db, &vm)?;
    let count = u32::try_from(n).unwrap_or(1);
    super::vm_power::guests(ctx.state)?
        .set_vcpus_online(domid, count)
        .map_err(|e| e.to_api_error(&vm))?;
    let now = ctx.now;
    write_vm(
        &mut ctx.state.db,
        &vm,
        vec![("VCPUs_at_startup", Value::Int(n))],
        now,
    )?;
    let metrics = text(&ctx.state.db, &vm, "metrics");
    if ctx.state.db.object(&metrics).is_some() {
        ctx.state
            .db
            .update(&metrics, vec![("VCPUs_number", Value::Int(n))], now)?;
    }
    value(Value::void())
}

// ---------------------------------------------------------------------------------------
// The VMs every host has

/// Creates the control domain's VM (Keel itself: domid 0, running, resident here) and points
/// `host.control_domain` at it.
pub(crate) fn create_control_domain(
    state: &mut State,
    facts: &HostFacts,
    now: Timestamp,
) -> Result<String, ApiError> {
    let memory = i64::try_from(facts.control_domain_memory_bytes).unwrap_or(i64::MAX);
    let vcpus = i64::from(facts.cpu_count.max(1));
    let host = state.host.clone();
    let fields = vec![
        (
            "name_label",
            Value::String(format!("Control domain on host: {}", facts.hostname)),
        ),
        (
            "name_description",
            Value::str("The domain which manages physical devices and manages other domains"),
        ),
        ("is_control_domain", Value::Bool(true)),
        ("power_state", Value::str("Running")),
        ("domid", Value::Int(0)),
        ("resident_on", Value::String(host.clone())),
        ("memory_static_min", Value::Int(memory)),
        ("memory_dynamic_min", Value::Int(memory)),
        ("memory_dynamic_max", Value::Int(memory)),
        ("memory_static_max", Value::Int(memory)),
        ("memory_target", Value::Int(memory)),
        ("VCPUs_max", Value::Int(vcpus)),
        ("VCPUs_at_startup", Value::Int(vcpus)),
        ("actions_after_crash", Value::str("destroy")),
        ("actions_after_reboot", Value::str("destroy")),
    ];
    let vm = create_vm(&mut state.db, fields, now)?;
    let metrics = text(&state.db, &vm, "metrics");
    state.db.update(
        &metrics,
        vec![
            ("VCPUs_number", Value::Int(vcpus)),
            ("memory_actual", Value::Int(memory)),
            ("start_time", Value::DateTime(now.to_xapi_datetime())),
            ("current_domain_type", Value::str("pvh")),
        ],
        now,
    )?;
    state.db.set(
        &host,
        vec![("control_domain", Value::String(vm.clone()))],
        now,
    )?;
    Ok(vm)
}

/// Creates the built-in templates: a direct-boot Linux PVH guest. Clients clone it (and
/// `provision` the clone, and clear `is_a_template`), set `PV_kernel` / `PV_ramdisk` to
/// `vdi:<uuid>` of uploaded VDIs, and start it.
pub(crate) fn create_templates(db: &mut Db, now: Timestamp) -> Result<Vec<String>, ApiError> {
    let memory = 256 * MIB;
    let recommendations = format!(
        "<restrictions><restriction field=\"memory-static-max\" max=\"{}\"/>\
         <restriction field=\"vcpus-max\" max=\"{MAX_VCPUS}\"/></restrictions>",
        64 * 1024 * MIB
    );
    let fields = vec![
        ("name_label", Value::str(PVH_TEMPLATE_NAME)),
        (
            "name_description",
            Value::str(
                "A Linux guest booted directly (PVH): set PV_kernel, and PV_ramdisk if it \
                 has one, to vdi:<uuid> of a VDI holding the image, and PV_args to its \
                 command line.",
            ),
        ),
        ("is_a_template", Value::Bool(true)),
        ("is_default_template", Value::Bool(true)),
        ("memory_static_min", Value::Int(64 * MIB)),
        ("memory_dynamic_min", Value::Int(memory)),
        ("memory_dynamic_max", Value::Int(memory)),
        ("memory_static_max", Value::Int(memory)),
        ("VCPUs_max", Value::Int(1)),
        ("VCPUs_at_startup", Value::Int(1)),
        ("PV_args", Value::str("console=hvc0")),
        ("domain_type", Value::str("pvh")),
        ("recommendations", Value::String(recommendations)),
        (
            "other_config",
            Value::string_map([("default_template", "true"), ("linux_template", "true")]),
        ),
    ];
    Ok(vec![create_vm(db, fields, now)?])
}

/// Creates the console object of a VM that just started. Its `location` is where the
/// management service serves the console: `http://<address>/console?ref=<console ref>`,
/// xapi's form on the management port (docs/guests.md, "Console").
pub(crate) fn create_console(
    db: &mut Db,
    vm: &str,
    host_address: &str,
    now: Timestamp,
) -> Result<String, ApiError> {
    let console = db.create(
        &CONSOLE,
        vec![("protocol", Value::str("vt100")), ("VM", Value::str(vm))],
        now,
    );
    let location = format!("http://{host_address}/console?ref={console}");
    db.set(&console, vec![("location", Value::String(location))], now)?;
    Ok(console)
}
