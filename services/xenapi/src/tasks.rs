//! Tasks: the records behind `Async.<Class>.<message>` and long synchronous actions.
//!
//! A task is an ordinary `task` object (so clients watch it through events and
//! `task.get_record`); its running [`Job`], if any, lives beside it in the state and is
//! advanced by [`crate::XenApi::run_tasks`]. A finished task keeps `status`, `progress` (1),
//! `finished`, and either `result` — the XML-RPC `<value>` text of the result, even for
//! JSON-RPC clients, as xapi does — or `error_info` = `[code, params...]`.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::dispatch::{CallContext, Job, JobStep, Outcome};
use crate::error::ApiError;
use crate::store::consistent;
use crate::time::Timestamp;
use crate::value::Value;
use crate::xmlrpc;

pub const STATUS: &[&str] = &["pending", "success", "failure", "cancelling", "cancelled"];

/// Create a `pending` task named `label`.
pub fn create(
    ctx: &mut CallContext<'_>,
    label: &str,
    description: &str,
) -> Result<String, ApiError> {
    let state = &mut *ctx.state;
    let pending = state
        .db
        .refs("task")
        .iter()
        .filter(|r| is_unfinished(&state.db.get(r, "status")))
        .count();
    if pending >= state.limits.max_pending_tasks {
        return Err(ApiError::TooManyPendingTasks);
    }
    evict_finished(ctx, ctx.now)?;
    let state = &mut *ctx.state;
    let Some(class) = state.db.class("task") else {
        return Err(ApiError::InternalError {
            message: "no task class declared".to_string(),
        });
    };
    let host = state.host.clone();
    let task = state.db.create(
        class,
        vec![
            ("name_label", Value::str(label)),
            ("name_description", Value::str(description)),
            ("status", Value::str("pending")),
            ("created", Value::DateTime(ctx.now.to_xapi_datetime())),
            ("resident_on", Value::String(host)),
            ("allowed_operations", Value::string_array(["cancel"])),
        ],
        ctx.now,
    );
    state.task_order.push_back(task.clone());
    Ok(task)
}

fn is_unfinished(status: &Option<Value>) -> bool {
    matches!(
        status.as_ref().and_then(Value::as_str),
        Some("pending") | Some("cancelling")
    )
}

/// Keep the task table bounded: forget the oldest finished tasks beyond `max_tasks`.
fn evict_finished(ctx: &mut CallContext<'_>, now: Timestamp) -> Result<(), ApiError> {
    let state = &mut *ctx.state;
    state.task_order.retain(|t| state.db.is_a(t, "task"));
    while state.task_order.len() >= state.limits.max_tasks {
        let victim = state.task_order.iter().position(|t| {
            !is_unfinished(&state.db.get(t, "status")) && !state.sync_tasks.contains(t)
        });
        let Some(i) = victim else { break };
        if let Some(t) = state.task_order.remove(i) {
            state.db.destroy(&t, now)?;
        }
    }
    Ok(())
}

/// Drops `task`'s job, if it still has one, letting it release what it holds.
pub fn discard_job(ctx: &mut CallContext<'_>, task: &str) {
    if let Some(mut job) = ctx.state.jobs.remove(task) {
        job.abandon(ctx);
    }
}

/// Record a task's end.
pub fn complete(
    ctx: &mut CallContext<'_>,
    task: &str,
    result: Result<Value, ApiError>,
) -> Result<(), ApiError> {
    discard_job(ctx, task);
    let now = ctx.now;
    let state = &mut *ctx.state;
    let mut changes = vec![
        ("progress", Value::Float(1.0)),
        ("finished", Value::DateTime(now.to_xapi_datetime())),
        ("allowed_operations", Value::Array(Vec::new())),
    ];
    match &result {
        Ok(v) => {
            changes.push(("status", Value::str("success")));
            let text = match v {
                // xapi leaves `result` empty for messages without a result.
                Value::String(s) if s.is_empty() => String::new(),
                other => xmlrpc::value_to_string(other),
            };
            changes.push(("result", Value::String(text)));
        }
        Err(e) => {
            let status = if matches!(e, ApiError::TaskCancelled { .. }) {
                "cancelled"
            } else {
                "failure"
            };
            changes.push(("status", Value::str(status)));
            changes.push((
                "error_info",
                Value::Array(e.description().into_iter().map(Value::String).collect()),
            ));
        }
    }
    // The waiting caller gets its result even if the record could not be written.
    let written = state.db.set(task, changes, now);
    if state.sync_tasks.contains(task) {
        state.sync_results.insert(task.to_string(), result);
    }
    written
}

