//! Raw disk data over HTTP: `PUT /import_raw_vdi` and `GET /export_raw_vdi`, as xapi serves
//! them (query `session_id`, `vdi` (a reference or a UUID), optional `task_id`, optional
//! `format=raw`).
//!
//! The HTTP layer owns the bytes; this module owns the meaning. A transfer checks the
//! session and the VDI, marks the VDI busy (`VDI_IN_USE` for anything that would change it),
//! and reports through a task: the client's (`task_id`) or a new one. Data streams through
//! bounded buffers — nothing holds a whole disk.
//!
//! Progress is an acknowledgement: an import flushes every [`DURABLE_EVERY`] bytes and only
//! then moves the task's `progress`, so after a power cut at least `progress × total` bytes
//! are on the disk. The task succeeds only after the final flush.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::api::XenApi;
use crate::error::ApiError;
use crate::handlers::storage_mirror::{
    backend, ensure_idle, locate, mark_busy, refresh_vdi, sector_size,
};
use crate::store::consistent;
use crate::tasks;
use crate::time::Timestamp;
use crate::value::Value;

/// Imports write in pieces of this size (whole sectors).
pub const WRITE_PIECE: usize = 1 << 20;
/// An import is flushed, and its progress advanced, every this many bytes.
pub const DURABLE_EVERY: u64 = 8 << 20;
/// Exports read in pieces of this size.
pub const READ_PIECE: usize = 256 << 10;

/// Which way the data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `PUT /import_raw_vdi`: the request body is written to the VDI from offset 0.
    Import,
    /// `GET /export_raw_vdi`: the VDI's whole content is the response body.
    Export,
}

impl Direction {
    /// The route's path.
    pub fn path(self) -> &'static str {
        match self {
            Direction::Import => "/import_raw_vdi",
            Direction::Export => "/export_raw_vdi",
        }
    }

    /// The route a request path (query string ignored) names.
    pub fn from_path(path: &str) -> Option<Direction> {
        match path.split('?').next().unwrap_or("") {
            "/import_raw_vdi" => Some(Direction::Import),
            "/export_raw_vdi" => Some(Direction::Export),
            _ => None,
        }
    }

    fn operation(self) -> &'static str {
        match self {
            Direction::Import => "import",
            Direction::Export => "export",
        }
    }
}

/// The query parameters of a transfer (already percent-decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferRequest {
    pub session_id: String,
    pub vdi: String,
    pub task_id: Option<String>,
    pub format: Option<String>,
}

/// A transfer in progress. Give it back to [`XenApi::finish_transfer`] or
/// [`XenApi::fail_transfer`] exactly once.
#[derive(Debug)]
pub struct Transfer {
    direction: Direction,
    task: String,
    vdi_ref: String,
    sr: String,
    vdi: String,
    size: u64,
    /// What the progress is measured against: the body length, or the VDI size.
    total: u64,
    sector: u64,
    /// Import: bytes received. Export: bytes handed out.
    position: u64,
    /// Import: bytes written to the VDI (the rest is in `buffer`).
    written: u64,
    /// Import: bytes known durable.
    durable: u64,
    /// Import: received data not yet written. Export: data read, from `taken` on not yet
    /// handed out.
    buffer: Vec<u8>,
    taken: usize,
}

impl Transfer {
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The task that reports this transfer.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The VDI's size (an export's body length).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Export: the bytes read and not yet handed out.
    pub fn output(&self) -> &[u8] {
        self.buffer.get(self.taken..).unwrap_or_default()
    }

    /// Export: `n` bytes of [`Transfer::output`] were sent.
    pub fn consume(&mut self, n: usize) {
        self.taken = (self.taken + n).min(self.buffer.len());
    }

    /// Export: every byte has been handed out.
    pub fn is_complete(&self) -> bool {
        self.position >= self.size && self.output().is_empty()
    }
}

impl XenApi {
    /// Re-reads SRs and VDIs from the storage backend into the objects.
    pub fn refresh_storage(&mut self, now: Timestamp) {
        crate::store::consistent(crate::handlers::storage_mirror::sync_all(
            &mut self.state,
            now,
        ));
    }

