//! Routing a decoded call to its message, and every message the declarations generate.
//!
//! Order of checks, as in xapi: method exists (`MESSAGE_METHOD_UNKNOWN`), argument count
//! (`MESSAGE_PARAMETER_COUNT_MISMATCH`, counting the session), session valid
//! (`SESSION_INVALID`), argument types (`FIELD_TYPE_ERROR`), referenced objects exist
//! (`HANDLE_INVALID`), then the handler.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::api::{State, Wait};
use crate::error::ApiError;
use crate::schema::{
    find_class, Access, ClassDecl, FieldDecl, FieldType, MessageDecl, ParamDecl, Source,
};
use crate::store::Db;
use crate::tasks;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

/// A custom message's implementation.
pub type Handler = fn(&mut CallContext<'_>, &Args) -> Result<Outcome, ApiError>;

/// What a handler produced.
pub enum Outcome {
    /// The result, now.
    Value(Value),
    /// A long action: the caller gets a task (for `Async.`) or waits for it (sync calls);
    /// [`crate::XenApi::run_tasks`] steps it.
    Job(Box<dyn Job>),
    /// Block until an event or a deadline (`event.from`, `event.next`).
    Wait(Wait),
}

/// A long-running action, advanced in steps so it never blocks the caller.
pub trait Job {
    /// The task running this job exists now (called once, before the first step, in the
    /// same call that created the job): the place to mark objects busy under the task's
    /// reference (`current_operations`). An error fails the task before any step.
    fn bind(&mut self, _ctx: &mut CallContext<'_>, _task: &str) -> Result<(), ApiError> {
        Ok(())
    }
    /// Do a bounded amount of work.
    fn step(&mut self, ctx: &mut CallContext<'_>) -> JobStep;
    /// `task.cancel` was called. Return true if the job stopped (the task becomes
    /// `cancelled`); false leaves it `cancelling` and keeps stepping it, and the job should
    /// then end with `Failed(TaskCancelled)` at its next safe point.
    fn cancel(&mut self) -> bool {
        true
    }
    /// The job is being dropped before it ended (its task was destroyed, or cancelled at
    /// once): release what it holds outside itself (a half-built domain, busy marks).
    fn abandon(&mut self, _ctx: &mut CallContext<'_>) {}
}

pub enum JobStep {
    /// Still running and did work in this step (read, built, copied): step it again soon.
    /// Fraction done in 0..=1.
    Progress(f64),
    /// Still running, only waiting (for a guest, a device, a deadline): this step changed
    /// nothing, so the server may step it again at its own idle pace.
    Waiting(f64),
    Done(Value),
    Failed(ApiError),
}

/// Everything a handler may touch.
pub struct CallContext<'a> {
    pub(crate) state: &'a mut State,
    pub now: Timestamp,
    /// The validated session of the call (None for sessionless messages and jobs).
    pub session: Option<String>,
}

impl CallContext<'_> {
    pub fn db(&self) -> &Db {
        &self.state.db
    }
    pub fn db_mut(&mut self) -> &mut Db {
        &mut self.state.db
    }
    /// This host's reference.
    pub fn host_ref(&self) -> &str {
        &self.state.host
    }
    pub fn pool_ref(&self) -> &str {
        &self.state.pool
    }
}

/// A message's arguments after the session, already checked against the declared types.
pub struct Args {
    values: Vec<Value>,
}

static NIL: Value = Value::Nil;

impl Args {
    pub fn new(values: Vec<Value>) -> Self {
        Args { values }
    }

    /// The argument at `index` (`Nil` if it was an omitted optional one).
    pub fn value(&self, index: usize) -> &Value {
        self.values.get(index).unwrap_or(&NIL)
    }

    fn mismatch(index: usize) -> ApiError {
        ApiError::InternalError {
            message: format!("argument {index} has an unexpected type"),
        }
    }

    pub fn str(&self, index: usize) -> Result<&str, ApiError> {
        self.value(index).as_str().ok_or(Self::mismatch(index))
    }

    /// An optional string argument.
    pub fn opt_str(&self, index: usize) -> Option<&str> {
        self.value(index).as_str()
    }

    pub fn int(&self, index: usize) -> Result<i64, ApiError> {
        self.value(index).as_int().ok_or(Self::mismatch(index))
    }

    pub fn float(&self, index: usize) -> Result<f64, ApiError> {
        self.value(index).as_float().ok_or(Self::mismatch(index))
    }

    pub fn strings(&self, index: usize) -> Result<Vec<&str>, ApiError> {
        let items = self.value(index).as_array().ok_or(Self::mismatch(index))?;
        items
            .iter()
            .map(|v| v.as_str().ok_or(Self::mismatch(index)))
            .collect()
    }
}

/// Outcome of routing one call.
pub enum CallOutcome {
    Done(Result<Value, ApiError>),
    Pending(Wait),
}

/// The messages every class with objects gets from its declaration.
#[derive(Clone, Copy, Debug)]
enum Generated {
    GetRecord,
    GetAll,
    GetAllRecords,
    GetByUuid,
    GetByNameLabel,
    Get(&'static FieldDecl),
    Set(&'static FieldDecl),
    AddToMap(&'static FieldDecl),
    RemoveFromMap(&'static FieldDecl),
    AddToSet(&'static FieldDecl),
    RemoveFromSet(&'static FieldDecl),
}

fn writable_stored(f: &FieldDecl) -> bool {
    f.access == Access::ReadWrite && f.source == Source::Stored
}

fn resolve_generated(class: &'static ClassDecl, name: &str) -> Option<Generated> {
    if !class.flags.objects {
        return None;
    }
    let list = class.flags.list_all;
    match name {
        "get_record" => return Some(Generated::GetRecord),
        "get_all" if list => return Some(Generated::GetAll),
        "get_all_records" if list => return Some(Generated::GetAllRecords),
        "get_by_uuid" if class.has_field("uuid") => return Some(Generated::GetByUuid),
        "get_by_name_label" if class.has_field("name_label") => {
            return Some(Generated::GetByNameLabel)
        }
        _ => {}
    }
    let field = |prefix: &str| name.strip_prefix(prefix).and_then(|f| class.field(f));
    if let Some(f) = field("get_") {
        return Some(Generated::Get(f));
    }
    if let Some(f) = field("set_").filter(|f| writable_stored(f)) {
        return Some(Generated::Set(f));
    }
    let map = |f: &&FieldDecl| writable_stored(f) && matches!(f.ty, FieldType::Map(..));
    let set = |f: &&FieldDecl| {
        writable_stored(f) && matches!(f.ty, FieldType::Set(_) | FieldType::RefSet(_))
    };
    if let Some(f) = field("add_to_").filter(map) {
        return Some(Generated::AddToMap(f));
    }
    if let Some(f) = field("remove_from_").filter(map) {
        return Some(Generated::RemoveFromMap(f));
    }
    if let Some(f) = field("add_").filter(set) {
        return Some(Generated::AddToSet(f));
    }
    if let Some(f) = field("remove_").filter(set) {
        return Some(Generated::RemoveFromSet(f));
    }
    None
}

/// Names of every generated message of a class, in declaration order.
fn generated_names(class: &ClassDecl) -> Vec<String> {
    let mut out = Vec::new();
    if !class.flags.objects {
        return out;
    }
    out.push("get_record".to_string());
    if class.flags.list_all {
        out.push("get_all".to_string());
        out.push("get_all_records".to_string());
    }
    if class.has_field("uuid") {
        out.push("get_by_uuid".to_string());
    }
    if class.has_field("name_label") {
        out.push("get_by_name_label".to_string());
    }
    for f in class.fields {
        out.push(format!("get_{}", f.name));
        if writable_stored(f) {
            out.push(format!("set_{}", f.name));
            match f.ty {
                FieldType::Map(..) => {
                    out.push(format!("add_to_{}", f.name));
                    out.push(format!("remove_from_{}", f.name));
                }
                FieldType::Set(_) | FieldType::RefSet(_) => {
                    out.push(format!("add_{}", f.name));
                    out.push(format!("remove_{}", f.name));
                }
                _ => {}
            }
        }
    }
    // A custom message of the same name replaces a generated one (it is listed with them).
    out.retain(|name| class.message(name).is_none());
    out
}

/// `system.listMethods`: every callable method name.
pub fn list_methods(schema: crate::schema::Schema) -> Vec<String> {
    let mut out = alloc::vec!["system.listMethods".to_string()];
    for class in schema {
        for name in generated_names(class) {
            out.push(format!("{}.{}", class.name, name));
        }
        for m in class.messages {
            out.push(format!("{}.{}", class.name, m.name));
        }
        for m in class.messages.iter().filter(|m| m.asyncable) {
            out.push(format!("Async.{}.{}", class.name, m.name));
        }
    }
    out
}

/// Parameter list (after the session) of a generated message.
fn generated_params(class: &'static ClassDecl, g: Generated) -> Vec<ParamDecl> {
    let this = ParamDecl {
        name: "self",
        ty: FieldType::Ref(class.name),
    };
    let p = |name, ty| ParamDecl { name, ty };
    match g {
        Generated::GetAll | Generated::GetAllRecords => Vec::new(),
        Generated::GetRecord | Generated::Get(_) => alloc::vec![this],
        Generated::GetByUuid => alloc::vec![p("uuid", FieldType::String)],
        Generated::GetByNameLabel => alloc::vec![p("label", FieldType::String)],
        Generated::Set(f) => alloc::vec![this, p("value", f.ty)],
        Generated::AddToMap(f) => match f.ty {
            FieldType::Map(k, v) => alloc::vec![this, p("key", *k), p("value", *v)],
            _ => alloc::vec![this],
        },
        Generated::RemoveFromMap(f) => match f.ty {
            FieldType::Map(k, _) => alloc::vec![this, p("key", *k)],
            _ => alloc::vec![this],
        },
        Generated::AddToSet(f) | Generated::RemoveFromSet(f) => match f.ty {
            FieldType::Set(e) => alloc::vec![this, p("value", *e)],
            FieldType::RefSet(c) => alloc::vec![this, p("value", FieldType::Ref(c))],
            _ => alloc::vec![this],
        },
    }
}

enum Target {
    Generated(&'static ClassDecl, Generated),
    Custom(&'static ClassDecl, &'static MessageDecl),
}

/// Route and run one call.
pub(crate) fn call(
    state: &mut State,
    method: &str,
    params: Vec<Value>,
    now: Timestamp,
) -> CallOutcome {
    match call_inner(state, method, params, now) {
        Ok(outcome) => outcome,
        Err(e) => CallOutcome::Done(Err(e)),
    }
}

fn call_inner(
    state: &mut State,
    method: &str,
    mut params: Vec<Value>,
    now: Timestamp,
) -> Result<CallOutcome, ApiError> {
    let unknown = || ApiError::MessageMethodUnknown {
        method: method.to_string(),
    };
    if method == "system.listMethods" {
        return Ok(CallOutcome::Done(Ok(Value::Array(
            list_methods(state.db.schema())
                .into_iter()
                .map(Value::String)
                .collect(),
        ))));
    }
    let (is_async, name) = match method.strip_prefix("Async.") {
        Some(rest) => (true, rest),
        None => (false, method),
    };
    let (class_name, message) = name.split_once('.').ok_or_else(unknown)?;
    let class = find_class(state.db.schema(), class_name).ok_or_else(unknown)?;
    let target = match class.message(message) {
        Some(m) => Target::Custom(class, m),
        None if !is_async => Target::Generated(
            class,
            resolve_generated(class, message).ok_or_else(unknown)?,
        ),
        None => return Err(unknown()),
    };
    let (decls, optional, needs_session): (Vec<ParamDecl>, usize, bool) = match &target {
        Target::Custom(_, m) => {
            if is_async && !m.asyncable {
                return Err(unknown());
            }
            (m.params.to_vec(), m.optional_tail, m.session)
        }
        Target::Generated(c, g) => (generated_params(c, *g), 0, true),
    };
    let expected = decls.len() + usize::from(needs_session);
    let min = expected - optional.min(decls.len());
    if params.len() < min || params.len() > expected {
        return Err(ApiError::MessageParameterCountMismatch {
            method: method.to_string(),
            expected,
            received: params.len(),
        });
    }
    let session = if needs_session {
        let given = params.remove(0);
        let reference = given.as_str().unwrap_or("").to_string();
        if !state.db.is_a(&reference, "session") {
            return Err(ApiError::SessionInvalid { reference });
        }
        // Sessions publish no events, so this write is cheap and invisible to watchers.
        state.db.set(
            &reference,
            alloc::vec![("last_active", Value::DateTime(now.to_xapi_datetime()))],
            now,
        )?;
        Some(reference)
    } else {
        None
    };
    let mut checked = Vec::with_capacity(params.len());
    for (index, (value, decl)) in params.into_iter().zip(decls.iter()).enumerate() {
        let value = coerce(&decl.ty, value, decl.name)?;
        // Arguments naming objects must name existing ones: every Ref argument of a custom
        // message, and `self` of a generated one. The value written by a generated setter
        // may also be NULL; `run_generated` checks it.
        let strict = matches!(target, Target::Custom(..)) || index == 0;
        if let (FieldType::Ref(c), true) = (decl.ty, strict) {
            let r = value.as_str().unwrap_or("");
            if !state.db.is_a(r, c) {
                return Err(ApiError::handle_invalid(c, r));
            }
        }
        checked.push(value);
    }
    let args = Args::new(checked);
    let mut ctx = CallContext {
        state,
        now,
        session,
    };
    match target {
        Target::Generated(class, g) => {
            run_generated(&mut ctx, class, g, &args).map(|v| CallOutcome::Done(Ok(v)))
        }
        Target::Custom(class, m) => {
            let label = format!("{}.{}", class.name, m.name);
            let outcome = (m.handler)(&mut ctx, &args);
            if is_async {
                let task = tasks::start_async(&mut ctx, &format!("Async.{label}"), outcome)?;
                Ok(CallOutcome::Done(Ok(Value::String(task))))
            } else {
                match outcome? {
                    Outcome::Value(v) => Ok(CallOutcome::Done(Ok(v))),
                    Outcome::Wait(w) => Ok(CallOutcome::Pending(w)),
                    Outcome::Job(job) => {
                        let task = tasks::start_sync_job(&mut ctx, &label, job)?;
                        Ok(CallOutcome::Pending(Wait::Task { task }))
                    }
                }
            }
        }
    }
}

fn run_generated(
    ctx: &mut CallContext<'_>,
    class: &'static ClassDecl,
    g: Generated,
    args: &Args,
) -> Result<Value, ApiError> {
    let now = ctx.now;
    let db = &mut ctx.state.db;
    match g {
        Generated::GetRecord => db
            .record(args.str(0)?)
            .ok_or_else(|| ApiError::handle_invalid(class.name, "")),
        Generated::GetAll => Ok(Value::Array(
            db.refs(class.name).into_iter().map(Value::String).collect(),
        )),
        Generated::GetAllRecords => {
            let mut out = BTreeMap::new();
            for r in db.refs(class.name) {
                if let Some(rec) = db.record(&r) {
                    out.insert(r, rec);
                }
            }
            Ok(Value::Struct(out))
        }
        Generated::GetByUuid => {
            let uuid = args.str(0)?;
            db.find_by_uuid(class.name, uuid)
                .map(Value::String)
                .ok_or_else(|| ApiError::UuidInvalid {
                    class: class.name.to_string(),
                    uuid: crate::codec::truncate(uuid.to_string(), 64),
                })
        }
        Generated::GetByNameLabel => {
            let label = args.str(0)?;
            let refs = db
                .refs(class.name)
                .into_iter()
                .filter(|r| db.get(r, "name_label").as_ref().and_then(Value::as_str) == Some(label))
                .map(Value::String)
                .collect();
            Ok(Value::Array(refs))
        }
        Generated::Get(f) => db
            .get(args.str(0)?, f.name)
            .ok_or_else(|| ApiError::handle_invalid(class.name, "")),
        Generated::Set(f) => {
            let r = args.str(0)?.to_string();
            let value = args.value(1).clone();
            check_refs_exist(db, &f.ty, &value)?;
            db.set(&r, alloc::vec![(f.name, value)], now)?;
            Ok(Value::void())
        }
        Generated::AddToMap(f) => {
            let r = args.str(0)?.to_string();
            let key = args.str(1)?.to_string();
            check_refs_exist(
                db,
                &f.ty,
                &Value::Struct(BTreeMap::from([(key.clone(), args.value(2).clone())])),
            )?;
            let mut map = current_map(db, &r, f)?;
            if map.contains_key(&key) {
                return Err(ApiError::MapDuplicateKey {
                    class: class.name.to_string(),
                    field: f.name.to_string(),
                    reference: r,
                    key,
                });
            }
            map.insert(key, args.value(2).clone());
            db.set(&r, alloc::vec![(f.name, Value::Struct(map))], now)?;
            Ok(Value::void())
        }
        Generated::RemoveFromMap(f) => {
            let r = args.str(0)?.to_string();
            let mut map = current_map(db, &r, f)?;
            // Removing an absent key is not an error in xapi, and changes nothing.
            if map.remove(args.str(1)?).is_some() {
                db.set(&r, alloc::vec![(f.name, Value::Struct(map))], now)?;
            }
            Ok(Value::void())
        }
        Generated::AddToSet(f) | Generated::RemoveFromSet(f) => {
            let r = args.str(0)?.to_string();
            let item = args.value(1).clone();
            if let FieldType::RefSet(c) = f.ty {
                let s = item.as_str().unwrap_or("");
                if !db.is_a(s, c) {
                    return Err(ApiError::handle_invalid(c, s));
                }
            }
            let mut items = match db.get(&r, f.name) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            let present = items.contains(&item);
            let adding = matches!(g, Generated::AddToSet(_));
            // Sets: adding a present member or removing an absent one changes nothing.
            if adding && !present {
                items.push(item);
            } else if !adding && present {
                items.retain(|v| *v != item);
            } else {
                return Ok(Value::void());
            }
            db.set(&r, alloc::vec![(f.name, Value::Array(items))], now)?;
            Ok(Value::void())
        }
    }
}

fn current_map(db: &Db, r: &str, f: &FieldDecl) -> Result<BTreeMap<String, Value>, ApiError> {
    match db.get(r, f.name) {
        Some(Value::Struct(m)) => Ok(m),
        Some(_) => Ok(BTreeMap::new()),
        None => Err(ApiError::handle_invalid("object", r)),
    }
}

/// Refs written into fields must name existing objects of the right class (or be NULL).
pub(crate) fn check_refs_exist(db: &Db, ty: &FieldType, value: &Value) -> Result<(), ApiError> {
    match (ty, value) {
        (FieldType::Ref(c), Value::String(r)) => {
            if r != NULL_REF && !db.is_a(r, c) {
                return Err(ApiError::handle_invalid(c, r));
            }
            Ok(())
        }
        (FieldType::RefSet(c), Value::Array(items)) => {
            for i in items {
                check_refs_exist(db, &FieldType::Ref(c), i)?;
            }
            Ok(())
        }
        (FieldType::Set(e), Value::Array(items)) => {
            for i in items {
                check_refs_exist(db, e, i)?;
            }
            Ok(())
        }
        (FieldType::Map(_, v), Value::Struct(m)) => {
            for i in m.values() {
                check_refs_exist(db, v, i)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Check a wire value against a declared type and normalise it (decimal-string ints to
/// ints, strings to datetimes, ...). `FIELD_TYPE_ERROR [name]` if it does not fit.
pub fn coerce(ty: &FieldType, value: Value, name: &str) -> Result<Value, ApiError> {
    let bad = || ApiError::field_type(name);
    match ty {
        FieldType::Any => Ok(value),
        FieldType::String | FieldType::Ref(_) => match value {
            Value::String(_) => Ok(value),
            _ => Err(bad()),
        },
        FieldType::Bool => value.as_bool().map(Value::Bool).ok_or_else(bad),
        FieldType::Int => value.as_int().map(Value::Int).ok_or_else(bad),
        FieldType::Float => value.as_float().map(Value::Float).ok_or_else(bad),
        FieldType::DateTime => match value {
            Value::DateTime(t) | Value::String(t) => Ok(Value::DateTime(t)),
            _ => Err(bad()),
        },
        FieldType::Enum(names) => match value {
            Value::String(s) if names.contains(&s.as_str()) => Ok(Value::String(s)),
            _ => Err(bad()),
        },
        FieldType::RefSet(_) => coerce(&FieldType::Set(&FieldType::String), value, name),
        FieldType::Set(elem) => match value {
            Value::Array(items) => items
                .into_iter()
                .map(|i| coerce(elem, i, name))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            _ => Err(bad()),
        },
        FieldType::Map(key, val) => match value {
            Value::Struct(map) => {
                let mut out = BTreeMap::new();
                for (k, v) in map {
                    // Keys travel as strings whatever their declared type; check what a
                    // string can be checked for.
                    let k = match key {
                        FieldType::String | FieldType::Ref(_) | FieldType::Enum(_) => {
                            match coerce(key, Value::String(k), name)? {
                                Value::String(k) => k,
                                _ => return Err(bad()),
                            }
                        }
                        _ => k,
                    };
                    out.insert(k, coerce(val, v, name)?);
                }
                Ok(Value::Struct(out))
            }
            _ => Err(bad()),
        },
    }
}
