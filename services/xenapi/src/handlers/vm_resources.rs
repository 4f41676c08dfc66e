//! A VM's memory and vCPU settings: checked against their constraints, and applied to a
//! running guest through the toolstack where that makes sense (balloon target, vCPUs online).

use alloc::string::ToString;
use alloc::vec;

use super::value;
use super::vm_domain::{domid_of, guests};
use super::vm_rules::{
    check_memory, check_operation, check_vcpus, int_field, power_state, text, write_vm, PowerState,
};
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::store::Db;
use crate::value::Value;

struct Memory {
    static_min: i64,
    dynamic_min: i64,
    dynamic_max: i64,
    static_max: i64,
}

fn memory_of(db: &Db, vm: &str) -> Memory {
    Memory {
        static_min: int_field(db, vm, "memory_static_min"),
        dynamic_min: int_field(db, vm, "memory_dynamic_min"),
        dynamic_max: int_field(db, vm, "memory_dynamic_max"),
        static_max: int_field(db, vm, "memory_static_max"),
    }
}

/// Checks and writes new memory settings; `op` is the operation they count as. A running
/// VM's balloon target follows `dynamic_max`.
fn write_memory(
    ctx: &mut CallContext<'_>,
    vm: &str,
    op: &str,
    m: Memory,
) -> Result<Outcome, ApiError> {
    check_operation(&ctx.state.db, vm, op)?;
    check_memory(m.static_min, m.dynamic_min, m.dynamic_max, m.static_max)?;
    let now = ctx.now;
    let mut changes = vec![
        ("memory_static_min", Value::Int(m.static_min)),
        ("memory_dynamic_min", Value::Int(m.dynamic_min)),
        ("memory_dynamic_max", Value::Int(m.dynamic_max)),
        ("memory_static_max", Value::Int(m.static_max)),
    ];
    if power_state(&ctx.state.db, vm) != PowerState::Halted {
        let domid = domid_of(&ctx.state.db, vm)?;
        let target = u64::try_from(m.dynamic_max).unwrap_or(0);
        guests(ctx.state)?
            .set_memory_target(domid, target)
            .map_err(|e| e.to_api_error(vm))?;
        changes.push(("memory_target", Value::Int(m.dynamic_max)));
    }
    write_vm(&mut ctx.state.db, vm, changes, now)?;
    value(Value::void())
}

/// Applies `f(memory, first argument, second argument)` to a VM's memory settings and
/// writes them as `op`.
fn change_memory<F: FnOnce(&mut Memory, i64, i64)>(
    ctx: &mut CallContext<'_>,
    args: &Args,
    op: &str,
    f: F,
) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let mut m = memory_of(&ctx.state.db, &vm);
    let a = args.int(1)?;
    let b = args.value(2).as_int().unwrap_or(0);
    f(&mut m, a, b);
    write_memory(ctx, &vm, op, m)
}

/// `VM.set_memory_static_max(self, value)` (halted only).
pub fn set_memory_static_max(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_static_range", |m, v, _| {
        m.static_max = v
    })
}

/// `VM.set_memory_static_min(self, value)` (halted only).
pub fn set_memory_static_min(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_static_range", |m, v, _| {
        m.static_min = v
    })
}

/// `VM.set_memory_dynamic_max(self, value)`.
pub fn set_memory_dynamic_max(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_dynamic_range", |m, v, _| {
        m.dynamic_max = v
    })
}

/// `VM.set_memory_dynamic_min(self, value)`.
pub fn set_memory_dynamic_min(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_dynamic_range", |m, v, _| {
        m.dynamic_min = v
    })
}

/// `VM.set_memory_dynamic_range(self, min, max)`: also on a running VM (balloon target).
pub fn set_memory_dynamic_range(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_dynamic_range", |m, min, max| {
        m.dynamic_min = min;
        m.dynamic_max = max;
    })
}

/// `VM.set_memory_static_range(self, min, max)` (halted only).
pub fn set_memory_static_range(
    ctx: &mut CallContext<'_>,
    args: &Args,
) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_static_range", |m, min, max| {
        m.static_min = min;
        m.static_max = max;
    })
}

/// `VM.set_memory_limits(self, static_min, static_max, dynamic_min, dynamic_max)`.
pub fn set_memory_limits(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let m = Memory {
        static_min: args.int(1)?,
        static_max: args.int(2)?,
        dynamic_min: args.int(3)?,
        dynamic_max: args.int(4)?,
    };
    write_memory(ctx, &vm, "changing_memory_limits", m)
}

/// `VM.set_memory(self, value)`: static_max, dynamic_min and dynamic_max all become `value`
/// (static_min stays), as in xapi.
pub fn set_memory(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    change_memory(ctx, args, "changing_memory_limits", |m, v, _| {
        m.static_max = v;
        m.dynamic_min = v;
        m.dynamic_max = v;
    })
}

/// `VM.set_VCPUs_max(self, value)` (halted only; at least `VCPUs_at_startup`).
pub fn set_vcpus_max(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let max = args.int(1)?;
    check_operation(&ctx.state.db, &vm, "changing_VCPUs")?;
    check_vcpus(max, int_field(&ctx.state.db, &vm, "VCPUs_at_startup"))?;
    let now = ctx.now;
    write_vm(
        &mut ctx.state.db,
        &vm,
        vec![("VCPUs_max", Value::Int(max))],
        now,
    )?;
    value(Value::void())
}

/// `VM.set_VCPUs_at_startup(self, value)` (halted only; 1 to `VCPUs_max`).
pub fn set_vcpus_at_startup(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let n = args.int(1)?;
    check_operation(&ctx.state.db, &vm, "changing_VCPUs")?;
    check_vcpus(int_field(&ctx.state.db, &vm, "VCPUs_max"), n)?;
    let now = ctx.now;
    write_vm(
        &mut ctx.state.db,
        &vm,
        vec![("VCPUs_at_startup", Value::Int(n))],
        now,
    )?;
    value(Value::void())
}

/// `VM.set_VCPUs_number_live(self, nvcpu)`: vCPUs online in a running VM (1 to `VCPUs_max`).
pub fn set_vcpus_number_live(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let n = args.int(1)?;
    check_operation(&ctx.state.db, &vm, "changing_VCPUs_live")?;
    check_vcpus(int_field(&ctx.state.db, &vm, "VCPUs_max"), n)?;
    let domid = domid_of(&ctx.state.db, &vm)?;
    let count = u32::try_from(n).unwrap_or(1);
    guests(ctx.state)?
        .set_vcpus_online(domid, count)
        .map_err(|e| e.to_api_error(&vm))?;
    let now = ctx.now;
    write_vm(
        &mut ctx.state.db,
        &vm,
        vec![("VCPUs_at_startup", Value::Int(n))],
        now,
    )?;
    let metrics = text(&ctx.state.db, &vm, "metrics");
    if ctx.state.db.object(&metrics).is_some() {
        ctx.state
            .db
            .update(&metrics, vec![("VCPUs_number", Value::Int(n))], now)?;
    }
    value(Value::void())
}