    /// Checks a transfer request and starts it. `content_length` is the import body's
    /// length when the request declares one.
    pub fn start_transfer(
        &mut self,
        direction: Direction,
        request: &TransferRequest,
        content_length: Option<u64>,
        now: Timestamp,
    ) -> Result<Transfer, ApiError> {
        let state = &mut self.state;
        if !state.db.is_a(&request.session_id, "session") {
            return Err(ApiError::SessionInvalid {
                reference: request.session_id.clone(),
            });
        }
        if let Some(format) = request.format.as_deref().filter(|f| *f != "raw") {
            return Err(ApiError::ValueNotSupported {
                field: "format".to_string(),
                value: format.to_string(),
                reason: "only raw is supported".to_string(),
            });
        }
        let vdi_ref = if state.db.is_a(&request.vdi, "VDI") {
            request.vdi.clone()
        } else {
            state
                .db
                .find_by_uuid("VDI", &request.vdi)
                .ok_or_else(|| ApiError::handle_invalid("VDI", &request.vdi))?
        };
        let at = locate(&state.db, &vdi_ref)?;
        let (sr, vdi) = (at.sr_uuid, at.vdi_uuid);
        ensure_idle(&state.db, &vdi_ref, direction.operation())?;
        let flag = |f| state.db.get(&vdi_ref, f).and_then(|v| v.as_bool()) == Some(true);
        if direction == Direction::Import && flag("read_only") {
            return Err(ApiError::VdiReadOnly { vdi: vdi_ref });
        }
        let size = state
            .db
            .get(&vdi_ref, "virtual_size")
            .and_then(|v| v.as_int())
            .unwrap_or(0)
            .max(0) as u64;
        if let (Direction::Import, Some(len)) = (direction, content_length) {
            if len > size {
                return Err(ApiError::ValueNotSupported {
                    field: "Content-Length".to_string(),
                    value: len.to_string(),
                    reason: alloc::format!("larger than the VDI ({size} bytes)"),
                });
            }
        }
        let sector = sector_size(state, &sr);
        let task = match &request.task_id {
            Some(task) => {
                let pending = state
                    .db
                    .get(task, "status")
                    .as_ref()
                    .and_then(Value::as_str)
                    == Some("pending");
                if !pending {
                    return Err(ApiError::handle_invalid("task", task));
                }
                task.clone()
            }
            None => {
                let mut ctx = crate::dispatch::CallContext {
                    state: &mut self.state,
                    now,
                    session: Some(request.session_id.clone()),
                };
                let label = match direction {
                    Direction::Import => "VDI.import_raw",
                    Direction::Export => "VDI.export_raw",
                };
                tasks::create(&mut ctx, label, "")?
            }
        };
        let state = &mut self.state;
        mark_busy(
            &mut state.db,
            &vdi_ref,
            &task,
            Some(direction.operation()),
            now,
        )?;
        let total = match direction {
            Direction::Import => content_length.unwrap_or(size),
            Direction::Export => size,
        };
        Ok(Transfer {
            direction,
            task,
            vdi_ref,
            sr,
            vdi,
            size,
            total,
            sector,
            position: 0,
            written: 0,
            durable: 0,
            buffer: Vec::new(),
            taken: 0,
        })
    }

    fn task_cancelled(&self, t: &Transfer) -> Option<ApiError> {
        let status = self.state.db.get(&t.task, "status");
        match status.as_ref().and_then(Value::as_str) {
            Some("pending") => None,
            _ => Some(ApiError::TaskCancelled {
                task: t.task.clone(),
            }),
        }
    }

    fn set_progress(&mut self, t: &Transfer, done: u64, now: Timestamp) -> Result<(), ApiError> {
        let p = (done as f64 / t.total.max(1) as f64).clamp(0.0, 1.0);
        self.state
            .db
            .update(&t.task, vec![("progress", Value::Float(p))], now)?;
        Ok(())
    }

    fn storage_failure(&self, t: &Transfer, e: &crate::storage::StorageError) -> ApiError {
        e.to_api_error(&t.vdi_ref, 0)
    }

    /// Writes the whole sectors buffered so far (all of them, padding the last with what the
    /// disk holds, when `last`).
    fn write_buffered(&mut self, t: &mut Transfer, last: bool) -> Result<(), ApiError> {
        let whole = (t.buffer.len() as u64 / t.sector * t.sector) as usize;
        let storage = backend(&mut self.state)?;
        if whole > 0 {
            let data = t.buffer.get(..whole).unwrap_or_default();
            storage
                .write(&t.sr, &t.vdi, t.written, data)
                .map_err(|e| e.to_api_error(&t.vdi_ref, 0))?;
            t.written += whole as u64;
            t.buffer.drain(..whole);
        }
        if last && !t.buffer.is_empty() {
            // A partial last sector: keep the bytes after the body's end as they are.
            let mut sector = vec![0u8; t.sector as usize];
            storage
                .read(&t.sr, &t.vdi, t.written, &mut sector)
                .map_err(|e| e.to_api_error(&t.vdi_ref, 0))?;
            if let Some(head) = sector.get_mut(..t.buffer.len()) {
                head.copy_from_slice(&t.buffer);
            }
            storage
                .write(&t.sr, &t.vdi, t.written, &sector)
                .map_err(|e| e.to_api_error(&t.vdi_ref, 0))?;
            t.written += t.buffer.len() as u64;
            t.buffer.clear();
        }
        Ok(())
    }

