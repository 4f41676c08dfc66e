//! The host database: which objects outlive a host reboot, how they map onto keel-hostdb's
//! generic records, and how a start-up puts them back (docs/hostdb.md, "The XenAPI side").
//!
//! Kept: the classes of [`PERSISTED`]. Not kept: sessions (credentials die with the host),
//! tasks, events, host and VM metrics that describe the running host, guest metrics, consoles.
//! Messages are kept, as xapi keeps them.
//!
//! Identities are stable: an object keeps its reference and UUID across reboots. Objects this
//! service makes itself at start-up (the pool, the host, the control domain, the built-in
//! templates, and the SR, PBD and VDI objects mirrored from the storage manager) are made
//! fresh, then given the reference and UUID they had before, and what clients may change on
//! them is put back. Everything else (client VMs and their metrics, messages) is restored as
//! saved, after [`keel_hostdb::apply_host_boot`] has reset what a reboot ends.
//!
//! Saving: after every call, job step or fact update, the kept objects the store marked
//! written are re-read into the kept state; if any record really changed, the whole kept
//! state is handed to the [`DatabaseSink`] before the call's answer leaves
//! [`crate::XenApi`]: an answered change is on disk.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use keel_hostdb::{apply_host_boot, BootPlan, Database, FieldValue, Record};

use crate::api::State;
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::handlers::storage_mirror::storage_name;
use crate::handlers::vm_power;
use crate::handlers::vm_rules::write_vm;
use crate::schema::{Access, ClassDecl, FieldType, Source};
use crate::store::Db;
use crate::tasks;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

/// The classes the host database keeps, in restore order.
pub const PERSISTED: &[&str] = &[
    "pool",
    "host",
    "SR",
    "PBD",
    "VDI",
    "VM_metrics",
    "VM",
    "VBD",
    "message",
    "network",
    "PIF",
    "VLAN",
    "VIF",
];

/// Whether objects of `class` outlive a host reboot.
pub fn is_persisted(class: &str) -> bool {
    PERSISTED.contains(&class)
}

/// Fields of a start-up-made object that clients may have changed and that only the host
/// database remembers.
const ANNOTATIONS: &[&str] = &["name_label", "name_description", "other_config", "tags"];

/// A save did not become durable; the sink has said why (it owns the logging).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaveFailed;

/// Where the host database goes: the kernel's implementation writes it to the database VDI
/// (keel-hostdb's `HostDb::save`).
pub trait DatabaseSink {
    /// Make `database` durable. `Ok` only once it is: a power cut after `Ok` must not lose it.
    fn save(&mut self, database: &Database) -> Result<(), SaveFailed>;
}

/// The saving side of the service's state.
#[derive(Default)]
pub(crate) struct Persistence {
    sink: Option<Box<dyn DatabaseSink>>,
    /// The kept state as of the last [`save_if_changed`], kept up to date object by object
    /// from the store's dirty set (a full export of a thousand VMs costs far more).
    current: Database,
    /// `current` holds changes the sink has not made durable yet.
    unsaved: bool,
    /// VMs to start now that the host has booted (restored, `auto_poweron`).
    auto_start: Vec<String>,
}

impl Persistence {
    pub(crate) fn new(sink: Option<Box<dyn DatabaseSink>>) -> Self {
        Persistence {
            sink,
            ..Persistence::default()
        }
    }
}

/// The outcome of starting one `auto_poweron` VM at host boot.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoStart {
    pub vm: String,
    pub name_label: String,
    /// The task running the start, or why it could not begin.
    pub task: Result<String, ApiError>,
}

