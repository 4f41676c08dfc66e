//! `GET /rrd_updates`: the rows of several RRDs since a time, in rrdtool's `xport` format
//! (XML) or xapi's JSON rendering of it.
//!
//! The archive is chosen as xapi chooses it: among the archives of the requested CF
//! (all CFs when none is asked), the finest whose resolution is at least `interval` and
//! whose history reaches back past `start`; if none does, the coarsest. Rows are newest
//! first; a column is `CF:owner:uuid:name`, e.g. `AVERAGE:host:<uuid>:cpu0` or
//! `AVERAGE:vm:<uuid>:memory`.

use alloc::collections::TryReserveError;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::archive::{Archive, Cf};
use crate::rrd::{Rrd, STEP_MS};
use crate::text::{push_element, push_float, push_json_string};

/// How far back anything is kept: the day archive's 366 rows.
pub const RETENTION_S: u64 = 366 * 86_400;
/// The coarsest interval that means anything (one row of the day archive) times the rows.
pub const MAX_INTERVAL_S: u64 = RETENTION_S;
/// How far in the future `start` may be before it is refused (clients' clocks drift).
pub const FUTURE_SLACK_S: u64 = 60;
/// The most values (rows × columns) one export holds: about 40 MB of XML at the peak. A
/// host of 100 VMs asking for every CF of its 5 s archive (100 × 14 × 3 × 120 = 504 000)
/// fits; asking for more is refused rather than exhausting the heap.
pub const MAX_CELLS: usize = 2_000_000;

/// A request the exporters refuse. The lead maps these onto HTTP answers (docs/metering.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportError {
    MissingParameter(&'static str),
    BadParameter {
        name: &'static str,
        value: String,
    },
    /// `start` is later than now.
    StartInFuture {
        start: i64,
        now: u64,
    },
    /// `start` is older than anything kept (a year), or a relative start reaches further.
    RangeTooLarge {
        start: i64,
    },
    /// `interval` is zero-length nonsense or longer than the retention.
    BadInterval(u64),
    /// No VM (or host) of that uuid is metered here.
    UnknownUuid(String),
    /// The answer would hold more than [`MAX_CELLS`] values: ask for one CF, one VM, or a
    /// later start.
    TooLarge {
        cells: usize,
    },
    OutOfMemory,
}

impl From<TryReserveError> for ExportError {
    fn from(_: TryReserveError) -> Self {
        ExportError::OutOfMemory
    }
}

/// The VMs an export covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmFilter {
    /// Every running VM.
    All,
    None,
    /// This VM, running or not.
    One(String),
}

/// The parameters of `/rrd_updates` (`session_id` is the caller's business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatesQuery {
    /// Seconds since the epoch; negative = relative to the latest update.
    pub start: i64,
    /// The wanted resolution in seconds (0 = the finest).
    pub interval: u64,
    /// None = every CF.
    pub cf: Option<Cf>,
    /// Include the host's RRD.
    pub host: bool,
    /// Which VMs (xapi's `vm_uuid`).
    pub vm_uuid: VmFilter,
    pub json: bool,
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, ExportError> {
    match value {
        // xapi takes a bare `json` (or `json=`) as asking for JSON.
        "true" | "1" | "yes" | "" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ExportError::BadParameter {
            name,
            value: String::from(value),
        }),
    }
}

