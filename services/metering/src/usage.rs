//! Durable per-VM usage for billing: the ledger, journaled through a [`UsageStore`].
//!
//! Every change is one journal frame written before it is applied in memory, so the state
//! after a power cut is what was acknowledged, or that plus the one change in flight: at
//! most one sampling interval is lost, and nothing is counted twice (a delta is applied
//! once, and the counters' baseline is journaled with it, so the next delta continues from
//! exactly where the journal stops). When the journal grows past
//! [`UsageConfig::compact_after_bytes`], or after a failed write, the next change is written
//! as a checkpoint of the whole ledger that atomically replaces the journal.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::codec::{DecodeError, Reader, Writer};
use crate::figures::VmFigures;
use crate::ledger::{delta, Entry, Ledger, UsageCounters, VmIdentity};
use crate::meter::is_uuid;
use crate::report::{render_csv, render_json, UsageFormat, UsageRow};
use crate::rrd::HEARTBEAT_MS;
use crate::store::{push_frame, split_frames, UsageStore};

const FRAME_CHECKPOINT: u8 = 1;
const FRAME_BATCH: u8 = 2;

const HOUR_S: u64 = 3600;
const HOUR_MS: u64 = HOUR_S * 1000;
/// The longest period one export or acknowledgement may cover.
pub const MAX_PERIOD_S: u64 = 400 * 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageConfig {
    /// Journal bytes after which the next change is written as a checkpoint (or twice the
    /// latest checkpoint, if that is more).
    pub compact_after_bytes: usize,
    /// The most hourly rows held (~200 bytes each in memory); samples that would need more
    /// are refused with [`UsageError::LedgerFull`] until acknowledged rows are dropped.
    pub max_rows: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            compact_after_bytes: 1 << 20,
            max_rows: 200_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError<E> {
    Store(E),
    /// A frame with a valid checksum that does not decode: written by another format
    /// version or a bug; refused rather than silently dropping records.
    Corrupt {
        frame: usize,
        error: DecodeError,
    },
    /// `from`/`to` not whole hours, `from` ≥ `to`, or longer than [`MAX_PERIOD_S`].
    BadPeriod {
        from: u64,
        to: u64,
    },
    /// An acknowledgement of a period whose rows were none of them exported.
    NothingExported {
        from: u64,
        to: u64,
    },
    BadUuid(String),
    LedgerFull {
        rows: usize,
    },
}

/// What opening the journal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    pub frames: usize,
    /// Bytes at the end that were not a whole valid frame (a write torn by a power cut).
    pub torn_tail_bytes: usize,
}

/// What an acknowledgement dropped and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckReport {
    pub acknowledged_rows: usize,
    /// Rows of the period that changed since they were exported (or were never exported):
    /// kept for the next export.
    pub kept_rows: usize,
}

/// One running VM in a usage sample.
#[derive(Debug, Clone, Copy)]
pub struct VmUsageSample<'a> {
    pub identity: &'a VmIdentity,
    pub figures: &'a VmFigures,
}

pub struct Usage<S: UsageStore> {
    store: S,
    config: UsageConfig,
    ledger: Ledger,
    /// When each VM was last sampled (not journaled: after a restart the first sample of a
    /// VM only sets its clock, so no time is billed across an outage).
    last_seen_ms: BTreeMap<String, u64>,
    journal_bytes: usize,
    /// The size of the latest checkpoint: the journal may grow to twice it before the next,
    /// so a large ledger is not rewritten at every sample.
    checkpoint_bytes: usize,
    needs_compaction: bool,
}

fn check_period<E>(from: u64, to: u64) -> Result<(u64, u64), UsageError<E>> {
    if !from.is_multiple_of(HOUR_S)
        || !to.is_multiple_of(HOUR_S)
        || from >= to
        || to - from > MAX_PERIOD_S
    {
        return Err(UsageError::BadPeriod { from, to });
    }
    Ok((from / HOUR_S, to / HOUR_S))
}

fn checkpoint_frame(ledger: &Ledger) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(FRAME_CHECKPOINT);
    ledger.encode(&mut w);
    let mut frame = Vec::new();
    push_frame(&mut frame, &w.bytes);
    frame
}

