//! Wall-clock instants as the kernel hands them in, and XenAPI's `datetime` text form.
//!
//! The core never reads a clock itself: every entry point takes a [`Timestamp`], so tests drive
//! time explicitly and rate limits, event timeouts and task times are deterministic. The
//! calendar arithmetic is keel-calendar's.

use alloc::string::String;
use core::fmt::Write;

use keel_calendar::{Date, DateTime};

/// Milliseconds since the UNIX epoch (UTC), supplied by the caller on every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Timestamp {
    pub unix_ms: u64,
}

impl Timestamp {
    pub const fn from_unix_ms(unix_ms: u64) -> Self {
        Timestamp { unix_ms }
    }

    pub const fn from_unix_secs(secs: u64) -> Self {
        Timestamp {
            unix_ms: secs.saturating_mul(1000),
        }
    }

    /// This instant moved `ms` milliseconds later, saturating instead of wrapping.
    pub const fn plus_ms(self, ms: u64) -> Self {
        Timestamp {
            unix_ms: self.unix_ms.saturating_add(ms),
        }
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn ms_since(self, earlier: Timestamp) -> u64 {
        self.unix_ms.saturating_sub(earlier.unix_ms)
    }

    /// The instant of a UTC calendar date and time (a real-time clock reading), or `None`
    /// when a field is out of range, the date does not exist, or it is before 1970.
    pub fn from_civil(
        year: u64,
        month: u64,
        day: u64,
        hour: u64,
        minute: u64,
        second: u64,
    ) -> Option<Self> {
        let civil = DateTime {
            date: Date { year, month, day },
            hour,
            minute,
            second,
        };
        civil.to_unix_seconds().map(Timestamp::from_unix_secs)
    }

    /// XenAPI's `datetime` text: `YYYYMMDDTHH:MM:SSZ` (UTC), as xapi writes it.
    pub fn to_xapi_datetime(self) -> String {
        let t = DateTime::from_unix_seconds(self.unix_ms / 1000);
        let mut out = String::with_capacity(18);
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            "{:04}{:02}{:02}T{:02}:{:02}:{:02}Z",
            t.date.year, t.date.month, t.date.day, t.hour, t.minute, t.second
        );
        out
    }

    /// Seconds with a fractional part, the form xapi uses for an event's `timestamp`.
    pub fn to_unix_seconds_text(self) -> String {
        let mut out = String::new();
        let _ = write!(out, "{}.{:03}", self.unix_ms / 1000, self.unix_ms % 1000);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip_and_bad_ones_are_refused() {
        assert_eq!(
            Timestamp::from_civil(1970, 1, 1, 0, 0, 0),
            Some(Timestamp::from_unix_ms(0))
        );
        let t = Timestamp::from_civil(2026, 11, 22, 6, 31, 19).unwrap();
        assert_eq!(t.unix_ms, 1_795_329_079_000);
        assert_eq!(t.to_xapi_datetime(), "20261122T06:31:19Z");
        let leap = Timestamp::from_civil(2024, 2, 29, 23, 59, 59).unwrap();
        assert_eq!(leap.to_xapi_datetime(), "20240229T23:59:59Z");
        for bad in [
            (2023, 2, 29),
            (2026, 2, 31),
            (2026, 13, 1),
            (2026, 0, 1),
            (1969, 12, 31),
            (2026, 4, 31),
        ] {
            assert_eq!(
                Timestamp::from_civil(bad.0, bad.1, bad.2, 0, 0, 0),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(Timestamp::from_civil(2026, 1, 1, 24, 0, 0), None);
    }

    #[test]
    fn epoch_formats_as_xapi_datetime() {
        assert_eq!(
            Timestamp::from_unix_ms(0).to_xapi_datetime(),
            "19700101T00:00:00Z"
        );
    }

    #[test]
    fn known_instants_format_correctly() {
        // 2024-02-29 12:34:56 UTC (a leap day) = 1709210096.
        assert_eq!(
            Timestamp::from_unix_secs(1_709_210_096).to_xapi_datetime(),
            "20240229T12:34:56Z"
        );
        // 2000-03-01 00:00:00 UTC = 951868800.
        assert_eq!(
            Timestamp::from_unix_secs(951_868_800).to_xapi_datetime(),
            "20000301T00:00:00Z"
        );
    }

    #[test]
    fn seconds_text_keeps_milliseconds() {
        assert_eq!(
            Timestamp::from_unix_ms(1_500_042).to_unix_seconds_text(),
            "1500.042"
        );
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_unix_ms(u64::MAX - 1);
        assert_eq!(t.plus_ms(10).unix_ms, u64::MAX);
        assert_eq!(
            Timestamp::from_unix_ms(5).ms_since(Timestamp::from_unix_ms(9)),
            0
        );
    }
}
