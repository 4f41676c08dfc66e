//! VM power operations (`start`, `clean_shutdown`, `hard_reboot`, `pause`, ...) over the
//! toolstack ([`GuestBackend`](crate::guest::GuestBackend)); what happens when a domain stops
//! by itself is in `vm_exits`.
//!
//! # Power state machine
//! ```text
//!            start / start_on                 pause
//!   Halted ─────────────────────▶ Running ◀────────▶ Paused
//!     ▲                            │  unpause           │
//!     └── clean_shutdown (the guest acknowledges and stops), hard_shutdown,
//!         or the domain exits and its actions_after_* say destroy
//! ```
//! `clean_reboot` and `hard_reboot` go through Halted and back to Running; so does a guest
//! that exits when its `actions_after_*` say restart (a task `VM.restart` boots it again).
//! `preserve` after a crash keeps the domain and shows the VM Paused until a hard shutdown
//! or reboot.
//!
//! # Clean shutdown and reboot
//! The guest is asked through `control/shutdown`
//! ([`GuestBackend::request_shutdown`](crate::guest::GuestBackend::request_shutdown)); it
//! must acknowledge within [`ACK_TIMEOUT_MS`] (`VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT`) and stop
//! within [`SHUTDOWN_TIMEOUT_MS`] (`VM_SHUTDOWN_TIMEOUT`). Either way the VM is left running:
//! there is no silent hard stop; the client decides whether to `hard_shutdown`, which then
//! takes over (the clean task ends cancelled).
//!
//! # Starting
//! `PV_kernel` and `PV_ramdisk` are `vdi:<VDI uuid>`; the images are read from the storage
//! manager a few MiB per job step into memory reserved fallibly (`vm_boot`), then handed to
//! [`GuestBackend::start`](crate::guest::GuestBackend::start). Everything that can be checked
//! before (power state, template, memory and vCPU settings, the images' VDIs, free host
//! memory) is checked when the call arrives, so a bad start fails at once with its proper
//! error.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;

use super::value;
use super::vm_boot::{plan_boot, Loading};
use super::vm_domain::{domid_of, guests, hard_stop, record_started, refresh_host_memory};
use super::vm_rules::{check_operation, mark_operation, write_vm};
use crate::api::State;
use crate::dispatch::{Args, CallContext, Job, JobStep, Outcome};
use crate::error::ApiError;
use crate::guest::{DomId, ExitReason, ShutdownRequest};
use crate::store::consistent;
use crate::time::Timestamp;
use crate::value::Value;

/// How long a guest has to acknowledge `control/shutdown` (libxl waits as long).
pub const ACK_TIMEOUT_MS: u64 = 60_000;
/// How long an acknowledged shutdown or reboot may take before it is reported as failed
/// (the toolstack's own deadline is the same).
pub const SHUTDOWN_TIMEOUT_MS: u64 = 600_000;
/// How long a reboot or restart waits for the old domain's memory to come back.
pub const MEMORY_RETURN_MS: u64 = 30_000;

/// A clean shutdown or reboot a client is waiting for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingShutdown {
    pub vm: String,
    pub request: ShutdownRequest,
    pub acknowledged: bool,
    pub exited: Option<ExitReason>,
    /// The toolstack gave up waiting (its deadlines match ours; whichever comes first).
    pub failed: Option<ShutdownFailure>,
    /// A hard shutdown or reboot took over: the clean operation's task is cancelled.
    pub superseded: bool,
}

/// Why a clean shutdown or reboot request failed, as the toolstack reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownFailure {
    /// The guest never cleared `control/shutdown`.
    NotAcknowledged,
    /// It acknowledged but the domain did not shut down.
    NotCompleted,
}

// ---------------------------------------------------------------------------------------
// The job behind every long power operation