impl UpdatesQuery {
    /// Reads the query parameters (already percent-decoded). Unknown parameters are ignored,
    /// as xapi ignores them.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ExportError> {
        let mut query = UpdatesQuery {
            start: 0,
            interval: 0,
            cf: None,
            host: false,
            vm_uuid: VmFilter::All,
            json: false,
        };
        let mut have_start = false;
        for (name, value) in params {
            match name {
                "start" => {
                    query.start = value.parse().map_err(|_| ExportError::BadParameter {
                        name: "start",
                        value: String::from(value),
                    })?;
                    have_start = true;
                }
                "interval" => {
                    query.interval = value.parse().map_err(|_| ExportError::BadParameter {
                        name: "interval",
                        value: String::from(value),
                    })?;
                }
                "cf" => {
                    query.cf = Some(Cf::parse(value).ok_or_else(|| ExportError::BadParameter {
                        name: "cf",
                        value: String::from(value),
                    })?);
                }
                "host" => query.host = parse_bool("host", value)?,
                "json" => query.json = parse_bool("json", value)?,
                // xapi: `all` (the default) or `none`, or one VM's uuid.
                "vm_uuid" | "uuid" => {
                    query.vm_uuid = match value {
                        "all" => VmFilter::All,
                        "none" => VmFilter::None,
                        uuid => VmFilter::One(String::from(uuid)),
                    }
                }
                _ => {}
            }
        }
        if !have_start {
            return Err(ExportError::MissingParameter("start"));
        }
        Ok(query)
    }

    /// Refuses nonsense against the clock (`now` in seconds since the epoch).
    pub fn validate(&self, now: u64) -> Result<(), ExportError> {
        if self.interval > MAX_INTERVAL_S {
            return Err(ExportError::BadInterval(self.interval));
        }
        if self.start >= 0 {
            let start = self.start as u64;
            if start > now.saturating_add(FUTURE_SLACK_S) {
                return Err(ExportError::StartInFuture {
                    start: self.start,
                    now,
                });
            }
            if start < now.saturating_sub(RETENTION_S) {
                return Err(ExportError::RangeTooLarge { start: self.start });
            }
        } else if self.start.unsigned_abs() > RETENTION_S {
            return Err(ExportError::RangeTooLarge { start: self.start });
        }
        Ok(())
    }
}

/// Which kind of owner an RRD belongs to; it names the legend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    Host,
    Vm,
}

/// One RRD to export, with its owner.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub kind: OwnerKind,
    pub uuid: &'a str,
    pub rrd: &'a Rrd,
}

impl Owner<'_> {
    fn prefix(&self) -> String {
        let kind = match self.kind {
            OwnerKind::Host => "host",
            OwnerKind::Vm => "vm",
        };
        format!("{kind}:{}:", self.uuid)
    }
}

/// An export: rrdtool's `xport` shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Xport {
    pub start: u64,
    pub step: u64,
    pub end: u64,
    pub legend: Vec<String>,
    /// (time, one value per legend entry), newest first.
    pub rows: Vec<(u64, Vec<f64>)>,
}

fn contains_start(archive: &Archive, last_pdp_s: u64, start: i64, pdp_interval: u64) -> bool {
    let span = STEP_MS / 1000 * u64::from(archive.rows()) * u64::from(archive.pdp_per_row());
    let oldest = last_pdp_s as i64 - span as i64;
    u64::from(archive.pdp_per_row()) >= pdp_interval && start > oldest
}

/// The (pdp_per_row, rows) of the archives to export, chosen as xapi chooses them.
fn choose_timescale(rrd: &Rrd, cf: Option<Cf>, start: i64, interval: u64) -> Option<u32> {
    let step_s = STEP_MS / 1000;
    let last_pdp_s = rrd.last_update_ms() / 1000 / step_s * step_s;
    let pdp_interval = interval / step_s;
    let candidates = || {
        rrd.archives()
            .iter()
            .filter(move |a| cf.is_none_or(|cf| a.cf() == cf))
    };
    candidates()
        .find(|a| contains_start(a, last_pdp_s, start, pdp_interval))
        .or_else(|| candidates().next_back())
        .map(Archive::pdp_per_row)
}

