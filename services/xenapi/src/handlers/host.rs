//! The custom messages of `host` and `pool`.

use super::value;
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::value::Value;

/// `host.get_servertime(session, host)`.
pub fn host_get_servertime(ctx: &mut CallContext<'_>, _args: &Args) -> Result<Outcome, ApiError> {
    value(Value::DateTime(ctx.now.to_xapi_datetime()))
}

/// `pool.sync_database(session)`: the database is always in sync here; succeeds at once.
pub fn pool_sync_database(_ctx: &mut CallContext<'_>, _args: &Args) -> Result<Outcome, ApiError> {
    value(Value::void())
}
