//! `event`: the legacy `register`/`next` pair and `event.from`, which Xen Orchestra and
//! the SDKs live on.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{session_of, value, wait};
use crate::api::Wait;
use crate::dispatch::{Args, CallContext, CallOutcome, Outcome};
use crate::error::ApiError;
use crate::events::{format_token, Event, Snapshot, Token};
use crate::schema::{find_class_ignore_case, Schema};
use crate::value::Value;

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

    pub(super) fn matches(&self, event: &Event) -> bool {
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

pub(super) fn try_next(
    ctx: &mut CallContext<'_>,
    session: &str,
) -> Result<Option<Value>, ApiError> {
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
    match wait::resume(ctx, wait) {
        CallOutcome::Done(r) => r.map(Outcome::Value),
        CallOutcome::Pending(w) => Ok(Outcome::Wait(w)),
    }
}

pub(super) fn from_result(ctx: &CallContext<'_>, sub: &Subscription, events: Vec<Value>) -> Value {
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
                snapshot: Snapshot::new(&db.record(&r).unwrap_or(Value::Nil), &[]),
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
    let id = ctx
        .state
        .db
        .touch(reference, now)
        .ok_or_else(|| ApiError::handle_invalid(class.name, reference))?;
    value(Value::String(format_token(id)))
}

/// `event.get_current_id(session)`.
pub fn get_current_id(ctx: &mut CallContext<'_>, _args: &Args) -> Result<Outcome, ApiError> {
    value(Value::Int(ctx.state.db.events().last_id() as i64))
}
