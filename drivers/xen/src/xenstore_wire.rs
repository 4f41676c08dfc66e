//! The xenstore wire protocol (`xen/include/public/io/xs_wire.h`): a 16-byte header
//! (`type`, `req_id`, `tx_id`, `len`, native-endian `u32`s) followed by `len` bytes of
//! payload, at most [`XENSTORE_PAYLOAD_MAX`]. Payloads are NUL-separated strings; errors
//! come back as `XS_ERROR` with an errno name such as `"ENOENT"`.
//!
//! Used by both ends: the xenbus client in Keel and Keel's own xenstored serving guests.

use alloc::vec::Vec;

/// Largest payload either side may send.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// Header size.
pub const XS_HEADER_LEN: usize = 16;

/// `enum xsd_sockmsg_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum XsType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    // 20 was XS_RESTRICT, removed.
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl XsType {
    pub fn from_raw(raw: u32) -> Option<Self> {
        use XsType::*;
        Some(match raw {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// The errno names xenstored sends in `XS_ERROR` payloads (`xsd_errors`).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XsError {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
}

const XS_ERRORS: [(XsError, &str); 16] = [
    (XsError::EINVAL, "EINVAL"),
    (XsError::EACCES, "EACCES"),
    (XsError::EEXIST, "EEXIST"),
    (XsError::EISDIR, "EISDIR"),
    (XsError::ENOENT, "ENOENT"),
    (XsError::ENOMEM, "ENOMEM"),
    (XsError::ENOSPC, "ENOSPC"),
    (XsError::EIO, "EIO"),
    (XsError::ENOTEMPTY, "ENOTEMPTY"),
    (XsError::ENOSYS, "ENOSYS"),
    (XsError::EROFS, "EROFS"),
    (XsError::EBUSY, "EBUSY"),
    (XsError::EAGAIN, "EAGAIN"),
    (XsError::EISCONN, "EISCONN"),
    (XsError::E2BIG, "E2BIG"),
    (XsError::EPERM, "EPERM"),
];

impl XsError {
    /// The wire string (without the NUL).
    pub fn as_str(self) -> &'static str {
        XS_ERRORS
            .iter()
            .find(|(e, _)| *e == self)
            .map_or("EINVAL", |(_, s)| s)
    }

    /// Parses an `XS_ERROR` payload (`"ENOENT\0"`, NUL optional).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let name = payload.strip_suffix(b"\0").unwrap_or(payload);
        XS_ERRORS
            .iter()
            .find(|(_, s)| s.as_bytes() == name)
            .map(|(e, _)| *e)
    }
}

/// A malformed or oversized message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// `len` exceeds [`XENSTORE_PAYLOAD_MAX`].
    PayloadTooLarge(usize),
    /// The type is not one `xs_wire.h` defines.
    UnknownType(u32),
    /// A path is longer than [`XENSTORE_ABS_PATH_MAX`] or contains a NUL.
    BadPath,
}

