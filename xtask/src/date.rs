//! The UTC calendar date and time for benchmark records, from the system clock (no crate).

use std::time::{SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DD HH:MM UTC` for `secs` since the Unix epoch.
pub fn format_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// Now, formatted by [`format_utc`].
pub fn now_utc() -> String {
    format_utc(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        // 2000-02-29 12:34:56 UTC, a leap day in a century leap year.
        assert_eq!(format_utc(951_827_696), "2000-02-29 12:34 UTC");
        // 2024-12-31 23:59 UTC and the minute after.
        assert_eq!(format_utc(1_735_689_540), "2024-12-31 23:59 UTC");
        assert_eq!(format_utc(1_735_689_600), "2025-01-01 00:00 UTC");
        // 2100-03-01: 2100 is not a leap year.
        assert_eq!(format_utc(4_107_542_400), "2100-03-01 00:00 UTC");
    }
}
