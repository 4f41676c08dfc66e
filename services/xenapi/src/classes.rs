//! The data model: one declaration per class. Everything clients can call or read about
//! these classes is derived from the tables below (see `schema.rs` and the README).
//!
//! To add a class: write a `pub static NAME: ClassDecl`, list it in [`ALL`], and put its
//! custom messages' handlers in a module of `handlers/`.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;

use crate::api::{HostFacts, API_VERSION_MAJOR, API_VERSION_MINOR};
use crate::error::ApiError;
use crate::handlers::{event, host, message, session, task};
use crate::schema::FieldType::{self, *};
use crate::schema::{
    inverse, msg, param, ro, rw, ClassDecl, ClassFlags, FieldDecl, MessageDecl, OBJECTS,
};
use crate::store::{consistent, Db};
use crate::tasks::STATUS;
use crate::time::Timestamp;
use crate::value::Value;

/// Every class of the model, in `system.listMethods` order.
pub static ALL: &[&ClassDecl] = &[
    &SESSION,
    &POOL,
    &HOST,
    &HOST_METRICS,
    &TASK,
    &EVENT,
    &MESSAGE,
    &crate::classes_storage::SR,
    &crate::classes_storage::PBD,
    &crate::classes_storage::VDI,
    &crate::classes_vm::VM,
    &crate::classes_vm::VM_METRICS,
    &crate::classes_vm::VM_GUEST_METRICS,
    &crate::classes_vm::CONSOLE,
    &crate::classes_network::NETWORK,
    &crate::classes_network::PIF,
    &crate::classes_network::PIF_METRICS,
    &crate::classes_network::VIF,
    &crate::classes_network::VIF_METRICS,
    &crate::classes_network::VLAN,
    &crate::classes_vbd::VBD,
    &crate::classes_vbd::VBD_METRICS,
];

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

pub static SESSION: ClassDecl = ClassDecl {
    name: "session",
    flags: ClassFlags {
        objects: true,
        list_all: false,
        events: false,
    },
    fields: &[
        uuid(),
        ro("this_host", Ref("host")),
        ro("this_user", Ref("user")),
        ro("last_active", DateTime),
        ro("pool", Bool),
        other_config(),
        ro("is_local_superuser", Bool),
        ro("subject", Ref("subject")),
        ro("validation_time", DateTime),
        ro("auth_user_sid", String),
        ro("auth_user_name", String),
        ro("rbac_permissions", STRING_SET),
        ro("parent", Ref("session")),
        ro("originator", String),
    ],
    messages: &[
        MessageDecl {
            name: "login_with_password",
            params: &[
                param("uname", String),
                param("pwd", String),
                param("version", String),
                param("originator", String),
            ],
            optional_tail: 2,
            session: false,
            asyncable: false,
            handler: session::login_with_password,
        },
        msg("logout", &[], session::logout),
    ],
};

pub static POOL: ClassDecl = ClassDecl {
    name: "pool",
    flags: OBJECTS,
    fields: &[
        uuid(),
        name_label(),
        name_description(),
        ro("master", Ref("host")),
        rw("default_SR", Ref("SR")),
        rw("suspend_image_SR", Ref("SR")),
        rw("crash_dump_SR", Ref("SR")),
        other_config(),
        tags(),
        ro("ha_enabled", Bool),
        rw("gui_config", STRING_MAP),
        ro("restrictions", STRING_MAP),
        ro("cpu_info", STRING_MAP),
        ro("allowed_operations", STRING_SET),
        ro("current_operations", STRING_MAP),
    ],
    messages: &[
        msg("sync_database", &[], host::pool_sync_database).asyncable(),
        // Pool-wide VLANs: on a one-host pool, VLAN.create on that host's interface. Xen
        // Orchestra makes its VLAN networks with create_VLAN_from_PIF.
        msg(
            "create_VLAN_from_PIF",
            &[
                param("pif", Ref("PIF")),
                param("network", Ref("network")),
                param("VLAN", Int),
            ],
            crate::handlers::vlan::pool_create_vlan_from_pif,
        )
        .asyncable(),
        msg(
            "create_VLAN",
            &[
                param("device", String),
                param("network", Ref("network")),
                param("VLAN", Int),
            ],
            crate::handlers::vlan::pool_create_vlan,
        )
        .asyncable(),
    ],
};

