//! Payload parsing as xenstored does it (`onearg`, `get_strings`, `xs_count_strings`):
//! payloads are NUL-terminated strings; anything malformed is EINVAL.

use alloc::vec::Vec;

use keel_xen::xenstore_wire::XsError;

/// The NUL-terminated strings at the start of `payload` (trailing bytes without a NUL are
/// not a string, as in Xen's `get_strings`).
pub(crate) fn strings(payload: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = payload;
    while let Some(nul) = rest.iter().position(|&b| b == 0) {
        out.push(&rest[..nul]);
        rest = &rest[nul + 1..];
    }
    out
}

/// Number of NULs (Xen's `xs_count_strings`).
pub(crate) fn count_strings(payload: &[u8]) -> usize {
    payload.iter().filter(|&&b| b == 0).count()
}

/// Exactly one string, terminated by the payload's only NUL.
pub(crate) fn onearg(payload: &[u8]) -> Result<&str, XsError> {
    match payload.iter().position(|&b| b == 0) {
        Some(nul) if nul + 1 == payload.len() => text(&payload[..nul]),
        _ => Err(XsError::EINVAL),
    }
}

/// A string that must be text (paths, tokens, numbers).
pub(crate) fn text(bytes: &[u8]) -> Result<&str, XsError> {
    core::str::from_utf8(bytes).map_err(|_| XsError::EINVAL)
}

/// A decimal number.
pub(crate) fn number(bytes: &[u8]) -> Result<u64, XsError> {
    if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(XsError::EINVAL);
    }
    Ok(bytes
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(strings(b"a\0b\0c"), [b"a".as_slice(), b"b"]);
        assert_eq!(count_strings(b"a\0b\0c"), 2);
        assert_eq!(onearg(b"/a\0"), Ok("/a"));
        assert_eq!(onearg(b"/a"), Err(XsError::EINVAL));
        assert_eq!(onearg(b"/a\0b\0"), Err(XsError::EINVAL));
        assert_eq!(onearg(b""), Err(XsError::EINVAL));
        assert_eq!(onearg(b"\xff\0"), Err(XsError::EINVAL));
        assert_eq!(number(b"42"), Ok(42));
        assert_eq!(number(b"4x"), Err(XsError::EINVAL));
        assert_eq!(number(b""), Err(XsError::EINVAL));
    }
}
