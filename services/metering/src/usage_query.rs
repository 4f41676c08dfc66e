//! The parameters of `GET /usage` and `POST /usage/ack` (`session_id` is the caller's
//! business): `from` and `to` as seconds since the epoch or `YYYY-MM-DDTHH:MM:SSZ`, and
//! `format=csv|json` (CSV when absent).

use alloc::string::String;

use crate::report::UsageFormat;
use crate::text::parse_time;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageParamError {
    Missing(&'static str),
    Bad { name: &'static str, value: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    /// Seconds since the epoch, whole hours (checked by [`crate::Usage`]).
    pub from: u64,
    pub to: u64,
    pub format: UsageFormat,
}

impl UsageQuery {
    /// Reads the query parameters (already percent-decoded); unknown ones are ignored.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, UsageParamError> {
        let (mut from, mut to, mut format) = (None, None, UsageFormat::Csv);
        let bad = |name: &'static str, value: &str| UsageParamError::Bad {
            name,
            value: String::from(value),
        };
        for (name, value) in params {
            match name {
                "from" => from = Some(parse_time(value).ok_or_else(|| bad("from", value))?),
                "to" => to = Some(parse_time(value).ok_or_else(|| bad("to", value))?),
                "format" => {
                    format = UsageFormat::parse(value).ok_or_else(|| bad("format", value))?
                }
                _ => {}
            }
        }
        Ok(UsageQuery {
            from: from.ok_or(UsageParamError::Missing("from"))?,
            to: to.ok_or(UsageParamError::Missing("to"))?,
            format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let q = UsageQuery::from_params([
            ("session_id", "OpaqueRef:x"),
            ("from", "2026-12-03T09:00:00Z"),
            ("to", "1796292000"),
            ("format", "json"),
        ])
        .unwrap();
        assert_eq!(
            q,
            UsageQuery {
                from: 1_796_288_400,
                to: 1_796_292_000,
                format: UsageFormat::Json
            }
        );
        let csv = UsageQuery::from_params([("from", "0"), ("to", "3600")]).unwrap();
        assert_eq!(csv.format, UsageFormat::Csv);
        assert_eq!(
            UsageQuery::from_params([("from", "0")]),
            Err(UsageParamError::Missing("to"))
        );
        assert!(matches!(
            UsageQuery::from_params([("from", "soon"), ("to", "0")]),
            Err(UsageParamError::Bad { name: "from", .. })
        ));
        assert!(matches!(
            UsageQuery::from_params([("from", "0"), ("to", "0"), ("format", "xls")]),
            Err(UsageParamError::Bad { name: "format", .. })
        ));
    }
}
