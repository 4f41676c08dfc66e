//! The guest classes of the data model: `VM`, `VM_metrics`, `VM_guest_metrics` and `console`
//! (declarations only; the handlers are in `handlers/vm*.rs`).
//!
//! Every field of xapi's records is present so clients that read them find them; a feature
//! Keel does not have keeps the value xapi shows when it is off (`OpaqueRef:NULL`, empty maps,
//! `false`), never a made-up one.

use crate::handlers::{vm, vm_disks, vm_power, vm_resources};
use crate::schema::FieldType::{self, *};
use crate::schema::{inverse, msg, param, ro, rw, ClassDecl, FieldDecl, OBJECTS};

const STRING_MAP: FieldType = Map(&String, &String);
const STRING_SET: FieldType = Set(&String);

const fn uuid() -> FieldDecl {
    ro("uuid", String)
}
const fn other_config() -> FieldDecl {
    rw("other_config", STRING_MAP)
}

/// xapi's `vm_power_state`.
pub const POWER_STATES: &[&str] = &["Halted", "Paused", "Running", "Suspended"];

/// xapi's `vm_operations`.
pub const VM_OPERATIONS: &[&str] = &[
    "snapshot",
    "clone",
    "copy",
    "create_template",
    "revert",
    "checkpoint",
    "snapshot_with_quiesce",
    "provision",
    "start",
    "start_on",
    "pause",
    "unpause",
    "clean_shutdown",
    "clean_reboot",
    "hard_shutdown",
    "power_state_reset",
    "hard_reboot",
    "suspend",
    "csvm",
    "resume",
    "resume_on",
    "pool_migrate",
    "migrate_send",
    "get_boot_record",
    "send_sysrq",
    "send_trigger",
    "query_services",
    "shutdown",
    "call_plugin",
    "changing_memory_live",
    "awaiting_memory_live",
    "changing_dynamic_range",
    "changing_static_range",
    "changing_memory_limits",
    "changing_shadow_memory",
    "changing_shadow_memory_live",
    "changing_VCPUs",
    "changing_VCPUs_live",
    "changing_NVRAM",
    "assert_operation_valid",
    "data_source_op",
    "update_allowed_operations",
    "make_into_template",
    "import",
    "export",
    "metadata_export",
    "reverting",
    "destroy",
    "create_vtpm",
];

/// xapi's `on_normal_exit` (`actions_after_shutdown`, `actions_after_reboot`).
pub const ON_NORMAL_EXIT: &[&str] = &["destroy", "restart"];
/// xapi's `on_crash_behaviour`.
pub const ON_CRASH: &[&str] = &[
    "destroy",
    "coredump_and_destroy",
    "restart",
    "coredump_and_restart",
    "preserve",
    "rename_restart",
];
/// xapi's `on_softreboot_behavior`.
pub const ON_SOFTREBOOT: &[&str] = &["soft_reboot", "destroy", "restart", "preserve"];
/// xapi's `domain_type`.
pub const DOMAIN_TYPES: &[&str] = &["hvm", "pv", "pv_in_pvh", "pvh", "unspecified"];
/// xapi's `tristate_type`.
const TRISTATE: &[&str] = &["yes", "no", "unspecified"];
/// xapi's `update_guidances`.
const GUIDANCES: &[&str] = &[
    "reboot_host",
    "reboot_host_on_livepatch_failure",
    "reboot_host_on_kernel_livepatch_failure",
    "reboot_host_on_xen_livepatch_failure",
    "restart_toolstack",
    "restart_device_model",
    "restart_vm",
];

const VM_REF: FieldType = Ref("VM");

