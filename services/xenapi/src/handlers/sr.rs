//! `SR` and `PBD`: Keel's local SRs, always attached.

use alloc::string::ToString;

use super::storage_mirror::{no_storage, refresh_sr, sync_vdis, text};
use crate::classes_storage::SR_TYPE;
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::value::Value;

/// `SR.scan(sr)` and `SR.update(sr)`: re-read the SR's sizes and VDIs.
pub fn sr_scan(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let sr = args.str(0)?.to_string();
    let uuid = text(&ctx.state.db, &sr, "uuid");
    let now = ctx.now;
    let state = &mut *ctx.state;
    let storage = state.storage.as_deref().ok_or_else(no_storage)?;
    let vdis = storage.vdis(&uuid).map_err(|e| e.to_api_error("", 0))?;
    sync_vdis(&mut state.db, &sr, &vdis, now)?;
    refresh_sr(state, &sr, now)?;
    Ok(Outcome::Value(Value::void()))
}

/// `SR.get_supported_types()`.
pub fn sr_get_supported_types(_: &mut CallContext<'_>, _: &Args) -> Result<Outcome, ApiError> {
    Ok(Outcome::Value(Value::string_array([SR_TYPE])))
}

/// `PBD.plug`: Keel's PBDs are always plugged.
pub fn pbd_plug(_: &mut CallContext<'_>, _: &Args) -> Result<Outcome, ApiError> {
    Ok(Outcome::Value(Value::void()))
}

/// `PBD.unplug`: local SRs stay attached while Keel runs.
pub fn pbd_unplug(_: &mut CallContext<'_>, _: &Args) -> Result<Outcome, ApiError> {
    Err(ApiError::OperationNotAllowed {
        reason: "Keel keeps its local SRs plugged".to_string(),
    })
}
