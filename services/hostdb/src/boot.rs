//! What a host boot does to the loaded database: nothing runs any more, and VMs marked
//! `other_config:auto_poweron=true` are to be started.
//!
//! Pure: it rewrites records and returns the plan; the caller starts the VMs (in the order
//! given) through the same path as `VM.start`, and saves the database.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::value::{Database, FieldValue, Record};

/// XenAPI's "no object" reference.
pub const NULL_REF: &str = "OpaqueRef:NULL";
/// The `other_config` key XCP-ng uses for starting a VM when its host boots.
pub const AUTO_POWERON_KEY: &str = "auto_poweron";

/// The outcome of [`apply_host_boot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootPlan {
    /// VMs that were `Running` or `Paused` and are now `Halted`, in ref order.
    pub halted: Vec<String>,
    /// VMs to start now, in start order (`order` field ascending, then ref).
    pub auto_start: Vec<String>,
    /// VBDs and VIFs whose `currently_attached` went from true to false, in ref order.
    pub detached: Vec<String>,
    /// The pool's `other_config:auto_poweron` is `false`, so no VM is auto-started.
    pub auto_start_disabled_by_pool: bool,
}

/// Resets the database to what is true right after a host boot and lists the VMs to start.
///
/// - Every VM (other than the control domain) that was `Running` or `Paused` becomes
///   `Halted`, with `resident_on` and `scheduled_to_be_resident_on` set to the null ref and
///   `domid` to -1 where those fields are present. `Suspended` VMs stay suspended (their
///   memory image is on disk) and are not resumed.
/// - Every VM's, VBD's and VIF's `current_operations` is emptied: no operation survives a
///   reboot. VBDs and VIFs are no longer `currently_attached`.
/// - A VM is auto-started if it is now `Halted`, is not a template, a snapshot or the control
///   domain, and its `other_config` maps `auto_poweron` to `true` (case-insensitive), unless
///   the pool's `other_config` maps `auto_poweron` to `false`. (xapi's autostart script
///   requires the pool's flag to be `true`; Keel, one host per pool, needs only the VM's flag
///   but honours a pool-wide opt-out.)
pub fn apply_host_boot(database: &mut Database) -> BootPlan {
    let mut plan = BootPlan {
        auto_start_disabled_by_pool: database
            .objects("pool")
            .any(|(_, pool)| config_flag(pool) == Some(false)),
        ..BootPlan::default()
    };
    let mut starts: Vec<(i64, String)> = Vec::new();
    if let Some(vms) = database.classes.get_mut("VM") {
        for (reference, vm) in vms.iter_mut() {
            if flag(vm, "is_control_domain") {
                continue;
            }
            clear_operations(vm);
            if text(vm, "power_state").is_some_and(is_live) {
                vm.insert("power_state".into(), FieldValue::String("Halted".into()));
                replace_if_present(vm, "resident_on", FieldValue::Ref(NULL_REF.into()));
                replace_if_present(
                    vm,
                    "scheduled_to_be_resident_on",
                    FieldValue::Ref(NULL_REF.into()),
                );
                replace_if_present(vm, "domid", FieldValue::Int(-1));
                plan.halted.push(reference.clone());
            }
            let halted = text(vm, "power_state").is_some_and(|s| s.eq_ignore_ascii_case("Halted"));
            if halted
                && !plan.auto_start_disabled_by_pool
                && !flag(vm, "is_a_template")
                && !flag(vm, "is_a_snapshot")
                && config_flag(vm) == Some(true)
            {
                let order = match vm.get("order") {
                    Some(FieldValue::Int(order)) => *order,
                    _ => 0,
                };
                starts.push((order, reference.clone()));
            }
        }
    }
    starts.sort();
    plan.auto_start = starts.into_iter().map(|(_, reference)| reference).collect();
    for class in ["VBD", "VIF"] {
        if let Some(devices) = database.classes.get_mut(class) {
            for (reference, device) in devices.iter_mut() {
                clear_operations(device);
                if flag(device, "currently_attached") {
                    device.insert("currently_attached".into(), FieldValue::Bool(false));
                    plan.detached.push(reference.clone());
                }
            }
        }
    }
    plan
}

