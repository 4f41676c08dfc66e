//! Handlers of the built-in custom messages (session, event, task, host, pool, message) and
//! the resumption of blocked calls.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::api::Wait;
use crate::auth::verify_password;
use crate::dispatch::{Args, CallContext, CallOutcome, Outcome};
use crate::error::ApiError;
use crate::events::{format_token, Event, Token};
use crate::schema::{find_class_ignore_case, Schema};
use crate::tasks;
use crate::value::{Value, NULL_REF};

fn value(v: Value) -> Result<Outcome, ApiError> {
    Ok(Outcome::Value(v))
}

fn session_of(ctx: &CallContext<'_>) -> String {
    ctx.session.clone().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// session

/// `session.login_with_password(uname, pwd, [version], [originator])`.
pub fn login_with_password(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let user = args.str(0)?.to_string();
    let password = args.str(1)?;
    let originator = args.opt_str(3).unwrap_or("").to_string();
    let now = ctx.now;
    if let Err(retry_after_ms) = ctx.state.throttle.check(&originator, now) {
        return Err(ApiError::LoginThrottled {
            user,
            retry_after_ms,
        });
    }
    // Verify even for an unknown user so both failures take the same time. Without a
    // configured password nothing verifies.
    let password_ok = ctx
        .state
        .root_phc
        .as_deref()
        .is_some_and(|phc| verify_password(phc, password.as_bytes()));
    if !(password_ok && user == "root") {
        ctx.state.throttle.record_failure(&originator, now);
        return Err(ApiError::SessionAuthenticationFailed { user });
    }
    ctx.state.throttle.record_success(&originator);
    evict_idle_sessions(ctx);
    let Some(class) = ctx.state.db.class("session") else {
        return Err(ApiError::InternalError {
            message: "no session class declared".to_string(),
        });
    };
    let host = ctx.state.host.clone();
    let stamp = Value::DateTime(now.to_xapi_datetime());
    let session = ctx.state.db.create(
        class,
        vec![
            ("this_host", Value::String(host)),
            ("this_user", Value::str(NULL_REF)),
            ("last_active", stamp.clone()),
            ("validation_time", stamp),
            ("is_local_superuser", Value::Bool(true)),
            ("auth_user_name", Value::String(user)),
            ("originator", Value::String(originator)),
        ],
        now,
    );
    value(Value::String(session))
}

/// Keep at most `max_sessions - 1` before adding one: end the least recently active.
fn evict_idle_sessions(ctx: &mut CallContext<'_>) {
    let max = ctx.state.limits.max_sessions.max(1);
    let db = &ctx.state.db;
    let mut sessions: Vec<(String, String)> = db
        .refs("session")
        .into_iter()
        .map(|r| {
            let t = db
                .get(&r, "last_active")
                .and_then(|v| match v {
                    Value::DateTime(t) => Some(t),
                    _ => None,
                })
                .unwrap_or_default();
            (t, r)
        })
        .collect();
    if sessions.len() < max {
        return;
    }
    sessions.sort();
    let excess = sessions.len() + 1 - max;
    for (_, r) in sessions.into_iter().take(excess) {
        end_session(ctx, &r);
    }
}

fn end_session(ctx: &mut CallContext<'_>, session: &str) {
    ctx.state.legacy.remove(session);
    let _ = ctx.state.db.destroy(session, ctx.now);
}

/// `session.logout(session)`.
pub fn logout(ctx: &mut CallContext<'_>, _args: &Args) -> Result<Outcome, ApiError> {
    let session = session_of(ctx);
    end_session(ctx, &session);
    value(Value::void())
}

// ---------------------------------------------------------------------------------------
// event

/// Which events a watcher wants: `*`, class names (any case), or `class/ref`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Subscription {
    all: bool,
    classes: BTreeSet<String>,
    objects: BTreeSet<(String, String)>,
}

impl Subscription {
    pub fn parse(items: &[&str]) -> Subscription {
        let mut s = Subscription::default();
        s.add(items);
        s
    }

