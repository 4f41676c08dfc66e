//! The storage classes of the data model: SR, PBD and VDI (declarations only; the handlers
//! are in `handlers/sr.rs` and `handlers/vdi.rs`). Objects mirror the storage manager's SRs
//! and VDIs (see `storage.rs`); UUIDs are the storage manager's, so they survive reboots.

use crate::handlers::{sr, vdi};
use crate::schema::FieldType::{self, *};
use crate::schema::{inverse, msg, param, ro, rw, ClassDecl, FieldDecl, OBJECTS};

const STRING_MAP: FieldType = Map(&String, &String);
const STRING_SET: FieldType = Set(&String);

const fn uuid() -> FieldDecl {
    ro("uuid", String)
}
const fn name_label() -> FieldDecl {
    rw("name_label", String)
}
const fn name_description() -> FieldDecl {
    rw("name_description", String)
}
const fn other_config() -> FieldDecl {
    rw("other_config", STRING_MAP)
}
const fn tags() -> FieldDecl {
    rw("tags", STRING_SET)
}

/// xapi's `storage_operations`.
pub const SR_OPERATIONS: &[&str] = &[
    "scan",
    "destroy",
    "forget",
    "plug",
    "unplug",
    "update",
    "vdi_create",
    "vdi_introduce",
    "vdi_destroy",
    "vdi_resize",
    "vdi_clone",
    "vdi_snapshot",
    "vdi_mirror",
    "vdi_enable_cbt",
    "vdi_disable_cbt",
    "vdi_data_destroy",
    "vdi_list_changed_blocks",
    "vdi_set_on_boot",
    "vdi_blocked",
    "vdi_copy",
    "vdi_force_unlock",
    "vdi_forget",
    "vdi_generate_config",
    "vdi_resize_online",
    "vdi_update",
    "pbd_create",
    "pbd_destroy",
];

/// xapi's `vdi_operations`.
pub const VDI_OPERATIONS: &[&str] = &[
    "clone",
    "copy",
    "resize",
    "resize_online",
    "snapshot",
    "mirror",
    "destroy",
    "forget",
    "update",
    "force_unlock",
    "generate_config",
    "enable_cbt",
    "disable_cbt",
    "data_destroy",
    "list_changed_blocks",
    "set_on_boot",
    "blocked",
];

/// xapi's `vdi_type`.
pub const VDI_TYPES: &[&str] = &[
    "system",
    "user",
    "ephemeral",
    "suspend",
    "crashdump",
    "ha_statefile",
    "metadata",
    "redo_log",
    "rrd",
    "pvs_cache",
    "cbt_metadata",
];

/// The SR `type` Keel's SRs report.
pub const SR_TYPE: &str = "keel";

pub static SR: ClassDecl = ClassDecl {
    name: "SR",
    flags: OBJECTS,
    fields: &[
        uuid(),
        name_label(),
        name_description(),
        ro("allowed_operations", Set(&Enum(SR_OPERATIONS))),
        ro("current_operations", STRING_MAP),
        inverse("VDIs", "VDI", "SR"),
        inverse("PBDs", "PBD", "SR"),
        ro("virtual_allocation", Int),
        ro("physical_utilisation", Int),
        ro("physical_size", Int),
        ro("type", String),
        ro("content_type", String),
        ro("shared", Bool),
        other_config(),
        tags(),
        ro("sm_config", STRING_MAP),
        ro("blobs", Map(&String, &Ref("blob"))),
        ro("local_cache_enabled", Bool),
        ro("introduced_by", Ref("DR_task")),
        ro("clustered", Bool),
        ro("is_tools_sr", Bool),
    ],
    messages: &[
        msg("scan", &[param("sr", Ref("SR"))], sr::sr_scan).asyncable(),
        msg("update", &[param("sr", Ref("SR"))], sr::sr_scan).asyncable(),
        msg("get_supported_types", &[], sr::sr_get_supported_types),
    ],
};

pub static PBD: ClassDecl = ClassDecl {
    name: "PBD",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("host", Ref("host")),
        ro("SR", Ref("SR")),
        ro("device_config", STRING_MAP),
        ro("currently_attached", Bool),
        other_config(),
    ],
    messages: &[
        msg("plug", &[param("self", Ref("PBD"))], sr::pbd_plug).asyncable(),
        msg("unplug", &[param("self", Ref("PBD"))], sr::pbd_unplug).asyncable(),
    ],
};

pub static VDI: ClassDecl = ClassDecl {
    name: "VDI",
    flags: OBJECTS,
    fields: &[
        uuid(),
        name_label(),
        name_description(),
        ro("allowed_operations", Set(&Enum(VDI_OPERATIONS))),
        // Task reference -> operation; a VDI with an entry is busy (`VDI_IN_USE`).
        ro("current_operations", STRING_MAP),
        ro("SR", Ref("SR")),
        inverse("VBDs", "VBD", "VDI"),
        ro("crash_dumps", RefSet("crashdump")),
        ro("virtual_size", Int),
        ro("physical_utilisation", Int),
        ro("type", Enum(VDI_TYPES)),
        ro("sharable", Bool),
        ro("read_only", Bool),
        other_config(),
        ro("storage_lock", Bool),
        ro("location", String),
        ro("managed", Bool),
        ro("missing", Bool),
        ro("parent", Ref("VDI")),
        ro("xenstore_data", STRING_MAP),
        ro("sm_config", STRING_MAP),
        ro("is_a_snapshot", Bool),
        ro("snapshot_of", Ref("VDI")),
        inverse("snapshots", "VDI", "snapshot_of"),
        ro("snapshot_time", DateTime),
        tags(),
        ro("allow_caching", Bool),
        ro("on_boot", Enum(&["persist", "reset"])),
        ro("metadata_of_pool", Ref("pool")),
        ro("metadata_latest", Bool),
        ro("is_tools_iso", Bool),
        ro("cbt_enabled", Bool),
    ],
    messages: &[
        msg(
            "create",
            &[param("args", Map(&String, &Any))],
            vdi::vdi_create,
        )
        .asyncable(),
        msg("destroy", &[param("self", Ref("VDI"))], vdi::vdi_destroy).asyncable(),
        // Replaces the generated setter: the storage manager keeps the name too.
        msg(
            "set_name_label",
            &[param("self", Ref("VDI")), param("value", String)],
            vdi::vdi_set_name_label,
        ),
        msg(
            "resize",
            &[param("vdi", Ref("VDI")), param("size", Int)],
            vdi::vdi_resize,
        )
        .asyncable(),
        msg(
            "snapshot",
            &[param("vdi", Ref("VDI")), param("driver_params", STRING_MAP)],
            vdi::vdi_snapshot,
        )
        .asyncable()
        .optional_tail(1),
        msg(
            "clone",
            &[param("vdi", Ref("VDI")), param("driver_params", STRING_MAP)],
            vdi::vdi_clone,
        )
        .asyncable()
        .optional_tail(1),
        // `base_vdi` and `into_vdi` are refs that may be NULL; the handler checks them.
        msg(
            "copy",
            &[
                param("vdi", Ref("VDI")),
                param("sr", Ref("SR")),
                param("base_vdi", String),
                param("into_vdi", String),
            ],
            vdi::vdi_copy,
        )
        .asyncable()
        .optional_tail(2),
    ],
};
