//! One client of xenstored: a guest served over its ring, or one of Keel's own services in
//! the same address space. Each holds its watches and transactions; a guest's connection
//! also holds its request decoder and its bounded queue of replies and watch events.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use keel_xen::xenstore_wire::{XsHeader, XsMessage, XENSTORE_PAYLOAD_MAX, XS_HEADER_LEN};

use crate::perms::Caller;
use crate::transaction::Transaction;

/// A watch: a canonical path (or `@` name) and the client's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Watch {
    pub path: String,
    pub token: String,
    /// Registered with a relative path: events carry relative paths too.
    pub relative: bool,
}

impl Watch {
    pub fn memory(&self) -> usize {
        self.path.len() + self.token.len()
    }
}

/// A watch event delivered to an in-process client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The changed path (relative if the watch was registered relative).
    pub path: String,
    pub token: String,
}

/// Why a guest's connection was cut off. The matching `XENSTORE_ERROR_*` code is written
/// to the ring page's `error` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutOff {
    /// The ring indices claimed more than a ring's worth of bytes (`XENSTORE_ERROR_RINGIDX`).
    RingIndex,
    /// A header announced a payload over `XENSTORE_PAYLOAD_MAX` (`XENSTORE_ERROR_PROTO`).
    Protocol,
    /// Memory for a request could not be had (`XENSTORE_ERROR_COMM`).
    OutOfMemory,
}

impl CutOff {
    /// The `XENSTORE_ERROR_*` value for the ring page.
    pub fn ring_error(self) -> u32 {
        use keel_xen::xenstore_ring::{ERROR_COMM, ERROR_PROTO, ERROR_RINGIDX};
        match self {
            CutOff::RingIndex => ERROR_RINGIDX,
            CutOff::Protocol => ERROR_PROTO,
            CutOff::OutOfMemory => ERROR_COMM,
        }
    }
}

/// A message waiting to be written to a guest's ring.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub header: [u8; XS_HEADER_LEN],
    pub payload: Vec<u8>,
    /// Bytes of header + payload already written.
    pub written: usize,
    pub is_event: bool,
    pub queued_at_ms: u64,
}

impl Outgoing {
    pub fn new(msg: XsMessage, is_event: bool, now_ms: u64) -> Self {
        let header = XsHeader {
            kind: msg.kind,
            req_id: msg.req_id,
            tx_id: msg.tx_id,
            len: msg.payload.len() as u32,
        }
        .encode();
        Outgoing {
            header,
            payload: msg.payload,
            written: 0,
            is_event,
            queued_at_ms: now_ms,
        }
    }

    pub fn len(&self) -> usize {
        XS_HEADER_LEN + self.payload.len()
    }

    /// The next unwritten bytes (header first, then payload).
    pub fn pending(&self) -> &[u8] {
        if self.written < XS_HEADER_LEN {
            &self.header[self.written..]
        } else {
            &self.payload[self.written - XS_HEADER_LEN..]
        }
    }

    pub fn to_message(&self) -> Option<XsMessage> {
        let h = XsHeader::decode(&self.header).ok()?;
        Some(XsMessage {
            kind: h.kind,
            req_id: h.req_id,
            tx_id: h.tx_id,
            payload: self.payload.clone(),
        })
    }
}

/// A request as read from a ring: the raw type is kept, since an unknown type is answered
/// (ENOSYS) rather than fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRequest {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

/// The decoder saw a header it must not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    TooLong,
    NoMemory,
}

/// Reassembles requests from ring bytes. Only the bytes of the current message are asked
/// for, and the payload buffer is reserved fallibly once the header is known to be sane.
#[derive(Debug, Default)]
pub(crate) struct RequestDecoder {
    header: [u8; XS_HEADER_LEN],
    header_len: usize,
    payload: Vec<u8>,
    payload_len: Option<usize>,
}

impl RequestDecoder {
    /// How many bytes the current message still needs.
    pub fn wanted(&self) -> usize {
        match self.payload_len {
            None => XS_HEADER_LEN - self.header_len,
            Some(len) => len - self.payload.len(),
        }
    }