    fn add(&mut self, items: &[&str]) {
        for item in items {
            match item.split_once('/') {
                _ if *item == "*" => self.all = true,
                Some((class, reference)) => {
                    self.objects
                        .insert((class.to_ascii_lowercase(), reference.to_string()));
                }
                None => {
                    self.classes.insert(item.to_ascii_lowercase());
                }
            }
        }
    }

    fn remove(&mut self, items: &[&str]) {
        for item in items {
            if *item == "*" {
                self.all = false;
            }
            self.classes.remove(&item.to_ascii_lowercase());
        }
    }

    fn is_empty(&self) -> bool {
        !self.all && self.classes.is_empty() && self.objects.is_empty()
    }

    fn matches(&self, event: &Event) -> bool {
        let class = event.class.to_ascii_lowercase();
        self.all
            || self.classes.contains(&class)
            || self.objects.contains(&(class, event.reference.clone()))
    }

    /// Declared classes (with objects and events) this subscription covers.
    fn classes_in(&self, schema: Schema) -> Vec<&'static str> {
        schema
            .iter()
            .filter(|c| c.flags.objects && c.flags.events)
            .filter(|c| self.all || self.classes.contains(&c.name.to_ascii_lowercase()))
            .map(|c| c.name)
            .collect()
    }
}

/// A session's `event.register` state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacySubscription {
    subscription: Subscription,
    after: u64,
}

/// `event.register(session, classes)`.
pub fn register(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let classes = args.strings(0)?;
    let last = ctx.state.db.events().last_id();
    let sub = ctx
        .state
        .legacy
        .entry(session_of(ctx))
        .or_insert(LegacySubscription {
            subscription: Subscription::default(),
            after: last,
        });
    sub.subscription.add(&classes);
    value(Value::void())
}

/// `event.unregister(session, classes)`.
pub fn unregister(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let classes = args.strings(0)?;
    let session = session_of(ctx);
    if let Some(sub) = ctx.state.legacy.get_mut(&session) {
        sub.subscription.remove(&classes);
        if sub.subscription.is_empty() {
            ctx.state.legacy.remove(&session);
        }
    }
    value(Value::void())
}

/// `event.next(session)`: blocks until a registered class has an event.
pub fn next(ctx: &mut CallContext<'_>, _args: &Args) -> Result<Outcome, ApiError> {
    match try_next(ctx, &session_of(ctx))? {
        Some(v) => value(v),
        None => Ok(Outcome::Wait(Wait::EventNext {
            session: session_of(ctx),
        })),
    }
}

fn try_next(ctx: &mut CallContext<'_>, session: &str) -> Result<Option<Value>, ApiError> {
    let sub = ctx
        .state
        .legacy
        .get(session)
        .ok_or_else(|| ApiError::SessionNotRegistered {
            session: session.to_string(),
        })?;
    let events = ctx.state.db.events();
    let found: Vec<Value> = events
        .since(sub.after)?
        .filter(|e| sub.subscription.matches(e))
        .map(Event::to_value)
        .collect();
    let last = events.last_id();
    if let Some(sub) = ctx.state.legacy.get_mut(session) {
        sub.after = last;
    }
    Ok((!found.is_empty()).then_some(Value::Array(found)))
}

/// `event.from(session, classes, token, timeout)`.
pub fn from(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let subscription = Subscription::parse(&args.strings(0)?);
    let token = Token::parse(args.str(1)?)?;
    let timeout = args.float(2)?;
    let timeout_ms = if timeout.is_finite() && timeout > 0.0 {
        ((timeout * 1000.0) as u64).min(ctx.state.limits.max_event_wait_ms)
    } else {
        0
    };
    let after = match token {
        Token::Start => return value(snapshot_all(ctx, &subscription)),
        Token::After(after) => after,
    };
    let wait = Wait::EventFrom {
        session: session_of(ctx),
        subscription,
        after,
        deadline: ctx.now.plus_ms(timeout_ms),
    };
    match resume(ctx, wait) {
        CallOutcome::Done(r) => r.map(Outcome::Value),
        CallOutcome::Pending(w) => Ok(Outcome::Wait(w)),
    }
}

