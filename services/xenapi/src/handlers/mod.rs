//! Handlers of the custom messages, one module per class or concern, and the resumption of
//! blocked calls (`wait`).
//!
//! | module | messages / concern |
//! |---|---|
//! | `session` | `session.login_with_password`, `session.logout` |
//! | `event` | `event.register/unregister/next/from/inject/get_current_id` |
//! | `wait` | re-examining blocked calls (`event.from`, `event.next`, sync jobs) |
//! | `task` | `task.create/destroy/cancel` |
//! | `host` | `host.*` and `pool.*` custom messages |
//! | `message` | `message.create/destroy/get_since` |
//! | `storage_mirror` | SR and VDI objects kept in step with the storage manager |
//! | `sr` | `SR.*`, `PBD.*` |
//! | `vdi` | `VDI.*` |
//! | `vdi_copy` | the job moving a VDI's data across SRs |
//! | `vm_rules` | the rules VM operations are checked against; `allowed_operations` |
//! | `vm` | `VM` records: create, clone, copy, provision, destroy, templates, `blocked_operations` |
//! | `vm_resources` | memory and vCPU settings |
//! | `vm_disks` | a VM's disks in `VM.clone`, `VM.copy`, `VM.snapshot` |
//! | `vm_builtin` | the control domain's VM and the built-in templates |
//! | `vm_boot` | boot images (`vdi:<uuid>`) and start plans |
//! | `vm_domain` | a VM's domain recorded started or halted; destroying it |
//! | `vm_power` | the power operations and the job behind the long ones |
//! | `vm_exits` | what the toolstack reports: acknowledgements, failures, domain exits |
//! | `console` | `console` objects of running VMs |
//! | `network` | `network.*`, the management network, bridges on the switch, counter rates |
//! | `pif` | `PIF.*`, the management interface the kernel reports, switch counters |
//! | `vlan` | `VLAN.create/destroy` |
//! | `vif` | `VIF.*`: hot-plug, locking, QoS; a VM's VIFs at start and stop |
//! | `network_persist` | the network classes across a host reboot |
//! | `vbd` | `VBD.*`: disks and CD drives, hot-plug, media, `VDI_IN_USE` |
//! | `vbd_unplug` | `VBD.unplug` waiting for the toolstack's removal of the disk |
//! | `vbd_metrics` | `VBD_metrics` rates from the disk backends' counters |

pub mod console;
pub mod event;
pub mod host;
pub mod message;
pub mod network;
pub mod network_persist;
pub mod pif;
pub mod session;
pub mod sr;
pub mod storage_mirror;
pub mod task;
pub mod vbd;
pub mod vbd_metrics;
pub mod vbd_unplug;
pub mod vdi;
pub mod vdi_copy;
pub mod vif;
pub mod vlan;
pub mod vm;
pub mod vm_boot;
pub mod vm_builtin;
pub mod vm_disks;
pub mod vm_domain;
pub mod vm_exits;
pub mod vm_power;
pub mod vm_resources;
pub mod vm_rules;
pub mod wait;

pub use event::{LegacySubscription, Subscription};
pub use wait::resume;

use alloc::string::String;

use crate::dispatch::{CallContext, Outcome};
use crate::error::ApiError;
use crate::value::Value;

fn value(v: Value) -> Result<Outcome, ApiError> {
    Ok(Outcome::Value(v))
}

fn session_of(ctx: &CallContext<'_>) -> String {
    ctx.session.clone().unwrap_or_default()
}
