//! What the backend needs from xenstore, as a small trait: Keel's in-process xenstored
//! implements it for dom0 (privileged: permissions and quotas do not restrict it).
//!
//! Paths are absolute. `write` creates missing parents; `rm` removes a subtree and
//! succeeds when the node does not exist. A watch fires through the kernel's glue, which
//! then calls [`Blkback::on_watch`](crate::Blkback::on_watch); the backend re-reads the
//! nodes it cares about, so which watch fired does not matter.
//!
//! Everything read from the frontend's directory is hostile: values are bounded and
//! parsed strictly (a number is decimal digits only).

use alloc::string::String;
use alloc::vec::Vec;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// `ENOENT` (only from operations other than `read`, which answers `None`).
    NotFound,
    /// `EINVAL`, e.g. a malformed path.
    Invalid,
    /// `ENOMEM`, `E2BIG` or a quota.
    NoSpace,
    /// Anything else, with the daemon's own name for it.
    Other(String),
}

/// The xenstore operations the backend issues as dom0.
pub trait Xenstore {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError>;
    fn rm(&mut self, path: &str) -> Result<(), StoreError>;
    fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError>;
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError>;
}

pub use keel_xen::xenbus::XenbusState;

/// Longest value read from a frontend node; anything longer is malformed.
pub const MAX_VALUE_LEN: usize = 64;

/// A node's value is not what it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A node's value as a decimal number: `None` if absent, `Err` if malformed.
pub fn parse_u64(value: Option<&[u8]>) -> Result<Option<u64>, Malformed> {
    let Some(v) = value else {
        return Ok(None);
    };
    // xenstore values may carry a trailing NUL from C writers.
    let v = v.strip_suffix(&[0]).unwrap_or(v);
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Malformed);
    }
    let mut n: u64 = 0;
    for d in v {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(Malformed)?;
    }
    Ok(Some(n))
}

/// Reads a decimal node.
pub fn read_u64<S: Xenstore + ?Sized>(xs: &mut S, path: &str) -> Result<Option<u64>, ReadError> {
    let value = xs.read(path).map_err(ReadError::Store)?;
    if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_LEN) {
        return Err(ReadError::Malformed);
    }
    parse_u64(value.as_deref()).map_err(|Malformed| ReadError::Malformed)
}

/// Reading a frontend node failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    Store(StoreError),
    Malformed,
}

/// The node's state, `Unknown` when absent or unreadable (a vanished frontend).
pub fn read_state<S: Xenstore + ?Sized>(xs: &mut S, dir: &str) -> XenbusState {
    match read_u64(xs, &alloc::format!("{dir}/state")) {
        Ok(Some(n)) => XenbusState::from_code(n).unwrap_or(XenbusState::Unknown),
        _ => XenbusState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_u64(None), Ok(None));
        assert_eq!(parse_u64(Some(b"42")), Ok(Some(42)));
        assert_eq!(parse_u64(Some(b"42\0")), Ok(Some(42)));
        assert_eq!(parse_u64(Some(b"18446744073709551615")), Ok(Some(u64::MAX)));
        for bad in [
            &b""[..],
            b"-1",
            b" 4",
            b"4 ",
            b"0x10",
            b"18446744073709551616",
            b"1e3",
        ] {
            assert_eq!(parse_u64(Some(bad)), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn states_round_trip() {
        for code in 0..=8 {
            assert_eq!(
                XenbusState::from_code(code).map(|s| u64::from(s.code())),
                Some(code)
            );
        }
        assert_eq!(XenbusState::from_code(9), None);
    }
}