/// Builds the export of `owners` (the first one's clock is the reference; Keel updates them
/// all with the same sample time). `query.validate` is the caller's first step.
pub fn export(owners: &[Owner<'_>], query: &UpdatesQuery) -> Result<Xport, ExportError> {
    let step_s = STEP_MS / 1000;
    let Some(first) = owners.first() else {
        return Ok(Xport {
            start: 0,
            step: step_s,
            end: 0,
            legend: Vec::new(),
            rows: Vec::new(),
        });
    };
    let last_update_s = first.rrd.last_update_ms() / 1000;
    let start = if query.start < 0 {
        last_update_s as i64 + query.start
    } else {
        query.start
    };
    let pdp_per_row = choose_timescale(first.rrd, query.cf, start, query.interval)
        .ok_or(ExportError::OutOfMemory)?;
    let rra_step = step_s * u64::from(pdp_per_row);

    // Columns: per owner, per matching archive, per data source.
    let mut legend = Vec::new();
    let mut columns: Vec<(&Archive, usize, u64)> = Vec::new();
    for owner in owners {
        let prefix = owner.prefix();
        let owner_last_cdp = owner.rrd.last_update_ms() / 1000 / rra_step * rra_step;
        for archive in
            owner.rrd.archives().iter().filter(|a| {
                a.pdp_per_row() == pdp_per_row && query.cf.is_none_or(|cf| a.cf() == cf)
            })
        {
            for (index, spec) in owner.rrd.specs().enumerate() {
                legend.try_reserve(1)?;
                columns.try_reserve(1)?;
                legend.push(format!("{}:{prefix}{}", archive.cf().as_str(), spec.name));
                columns.push((owner.rrd.values_of(archive), index, owner_last_cdp));
            }
        }
    }

    let last_cdp = last_update_s / rra_step * rra_step;
    let first_cdp = if start < 0 {
        rra_step
    } else {
        (start as u64) / rra_step * rra_step + rra_step
    };
    let max_rows = owners
        .first()
        .and_then(|o| {
            o.rrd
                .archives()
                .iter()
                .find(|a| a.pdp_per_row() == pdp_per_row)
        })
        .map_or(0, |a| a.rows() as usize);
    let row_count = (0..max_rows)
        .take_while(|age| {
            last_cdp
                .checked_sub(*age as u64 * rra_step)
                .is_some_and(|time| time as i64 >= start)
        })
        .count();
    let cells = row_count.saturating_mul(columns.len());
    if cells > MAX_CELLS {
        return Err(ExportError::TooLarge { cells });
    }
    let mut rows = Vec::new();
    rows.try_reserve_exact(row_count)?;
    for age in 0..row_count {
        let Some(time) = last_cdp.checked_sub(age as u64 * rra_step) else {
            break;
        };
        if (time as i64) < start {
            break;
        }
        let mut values = Vec::new();
        values.try_reserve_exact(columns.len())?;
        for (archive, index, owner_last_cdp) in &columns {
            // Owners updated at another time than the first line up by time, not by row.
            let value = owner_last_cdp
                .checked_sub(time)
                .map_or(f64::NAN, |d| archive.value(*index, (d / rra_step) as usize));
            values.push(value);
        }
        rows.push((time, values));
    }
    Ok(Xport {
        start: first_cdp,
        step: rra_step,
        end: last_cdp,
        legend,
        rows,
    })
}

impl Xport {
    /// rrdtool's xport XML, as xapi writes it.
    pub fn to_xml(&self) -> Result<String, ExportError> {
        let mut out = String::new();
        out.try_reserve(self.estimated_len())?;
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        out.push_str("<xport><meta>");
        let _ = write!(
            out,
            "<start>{}</start><step>{}</step><end>{}</end><rows>{}</rows><columns>{}</columns>",
            self.start,
            self.step,
            self.end,
            self.rows.len(),
            self.legend.len()
        );
        out.push_str("<legend>");
        for entry in &self.legend {
            push_element(&mut out, "entry", entry);
        }
        out.push_str("</legend></meta><data>");
        for (time, values) in &self.rows {
            let _ = write!(out, "<row><t>{time}</t>");
            for value in values {
                out.push_str("<v>");
                push_float(&mut out, *value);
                out.push_str("</v>");
            }
            out.push_str("</row>");
        }
        out.push_str("</data></xport>");
        Ok(out)
    }

    /// xapi's JSON rendering (`json=true`): the same fields, numbers bare and unknown values
    /// as `NaN`, as xapi has long written it and Xen Orchestra reads it (with JSON5; it
    /// requires `meta.step` to be a number). Keys are quoted, so Python's `json.loads` reads
    /// it too (it accepts `NaN` and `Infinity`). Recent xapi renders every number as a
    /// string instead, which Xen Orchestra's check of `step` would refuse.
    pub fn to_json(&self) -> Result<String, ExportError> {
        let mut out = String::new();
        out.try_reserve(self.estimated_len())?;
        let _ = write!(
            out,
            "{{\"meta\":{{\"start\":{},\"step\":{},\"end\":{},\"rows\":{},\"columns\":{},\"legend\":[",
            self.start,
            self.step,
            self.end,
            self.rows.len(),
            self.legend.len()
        );
        for (i, entry) in self.legend.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, entry);
        }
        out.push_str("]},\"data\":[");
        for (i, (time, values)) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{{\"t\":{time},\"values\":[");
            for (j, value) in values.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                push_float(&mut out, *value);
            }
            out.push_str("]}");
        }
        out.push_str("]}");
        Ok(out)
    }

    fn estimated_len(&self) -> usize {
        256 + self.legend.iter().map(|l| l.len() + 16).sum::<usize>()
            + self.rows.len() * (24 + self.legend.len() * 16)
    }
}