pub static HOST: ClassDecl = ClassDecl {
    name: "host",
    flags: OBJECTS,
    fields: &[
        uuid(),
        name_label(),
        name_description(),
        ro("allowed_operations", STRING_SET),
        ro("current_operations", STRING_MAP),
        ro("API_version_major", Int),
        ro("API_version_minor", Int),
        ro("API_version_vendor", String),
        ro("API_version_vendor_implementation", STRING_MAP),
        ro("enabled", Bool),
        ro("software_version", STRING_MAP),
        other_config(),
        ro("capabilities", STRING_SET),
        ro("cpu_configuration", STRING_MAP),
        ro("sched_policy", String),
        ro("supported_bootloaders", STRING_SET),
        rw("logging", STRING_MAP),
        ro("hostname", String),
        ro("address", String),
        ro("metrics", Ref("host_metrics")),
        ro("cpu_info", STRING_MAP),
        ro("memory_overhead", Int),
        tags(),
        ro("bios_strings", STRING_MAP),
        ro("edition", String),
        ro("license_params", STRING_MAP),
        ro("chipset_info", STRING_MAP),
        ro("control_domain", Ref("VM")),
        // Filled by the classes later issues declare: they point back at the host.
        inverse("resident_VMs", "VM", "resident_on"),
        inverse("PIFs", "PIF", "host"),
        inverse("PBDs", "PBD", "host"),
    ],
    messages: &[
        msg(
            "get_servertime",
            &[param("host", Ref("host"))],
            host::host_get_servertime,
        ),
        // Performance data (metrics.rs, docs/metering.md).
        msg(
            "get_data_sources",
            &[param("host", Ref("host"))],
            crate::metrics::host_get_data_sources,
        ),
        msg(
            "query_data_source",
            &[param("host", Ref("host")), param("data_source", String)],
            crate::metrics::host_query_data_source,
        ),
        msg(
            "record_data_source",
            &[param("host", Ref("host")), param("data_source", String)],
            crate::metrics::host_record_data_source,
        ),
    ],
};

pub static HOST_METRICS: ClassDecl = ClassDecl {
    name: "host_metrics",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("memory_total", Int),
        ro("memory_free", Int),
        ro("live", Bool),
        ro("last_updated", DateTime),
        other_config(),
    ],
    messages: &[],
};

pub static TASK: ClassDecl = ClassDecl {
    name: "task",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("name_label", String),
        ro("name_description", String),
        ro("allowed_operations", Set(&Enum(&["cancel", "destroy"]))),
        ro("current_operations", STRING_MAP),
        ro("created", DateTime),
        ro("finished", DateTime),
        ro("status", Enum(STATUS)),
        ro("resident_on", Ref("host")),
        ro("progress", Float),
        ro("type", String),
        ro("result", String),
        ro("error_info", STRING_SET),
        other_config(),
        ro("subtask_of", Ref("task")),
        inverse("subtasks", "task", "subtask_of"),
        ro("backtrace", String),
    ],
    messages: &[
        msg(
            "create",
            &[param("label", String), param("description", String)],
            task::task_create,
        ),
        msg("destroy", &[param("self", Ref("task"))], task::task_destroy),
        msg("cancel", &[param("task", Ref("task"))], task::task_cancel),
    ],
};

pub static EVENT: ClassDecl = ClassDecl {
    name: "event",
    flags: ClassFlags {
        objects: false,
        list_all: false,
        events: false,
    },
    // The shape of an event record (documentation; events are not stored objects).
    fields: &[
        ro("id", Int),
        ro("timestamp", String),
        ro("class", String),
        ro("operation", Enum(&["add", "del", "mod"])),
        ro("ref", String),
        ro("obj_uuid", String),
        ro("snapshot", Any),
    ],
    messages: &[
        msg("register", &[param("classes", STRING_SET)], event::register),
        msg(
            "unregister",
            &[param("classes", STRING_SET)],
            event::unregister,
        ),
        msg("next", &[], event::next),
        msg(
            "from",
            &[
                param("classes", STRING_SET),
                param("token", String),
                param("timeout", Float),
            ],
            event::from,
        ),
        msg(
            "inject",
            &[param("class", String), param("ref", String)],
            event::inject,
        ),
        msg("get_current_id", &[], event::get_current_id),
    ],
};

pub const MESSAGE_CLS: &[&str] = &[
    "VM",
    "Host",
    "SR",
    "Pool",
    "VMPP",
    "VMSS",
    "PVS_proxy",
    "VDI",
    "Certificate",
];

