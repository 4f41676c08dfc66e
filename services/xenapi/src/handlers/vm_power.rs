//! VM power operations (`start`, `clean_shutdown`, `hard_reboot`, `pause`, ...) over the
//! toolstack ([`GuestBackend`]), and what happens when a domain stops by itself.
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
//! `preserve` after a crash keeps the domain and shows the VM Paused until `hard_shutdown`.
//!
//! # Clean shutdown and reboot
//! The guest is asked through `control/shutdown` ([`GuestBackend::request_shutdown`]); it
//! must acknowledge within [`ACK_TIMEOUT_MS`] (`VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT`) and stop
//! within [`SHUTDOWN_TIMEOUT_MS`] (`VM_SHUTDOWN_TIMEOUT`). Either way the VM is left running:
//! there is no silent hard stop; the client decides whether to `hard_shutdown`.
//!
//! # Starting
//! `PV_kernel` and `PV_ramdisk` are `vdi:<VDI uuid>`; the images are read from the storage
//! manager a few MiB per job step into memory reserved fallibly, then handed to
//! [`GuestBackend::start`]. Everything that can be checked before (power state, template,
//! memory and vCPU settings, the images' VDIs, free host memory) is checked when the call
//! arrives, so a bad start fails at once with its proper error.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::storage_mirror::{locate, VdiLocation};
use super::value;
use super::vm::{
    check_memory, check_operation, create_console, int_field, mark_operation, power_state, text,
    write_vm, PowerState, PRESERVED_STATE,
};
use crate::api::{State, XenApi};
use crate::dispatch::{Args, CallContext, Job, JobStep, Outcome};
use crate::error::ApiError;
use crate::guest::{BootSpec, DomId, ExitReason, GuestBackend, GuestError, ShutdownRequest};
use crate::store::Db;
use crate::tasks;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

/// How long a guest has to acknowledge `control/shutdown` (libxl waits as long).
pub const ACK_TIMEOUT_MS: u64 = 60_000;
/// How long an acknowledged shutdown or reboot may take before it is reported as failed
/// (the toolstack's own deadline is the same).
pub const SHUTDOWN_TIMEOUT_MS: u64 = 600_000;
/// Largest kernel image loaded.
pub const MAX_KERNEL_BYTES: u64 = 64 << 20;
/// Largest initial ramdisk loaded.
pub const MAX_RAMDISK_BYTES: u64 = 512 << 20;
/// How long a reboot or restart waits for the old domain's memory to come back.
pub const MEMORY_RETURN_MS: u64 = 30_000;
/// Image bytes read from the storage manager per job step.
const LOAD_PER_STEP: u64 = 4 << 20;
/// Prefix of `PV_kernel` / `PV_ramdisk` values naming a VDI.
pub const VDI_PREFIX: &str = "vdi:";

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

fn no_guests() -> ApiError {
    ApiError::OperationNotAllowed {
        reason: "this host runs no guests (no toolstack)".to_string(),
    }
}

/// The toolstack, or `OPERATION_NOT_ALLOWED` on a host without one.
pub(crate) fn guests(state: &mut State) -> Result<&mut dyn GuestBackend, ApiError> {
    match state.guests.as_deref_mut() {
        Some(g) => Ok(g),
        None => Err(no_guests()),
    }
}

/// The domid of a VM that has a domain.
pub(crate) fn domid_of(db: &Db, vm: &str) -> Result<DomId, ApiError> {
    let domid = int_field(db, vm, "domid");
    DomId::try_from(domid).map_err(|_| ApiError::VmBadPowerState {
        vm: vm.to_string(),
        expected: "running".to_string(),
        actual: "halted".to_string(),
    })
}

fn domid_value(domid: DomId) -> Value {
    Value::Int(i64::from(domid))
}

// ---------------------------------------------------------------------------------------
// Boot images and plans

/// Where one boot image comes from.
#[derive(Clone, Debug)]
struct ImageSource {
    /// `PV_kernel` or `PV_ramdisk`.
    field: &'static str,
    at: VdiLocation,
    size: u64,
}

/// A checked start: the spec without its images, and where the images are.
#[derive(Clone, Debug)]
struct BootPlan {
    spec: BootSpec,
    kernel: ImageSource,
    ramdisk: Option<ImageSource>,
}

