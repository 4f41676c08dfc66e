//! The VMs every host has: the control domain (Keel itself) and the built-in templates.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::vm::create_vm;
use super::vm_rules::{text, MAX_VCPUS};
use crate::api::{HostFacts, State};
use crate::error::ApiError;
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::Value;

const MIB: i64 = 1 << 20;
/// Name of the built-in direct-boot template.
pub const PVH_TEMPLATE_NAME: &str = "Keel Linux PVH (direct boot)";

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
