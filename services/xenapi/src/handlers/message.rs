//! `message`: the alerts clients post and read.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;

use super::value;
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::value::Value;

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
