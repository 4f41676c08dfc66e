//! The virtual block device classes of the data model: `VBD` and `VBD_metrics`
//! (declarations only; the handlers are in `handlers/vbd.rs`).
//!
//! Every field of xapi's records is present. A VBD joins a VM to a VDI (or to nothing: an
//! empty CD drive); `VM.VBDs` and `VDI.VBDs` are its inverses, so they can never disagree.

use crate::handlers::vbd;
use crate::schema::FieldType::{self, *};
use crate::schema::{msg, param, ro, rw, ClassDecl, FieldDecl, OBJECTS};

const STRING_MAP: FieldType = Map(&String, &String);
const STRING_SET: FieldType = Set(&String);

const fn uuid() -> FieldDecl {
    ro("uuid", String)
}
const fn other_config() -> FieldDecl {
    rw("other_config", STRING_MAP)
}

/// xapi's `vbd_operations`.
pub const VBD_OPERATIONS: &[&str] = &[
    "attach",
    "eject",
    "insert",
    "plug",
    "unplug",
    "unplug_force",
    "pause",
    "unpause",
];
/// xapi's `vbd_mode`.
pub const VBD_MODES: &[&str] = &["RO", "RW"];
/// xapi's `vbd_type`.
pub const VBD_TYPES: &[&str] = &["CD", "Disk", "Floppy"];

const VBD_REF: FieldType = Ref("VBD");

pub static VBD: ClassDecl = ClassDecl {
    name: "VBD",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("allowed_operations", Set(&Enum(VBD_OPERATIONS))),
        ro("current_operations", STRING_MAP),
        ro("VM", Ref("VM")),
        ro("VDI", Ref("VDI")),
        // The guest's name for it (`xvda`), from `userdevice`.
        ro("device", String),
        // `userdevice`, `mode` and `type` change through checked messages (below).
        ro("userdevice", String),
        rw("bootable", Bool),
        ro("mode", Enum(VBD_MODES)),
        ro("type", Enum(VBD_TYPES)),
        // Its setter is checked (below): `allowed_operations` follows it.
        ro("unpluggable", Bool),
        ro("storage_lock", Bool),
        ro("empty", Bool),
        other_config(),
        ro("currently_attached", Bool),
        ro("status_code", Int),
        ro("status_detail", String),
        ro("runtime_properties", STRING_MAP),
        rw("qos_algorithm_type", String),
        rw("qos_algorithm_params", STRING_MAP),
        ro("qos_supported_algorithms", STRING_SET),
        ro("metrics", Ref("VBD_metrics")),
    ],
    messages: &[
        msg("create", &[param("args", Map(&String, &Any))], vbd::create).asyncable(),
        msg("destroy", &[param("self", VBD_REF)], vbd::destroy).asyncable(),
        msg("plug", &[param("self", VBD_REF)], vbd::plug).asyncable(),
        msg("unplug", &[param("self", VBD_REF)], vbd::unplug).asyncable(),
        msg("unplug_force", &[param("self", VBD_REF)], vbd::unplug_force).asyncable(),
        msg(
            "insert",
            &[param("vbd", VBD_REF), param("vdi", Ref("VDI"))],
            vbd::insert,
        )
        .asyncable(),
        msg("eject", &[param("vbd", VBD_REF)], vbd::eject).asyncable(),
        msg(
            "assert_attachable",
            &[param("self", VBD_REF)],
            vbd::assert_attachable,
        )
        .asyncable(),
        msg(
            "set_userdevice",
            &[param("self", VBD_REF), param("value", String)],
            vbd::set_userdevice,
        ),
        msg(
            "set_unpluggable",
            &[param("self", VBD_REF), param("value", Bool)],
            vbd::set_unpluggable,
        ),
        msg(
            "set_mode",
            &[param("self", VBD_REF), param("value", Enum(VBD_MODES))],
            vbd::set_mode,
        ),
        msg(
            "set_type",
            &[param("self", VBD_REF), param("value", Enum(VBD_TYPES))],
            vbd::set_type,
        ),
    ],
};

pub static VBD_METRICS: ClassDecl = ClassDecl {
    name: "VBD_metrics",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("io_read_kbs", Float),
        ro("io_write_kbs", Float),
        ro("last_updated", DateTime),
        other_config(),
    ],
    messages: &[],
};