/// Saves the kept state if a kept object changed since the last save. A failed save is
/// retried at the next call.
pub(crate) fn save_if_changed(state: &mut State) {
    let dirty = state.db.take_dirty();
    let persistence = &mut state.persist;
    if persistence.sink.is_none() {
        return;
    }
    for (class_name, reference) in dirty {
        let now = state
            .db
            .class(class_name)
            .and_then(|class| Some(record_of(class, state.db.object(&reference)?)));
        let objects = persistence
            .current
            .classes
            .entry(class_name.to_string())
            .or_default();
        let changed = match now {
            Some(record) if objects.get(&reference) != Some(&record) => {
                objects.insert(reference, record);
                true
            }
            Some(_) => false,
            None => objects.remove(&reference).is_some(),
        };
        persistence.unsaved |= changed;
    }
    if !persistence.unsaved {
        return;
    }
    persistence
        .current
        .classes
        .retain(|_, objects| !objects.is_empty());
    if let Some(sink) = persistence.sink.as_mut() {
        if sink.save(&persistence.current).is_ok() {
            persistence.unsaved = false;
        }
    }
}

/// Every object of the kept classes, every stored field.
pub fn export(db: &Db) -> Database {
    let mut database = Database::new();
    for name in PERSISTED {
        let Some(class) = db.class(name) else {
            continue;
        };
        for reference in db.refs(name) {
            let Some(object) = db.object(&reference) else {
                continue;
            };
            database.insert(name, &reference, record_of(class, object));
        }
    }
    database
}

/// One object's stored fields as a record.
fn record_of(class: &ClassDecl, object: &crate::store::Object) -> Record {
    debug_assert!(core::ptr::eq(class, object.class));
    object
        .stored_fields()
        .map(|(decl, value)| (decl.name.to_string(), to_field(&decl.ty, value)))
        .collect()
}

fn stored_fields(class: &ClassDecl) -> impl Iterator<Item = &'static crate::schema::FieldDecl> {
    class.fields.iter().filter(|f| f.source == Source::Stored)
}

fn to_field(ty: &FieldType, value: &Value) -> FieldValue {
    match value {
        Value::Nil => FieldValue::Nil,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Int(i) => FieldValue::Int(*i),
        Value::Float(f) => FieldValue::Float(*f),
        Value::String(text) if matches!(ty, FieldType::Ref(_)) => FieldValue::Ref(text.clone()),
        Value::String(text) => FieldValue::String(text.clone()),
        Value::DateTime(text) => FieldValue::DateTime(text.clone()),
        Value::Array(items) => {
            let inner = match ty {
                FieldType::RefSet(class) => FieldType::Ref(class),
                FieldType::Set(inner) => **inner,
                _ => FieldType::Any,
            };
            FieldValue::Set(items.iter().map(|item| to_field(&inner, item)).collect())
        }
        Value::Struct(entries) => {
            let inner = match ty {
                FieldType::Map(_, inner) => **inner,
                _ => FieldType::Any,
            };
            FieldValue::Map(
                entries
                    .iter()
                    .map(|(key, item)| (key.clone(), to_field(&inner, item)))
                    .collect(),
            )
        }
    }
}

fn from_field(value: &FieldValue) -> Value {
    match value {
        FieldValue::Nil => Value::Nil,
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::Int(i) => Value::Int(*i),
        FieldValue::Float(f) => Value::Float(*f),
        FieldValue::String(text) | FieldValue::Ref(text) => Value::String(text.clone()),
        FieldValue::DateTime(text) => Value::DateTime(text.clone()),
        FieldValue::Set(items) => Value::Array(items.iter().map(from_field).collect()),
        FieldValue::Map(entries) => Value::Struct(
            entries
                .iter()
                .map(|(key, item)| (key.clone(), from_field(item)))
                .collect(),
        ),
    }
}

