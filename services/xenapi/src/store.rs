//! The object database: every XenAPI object, generic over the declared schema.
//!
//! Objects are rows of `field name -> Value` tagged with their class declaration. All writes
//! go through [`Db`] so each one publishes its event (for classes with events on): no code
//! path can change an object without watchers seeing it.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use crate::error::ApiError;
use crate::events::{EventLog, Operation};
use crate::schema::{find_class, ClassDecl, FieldDecl, FieldType, Schema, Source};
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

/// Source of unpredictable bytes. Session references are bearer credentials, so the kernel
/// must back this with a real random source (RDRAND/RDSEED or a seeded CSPRNG).
pub trait Entropy {
    fn fill(&mut self, buf: &mut [u8]);
}

#[derive(Clone, Debug)]
pub struct Object {
    pub class: &'static ClassDecl,
    /// The stored fields' values in the class's declaration order (a derived field's slot
    /// holds `Nil`, never read): a vector, not a map keyed by name, so a VM's hundred
    /// fields cost their values and not a tree of names besides.
    fields: Vec<Value>,
}

impl Object {
    /// An object of `class` with every stored field at its type's default.
    fn new(class: &'static ClassDecl) -> Object {
        let fields = class
            .fields
            .iter()
            .map(|f| match f.source {
                Source::Stored => default_for(&f.ty),
                Source::Inverse { .. } => Value::Nil,
            })
            .collect();
        Object { class, fields }
    }

    fn slot(&self, field: &str) -> Option<usize> {
        self.class
            .fields
            .iter()
            .position(|f| f.name == field && f.source == Source::Stored)
    }

    pub fn stored(&self, field: &str) -> Option<&Value> {
        self.fields.get(self.slot(field)?)
    }

    /// Every stored field with its value, in declaration order.
    pub fn stored_fields(&self) -> impl Iterator<Item = (&'static FieldDecl, &Value)> {
        self.class
            .fields
            .iter()
            .zip(&self.fields)
            .filter(|(decl, _)| decl.source == Source::Stored)
    }

    fn stored_mut(&mut self, field: &str) -> Option<&mut Value> {
        let slot = self.slot(field)?;
        self.fields.get_mut(slot)
    }
}

pub struct Db {
    schema: Schema,
    objects: BTreeMap<String, Object>,
    by_class: BTreeMap<&'static str, BTreeSet<String>>,
    events: EventLog,
    entropy: Box<dyn Entropy>,
    /// The objects of kept classes written (created, changed, renamed, destroyed) since
    /// [`Db::take_dirty`] last took them: what the next save must look at.
    dirty: BTreeSet<(&'static str, String)>,
}

impl Db {
    pub fn new(schema: Schema, entropy: Box<dyn Entropy>, event_history: usize) -> Self {
        Db {
            schema,
            objects: BTreeMap::new(),
            by_class: BTreeMap::new(),
            events: EventLog::new(event_history),
            entropy,
            dirty: BTreeSet::new(),
        }
    }

    /// The kept objects written since the last call, as (class, reference); an object that
    /// no longer exists was destroyed or renamed.
    pub(crate) fn take_dirty(&mut self) -> BTreeSet<(&'static str, String)> {
        core::mem::take(&mut self.dirty)
    }

    fn note_write(&mut self, class: &'static ClassDecl, reference: &str) {
        if crate::persist::is_persisted(class.name) {
            self.dirty.insert((class.name, reference.to_string()));
        }
    }

    pub fn schema(&self) -> Schema {
        self.schema
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// A fresh random (version 4) UUID.
    pub fn new_uuid(&mut self) -> String {
        let mut b = [0u8; 16];
        self.entropy.fill(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let mut out = String::with_capacity(36);
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out.push('-');
            }
            let _ = write!(out, "{byte:02x}");
        }
        out
    }

    /// A fresh reference, `OpaqueRef:<uuid>`.
    pub fn new_ref(&mut self) -> String {
        let mut r = String::from("OpaqueRef:");
        r.push_str(&self.new_uuid());
        r
    }