fn decode_frame(payload: &[u8], ledger: &mut Ledger) -> Result<(), DecodeError> {
    let mut r = Reader::new(payload);
    match r.u8()? {
        FRAME_CHECKPOINT => {
            let decoded = Ledger::decode(&mut r)?;
            if !r.is_empty() {
                return Err(DecodeError::TooLong);
            }
            *ledger = decoded;
        }
        FRAME_BATCH => {
            let count = r.len(1)?;
            let mut entries = Vec::new();
            for _ in 0..count {
                entries.push(Entry::decode(&mut r)?);
            }
            if !r.is_empty() {
                return Err(DecodeError::TooLong);
            }
            for entry in &entries {
                ledger.apply(entry);
            }
        }
        t => return Err(DecodeError::BadTag(t)),
    }
    Ok(())
}

impl<S: UsageStore> Usage<S> {
    /// Replays the journal in `store`.
    pub fn open(
        mut store: S,
        config: UsageConfig,
    ) -> Result<(Self, OpenReport), UsageError<S::Error>> {
        let journal = store.read_all().map_err(UsageError::Store)?;
        let (frames, torn_tail_bytes) = split_frames(&journal);
        let mut ledger = Ledger::default();
        for (index, payload) in frames.iter().enumerate() {
            decode_frame(payload, &mut ledger).map_err(|error| UsageError::Corrupt {
                frame: index,
                error,
            })?;
        }
        let report = OpenReport {
            frames: frames.len(),
            torn_tail_bytes,
        };
        let usage = Usage {
            store,
            config,
            ledger,
            last_seen_ms: BTreeMap::new(),
            journal_bytes: journal.len() - torn_tail_bytes,
            checkpoint_bytes: frames.first().map_or(0, |f| f.len()),
            // Appending behind a torn tail would be ignored on the next replay.
            needs_compaction: torn_tail_bytes > 0,
        };
        Ok((usage, report))
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The sum of a VM's rows (tests and `VM_metrics`-style totals).
    pub fn totals(&self, uuid: &str) -> UsageCounters {
        let mut total = UsageCounters::default();
        for ((_, u), row) in &self.ledger.rows {
            if u == uuid {
                total.add(&row.counters);
            }
        }
        total
    }

    /// Writes `entries` as one frame (or a checkpoint including them), then applies them.
    fn persist(&mut self, entries: &[Entry]) -> Result<(), UsageError<S::Error>> {
        let mut w = Writer::default();
        w.u8(FRAME_BATCH);
        w.len(entries.len());
        for entry in entries {
            entry.encode(&mut w);
        }
        let mut frame = Vec::new();
        push_frame(&mut frame, &w.bytes);
        if self.needs_compaction
            || self.journal_bytes + frame.len()
                > self
                    .config
                    .compact_after_bytes
                    .max(self.checkpoint_bytes.saturating_mul(2))
        {
            let mut next = self.ledger.clone();
            for entry in entries {
                next.apply(entry);
            }
            let checkpoint = checkpoint_frame(&next);
            if let Err(e) = self.store.compact(&checkpoint) {
                self.needs_compaction = true;
                return Err(UsageError::Store(e));
            }
            self.ledger = next;
            self.journal_bytes = checkpoint.len();
            self.checkpoint_bytes = checkpoint.len();
            self.needs_compaction = false;
            return Ok(());
        }
        if let Err(e) = self.store.append(&frame) {
            self.needs_compaction = true;
            return Err(UsageError::Store(e));
        }
        for entry in entries {
            self.ledger.apply(entry);
        }
        self.journal_bytes += frame.len();
        Ok(())
    }

    /// Records the usage of the running VMs sampled at `now_ms`. On error nothing of this
    /// sample is recorded and the counters' baselines stay, so the next sample that is
    /// recorded includes this one's CPU time and bytes.
    pub fn record(
        &mut self,
        now_ms: u64,
        vms: &[VmUsageSample<'_>],
    ) -> Result<(), UsageError<S::Error>> {
        let hour = now_ms / HOUR_MS;
        let mut entries = Vec::new();
        let mut new_rows = 0;
        let mut seen: Vec<&str> = Vec::new();
        for vm in vms {
            let uuid = vm.figures.uuid.as_str();
            if !is_uuid(uuid) {
                return Err(UsageError::BadUuid(String::from(uuid)));
            }
            if seen.contains(&uuid) {
                continue;
            }
            seen.push(uuid);
            let identity = vm.identity.normalized();
            let destroyed = self.ledger.vms.get(uuid).is_some_and(|r| r.destroyed);
            if destroyed || self.ledger.identity(uuid) != Some(&identity) {
                entries.push(Entry::Identity {
                    uuid: String::from(uuid),
                    identity,
                });
            }
            let interval_ms = self
                .last_seen_ms
                .get(uuid)
                .map_or(0, |then| now_ms.saturating_sub(*then).min(HEARTBEAT_MS));
            let (d, baseline) = delta(self.ledger.baseline(uuid), vm.figures, interval_ms);
            if !self.ledger.has_row(hour, uuid) {
                new_rows += 1;
            }
            entries.push(Entry::Usage {
                uuid: String::from(uuid),
                hour,
                delta: d,
                baseline,
            });
        }
        if self.ledger.row_count() + new_rows > self.config.max_rows {
            return Err(UsageError::LedgerFull {
                rows: self.ledger.row_count(),
            });
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.persist(&entries)?;
        for uuid in seen {
            self.last_seen_ms.insert(String::from(uuid), now_ms);
        }
        Ok(())
    }

    /// The VM was destroyed: its rows stay until exported and acknowledged.
    pub fn vm_destroyed(&mut self, uuid: &str) -> Result<(), UsageError<S::Error>> {
        self.last_seen_ms.remove(uuid);
        if !self.ledger.vms.contains_key(uuid) {
            return Ok(());
        }
        self.persist(&[Entry::Destroyed {
            uuid: String::from(uuid),
        }])
    }

    /// The rows of [from, to) (whole hours, seconds since the epoch), without marking them.
    pub fn rows(&self, from: u64, to: u64) -> Result<Vec<UsageRow>, UsageError<S::Error>> {
        let (from_hour, to_hour) = check_period(from, to)?;
        Ok(self
            .ledger
            .rows_in(from_hour, to_hour)
            .map(|((hour, uuid), row)| {
                let record = self.ledger.vms.get(uuid);
                UsageRow {
                    vm_uuid: uuid.clone(),
                    identity: record.map(|r| r.identity.clone()).unwrap_or_default(),
                    hour_start: hour * HOUR_S,
                    counters: row.counters,
                    destroyed: record.is_some_and(|r| r.destroyed),
                }
            })
            .collect())
    }

    /// `GET /usage?from=&to=&format=`: the rows of [from, to), marked exported (durably,
    /// before they are returned) so a later acknowledgement may drop them.
    pub fn export(
        &mut self,
        from: u64,
        to: u64,
        format: UsageFormat,
    ) -> Result<String, UsageError<S::Error>> {
        let rows = self.rows(from, to)?;
        let (from_hour, to_hour) = check_period(from, to)?;
        self.persist(&[Entry::Exported { from_hour, to_hour }])?;
        Ok(match format {
            UsageFormat::Csv => render_csv(&rows),
            UsageFormat::Json => render_json(&rows, from, to),
        })
    }

    /// `POST /usage/ack?from=&to=`: drops the rows of [from, to) exported and unchanged
    /// since; rows that changed after the export are kept for the next one.
    pub fn ack(&mut self, from: u64, to: u64) -> Result<AckReport, UsageError<S::Error>> {
        let (from_hour, to_hour) = check_period(from, to)?;
        let (mut acknowledged_rows, mut kept_rows) = (0, 0);
        for (_, row) in self.ledger.rows_in(from_hour, to_hour) {
            if row.exported {
                acknowledged_rows += 1;
            } else {
                kept_rows += 1;
            }
        }
        if acknowledged_rows == 0 {
            // Nothing left to drop: a repeated acknowledgement is answered again (Ok); a
            // period with rows none of which were exported is refused.
            if kept_rows == 0 {
                return Ok(AckReport {
                    acknowledged_rows,
                    kept_rows,
                });
            }
            return Err(UsageError::NothingExported { from, to });
        }
        self.persist(&[Entry::Acked { from_hour, to_hour }])?;
        Ok(AckReport {
            acknowledged_rows,
            kept_rows,
        })
    }
}