fn boot_failed(vm: &str, reason: String) -> ApiError {
    ApiError::BootloaderFailed {
        vm: vm.to_string(),
        reason,
    }
}

/// Resolves `PV_kernel` / `PV_ramdisk` (`vdi:<uuid>`); `None` when the field is empty.
fn image_source(
    db: &Db,
    vm: &str,
    field: &'static str,
    max: u64,
) -> Result<Option<ImageSource>, ApiError> {
    let named = text(db, vm, field);
    if named.is_empty() {
        return Ok(None);
    }
    let Some(uuid) = named.strip_prefix(VDI_PREFIX) else {
        return Err(boot_failed(
            vm,
            format!(
                "{field} is {:?}: Keel boots images from VDIs, named {VDI_PREFIX}<VDI uuid>",
                crate::codec::truncate(named.clone(), 64)
            ),
        ));
    };
    let Some(vdi) = db.find_by_uuid("VDI", uuid) else {
        return Err(boot_failed(
            vm,
            format!("{field} names VDI {uuid}, which does not exist"),
        ));
    };
    let at = locate(db, &vdi)?;
    let size = u64::try_from(int_field(db, &vdi, "virtual_size")).unwrap_or(0);
    if size == 0 || size > max {
        return Err(boot_failed(
            vm,
            format!("{field} names VDI {uuid} of {size} bytes; images are 1 to {max} bytes"),
        ));
    }
    Ok(Some(ImageSource { field, at, size }))
}

