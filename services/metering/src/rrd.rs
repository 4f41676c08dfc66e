//! A round-robin database: the data sources of one owner and their archives.
//!
//! Samples arrive about every 5 s at times the caller hands in (milliseconds since the epoch,
//! integers so no float rounding moves a step boundary). As rrdtool does, each update turns
//! the raw samples into rates (per the data source type), spreads each rate over the time
//! since the previous update, and closes one primary data point (PDP) per 5 s step boundary
//! crossed. A PDP is unknown when more than half of its step is unknown or when the gap since
//! the previous update exceeds the heartbeat. Closed PDPs feed every archive.

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

use crate::archive::{Archive, Cf, CFS, TIMESCALES};
use crate::codec::{DecodeError, Reader, Writer};
use crate::source::{known_units, DataSourceSpec, DsType};

/// The sampling step, 5 s.
pub const STEP_MS: u64 = 5_000;
/// The longest gap between two updates after which the rates in between are unknown
/// (xapi's minimal_heartbeat, 300 s).
pub const HEARTBEAT_MS: u64 = 300_000;
/// CDPs one data source has over all archives: 3 CFs × (120 + 120 + 168 + 366) (what its
/// export and its snapshot carry).
pub const ROWS_PER_SOURCE: usize = 3 * (120 + 120 + 168 + 366);
/// Of those, the most held in memory: the 5 s MIN and MAX rows are the AVERAGE's
/// ([`Rrd::values_of`]).
pub const HELD_ROWS_PER_SOURCE: usize = ROWS_PER_SOURCE - 2 * 120;

/// Why an update or a change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RrdError {
    /// Not one value per data source.
    WrongArity {
        expected: usize,
        got: usize,
    },
    /// The update is not later than the previous one; the sample is dropped.
    NotMonotonic {
        last_ms: u64,
        now_ms: u64,
    },
    /// A data source of that name already exists.
    DuplicateSource,
    OutOfMemory,
}

impl From<TryReserveError> for RrdError {
    fn from(_: TryReserveError) -> Self {
        RrdError::OutOfMemory
    }
}

/// Per data source update state.
#[derive(Debug, Clone)]
pub(crate) struct DsState {
    pub spec: DataSourceSpec,
    /// The previous raw sample (needed by `Derive`).
    pub last_raw: Option<f64>,
    /// Rate × milliseconds accumulated over the known part of the PDP in progress.
    pub acc: f64,
    /// Unknown milliseconds of the PDP in progress.
    pub unknown_ms: u64,
}

/// The RRD of one owner.
#[derive(Debug, Clone)]
pub struct Rrd {
    last_update_ms: u64,
    sources: Vec<DsState>,
    archives: Vec<Archive>,
}

