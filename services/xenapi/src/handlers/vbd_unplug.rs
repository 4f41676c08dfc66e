//! `VBD.unplug`: a job that lasts until the guest has let go of the disk. The toolstack
//! asks the guest's frontend to close and removes the device once the backend is closed, or
//! by force after its own timeout (docs/guests.md, "Disks"); it reports the removal, which
//! arrives here as [`XenApi::disk_detached`]. Until then the VBD stays `currently_attached`
//! and busy (`current_operations`), so its VDI is not attached elsewhere or destroyed while
//! the backend may still be serving it.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;

use super::vbd::{device_index, vbds_of, write_vbd};
use super::vm_rules::{int_field, power_state, text, PowerState};
use crate::api::XenApi;
use crate::dispatch::{CallContext, Job, JobStep};
use crate::error::ApiError;
use crate::guest::{DiskSpec, DomId};
use crate::store::{consistent, Db};
use crate::time::Timestamp;
use crate::value::Value;

/// How long `VBD.unplug` waits for the toolstack's report: its own deadline (10 s, then the
/// device is removed by force) and a margin. Past it the VBD is marked detached anyway.
pub const UNPLUG_WAIT_MS: u64 = 15_000;

/// Waits for the removal of one hot-unplugged disk.
pub(crate) struct UnplugJob {
    vbd: String,
    deadline: Timestamp,
    key: String,
}

impl UnplugJob {
    pub(crate) fn new(vbd: &str, now: Timestamp) -> UnplugJob {
        UnplugJob {
            vbd: vbd.to_string(),
            deadline: now.plus_ms(UNPLUG_WAIT_MS),
            key: String::new(),
        }
    }
}

fn operations(db: &Db, vbd: &str) -> BTreeMap<String, Value> {
    match db.get(vbd, "current_operations") {
        Some(Value::Struct(ops)) => ops,
        _ => BTreeMap::new(),
    }
}

impl Job for UnplugJob {
    fn bind(&mut self, ctx: &mut CallContext<'_>, task: &str) -> Result<(), ApiError> {
        self.key = task.to_string();
        let now = ctx.now;
        let db = &mut ctx.state.db;
        let mut ops = operations(db, &self.vbd);
        ops.insert(task.to_string(), Value::str("unplug"));
        write_vbd(
            db,
            &self.vbd,
            vec![("current_operations", Value::Struct(ops))],
            now,
        )
    }

    fn step(&mut self, ctx: &mut CallContext<'_>) -> JobStep {
        let now = ctx.now;
        let db = &mut ctx.state.db;
        if !db.is_a(&self.vbd, "VBD") {
            return JobStep::Done(Value::void());
        }
        let attached = db.get(&self.vbd, "currently_attached") == Some(Value::Bool(true));
        if attached && now < self.deadline {
            return JobStep::Waiting(0.5);
        }
        let mut ops = operations(db, &self.vbd);
        ops.remove(&self.key);
        let changes = vec![
            ("currently_attached", Value::Bool(false)),
            ("current_operations", Value::Struct(ops)),
        ];
        match write_vbd(db, &self.vbd, changes, now) {
            Ok(()) => JobStep::Done(Value::void()),
            Err(e) => JobStep::Failed(e),
        }
    }

    fn cancel(&mut self) -> bool {
        // The request to the guest cannot be taken back: the job ends with the removal.
        false
    }
}

/// The VBD of the running or paused VM `domid` attached as `devid`.
pub(crate) fn attached_vbd(db: &Db, domid: DomId, devid: u32) -> Option<String> {
    let vm = db.refs("VM").into_iter().find(|vm| {
        int_field(db, vm, "domid") == i64::from(domid)
            && matches!(
                power_state(db, vm),
                PowerState::Running | PowerState::Paused
            )
            && db.get(vm, "is_control_domain") != Some(Value::Bool(true))
    })?;
    vbds_of(db, &vm).into_iter().find(|vbd| {
        db.get(vbd, "currently_attached") == Some(Value::Bool(true))
            && device_index(&text(db, vbd, "userdevice"))
                .and_then(DiskSpec::name_for)
                .is_some_and(|(d, _)| d == devid)
    })
}

impl XenApi {
    /// The toolstack removed the disk `devid` of domain `domid` (a hot-unplug finished, or
    /// was forced). Its VBD is no longer attached; a `VBD.unplug` waiting for it completes.
    /// Returns whether a VBD was attached there.
    pub fn disk_detached(&mut self, domid: DomId, devid: u32, now: Timestamp) -> bool {
        let state = &mut self.state;
        let Some(vbd) = attached_vbd(&state.db, domid, devid) else {
            return false;
        };
        consistent(write_vbd(
            &mut state.db,
            &vbd,
            vec![("currently_attached", Value::Bool(false))],
            now,
        ));
        crate::persist::save_if_changed(state);
        true
    }
}