/// Whether `value` has the shape fields of type `ty` have (a saved value of a field whose
/// type has since changed is replaced by the default).
fn fits(ty: &FieldType, value: &Value) -> bool {
    match (ty, value) {
        (FieldType::Any, _) => true,
        (FieldType::String | FieldType::Ref(_), Value::String(_)) => true,
        (FieldType::Enum(names), Value::String(text)) => names.contains(&text.as_str()),
        (FieldType::Bool, Value::Bool(_))
        | (FieldType::Int, Value::Int(_))
        | (FieldType::Float, Value::Float(_))
        | (FieldType::DateTime, Value::DateTime(_)) => true,
        (FieldType::RefSet(_), Value::Array(items)) => {
            items.iter().all(|item| matches!(item, Value::String(_)))
        }
        (FieldType::Set(inner), Value::Array(items)) => items.iter().all(|item| fits(inner, item)),
        (FieldType::Map(_, inner), Value::Struct(entries)) => {
            entries.values().all(|item| fits(inner, item))
        }
        _ => false,
    }
}

/// The saved fields of `record` the schema still declares with the same shape.
pub(crate) fn restorable(
    class: &'static ClassDecl,
    record: &Record,
) -> BTreeMap<&'static str, Value> {
    stored_fields(class)
        .filter_map(|decl| {
            let value = from_field(record.get(decl.name)?);
            fits(&decl.ty, &value).then_some((decl.name, value))
        })
        .collect()
}

/// What of a saved object is put back onto the one made at start-up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Reference and UUID only.
    Identity,
    /// Also [`ANNOTATIONS`].
    Annotations,
    /// Also every field clients can write (the pool and the host).
    Writable,
}

struct Match {
    class: &'static str,
    saved: String,
    live: String,
    keep: Keep,
}

fn text_of<'a>(record: &'a Record, field: &str) -> Option<&'a str> {
    match record.get(field) {
        Some(FieldValue::String(text) | FieldValue::Ref(text)) => Some(text),
        _ => None,
    }
}

fn flag_of(record: &Record, field: &str) -> bool {
    matches!(record.get(field), Some(FieldValue::Bool(true)))
}

fn live_text(db: &Db, reference: &str, field: &str) -> String {
    db.get(reference, field)
        .and_then(|value| value.as_str().map(String::from))
        .unwrap_or_default()
}

/// Pairs each start-up-made object with the saved object it continues.
fn match_builtins(state: &State, saved: &Database) -> Vec<Match> {
    let db = &state.db;
    let mut matches = Vec::new();
    let mut add = |class: &'static str, saved: &str, live: &str, keep: Keep| {
        matches.push(Match {
            class,
            saved: saved.to_string(),
            live: live.to_string(),
            keep,
        })
    };
    if let Some((reference, _)) = saved.objects("pool").next() {
        add("pool", reference, &state.pool, Keep::Writable);
    }
    if let Some((reference, _)) = saved.objects("host").next() {
        add("host", reference, &state.host, Keep::Writable);
    }
    for class in ["SR", "VDI"] {
        for (reference, record) in saved.objects(class) {
            let live = text_of(record, "uuid").and_then(|uuid| db.find_by_uuid(class, uuid));
            if let Some(live) = live {
                add(class, reference, &live, Keep::Annotations);
            }
        }
    }
    for (reference, record) in saved.objects("PBD") {
        let sr_uuid = text_of(record, "SR")
            .and_then(|sr| saved.get("SR", sr))
            .and_then(|sr| text_of(sr, "uuid"));
        let live_sr = sr_uuid.and_then(|uuid| db.find_by_uuid("SR", uuid));
        let live = live_sr.and_then(|sr| {
            db.refs("PBD")
                .into_iter()
                .find(|pbd| live_text(db, pbd, "SR") == sr)
        });
        if let Some(live) = live {
            add("PBD", reference, &live, Keep::Identity);
        }
    }
    let live_vms = db.refs("VM");
    let mut taken = BTreeSet::new();
    for (reference, record) in saved.objects("VM") {
        let live = if flag_of(record, "is_control_domain") {
            live_vms
                .iter()
                .find(|vm| db.get(vm, "is_control_domain") == Some(Value::Bool(true)))
        } else if flag_of(record, "is_default_template") {
            let name = text_of(record, "name_label").unwrap_or("");
            live_vms.iter().find(|vm| {
                db.get(vm, "is_default_template") == Some(Value::Bool(true))
                    && live_text(db, vm, "name_label") == name
            })
        } else {
            None
        };
        let Some(live) = live.filter(|vm| taken.insert((*vm).clone())) else {
            continue;
        };
        add("VM", reference, live, Keep::Annotations);
        if let Some(metrics) = text_of(record, "metrics").filter(|m| *m != NULL_REF) {
            add(
                "VM_metrics",
                metrics,
                &live_text(db, live, "metrics"),
                Keep::Identity,
            );
        }
    }
    matches
}

