//! The netif ring ABI (`xen/include/public/io/netif.h`), as pure parsers and encoders over
//! the bytes of one ring slot. Everything is little-endian (x86).
//!
//! - tx request (12 bytes): `gref u32 @0, offset u16 @4, flags u16 @6, id u16 @8, size u16 @10`;
//!   tx response (4 bytes): `id u16 @0, status i16 @2`. A tx slot is 12 bytes, 256 per page.
//! - rx request (8 bytes): `id u16 @0, pad u16 @2, gref u32 @4`; rx response (8 bytes):
//!   `id u16 @0, offset u16 @2, flags u16 @4, status i16 @6` (status > 0 is the byte count).
//! - extra info (8 bytes, carried in a tx request slot or an rx response slot): `type u8 @0,
//!   flags u8 @1`, then a 6-byte union: gso `{size u16, type u8, pad u8, features u16}`,
//!   mcast `{addr [u8; 6]}`, hash `{type u8, algorithm u8, value [u8; 4]}`.
//!
//! A packet on the tx ring is one request carrying the total size, then (if it has
//! `extra_info`) extra-info slots chained by `EXTRA_FLAG_MORE`, then one request per further
//! fragment while the previous one had `more_data`. Every slot, extras included, gets one
//! response; extras get `RSP_NULL`.

/// One tx ring slot as it lies in the page (a request; a response uses the first 4 bytes).
pub type TxSlot = [u8; 12];
/// A tx response as written into a slot.
pub type TxRspSlot = [u8; 4];
/// One rx ring slot (request and response are both 8 bytes).
pub type RxSlot = [u8; 8];

/// `XEN_NETTXF_*`: flags of a tx request.
pub mod txf {
    /// The L4 checksum is blank (the frontend offloads it).
    pub const CSUM_BLANK: u16 = 1 << 0;
    /// The data was validated against its checksum.
    pub const DATA_VALIDATED: u16 = 1 << 1;
    /// The packet continues in the next request.
    pub const MORE_DATA: u16 = 1 << 2;
    /// Extra-info slots follow this request.
    pub const EXTRA_INFO: u16 = 1 << 3;
}

/// `XEN_NETRXF_*`: flags of an rx response.
pub mod rxf {
    pub const DATA_VALIDATED: u16 = 1 << 0;
    pub const CSUM_BLANK: u16 = 1 << 1;
    /// The packet continues in the next response.
    pub const MORE_DATA: u16 = 1 << 2;
    /// Extra-info slots follow this response.
    pub const EXTRA_INFO: u16 = 1 << 3;
    pub const GSO_PREFIX: u16 = 1 << 4;
}

/// `XEN_NETIF_RSP_*`.
pub mod rsp {
    pub const DROPPED: i16 = -2;
    pub const ERROR: i16 = -1;
    pub const OKAY: i16 = 0;
    /// The answer to an extra-info slot.
    pub const NULL: i16 = 1;
}

/// `XEN_NETIF_EXTRA_TYPE_*`.
pub mod extra_type {
    pub const NONE: u8 = 0;
    pub const GSO: u8 = 1;
    pub const MCAST_ADD: u8 = 2;
    pub const MCAST_DEL: u8 = 3;
    pub const HASH: u8 = 4;
    /// One past the last type this backend knows (`XEN_NETIF_EXTRA_TYPE_MAX` before XDP).
    pub const MAX: u8 = 5;
}

/// `XEN_NETIF_EXTRA_FLAG_MORE`: another extra-info slot follows.
pub const EXTRA_FLAG_MORE: u8 = 1 << 0;

/// `XEN_NETIF_MAX_TX_SIZE`: the first request's `size` is a `u16`.
pub const MAX_TX_SIZE: usize = 0xFFFF;
/// `XEN_NETIF_NR_SLOTS_MIN` (Linux's `XEN_NETBK_LEGACY_SLOTS_MAX`): a backend must accept
/// packets of this many data slots; more are dropped.
pub const LEGACY_SLOTS_MAX: usize = 18;
/// Linux's default `fatal_skb_slots`: a packet using this many slots is malicious.
pub const FATAL_SLOTS: usize = 20;
/// Ethernet header length: tx packets shorter than this are refused.
pub const ETH_HLEN: usize = 14;

