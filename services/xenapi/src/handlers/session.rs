//! `session`: logging in and out. Sessions are bearer credentials: they publish no events
//! and cannot be listed.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::{session_of, value};
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::value::{Value, NULL_REF};

/// `session.login_with_password(uname, pwd, [version], [originator])`.
pub fn login_with_password(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let user = args.str(0)?.to_string();
    let password = args.str(1)?;
    let originator = args.opt_str(3).unwrap_or("").to_string();
    let now = ctx.now;
    // Every login is verified, in the one reserved slot (auth.rs): failures delay their own
    // answer but never refuse a correct password. Verify even for an unknown user so both
    // failures take the same time. Without a configured password nothing verifies.
    let password_ok = match ctx.state.root_phc.as_deref() {
        Some(phc) => ctx
            .state
            .throttle
            .verify(phc, password.as_bytes())
            .map_err(|e| ApiError::InternalError {
                message: e.to_string(),
            })?,
        None => false,
    };
    if !(password_ok && user == "root") {
        let delay_ms = ctx.state.throttle.record_failure(&originator, now);
        return Err(match delay_ms {
            0 => ApiError::SessionAuthenticationFailed { user },
            delay_ms => ApiError::LoginThrottled {
                user,
                retry_after_ms: delay_ms,
            },
        });
    }
    ctx.state.throttle.record_success(&originator);
    evict_idle_sessions(ctx)?;
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
fn evict_idle_sessions(ctx: &mut CallContext<'_>) -> Result<(), ApiError> {
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
        return Ok(());
    }
    sessions.sort();
    let excess = sessions.len() + 1 - max;
    for (_, r) in sessions.into_iter().take(excess) {
        end_session(ctx, &r)?;
    }
    Ok(())
}

fn end_session(ctx: &mut CallContext<'_>, session: &str) -> Result<(), ApiError> {
    ctx.state.legacy.remove(session);
    ctx.state.db.destroy(session, ctx.now)
}

/// `session.logout(session)`.
pub fn logout(ctx: &mut CallContext<'_>, _args: &Args) -> Result<Outcome, ApiError> {
    let session = session_of(ctx);
    end_session(ctx, &session)?;
    value(Value::void())
}