pub static MESSAGE: ClassDecl = ClassDecl {
    name: "message",
    flags: OBJECTS,
    fields: &[
        uuid(),
        ro("name", String),
        ro("priority", Int),
        ro("cls", Enum(MESSAGE_CLS)),
        ro("obj_uuid", String),
        ro("timestamp", DateTime),
        ro("body", String),
    ],
    messages: &[
        msg(
            "create",
            &[
                param("name", String),
                param("priority", Int),
                param("cls", Enum(MESSAGE_CLS)),
                param("obj_uuid", String),
                param("body", String),
            ],
            message::message_create,
        ),
        msg(
            "destroy",
            &[param("self", Ref("message"))],
            message::message_destroy,
        ),
        msg(
            "get_since",
            &[param("since", DateTime)],
            message::message_get_since,
        ),
    ],
};

/// Create host_metrics, host and pool (in that order, so refs point at existing objects).
/// Returns (host_metrics, host, pool).
pub(crate) fn create_singletons(
    db: &mut Db,
    facts: &HostFacts,
    now: Timestamp,
) -> (String, String, String) {
    let metrics = db.create(&HOST_METRICS, vec![("live", Value::Bool(true))], now);
    let host = db.create(
        &HOST,
        vec![
            ("name_label", Value::String(facts.hostname.clone())),
            ("API_version_major", Value::Int(API_VERSION_MAJOR)),
            ("API_version_minor", Value::Int(API_VERSION_MINOR)),
            ("API_version_vendor", Value::str("XenSource")),
            ("enabled", Value::Bool(true)),
            ("metrics", Value::String(metrics.clone())),
            ("sched_policy", Value::str("credit")),
            ("edition", Value::str("free")),
            (
                // What VM.start accepts in PV_bootloader besides "" (docs/guests.md, pygrub).
                "supported_bootloaders",
                Value::string_array(["pygrub"]),
            ),
        ],
        now,
    );
    let pool = db.create(&POOL, vec![("master", Value::String(host.clone()))], now);
    consistent(apply_facts(db, &host, &metrics, facts, now));
    (metrics, host, pool)
}

/// Write measured facts into host and host_metrics, publishing only real changes.
pub(crate) fn apply_facts(
    db: &mut Db,
    host: &str,
    metrics: &str,
    facts: &HostFacts,
    now: Timestamp,
) -> Result<(), ApiError> {
    let mut cpu_info = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        cpu_info.insert(k.to_string(), Value::String(v));
    };
    put("cpu_count", facts.cpu_count.to_string());
    put("socket_count", facts.socket_count.to_string());
    put("vendor", facts.cpu_vendor.clone());
    put("modelname", facts.cpu_model_name.clone());
    put("speed", facts.cpu_speed_mhz.to_string());
    put("family", facts.cpu_family.to_string());
    put("model", facts.cpu_model.to_string());
    put("stepping", facts.cpu_stepping.to_string());
    put("flags", facts.cpu_flags.clone());

    let mut software = BTreeMap::new();
    let api = alloc::format!("{API_VERSION_MAJOR}.{API_VERSION_MINOR}");
    for (k, v) in [
        ("product_brand", "Keel"),
        ("product_version", facts.product_version.as_str()),
        ("platform_name", "Keel"),
        ("platform_version", facts.product_version.as_str()),
        ("xen", facts.xen_version.as_str()),
        ("xapi", api.as_str()),
        ("hostname", facts.hostname.as_str()),
    ] {
        software.insert(k.to_string(), Value::str(v));
    }
    for (k, v) in &facts.extra_software_version {
        software.insert(k.clone(), Value::String(v.clone()));
    }

    let host_changes = vec![
        ("hostname", Value::String(facts.hostname.clone())),
        ("address", Value::String(facts.address.clone())),
        ("cpu_info", Value::Struct(cpu_info)),
        ("software_version", Value::Struct(software)),
    ];
    db.update(host, host_changes, now)?;
    let metrics_changes = vec![
        (
            "memory_total",
            Value::Int(clamp_i64(facts.memory_total_bytes)),
        ),
        (
            "memory_free",
            Value::Int(clamp_i64(facts.memory_free_bytes)),
        ),
        ("live", Value::Bool(true)),
    ];
    if db.update(metrics, metrics_changes, now)? {
        let stamp = vec![("last_updated", Value::DateTime(now.to_xapi_datetime()))];
        db.set(metrics, stamp, now)?;
    }
    Ok(())
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