pub(crate) enum Phase {
    /// Ask the guest through `control/shutdown`.
    Ask(ShutdownRequest),
    /// Wait for the guest to clear `control/shutdown`.
    AwaitAck { domid: DomId, deadline: Timestamp },
    /// Wait for the domain to shut down.
    AwaitExit { domid: DomId, deadline: Timestamp },
    /// Destroy the domain at once (`hard_reboot`).
    HardStop,
    /// Check the VM and plan its boot (a reboot or restart: the old domain was just
    /// destroyed, and Xen returns its memory a little later, so a shortage is retried until
    /// [`MEMORY_RETURN_MS`] after the first attempt).
    Plan { first_try: Option<Timestamp> },
    /// Read the images, then build the domain.
    Load(Box<Loading>),
}

/// Runs `start`, `clean_shutdown`, `clean_reboot`, `hard_reboot` and restarts, one phase
/// per step. The VM is busy with `operation` (under the task's reference) throughout.
pub(crate) struct PowerJob {
    vm: String,
    operation: &'static str,
    phase: Phase,
    paused: bool,
    key: String,
    cancelled: bool,
}

impl PowerJob {
    pub(crate) fn new(vm: &str, operation: &'static str, phase: Phase, paused: bool) -> PowerJob {
        PowerJob {
            vm: vm.to_string(),
            operation,
            phase,
            paused,
            key: String::new(),
            cancelled: false,
        }
    }

