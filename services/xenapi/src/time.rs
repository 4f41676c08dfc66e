//! Wall-clock instants as the kernel hands them in, and XenAPI's `datetime` text form.
//!
//! The core never reads a clock itself: every entry point takes a [`Timestamp`], so tests drive
//! time explicitly and rate limits, event timeouts and task times are deterministic.

use alloc::string::String;
use core::fmt::Write;

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
    /// when a field is out of range or the date is before 1970.
    pub fn from_civil(
        year: u64,
        month: u64,
        day: u64,
        hour: u64,
        minute: u64,
        second: u64,
    ) -> Option<Self> {
        let in_range = (1970..=9999).contains(&year)
            && (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && hour < 24
            && minute < 60
            && second < 61;
        if !in_range {
            return None;
        }
        let days = days_from_civil(year, month, day);
        // Reject dates such as 31 February instead of rolling them over.
        if civil_from_days(days) != (year, month, day) {
            return None;
        }
        Some(Timestamp::from_unix_secs(
            days * 86_400 + hour * 3600 + minute * 60 + second,
        ))
    }

    /// XenAPI's `datetime` text: `YYYYMMDDTHH:MM:SSZ` (UTC), as xapi writes it.
    pub fn to_xapi_datetime(self) -> String {
        let secs = self.unix_ms / 1000;
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        let mut out = String::with_capacity(18);
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            "{:04}{:02}{:02}T{:02}:{:02}:{:02}Z",
            year,
            month,
            day,
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
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

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Howard Hinnant's well-known `civil_from_days` algorithm, restricted to non-negative days
/// because the timestamp is unsigned.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Inverse of [`civil_from_days`] (Hinnant's `days_from_civil`), for years from 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
