//! The bill: hourly usage rows rendered as CSV or JSON for `GET /usage`.
//!
//! One row per VM per hour in which it used anything. Amounts are exact integers inside and
//! are written here with six decimals (vCPU-seconds, GiB-hours) or as whole bytes.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::ledger::{UsageCounters, VmIdentity};
use crate::text::{push_csv_field, push_json_string, push_utc};

/// One VM's usage in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub vm_uuid: String,
    pub identity: VmIdentity,
    /// Seconds since the epoch; the row covers [hour_start, hour_start + 3600).
    pub hour_start: u64,
    pub counters: UsageCounters,
    pub destroyed: bool,
}

/// `format=csv|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageFormat {
    Csv,
    Json,
}

impl UsageFormat {
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("csv") {
            Some(UsageFormat::Csv)
        } else if text.eq_ignore_ascii_case("json") {
            Some(UsageFormat::Json)
        } else {
            None
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            UsageFormat::Csv => "text/csv; charset=utf-8",
            UsageFormat::Json => "application/json",
        }
    }
}

/// The CSV header; the columns of every row, in order.
pub const CSV_HEADER: &str = "vm_uuid,vm_name,tenant,tags,period_start,period_end,vcpu_seconds,memory_gib_hours,disk_provisioned_gib_hours,disk_used_gib_hours,disk_read_bytes,disk_write_bytes,network_rx_bytes,network_tx_bytes,vm_destroyed";

const NS_PER_S: u128 = 1_000_000_000;
const BYTE_MS_PER_GIB_HOUR: u128 = (1 << 30) * 3_600_000;

/// `num / den` with six decimals, rounded half up.
fn push_ratio(out: &mut String, num: u128, den: u128) {
    let scaled = num
        .checked_mul(1_000_000)
        .map_or(num / den * 1_000_000, |n| (n + den / 2) / den);
    let _ = write!(out, "{}.{:06}", scaled / 1_000_000, scaled % 1_000_000);
}

fn amounts(row: &UsageRow) -> [(u128, u128); 4] {
    let c = &row.counters;
    [
        (u128::from(c.vcpu_ns), NS_PER_S),
        (c.memory_byte_ms, BYTE_MS_PER_GIB_HOUR),
        (c.disk_provisioned_byte_ms, BYTE_MS_PER_GIB_HOUR),
        (c.disk_used_byte_ms, BYTE_MS_PER_GIB_HOUR),
    ]
}

fn bytes(row: &UsageRow) -> [u64; 4] {
    let c = &row.counters;
    [
        c.disk_read_bytes,
        c.disk_write_bytes,
        c.net_rx_bytes,
        c.net_tx_bytes,
    ]
}

/// Rows as CSV (RFC 4180, CRLF line ends), header first. Tags are joined with `;`.
pub fn render_csv(rows: &[UsageRow]) -> String {
    let mut out = String::new();
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for row in rows {
        push_csv_field(&mut out, &row.vm_uuid);
        out.push(',');
        push_csv_field(&mut out, &row.identity.name);
        out.push(',');
        push_csv_field(&mut out, row.identity.tenant.as_deref().unwrap_or(""));
        out.push(',');
        let tags: Vec<&str> = row.identity.tags.iter().map(String::as_str).collect();
        push_csv_field(&mut out, &tags.join(";"));
        out.push(',');
        push_utc(&mut out, row.hour_start);
        out.push(',');
        push_utc(&mut out, row.hour_start + 3600);
        for (num, den) in amounts(row) {
            out.push(',');
            push_ratio(&mut out, num, den);
        }
        for b in bytes(row) {
            let _ = write!(out, ",{b}");
        }
        out.push_str(if row.destroyed {
            ",true\r\n"
        } else {
            ",false\r\n"
        });
    }
    out
}