/// `Async.` call: wrap the handler's outcome in a new task and return its reference.
pub fn start_async(
    ctx: &mut CallContext<'_>,
    label: &str,
    outcome: Result<Outcome, ApiError>,
) -> Result<String, ApiError> {
    let task = create(ctx, label, "")?;
    match outcome {
        Ok(Outcome::Value(v)) => complete(ctx, &task, Ok(v))?,
        Err(e) => complete(ctx, &task, Err(e))?,
        Ok(Outcome::Job(mut job)) => match job.bind(ctx, &task) {
            Ok(()) => {
                ctx.state.jobs.insert(task.clone(), job);
            }
            Err(e) => complete(ctx, &task, Err(e))?,
        },
        Ok(Outcome::Wait(_)) => complete(
            ctx,
            &task,
            Err(ApiError::InternalError {
                message: "a waiting message cannot run asynchronously".to_string(),
            }),
        )?,
    }
    Ok(task)
}

/// Synchronous call whose handler returned a job: run it as a task the caller waits on.
pub fn start_sync_job(
    ctx: &mut CallContext<'_>,
    label: &str,
    mut job: Box<dyn Job>,
) -> Result<String, ApiError> {
    let task = create(ctx, label, "")?;
    if let Err(e) = job.bind(ctx, &task) {
        ctx.state.db.destroy(&task, ctx.now)?;
        return Err(e);
    }
    ctx.state.sync_tasks.insert(task.clone());
    ctx.state.jobs.insert(task.clone(), job);
    Ok(task)
}

/// What one round of the jobs did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRound {
    /// Jobs still running.
    pub running: usize,
    /// A job did work or finished: the server should run the next round soon rather than
    /// at its idle pace (a `VM.start` reads its images a piece per step).
    pub worked: bool,
}

/// Step every running job once.
pub fn run(ctx: &mut CallContext<'_>) -> TaskRound {
    let running: Vec<String> = ctx.state.jobs.keys().cloned().collect();
    let mut worked = false;
    for task in running {
        let Some(mut job) = ctx.state.jobs.remove(&task) else {
            continue;
        };
        let step = job.step(ctx);
        worked |= !matches!(step, JobStep::Waiting(_));
        match step {
            JobStep::Progress(p) | JobStep::Waiting(p) => {
                let p = if p.is_finite() {
                    p.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let progress = vec![("progress", Value::Float(p))];
                consistent(ctx.state.db.update(&task, progress, ctx.now));
                // The job may have been cancelled meanwhile by the step itself destroying
                // the task; only keep it if the task still exists.
                if ctx.state.db.is_a(&task, "task") {
                    ctx.state.jobs.insert(task, job);
                } else {
                    job.abandon(ctx);
                }
            }
            JobStep::Done(v) => consistent(complete(ctx, &task, Ok(v))),
            JobStep::Failed(e) => consistent(complete(ctx, &task, Err(e))),
        }
    }
    TaskRound {
        running: ctx.state.jobs.len(),
        worked,
    }
}

/// `task.cancel`.
pub fn cancel(ctx: &mut CallContext<'_>, task: &str) -> Result<(), ApiError> {
    let status = ctx.state.db.get(task, "status");
    if !is_unfinished(&status) {
        return Err(ApiError::OperationNotAllowed {
            reason: "task is not pending".to_string(),
        });
    }
    let cancelled = Err(ApiError::TaskCancelled {
        task: task.to_string(),
    });
    match ctx.state.jobs.get_mut(task) {
        Some(job) => {
            if job.cancel() {
                complete(ctx, task, cancelled)
            } else {
                let cancelling = vec![("status", Value::str("cancelling"))];
                ctx.state.db.set(task, cancelling, ctx.now)
            }
        }
        // A client-created task (task.create) has no job: it is cancelled at once.
        None => complete(ctx, task, cancelled),
    }
}
