//! `console` objects: one per running VM, pointing at where the management service serves
//! it (the console data path is keel-console's; docs/guests.md, "Console").

use alloc::format;
use alloc::string::String;
use alloc::vec;

use super::vm_domain::domid_of;
use crate::api::XenApi;
use crate::classes_vm::CONSOLE;
use crate::error::ApiError;
use crate::guest::DomId;
use crate::store::Db;
use crate::time::Timestamp;
use crate::value::Value;

/// Creates the console object of a VM that just started. Its `location` is where the
/// management service serves the console: `http://<address>/console?ref=<console ref>`,
/// xapi's form on the management port (docs/guests.md, "Console").
pub(crate) fn create_console(
    db: &mut Db,
    vm: &str,
    host_address: &str,
    now: Timestamp,
) -> Result<String, ApiError> {
    let console = db.create(
        &CONSOLE,
        vec![("protocol", Value::str("vt100")), ("VM", Value::str(vm))],
        now,
    );
    let location = format!("http://{host_address}/console?ref={console}");
    db.set(&console, vec![("location", Value::String(location))], now)?;
    Ok(console)
}

impl XenApi {
    /// The domain whose console a client asks for on the console location
    /// (docs/guests.md, "Console"): `session_id` must be a live session, `console` a console
    /// reference or UUID, and its VM must have a domain. Errors: `SessionInvalid`,
    /// `HandleInvalid` (no such console), `VmBadPowerState` (its VM has no domain).
    pub fn console_domain(&self, session_id: &str, console: &str) -> Result<DomId, ApiError> {
        let db = &self.state.db;
        if !db.is_a(session_id, "session") {
            return Err(ApiError::SessionInvalid {
                reference: String::from(session_id),
            });
        }
        let console_ref = if db.is_a(console, CONSOLE.name) {
            String::from(console)
        } else {
            db.find_by_uuid(CONSOLE.name, console)
                .ok_or_else(|| ApiError::handle_invalid(CONSOLE.name, console))?
        };
        let vm = db
            .get(&console_ref, "VM")
            .and_then(|v| v.as_str().map(String::from))
            .filter(|vm| db.is_a(vm, "VM"))
            .ok_or_else(|| ApiError::handle_invalid(CONSOLE.name, console))?;
        domid_of(db, &vm)
    }
}
