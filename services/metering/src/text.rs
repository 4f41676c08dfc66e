//! Text output helpers shared by the exporters: numbers as xapi writes them, XML and JSON
//! escaping, CSV quoting, UTC timestamps.

use alloc::string::String;
use core::fmt::Write;

/// A float as xapi's clients parse it: `NaN`, `Infinity`, `-Infinity`, `0.0` for zero,
/// otherwise the shortest text that reads back to the same number (xapi prints `%0.5g`;
/// more digits parse the same way and lose nothing).
pub fn push_float(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
    } else if value == 0.0 {
        out.push_str("0.0");
    } else {
        let magnitude = value.abs();
        if (1e-5..1e16).contains(&magnitude) {
            let _ = write!(out, "{value}");
        } else {
            let _ = write!(out, "{value:e}");
        }
    }
}

#[cfg(test)]
pub fn float(value: f64) -> String {
    let mut s = String::new();
    push_float(&mut s, value);
    s
}

/// Character data or an attribute value, escaped for XML.
pub fn push_xml_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// `<name>text</name>` with `text` escaped.
pub fn push_element(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    push_xml_escaped(out, text);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// A JSON string literal.
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or line break. A field that
/// starts with `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet does not run it as
/// a formula (VM names and tags come from clients).
pub fn push_csv_field(out: &mut String, text: &str) {
    let guarded = matches!(text.as_bytes().first(), Some(b'=' | b'+' | b'-' | b'@'));
    let needs_quotes = guarded || text.contains([',', '"', '\n', '\r']);
    if !needs_quotes {
        out.push_str(text);
        return;
    }
    out.push('"');
    if guarded {
        out.push('\'');
    }
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn push_utc(out: &mut String, unix_seconds: u64) {
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (inverse of `civil_from_days`).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Parses a time parameter: seconds since the epoch, or `YYYY-MM-DDTHH:MM:SSZ` (UTC; the
/// `Z` may be omitted). None for anything else.
pub fn parse_time(text: &str) -> Option<u64> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    let b = text.as_bytes();
    if b.len() != 19
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let num = |range: core::ops::Range<usize>| -> Option<u64> {
        let part = text.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day == 0 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    // Reject 31 February and the like: the date must read back the same.
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_xapi_clients_read_them() {
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "Infinity");
        assert_eq!(float(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(float(0.0), "0.0");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(1234.5), "1234.5");
        assert_eq!(float(1e-9), "1e-9");
        assert_eq!(float(2.5e20), "2.5e20");
    }

    #[test]
    fn escaping() {
        let mut s = String::new();
        push_xml_escaped(&mut s, "a<b>&\"'");
        assert_eq!(s, "a&lt;b&gt;&amp;&quot;&apos;");
        let mut j = String::new();
        push_json_string(&mut j, "q\"\\\n\u{1}");
        assert_eq!(j, "\"q\\\"\\\\\\n\\u0001\"");
        let mut c = String::new();
        push_csv_field(&mut c, "a,\"b\"");
        c.push(',');
        push_csv_field(&mut c, "plain");
        c.push(',');
        push_csv_field(&mut c, "=cmd()");
        assert_eq!(c, "\"a,\"\"b\"\"\",plain,\"'=cmd()\"");
    }

    #[test]
    fn utc_round_trips() {
        let mut s = String::new();
        push_utc(&mut s, 1_796_288_400);
        assert_eq!(s, "2026-12-03T09:00:00Z");
        assert_eq!(parse_time("2026-12-03T09:00:00Z"), Some(1_796_288_400));
        assert_eq!(parse_time("1796288400"), Some(1_796_288_400));
        let mut leap = String::new();
        push_utc(&mut leap, parse_time("2024-02-29T23:59:59").unwrap());
        assert_eq!(leap, "2024-02-29T23:59:59Z");
        assert_eq!(parse_time("2025-02-29T00:00:00Z"), None);
        assert_eq!(parse_time("2025-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(""), None);
        assert_eq!(parse_time("-5"), None);
    }
}