/// `XEN_NETIF_GSO_TYPE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoType {
    TcpV4,
    TcpV6,
}

impl GsoType {
    pub fn code(self) -> u8 {
        match self {
            GsoType::TcpV4 => 1,
            GsoType::TcpV6 => 2,
        }
    }
}

/// A tx request (`netif_tx_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxRequest {
    pub gref: u32,
    pub offset: u16,
    pub flags: u16,
    pub id: u16,
    pub size: u16,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl TxRequest {
    pub fn parse(slot: &TxSlot) -> Self {
        TxRequest {
            gref: u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]),
            offset: u16_at(slot, 4),
            flags: u16_at(slot, 6),
            id: u16_at(slot, 8),
            size: u16_at(slot, 10),
        }
    }

    pub fn encode(&self) -> TxSlot {
        let mut s = [0u8; 12];
        s[0..4].copy_from_slice(&self.gref.to_le_bytes());
        s[4..6].copy_from_slice(&self.offset.to_le_bytes());
        s[6..8].copy_from_slice(&self.flags.to_le_bytes());
        s[8..10].copy_from_slice(&self.id.to_le_bytes());
        s[10..12].copy_from_slice(&self.size.to_le_bytes());
        s
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// A tx response (`netif_tx_response`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxResponse {
    pub id: u16,
    pub status: i16,
}

impl TxResponse {
    pub fn encode(&self) -> TxRspSlot {
        let mut s = [0u8; 4];
        s[0..2].copy_from_slice(&self.id.to_le_bytes());
        s[2..4].copy_from_slice(&self.status.to_le_bytes());
        s
    }

    pub fn parse(slot: &TxRspSlot) -> Self {
        TxResponse {
            id: u16_at(slot, 0),
            status: u16_at(slot, 2) as i16,
        }
    }
}

/// An rx request (`netif_rx_request`): a whole page the frontend posts for one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxRequest {
    pub id: u16,
    pub gref: u32,
}

impl RxRequest {
    pub fn parse(slot: &RxSlot) -> Self {
        RxRequest {
            id: u16_at(slot, 0),
            gref: u32::from_le_bytes([slot[4], slot[5], slot[6], slot[7]]),
        }
    }

    pub fn encode(&self) -> RxSlot {
        let mut s = [0u8; 8];
        s[0..2].copy_from_slice(&self.id.to_le_bytes());
        s[4..8].copy_from_slice(&self.gref.to_le_bytes());
        s
    }
}

/// An rx response (`netif_rx_response`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxResponse {
    pub id: u16,
    pub offset: u16,
    pub flags: u16,
    /// Bytes in this slot, or a negative `rsp::*`.
    pub status: i16,
}

impl RxResponse {
    pub fn encode(&self) -> RxSlot {
        let mut s = [0u8; 8];
        s[0..2].copy_from_slice(&self.id.to_le_bytes());
        s[2..4].copy_from_slice(&self.offset.to_le_bytes());
        s[4..6].copy_from_slice(&self.flags.to_le_bytes());
        s[6..8].copy_from_slice(&self.status.to_le_bytes());
        s
    }

    pub fn parse(slot: &RxSlot) -> Self {
        RxResponse {
            id: u16_at(slot, 0),
            offset: u16_at(slot, 2),
            flags: u16_at(slot, 4),
            status: u16_at(slot, 6) as i16,
        }
    }
}

/// The payload of one extra-info slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// Segment the packet into `size`-byte payloads.
    Gso {
        size: u16,
        kind: GsoType,
        features: u16,
    },
    McastAdd([u8; 6]),
    McastDel([u8; 6]),
    /// The frontend's hash of the flow (informational for a backend).
    Hash {
        kind: u8,
        algorithm: u8,
        value: u32,
    },
}

/// An extra-info slot: its payload and whether another follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraInfo {
    pub extra: Extra,
    pub more: bool,
}