fn from_result(ctx: &CallContext<'_>, sub: &Subscription, events: Vec<Value>) -> Value {
    let db = &ctx.state.db;
    let mut counts = BTreeMap::new();
    for class in sub.classes_in(db.schema()) {
        counts.insert(
            class.to_ascii_lowercase(),
            Value::Int(db.count(class) as i64),
        );
    }
    let mut out = BTreeMap::new();
    out.insert("events".to_string(), Value::Array(events));
    out.insert("valid_ref_counts".to_string(), Value::Struct(counts));
    out.insert(
        "token".to_string(),
        Value::String(format_token(db.events().last_id())),
    );
    Value::Struct(out)
}

/// The answer to `event.from` with the empty token: every current object as an `add`.
fn snapshot_all(ctx: &CallContext<'_>, sub: &Subscription) -> Value {
    let db = &ctx.state.db;
    let last = db.events().last_id();
    let mut events = Vec::new();
    for class in sub.classes_in(db.schema()) {
        for r in db.refs(class) {
            let event = Event {
                id: last,
                timestamp: ctx.now,
                class,
                operation: crate::events::Operation::Add,
                snapshot: db.record(&r).unwrap_or(Value::Nil),
                reference: r,
            };
            events.push(event.to_value());
        }
    }
    from_result(ctx, sub, events)
}

/// `event.inject(session, class, ref)`: publish a `mod` event, return the token after it.
pub fn inject(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let class_name = args.str(0)?;
    let reference = args.str(1)?;
    let class = find_class_ignore_case(ctx.state.db.schema(), class_name)
        .filter(|c| c.flags.events)
        .ok_or_else(|| ApiError::EventSubscriptionParseFailure {
            subscription: crate::codec::truncate(class_name.to_string(), 64),
        })?;
    if !ctx.state.db.is_a(reference, class.name) {
        return Err(ApiError::handle_invalid(class.name, reference));
    }
    let now = ctx.now;
    let id = ctx.state.db.touch(reference, now).unwrap_or(0);
    value(Value::String(format_token(id)))
}

/// `event.get_current_id(session)`.
pub fn get_current_id(ctx: &mut CallContext<'_>, _args: &Args) -> Result<Outcome, ApiError> {
    value(Value::Int(ctx.state.db.events().last_id() as i64))
}

/// Re-examine a blocked call.
pub fn resume(ctx: &mut CallContext<'_>, wait: Wait) -> CallOutcome {
    match resume_inner(ctx, wait) {
        Ok(outcome) => outcome,
        Err(e) => CallOutcome::Done(Err(e)),
    }
}

fn resume_inner(ctx: &mut CallContext<'_>, wait: Wait) -> Result<CallOutcome, ApiError> {
    let require_session = |ctx: &CallContext<'_>, s: &str| {
        if ctx.state.db.is_a(s, "session") {
            Ok(())
        } else {
            Err(ApiError::SessionInvalid {
                reference: s.to_string(),
            })
        }
    };
    match wait {
        Wait::EventFrom {
            session,
            subscription,
            after,
            deadline,
        } => {
            require_session(ctx, &session)?;
            let found: Vec<Value> = ctx
                .state
                .db
                .events()
                .since(after)?
                .filter(|e| subscription.matches(e))
                .map(Event::to_value)
                .collect();
            if found.is_empty() && ctx.now < deadline {
                return Ok(CallOutcome::Pending(Wait::EventFrom {
                    session,
                    subscription,
                    after,
                    deadline,
                }));
            }
            Ok(CallOutcome::Done(Ok(from_result(
                ctx,
                &subscription,
                found,
            ))))
        }
        Wait::EventNext { session } => {
            require_session(ctx, &session)?;
            Ok(match try_next(ctx, &session)? {
                Some(v) => CallOutcome::Done(Ok(v)),
                None => CallOutcome::Pending(Wait::EventNext { session }),
            })
        }
        Wait::Task { task } => {
            if let Some(result) = ctx.state.sync_results.remove(&task) {
                ctx.state.sync_tasks.remove(&task);
                let _ = ctx.state.db.destroy(&task, ctx.now);
                return Ok(CallOutcome::Done(result));
            }
            if !ctx.state.db.is_a(&task, "task") {
                ctx.state.sync_tasks.remove(&task);
                return Err(ApiError::handle_invalid("task", &task));
            }
            Ok(CallOutcome::Pending(Wait::Task { task }))
        }
    }
}

