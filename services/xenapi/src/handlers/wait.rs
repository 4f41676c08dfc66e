//! Blocked calls: `event.from` and `event.next` waiting for events, synchronous calls
//! waiting for their job's task. [`resume`] answers one or hands it back still blocked.

use alloc::string::ToString;
use alloc::vec::Vec;

use super::event::{from_result, try_next};
use crate::api::Wait;
use crate::dispatch::{CallContext, CallOutcome};
use crate::error::ApiError;
use crate::events::Event;
use crate::value::Value;

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
                ctx.state.db.destroy(&task, ctx.now)?;
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
