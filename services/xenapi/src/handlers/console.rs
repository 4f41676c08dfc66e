//! `console` objects: one per running VM, pointing at where the management service serves
//! it (the console data path is keel-console's; docs/guests.md, "Console").

use alloc::format;
use alloc::string::String;
use alloc::vec;

use crate::classes_vm::CONSOLE;
use crate::error::ApiError;
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