    fn make_durable(&mut self, t: &mut Transfer, now: Timestamp) -> Result<(), ApiError> {
        if let Some(storage) = self.state.storage.as_deref_mut() {
            storage
                .flush(&t.sr)
                .map_err(|e| e.to_api_error(&t.vdi_ref, 0))?;
        }
        t.durable = t.written;
        self.set_progress(t, t.durable, now)
    }

    /// Import: takes the next piece of the request body.
    pub fn import_data(
        &mut self,
        t: &mut Transfer,
        mut data: &[u8],
        now: Timestamp,
    ) -> Result<(), ApiError> {
        if let Some(e) = self.task_cancelled(t) {
            return Err(e);
        }
        if t.position.saturating_add(data.len() as u64) > t.size {
            return Err(ApiError::ValueNotSupported {
                field: "body".to_string(),
                value: (t.position + data.len() as u64).to_string(),
                reason: alloc::format!("larger than the VDI ({} bytes)", t.size),
            });
        }
        while !data.is_empty() {
            let room = WRITE_PIECE.saturating_sub(t.buffer.len()).max(1);
            let (now_part, rest) = data.split_at(room.min(data.len()));
            t.buffer.extend_from_slice(now_part);
            t.position += now_part.len() as u64;
            data = rest;
            if t.buffer.len() >= WRITE_PIECE {
                self.write_buffered(t, false)?;
                if t.written - t.durable >= DURABLE_EVERY {
                    self.make_durable(t, now)?;
                }
            }
        }
        Ok(())
    }

    /// Export: reads the next piece into [`Transfer::output`] when it is empty. Returns
    /// false once the whole VDI has been read.
    pub fn export_refill(&mut self, t: &mut Transfer, now: Timestamp) -> Result<bool, ApiError> {
        if !t.output().is_empty() {
            return Ok(true);
        }
        if t.position >= t.size {
            return Ok(false);
        }
        if let Some(e) = self.task_cancelled(t) {
            return Err(e);
        }
        let n = (t.size - t.position).min(READ_PIECE as u64) as usize;
        t.buffer.resize(n, 0);
        t.taken = 0;
        let storage = backend(&mut self.state)?;
        if let Err(e) = storage.read(&t.sr, &t.vdi, t.position, &mut t.buffer) {
            return Err(self.storage_failure(t, &e));
        }
        t.position += n as u64;
        self.set_progress(t, t.position - n as u64, now)?;
        Ok(true)
    }

    /// Ends a transfer whose data all went through: an import writes what is buffered and
    /// flushes. The task succeeds; the VDI is free again.
    pub fn finish_transfer(&mut self, mut t: Transfer, now: Timestamp) -> Result<(), ApiError> {
        let result = match t.direction {
            Direction::Import => self
                .write_buffered(&mut t, true)
                .and_then(|()| self.make_durable(&mut t, now)),
            Direction::Export if t.is_complete() => Ok(()),
            Direction::Export => Err(ApiError::InternalError {
                message: "export finished before its end".to_string(),
            }),
        };
        match result {
            Ok(()) => {
                self.end(&t, Ok(Value::void()), now);
                Ok(())
            }
            Err(e) => {
                self.end(&t, Err(e.clone()), now);
                Err(e)
            }
        }
    }

    /// Ends a transfer that failed or was cut off (the client went away): the task fails
    /// with `error`, the VDI is free again. Imported data written so far stays (it is made
    /// durable with the next flush of the SR).
    pub fn fail_transfer(&mut self, t: Transfer, error: ApiError, now: Timestamp) {
        self.end(&t, Err(error), now);
    }

    fn end(&mut self, t: &Transfer, result: Result<Value, ApiError>, now: Timestamp) {
        let state = &mut self.state;
        consistent(mark_busy(&mut state.db, &t.vdi_ref, &t.task, None, now));
        let pending = state
            .db
            .get(&t.task, "status")
            .as_ref()
            .and_then(Value::as_str)
            == Some("pending");
        if pending {
            let mut ctx = crate::dispatch::CallContext {
                state: &mut self.state,
                now,
                session: None,
            };
            consistent(tasks::complete(&mut ctx, &t.task, result));
        }
        // An `SR.scan` may have forgotten a VDI the storage manager lost meanwhile.
        if self.state.db.is_a(&t.vdi_ref, "VDI") {
            consistent(refresh_vdi(&mut self.state, &t.vdi_ref, now));
        }
    }
}
