//! The rules every VM operation is checked against, which also give `allowed_operations`.
//!
//! An operation is refused, in this order, when: the VM is the control domain
//! (`OPERATION_NOT_ALLOWED`); its `blocked_operations` names it (`OPERATION_BLOCKED`); it is a
//! template and the operation runs a guest (`VM_IS_TEMPLATE`); its domain shut down and is
//! preserved (`OPERATION_NOT_ALLOWED`, except hard shutdown and reboot); another operation is
//! in `current_operations` (`OTHER_OPERATION_IN_PROGRESS`; except that `hard_shutdown` and
//! `hard_reboot` take over from a `clean_shutdown` or `clean_reboot`); the power state is
//! wrong (`VM_BAD_POWER_STATE`). `allowed_operations` is exactly the set of operations these
//! rules let through, recomputed in the same write as every change it depends on
//! (`write_vm`). Memory and vCPU settings have their own constraints (`check_memory`,
//! `check_vcpus`).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::error::ApiError;
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::Value;

/// Most vCPUs a PVH guest may have (Xen's `HVM_MAX_VCPUS`).
pub const MAX_VCPUS: i64 = 128;

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
    rule("snapshot", &[Halted, Running, Paused], false),
    rule("revert", &[Halted], false),
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
pub(crate) struct VmView {
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

pub(crate) fn view(db: &Db, vm: &str, changes: &[(&'static str, Value)]) -> VmView {
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

pub(crate) fn allowed(view: &VmView, vm: &str) -> Value {
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
    // The VBDs' allowed operations follow the VM's power state and operations.
    let vbds_follow = changes
        .iter()
        .any(|(k, _)| matches!(*k, "power_state" | "current_operations"));
    let ops = allowed(&view(db, vm, &changes), vm);
    changes.push(("allowed_operations", ops));
    db.update(vm, changes, now)?;
    if vbds_follow {
        super::vbd::refresh_vm_vbds(db, vm, now)?;
        super::vif::refresh_vm_vifs(db, vm, now)?;
    }
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

pub(crate) fn check_vcpus(max: i64, at_startup: i64) -> Result<(), ApiError> {
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