impl Rrd {
    /// An RRD with `specs` created at `now_ms`; its history is unknown.
    pub fn new(specs: Vec<DataSourceSpec>, now_ms: u64) -> Result<Self, RrdError> {
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|s| s.name == spec.name) {
                return Err(RrdError::DuplicateSource);
            }
        }
        let pdp_index = now_ms / STEP_MS;
        let mut archives = Vec::new();
        archives.try_reserve_exact(TIMESCALES.len() * CFS.len())?;
        for timescale in TIMESCALES {
            for cf in CFS {
                archives.push(Archive::new(cf, timescale, specs.len(), pdp_index)?);
            }
        }
        let mut sources = Vec::new();
        sources.try_reserve_exact(specs.len())?;
        let unknown_ms = now_ms % STEP_MS;
        sources.extend(specs.into_iter().map(|spec| DsState {
            spec,
            last_raw: None,
            acc: 0.0,
            unknown_ms,
        }));
        Ok(Rrd {
            last_update_ms: now_ms,
            sources,
            archives,
        })
    }

    /// Adds a data source (a hot-plugged device); its history is unknown. Existing data
    /// sources keep theirs.
    pub fn add_source(&mut self, spec: DataSourceSpec) -> Result<(), RrdError> {
        if self.sources.iter().any(|s| s.spec.name == spec.name) {
            return Err(RrdError::DuplicateSource);
        }
        self.sources.try_reserve(1)?;
        for archive in &mut self.archives {
            archive.add_source()?;
        }
        self.sources.push(DsState {
            spec,
            last_raw: None,
            acc: 0.0,
            unknown_ms: self.last_update_ms % STEP_MS,
        });
        Ok(())
    }

    /// Gives `Derive` sources their first reading at creation time, so the first update
    /// already yields a rate (`raw` in source order; extra or missing values are ignored).
    pub fn seed(&mut self, raw: &[Option<f64>]) {
        for (ds, value) in self.sources.iter_mut().zip(raw) {
            ds.last_raw = value.filter(|v| v.is_finite());
        }
    }

    pub fn last_update_ms(&self) -> u64 {
        self.last_update_ms
    }

    pub fn step_ms(&self) -> u64 {
        STEP_MS
    }

    pub fn specs(&self) -> impl Iterator<Item = &DataSourceSpec> {
        self.sources.iter().map(|s| &s.spec)
    }

    pub fn source_index(&self, name: &str) -> Option<usize> {
        self.sources.iter().position(|s| s.spec.name == name)
    }

    pub fn archives(&self) -> &[Archive] {
        &self.archives
    }

    /// The archive holding `archive`'s rows: itself, or for a MIN or MAX of single-PDP rows
    /// (equal row for row) the AVERAGE archive of its timescale. Read values through it.
    pub fn values_of<'a>(&'a self, archive: &'a Archive) -> &'a Archive {
        if !archive.is_mirror() {
            return archive;
        }
        self.archives
            .iter()
            .find(|a| a.cf() == Cf::Average && a.pdp_per_row() == archive.pdp_per_row())
            .unwrap_or(archive)
    }

    pub(crate) fn source_states(&self) -> &[DsState] {
        &self.sources
    }

    /// The latest 5 s AVERAGE of data source `index` (what `query_data_source` returns).
    pub fn latest(&self, index: usize) -> f64 {
        self.archives
            .iter()
            .find(|a| a.cf() == Cf::Average)
            .map_or(f64::NAN, |a| a.value(index, 0))
    }

    /// Bytes this RRD holds (its archives dominate: up to [`ROWS_PER_SOURCE`] × 8 per source,
    /// as rows close).
    pub fn memory_bytes(&self) -> usize {
        core::mem::size_of::<Self>()
            + self
                .archives
                .iter()
                .map(Archive::memory_bytes)
                .sum::<usize>()
            + self
                .sources
                .iter()
                .map(|s| {
                    core::mem::size_of::<DsState>() + s.spec.name.len() + s.spec.description.len()
                })
                .sum::<usize>()
    }

    /// Records one sample per data source (None = not measured) taken at `now_ms`.
    pub fn update(&mut self, now_ms: u64, raw: &[Option<f64>]) -> Result<(), RrdError> {
        if raw.len() != self.sources.len() {
            return Err(RrdError::WrongArity {
                expected: self.sources.len(),
                got: raw.len(),
            });
        }
        if now_ms <= self.last_update_ms {
            return Err(RrdError::NotMonotonic {
                last_ms: self.last_update_ms,
                now_ms,
            });
        }
        let interval_ms = now_ms - self.last_update_ms;
        let interval_s = interval_ms as f64 / 1000.0;
        let processed_start = self.last_update_ms - self.last_update_ms % STEP_MS;
        let current_start = now_ms - now_ms % STEP_MS;
        let elapsed_pdps = (current_start - processed_start) / STEP_MS;

        let mut pdps = Vec::new();
        if elapsed_pdps > 0 {
            pdps.try_reserve_exact(self.sources.len())?;
        }
        for (ds, sample) in self.sources.iter_mut().zip(raw) {
            let rate = rate_of(ds, *sample, interval_ms, interval_s);
            if elapsed_pdps == 0 {
                accumulate(ds, rate, interval_ms);
                continue;
            }
            // The part of the interval up to the last boundary closes the PDP(s); the rest
            // starts the PDP in progress.
            accumulate(ds, rate, current_start - self.last_update_ms);
            let span_ms = current_start - processed_start;
            let known_ms = span_ms.saturating_sub(ds.unknown_ms);
            let pdp = if interval_ms > HEARTBEAT_MS
                || ds.unknown_ms.saturating_mul(2) > STEP_MS
                || known_ms == 0
            {
                f64::NAN
            } else {
                ds.acc / known_ms as f64
            };
            pdps.push(pdp);
            ds.acc = 0.0;
            ds.unknown_ms = 0;
            accumulate(ds, rate, now_ms - current_start);
        }
        if elapsed_pdps > 0 {
            for archive in &mut self.archives {
                archive.feed(&pdps, elapsed_pdps);
            }
        }
        self.last_update_ms = now_ms;
        Ok(())
    }
}

