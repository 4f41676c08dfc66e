//! A VM's disks when the VM is duplicated: `VM.clone` (VDI clones), `VM.copy` (full VDI
//! copies, a job) and `VM.snapshot` (VDI snapshots, also of a running guest); and
//! `VM.revert` to a snapshot (clones of the snapshot's disks replace the VM's).
//!
//! The VDI work goes through the `VDI.clone`, `VDI.copy` and `VDI.snapshot` handlers, so the
//! new VDIs are exactly what those messages make. Only `Disk` VBDs with a VDI get new VDIs;
//! CD drives keep their medium. A failure part-way destroys the VDIs already made, so no
//! half-made VM or orphan VDI is left.
//!
//! # Snapshots of running guests
//! The snapshots of all of a VM's disks are taken in one call, with nothing else running in
//! between: the disk backends serve no request meanwhile, so the set is crash-consistent —
//! every write the guest saw completed before the call is in it, none after.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::vbd::{destroy_vbd, duplicate_vbds, vbds_of};
use super::vdi::{vdi_clone, vdi_copy, vdi_destroy, vdi_snapshot};
use super::vm::{configuration, duplicate};
use super::vm_rules::{check_operation, mark_operation, text, write_vm};
use crate::dispatch::{Args, CallContext, Job, JobStep, Outcome};
use crate::error::ApiError;
use crate::store::{consistent, Db};
use crate::value::Value;

/// The VDIs of a VM's disks (not CDs, not empty drives), each once.
fn disk_vdis(db: &Db, vm: &str) -> Vec<String> {
    let mut vdis = Vec::new();
    for vbd in vbds_of(db, vm) {
        let vdi = text(db, &vbd, "VDI");
        let disk = text(db, &vbd, "type") == "Disk";
        if disk && db.is_a(&vdi, "VDI") && !vdis.contains(&vdi) {
            vdis.push(vdi);
        }
    }
    vdis
}

/// The new VDI a VDI handler returned.
fn made_vdi(outcome: Outcome) -> Result<String, ApiError> {
    match outcome {
        Outcome::Value(Value::String(vdi)) => Ok(vdi),
        _ => Err(ApiError::InternalError {
            message: "a VDI operation did not return its VDI".to_string(),
        }),
    }
}

/// Destroys VDIs made for a duplicate that failed (best effort: the first error is the one
/// the client hears).
fn discard_vdis(ctx: &mut CallContext<'_>, vdis: impl IntoIterator<Item = String>) {
    for vdi in vdis {
        if ctx.state.db.is_a(&vdi, "VDI") {
            let _ = vdi_destroy(ctx, &Args::new(vec![Value::String(vdi)]));
        }
    }
}

