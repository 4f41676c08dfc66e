//! One round-robin archive (RRA): consolidated data points (CDPs) of every data source of an
//! RRD at one resolution and one consolidation function.
//!
//! Primary data points (PDPs, one per 5 s step) are fed in; every `pdp_per_row` of them make
//! one CDP, pushed into a ring of `rows` values per data source. As in rrdtool, a CDP is
//! unknown (NaN) when more than `xff` of its PDPs were unknown; otherwise it consolidates the
//! known ones only. CDP boundaries are aligned on multiples of `pdp_per_row × step` since the
//! epoch, so the archives of every owner line up (rrd_updates merges them row by row).

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

use crate::codec::{DecodeError, Reader, Writer};

/// Consolidation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    Average,
    Min,
    Max,
}

impl Cf {
    pub fn as_str(self) -> &'static str {
        match self {
            Cf::Average => "AVERAGE",
            Cf::Min => "MIN",
            Cf::Max => "MAX",
        }
    }

    /// Parses xapi's spellings: `AVERAGE`/`MIN`/`MAX` and the short `ave`/`min`/`max` of its
    /// documentation, in any case.
    pub fn parse(text: &str) -> Option<Cf> {
        let eq = |s: &str| text.eq_ignore_ascii_case(s);
        if eq("AVERAGE") || eq("ave") || eq("avg") {
            Some(Cf::Average)
        } else if eq("MIN") {
            Some(Cf::Min)
        } else if eq("MAX") {
            Some(Cf::Max)
        } else {
            None
        }
    }
}

/// A resolution: how many PDPs per CDP and how many CDPs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timescale {
    pub pdp_per_row: u32,
    pub rows: u32,
}

/// xapi's resolutions at a 5 s step: 5 s for 10 min, 1 min for 2 h, 1 h for a week, 1 day
/// for a year. Finest first (the archive choice relies on the order).
pub const TIMESCALES: [Timescale; 4] = [
    Timescale {
        pdp_per_row: 1,
        rows: 120,
    },
    Timescale {
        pdp_per_row: 12,
        rows: 120,
    },
    Timescale {
        pdp_per_row: 720,
        rows: 168,
    },
    Timescale {
        pdp_per_row: 17_280,
        rows: 366,
    },
];

/// The consolidation functions every RRD keeps at every resolution.
pub const CFS: [Cf; 3] = [Cf::Average, Cf::Min, Cf::Max];

/// The fraction of unknown PDPs above which a CDP is unknown (xapi's and rrdtool's default).
pub const XFF: f64 = 0.5;

/// CDP preparation for one data source: the consolidation so far of the current row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CdpPrep {
    /// Sum of known PDPs (AVERAGE) or their minimum / maximum.
    pub value: f64,
    pub known: u32,
    pub unknown: u32,
}

impl CdpPrep {
    fn fresh(cf: Cf, unknown: u32) -> Self {
        let value = match cf {
            Cf::Average => 0.0,
            Cf::Min => f64::INFINITY,
            Cf::Max => f64::NEG_INFINITY,
        };
        CdpPrep {
            value,
            known: 0,
            unknown,
        }
    }

    /// The consolidated value of the known PDPs so far (NaN if none).
    pub fn partial(&self, cf: Cf) -> f64 {
        if self.known == 0 {
            return f64::NAN;
        }
        match cf {
            Cf::Average => self.value / f64::from(self.known),
            Cf::Min | Cf::Max => self.value,
        }
    }
}

/// A ring of at most `rows` CDPs, newest at `head`, that takes memory as rows close: a
/// VM's RRD costs the history it has (a fresh one nothing, one running for an hour a
/// fifth of the bound), never more than the full archive. Rows not held are unknown (NaN),
/// as a fresh rrdtool archive's are.
///
/// While it grows the values are in order (oldest first, `head` = the last); once `rows`
/// are held it wraps. If growing fails it wraps over what it holds and grows again only
/// when its values are back in order: history is forgotten sooner, nothing fails.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    values: Vec<f64>,
    head: usize,
    rows: usize,
}