// ---------------------------------------------------------------------------------------
// task

/// `task.create(session, label, description)`.
pub fn task_create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let label = args.str(0)?.to_string();
    let description = args.str(1)?.to_string();
    tasks::create(ctx, &label, &description).map(|t| Outcome::Value(Value::String(t)))
}

/// `task.destroy(session, self)`.
pub fn task_destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let task = args.str(0)?.to_string();
    ctx.state.jobs.remove(&task);
    ctx.state.sync_tasks.remove(&task);
    ctx.state.sync_results.remove(&task);
    let now = ctx.now;
    ctx.state.db.destroy(&task, now)?;
    value(Value::void())
}

/// `task.cancel(session, self)`.
pub fn task_cancel(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let task = args.str(0)?.to_string();
    tasks::cancel(ctx, &task)?;
    value(Value::void())
}

// ---------------------------------------------------------------------------------------
// host and pool

/// `host.get_servertime(session, host)`.
pub fn host_get_servertime(ctx: &mut CallContext<'_>, _args: &Args) -> Result<Outcome, ApiError> {
    value(Value::DateTime(ctx.now.to_xapi_datetime()))
}

/// `pool.sync_database(session)`: the database is always in sync here; succeeds at once.
pub fn pool_sync_database(_ctx: &mut CallContext<'_>, _args: &Args) -> Result<Outcome, ApiError> {
    value(Value::void())
}

// ---------------------------------------------------------------------------------------
// message

/// `message.create(session, name, priority, cls, obj_uuid, body)`.
pub fn message_create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let Some(class) = ctx.state.db.class("message") else {
        return Err(ApiError::InternalError {
            message: "no message class declared".to_string(),
        });
    };
    let now = ctx.now;
    let fields = vec![
        ("name", args.value(0).clone()),
        ("priority", Value::Int(args.int(1)?)),
        ("cls", args.value(2).clone()),
        ("obj_uuid", args.value(3).clone()),
        ("body", args.value(4).clone()),
        ("timestamp", Value::DateTime(now.to_xapi_datetime())),
    ];
    let r = ctx.state.db.create(class, fields, now);
    value(Value::String(r))
}

/// `message.destroy(session, self)`.
pub fn message_destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let r = args.str(0)?.to_string();
    let now = ctx.now;
    ctx.state.db.destroy(&r, now)?;
    value(Value::void())
}

/// `message.get_since(session, since)`: records of messages at or after `since`.
pub fn message_get_since(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    // Both sides as digits only, so `2024-01-02T03:04:05Z` and `20240102T03:04:05Z` compare.
    let digits = |t: &str| t.chars().filter(char::is_ascii_digit).collect::<String>();
    let since = match args.value(0) {
        Value::DateTime(t) | Value::String(t) => digits(t),
        _ => String::new(),
    };
    let db = &ctx.state.db;
    let mut out = BTreeMap::new();
    for r in db.refs("message") {
        let stamp = match db.get(&r, "timestamp") {
            Some(Value::DateTime(t)) => digits(&t),
            _ => String::new(),
        };
        if stamp >= since {
            if let Some(rec) = db.record(&r) {
                out.insert(r, rec);
            }
        }
    }
    value(Value::Struct(out))
}
