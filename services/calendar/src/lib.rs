//! Calendar arithmetic for UTC instants since the Unix epoch: days to a proleptic Gregorian
//! date and back, seconds to a date and time of day and back.
//!
//! One implementation for everyone who needs it: the XenAPI's `datetime` text and the
//! real-time clock reading (keel-xenapi), benchmark dates (xtask), and the boot media's file
//! times (image-builder). Only instants from 1970 on exist here: every caller's clock is
//! unsigned.
//!
//! The conversions are Howard Hinnant's well-known `civil_from_days` / `days_from_civil`
//! algorithms, restricted to non-negative day counts.

#![no_std]
#![forbid(unsafe_code)]

/// Seconds in a day (UTC has no leap seconds in Unix time).
pub const SECONDS_PER_DAY: u64 = 86_400;

/// The latest year a [`Date`] may be built from (as xapi's and FAT's four-digit years).
pub const MAX_YEAR: u64 = 9999;

/// A proleptic Gregorian calendar date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: u64,
    /// 1 to 12.
    pub month: u64,
    /// 1 to 31.
    pub day: u64,
}

impl Date {
    /// The date `days` days after 1970-01-01.
    pub const fn from_days_since_epoch(days: u64) -> Date {
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Date {
            year: if month <= 2 { y + 1 } else { y },
            month,
            day,
        }
    }

    /// Days from 1970-01-01 to this date, or `None` for a date that does not exist
    /// (31 February, month 13) or lies outside 1970..=[`MAX_YEAR`].
    pub fn days_since_epoch(self) -> Option<u64> {
        let in_range = (1970..=MAX_YEAR).contains(&self.year)
            && (1..=12).contains(&self.month)
            && (1..=31).contains(&self.day);
        if !in_range {
            return None;
        }
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y / 400;
        let yoe = y - era * 400;
        let mp = if self.month > 2 {
            self.month - 3
        } else {
            self.month + 9
        };
        let doy = (153 * mp + 2) / 5 + self.day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        // A day past the end of its month rolls over into the next; refuse it instead.
        (Date::from_days_since_epoch(days) == self).then_some(days)
    }
}

/// A UTC date and time of day, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime {
    pub date: Date,
    /// 0 to 23.
    pub hour: u64,
    /// 0 to 59.
    pub minute: u64,
    /// 0 to 59 from [`DateTime::from_unix_seconds`]; a reading of 60 (a leap second on a
    /// real-time clock) is accepted by [`DateTime::to_unix_seconds`].
    pub second: u64,
}

impl DateTime {
    /// The calendar time `secs` seconds after 1970-01-01T00:00:00Z.
    pub const fn from_unix_seconds(secs: u64) -> DateTime {
        let of_day = secs % SECONDS_PER_DAY;
        DateTime {
            date: Date::from_days_since_epoch(secs / SECONDS_PER_DAY),
            hour: of_day / 3600,
            minute: of_day % 3600 / 60,
            second: of_day % 60,
        }
    }

    /// Seconds since the epoch, or `None` when a field is out of range or the date does
    /// not exist.
    pub fn to_unix_seconds(self) -> Option<u64> {
        if self.hour >= 24 || self.minute >= 60 || self.second > 60 {
            return None;
        }
        let days = self.date.days_since_epoch()?;
        Some(days * SECONDS_PER_DAY + self.hour * 3600 + self.minute * 60 + self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(year: u64, month: u64, day: u64) -> Date {
        Date { year, month, day }
    }

    fn at(date: Date, hour: u64, minute: u64, second: u64) -> DateTime {
        DateTime {
            date,
            hour,
            minute,
            second,
        }
    }

    #[test]
    fn known_days_convert_both_ways() {
        for (days, d) in [
            (0, date(1970, 1, 1)),
            (59, date(1970, 3, 1)),
            // 2000-02-29: a century leap year; 2000-03-01 after it.
            (11_016, date(2000, 2, 29)),
            (11_017, date(2000, 3, 1)),
            (19_782, date(2024, 2, 29)),
            // 2100 is not a leap year: 28 February is followed by 1 March.
            (47_540, date(2100, 2, 28)),
            (47_541, date(2100, 3, 1)),
        ] {
            assert_eq!(Date::from_days_since_epoch(days), d, "{days}");
            assert_eq!(d.days_since_epoch(), Some(days), "{d:?}");
        }
    }

    #[test]
    fn every_day_for_four_centuries_round_trips() {
        let mut previous = Date::from_days_since_epoch(0);
        for days in 1..146_097 + 1000 {
            let d = Date::from_days_since_epoch(days);
            assert!(d > previous, "{d:?} after {previous:?}");
            assert_eq!(d.days_since_epoch(), Some(days));
            previous = d;
        }
    }

    #[test]
    fn dates_that_do_not_exist_are_refused() {
        for bad in [
            date(2023, 2, 29),
            date(2100, 2, 29),
            date(2026, 2, 31),
            date(2026, 4, 31),
            date(2026, 13, 1),
            date(2026, 0, 1),
            date(2026, 1, 0),
            date(1969, 12, 31),
            date(10_000, 1, 1),
        ] {
            assert_eq!(bad.days_since_epoch(), None, "{bad:?}");
        }
        assert_eq!(date(9999, 12, 31).days_since_epoch(), Some(2_932_896));
    }

    #[test]
    fn seconds_convert_both_ways() {
        let t = at(date(2026, 11, 22), 6, 31, 19);
        assert_eq!(t.to_unix_seconds(), Some(1_795_329_079));
        assert_eq!(DateTime::from_unix_seconds(1_795_329_079), t);
        // 2023-11-14 22:13:20 UTC.
        assert_eq!(
            DateTime::from_unix_seconds(1_700_000_000),
            at(date(2023, 11, 14), 22, 13, 20)
        );
        assert_eq!(
            DateTime::from_unix_seconds(0),
            at(date(1970, 1, 1), 0, 0, 0)
        );
    }

    #[test]
    fn times_of_day_out_of_range_are_refused() {
        let d = date(2026, 1, 1);
        assert_eq!(at(d, 24, 0, 0).to_unix_seconds(), None);
        assert_eq!(at(d, 0, 60, 0).to_unix_seconds(), None);
        assert_eq!(at(d, 0, 0, 61).to_unix_seconds(), None);
        // A leap-second reading is the next minute's first second.
        assert_eq!(
            at(d, 23, 59, 60).to_unix_seconds(),
            at(date(2026, 1, 2), 0, 0, 0).to_unix_seconds()
        );
    }
}
