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
fn civil_from_days(days: u64) -> (u64, u64, u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