/// Rows of the first allocation of a ring (then doubling up to its bound).
const FIRST_ROWS: usize = 8;

impl Ring {
    fn new(rows: usize) -> Self {
        Ring {
            values: Vec::new(),
            head: 0,
            rows,
        }
    }

    /// Room for one more value in order, if the ring may and can grow.
    fn grow(&mut self) -> bool {
        let len = self.values.len();
        let in_order = len == 0 || self.head == len - 1;
        if len >= self.rows || !in_order {
            return false;
        }
        if len < self.values.capacity() {
            return true;
        }
        let target = (len * 2).max(FIRST_ROWS).min(self.rows);
        self.values.try_reserve_exact(target - len).is_ok()
            || self.values.try_reserve_exact(1).is_ok()
    }

    fn push(&mut self, value: f64) {
        if self.grow() {
            self.head = self.values.len();
            self.values.push(value);
            return;
        }
        let len = self.values.len();
        if len == 0 {
            // Not one row of memory: the row is lost, as if unknown.
            return;
        }
        self.head = (self.head + 1) % len;
        if let Some(slot) = self.values.get_mut(self.head) {
            *slot = value;
        }
    }

    /// The CDP `age` rows before the newest (0 = newest); NaN past what is held.
    pub fn get(&self, age: usize) -> f64 {
        let len = self.values.len();
        if age >= len {
            return f64::NAN;
        }
        let index = (self.head + len - age) % len;
        self.values.get(index).copied().unwrap_or(f64::NAN)
    }

    /// Heap bytes held.
    fn allocated(&self) -> usize {
        self.values.capacity() * core::mem::size_of::<f64>()
    }
}

/// One archive: a resolution and a consolidation function over all data sources.
#[derive(Debug, Clone)]
pub struct Archive {
    /// A MIN or MAX of single-PDP rows: each row consolidates one PDP, so it equals the
    /// AVERAGE archive of the same timescale row for row. It keeps no rows of its own;
    /// [`crate::Rrd::values_of`] reads them from that archive (the export and the snapshot
    /// are what they were).
    mirror: bool,
    cf: Cf,
    timescale: Timescale,
    /// PDPs (known or not) already in the current row; the same for every data source.
    filled: u32,
    rings: Vec<Ring>,
    preps: Vec<CdpPrep>,
}

impl Archive {
    /// An archive for `sources` data sources; `pdp_index` is the index (time / step) of the
    /// PDP in progress, so the row in progress counts its earlier PDPs as unknown.
    pub(crate) fn new(
        cf: Cf,
        timescale: Timescale,
        sources: usize,
        pdp_index: u64,
    ) -> Result<Self, TryReserveError> {
        let filled = (pdp_index % u64::from(timescale.pdp_per_row)) as u32;
        let mut archive = Archive {
            mirror: cf != Cf::Average && timescale.pdp_per_row == 1,
            cf,
            timescale,
            filled,
            rings: Vec::new(),
            preps: Vec::new(),
        };
        for _ in 0..sources {
            archive.add_source()?;
        }
        Ok(archive)
    }

    /// Adds a data source whose history is unknown.
    pub(crate) fn add_source(&mut self) -> Result<(), TryReserveError> {
        self.rings.try_reserve(1)?;
        self.preps.try_reserve(1)?;
        let rows = if self.mirror {
            0
        } else {
            self.timescale.rows as usize
        };
        self.rings.push(Ring::new(rows));
        self.preps.push(CdpPrep::fresh(self.cf, self.filled));
        Ok(())
    }

    pub fn cf(&self) -> Cf {
        self.cf
    }

    /// Whether its rows are another archive's (see [`Archive`]'s `mirror`).
    pub(crate) fn is_mirror(&self) -> bool {
        self.mirror
    }

    pub fn pdp_per_row(&self) -> u32 {
        self.timescale.pdp_per_row
    }

    pub fn rows(&self) -> u32 {
        self.timescale.rows
    }

    pub fn xff(&self) -> f64 {
        XFF
    }