pub static VM: ClassDecl = ClassDecl {
    name: "VM",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("allowed_operations", Set(&Enum(VM_OPERATIONS))),
        // Task reference -> operation; a VM with an entry is busy.
        ro("current_operations", STRING_MAP),
        rw("name_label", String),
        rw("name_description", String),
        ro("power_state", Enum(POWER_STATES)),
        rw("user_version", Int),
        rw("is_a_template", Bool),
        ro("is_default_template", Bool),
        ro("suspend_VDI", Ref("VDI")),
        ro("resident_on", Ref("host")),
        ro("scheduled_to_be_resident_on", Ref("host")),
        rw("affinity", Ref("host")),
        ro("memory_overhead", Int),
        ro("memory_target", Int),
        // The memory and vCPU fields change through their checked messages (`set_memory_*`,
        // `set_VCPUs_*`), never a bare setter.
        ro("memory_static_max", Int),
        ro("memory_dynamic_max", Int),
        ro("memory_dynamic_min", Int),
        ro("memory_static_min", Int),
        rw("VCPUs_params", STRING_MAP),
        ro("VCPUs_max", Int),
        ro("VCPUs_at_startup", Int),
        rw("actions_after_softreboot", Enum(ON_SOFTREBOOT)),
        rw("actions_after_shutdown", Enum(ON_NORMAL_EXIT)),
        rw("actions_after_reboot", Enum(ON_NORMAL_EXIT)),
        rw("actions_after_crash", Enum(ON_CRASH)),
        inverse("consoles", "console", "VM"),
        inverse("VIFs", "VIF", "VM"),
        inverse("VBDs", "VBD", "VM"),
        inverse("VUSBs", "VUSB", "VM"),
        inverse("crash_dumps", "crashdump", "VM"),
        inverse("VTPMs", "VTPM", "VM"),
        rw("PV_bootloader", String),
        // `vdi:<VDI uuid>` (docs/guests.md).
        rw("PV_kernel", String),
        rw("PV_ramdisk", String),
        rw("PV_args", String),
        rw("PV_bootloader_args", String),
        rw("PV_legacy_args", String),
        rw("HVM_boot_policy", String),
        rw("HVM_boot_params", STRING_MAP),
        ro("HVM_shadow_multiplier", Float),
        rw("platform", STRING_MAP),
        rw("PCI_bus", String),
        other_config(),
        ro("domid", Int),
        ro("domarch", String),
        ro("last_boot_CPU_flags", STRING_MAP),
        ro("is_control_domain", Bool),
        ro("metrics", Ref("VM_metrics")),
        ro("guest_metrics", Ref("VM_guest_metrics")),
        ro("last_booted_record", String),
        rw("recommendations", String),
        rw("xenstore_data", STRING_MAP),
        ro("ha_always_run", Bool),
        ro("ha_restart_priority", String),
        ro("is_a_snapshot", Bool),
        ro("snapshot_of", VM_REF),
        inverse("snapshots", "VM", "snapshot_of"),
        ro("snapshot_time", DateTime),
        ro("transportable_snapshot_id", String),
        ro("blobs", Map(&String, &Ref("blob"))),
        rw("tags", STRING_SET),
        rw("blocked_operations", Map(&Enum(VM_OPERATIONS), &String)),
        ro("snapshot_info", STRING_MAP),
        ro("snapshot_metadata", String),
        ro("parent", VM_REF),
        inverse("children", "VM", "parent"),
        ro("bios_strings", STRING_MAP),
        ro("protection_policy", Ref("VMPP")),
        ro("is_snapshot_from_vmpp", Bool),
        ro("snapshot_schedule", Ref("VMSS")),
        ro("is_vmss_snapshot", Bool),
        rw("appliance", Ref("VM_appliance")),
        ro("start_delay", Int),
        ro("shutdown_delay", Int),
        ro("order", Int),
        inverse("VGPUs", "VGPU", "VM"),
        ro("attached_PCIs", RefSet("PCI")),
        rw("suspend_SR", Ref("SR")),
        ro("version", Int),
        ro("generation_id", String),
        ro("hardware_platform_version", Int),
        ro("has_vendor_device", Bool),
        ro("requires_reboot", Bool),
        ro("reference_label", String),
        ro("domain_type", Enum(DOMAIN_TYPES)),
        ro("NVRAM", STRING_MAP),
        ro("pending_guidances", Set(&Enum(GUIDANCES))),
        ro("pending_guidances_recommended", Set(&Enum(GUIDANCES))),
        ro("pending_guidances_full", Set(&Enum(GUIDANCES))),
        ro("groups", RefSet("VM_group")),
    ],
    messages: &[
        msg("create", &[param("args", Map(&String, &Any))], vm::create).asyncable(),
        msg("destroy", &[param("self", VM_REF)], vm::destroy).asyncable(),
        msg(
            "clone",
            &[param("vm", VM_REF), param("new_name", String)],
            vm::clone,
        )
        .asyncable(),
        // `sr` may be NULL (the disks' own SRs); the handler checks it.
        msg(
            "copy",
            &[
                param("vm", VM_REF),
                param("new_name", String),
                param("sr", String),
            ],
            vm::copy,
        )
        .asyncable(),
        msg(
            "snapshot",
            &[
                param("vm", VM_REF),
                param("new_name", String),
                param("ignore_vdis", RefSet("VDI")),
            ],
            vm_disks::snapshot,
        )
        .asyncable()
        .optional_tail(1),
        msg("revert", &[param("snapshot", VM_REF)], vm_disks::revert).asyncable(),
        msg("provision", &[param("vm", VM_REF)], vm::provision).asyncable(),
        msg(
            "start",
            &[
                param("vm", VM_REF),
                param("start_paused", Bool),
                param("force", Bool),
            ],
            vm_power::start,
        )
        .asyncable(),
        msg(
            "start_on",
            &[
                param("vm", VM_REF),
                param("host", Ref("host")),
                param("start_paused", Bool),
                param("force", Bool),
            ],
            vm_power::start_on,
        )
        .asyncable(),
        msg("pause", &[param("vm", VM_REF)], vm_power::pause).asyncable(),
        msg("unpause", &[param("vm", VM_REF)], vm_power::unpause).asyncable(),
        msg(
            "clean_shutdown",
            &[param("vm", VM_REF)],
            vm_power::clean_shutdown,
        )
        .asyncable(),
        msg(
            "clean_reboot",
            &[param("vm", VM_REF)],
            vm_power::clean_reboot,
        )
        .asyncable(),
        msg(
            "hard_shutdown",
            &[param("vm", VM_REF)],
            vm_power::hard_shutdown,
        )
        .asyncable(),
        msg("hard_reboot", &[param("vm", VM_REF)], vm_power::hard_reboot).asyncable(),
        msg(
            "set_domain_type",
            &[param("self", VM_REF), param("value", Enum(DOMAIN_TYPES))],
            vm::set_domain_type,
        ),
        // Replace the generated setters: they change `allowed_operations`.
        msg(
            "set_is_a_template",
            &[param("self", VM_REF), param("value", Bool)],
            vm::set_is_a_template,
        ),
        msg(
            "set_blocked_operations",
            &[
                param("self", VM_REF),
                param("value", Map(&Enum(VM_OPERATIONS), &String)),
            ],
            vm::set_blocked_operations,
        ),
        msg(
            "add_to_blocked_operations",
            &[
                param("self", VM_REF),
                param("key", Enum(VM_OPERATIONS)),
                param("value", String),
            ],
            vm::add_to_blocked_operations,
        ),
        msg(
            "remove_from_blocked_operations",
            &[param("self", VM_REF), param("key", Enum(VM_OPERATIONS))],
            vm::remove_from_blocked_operations,
        ),
        msg(
            "assert_operation_valid",
            &[param("self", VM_REF), param("op", Enum(VM_OPERATIONS))],
            vm::assert_operation_valid,
        )
        .asyncable(),
        msg(
            "set_memory_static_max",
            &[param("self", VM_REF), param("value", Int)],
            vm_resources::set_memory_static_max,
        ),
        msg(
            "set_memory_static_min",
            &[param("self", VM_REF), param("value", Int)],
            vm_resources::set_memory_static_min,
        ),
        msg(
            "set_memory_dynamic_max",
            &[param("self", VM_REF), param("value", Int)],
            vm_resources::set_memory_dynamic_max,
        ),
        msg(
            "set_memory_dynamic_min",
            &[param("self", VM_REF), param("value", Int)],
            vm_resources::set_memory_dynamic_min,
        ),
        msg(
            "set_memory_dynamic_range",
            &[param("self", VM_REF), param("min", Int), param("max", Int)],
            vm_resources::set_memory_dynamic_range,
        )
        .asyncable(),
        msg(
            "set_memory_static_range",
            &[param("self", VM_REF), param("min", Int), param("max", Int)],
            vm_resources::set_memory_static_range,
        )
        .asyncable(),
        msg(
            "set_memory_limits",
            &[
                param("self", VM_REF),
                param("static_min", Int),
                param("static_max", Int),
                param("dynamic_min", Int),
                param("dynamic_max", Int),
            ],
            vm_resources::set_memory_limits,
        )
        .asyncable(),
        msg(
            "set_memory",
            &[param("self", VM_REF), param("value", Int)],
            vm_resources::set_memory,
        )
        .asyncable(),
        msg(
            "set_VCPUs_max",
            &[param("self", VM_REF), param("value", Int)],
            vm_resources::set_vcpus_max,
        ),
        msg(
            "set_VCPUs_at_startup",
            &[param("self", VM_REF), param("value", Int)],
            vm_resources::set_vcpus_at_startup,
        ),
        msg(
            "set_VCPUs_number_live",
            &[param("self", VM_REF), param("nvcpu", Int)],
            vm_resources::set_vcpus_number_live,
        )
        .asyncable(),
        // Xen Orchestra and Ansible pick a new VIF's device from it.
        msg(
            "get_allowed_VIF_devices",
            &[param("vm", VM_REF)],
            crate::handlers::vif::get_allowed_vif_devices,
        ),
        // The free `userdevice`s for a new VBD (clients pick a disk's slot from it).
        msg(
            "get_allowed_VBD_devices",
            &[param("vm", VM_REF)],
            crate::handlers::vbd::get_allowed_vbd_devices,
        ),
        // Performance data (metrics.rs, docs/metering.md).
        msg(
            "get_data_sources",
            &[param("self", VM_REF)],
            crate::metrics::vm_get_data_sources,
        ),
        msg(
            "query_data_source",
            &[param("self", VM_REF), param("data_source", String)],
            crate::metrics::vm_query_data_source,
        ),
        msg(
            "record_data_source",
            &[param("self", VM_REF), param("data_source", String)],
            crate::metrics::vm_record_data_source,
        ),
    ],
};