impl Rrd {
    /// Writes the whole RRD (for [`crate::Metering::save`]).
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u64(self.last_update_ms);
        w.len(self.sources.len());
        for ds in &self.sources {
            let spec = &ds.spec;
            w.text(&spec.name);
            w.text(&spec.description);
            w.text(spec.units);
            w.u8(match spec.ds_type {
                DsType::Gauge => 0,
                DsType::Derive => 1,
                DsType::Absolute => 2,
            });
            w.f64(spec.min);
            w.f64(spec.max);
            w.bool(spec.standard);
            match ds.last_raw {
                Some(v) => {
                    w.bool(true);
                    w.f64(v);
                }
                None => w.bool(false),
            }
            w.f64(ds.acc);
            w.u64(ds.unknown_ms);
        }
        for archive in &self.archives {
            archive.encode(self.values_of(archive), w);
        }
    }

    /// Reads what [`Rrd::encode`] wrote. The number of sources is checked against the bytes
    /// left (each needs its rings' worth), so a corrupt count cannot make it allocate.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let last_update_ms = r.u64()?;
        let count = r.len(ROWS_PER_SOURCE * 8)?;
        let mut specs = Vec::new();
        let mut states = Vec::new();
        for _ in 0..count {
            let name = r.text()?;
            let description = r.text()?;
            let units = known_units(&r.text()?).ok_or(DecodeError::BadValue)?;
            let ds_type = match r.u8()? {
                0 => DsType::Gauge,
                1 => DsType::Derive,
                2 => DsType::Absolute,
                t => return Err(DecodeError::BadTag(t)),
            };
            let (min, max, standard) = (r.f64()?, r.f64()?, r.bool()?);
            let last_raw = if r.bool()? { Some(r.f64()?) } else { None };
            let (acc, unknown_ms) = (r.f64()?, r.u64()?);
            // Between updates only the part of the step in progress can be unknown.
            if unknown_ms >= STEP_MS {
                return Err(DecodeError::BadValue);
            }
            specs.push(DataSourceSpec {
                name,
                description,
                units,
                ds_type,
                min,
                max,
                standard,
            });
            states.push((last_raw, acc, unknown_ms));
        }
        let mut rrd = Rrd::new(specs, last_update_ms).map_err(|_| DecodeError::BadValue)?;
        for (ds, (last_raw, acc, unknown_ms)) in rrd.sources.iter_mut().zip(states) {
            ds.last_raw = last_raw;
            ds.acc = acc;
            ds.unknown_ms = unknown_ms;
        }
        for archive in &mut rrd.archives {
            archive.decode_into(r)?;
        }
        Ok(rrd)
    }
}

fn accumulate(ds: &mut DsState, rate: Option<f64>, ms: u64) {
    match rate {
        Some(rate) => ds.acc += rate * ms as f64,
        None => ds.unknown_ms += ms,
    }
}