/// Why an extra-info slot is malformed. Linux treats each as a fatal frontend error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraError {
    /// Type 0 (`NONE`, "never used") or one this ABI does not define.
    BadType(u8),
    /// GSO with a zero segment size.
    ZeroGsoSize,
    /// A GSO type other than TCPv4/TCPv6.
    BadGsoType(u8),
}

impl ExtraInfo {
    /// Parses the first 8 bytes of a slot.
    pub fn parse(b: &[u8; 8]) -> Result<Self, ExtraError> {
        let more = b[1] & EXTRA_FLAG_MORE != 0;
        let u = &b[2..8];
        let extra = match b[0] {
            extra_type::GSO => {
                let size = u16_at(u, 0);
                let kind = match u[2] {
                    1 => GsoType::TcpV4,
                    2 => GsoType::TcpV6,
                    other => return Err(ExtraError::BadGsoType(other)),
                };
                if size == 0 {
                    return Err(ExtraError::ZeroGsoSize);
                }
                Extra::Gso {
                    size,
                    kind,
                    features: u16_at(u, 4),
                }
            }
            extra_type::MCAST_ADD | extra_type::MCAST_DEL => {
                let mut addr = [0u8; 6];
                addr.copy_from_slice(u);
                if b[0] == extra_type::MCAST_ADD {
                    Extra::McastAdd(addr)
                } else {
                    Extra::McastDel(addr)
                }
            }
            extra_type::HASH => Extra::Hash {
                kind: u[0],
                algorithm: u[1],
                value: u32::from_le_bytes([u[2], u[3], u[4], u[5]]),
            },
            other => return Err(ExtraError::BadType(other)),
        };
        Ok(ExtraInfo { extra, more })
    }