fn string_pairs(db: &Db, r: &str, field: &str) -> Vec<(String, String)> {
    match db.get(r, field) {
        Some(Value::Struct(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect(),
        _ => Vec::new(),
    }
}

/// Checks everything a start needs except the image data, and plans it.
fn plan_boot(state: &mut State, vm: &str, paused: bool) -> Result<BootPlan, ApiError> {
    let db = &state.db;
    let domain_type = text(db, vm, "domain_type");
    if domain_type != "pvh" {
        return Err(ApiError::ValueNotSupported {
            field: "domain_type".to_string(),
            value: domain_type,
            reason: "Keel runs PVH guests only".to_string(),
        });
    }
    let mem = |f| int_field(db, vm, f);
    let static_max = mem("memory_static_max");
    let dynamic_max = mem("memory_dynamic_max");
    check_memory(
        mem("memory_static_min"),
        mem("memory_dynamic_min"),
        dynamic_max,
        static_max,
    )?;
    if dynamic_max <= 0 {
        return Err(ApiError::MemoryConstraintViolation {
            constraint: "memory_dynamic_max must be positive to start".to_string(),
        });
    }
    let vcpus_max = int_field(db, vm, "VCPUs_max");
    let vcpus_at_startup = int_field(db, vm, "VCPUs_at_startup");
    if !(1..=super::vm::MAX_VCPUS).contains(&vcpus_max)
        || !(1..=vcpus_max).contains(&vcpus_at_startup)
    {
        return Err(ApiError::ValueNotSupported {
            field: "VCPUs_at_startup".to_string(),
            value: vcpus_at_startup.to_string(),
            reason: "need 1 <= VCPUs_at_startup <= VCPUs_max <= 128".to_string(),
        });
    }
    let kernel = image_source(db, vm, "PV_kernel", MAX_KERNEL_BYTES)?.ok_or_else(|| {
        boot_failed(
            vm,
            format!("PV_kernel is empty: set it to {VDI_PREFIX}<uuid> of a VDI holding the kernel"),
        )
    })?;
    let ramdisk = image_source(db, vm, "PV_ramdisk", MAX_RAMDISK_BYTES)?;
    let spec = BootSpec {
        vm_uuid: text(db, vm, "uuid"),
        name: text(db, vm, "name_label"),
        max_memory_bytes: static_max as u64,
        target_memory_bytes: dynamic_max as u64,
        max_vcpus: vcpus_max as u32,
        vcpus_at_startup: vcpus_at_startup as u32,
        kernel: Vec::new(),
        ramdisk: None,
        cmdline: text(db, vm, "PV_args"),
        paused,
        platform: string_pairs(db, vm, "platform"),
        xenstore_data: string_pairs(db, vm, "xenstore_data"),
    };
    let needed = spec.max_memory_bytes;
    let available = guests(state)?.free_memory();
    if needed > available {
        return Err(ApiError::HostNotEnoughFreeMemory { needed, available });
    }
    Ok(BootPlan {
        spec,
        kernel,
        ramdisk,
    })
}

/// Image data being read.
struct Loading {
    plan: BootPlan,
    kernel: Vec<u8>,
    ramdisk: Vec<u8>,
}

impl Loading {
    fn new(vm: &str, plan: BootPlan) -> Result<Loading, ApiError> {
        let reserve = |source: &ImageSource| {
            let mut buffer = Vec::new();
            buffer
                .try_reserve_exact(source.size as usize)
                .map_err(|_| {
                    boot_failed(
                        vm,
                        format!(
                            "not enough memory in the control domain to load {} ({} bytes)",
                            source.field, source.size
                        ),
                    )
                })?;
            Ok::<_, ApiError>(buffer)
        };
        let kernel = reserve(&plan.kernel)?;
        let ramdisk = match &plan.ramdisk {
            Some(source) => reserve(source)?,
            None => Vec::new(),
        };
        Ok(Loading {
            plan,
            kernel,
            ramdisk,
        })
    }

    fn total(&self) -> u64 {
        self.plan.kernel.size + self.plan.ramdisk.as_ref().map_or(0, |r| r.size)
    }

    fn loaded(&self) -> u64 {
        (self.kernel.len() + self.ramdisk.len()) as u64
    }

    /// Reads up to [`LOAD_PER_STEP`] more bytes; true once both images are in memory.
    fn load_some(&mut self, state: &mut State, vm: &str) -> Result<bool, ApiError> {
        let (source, buffer) = if (self.kernel.len() as u64) < self.plan.kernel.size {
            (&self.plan.kernel, &mut self.kernel)
        } else if let Some(r) = self
            .plan
            .ramdisk
            .as_ref()
            .filter(|r| (self.ramdisk.len() as u64) < r.size)
        {
            (r, &mut self.ramdisk)
        } else {
            return Ok(true);
        };
        let offset = buffer.len() as u64;
        let n = (source.size - offset).min(LOAD_PER_STEP) as usize;
        buffer.resize(buffer.len() + n, 0);
        let storage = state.storage.as_deref_mut().ok_or_else(|| {
            boot_failed(
                vm,
                format!("{}: this host has no storage to read it from", source.field),
            )
        })?;
        let piece = buffer.get_mut(offset as usize..).unwrap_or_default();
        storage
            .read(&source.at.sr_uuid, &source.at.vdi_uuid, offset, piece)
            .map_err(|e| {
                boot_failed(
                    vm,
                    format!(
                        "{}: reading VDI {} failed: {e:?}",
                        source.field, source.at.vdi_uuid
                    ),
                )
            })?;
        Ok(false)
    }

    fn into_spec(self) -> BootSpec {
        let mut spec = self.plan.spec;
        spec.kernel = self.kernel;
        spec.ramdisk = self.plan.ramdisk.is_some().then_some(self.ramdisk);
        spec
    }
}

// ---------------------------------------------------------------------------------------
// Recording domains

/// The VM now runs (or is paused) as `domid` on this host.
fn record_started(
    state: &mut State,
    vm: &str,
    domid: DomId,
    paused: bool,
    spec_vcpus: u32,
    now: Timestamp,
) -> Result<(), ApiError> {
    let host = state.host.clone();
    let address = text(&state.db, &host, "address");
    let db = &mut state.db;
    let target = int_field(db, vm, "memory_dynamic_max");
    let power = if paused {
        PowerState::Paused
    } else {
        PowerState::Running
    };
    write_vm(
        db,
        vm,
        vec![
            ("power_state", Value::str(power.name())),
            ("domid", domid_value(domid)),
            ("resident_on", Value::String(host)),
            ("memory_target", Value::Int(target)),
        ],
        now,
    )?;
    let metrics = text(db, vm, "metrics");
    if db.object(&metrics).is_some() {
        let stamp = Value::DateTime(now.to_xapi_datetime());
        db.update(
            &metrics,
            vec![
                ("memory_actual", Value::Int(target)),
                ("VCPUs_number", Value::Int(i64::from(spec_vcpus))),
                ("start_time", stamp.clone()),
                ("last_updated", stamp),
                ("current_domain_type", Value::str("pvh")),
            ],
            now,
        )?;
    }
    create_console(db, vm, &address, now)?;
    Ok(())
}

/// The VM's domain is gone: Halted, no domid, not resident, no consoles or guest metrics.
fn record_halted(db: &mut Db, vm: &str, now: Timestamp) -> Result<(), ApiError> {
    let consoles = match db.get(vm, "consoles") {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    for console in consoles.iter().filter_map(Value::as_str) {
        db.destroy(console, now)?;
    }
    let guest_metrics = text(db, vm, "guest_metrics");
    if db.object(&guest_metrics).is_some() {
        db.destroy(&guest_metrics, now)?;
    }
    write_vm(
        db,
        vm,
        vec![
            ("power_state", Value::str("Halted")),
            ("domid", Value::Int(-1)),
            ("resident_on", Value::str(NULL_REF)),
            ("memory_target", Value::Int(0)),
            ("guest_metrics", Value::str(NULL_REF)),
        ],
        now,
    )?;
    let metrics = text(db, vm, "metrics");
    if db.object(&metrics).is_some() {
        db.update(
            &metrics,
            vec![
                ("memory_actual", Value::Int(0)),
                ("VCPUs_number", Value::Int(0)),
                ("state", Value::Array(Vec::new())),
                ("last_updated", Value::DateTime(now.to_xapi_datetime())),
            ],
            now,
        )?;
    }
    Ok(())
}

/// Destroys a VM's domain at once and records it Halted; a clean shutdown or reboot waiting
/// for the guest is superseded (its task ends cancelled).
fn hard_stop(state: &mut State, vm: &str, now: Timestamp) -> Result<(), ApiError> {
    let domid = domid_of(&state.db, vm)?;
    if let Some(pending) = state.shutdowns.get_mut(&domid) {
        pending.superseded = true;
    }
    destroy_domain(state, vm, domid)?;
    record_halted(&mut state.db, vm, now)?;
    refresh_host_memory(state, now)
}

/// `host_metrics.memory_free` follows what starting and stopping guests did to it.
fn refresh_host_memory(state: &mut State, now: Timestamp) -> Result<(), ApiError> {
    let Some(guests) = state.guests.as_deref() else {
        return Ok(());
    };
    let free = i64::try_from(guests.free_memory()).unwrap_or(i64::MAX);
    let metrics = state.host_metrics.clone();
    if state
        .db
        .update(&metrics, vec![("memory_free", Value::Int(free))], now)?
    {
        let stamp = Value::DateTime(now.to_xapi_datetime());
        state.db.set(&metrics, vec![("last_updated", stamp)], now)?;
    }
    Ok(())
}

/// Destroys a VM's domain; one already gone is fine (that is the goal).
fn destroy_domain(state: &mut State, vm: &str, domid: DomId) -> Result<(), ApiError> {
    match guests(state)?.destroy(domid) {
        Ok(()) | Err(GuestError::NoSuchDomain(_)) => Ok(()),
        Err(e) => Err(e.to_api_error(vm)),
    }
}

// ---------------------------------------------------------------------------------------
// The job behind every long power operation

enum Phase {
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
    fn new(vm: &str, operation: &'static str, phase: Phase, paused: bool) -> PowerJob {
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
            if let Phase::AwaitAck { domid, .. } | Phase::AwaitExit { domid, .. } = phase {
                // The guest may still stop; its actions_after_* then apply as usual.
                state.shutdowns.remove(&domid);
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
                let spec = loading.into_spec();
                let (paused, vcpus) = (spec.paused, spec.vcpus_at_startup);
                let domid = guests(state)?
                    .start(spec)
                    .map_err(|e| e.to_api_error(&vm))?;
                record_started(state, &vm, domid, paused, vcpus, now)?;
                refresh_host_memory(state, now)?;
                return Ok(true);
            }
        };
        Ok(false)
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
        let result = self.advance(ctx.state, now);
        if let Ok(false) = result {
            return JobStep::Progress(self.progress());
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

// ---------------------------------------------------------------------------------------
// Reports from the toolstack

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