pub static VM_METRICS: ClassDecl = ClassDecl {
    name: "VM_metrics",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("memory_actual", Int),
        ro("VCPUs_number", Int),
        ro("VCPUs_utilisation", Map(&Int, &Float)),
        ro("VCPUs_CPU", Map(&Int, &Int)),
        ro("VCPUs_params", STRING_MAP),
        ro("VCPUs_flags", Map(&Int, &STRING_SET)),
        ro("state", STRING_SET),
        ro("start_time", DateTime),
        ro("install_time", DateTime),
        ro("last_updated", DateTime),
        other_config(),
        ro("hvm", Bool),
        ro("nested_virt", Bool),
        ro("nomigrate", Bool),
        ro("current_domain_type", Enum(DOMAIN_TYPES)),
    ],
    messages: &[],
};

pub static VM_GUEST_METRICS: ClassDecl = ClassDecl {
    name: "VM_guest_metrics",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("os_version", STRING_MAP),
        ro("netbios_name", STRING_MAP),
        ro("PV_drivers_version", STRING_MAP),
        ro("PV_drivers_up_to_date", Bool),
        ro("memory", STRING_MAP),
        ro("disks", STRING_MAP),
        ro("networks", STRING_MAP),
        ro("other", STRING_MAP),
        ro("last_updated", DateTime),
        other_config(),
        ro("live", Bool),
        ro("can_use_hotplug_vbd", Enum(TRISTATE)),
        ro("can_use_hotplug_vif", Enum(TRISTATE)),
        ro("PV_drivers_detected", Bool),
    ],
    messages: &[],
};

pub static CONSOLE: ClassDecl = ClassDecl {
    name: "console",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("protocol", Enum(&["vt100", "rfb", "rdp"])),
        ro("location", String),
        ro("VM", VM_REF),
        other_config(),
    ],
    messages: &[],
};
