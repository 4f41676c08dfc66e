//! The UTC calendar date and time for benchmark records, from the system clock.

use std::time::{SystemTime, UNIX_EPOCH};

use keel_xenapi::time::civil_from_days;

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