fn is_live(power_state: &str) -> bool {
    power_state.eq_ignore_ascii_case("Running") || power_state.eq_ignore_ascii_case("Paused")
}

/// A text field (enums are stored as strings).
fn text<'a>(record: &'a Record, field: &str) -> Option<&'a str> {
    match record.get(field) {
        Some(FieldValue::String(text)) => Some(text),
        _ => None,
    }
}

fn flag(record: &Record, field: &str) -> bool {
    matches!(record.get(field), Some(FieldValue::Bool(true)))
}

/// `other_config:auto_poweron` as a boolean: `Some` only for the texts `true` and `false`
/// (case-insensitive).
fn config_flag(record: &Record) -> Option<bool> {
    let Some(FieldValue::Map(config)) = record.get("other_config") else {
        return None;
    };
    match config.get(AUTO_POWERON_KEY) {
        Some(FieldValue::String(value)) if value.eq_ignore_ascii_case("true") => Some(true),
        Some(FieldValue::String(value)) if value.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn replace_if_present(record: &mut Record, field: &str, value: FieldValue) {
    if let Some(slot) = record.get_mut(field) {
        *slot = value;
    }
}

fn clear_operations(record: &mut Record) {
    replace_if_present(
        record,
        "current_operations",
        FieldValue::Map(BTreeMap::new()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(power_state: &str, fields: &[(&str, FieldValue)]) -> Record {
        let mut record: Record = [
            ("power_state".into(), FieldValue::String(power_state.into())),
            (
                "resident_on".into(),
                FieldValue::Ref("OpaqueRef:host".into()),
            ),
            ("domid".into(), FieldValue::Int(7)),
            ("is_a_template".into(), FieldValue::Bool(false)),
            (
                "current_operations".into(),
                FieldValue::Map([("op".into(), FieldValue::String("start".into()))].into()),
            ),
        ]
        .into();
        for (field, value) in fields {
            record.insert(String::from(*field), value.clone());
        }
        record
    }

    fn auto(value: &str) -> (&'static str, FieldValue) {
        (
            "other_config",
            FieldValue::Map([(AUTO_POWERON_KEY.into(), FieldValue::String(value.into()))].into()),
        )
    }

    #[test]
    fn running_and_paused_vms_become_halted_and_suspended_ones_stay() {
        let mut database = Database::new();
        database.insert("VM", "OpaqueRef:running", vm("Running", &[]));
        database.insert("VM", "OpaqueRef:paused", vm("Paused", &[]));
        database.insert("VM", "OpaqueRef:suspended", vm("Suspended", &[]));
        database.insert("VM", "OpaqueRef:halted", vm("Halted", &[]));
        let plan = apply_host_boot(&mut database);
        assert_eq!(plan.halted, ["OpaqueRef:paused", "OpaqueRef:running"]);
        assert!(plan.auto_start.is_empty());
        for reference in ["OpaqueRef:running", "OpaqueRef:paused"] {
            let record = database.get("VM", reference).unwrap();
            assert_eq!(record["power_state"], FieldValue::String("Halted".into()));
            assert_eq!(record["resident_on"], FieldValue::Ref(NULL_REF.into()));
            assert_eq!(record["domid"], FieldValue::Int(-1));
            assert_eq!(
                record["current_operations"],
                FieldValue::Map(BTreeMap::new())
            );
            // Fields the record lacked are not invented.
            assert!(!record.contains_key("scheduled_to_be_resident_on"));
        }
        let suspended = database.get("VM", "OpaqueRef:suspended").unwrap();
        assert_eq!(
            suspended["power_state"],
            FieldValue::String("Suspended".into())
        );
        assert_eq!(suspended["domid"], FieldValue::Int(7));
    }

    #[test]
    fn auto_poweron_vms_start_in_order_and_others_do_not() {
        let mut database = Database::new();
        database.insert("VM", "OpaqueRef:a", vm("Running", &[auto("true")]));
        database.insert(
            "VM",
            "OpaqueRef:b",
            vm("Halted", &[auto("TRUE"), ("order", FieldValue::Int(-5))]),
        );
        database.insert("VM", "OpaqueRef:c", vm("Halted", &[auto("false")]));
        database.insert("VM", "OpaqueRef:d", vm("Halted", &[]));
        database.insert("VM", "OpaqueRef:e", vm("Suspended", &[auto("true")]));
        database.insert(
            "VM",
            "OpaqueRef:template",
            vm(
                "Halted",
                &[auto("true"), ("is_a_template", FieldValue::Bool(true))],
            ),
        );
        database.insert(
            "VM",
            "OpaqueRef:snapshot",
            vm(
                "Halted",
                &[auto("true"), ("is_a_snapshot", FieldValue::Bool(true))],
            ),
        );
        database.insert(
            "VM",
            "OpaqueRef:not-a-string",
            vm(
                "Halted",
                &[(
                    "other_config",
                    FieldValue::Map([(AUTO_POWERON_KEY.into(), FieldValue::Bool(true))].into()),
                )],
            ),
        );
        let mut with_pool_opt_out = database.clone();
        let plan = apply_host_boot(&mut database);
        assert_eq!(plan.auto_start, ["OpaqueRef:b", "OpaqueRef:a"]);
        assert_eq!(plan.halted, ["OpaqueRef:a"]);
        assert!(!plan.auto_start_disabled_by_pool);
        // A pool whose flag is `true` changes nothing; `false` stops every auto-start.
        let mut with_pool_opt_in = with_pool_opt_out.clone();
        with_pool_opt_in.insert(
            "pool",
            "OpaqueRef:pool",
            [auto("true")]
                .into_iter()
                .map(|(k, v)| (k.into(), v))
                .collect(),
        );
        assert_eq!(apply_host_boot(&mut with_pool_opt_in), plan);
        with_pool_opt_out.insert(
            "pool",
            "OpaqueRef:pool",
            [auto("false")]
                .into_iter()
                .map(|(k, v)| (k.into(), v))
                .collect(),
        );
        let plan = apply_host_boot(&mut with_pool_opt_out);
        assert!(plan.auto_start.is_empty());
        assert!(plan.auto_start_disabled_by_pool);
        assert_eq!(plan.halted, ["OpaqueRef:a"]);
    }

    #[test]
    fn the_control_domain_is_left_alone() {
        let mut database = Database::new();
        let dom0 = vm(
            "Running",
            &[auto("true"), ("is_control_domain", FieldValue::Bool(true))],
        );
        database.insert("VM", "OpaqueRef:dom0", dom0.clone());
        let plan = apply_host_boot(&mut database);
        assert_eq!(plan, BootPlan::default());
        assert_eq!(database.get("VM", "OpaqueRef:dom0"), Some(&dom0));
    }

    #[test]
    fn devices_are_detached() {
        let mut database = Database::new();
        for (class, reference, attached) in [
            ("VBD", "OpaqueRef:vbd1", true),
            ("VBD", "OpaqueRef:vbd2", false),
            ("VIF", "OpaqueRef:vif1", true),
        ] {
            database.insert(
                class,
                reference,
                [
                    ("currently_attached".into(), FieldValue::Bool(attached)),
                    (
                        "current_operations".into(),
                        FieldValue::Map(BTreeMap::new()),
                    ),
                ]
                .into(),
            );
        }
        let plan = apply_host_boot(&mut database);
        assert_eq!(plan.detached, ["OpaqueRef:vbd1", "OpaqueRef:vif1"]);
        for (class, objects) in &database.classes {
            for (reference, record) in objects {
                assert_eq!(
                    record["currently_attached"],
                    FieldValue::Bool(false),
                    "{class} {reference}"
                );
            }
        }
    }

    #[test]
    fn records_of_any_shape_do_not_upset_it() {
        let mut database = Database::new();
        database.insert(
            "VM",
            "OpaqueRef:odd",
            [
                ("power_state".into(), FieldValue::Int(3)),
                ("other_config".into(), FieldValue::String("x".into())),
                ("order".into(), FieldValue::String("1".into())),
            ]
            .into(),
        );
        database.insert("VM", "OpaqueRef:empty", Record::new());
        let before = database.clone();
        assert_eq!(apply_host_boot(&mut database), BootPlan::default());
        assert_eq!(database, before);
    }
}