    /// One phase. `Ok(true)` when the operation is complete.
    fn advance(&mut self, state: &mut State, now: Timestamp) -> Result<bool, ApiError> {
        let vm = self.vm.clone();
        let phase = core::mem::replace(&mut self.phase, Phase::Plan { first_try: None });
        if self.cancelled && !matches!(phase, Phase::Ask(_)) {
            match phase {
                Phase::AwaitAck { domid, .. } | Phase::AwaitExit { domid, .. } => {
                    // The guest may still stop; its actions_after_* then apply as usual.
                    state.shutdowns.remove(&domid);
                }
                Phase::Load(mut loading) => loading.abandon(state),
                _ => {}
            }
            return Err(ApiError::TaskCancelled {
                task: self.key.clone(),
            });
        }
        self.phase = match phase {
            Phase::Ask(request) => {
                if self.cancelled {
                    return Err(ApiError::TaskCancelled {
                        task: self.key.clone(),
                    });
                }
                let domid = domid_of(&state.db, &vm)?;
                guests(state)?
                    .request_shutdown(domid, request)
                    .map_err(|e| e.to_api_error(&vm))?;
                let pending = PendingShutdown {
                    vm: vm.clone(),
                    request,
                    acknowledged: false,
                    exited: None,
                    failed: None,
                    superseded: false,
                };
                state.shutdowns.insert(domid, pending);
                Phase::AwaitAck {
                    domid,
                    deadline: now.plus_ms(ACK_TIMEOUT_MS),
                }
            }
            Phase::AwaitAck { domid, .. } | Phase::AwaitExit { domid, .. }
                if state.shutdowns.get(&domid).is_some_and(|p| p.superseded) =>
            {
                state.shutdowns.remove(&domid);
                return Err(ApiError::TaskCancelled {
                    task: self.key.clone(),
                });
            }
            Phase::AwaitAck { domid, deadline } => {
                let Some(pending) = state.shutdowns.get(&domid) else {
                    return Err(ApiError::VmFailedShutdownAcknowledgment { vm });
                };
                if pending.exited.is_none() && pending.failed.is_some() {
                    state.shutdowns.remove(&domid);
                    return Err(ApiError::VmFailedShutdownAcknowledgment { vm });
                }
                if pending.acknowledged || pending.exited.is_some() {
                    Phase::AwaitExit {
                        domid,
                        deadline: now.plus_ms(SHUTDOWN_TIMEOUT_MS),
                    }
                } else if now >= deadline {
                    state.shutdowns.remove(&domid);
                    return Err(ApiError::VmFailedShutdownAcknowledgment { vm });
                } else {
                    Phase::AwaitAck { domid, deadline }
                }
            }
            Phase::AwaitExit { domid, deadline } => {
                let request = state
                    .shutdowns
                    .get(&domid)
                    .map(|p| (p.request, p.exited, p.failed));
                match request {
                    Some((request, Some(_), _)) => {
                        state.shutdowns.remove(&domid);
                        if request == ShutdownRequest::PowerOff {
                            return Ok(true);
                        }
                        Phase::Plan { first_try: None }
                    }
                    Some((_, None, Some(_))) | None => {
                        state.shutdowns.remove(&domid);
                        return Err(ApiError::VmShutdownTimeout {
                            vm,
                            timeout_secs: SHUTDOWN_TIMEOUT_MS / 1000,
                        });
                    }
                    _ if now >= deadline => {
                        state.shutdowns.remove(&domid);
                        return Err(ApiError::VmShutdownTimeout {
                            vm,
                            timeout_secs: SHUTDOWN_TIMEOUT_MS / 1000,
                        });
                    }
                    _ => Phase::AwaitExit { domid, deadline },
                }
            }
            Phase::HardStop => {
                hard_stop(state, &vm, now)?;
                Phase::Plan { first_try: None }
            }
            Phase::Plan { first_try } => {
                let first_try = first_try.unwrap_or(now);
                match plan_boot(state, &vm, self.paused) {
                    Ok(plan) => Phase::Load(Box::new(Loading::new(&vm, plan)?)),
                    Err(ApiError::HostNotEnoughFreeMemory { .. })
                        if now.ms_since(first_try) < MEMORY_RETURN_MS =>
                    {
                        Phase::Plan {
                            first_try: Some(first_try),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Phase::Load(mut loading) => {
                if !loading.load_some(state, &vm)? {
                    self.phase = Phase::Load(loading);
                    return Ok(false);
                }
                let (prepared, mut spec) = loading.into_start(state, &vm)?;
                let (paused, vcpus) = (spec.paused, spec.vcpus_at_startup);
                // The guest must find its network interfaces when it boots (its DHCP client
                // runs early): the domain stays paused until its VIFs are attached.
                let hold = !paused && super::vif::has_vifs(&state.db, &vm);
                spec.paused |= hold;
                let domid = guests(state)?
                    .start(prepared, spec)
                    .map_err(|e| e.to_api_error(&vm))?;
                record_started(state, &vm, domid, paused, vcpus, now)?;
                if hold {
                    if let Err(e) = guests(state)?.unpause(domid) {
                        hard_stop(state, &vm, now)?;
                        return Err(e.to_api_error(&vm));
                    }
                }
                refresh_host_memory(state, now)?;
                return Ok(true);
            }
        };
        Ok(false)
    }

    /// Image bytes in so far (0 outside the load phase).
    fn loaded(&self) -> u64 {
        match &self.phase {
            Phase::Load(l) => l.loaded(),
            _ => 0,
        }
    }

    fn progress(&self) -> f64 {
        match &self.phase {
            Phase::Ask(_) | Phase::HardStop | Phase::Plan { .. } => 0.0,
            Phase::AwaitAck { .. } => 0.1,
            Phase::AwaitExit { .. } => 0.2,
            Phase::Load(l) => 0.3 + 0.6 * (l.loaded() as f64 / l.total().max(1) as f64),
        }
    }
}

impl Job for PowerJob {
    fn bind(&mut self, ctx: &mut CallContext<'_>, task: &str) -> Result<(), ApiError> {
        self.key = task.to_string();
        let now = ctx.now;
        mark_operation(&mut ctx.state.db, &self.vm, task, Some(self.operation), now)
    }

    fn step(&mut self, ctx: &mut CallContext<'_>) -> JobStep {
        let now = ctx.now;
        let before = (core::mem::discriminant(&self.phase), self.loaded());
        let result = self.advance(ctx.state, now);
        if let Ok(false) = result {
            // The same phase with no more image bytes in: waiting (for the guest's
            // acknowledgement or exit, for memory, for another start's turn).
            let after = (core::mem::discriminant(&self.phase), self.loaded());
            return if after == before {
                JobStep::Waiting(self.progress())
            } else {
                JobStep::Progress(self.progress())
            };
        }
        // Finished either way: the VM is free again.
        if let Err(e) = mark_operation(&mut ctx.state.db, &self.vm, &self.key, None, now) {
            return JobStep::Failed(e);
        }
        match result {
            Ok(_) => JobStep::Done(Value::void()),
            Err(e) => JobStep::Failed(e),
        }
    }

    fn cancel(&mut self) -> bool {
        // Stop at the next step, which releases the VM.
        self.cancelled = true;
        false
    }

    fn abandon(&mut self, ctx: &mut CallContext<'_>) {
        let phase = core::mem::replace(&mut self.phase, Phase::Plan { first_try: None });
        match phase {
            Phase::Load(mut loading) => loading.abandon(ctx.state),
            Phase::AwaitAck { domid, .. } | Phase::AwaitExit { domid, .. } => {
                ctx.state.shutdowns.remove(&domid);
            }
            _ => {}
        }
        // The VM is no longer busy with this task.
        if ctx.state.db.is_a(&self.vm, "VM") {
            let now = ctx.now;
            consistent(mark_operation(
                &mut ctx.state.db,
                &self.vm,
                &self.key,
                None,
                now,
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Handlers

fn start_job(
    ctx: &mut CallContext<'_>,
    vm: &str,
    operation: &'static str,
    paused: bool,
) -> Result<Outcome, ApiError> {
    check_operation(&ctx.state.db, vm, operation)?;
    guests(ctx.state)?;
    let plan = plan_boot(ctx.state, vm, paused)?;
    let loading = Loading::new(vm, plan)?;
    let phase = Phase::Load(Box::new(loading));
    Ok(Outcome::Job(Box::new(PowerJob::new(
        vm, operation, phase, paused,
    ))))
}

/// `VM.start(vm, start_paused, force)`.
pub fn start(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let paused = args.value(1).as_bool().unwrap_or(false);
    start_job(ctx, &vm, "start", paused)
}

/// `VM.start_on(vm, host, start_paused, force)`: this host is the only one.
pub fn start_on(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let paused = args.value(2).as_bool().unwrap_or(false);
    start_job(ctx, &vm, "start_on", paused)
}

fn guest_job(
    ctx: &mut CallContext<'_>,
    args: &Args,
    operation: &'static str,
    phase: Phase,
) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    check_operation(&ctx.state.db, &vm, operation)?;
    guests(ctx.state)?;
    Ok(Outcome::Job(Box::new(PowerJob::new(
        &vm, operation, phase, false,
    ))))
}

/// `VM.clean_shutdown(vm)`: asks the guest to power off and waits for it.
pub fn clean_shutdown(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    guest_job(
        ctx,
        args,
        "clean_shutdown",
        Phase::Ask(ShutdownRequest::PowerOff),
    )
}

/// `VM.clean_reboot(vm)`: asks the guest to reboot, waits for it to stop, boots it again.
pub fn clean_reboot(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    guest_job(
        ctx,
        args,
        "clean_reboot",
        Phase::Ask(ShutdownRequest::Reboot),
    )
}

/// `VM.hard_reboot(vm)`: destroys the domain and boots the VM again.
pub fn hard_reboot(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    guest_job(ctx, args, "hard_reboot", Phase::HardStop)
}

/// `VM.hard_shutdown(vm)`: destroys the domain at once.
pub fn hard_shutdown(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    check_operation(&ctx.state.db, &vm, "hard_shutdown")?;
    let now = ctx.now;
    hard_stop(ctx.state, &vm, now)?;
    value(Value::void())
}

/// `VM.pause(vm)`.
pub fn pause(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    check_operation(&ctx.state.db, &vm, "pause")?;
    let domid = domid_of(&ctx.state.db, &vm)?;
    guests(ctx.state)?
        .pause(domid)
        .map_err(|e| e.to_api_error(&vm))?;
    let now = ctx.now;
    write_vm(
        &mut ctx.state.db,
        &vm,
        vec![("power_state", Value::str("Paused"))],
        now,
    )?;
    value(Value::void())
}

/// `VM.unpause(vm)`.
pub fn unpause(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    check_operation(&ctx.state.db, &vm, "unpause")?;
    let domid = domid_of(&ctx.state.db, &vm)?;
    guests(ctx.state)?
        .unpause(domid)
        .map_err(|e| e.to_api_error(&vm))?;
    let now = ctx.now;
    write_vm(
        &mut ctx.state.db,
        &vm,
        vec![("power_state", Value::str("Running"))],
        now,
    )?;
    value(Value::void())
}