    /// Create an object of `class`: declared fields not in `initial` get their type's default,
    /// `uuid` a fresh one. Publishes an `add` event. Unknown field names in `initial` are a
    /// programming error and are ignored.
    pub fn create(
        &mut self,
        class: &'static ClassDecl,
        initial: Vec<(&'static str, Value)>,
        now: Timestamp,
    ) -> String {
        let reference = self.new_ref();
        let mut object = Object::new(class);
        if class.has_field("uuid") {
            let uuid = self.new_uuid();
            if let Some(slot) = object.stored_mut("uuid") {
                *slot = Value::String(uuid);
            }
        }
        for (name, value) in initial {
            if let Some(slot) = object.stored_mut(name) {
                *slot = value;
            }
        }
        self.objects.insert(reference.clone(), object);
        self.by_class
            .entry(class.name)
            .or_default()
            .insert(reference.clone());
        self.note_write(class, &reference);
        self.publish(&reference, Operation::Add, now);
        reference
    }

    /// Put back an object the host database kept, under its old reference: stored fields not
    /// in `fields` get their type's default. Publishes an `add` event. Refused (false) if the
    /// reference is taken.
    pub(crate) fn restore(
        &mut self,
        class: &'static ClassDecl,
        reference: &str,
        fields: BTreeMap<&'static str, Value>,
        now: Timestamp,
    ) -> bool {
        if self.objects.contains_key(reference) {
            return false;
        }
        let mut object = Object::new(class);
        for (name, value) in fields {
            // Names that are not stored fields of the class are dropped.
            if let Some(slot) = object.stored_mut(name) {
                *slot = value;
            }
        }
        self.objects.insert(reference.to_string(), object);
        self.by_class
            .entry(class.name)
            .or_default()
            .insert(reference.to_string());
        self.note_write(class, reference);
        self.publish(reference, Operation::Add, now);
        true
    }

    /// Give an object another reference, and rewrite every reference to it in every object's
    /// stored fields. Publishes nothing: only start-up uses it, before any client is served.
    /// Refused (false) if `old` names nothing or `new` is taken.
    pub(crate) fn rename(&mut self, old: &str, new: &str) -> bool {
        if self.objects.contains_key(new) {
            return false;
        }
        let Some(object) = self.objects.remove(old) else {
            return false;
        };
        let class = object.class;
        self.objects.insert(new.to_string(), object);
        if let Some(set) = self.by_class.get_mut(class.name) {
            set.remove(old);
            set.insert(new.to_string());
        }
        let mut rewritten = Vec::new();
        for (reference, object) in self.objects.iter_mut() {
            let mut changed = false;
            for (decl, value) in object.class.fields.iter().zip(object.fields.iter_mut()) {
                if decl.source == Source::Stored {
                    changed |= replace_ref(&decl.ty, value, old, new);
                }
            }
            if changed {
                rewritten.push((object.class, reference.clone()));
            }
        }
        for (class, reference) in rewritten {
            self.note_write(class, &reference);
        }
        self.note_write(class, old);
        self.note_write(class, new);
        true
    }

    /// Remove an object, publishing a `del` event carrying its last record.
    pub fn destroy(&mut self, reference: &str, now: Timestamp) -> Result<(), ApiError> {
        let class = self
            .class_of(reference)
            .ok_or_else(|| ApiError::handle_invalid("object", reference))?;
        self.publish(reference, Operation::Del, now);
        self.note_write(class, reference);
        self.objects.remove(reference);
        if let Some(set) = self.by_class.get_mut(class.name) {
            set.remove(reference);
        }
        Ok(())
    }

    pub fn object(&self, reference: &str) -> Option<&Object> {
        self.objects.get(reference)
    }

    pub fn class_of(&self, reference: &str) -> Option<&'static ClassDecl> {
        self.objects.get(reference).map(|o| o.class)
    }

    /// True if `reference` names an object of class `class`.
    pub fn is_a(&self, reference: &str, class: &str) -> bool {
        self.class_of(reference).is_some_and(|c| c.name == class)
    }

    /// `HANDLE_INVALID [class, ref]` unless `reference` is an object of `class`.
    pub fn expect(&self, class: &str, reference: &str) -> Result<&Object, ApiError> {
        match self.objects.get(reference) {
            Some(o) if o.class.name == class => Ok(o),
            _ => Err(ApiError::handle_invalid(class, reference)),
        }
    }