/// Puts the saved objects back (module docs) and returns what the host boot did to them;
/// the VMs to start are kept for [`start_auto_poweron_vms`].
pub(crate) fn restore(state: &mut State, mut saved: Database, now: Timestamp) -> BootPlan {
    let mut plan = apply_host_boot(&mut saved);
    let matches = match_builtins(state, &saved);
    // References first, so that restored fields pointing at these objects resolve.
    let mut continued: BTreeMap<String, String> = BTreeMap::new();
    for m in &matches {
        let target = if m.saved != m.live && state.db.rename(&m.live, &m.saved) {
            if state.pool == m.live {
                state.pool = m.saved.clone();
            }
            if state.host == m.live {
                state.host = m.saved.clone();
            }
            m.saved.clone()
        } else {
            m.live.clone()
        };
        continued.insert(m.saved.clone(), target);
    }
    for m in &matches {
        let (Some(class), Some(record), Some(target)) = (
            state.db.class(m.class),
            saved.get(m.class, &m.saved),
            continued.get(&m.saved),
        ) else {
            continue;
        };
        let mut changes: Vec<(&'static str, Value)> = Vec::new();
        let storage_identity = matches!(m.class, "SR" | "VDI");
        for (name, value) in restorable(class, record) {
            let wanted = match m.keep {
                _ if name == "uuid" => !storage_identity,
                Keep::Identity => false,
                Keep::Annotations => ANNOTATIONS.contains(&name),
                Keep::Writable => class
                    .field(name)
                    .is_some_and(|decl| decl.access == Access::ReadWrite),
            };
            // The storage manager keeps a VDI's name (as `storage_name` shapes it): the saved
            // label comes back only if it is still the one the storage manager holds.
            let stale_name = m.class == "VDI"
                && name == "name_label"
                && value
                    .as_str()
                    .is_none_or(|label| storage_name(label) != live_text(&state.db, target, name));
            if wanted && !stale_name {
                changes.push((name, value));
            }
        }
        let changes = without_dangling(&state.db, class, changes);
        crate::store::consistent(state.db.update(target, changes, now));
    }
    // Then everything clients made.
    let continued_saved: BTreeSet<&str> = matches.iter().map(|m| m.saved.as_str()).collect();
    let mut restored_vms = Vec::new();
    let mut restored_vbds = Vec::new();
    for name in ["VM_metrics", "VM", "VBD", "message"] {
        let Some(class) = state.db.class(name) else {
            continue;
        };
        for (reference, record) in saved.objects(name) {
            let builtin =
                flag_of(record, "is_control_domain") || flag_of(record, "is_default_template");
            if builtin || continued_saved.contains(reference.as_str()) {
                continue;
            }
            if state
                .db
                .restore(class, reference, restorable(class, record), now)
            {
                match name {
                    "VM" => restored_vms.push(reference.clone()),
                    "VBD" => restored_vbds.push(reference.clone()),
                    _ => {}
                }
            }
        }
    }
    for vm in &restored_vms {
        repair_vm(&mut state.db, vm, now);
    }
    crate::store::consistent(crate::handlers::vbd::repair_restored(
        &mut state.db,
        &restored_vbds,
        now,
    ));
    crate::handlers::network_persist::restore(state, &saved, now);
    // Metrics of VMs that did not come back.
    for metrics in state.db.refs("VM_metrics") {
        let owned = state
            .db
            .refs("VM")
            .iter()
            .any(|vm| live_text(&state.db, vm, "metrics") == metrics);
        if !owned {
            crate::store::consistent(state.db.destroy(&metrics, now));
        }
    }
    plan.auto_start.retain(|vm| restored_vms.contains(vm));
    state.persist.auto_start = plan.auto_start.clone();
    plan
}

/// A restored VM's references to objects that did not come back become null, it gets its
/// own metrics object if it lost it, and its `allowed_operations` follow its power state.
fn repair_vm(db: &mut Db, vm: &str, now: Timestamp) {
    let Some(class) = db.class("VM") else {
        return;
    };
    let current: Vec<(&'static str, Value)> = stored_fields(class)
        .filter_map(|decl| Some((decl.name, db.get(vm, decl.name)?)))
        .collect();
    let mut changes = without_dangling(db, class, current);
    let metrics = changes
        .iter()
        .find(|(name, _)| *name == "metrics")
        .and_then(|(_, value)| value.as_str())
        .is_some_and(|metrics| db.is_a(metrics, "VM_metrics"));
    if !metrics {
        if let Some(metrics_class) = db.class("VM_metrics") {
            let fresh = db.create(metrics_class, Vec::new(), now);
            changes.push(("metrics", Value::String(fresh)));
        }
    }
    crate::store::consistent(write_vm(db, vm, changes, now));
}

/// `changes` with every reference to a missing object replaced by the null reference (or
/// left out of its set).
fn without_dangling(
    db: &Db,
    class: &ClassDecl,
    changes: Vec<(&'static str, Value)>,
) -> Vec<(&'static str, Value)> {
    changes
        .into_iter()
        .map(|(name, value)| {
            let value = match class.field(name).map(|decl| decl.ty) {
                Some(FieldType::Ref(target)) => match value.as_str() {
                    Some(r) if r != NULL_REF && !db.is_a(r, target) => Value::str(NULL_REF),
                    _ => value,
                },
                Some(FieldType::RefSet(target)) => match value {
                    Value::Array(items) => Value::Array(
                        items
                            .into_iter()
                            .filter(|item| item.as_str().is_some_and(|r| db.is_a(r, target)))
                            .collect(),
                    ),
                    other => other,
                },
                _ => value,
            };
            (name, value)
        })
        .collect()
}

/// Starts, each as an `Async.VM.start` task, the VMs the host boot selected (restored,
/// halted, `other_config:auto_poweron=true`), in their start order. Once: a second call
/// starts nothing.
pub(crate) fn start_auto_poweron_vms(state: &mut State, now: Timestamp) -> Vec<AutoStart> {
    let vms = core::mem::take(&mut state.persist.auto_start);
    let mut started = Vec::new();
    for vm in vms {
        if !state.db.is_a(&vm, "VM") {
            continue;
        }
        let name_label = live_text(&state.db, &vm, "name_label");
        let mut ctx = CallContext {
            state,
            now,
            session: None,
        };
        let args = Args::new(vec![
            Value::String(vm.clone()),
            Value::Bool(false),
            Value::Bool(false),
        ]);
        let task = match vm_power::start(&mut ctx, &args) {
            Err(e) => Err(e),
            Ok(outcome @ Outcome::Job(_)) | Ok(outcome @ Outcome::Value(_)) => {
                tasks::start_async(&mut ctx, "Async.VM.start", Ok(outcome))
            }
            Ok(Outcome::Wait(_)) => Err(ApiError::InternalError {
                message: "VM.start waited".to_string(),
            }),
        };
        started.push(AutoStart {
            vm,
            name_label,
            task,
        });
    }
    started
}