    /// The CDP of data source `source`, `age` rows before the newest.
    pub fn value(&self, source: usize, age: usize) -> f64 {
        self.rings
            .get(source)
            .map_or(f64::NAN, |ring| ring.get(age))
    }

    pub(crate) fn prep(&self, source: usize) -> Option<&CdpPrep> {
        self.preps.get(source)
    }

    /// Feeds `count` consecutive PDPs whose values are `pdps` (one per data source; NaN =
    /// unknown). rrdtool gives every PDP of one update the same value, so a long gap is fed
    /// in O(rows), not O(count).
    pub(crate) fn feed(&mut self, pdps: &[f64], count: u64) {
        let per_row = self.timescale.pdp_per_row;
        let to_row_end = u64::from(per_row - self.filled);
        if count < to_row_end {
            self.accumulate(pdps, count as u32);
            self.filled += count as u32;
            return;
        }
        self.accumulate(pdps, to_row_end as u32);
        self.close_row();
        let remaining = count - to_row_end;
        // Whole rows made of these PDPs alone consolidate to the PDP itself (or unknown).
        let whole_rows = (remaining / u64::from(per_row)).min(u64::from(self.timescale.rows));
        for _ in 0..whole_rows {
            for (ring, pdp) in self.rings.iter_mut().zip(pdps) {
                ring.push(*pdp);
            }
        }
        let rest = (remaining % u64::from(per_row)) as u32;
        self.accumulate(pdps, rest);
        self.filled = rest;
    }

    fn accumulate(&mut self, pdps: &[f64], count: u32) {
        if count == 0 {
            return;
        }
        for (prep, pdp) in self.preps.iter_mut().zip(pdps) {
            if pdp.is_nan() {
                prep.unknown += count;
                continue;
            }
            prep.known += count;
            prep.value = match self.cf {
                Cf::Average => prep.value + pdp * f64::from(count),
                Cf::Min => prep.value.min(*pdp),
                Cf::Max => prep.value.max(*pdp),
            };
        }
    }

    fn close_row(&mut self) {
        let limit = XFF * f64::from(self.timescale.pdp_per_row);
        let cf = self.cf;
        for (prep, ring) in self.preps.iter_mut().zip(self.rings.iter_mut()) {
            let cdp = if f64::from(prep.unknown) > limit {
                f64::NAN
            } else {
                prep.partial(cf)
            };
            ring.push(cdp);
            *prep = CdpPrep::fresh(cf, 0);
        }
        self.filled = 0;
    }

    /// Writes the row in progress and the rings (for [`crate::Metering::save`]), each as
    /// its full `rows` in order, oldest first (rows not held are unknown), newest last;
    /// the rows are read from `values` (this archive, or the one a mirror reads).
    pub(crate) fn encode(&self, values: &Archive, w: &mut Writer) {
        w.u32(self.filled);
        let rows = self.timescale.rows as usize;
        for (source, prep) in self.preps.iter().enumerate() {
            w.f64(prep.value);
            w.u32(prep.known);
            w.u32(prep.unknown);
            w.u32(rows.saturating_sub(1) as u32);
            for age in (0..rows).rev() {
                w.f64(values.value(source, age));
            }
        }
    }

    /// Reads what [`Archive::encode`] wrote into an archive of the same shape (made by
    /// `Archive::new` with the same CF, timescale and number of sources), so nothing the
    /// input says is allocated.
    pub(crate) fn decode_into(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let per_row = self.timescale.pdp_per_row;
        let filled = r.u32()?;
        if filled >= per_row {
            return Err(DecodeError::BadValue);
        }
        for (ring, prep) in self.rings.iter_mut().zip(self.preps.iter_mut()) {
            let value = r.f64()?;
            let known = r.u32()?;
            let unknown = r.u32()?;
            if u64::from(known) + u64::from(unknown) != u64::from(filled) {
                return Err(DecodeError::BadValue);
            }
            *prep = CdpPrep {
                value,
                known,
                unknown,
            };
            let rows = self.timescale.rows as usize;
            let head = r.u32()? as usize;
            if head >= rows {
                return Err(DecodeError::BadValue);
            }
            let mut values = Vec::new();
            values
                .try_reserve_exact(rows)
                .map_err(|_| DecodeError::TooLong)?;
            for _ in 0..rows {
                values.push(r.f64()?);
            }
            // Oldest first, then only from the oldest known row on: the ring holds the
            // history there is, as if it had grown with it.
            if self.mirror {
                // Its rows are the AVERAGE archive's, restored there.
                continue;
            }
            values.rotate_left((head + 1) % rows);
            let unknown = values.iter().take_while(|v| v.is_nan()).count();
            values.drain(..unknown);
            values.shrink_to_fit();
            ring.head = values.len().saturating_sub(1);
            ring.values = values;
        }
        self.filled = filled;
        Ok(())
    }

