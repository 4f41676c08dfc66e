//! `VDI.copy` across SRs: a job moving the data a few chunks per step, so other work
//! interleaves and the task shows progress. All-zero chunks are not written, so holes stay
//! holes. Both VDIs are busy (`VDI_IN_USE`) while it runs; a failure or `task.cancel`
//! removes the unfinished copy.

use alloc::format;
use alloc::string::String;
use alloc::vec;

use super::storage_mirror::{
    mark_busy, no_storage, refresh_sr, refresh_vdi, storage_error, VdiLocation,
};
use crate::api::State;
use crate::dispatch::{CallContext, Job, JobStep};
use crate::error::ApiError;
use crate::storage::{StorageBackend, StorageError};
use crate::store::{consistent, Db};
use crate::time::Timestamp;
use crate::value::Value;

/// Bytes moved per read and write...
const COPY_CHUNK: usize = 1 << 20;
/// ...and chunks per job step.
const COPY_CHUNKS_PER_STEP: usize = 4;

pub(crate) struct CopyJob {
    source: VdiLocation,
    /// The copy, already created (empty) in the destination SR.
    dest: VdiLocation,
    /// The `current_operations` key marking both VDIs busy.
    key: String,
    size: u64,
    offset: u64,
    cancelled: bool,
}

impl CopyJob {
    /// Marks both VDIs busy and returns the job that fills `dest` with `size` bytes of
    /// `source`.
    pub(crate) fn start(
        db: &mut Db,
        source: VdiLocation,
        dest: VdiLocation,
        size: u64,
        now: Timestamp,
    ) -> Result<CopyJob, ApiError> {
        let key = format!("copy to {}", dest.vdi);
        mark_busy(db, &source.vdi, &key, Some("copy"), now)?;
        mark_busy(db, &dest.vdi, &key, Some("copy"), now)?;
        Ok(CopyJob {
            source,
            dest,
            key,
            size,
            offset: 0,
            cancelled: false,
        })
    }

    fn copy_some(&mut self, storage: &mut dyn StorageBackend) -> Result<(), StorageError> {
        let mut buffer = vec![0u8; COPY_CHUNK];
        for _ in 0..COPY_CHUNKS_PER_STEP {
            if self.offset >= self.size {
                return storage.flush(&self.dest.sr_uuid);
            }
            let n = (self.size - self.offset).min(COPY_CHUNK as u64) as usize;
            let piece = buffer.get_mut(..n).unwrap_or_default();
            let (source, dest) = (&self.source, &self.dest);
            storage.read(&source.sr_uuid, &source.vdi_uuid, self.offset, piece)?;
            if piece.iter().any(|&b| b != 0) {
                storage.write(&dest.sr_uuid, &dest.vdi_uuid, self.offset, piece)?;
            }
            self.offset += n as u64;
        }
        Ok(())
    }

    fn release(&self, state: &mut State, now: Timestamp) -> Result<(), ApiError> {
        mark_busy(&mut state.db, &self.source.vdi, &self.key, None, now)?;
        mark_busy(&mut state.db, &self.dest.vdi, &self.key, None, now)
    }

    /// Removes the unfinished copy after a failure or cancellation, then fails with `error`.
    fn discard(&self, state: &mut State, now: Timestamp, error: ApiError) -> JobStep {
        consistent(self.release(state, now));
        if let Some(storage) = state.storage.as_deref_mut() {
            // If the storage manager cannot remove the copy either, its object stays (as the
            // VDI does) and the job's own error, the cause, is the one to report.
            if storage
                .destroy_vdi(&self.dest.sr_uuid, &self.dest.vdi_uuid)
                .is_err()
            {
                return JobStep::Failed(error);
            }
        }
        consistent(state.db.destroy(&self.dest.vdi, now));
        consistent(refresh_sr(state, &self.dest.sr, now));
        JobStep::Failed(error)
    }
}

impl Job for CopyJob {
    fn step(&mut self, ctx: &mut CallContext<'_>) -> JobStep {
        let now = ctx.now;
        if self.cancelled {
            let cancelled = ApiError::TaskCancelled {
                task: String::new(),
            };
            return self.discard(ctx.state, now, cancelled);
        }
        let Some(storage) = ctx.state.storage.as_deref_mut() else {
            return JobStep::Failed(no_storage());
        };
        if let Err(e) = self.copy_some(storage) {
            let error = storage_error(&ctx.state.db, &self.dest.sr, &self.dest.vdi, &e);
            return self.discard(ctx.state, now, error);
        }
        if self.offset < self.size {
            return JobStep::Progress(self.offset as f64 / self.size.max(1) as f64);
        }
        if let Err(e) = self
            .release(ctx.state, now)
            .and_then(|()| refresh_vdi(ctx.state, &self.dest.vdi, now))
        {
            return JobStep::Failed(e);
        }
        JobStep::Done(Value::String(self.dest.vdi.clone()))
    }

    fn abandon(&mut self, ctx: &mut CallContext<'_>) {
        // The task is gone: no one reads the result, but the half copy must go too.
        let cancelled = ApiError::TaskCancelled {
            task: self.key.clone(),
        };
        let _failed: JobStep = self.discard(ctx.state, ctx.now, cancelled);
    }

    fn cancel(&mut self) -> bool {
        // Stop at the next step, which removes the partial copy.
        self.cancelled = true;
        false
    }
}