    /// Parses an extra-info slot on the tx ring.
    pub fn parse_tx_slot(slot: &TxSlot) -> Result<Self, ExtraError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(&slot[..8]);
        Self::parse(&b)
    }

    /// Encodes into 8 bytes (an rx response slot, or the head of a tx slot).
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[1] = if self.more { EXTRA_FLAG_MORE } else { 0 };
        match self.extra {
            Extra::Gso {
                size,
                kind,
                features,
            } => {
                b[0] = extra_type::GSO;
                b[2..4].copy_from_slice(&size.to_le_bytes());
                b[4] = kind.code();
                b[6..8].copy_from_slice(&features.to_le_bytes());
            }
            Extra::McastAdd(a) | Extra::McastDel(a) => {
                b[0] = if matches!(self.extra, Extra::McastAdd(_)) {
                    extra_type::MCAST_ADD
                } else {
                    extra_type::MCAST_DEL
                };
                b[2..8].copy_from_slice(&a);
            }
            Extra::Hash {
                kind,
                algorithm,
                value,
            } => {
                b[0] = extra_type::HASH;
                b[2] = kind;
                b[3] = algorithm;
                b[4..8].copy_from_slice(&value.to_le_bytes());
            }
        }
        b
    }

    /// Encodes into a tx slot (for fake frontends in tests).
    pub fn encode_tx_slot(&self) -> TxSlot {
        let mut s = [0u8; 12];
        s[..8].copy_from_slice(&self.encode());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_request_layout_matches_netif_h() {
        let slot = [
            0x78, 0x56, 0x34, 0x12, // gref
            0x10, 0x00, // offset
            0x05, 0x00, // flags: csum_blank | more_data
            0x2a, 0x00, // id
            0xdc, 0x05, // size 1500
        ];
        let r = TxRequest::parse(&slot);
        assert_eq!(
            r,
            TxRequest {
                gref: 0x1234_5678,
                offset: 16,
                flags: txf::CSUM_BLANK | txf::MORE_DATA,
                id: 42,
                size: 1500
            }
        );
        assert!(r.has(txf::MORE_DATA));
        assert!(!r.has(txf::EXTRA_INFO));
        assert_eq!(r.encode(), slot);
        assert_eq!(txf::EXTRA_INFO, 8);
        assert_eq!(txf::DATA_VALIDATED, 2);
    }

    #[test]
    fn responses_encode_as_netif_h_says() {
        let t = TxResponse {
            id: 7,
            status: rsp::ERROR,
        };
        assert_eq!(t.encode(), [7, 0, 0xff, 0xff]);
        assert_eq!(TxResponse::parse(&t.encode()), t);
        let r = RxResponse {
            id: 3,
            offset: 0,
            flags: rxf::MORE_DATA | rxf::DATA_VALIDATED,
            status: 4096,
        };
        assert_eq!(r.encode(), [3, 0, 0, 0, 5, 0, 0, 0x10]);
        assert_eq!(RxResponse::parse(&r.encode()), r);
        assert_eq!(rxf::GSO_PREFIX, 16);
        assert_eq!(rsp::NULL, 1);
        assert_eq!(rsp::DROPPED, -2);
    }

    #[test]
    fn rx_request_skips_the_pad() {
        let slot = [9, 1, 0xee, 0xee, 0x21, 0x43, 0, 0];
        assert_eq!(
            RxRequest::parse(&slot),
            RxRequest {
                id: 0x109,
                gref: 0x4321
            }
        );
        let back = RxRequest {
            id: 0x109,
            gref: 0x4321,
        }
        .encode();
        assert_eq!(back, [9, 1, 0, 0, 0x21, 0x43, 0, 0]);
    }

    #[test]
    fn extras_parse_each_type() {
        let gso = [1, 1, 0xa8, 0x05, 2, 0, 0, 0];
        assert_eq!(
            ExtraInfo::parse(&gso),
            Ok(ExtraInfo {
                extra: Extra::Gso {
                    size: 1448,
                    kind: GsoType::TcpV6,
                    features: 0
                },
                more: true
            })
        );
        let add = [2, 0, 1, 0, 0x5e, 0, 0, 1];
        assert_eq!(
            ExtraInfo::parse(&add).unwrap().extra,
            Extra::McastAdd([1, 0, 0x5e, 0, 0, 1])
        );
        let del = [3, 0, 1, 0, 0x5e, 0, 0, 1];
        assert_eq!(
            ExtraInfo::parse(&del).unwrap().extra,
            Extra::McastDel([1, 0, 0x5e, 0, 0, 1])
        );
        let hash = [4, 0, 3, 1, 0x44, 0x33, 0x22, 0x11];
        assert_eq!(
            ExtraInfo::parse(&hash).unwrap().extra,
            Extra::Hash {
                kind: 3,
                algorithm: 1,
                value: 0x1122_3344
            }
        );
        for e in [
            ExtraInfo::parse(&gso).unwrap(),
            ExtraInfo::parse(&add).unwrap(),
            ExtraInfo::parse(&del).unwrap(),
            ExtraInfo::parse(&hash).unwrap(),
        ] {
            assert_eq!(ExtraInfo::parse_tx_slot(&e.encode_tx_slot()), Ok(e));
        }
    }

    #[test]
    fn malformed_extras_are_refused() {
        assert_eq!(
            ExtraInfo::parse(&[0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ExtraError::BadType(0))
        );
        assert_eq!(
            ExtraInfo::parse(&[5, 0, 0, 0, 0, 0, 0, 0]),
            Err(ExtraError::BadType(5))
        );
        assert_eq!(
            ExtraInfo::parse(&[1, 0, 0, 0, 1, 0, 0, 0]),
            Err(ExtraError::ZeroGsoSize)
        );
        assert_eq!(
            ExtraInfo::parse(&[1, 0, 0xa8, 5, 3, 0, 0, 0]),
            Err(ExtraError::BadGsoType(3))
        );
        assert_eq!(
            ExtraInfo::parse(&[1, 0, 0xa8, 5, 0, 0, 0, 0]),
            Err(ExtraError::BadGsoType(0))
        );
    }

    #[test]
    fn ring_slot_sizes_fit_256_per_page() {
        use keel_xen::ring::{entry_size, ring_entries};
        assert_eq!(entry_size::<TxSlot, TxRspSlot>(), 12);
        assert_eq!(entry_size::<RxSlot, RxSlot>(), 8);
        assert_eq!(ring_entries(4096, 12), 256);
        assert_eq!(ring_entries(4096, 8), 256);
    }
}