    /// Bytes held by this archive's rings and preparation areas: at most `rows` values per
    /// data source, fewer while its history is shorter.
    pub fn memory_bytes(&self) -> usize {
        self.rings.iter().map(Ring::allocated).sum::<usize>()
            + self.rings.len() * (core::mem::size_of::<Ring>() + core::mem::size_of::<CdpPrep>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(cf: Cf, pdp_per_row: u32, rows: u32) -> Archive {
        Archive::new(cf, Timescale { pdp_per_row, rows }, 1, 0).unwrap()
    }

    #[test]
    fn average_of_known_pdps_within_xff() {
        let mut a = archive(Cf::Average, 4, 3);
        a.feed(&[1.0], 1);
        a.feed(&[f64::NAN], 1);
        a.feed(&[3.0], 1);
        assert!(a.value(0, 0).is_nan(), "no row closed yet");
        a.feed(&[5.0], 1);
        // 3 known of 4: (1 + 3 + 5) / 3.
        assert_eq!(a.value(0, 0), 3.0);
    }

    #[test]
    fn too_many_unknowns_make_the_row_unknown() {
        let mut a = archive(Cf::Max, 4, 3);
        a.feed(&[7.0], 1);
        a.feed(&[f64::NAN], 3);
        assert!(a.value(0, 0).is_nan());
        // Exactly half unknown is still known (rrdtool: unknown > xff × n).
        a.feed(&[2.0], 2);
        a.feed(&[f64::NAN], 2);
        assert_eq!(a.value(0, 0), 2.0);
        assert!(a.value(0, 1).is_nan());
    }

    #[test]
    fn min_and_max() {
        let mut min = archive(Cf::Min, 3, 2);
        let mut max = archive(Cf::Max, 3, 2);
        for v in [4.0, 1.0, 9.0] {
            min.feed(&[v], 1);
            max.feed(&[v], 1);
        }
        assert_eq!(min.value(0, 0), 1.0);
        assert_eq!(max.value(0, 0), 9.0);
    }

    #[test]
    fn long_gap_wraps_the_ring_in_bounded_time() {
        let mut a = archive(Cf::Average, 2, 5);
        a.feed(&[1.0], 2);
        assert_eq!(a.value(0, 0), 1.0);
        a.feed(&[6.0], u64::MAX / 2);
        for age in 0..5 {
            assert_eq!(a.value(0, age), 6.0);
        }
        assert!(a.value(0, 5).is_nan(), "past the ring");
    }

    #[test]
    fn a_row_in_progress_at_creation_counts_earlier_pdps_unknown() {
        // Created at PDP index 3 of a 4-PDP row: 3 unknown, so the first row is unknown.
        let mut a = Archive::new(
            Cf::Average,
            Timescale {
                pdp_per_row: 4,
                rows: 2,
            },
            1,
            3,
        )
        .unwrap();
        a.feed(&[1.0], 1);
        assert!(a.value(0, 0).is_nan());
        a.feed(&[1.0], 4);
        assert_eq!(a.value(0, 0), 1.0);
    }

    #[test]
    fn cf_names() {
        assert_eq!(Cf::parse("average"), Some(Cf::Average));
        assert_eq!(Cf::parse("ave"), Some(Cf::Average));
        assert_eq!(Cf::parse("MAX"), Some(Cf::Max));
        assert_eq!(Cf::parse("LAST"), None);
    }
}