    /// Takes bytes (at most [`Self::wanted`]); returns a request when one completes.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<RawRequest>, DecodeError> {
        let mut rest = bytes;
        if self.payload_len.is_none() {
            let take = rest.len().min(XS_HEADER_LEN - self.header_len);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&rest[..take]);
            self.header_len += take;
            rest = &rest[take..];
            if self.header_len < XS_HEADER_LEN {
                return Ok(None);
            }
            let len = self.word(12) as usize;
            if len > XENSTORE_PAYLOAD_MAX {
                return Err(DecodeError::TooLong);
            }
            self.payload = Vec::new();
            self.payload
                .try_reserve_exact(len)
                .map_err(|_| DecodeError::NoMemory)?;
            self.payload_len = Some(len);
        }
        let Some(len) = self.payload_len else {
            return Ok(None);
        };
        let take = rest.len().min(len - self.payload.len());
        self.payload.extend_from_slice(&rest[..take]);
        if self.payload.len() < len {
            return Ok(None);
        }
        let req = RawRequest {
            kind: self.word(0),
            req_id: self.word(4),
            tx_id: self.word(8),
            payload: core::mem::take(&mut self.payload),
        };
        self.header_len = 0;
        self.payload_len = None;
        Ok(Some(req))
    }

    fn word(&self, at: usize) -> u32 {
        u32::from_ne_bytes([
            self.header[at],
            self.header[at + 1],
            self.header[at + 2],
            self.header[at + 3],
        ])
    }
}

/// A guest's side of the connection.
#[derive(Debug)]
pub(crate) struct RingChannel {
    pub port: u32,
    pub decoder: RequestDecoder,
    pub out: VecDeque<Outgoing>,
    pub out_bytes: usize,
    /// Replies (not events) in `out`: Xen's outstanding requests.
    pub replies_queued: usize,
    pub cut_off: Option<CutOff>,
    /// A shutdown was reported (so `@releaseDomain` fired once until `RESUME`).
    pub shutdown: bool,
    pub lost_events: u64,
}

/// An in-process client's side.
#[derive(Debug, Default)]
pub(crate) struct LocalChannel {
    pub events: VecDeque<WatchEvent>,
    pub lost_events: u64,
}

#[derive(Debug)]
pub(crate) enum Channel {
    Ring(RingChannel),
    Local(LocalChannel),
}

#[derive(Debug)]
pub(crate) struct Connection {
    pub caller: Caller,
    pub watches: Vec<Watch>,
    pub watch_bytes: usize,
    pub transactions: BTreeMap<u32, Transaction>,
    next_tx: u32,
    pub channel: Channel,
}

impl Connection {
    pub fn new(caller: Caller, channel: Channel) -> Self {
        Connection {
            caller,
            watches: Vec::new(),
            watch_bytes: 0,
            transactions: BTreeMap::new(),
            next_tx: 1,
            channel,
        }
    }

    pub fn ring(domid: u16, port: u32) -> Self {
        Self::new(
            Caller {
                domid,
                privileged: domid == 0,
                target: None,
            },
            Channel::Ring(RingChannel {
                port,
                decoder: RequestDecoder::default(),
                out: VecDeque::new(),
                out_bytes: 0,
                replies_queued: 0,
                cut_off: None,
                shutdown: false,
                lost_events: 0,
            }),
        )
    }

    /// A transaction id not in use (never 0, which means "no transaction").
    pub fn allocate_tx_id(&mut self) -> u32 {
        loop {
            let id = self.next_tx;
            self.next_tx = self.next_tx.wrapping_add(1);
            if id != 0 && !self.transactions.contains_key(&id) {
                return id;
            }
        }
    }

    /// Memory this connection holds besides committed nodes.
    pub fn memory(&self) -> usize {
        let out = match &self.channel {
            Channel::Ring(r) => r.out_bytes,
            Channel::Local(_) => 0,
        };
        let tx: usize = self.transactions.values().map(|t| t.held_bytes).sum();
        self.watch_bytes + out + tx
    }