/// Rows as JSON: `{"from": …, "to": …, "rows": [{…}, …]}` with the CSV's field names.
pub fn render_json(rows: &[UsageRow], from: u64, to: u64) -> String {
    let mut out = String::new();
    let names = [
        "vcpu_seconds",
        "memory_gib_hours",
        "disk_provisioned_gib_hours",
        "disk_used_gib_hours",
    ];
    let byte_names = [
        "disk_read_bytes",
        "disk_write_bytes",
        "network_rx_bytes",
        "network_tx_bytes",
    ];
    out.push_str("{\"from\":\"");
    push_utc(&mut out, from);
    out.push_str("\",\"to\":\"");
    push_utc(&mut out, to);
    out.push_str("\",\"rows\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"vm_uuid\":");
        push_json_string(&mut out, &row.vm_uuid);
        out.push_str(",\"vm_name\":");
        push_json_string(&mut out, &row.identity.name);
        out.push_str(",\"tenant\":");
        match &row.identity.tenant {
            Some(t) => push_json_string(&mut out, t),
            None => out.push_str("null"),
        }
        out.push_str(",\"tags\":[");
        for (j, tag) in row.identity.tags.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_json_string(&mut out, tag);
        }
        out.push_str("],\"period_start\":\"");
        push_utc(&mut out, row.hour_start);
        out.push_str("\",\"period_end\":\"");
        push_utc(&mut out, row.hour_start + 3600);
        out.push('"');
        for (name, (num, den)) in names.iter().zip(amounts(row)) {
            let _ = write!(out, ",\"{name}\":");
            push_ratio(&mut out, num, den);
        }
        for (name, b) in byte_names.iter().zip(bytes(row)) {
            let _ = write!(out, ",\"{name}\":{b}");
        }
        let _ = write!(out, ",\"vm_destroyed\":{}}}", row.destroyed);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn row() -> UsageRow {
        UsageRow {
            vm_uuid: String::from("6f1b7c1e-0000-4000-8000-000000000001"),
            identity: VmIdentity {
                name: String::from("web, \"prod\""),
                tags: vec![String::from("tenant=acme"), String::from("web")],
                tenant: Some(String::from("acme")),
            },
            hour_start: 1_796_288_400,
            counters: UsageCounters {
                vcpu_ns: 1_500_000_000,
                memory_byte_ms: BYTE_MS_PER_GIB_HOUR / 2,
                disk_provisioned_byte_ms: 10 * BYTE_MS_PER_GIB_HOUR,
                disk_used_byte_ms: BYTE_MS_PER_GIB_HOUR / 3,
                disk_read_bytes: 1,
                disk_write_bytes: 2,
                net_rx_bytes: 3,
                net_tx_bytes: 4,
            },
            destroyed: false,
        }
    }

    #[test]
    fn csv_row() {
        let csv = render_csv(&[row()]);
        let mut lines = csv.split("\r\n");
        assert_eq!(lines.next(), Some(CSV_HEADER));
        assert_eq!(
            lines.next(),
            Some("6f1b7c1e-0000-4000-8000-000000000001,\"web, \"\"prod\"\"\",acme,tenant=acme;web,2026-12-03T09:00:00Z,2026-12-03T10:00:00Z,1.500000,0.500000,10.000000,0.333333,1,2,3,4,false")
        );
    }

    #[test]
    fn json_row() {
        let json = render_json(&[row()], 1_796_288_400, 1_796_292_000);
        assert!(json.starts_with(
            "{\"from\":\"2026-12-03T09:00:00Z\",\"to\":\"2026-12-03T10:00:00Z\",\"rows\":[{\"vm_uuid\":"
        ));
        assert!(json.contains("\"vm_name\":\"web, \\\"prod\\\"\""));
        assert!(json.contains("\"tenant\":\"acme\",\"tags\":[\"tenant=acme\",\"web\"]"));
        assert!(json.contains("\"vcpu_seconds\":1.500000,\"memory_gib_hours\":0.500000"));
        assert!(json.ends_with("\"network_tx_bytes\":4,\"vm_destroyed\":false}]}"));
    }

    #[test]
    fn formats() {
        assert_eq!(UsageFormat::parse("CSV"), Some(UsageFormat::Csv));
        assert_eq!(UsageFormat::parse("xml"), None);
    }
}
