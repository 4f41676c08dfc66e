//! The UTC calendar date and time for benchmark records, from the system clock.

use std::time::{SystemTime, UNIX_EPOCH};

use keel_calendar::DateTime;

/// `YYYY-MM-DD HH:MM UTC` for `secs` since the Unix epoch.
pub fn format_utc(secs: u64) -> String {
    let t = DateTime::from_unix_seconds(secs);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.date.year, t.date.month, t.date.day, t.hour, t.minute
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
