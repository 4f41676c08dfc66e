//! A VM's domain as the model records it: started (domid, resident, console, metrics) or
//! halted, destroyed through the toolstack, and the host's free memory following both.

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use super::console::create_console;
use super::vm_rules::{int_field, text, write_vm, PowerState};
use crate::api::State;
use crate::error::ApiError;
use crate::guest::{DomId, GuestBackend, GuestError};
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::{Value, NULL_REF};

pub(crate) fn no_guests() -> ApiError {
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

pub(crate) fn domid_value(domid: DomId) -> Value {
    Value::Int(i64::from(domid))
}

/// The VM now runs (or is paused) as `domid` on this host.
pub(crate) fn record_started(
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
    // The toolstack attached every VBD before the domain ran (BootSpec::disks).
    super::vbd::set_vm_vbds_attached(db, vm, true, now)?;
    // Each VIF gets its netback device and switch port (network_backend.rs).
    super::vif::attach_vm_vifs(state, vm, domid, now)?;
    Ok(())
}

/// The VM's domain is gone: Halted, no domid, not resident, no consoles or guest metrics.
pub(crate) fn record_halted(db: &mut Db, vm: &str, now: Timestamp) -> Result<(), ApiError> {
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
    // The toolstack removed the domain's devices and stopped their backends with it.
    super::vbd::set_vm_vbds_attached(db, vm, false, now)?;
    super::vif::set_vm_vifs_detached(db, vm, now)?;
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
pub(crate) fn hard_stop(state: &mut State, vm: &str, now: Timestamp) -> Result<(), ApiError> {
    let domid = domid_of(&state.db, vm)?;
    if let Some(pending) = state.shutdowns.get_mut(&domid) {
        pending.superseded = true;
    }
    destroy_domain(state, vm, domid)?;
    record_halted(&mut state.db, vm, now)?;
    refresh_host_memory(state, now)
}

/// `host_metrics.memory_free` follows what starting and stopping guests did to it.
pub(crate) fn refresh_host_memory(state: &mut State, now: Timestamp) -> Result<(), ApiError> {
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
pub(crate) fn destroy_domain(state: &mut State, vm: &str, domid: DomId) -> Result<(), ApiError> {
    match guests(state)?.destroy(domid) {
        Ok(()) | Err(GuestError::NoSuchDomain(_)) => Ok(()),
        Err(e) => Err(e.to_api_error(vm)),
    }
}