/// `struct xsd_sockmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XsHeader {
    pub kind: XsType,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl XsHeader {
    /// Parses and validates a header.
    pub fn decode(bytes: &[u8; XS_HEADER_LEN]) -> Result<Self, WireError> {
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let raw_type = word(0);
        let len = word(12);
        if len as usize > XENSTORE_PAYLOAD_MAX {
            return Err(WireError::PayloadTooLarge(len as usize));
        }
        let kind = XsType::from_raw(raw_type).ok_or(WireError::UnknownType(raw_type))?;
        Ok(XsHeader {
            kind,
            req_id: word(4),
            tx_id: word(8),
            len,
        })
    }

    pub fn encode(&self) -> [u8; XS_HEADER_LEN] {
        let mut out = [0u8; XS_HEADER_LEN];
        for (i, v) in [self.kind as u32, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        out
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XsMessage {
    pub kind: XsType,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

impl XsMessage {
    /// A message whose payload is `parts`, each followed by a NUL unless `last_raw` is set,
    /// in which case the final part is sent as-is (the value of `XS_WRITE`).
    pub fn build(
        kind: XsType,
        req_id: u32,
        tx_id: u32,
        parts: &[&[u8]],
        last_raw: bool,
    ) -> Result<Self, WireError> {
        let mut payload = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            payload.extend_from_slice(part);
            if !(last_raw && i + 1 == parts.len()) {
                payload.push(0);
            }
        }
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(WireError::PayloadTooLarge(payload.len()));
        }
        Ok(XsMessage {
            kind,
            req_id,
            tx_id,
            payload,
        })
    }

    /// Header followed by payload.
    pub fn encode(&self) -> Vec<u8> {
        let header = XsHeader {
            kind: self.kind,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: self.payload.len() as u32,
        };
        let mut out = Vec::with_capacity(XS_HEADER_LEN + self.payload.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&self.payload);
        out
    }

    /// The NUL-terminated strings of the payload (a trailing part without NUL included).
    pub fn strings(&self) -> impl Iterator<Item = &[u8]> {
        let body = self.payload.strip_suffix(b"\0").unwrap_or(&self.payload);
        body.split(|&b| b == 0)
            .filter(move |_| !self.payload.is_empty())
    }

    /// For `XS_ERROR` replies, the error.
    pub fn error(&self) -> Option<XsError> {
        (self.kind == XsType::Error)
            .then(|| XsError::parse(&self.payload).unwrap_or(XsError::EINVAL))
    }
}

fn path(p: &str) -> Result<&[u8], WireError> {
    if p.len() > XENSTORE_ABS_PATH_MAX || p.as_bytes().contains(&0) {
        return Err(WireError::BadPath);
    }
    Ok(p.as_bytes())
}

/// Request builders for the client side.
pub mod request {
    use super::*;

    pub fn read(req_id: u32, tx_id: u32, p: &str) -> Result<XsMessage, WireError> {
        XsMessage::build(XsType::Read, req_id, tx_id, &[path(p)?], false)
    }
    pub fn write(req_id: u32, tx_id: u32, p: &str, value: &[u8]) -> Result<XsMessage, WireError> {
        XsMessage::build(XsType::Write, req_id, tx_id, &[path(p)?, value], true)
    }
    pub fn directory(req_id: u32, tx_id: u32, p: &str) -> Result<XsMessage, WireError> {
        XsMessage::build(XsType::Directory, req_id, tx_id, &[path(p)?], false)
    }
    pub fn mkdir(req_id: u32, tx_id: u32, p: &str) -> Result<XsMessage, WireError> {
        XsMessage::build(XsType::Mkdir, req_id, tx_id, &[path(p)?], false)
    }
    pub fn rm(req_id: u32, tx_id: u32, p: &str) -> Result<XsMessage, WireError> {
        XsMessage::build(XsType::Rm, req_id, tx_id, &[path(p)?], false)
    }
    pub fn get_perms(req_id: u32, tx_id: u32, p: &str) -> Result<XsMessage, WireError> {
        XsMessage::build(XsType::GetPerms, req_id, tx_id, &[path(p)?], false)
    }
    /// `perms` are wire permission strings such as `"n0"` (owner 0, no access to others)
    /// and `"r5"` (domain 5 may read).
    pub fn set_perms(
        req_id: u32,
        tx_id: u32,
        p: &str,
        perms: &[&str],
    ) -> Result<XsMessage, WireError> {
        let mut parts: Vec<&[u8]> = alloc::vec![path(p)?];
        parts.extend(perms.iter().map(|s| s.as_bytes()));
        XsMessage::build(XsType::SetPerms, req_id, tx_id, &parts, false)
    }
    pub fn watch(req_id: u32, p: &str, token: &str) -> Result<XsMessage, WireError> {
        XsMessage::build(
            XsType::Watch,
            req_id,
            0,
            &[path(p)?, token.as_bytes()],
            false,
        )
    }
    pub fn unwatch(req_id: u32, p: &str, token: &str) -> Result<XsMessage, WireError> {
        XsMessage::build(
            XsType::Unwatch,
            req_id,
            0,
            &[path(p)?, token.as_bytes()],
            false,
        )
    }
    pub fn transaction_start(req_id: u32) -> Result<XsMessage, WireError> {
        XsMessage::build(XsType::TransactionStart, req_id, 0, &[b""], false)
    }
    pub fn transaction_end(req_id: u32, tx_id: u32, commit: bool) -> Result<XsMessage, WireError> {
        XsMessage::build(
            XsType::TransactionEnd,
            req_id,
            tx_id,
            &[if commit { b"T" } else { b"F" }],
            false,
        )
    }
    pub fn get_domain_path(req_id: u32, domid: u16) -> Result<XsMessage, WireError> {
        let id = alloc::format!("{domid}");
        XsMessage::build(XsType::GetDomainPath, req_id, 0, &[id.as_bytes()], false)
    }
    /// `XS_INTRODUCE`: tell xenstored about a domain's ring frame and event channel.
    pub fn introduce(req_id: u32, domid: u16, gfn: u64, port: u32) -> Result<XsMessage, WireError> {
        let (d, g, p) = (
            alloc::format!("{domid}"),
            alloc::format!("{gfn}"),
            alloc::format!("{port}"),
        );
        XsMessage::build(
            XsType::Introduce,
            req_id,
            0,
            &[d.as_bytes(), g.as_bytes(), p.as_bytes()],
            false,
        )
    }
    pub fn release(req_id: u32, domid: u16) -> Result<XsMessage, WireError> {
        let d = alloc::format!("{domid}");
        XsMessage::build(XsType::Release, req_id, 0, &[d.as_bytes()], false)
    }
}

/// Reassembles messages from a byte stream, rejecting bad headers before buffering.
#[derive(Default)]
pub struct XsDecoder {
    buf: Vec<u8>,
    header: Option<XsHeader>,
}

impl XsDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from `input` (as many as belong to the current message) and returns
    /// `(bytes consumed, completed message)`. After an error the stream is unusable (the
    /// peer broke the protocol; xenstored reports `XENSTORE_ERROR_PROTO`).
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<XsMessage>), WireError> {
        let mut used = 0;
        if self.header.is_none() {
            let want = XS_HEADER_LEN - self.buf.len();
            let take = want.min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            used += take;
            let Ok(raw) = <[u8; XS_HEADER_LEN]>::try_from(self.buf.as_slice()) else {
                return Ok((used, None));
            };
            self.header = Some(XsHeader::decode(&raw)?);
            self.buf.clear();
        }
        let Some(h) = self.header else {
            return Ok((used, None));
        };
        let rest = &input[used..];
        let take = (h.len as usize - self.buf.len()).min(rest.len());
        self.buf.extend_from_slice(&rest[..take]);
        used += take;
        if self.buf.len() < h.len as usize {
            return Ok((used, None));
        }
        self.header = None;
        let payload = core::mem::take(&mut self.buf);
        Ok((
            used,
            Some(XsMessage {
                kind: h.kind,
                req_id: h.req_id,
                tx_id: h.tx_id,
                payload,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_numbers_match_xs_wire_h() {
        assert_eq!(XsType::WatchEvent as u32, 15);
        assert_eq!(XsType::Error as u32, 16);
        assert_eq!(XsType::ResetWatches as u32, 21);
        assert_eq!(XsType::DirectoryPart as u32, 22);
        assert_eq!(XsType::from_raw(20), None);
        assert_eq!(XsType::from_raw(23), None);
        for raw in (0..20).chain(21..23) {
            assert_eq!(XsType::from_raw(raw).map(|t| t as u32), Some(raw));
        }
    }

    #[test]
    fn write_sends_value_without_nul() {
        let m = request::write(7, 3, "/local/domain/1/name", b"vm1").unwrap();
        let bytes = m.encode();
        assert_eq!(bytes.len(), 16 + 21 + 3);
        assert_eq!(&bytes[0..4], &11u32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &7u32.to_ne_bytes());
        assert_eq!(&bytes[8..12], &3u32.to_ne_bytes());
        assert_eq!(&bytes[12..16], &24u32.to_ne_bytes());
        assert_eq!(&bytes[16..], b"/local/domain/1/name\0vm1");
    }

    #[test]
    fn builders_produce_nul_separated_payloads() {
        assert_eq!(
            request::watch(1, "/vm", "tok").unwrap().payload,
            b"/vm\0tok\0"
        );
        assert_eq!(
            request::transaction_end(1, 9, false).unwrap().payload,
            b"F\0"
        );
        assert_eq!(
            request::introduce(1, 5, 0xfeffc, 3).unwrap().payload,
            b"5\x001044476\x003\x00"
        );
        assert_eq!(
            request::set_perms(1, 0, "/a", &["n0", "r5"])
                .unwrap()
                .payload,
            b"/a\0n0\0r5\0"
        );
        assert_eq!(request::read(1, 0, "bad\0path"), Err(WireError::BadPath));
    }

    #[test]
    fn oversized_payloads_are_refused_both_ways() {
        let big = alloc::vec![b'x'; XENSTORE_PAYLOAD_MAX];
        assert_eq!(
            request::write(1, 0, "/a", &big),
            Err(WireError::PayloadTooLarge(4099))
        );
        let header = XsHeader {
            kind: XsType::Read,
            req_id: 1,
            tx_id: 0,
            len: 4097,
        }
        .encode();
        assert_eq!(
            XsHeader::decode(&header),
            Err(WireError::PayloadTooLarge(4097))
        );
        let mut d = XsDecoder::new();
        assert_eq!(d.feed(&header), Err(WireError::PayloadTooLarge(4097)));
    }

    #[test]
    fn unknown_type_is_refused() {
        let mut raw = XsHeader {
            kind: XsType::Read,
            req_id: 1,
            tx_id: 0,
            len: 0,
        }
        .encode();
        raw[0..4].copy_from_slice(&20u32.to_ne_bytes());
        assert_eq!(XsHeader::decode(&raw), Err(WireError::UnknownType(20)));
    }

    #[test]
    fn decoder_reassembles_split_messages() {
        let a = request::directory(1, 0, "/local/domain").unwrap().encode();
        let b = XsMessage::build(XsType::Error, 2, 0, &[b"ENOENT"], false)
            .unwrap()
            .encode();
        let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let mut d = XsDecoder::new();
        let mut out = Vec::new();
        // Feed in awkward 5-byte pieces.
        for chunk in stream.chunks(5) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let (used, msg) = d.feed(rest).unwrap();
                rest = &rest[used..];
                out.extend(msg);
            }
        }
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].strings().collect::<Vec<_>>(),
            [b"/local/domain".as_slice()]
        );
        assert_eq!(out[1].error(), Some(XsError::ENOENT));
        assert_eq!(out[0].error(), None);
    }

    #[test]
    fn error_strings_round_trip() {
        for (e, s) in XS_ERRORS {
            assert_eq!(e.as_str(), s);
            assert_eq!(XsError::parse(s.as_bytes()), Some(e));
        }
        assert_eq!(XsError::parse(b"E2BIG\0"), Some(XsError::E2BIG));
        assert_eq!(XsError::parse(b"EWHAT"), None);
    }

    #[test]
    fn directory_listing_splits() {
        let m = XsMessage {
            kind: XsType::Directory,
            req_id: 1,
            tx_id: 0,
            payload: b"0\x001\x005\x00".to_vec(),
        };
        assert_eq!(
            m.strings().collect::<Vec<_>>(),
            [b"0".as_slice(), b"1", b"5"]
        );
        let empty = XsMessage {
            kind: XsType::Directory,
            req_id: 1,
            tx_id: 0,
            payload: Vec::new(),
        };
        assert_eq!(empty.strings().count(), 0);
    }
}