/// Makes one new VDI per disk with `make`, then the VM (`extra` fields) and its VBDs.
fn duplicate_with(
    ctx: &mut CallContext<'_>,
    vm: &str,
    name: &str,
    extra: Vec<(&'static str, Value)>,
    skip: &[String],
    make: fn(&mut CallContext<'_>, &Args) -> Result<Outcome, ApiError>,
) -> Result<String, ApiError> {
    let mut made: BTreeMap<String, String> = BTreeMap::new();
    for vdi in disk_vdis(&ctx.state.db, vm) {
        if skip.contains(&vdi) {
            continue;
        }
        match make(ctx, &Args::new(vec![Value::String(vdi.clone())])).and_then(made_vdi) {
            Ok(new) => {
                made.insert(vdi, new);
            }
            Err(e) => {
                discard_vdis(ctx, made.into_values());
                return Err(e);
            }
        }
    }
    let result = duplicate(ctx, vm, name, extra).and_then(|new_vm| {
        let now = ctx.now;
        let db = &mut ctx.state.db;
        duplicate_vbds(db, vm, &new_vm, &made, skip, now)?;
        Ok(new_vm)
    });
    if result.is_err() {
        discard_vdis(ctx, made.into_values());
    }
    result
}

/// `VM.clone`'s work: the VM and VBDs, with VDI clones for its disks.
pub(crate) fn clone_with_disks(
    ctx: &mut CallContext<'_>,
    vm: &str,
    name: &str,
) -> Result<String, ApiError> {
    duplicate_with(ctx, vm, name, Vec::new(), &[], vdi_clone)
}

/// `VM.snapshot(vm, new_name, [ignore_vdis])`: a snapshot VM (a halted template,
/// `is_a_snapshot`, `snapshot_of` = `vm`) whose disks are snapshots of `vm`'s, taken
/// together (module docs); disks on `ignore_vdis` are left out.
pub fn snapshot(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let vm = args.str(0)?.to_string();
    let name = args.str(1)?.to_string();
    let ignore: Vec<String> = match args.value(2) {
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    check_operation(&ctx.state.db, &vm, "snapshot")?;
    let now = ctx.now;
    let extra = vec![
        ("is_a_template", Value::Bool(true)),
        ("is_a_snapshot", Value::Bool(true)),
        ("snapshot_of", Value::String(vm.clone())),
        ("snapshot_time", Value::DateTime(now.to_xapi_datetime())),
    ];
    let snapshot = duplicate_with(ctx, &vm, &name, extra, &ignore, vdi_snapshot)?;
    Ok(Outcome::Value(Value::String(snapshot)))
}

/// `VM.revert(snapshot)`: the halted VM the snapshot was taken of gets the snapshot's
/// configuration and, as its disks, clones of the snapshot's disks (`VDI.clone`); its own
/// disks, unless another VBD still uses them, are destroyed (xapi's revert). The new disks
/// are made first, so a failure leaves the VM as it was. VIFs are left as they are.
pub fn revert(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let snapshot = args.str(0)?.to_string();
    let db = &ctx.state.db;
    if db.get(&snapshot, "is_a_snapshot") != Some(Value::Bool(true)) {
        return Err(ApiError::OperationNotAllowed {
            reason: "only a snapshot can be reverted to".to_string(),
        });
    }
    let vm = text(db, &snapshot, "snapshot_of");
    if !db.is_a(&vm, "VM") {
        return Err(ApiError::OperationNotAllowed {
            reason: "the VM this snapshot was taken of no longer exists".to_string(),
        });
    }
    check_operation(db, &vm, "revert")?;
    let mut made: BTreeMap<String, String> = BTreeMap::new();
    for vdi in disk_vdis(db, &snapshot) {
        let clone = vdi_clone(ctx, &Args::new(vec![Value::String(vdi.clone())])).and_then(made_vdi);
        match clone {
            Ok(new) => {
                made.insert(vdi, new);
            }
            Err(e) => {
                discard_vdis(ctx, made.into_values());
                return Err(e);
            }
        }
    }
    let now = ctx.now;
    let db = &mut ctx.state.db;
    let old_disks = disk_vdis(db, &vm);
    for vbd in vbds_of(db, &vm) {
        destroy_vbd(db, &vbd, now)?;
    }
    let mut changes = configuration(db, &snapshot);
    // The VM stays what it is: not a template, not a snapshot.
    changes.retain(|(k, _)| *k != "is_a_template");
    write_vm(db, &vm, changes, now)?;
    duplicate_vbds(db, &snapshot, &vm, &made, &[], now)?;
    // Its old disks go, unless something else still uses them (a failure to destroy one
    // leaves it, unused: the revert itself is done).
    let unused =
        |db: &Db, vdi: &str| matches!(db.get(vdi, "VBDs"), Some(Value::Array(v)) if v.is_empty());
    let doomed: Vec<String> = old_disks
        .into_iter()
        .filter(|v| unused(&ctx.state.db, v))
        .collect();
    discard_vdis(ctx, doomed);
    Ok(Outcome::Value(Value::void()))
}

/// `VM.copy`: copies the disks one after another (each `VDI.copy`, itself a job across
/// SRs), then makes the VM. The source VM is busy (`copy`) meanwhile.
pub(crate) struct CopyVmJob {
    vm: String,
    name: String,
    /// Destination SR; `None` = each disk's own SR.
    sr: Option<String>,
    to_copy: VecDeque<String>,
    made: BTreeMap<String, String>,
    /// The disk being copied by a `VDI.copy` job.
    copying: Option<(String, alloc::boxed::Box<dyn Job>)>,
    total: usize,
    key: String,
    cancelled: bool,
}

impl CopyVmJob {
    pub(crate) fn new(db: &Db, vm: &str, name: &str, sr: Option<String>) -> CopyVmJob {
        let to_copy: VecDeque<String> = disk_vdis(db, vm).into();
        CopyVmJob {
            vm: vm.to_string(),
            name: name.to_string(),
            sr,
            total: to_copy.len(),
            to_copy,
            made: BTreeMap::new(),
            copying: None,
            key: String::new(),
            cancelled: false,
        }
    }

    fn progress(&self) -> f64 {
        self.made.len() as f64 / self.total.max(1) as f64
    }

    /// One step of work: `Ok(Some(vm))` when the copy is complete.
    fn advance(&mut self, ctx: &mut CallContext<'_>) -> Result<Option<String>, ApiError> {
        if let Some((source, mut job)) = self.copying.take() {
            match job.step(ctx) {
                JobStep::Progress(_) | JobStep::Waiting(_) => self.copying = Some((source, job)),
                JobStep::Done(Value::String(copy)) => {
                    self.made.insert(source, copy);
                }
                JobStep::Done(other) => {
                    return Err(ApiError::InternalError {
                        message: format!("VDI.copy returned {other:?}"),
                    })
                }
                JobStep::Failed(e) => return Err(e),
            }
            return Ok(None);
        }
        if self.cancelled {
            return Err(ApiError::TaskCancelled {
                task: self.key.clone(),
            });
        }
        if let Some(source) = self.to_copy.pop_front() {
            let sr = match &self.sr {
                Some(sr) => sr.clone(),
                None => text(&ctx.state.db, &source, "SR"),
            };
            let args = Args::new(vec![Value::String(source.clone()), Value::String(sr)]);
            match vdi_copy(ctx, &args)? {
                Outcome::Value(Value::String(copy)) => {
                    self.made.insert(source, copy);
                }
                Outcome::Job(mut job) => {
                    job.bind(ctx, &self.key)?;
                    self.copying = Some((source, job));
                }
                _ => {
                    return Err(ApiError::InternalError {
                        message: "VDI.copy gave no VDI".to_string(),
                    })
                }
            }
            return Ok(None);
        }
        let vm = self.vm.clone();
        let new_vm = duplicate(ctx, &vm, &self.name, Vec::new())?;
        let now = ctx.now;
        duplicate_vbds(&mut ctx.state.db, &vm, &new_vm, &self.made, &[], now)?;
        Ok(Some(new_vm))
    }
}

impl Job for CopyVmJob {
    fn bind(&mut self, ctx: &mut CallContext<'_>, task: &str) -> Result<(), ApiError> {
        self.key = task.to_string();
        let now = ctx.now;
        mark_operation(&mut ctx.state.db, &self.vm, task, Some("copy"), now)
    }

    fn step(&mut self, ctx: &mut CallContext<'_>) -> JobStep {
        let result = self.advance(ctx);
        if let Ok(None) = result {
            return JobStep::Progress(self.progress());
        }
        let now = ctx.now;
        consistent(mark_operation(
            &mut ctx.state.db,
            &self.vm,
            &self.key,
            None,
            now,
        ));
        match result {
            Ok(Some(vm)) => JobStep::Done(Value::String(vm)),
            Ok(None) => JobStep::Progress(self.progress()),
            Err(e) => {
                if let Some((_, mut job)) = self.copying.take() {
                    // Its own failure path removes the partial copy.
                    job.cancel();
                    let _ = job.step(ctx);
                }
                discard_vdis(ctx, core::mem::take(&mut self.made).into_values());
                JobStep::Failed(e)
            }
        }
    }

    fn cancel(&mut self) -> bool {
        // A copy under way stops at its next step (removing its partial VDI); then this job
        // fails cancelled and removes the copies it made.
        if let Some((_, job)) = self.copying.as_mut() {
            job.cancel();
        }
        self.cancelled = true;
        false
    }
}
