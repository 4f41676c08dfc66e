//! What the toolstack reports: a guest's acknowledgement of a shutdown request, a request it
//! gave up on, and a domain that shut down or vanished (`VIRQ_DOM_EXC`), handled as the VM's
//! `actions_after_*` say unless a client's clean shutdown or reboot was waiting for it.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;

use super::vm_domain::{destroy_domain, record_halted, refresh_host_memory};
use super::vm_power::{Phase, PowerJob, ShutdownFailure};
use super::vm_rules::{int_field, power_state, text, write_vm, PowerState, PRESERVED_STATE};
use crate::api::XenApi;
use crate::dispatch::{CallContext, Outcome};
use crate::error::ApiError;
use crate::guest::{DomId, ExitReason};
use crate::store::Db;
use crate::tasks;
use crate::time::Timestamp;
use crate::value::Value;

/// What the VM's `actions_after_*` say for an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExitAction {
    Destroy,
    Restart,
    Preserve,
}

fn exit_action(db: &Db, vm: &str, reason: ExitReason) -> ExitAction {
    let field = match reason {
        ExitReason::PowerOff | ExitReason::Suspend | ExitReason::Vanished => {
            "actions_after_shutdown"
        }
        ExitReason::Reboot => "actions_after_reboot",
        ExitReason::Crash | ExitReason::Watchdog => "actions_after_crash",
        ExitReason::SoftReset => "actions_after_softreboot",
    };
    match text(db, vm, field).as_str() {
        // Keel writes no core dumps, renames nothing, and has no soft reset: those restart or
        // destroy as their names say.
        "restart" | "coredump_and_restart" | "rename_restart" | "soft_reboot" => {
            ExitAction::Restart
        }
        "preserve" => ExitAction::Preserve,
        _ => ExitAction::Destroy,
    }
}

/// The VM (not the control domain) whose running or paused domain is `domid`.
fn vm_of_domain(db: &Db, domid: DomId) -> Option<String> {
    db.refs("VM").into_iter().find(|vm| {
        int_field(db, vm, "domid") == i64::from(domid)
            && matches!(
                power_state(db, vm),
                PowerState::Running | PowerState::Paused
            )
            && db.get(vm, "is_control_domain").and_then(|v| v.as_bool()) != Some(true)
    })
}

impl XenApi {
    /// The guest in `domid` cleared `control/shutdown`: it acknowledged a clean shutdown or
    /// reboot request. Returns whether a request was waiting for it.
    pub fn shutdown_acknowledged(&mut self, domid: DomId, _now: Timestamp) -> bool {
        match self.state.shutdowns.get_mut(&domid) {
            Some(pending) => {
                pending.acknowledged = true;
                true
            }
            None => false,
        }
    }

    /// The toolstack gave up on a clean shutdown or reboot of `domid` (its deadlines match the
    /// XenAPI's, so this only makes the failure arrive at the same moment). The waiting task
    /// fails (`VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT` or `VM_SHUTDOWN_TIMEOUT`) and the guest is
    /// left running. Returns whether a request was waiting.
    pub fn shutdown_failed(
        &mut self,
        domid: DomId,
        failure: ShutdownFailure,
        _now: Timestamp,
    ) -> bool {
        match self.state.shutdowns.get_mut(&domid) {
            Some(pending) => {
                pending.failed = Some(failure);
                true
            }
            None => false,
        }
    }

    /// The domain `domid` shut down (or vanished), as `VIRQ_DOM_EXC` told the toolstack.
    /// A client's clean shutdown or reboot waiting for it completes; otherwise the VM's
    /// `actions_after_*` for `reason` apply: destroy (the VM halts), restart (a task
    /// `VM.restart` boots it again), or preserve (the domain stays; the VM shows Paused).
    /// Every change is published as events. Returns an error only when the restart could
    /// not be started (the VM is then Halted) or the toolstack failed to destroy the domain.
    pub fn domain_exited(
        &mut self,
        domid: DomId,
        reason: ExitReason,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let result = self.apply_domain_exit(domid, reason, now);
        crate::persist::save_if_changed(&mut self.state);
        result
    }

    fn apply_domain_exit(
        &mut self,
        domid: DomId,
        reason: ExitReason,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let state = &mut self.state;
        let Some(vm) = vm_of_domain(&state.db, domid) else {
            return Ok(());
        };
        let requested = state.shutdowns.get_mut(&domid).map(|pending| {
            pending.exited = Some(reason);
        });
        let action = if requested.is_some() {
            ExitAction::Destroy
        } else {
            exit_action(&state.db, &vm, reason)
        };
        if action == ExitAction::Preserve {
            // Mark the metrics first: the VM's allowed_operations are computed from them.
            let metrics = text(&state.db, &vm, "metrics");
            if state.db.object(&metrics).is_some() {
                let shut_down = Value::string_array([PRESERVED_STATE]);
                state.db.update(&metrics, vec![("state", shut_down)], now)?;
            }
            write_vm(
                &mut state.db,
                &vm,
                vec![("power_state", Value::str("Paused"))],
                now,
            )?;
            return Ok(());
        }
        if reason != ExitReason::Vanished {
            destroy_domain(state, &vm, domid)?;
        }
        record_halted(&mut state.db, &vm, now)?;
        refresh_host_memory(state, now)?;
        if action == ExitAction::Restart {
            let job = PowerJob::new(&vm, "start", Phase::Plan { first_try: None }, false);
            let mut ctx = CallContext {
                state,
                now,
                session: None,
            };
            let task = tasks::start_async(&mut ctx, "VM.restart", Ok(Outcome::Job(Box::new(job))))?;
            // A restart that cannot even begin leaves the VM halted; say why.
            if let Some(Value::Array(info)) = ctx.state.db.get(&task, "error_info") {
                if let Some(code) = info.first().and_then(Value::as_str) {
                    return Err(ApiError::InternalError {
                        message: format!("restart of {vm} failed: {code}"),
                    });
                }
            }
        }
        Ok(())
    }
}
