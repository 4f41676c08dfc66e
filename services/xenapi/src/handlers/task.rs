//! `task`: client-made tasks and cancelling or forgetting any task (see `crate::tasks` for
//! the tasks behind `Async.` calls).

use alloc::string::ToString;

use super::value;
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::tasks;
use crate::value::Value;

/// `task.create(session, label, description)`.
pub fn task_create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let label = args.str(0)?.to_string();
    let description = args.str(1)?.to_string();
    tasks::create(ctx, &label, &description).map(|t| Outcome::Value(Value::String(t)))
}

/// `task.destroy(session, self)`.
pub fn task_destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let task = args.str(0)?.to_string();
    tasks::discard_job(ctx, &task);
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