    /// References of every object of `class`, in a stable order.
    pub fn refs(&self, class: &str) -> Vec<String> {
        self.by_class
            .get(class)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn count(&self, class: &str) -> usize {
        self.by_class.get(class).map_or(0, |s| s.len())
    }

    pub fn find_by_uuid(&self, class: &str, uuid: &str) -> Option<String> {
        self.by_class.get(class)?.iter().find_map(|r| {
            let o = self.objects.get(r)?;
            (o.stored("uuid")?.as_str()? == uuid).then(|| r.clone())
        })
    }

    /// A field's current value, computing derived (inverse) fields.
    pub fn get(&self, reference: &str, field: &str) -> Option<Value> {
        let object = self.objects.get(reference)?;
        let decl = object.class.field(field)?;
        Some(self.field_value(reference, object, decl))
    }

    fn field_value(&self, reference: &str, object: &Object, decl: &FieldDecl) -> Value {
        match decl.source {
            Source::Stored => object
                .stored(decl.name)
                .cloned()
                .unwrap_or_else(|| default_for(&decl.ty)),
            Source::Inverse { field } => {
                let FieldType::RefSet(other) = decl.ty else {
                    return Value::Array(Vec::new());
                };
                let refs = self
                    .by_class
                    .get(other)
                    .into_iter()
                    .flatten()
                    .filter(|r| {
                        self.objects
                            .get(*r)
                            .and_then(|o| o.stored(field))
                            .and_then(Value::as_str)
                            == Some(reference)
                    })
                    .map(|r| Value::String(r.clone()))
                    .collect();
                Value::Array(refs)
            }
        }
    }

    /// The full record of an object, as `get_record` and event snapshots present it.
    pub fn record(&self, reference: &str) -> Option<Value> {
        let object = self.objects.get(reference)?;
        let mut out = BTreeMap::new();
        for (decl, stored) in object.class.fields.iter().zip(&object.fields) {
            let value = match decl.source {
                Source::Stored => stored.clone(),
                Source::Inverse { .. } => self.field_value(reference, object, decl),
            };
            out.insert(decl.name.to_string(), value);
        }
        Some(Value::Struct(out))
    }

    /// Write stored fields of one object and publish one `mod` event. Values are assumed
    /// already checked against the declared types (the dispatcher does that for client input).
    pub fn set(
        &mut self,
        reference: &str,
        changes: Vec<(&'static str, Value)>,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let object = self
            .objects
            .get_mut(reference)
            .ok_or_else(|| ApiError::handle_invalid("object", reference))?;
        let class = object.class;
        for (name, value) in changes {
            match object.class.field(name) {
                Some(decl) if decl.source == Source::Stored => {
                    if let Some(slot) = object.stored_mut(decl.name) {
                        *slot = value;
                    }
                }
                _ => {
                    return Err(ApiError::InternalError {
                        message: alloc::format!(
                            "{}.{} is not a stored field",
                            object.class.name,
                            name
                        ),
                    })
                }
            }
        }
        self.note_write(class, reference);
        self.publish(reference, Operation::Mod, now);
        Ok(())
    }

    /// Write only the fields of `changes` whose value differs: one `mod` event, or none when
    /// nothing changed. Returns whether anything was written.
    pub fn update(
        &mut self,
        reference: &str,
        changes: Vec<(&'static str, Value)>,
        now: Timestamp,
    ) -> Result<bool, ApiError> {
        let changed: Vec<_> = changes
            .into_iter()
            .filter(|(k, v)| self.get(reference, k).as_ref() != Some(v))
            .collect();
        // A misspelt field or a missing object reads as `None`, so it always lands in
        // `changed` and `set` refuses it.
        if changed.is_empty() {
            return Ok(false);
        }
        self.set(reference, changed, now)?;
        Ok(true)
    }

    /// Publish a `mod` event for an object without changing it (`event.inject`).
    pub fn touch(&mut self, reference: &str, now: Timestamp) -> Option<u64> {
        self.objects.get(reference)?;
        self.publish(reference, Operation::Mod, now)
    }

    fn publish(&mut self, reference: &str, op: Operation, now: Timestamp) -> Option<u64> {
        let class = self.class_of(reference)?;
        if !class.flags.events {
            return None;
        }
        let snapshot = self.record(reference).unwrap_or(Value::Nil);
        Some(
            self.events
                .push(now, class, op, reference.to_string(), snapshot),
        )
    }

    pub fn class(&self, name: &str) -> Option<&'static ClassDecl> {
        find_class(self.schema, name)
    }
}

/// Where a write that can only fail through a bug of this crate (a field name that is not
/// declared and stored, an object it has just looked up) has no caller to report to — the
/// background paths: host facts, job steps, the storage mirror at start-up. Host tests and
/// debug builds stop on the bug; a release build goes on without the write rather than take
/// the management service down.
pub(crate) fn consistent<T>(result: Result<T, ApiError>) {
    debug_assert!(
        result.is_ok(),
        "database invariant broken: {:?}",
        result.err()
    );
}

/// Replace the reference `old` by `new` wherever a value of type `ty` holds it; true if it
/// did.
fn replace_ref(ty: &FieldType, value: &mut Value, old: &str, new: &str) -> bool {
    match (ty, value) {
        (FieldType::Ref(_), Value::String(text)) if text == old => {
            *text = new.to_string();
            true
        }
        (FieldType::RefSet(_), Value::Array(items)) => items.iter_mut().fold(false, |any, item| {
            replace_ref(&FieldType::Ref(""), item, old, new) | any
        }),
        (FieldType::Set(inner), Value::Array(items)) => items
            .iter_mut()
            .fold(false, |any, item| replace_ref(inner, item, old, new) | any),
        (FieldType::Map(_, inner), Value::Struct(entries)) => entries
            .values_mut()
            .fold(false, |any, item| replace_ref(inner, item, old, new) | any),
        _ => false,
    }
}

/// The value a field has before anything sets it.
pub fn default_for(ty: &FieldType) -> Value {
    match ty {
        FieldType::String | FieldType::Any => Value::String(String::new()),
        FieldType::Bool => Value::Bool(false),
        FieldType::Int => Value::Int(0),
        FieldType::Float => Value::Float(0.0),
        FieldType::DateTime => {
            Value::DateTime(crate::time::Timestamp::default().to_xapi_datetime())
        }
        FieldType::Enum(names) => Value::str(names.first().copied().unwrap_or("")),
        FieldType::Ref(_) => Value::str(NULL_REF),
        FieldType::RefSet(_) | FieldType::Set(_) => Value::Array(Vec::new()),
        FieldType::Map(_, _) => Value::Struct(BTreeMap::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes;

    struct Counter(u8);
    impl Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf.iter_mut() {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
        }
    }

    #[test]
    fn a_rename_rewrites_every_reference_and_only_kept_classes_are_marked_dirty() {
        let mut db = Db::new(classes::ALL, Box::new(Counter(0)), 16);
        let now = Timestamp::default();
        let host = db.create(&classes::HOST, Vec::new(), now);
        let pool = db.create(
            &classes::POOL,
            alloc::vec![("master", Value::String(host.clone()))],
            now,
        );
        let vm = db.create(
            &crate::classes_vm::VM,
            alloc::vec![
                ("affinity", Value::String(host.clone())),
                ("resident_on", Value::String(host.clone())),
                (
                    "attached_PCIs",
                    Value::Array(alloc::vec![Value::String(host.clone()), Value::str("x")]),
                ),
                // Not a reference type: left alone even though the text matches.
                ("name_label", Value::String(host.clone())),
            ],
            now,
        );
        db.take_dirty();
        assert!(db.rename(&host, "OpaqueRef:host"));
        // The object under both names and every object whose fields were rewritten.
        let dirty: Vec<_> = db.take_dirty().into_iter().collect();
        let mut expected = alloc::vec![
            ("VM", vm.clone()),
            ("host", host.clone()),
            ("host", "OpaqueRef:host".to_string()),
            ("pool", pool.clone()),
        ];
        expected.sort();
        assert_eq!(dirty, expected);
        assert!(db.is_a("OpaqueRef:host", "host"));
        assert!(db.object(&host).is_none());
        assert_eq!(db.refs("host"), ["OpaqueRef:host"]);
        assert_eq!(db.get(&pool, "master"), Some(Value::str("OpaqueRef:host")));
        assert_eq!(db.get(&vm, "affinity"), Some(Value::str("OpaqueRef:host")));
        assert_eq!(
            db.get(&vm, "resident_on"),
            Some(Value::str("OpaqueRef:host"))
        );
        assert_eq!(
            db.get(&vm, "attached_PCIs"),
            Some(Value::Array(alloc::vec![
                Value::str("OpaqueRef:host"),
                Value::str("x")
            ]))
        );
        assert_eq!(db.get(&vm, "name_label"), Some(Value::String(host.clone())));
        // Taken or missing references are refused.
        assert!(!db.rename(&vm, &pool));
        assert!(!db.rename("OpaqueRef:none", "OpaqueRef:other"));
        // A session or task write is not a change the host database keeps.
        let session = db.create(&classes::SESSION, Vec::new(), now);
        let task = db.create(&classes::TASK, Vec::new(), now);
        db.set(&task, alloc::vec![("progress", Value::Float(0.5))], now)
            .unwrap();
        db.destroy(&session, now).unwrap();
        assert!(db.take_dirty().is_empty());
        db.set(&vm, alloc::vec![("name_label", Value::str("x"))], now)
            .unwrap();
        assert_eq!(db.take_dirty().len(), 1);
    }

    #[test]
    fn a_misspelt_field_is_refused_not_ignored() {
        let mut db = Db::new(classes::ALL, Box::new(Counter(0)), 16);
        let now = Timestamp::default();
        let metrics = db.create(&classes::HOST_METRICS, Vec::new(), now);
        let misspelt = alloc::vec![("memory_fre", Value::Int(1))];
        assert!(db.set(&metrics, misspelt.clone(), now).is_err());
        assert!(db.update(&metrics, misspelt, now).is_err());
        // An unchanged value writes nothing; a changed one publishes one event.
        let before = db.events().last_id();
        let same = alloc::vec![("memory_free", Value::Int(0))];
        assert_eq!(db.update(&metrics, same, now), Ok(false));
        assert_eq!(db.events().last_id(), before);
        let changed = alloc::vec![("memory_free", Value::Int(7))];
        assert_eq!(db.update(&metrics, changed, now), Ok(true));
        assert_eq!(db.events().last_id(), before + 1);
        assert!(db
            .update(
                "OpaqueRef:gone",
                alloc::vec![("live", Value::Bool(true))],
                now
            )
            .is_err());
    }
}
