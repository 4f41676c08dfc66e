//! Metering and chargeback for Keel, host-testable and `no_std`.
//!
//! - [`source`]: the data sources (xapi's names, types, units) of the host and of each VM.
//! - [`Rrd`] / [`Archive`]: round-robin databases with xapi's archives (5 s × 120, 1 min ×
//!   120, 1 h × 168, 1 day × 366; AVERAGE, MIN, MAX; xff 0.5), fed with samples whose time
//!   the caller hands in.
//!
//! Endpoints, formats and the usage schema: docs/metering.md.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod archive;
mod codec;
mod dump;
pub mod figures;
mod ledger;
mod meter;
mod rrd;
pub mod source;
mod text;
mod updates;

pub use archive::{Archive, Cf, Timescale, CFS, TIMESCALES, XFF};
pub use dump::dump_xml;
pub use ledger::{tenant_of, Baseline, Entry, Ledger, UsageCounters, VmIdentity, MAX_TAGS};
pub use meter::{is_uuid, MeterError, Metering, SampleReport, DEFAULT_MAX_VMS};
pub use rrd::{Rrd, RrdError, HEARTBEAT_MS, ROWS_PER_SOURCE, STEP_MS};
pub use text::parse_time;
pub use updates::{
    export, ExportError, Owner, OwnerKind, UpdatesQuery, Xport, FUTURE_SLACK_S, MAX_INTERVAL_S,
    RETENTION_S,
};
