//! Percent-decoding and query-string lookup (`application/x-www-form-urlencoded` style, which
//! is what XenAPI clients use for `?session_id=…&vdi=…`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Why a query component could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` not followed by two hexadecimal digits.
    BadPercentEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryError::BadPercentEscape => "bad percent escape",
            QueryError::NotUtf8 => "decoded value is not UTF-8",
        })
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; with `plus_is_space`, `+` becomes a space (query strings) rather
/// than staying a `+` (paths).
pub fn percent_decode(input: &str, plus_is_space: bool) -> Result<Vec<u8>, QueryError> {
    let bytes = input.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'%' => {
                let high = bytes.get(index + 1).copied().and_then(hex_value);
                let low = bytes.get(index + 2).copied().and_then(hex_value);
                match (high, low) {
                    (Some(high), Some(low)) => decoded.push(high << 4 | low),
                    _ => return Err(QueryError::BadPercentEscape),
                }
                index += 3;
            }
            b'+' if plus_is_space => {
                decoded.push(b' ');
                index += 1;
            }
            other => {
                decoded.push(other);
                index += 1;
            }
        }
    }
    Ok(decoded)
}

fn decode_text(input: &str) -> Result<String, QueryError> {
    String::from_utf8(percent_decode(input, true)?).map_err(|_| QueryError::NotUtf8)
}

/// The decoded value of the first `name=value` pair in `query` whose decoded name is `name`.
/// A pair without `=` has an empty value. Pairs whose name does not decode cannot match and
/// are skipped; a matching pair whose value does not decode is an error.
pub fn query_param(query: &str, name: &str) -> Result<Option<String>, QueryError> {
    for pair in query.split('&') {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode_text(raw_name) {
            Ok(decoded_name) if decoded_name == name => return decode_text(raw_value).map(Some),
            _ => continue,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(percent_decode("a%20b+c", true).unwrap(), b"a b c");
        assert_eq!(percent_decode("a%2fb+c", false).unwrap(), b"a/b+c");
        assert_eq!(percent_decode("%41%4a%4A", false).unwrap(), b"AJJ");
    }

    #[test]
    fn rejects_truncated_or_non_hex_escapes() {
        assert_eq!(percent_decode("%", true), Err(QueryError::BadPercentEscape));
        assert_eq!(
            percent_decode("%4", true),
            Err(QueryError::BadPercentEscape)
        );
        assert_eq!(
            percent_decode("%zz", true),
            Err(QueryError::BadPercentEscape)
        );
    }

    #[test]
    fn finds_xenapi_import_parameters() {
        let query = "session_id=OpaqueRef%3Aabc-123&vdi=OpaqueRef:def&format=raw";
        assert_eq!(
            query_param(query, "session_id").unwrap().as_deref(),
            Some("OpaqueRef:abc-123")
        );
        assert_eq!(
            query_param(query, "vdi").unwrap().as_deref(),
            Some("OpaqueRef:def")
        );
        assert_eq!(
            query_param(query, "format").unwrap().as_deref(),
            Some("raw")
        );
        assert_eq!(query_param(query, "missing").unwrap(), None);
    }

    #[test]
    fn first_match_wins_and_bare_names_are_empty() {
        assert_eq!(query_param("a=1&a=2", "a").unwrap().as_deref(), Some("1"));
        assert_eq!(
            query_param("flag&x=1", "flag").unwrap().as_deref(),
            Some("")
        );
        assert_eq!(
            query_param("my+key=v", "my key").unwrap().as_deref(),
            Some("v")
        );
    }

    #[test]
    fn bad_value_of_the_matching_pair_is_an_error_but_other_pairs_are_skipped() {
        assert_eq!(query_param("a=%zz", "a"), Err(QueryError::BadPercentEscape));
        assert_eq!(query_param("%zz=1&a=2", "a").unwrap().as_deref(), Some("2"));
        assert_eq!(query_param("a=%ff", "a"), Err(QueryError::NotUtf8));
    }
}