/// The rate a raw sample stands for, or None when unknown.
fn rate_of(
    ds: &mut DsState,
    sample: Option<f64>,
    interval_ms: u64,
    interval_s: f64,
) -> Option<f64> {
    let previous = ds.last_raw;
    ds.last_raw = sample.filter(|v| v.is_finite());
    if interval_ms > HEARTBEAT_MS {
        return None;
    }
    let value = sample.filter(|v| v.is_finite())?;
    let spec = &ds.spec;
    match spec.ds_type {
        DsType::Gauge => Some(value).filter(|v| *v >= spec.min && *v <= spec.max),
        DsType::Absolute => Some(value / interval_s).filter(|v| *v >= spec.min && *v <= spec.max),
        DsType::Derive => {
            let delta = value - previous?;
            if delta < 0.0 {
                // The counter restarted (VM reboot, device reconnect): unknown, as rrdtool
                // gives for a negative DERIVE rate under min 0.
                return None;
            }
            // A counter read against a slightly different clock than ours can overshoot its
            // maximum (a busy vCPU showing 1.002 of a CPU): clamp rather than lose the sample.
            Some((delta / interval_s).clamp(spec.min, spec.max))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Cf;
    use alloc::string::String;
    use alloc::vec;

    fn spec(name: &str, ds_type: DsType, max: f64) -> DataSourceSpec {
        DataSourceSpec {
            name: String::from(name),
            description: String::new(),
            units: "",
            ds_type,
            min: 0.0,
            max,
            standard: true,
        }
    }

    fn archive_index(rrd: &Rrd, cf: Cf, pdp_per_row: u32) -> usize {
        rrd.archives()
            .iter()
            .position(|a| a.cf() == cf && a.pdp_per_row() == pdp_per_row)
            .unwrap()
    }

    #[test]
    fn gauge_on_step_boundaries() {
        let t0 = 1_000_000 * STEP_MS;
        let mut rrd = Rrd::new(vec![spec("m", DsType::Gauge, f64::INFINITY)], t0).unwrap();
        for i in 1..=3u64 {
            rrd.update(t0 + i * STEP_MS, &[Some(10.0 * i as f64)])
                .unwrap();
        }
        let fine = &rrd.archives()[archive_index(&rrd, Cf::Average, 1)];
        assert_eq!(fine.value(0, 0), 30.0);
        assert_eq!(fine.value(0, 1), 20.0);
        assert_eq!(fine.value(0, 2), 10.0);
        assert_eq!(rrd.latest(0), 30.0);
    }

    #[test]
    fn derive_becomes_a_rate_and_is_time_weighted_across_boundaries() {
        let t0 = 1_000_000 * STEP_MS;
        let mut rrd = Rrd::new(vec![spec("b", DsType::Derive, f64::INFINITY)], t0).unwrap();
        rrd.update(t0 + 2_500, &[Some(0.0)]).unwrap(); // baseline: first rate unknown
        rrd.update(t0 + 7_500, &[Some(1000.0)]).unwrap(); // 200 B/s over [2.5, 7.5]
                                                          // PDP [0, 5): 2.5 s unknown (not more than half), 2.5 s at 200 B/s → 200.
        assert_eq!(rrd.latest(0), 200.0);
        rrd.update(t0 + 12_500, &[Some(3000.0)]).unwrap(); // 400 B/s over [7.5, 12.5]
                                                           // PDP [5, 10): 2.5 s at 200 and 2.5 s at 400 → 300.
        assert_eq!(rrd.latest(0), 300.0);
    }

    #[test]
    fn counter_going_back_is_unknown_not_negative() {
        let t0 = 1_000_000 * STEP_MS;
        let mut rrd = Rrd::new(vec![spec("c", DsType::Derive, f64::INFINITY)], t0).unwrap();
        rrd.update(t0 + STEP_MS, &[Some(500.0)]).unwrap();
        rrd.update(t0 + 2 * STEP_MS, &[Some(1000.0)]).unwrap();
        assert_eq!(rrd.latest(0), 100.0);
        rrd.update(t0 + 3 * STEP_MS, &[Some(10.0)]).unwrap();
        assert!(rrd.latest(0).is_nan());
        rrd.update(t0 + 4 * STEP_MS, &[Some(510.0)]).unwrap();
        assert_eq!(rrd.latest(0), 100.0);
    }

    #[test]
    fn cpu_fraction_is_clamped_gauge_out_of_range_is_unknown() {
        let t0 = 1_000_000 * STEP_MS;
        let mut rrd = Rrd::new(
            vec![
                spec("cpu0", DsType::Derive, 1.0),
                spec("g", DsType::Gauge, 1.0),
            ],
            t0,
        )
        .unwrap();
        rrd.update(t0 + STEP_MS, &[Some(0.0), Some(0.5)]).unwrap();
        rrd.update(t0 + 2 * STEP_MS, &[Some(5.01), Some(2.0)])
            .unwrap();
        assert_eq!(rrd.latest(0), 1.0);
        assert!(rrd.latest(1).is_nan());
    }

    #[test]
    fn gap_beyond_heartbeat_is_unknown_and_fills_coarse_rows() {
        let t0 = 1_000_000 * STEP_MS;
        let mut rrd = Rrd::new(vec![spec("g", DsType::Gauge, f64::INFINITY)], t0).unwrap();
        rrd.update(t0 + STEP_MS, &[Some(1.0)]).unwrap();
        rrd.update(t0 + STEP_MS + 2 * HEARTBEAT_MS, &[Some(1.0)])
            .unwrap();
        assert!(rrd.latest(0).is_nan());
        // A year-long outage is absorbed without iterating over every step.
        rrd.update(t0 + 366 * 86_400_000, &[Some(1.0)]).unwrap();
        assert!(rrd.latest(0).is_nan());
        rrd.update(t0 + 366 * 86_400_000 + STEP_MS, &[Some(4.0)])
            .unwrap();
        assert_eq!(rrd.latest(0), 4.0);
    }

    #[test]
    fn minute_archive_consolidates_twelve_pdps() {
        let t0 = 1_000_000 * 60_000; // a minute boundary
        let mut rrd = Rrd::new(vec![spec("g", DsType::Gauge, f64::INFINITY)], t0).unwrap();
        for i in 1..=12u64 {
            rrd.update(t0 + i * STEP_MS, &[Some(i as f64)]).unwrap();
        }
        let avg = &rrd.archives()[archive_index(&rrd, Cf::Average, 12)];
        let min = &rrd.archives()[archive_index(&rrd, Cf::Min, 12)];
        let max = &rrd.archives()[archive_index(&rrd, Cf::Max, 12)];
        assert_eq!(avg.value(0, 0), 6.5);
        assert_eq!(min.value(0, 0), 1.0);
        assert_eq!(max.value(0, 0), 12.0);
    }

    #[test]
    fn refusals() {
        let t0 = 1_000_000 * STEP_MS;
        let mut rrd = Rrd::new(vec![spec("g", DsType::Gauge, 1.0)], t0).unwrap();
        assert_eq!(
            rrd.update(t0 + STEP_MS, &[]),
            Err(RrdError::WrongArity {
                expected: 1,
                got: 0
            })
        );
        assert!(matches!(
            rrd.update(t0, &[Some(0.0)]),
            Err(RrdError::NotMonotonic { .. })
        ));
        assert_eq!(
            rrd.add_source(spec("g", DsType::Gauge, 1.0)),
            Err(RrdError::DuplicateSource)
        );
        assert!(Rrd::new(
            vec![spec("a", DsType::Gauge, 1.0), spec("a", DsType::Gauge, 1.0)],
            t0
        )
        .is_err());
    }

    #[test]
    fn added_source_starts_unknown_and_then_records() {
        let t0 = 1_000_000 * STEP_MS;
        let mut rrd = Rrd::new(vec![spec("a", DsType::Gauge, 10.0)], t0).unwrap();
        rrd.update(t0 + STEP_MS, &[Some(1.0)]).unwrap();
        rrd.add_source(spec("b", DsType::Gauge, 10.0)).unwrap();
        assert!(rrd.latest(1).is_nan());
        rrd.update(t0 + 2 * STEP_MS, &[Some(1.0), Some(2.0)])
            .unwrap();
        assert_eq!(rrd.latest(1), 2.0);
        assert_eq!(rrd.source_index("b"), Some(1));
    }

    /// Every row of every archive, newest first.
    fn rows_of(rrd: &Rrd) -> Vec<Vec<u64>> {
        rrd.archives()
            .iter()
            .map(|a| {
                (0..a.rows() as usize)
                    .map(|age| rrd.values_of(a).value(0, age).to_bits())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_partly_grown_or_wrapped_history_is_saved_and_restored_as_it_was() {
        let t0 = 1_000_000 * STEP_MS;
        for steps in [0, 1, 7, 119, 120, 121, 400] {
            let mut gauge = spec("g", DsType::Gauge, 1e9);
            gauge.units = "B";
            let mut rrd = Rrd::new(alloc::vec![gauge], t0).unwrap();
            for step in 1..=steps {
                rrd.update(t0 + step * STEP_MS, &[Some(step as f64)])
                    .unwrap();
            }
            let mut w = Writer::default();
            rrd.encode(&mut w);
            let restored = Rrd::decode(&mut Reader::new(&w.bytes)).unwrap();
            assert_eq!(rows_of(&restored), rows_of(&rrd), "{steps} steps");
            assert!(
                restored.memory_bytes() <= rrd.memory_bytes(),
                "{steps} steps"
            );
            // And it goes on from there as the original does.
            let (mut a, mut b) = (rrd, restored);
            for step in steps + 1..=steps + 130 {
                a.update(t0 + step * STEP_MS, &[Some(1.0)]).unwrap();
                b.update(t0 + step * STEP_MS, &[Some(1.0)]).unwrap();
            }
            assert_eq!(rows_of(&a), rows_of(&b), "{steps} steps, then 130");
        }
    }

    #[test]
    fn memory_is_what_the_layout_says() {
        let t0 = 1_000_000 * STEP_MS;
        let specs = (0..10)
            .map(|i| spec(&alloc::format!("s{i}"), DsType::Gauge, 1.0))
            .collect();
        let mut rrd = Rrd::new(specs, t0).unwrap();
        let state = 10 * 2048;
        assert!(rrd.memory_bytes() < state, "a fresh RRD holds no rows");
        // Ten minutes of samples: the 5 s archive (120 rows; its MIN and MAX are the
        // AVERAGE's) fills, the others hold the rows closed so far.
        let values = [Some(0.5); 10];
        for step in 1..=120 {
            rrd.update(t0 + step * STEP_MS, &values).unwrap();
        }
        let ten_minutes = rrd.memory_bytes();
        assert!(ten_minutes >= 10 * 120 * 8, "{ten_minutes}");
        // At most 16 rows of the 1-minute archives, 8 of the two others (first allocations).
        assert!(
            ten_minutes <= 10 * (120 + 3 * (16 + 8 + 8)) * 8 + state,
            "{ten_minutes}"
        );
        // The MIN and MAX of single-PDP rows read as the AVERAGE's.
        let five_s = |cf| {
            let a = &rrd.archives()[archive_index(&rrd, cf, 1)];
            (0..120)
                .map(|age| rrd.values_of(a).value(3, age))
                .collect::<Vec<_>>()
        };
        assert_eq!(five_s(Cf::Min), five_s(Cf::Average));
        assert_eq!(five_s(Cf::Max), alloc::vec![0.5; 120]);
        assert_eq!(rrd.latest(0), 0.5);
        // Over a year later every ring is full, and never more than the layout.
        rrd.update(t0 + 400 * 24 * 3600 * 1000, &values).unwrap();
        let rings = 10 * HELD_ROWS_PER_SOURCE * 8;
        assert!(rrd.memory_bytes() >= rings);
        assert!(rrd.memory_bytes() < rings + state, "{}", rrd.memory_bytes());
    }
}
