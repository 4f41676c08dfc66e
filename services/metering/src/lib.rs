//! Metering and chargeback for Keel, host-testable and `no_std`.
//!
//! - [`source`]: the data sources (xapi's names, types, units) of the host and of each VM.
//! - [`Rrd`] / [`Archive`]: round-robin databases with xapi's archives (5 s × 120, 1 min ×
//!   120, 1 h × 168, 1 day × 366; AVERAGE, MIN, MAX; xff 0.5), fed with samples whose time
//!   the caller hands in.
//! - [`Metering`]: the host's and the VMs' RRDs fed from sampled [`figures`], and what
//!   `/rrd_updates`, `/host_rrd`, `/vm_rrd`, `*.get_data_sources` and
//!   `*.query_data_source` return; [`Metering::save`] / [`Metering::restore`] keep the
//!   archives across host reboots.
//! - [`Usage`]: hourly per-VM usage rows for billing, journaled through a [`UsageStore`]
//!   (crash-tested with [`fakes::MemUsageStore`]), exported as CSV or JSON and dropped only
//!   once exported and acknowledged.
//!
//! Endpoints, formats and the usage schema: docs/metering.md.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod archive;
mod codec;
mod dump;
pub mod fakes;
pub mod figures;
mod ledger;
mod meter;
mod report;
mod rrd;
mod snapshot;
pub mod source;
mod store;
mod text;
mod updates;
mod usage;
mod usage_query;
mod volume_store;

pub use archive::{Archive, Cf, Timescale, CFS, TIMESCALES, XFF};
pub use dump::dump_xml;
pub use ledger::{tenant_of, Baseline, Entry, Ledger, UsageCounters, VmIdentity, MAX_TAGS};
pub use meter::{is_uuid, MeterError, Metering, SampleReport, DEFAULT_MAX_VMS};
pub use report::{render_csv, render_json, UsageFormat, UsageRow, CSV_HEADER};
pub use rrd::{Rrd, RrdError, HEARTBEAT_MS, HELD_ROWS_PER_SOURCE, ROWS_PER_SOURCE, STEP_MS};
pub use snapshot::RestoreError;
pub use store::{push_frame, split_frames, UsageStore, FRAME_HEADER, MAX_FRAME};
pub use text::parse_time;
pub use updates::{
    export, ExportError, Owner, OwnerKind, UpdatesQuery, VmFilter, Xport, FUTURE_SLACK_S,
    MAX_CELLS, MAX_INTERVAL_S, RETENTION_S,
};
pub use usage::{
    AckReport, OpenReport, Usage, UsageConfig, UsageError, VmUsageSample, MAX_PERIOD_S,
};
pub use usage_query::{UsageParamError, UsageQuery};
pub use volume_store::{
    is_metering_volume, JournalVolume, VolumeStore, VolumeStoreError, RRD_VOLUME_NAME,
    USAGE_VOLUME_NAME, VOLUME_BLOCK,
};