    /// Drops every watch and transaction (`XS_RESET_WATCHES`, and a cut-off connection).
    pub fn reset(&mut self) {
        self.watches.clear();
        self.watch_bytes = 0;
        self.transactions.clear();
    }

    pub fn cut_off(&self) -> Option<CutOff> {
        match &self.channel {
            Channel::Ring(r) => r.cut_off,
            Channel::Local(_) => None,
        }
    }

    /// Queues a reply on a guest connection.
    pub fn queue_reply(&mut self, msg: XsMessage, now_ms: u64) {
        if let Channel::Ring(r) = &mut self.channel {
            if r.cut_off.is_some() {
                return;
            }
            let o = Outgoing::new(msg, false, now_ms);
            r.out_bytes += o.len();
            r.replies_queued += 1;
            r.out.push_back(o);
        }
    }

    /// Pops the next whole message not yet written to a ring (message-level clients).
    pub fn pop_message(&mut self) -> Option<XsMessage> {
        let Channel::Ring(r) = &mut self.channel else {
            return None;
        };
        if r.out.front().is_some_and(|o| o.written > 0) {
            return None;
        }
        let o = r.out.pop_front()?;
        r.out_bytes = r.out_bytes.saturating_sub(o.len());
        if !o.is_event {
            r.replies_queued = r.replies_queued.saturating_sub(1);
        }
        o.to_message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_xen::xenstore_wire::{request, XsType};

    #[test]
    fn decoder_reassembles_byte_by_byte_and_keeps_unknown_types() {
        let mut d = RequestDecoder::default();
        let mut bytes = request::write(3, 7, "/a", b"v").unwrap().encode();
        bytes[0..4].copy_from_slice(&77u32.to_ne_bytes());
        let mut got = None;
        for (i, b) in bytes.iter().enumerate() {
            assert!(d.wanted() > 0);
            let r = d.push(&[*b]).unwrap();
            if i + 1 < bytes.len() {
                assert!(r.is_none());
            } else {
                got = r;
            }
        }
        let req = got.unwrap();
        assert_eq!((req.kind, req.req_id, req.tx_id), (77, 3, 7));
        assert_eq!(req.payload, b"/a\0v");
        assert_eq!(d.wanted(), XS_HEADER_LEN);
    }

    #[test]
    fn decoder_refuses_long_payloads_before_buffering() {
        let mut d = RequestDecoder::default();
        let h = XsHeader {
            kind: XsType::Write,
            req_id: 1,
            tx_id: 0,
            len: XENSTORE_PAYLOAD_MAX as u32 + 1,
        }
        .encode();
        assert_eq!(d.push(&h), Err(DecodeError::TooLong));
        let mut d = RequestDecoder::default();
        let h = XsHeader {
            kind: XsType::Write,
            req_id: 1,
            tx_id: 0,
            len: XENSTORE_PAYLOAD_MAX as u32,
        }
        .encode();
        assert_eq!(d.push(&h), Ok(None));
        assert_eq!(d.wanted(), XENSTORE_PAYLOAD_MAX);
    }

    #[test]
    fn empty_payload_completes_with_the_header() {
        let mut d = RequestDecoder::default();
        let h = XsHeader {
            kind: XsType::TransactionStart,
            req_id: 1,
            tx_id: 0,
            len: 0,
        }
        .encode();
        let req = d.push(&h).unwrap().unwrap();
        assert!(req.payload.is_empty());
    }

    #[test]
    fn outgoing_is_written_header_first() {
        let msg = XsMessage {
            kind: XsType::Read,
            req_id: 2,
            tx_id: 0,
            payload: b"abc".to_vec(),
        };
        let mut o = Outgoing::new(msg.clone(), false, 0);
        assert_eq!(o.len(), 19);
        assert_eq!(o.pending().len(), 16);
        o.written = 10;
        assert_eq!(o.pending().len(), 6);
        o.written = 17;
        assert_eq!(o.pending(), b"bc");
        assert_eq!(o.to_message(), Some(msg));
    }
}
