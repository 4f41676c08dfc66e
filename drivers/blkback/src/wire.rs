//! The blkif ABI for x86_64 (`xen/include/public/io/blkif.h`, protocol `x86_64-abi`).
//!
//! A ring slot is 112 bytes, the size of `struct blkif_request`:
//!
//! ```text
//! blkif_request           operation@0 u8, nr_segments@1 u8, handle@2 u16, (pad 4),
//!                         id@8 u64, sector_number@16 u64, seg[11]@24 (8 bytes each)
//! blkif_request_segment   gref@0 u32, first_sect@4 u8, last_sect@5 u8, (pad 2)
//! blkif_request_discard   operation@0, flag@1 (BLKIF_DISCARD_SECURE = 1), handle@2,
//!                         id@8, sector_number@16, nr_sectors@24 u64
//! blkif_request_indirect  operation@0, indirect_op@1 u8, nr_segments@2 u16, id@8,
//!                         sector_number@16, handle@24 u16, indirect_grefs[8]@28 u32
//! blkif_response          id@0 u64, operation@8 u8, status@10 i16 (16 bytes)
//! ```
//!
//! Everything the frontend writes is parsed once from a private copy of the slot; the
//! parsers only decode. Checks that depend on the device (sector ranges, read-only,
//! limits) are the queue's.

use keel_xen::grant_table::GrantRef;

/// Bytes of one ring slot (the request; the response is smaller and shares the slot).
pub const REQUEST_SIZE: usize = 112;
/// Bytes of `struct blkif_response`.
pub const RESPONSE_SIZE: usize = 16;
/// Sectors are 512 bytes on the wire whatever the disk's sector size
/// (`feature-large-sector-size` is not offered).
pub const SECTOR_SIZE: usize = 512;
/// Sectors in one 4 KiB granted page.
pub const SECTORS_PER_PAGE: u8 = 8;
/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
pub const MAX_DIRECT_SEGMENTS: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
pub const MAX_INDIRECT_PAGES: usize = 8;
/// Bytes of `struct blkif_request_segment`.
pub const SEGMENT_SIZE: usize = 8;
/// Segments in one indirect page (4096 / 8).
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = 4096 / SEGMENT_SIZE;
/// The native protocol (`XEN_IO_PROTO_ABI_X86_64`), also assumed when the frontend writes
/// no `protocol` node.
pub const NATIVE_PROTOCOL: &str = "x86_64-abi";
/// `XEN_IO_PROTO_ABI_X86_32`: what a 32-bit frontend writes — GRUB for Xen PVH
/// (`grub-i386-xen_pvh.bin`, the pygrub boot) is one.
pub const X86_32_PROTOCOL: &str = "x86_32-abi";

/// The frontend's ABI (`protocol` node): how its ring slots are laid out.
///
/// x86_32 aligns `u64` to 4 bytes: every request field after the first word sits 4 bytes
/// earlier than in x86_64 (`id@4`, `sector_number@12`, `seg[]`/`nr_sectors`/indirect
/// `handle` from 20), a slot is 108 bytes, and a response 12 (`id@0`, `operation@8`,
/// `status@10`, as x86_64's first 12 bytes). Linux's blkback converts the same way
/// (`blkif_get_x86_32_req`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    X86_64,
    X86_32,
}

impl Abi {
    /// The ABI a `protocol` node names (without its NUL); `None` for one not spoken.
    pub fn from_protocol(protocol: &[u8]) -> Option<Abi> {
        if protocol == NATIVE_PROTOCOL.as_bytes() {
            Some(Abi::X86_64)
        } else if protocol == X86_32_PROTOCOL.as_bytes() {
            Some(Abi::X86_32)
        } else {
            None
        }
    }

    /// Bytes of one ring slot (the request, the larger of the two).
    pub const fn slot_size(self) -> usize {
        match self {
            Abi::X86_64 => REQUEST_SIZE,
            Abi::X86_32 => 108,
        }
    }

    /// Bytes of a response written into a slot: no more, or the next slot is overwritten.
    pub const fn response_size(self) -> usize {
        match self {
            Abi::X86_64 => RESPONSE_SIZE,
            Abi::X86_32 => 12,
        }
    }

    /// A request slot of this ABI (its first [`Abi::slot_size`] bytes) in the x86_64
    /// layout the parsers read.
    pub fn to_native(self, slot: &[u8; REQUEST_SIZE]) -> [u8; REQUEST_SIZE] {
        match self {
            Abi::X86_64 => *slot,
            Abi::X86_32 => {
                let mut out = [0; REQUEST_SIZE];
                out[..4].copy_from_slice(&slot[..4]);
                out[8..].copy_from_slice(&slot[4..Abi::X86_32.slot_size()]);
                out
            }
        }
    }
}

/// `BLKIF_OP_*`.
pub mod op {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const WRITE_BARRIER: u8 = 2;
    pub const FLUSH_DISKCACHE: u8 = 3;
    pub const DISCARD: u8 = 5;
    pub const INDIRECT: u8 = 6;
}

/// `BLKIF_DISCARD_SECURE`.
pub const DISCARD_SECURE: u8 = 1;

/// `VDISK_*` bits of the backend's `info` node.
pub mod vdisk {
    pub const CDROM: u32 = 0x1;
    pub const REMOVABLE: u32 = 0x2;
    pub const READONLY: u32 = 0x4;
}

/// `BLKIF_RSP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Okay,
    /// Failed (`-EIO`): bad segments, bad grants, out of range, read-only, I/O error.
    Error,
    /// The operation is not offered (flush, barrier, discard without the feature; unknown
    /// operations).
    NotSupported,
}

impl Status {
    pub const fn code(self) -> i16 {
        match self {
            Status::Okay => 0,
            Status::Error => -1,
            Status::NotSupported => -2,
        }
    }
}

/// One data segment: sectors `first_sect..=last_sect` of the granted page `gref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub gref: GrantRef,
    pub first_sect: u8,
    pub last_sect: u8,
}

/// Why a segment cannot describe part of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// `first_sect > last_sect`.
    Reversed { first_sect: u8, last_sect: u8 },
    /// `last_sect` beyond the page's 8 sectors.
    BeyondPage { last_sect: u8 },
}

impl Segment {
    /// Decodes a `blkif_request_segment` (8 bytes).
    pub fn parse(bytes: &[u8; SEGMENT_SIZE]) -> Segment {
        Segment {
            gref: GrantRef(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
            first_sect: bytes[4],
            last_sect: bytes[5],
        }
    }

    /// Encodes it (for test frontends).
    pub fn encode(&self) -> [u8; SEGMENT_SIZE] {
        let mut out = [0; SEGMENT_SIZE];
        out[..4].copy_from_slice(&self.gref.0.to_le_bytes());
        out[4] = self.first_sect;
        out[5] = self.last_sect;
        out
    }

    /// Byte offset in the page and length, once checked.
    pub fn span(&self) -> Result<(u16, u16), SegmentError> {
        if self.last_sect >= SECTORS_PER_PAGE {
            return Err(SegmentError::BeyondPage {
                last_sect: self.last_sect,
            });
        }
        if self.first_sect > self.last_sect {
            return Err(SegmentError::Reversed {
                first_sect: self.first_sect,
                last_sect: self.last_sect,
            });
        }
        let offset = u16::from(self.first_sect) * SECTOR_SIZE as u16;
        let len = u16::from(self.last_sect - self.first_sect + 1) * SECTOR_SIZE as u16;
        Ok((offset, len))
    }

    /// Sectors covered (after [`Segment::span`] succeeded).
    pub fn sectors(&self) -> u64 {
        u64::from(self.last_sect.saturating_sub(self.first_sect)) + 1
    }
}

/// What a segment-carrying request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwKind {
    Read,
    Write,
    /// `BLKIF_OP_WRITE_BARRIER`: every earlier write completes first, no later request
    /// starts before it completes; its data (if any) is written durably.
    Barrier,
    /// `BLKIF_OP_FLUSH_DISKCACHE`: earlier completed writes become durable; blkfront also
    /// uses it for FUA writes, so it may carry data, written durably.
    Flush,
}

impl RwKind {
    /// The `operation` code echoed in the response.
    pub const fn op(self) -> u8 {
        match self {
            RwKind::Read => op::READ,
            RwKind::Write => op::WRITE,
            RwKind::Barrier => op::WRITE_BARRIER,
            RwKind::Flush => op::FLUSH_DISKCACHE,
        }
    }

    /// Whether data goes from the guest to the disk.
    pub const fn writes(self) -> bool {
        !matches!(self, RwKind::Read)
    }
}

/// A read, write, flush or barrier with up to 11 segments in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectRequest {
    pub id: u64,
    pub kind: RwKind,
    pub handle: u16,
    pub sector: u64,
    /// `nr_segments` as the frontend wrote it (may exceed 11: refused by the queue).
    pub nr_segments: u8,
    /// The slot's segments; only the first `min(nr_segments, 11)` mean anything.
    pub segments: [Segment; MAX_DIRECT_SEGMENTS],
}

impl DirectRequest {
    /// The segments the request claims, or `None` if it claims more than a slot holds.
    pub fn segments(&self) -> Option<&[Segment]> {
        self.segments.get(..usize::from(self.nr_segments))
    }
}

/// `blkif_request_discard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardRequest {
    pub id: u64,
    pub secure: bool,
    pub sector: u64,
    pub nr_sectors: u64,
}

/// `blkif_request_indirect`: the segments live in up to 8 granted pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndirectRequest {
    pub id: u64,
    /// `indirect_op` as written; only READ and WRITE are valid.
    pub indirect_op: u8,
    pub nr_segments: u16,
    pub sector: u64,
    pub handle: u16,
    pub indirect_grefs: [GrantRef; MAX_INDIRECT_PAGES],
}

impl IndirectRequest {
    /// Read or write, or `None` for any other `indirect_op` (refused with an error).
    pub fn kind(&self) -> Option<RwKind> {
        match self.indirect_op {
            op::READ => Some(RwKind::Read),
            op::WRITE => Some(RwKind::Write),
            _ => None,
        }
    }

    /// Indirect pages the segments occupy.
    pub fn pages(&self) -> usize {
        usize::from(self.nr_segments).div_ceil(SEGMENTS_PER_INDIRECT_PAGE)
    }
}

/// A decoded ring slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Direct(DirectRequest),
    Discard(DiscardRequest),
    Indirect(IndirectRequest),
    /// Any other operation: answered `BLKIF_RSP_EOPNOTSUPP` with the code echoed.
    Unknown {
        id: u64,
        operation: u8,
    },
}

fn u16_at(b: &[u8; REQUEST_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; REQUEST_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; REQUEST_SIZE], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Request {
    /// Decodes one slot. Never fails: every byte pattern is some request; the queue
    /// decides what is acceptable.
    pub fn parse(b: &[u8; REQUEST_SIZE]) -> Request {
        let operation = b[0];
        let id = u64_at(b, 8);
        let sector = u64_at(b, 16);
        let kind = match operation {
            op::READ => RwKind::Read,
            op::WRITE => RwKind::Write,
            op::WRITE_BARRIER => RwKind::Barrier,
            op::FLUSH_DISKCACHE => RwKind::Flush,
            op::DISCARD => {
                return Request::Discard(DiscardRequest {
                    id,
                    secure: b[1] & DISCARD_SECURE != 0,
                    sector,
                    nr_sectors: u64_at(b, 24),
                })
            }
            op::INDIRECT => {
                let mut indirect_grefs = [GrantRef(0); MAX_INDIRECT_PAGES];
                for (i, g) in indirect_grefs.iter_mut().enumerate() {
                    *g = GrantRef(u32_at(b, 28 + 4 * i));
                }
                return Request::Indirect(IndirectRequest {
                    id,
                    indirect_op: b[1],
                    nr_segments: u16_at(b, 2),
                    sector,
                    handle: u16_at(b, 24),
                    indirect_grefs,
                });
            }
            _ => return Request::Unknown { id, operation },
        };
        let mut segments = [Segment {
            gref: GrantRef(0),
            first_sect: 0,
            last_sect: 0,
        }; MAX_DIRECT_SEGMENTS];
        for (i, s) in segments.iter_mut().enumerate() {
            let at = 24 + SEGMENT_SIZE * i;
            let mut raw = [0; SEGMENT_SIZE];
            raw.copy_from_slice(&b[at..at + SEGMENT_SIZE]);
            *s = Segment::parse(&raw);
        }
        Request::Direct(DirectRequest {
            id,
            kind,
            handle: u16_at(b, 2),
            sector,
            nr_segments: b[1],
            segments,
        })
    }

    /// The frontend's id, echoed in the response.
    pub fn id(&self) -> u64 {
        match self {
            Request::Direct(r) => r.id,
            Request::Discard(r) => r.id,
            Request::Indirect(r) => r.id,
            Request::Unknown { id, .. } => *id,
        }
    }

    /// The `operation` the response must carry: blkfront checks it against the request,
    /// and for indirect requests against `indirect_op`.
    pub fn response_op(&self) -> u8 {
        match self {
            Request::Direct(r) => r.kind.op(),
            Request::Discard(_) => op::DISCARD,
            Request::Indirect(r) => r.indirect_op,
            Request::Unknown { operation, .. } => *operation,
        }
    }
}

/// Encoders for test frontends (and documentation of the layout by example).
pub mod encode {
    use super::*;

    /// A direct read/write/flush/barrier slot.
    pub fn direct(
        operation: u8,
        id: u64,
        sector: u64,
        handle: u16,
        segments: &[Segment],
    ) -> [u8; REQUEST_SIZE] {
        let mut b = [0; REQUEST_SIZE];
        b[0] = operation;
        b[1] = u8::try_from(segments.len()).unwrap_or(u8::MAX);
        b[2..4].copy_from_slice(&handle.to_le_bytes());
        b[8..16].copy_from_slice(&id.to_le_bytes());
        b[16..24].copy_from_slice(&sector.to_le_bytes());
        for (i, s) in segments.iter().take(MAX_DIRECT_SEGMENTS).enumerate() {
            let at = 24 + SEGMENT_SIZE * i;
            b[at..at + SEGMENT_SIZE].copy_from_slice(&s.encode());
        }
        b
    }

    /// A discard slot.
    pub fn discard(id: u64, sector: u64, nr_sectors: u64, secure: bool) -> [u8; REQUEST_SIZE] {
        let mut b = [0; REQUEST_SIZE];
        b[0] = op::DISCARD;
        b[1] = if secure { DISCARD_SECURE } else { 0 };
        b[8..16].copy_from_slice(&id.to_le_bytes());
        b[16..24].copy_from_slice(&sector.to_le_bytes());
        b[24..32].copy_from_slice(&nr_sectors.to_le_bytes());
        b
    }

    /// An indirect slot.
    pub fn indirect(
        indirect_op: u8,
        id: u64,
        sector: u64,
        nr_segments: u16,
        grefs: &[GrantRef],
    ) -> [u8; REQUEST_SIZE] {
        let mut b = [0; REQUEST_SIZE];
        b[0] = op::INDIRECT;
        b[1] = indirect_op;
        b[2..4].copy_from_slice(&nr_segments.to_le_bytes());
        b[8..16].copy_from_slice(&id.to_le_bytes());
        b[16..24].copy_from_slice(&sector.to_le_bytes());
        for (i, g) in grefs.iter().take(MAX_INDIRECT_PAGES).enumerate() {
            b[28 + 4 * i..32 + 4 * i].copy_from_slice(&g.0.to_le_bytes());
        }
        b
    }
}

/// `struct blkif_response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub id: u64,
    pub operation: u8,
    pub status: Status,
}

impl Response {
    pub fn encode(&self) -> [u8; RESPONSE_SIZE] {
        let mut b = [0; RESPONSE_SIZE];
        b[..8].copy_from_slice(&self.id.to_le_bytes());
        b[8] = self.operation;
        b[10..12].copy_from_slice(&self.status.code().to_le_bytes());
        b
    }

    /// Decodes `(id, operation, status)` as a frontend does (tests).
    pub fn decode(b: &[u8; RESPONSE_SIZE]) -> (u64, u8, i16) {
        let mut id = [0; 8];
        id.copy_from_slice(&b[..8]);
        (
            u64::from_le_bytes(id),
            b[8],
            i16::from_le_bytes([b[10], b[11]]),
        )
    }
}

/// Parses the segments of one indirect page (the first `count` of its 512).
pub fn indirect_segments(page: &[u8], count: usize) -> impl Iterator<Item = Segment> + '_ {
    page.chunks_exact(SEGMENT_SIZE).take(count).map(|c| {
        let mut raw = [0; SEGMENT_SIZE];
        raw.copy_from_slice(c);
        Segment::parse(&raw)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(gref: u32, first: u8, last: u8) -> Segment {
        Segment {
            gref: GrantRef(gref),
            first_sect: first,
            last_sect: last,
        }
    }

    #[test]
    fn direct_request_layout_matches_blkif_h() {
        let mut b = [0u8; REQUEST_SIZE];
        b[0] = op::WRITE;
        b[1] = 2;
        b[2..4].copy_from_slice(&0xCA00u16.to_le_bytes());
        b[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        b[16..24].copy_from_slice(&4096u64.to_le_bytes());
        // seg[0] at 24, seg[1] at 32, seg[10] at 104 (ends at 112).
        b[24..28].copy_from_slice(&77u32.to_le_bytes());
        b[28] = 1;
        b[29] = 7;
        b[32..36].copy_from_slice(&78u32.to_le_bytes());
        b[36] = 0;
        b[37] = 3;
        b[104..108].copy_from_slice(&99u32.to_le_bytes());
        let Request::Direct(r) = Request::parse(&b) else {
            panic!("not a direct request");
        };
        assert_eq!(r.id, 0x1122_3344_5566_7788);
        assert_eq!(r.kind, RwKind::Write);
        assert_eq!(r.handle, 0xCA00);
        assert_eq!(r.sector, 4096);
        assert_eq!(r.segments(), Some(&[seg(77, 1, 7), seg(78, 0, 3)][..]));
        assert_eq!(r.segments[10].gref, GrantRef(99));
        assert_eq!(
            encode::direct(op::WRITE, r.id, 4096, 0xCA00, &r.segments[..2])[..40],
            b[..40]
        );
    }

    #[test]
    fn every_op_code_decodes() {
        for (code, kind) in [
            (op::READ, RwKind::Read),
            (op::WRITE, RwKind::Write),
            (op::WRITE_BARRIER, RwKind::Barrier),
            (op::FLUSH_DISKCACHE, RwKind::Flush),
        ] {
            let r = Request::parse(&encode::direct(code, 1, 0, 0, &[]));
            assert!(matches!(r, Request::Direct(d) if d.kind == kind && d.nr_segments == 0));
            assert_eq!(r.response_op(), code);
        }
        for code in [4u8, 7, 0xFF] {
            let mut b = [0u8; REQUEST_SIZE];
            b[0] = code;
            b[8] = 9;
            assert_eq!(
                Request::parse(&b),
                Request::Unknown {
                    id: 9,
                    operation: code
                }
            );
        }
    }

    #[test]
    fn too_many_direct_segments_are_visible() {
        let mut b = encode::direct(op::READ, 1, 0, 0, &[seg(1, 0, 7)]);
        b[1] = 12;
        let Request::Direct(r) = Request::parse(&b) else {
            panic!();
        };
        assert_eq!(r.nr_segments, 12);
        assert_eq!(r.segments(), None);
    }

    #[test]
    fn discard_layout() {
        let b = encode::discard(5, 1000, 2048, true);
        assert_eq!(b[1], DISCARD_SECURE);
        assert_eq!(&b[24..32], &2048u64.to_le_bytes());
        assert_eq!(
            Request::parse(&b),
            Request::Discard(DiscardRequest {
                id: 5,
                secure: true,
                sector: 1000,
                nr_sectors: 2048
            })
        );
    }

    #[test]
    fn indirect_layout() {
        let grefs = [GrantRef(10), GrantRef(11)];
        let b = encode::indirect(op::WRITE, 3, 64, 600, &grefs);
        assert_eq!(&b[2..4], &600u16.to_le_bytes());
        assert_eq!(&b[28..32], &10u32.to_le_bytes());
        assert_eq!(&b[32..36], &11u32.to_le_bytes());
        let Request::Indirect(r) = Request::parse(&b) else {
            panic!();
        };
        assert_eq!(r.nr_segments, 600);
        assert_eq!(r.pages(), 2);
        assert_eq!(r.kind(), Some(RwKind::Write));
        assert_eq!(r.indirect_grefs[..2], grefs);
        assert_eq!(Request::Indirect(r).response_op(), op::WRITE);
        let bad = encode::indirect(op::FLUSH_DISKCACHE, 3, 64, 1, &grefs);
        let Request::Indirect(r) = Request::parse(&bad) else {
            panic!();
        };
        assert_eq!(r.kind(), None);
    }

    #[test]
    fn segment_spans_are_checked() {
        assert_eq!(seg(1, 0, 7).span(), Ok((0, 4096)));
        assert_eq!(seg(1, 3, 3).span(), Ok((1536, 512)));
        assert_eq!(
            seg(1, 4, 3).span(),
            Err(SegmentError::Reversed {
                first_sect: 4,
                last_sect: 3
            })
        );
        assert_eq!(
            seg(1, 0, 8).span(),
            Err(SegmentError::BeyondPage { last_sect: 8 })
        );
        assert_eq!(
            seg(1, 200, 255).span(),
            Err(SegmentError::BeyondPage { last_sect: 255 })
        );
        assert_eq!(seg(1, 2, 5).sectors(), 4);
    }

    #[test]
    fn response_layout() {
        let r = Response {
            id: 0xAB,
            operation: op::WRITE,
            status: Status::NotSupported,
        };
        let b = r.encode();
        assert_eq!(b[8], op::WRITE);
        assert_eq!(&b[10..12], &(-2i16).to_le_bytes());
        assert_eq!(Response::decode(&b), (0xAB, op::WRITE, -2));
        assert_eq!(Status::Error.code(), -1);
        assert_eq!(Status::Okay.code(), 0);
    }

    #[test]
    fn x86_32_slots_become_x86_64_requests() {
        // GRUB's read as a 32-bit frontend lays it out: id@4, sector@12, seg[0]@20.
        let mut slot = [0xEEu8; REQUEST_SIZE];
        slot[0] = op::READ;
        slot[1] = 1;
        slot[2..4].copy_from_slice(&51712u16.to_le_bytes());
        slot[4..12].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        slot[12..20].copy_from_slice(&2048u64.to_le_bytes());
        slot[20..28].copy_from_slice(&seg(77, 0, 7).encode());
        let native = Abi::X86_32.to_native(&slot);
        match Request::parse(&native) {
            Request::Direct(rw) => {
                assert_eq!(rw.id, 0x1122_3344_5566_7788);
                assert_eq!(rw.kind, RwKind::Read);
                assert_eq!(rw.sector, 2048);
                assert_eq!(rw.handle, 51712);
                assert_eq!(rw.segments(), Some(&[seg(77, 0, 7)][..]));
            }
            other => panic!("{other:?}"),
        }
        // Bytes past the 108-byte slot belong to the next one and are not read.
        assert_eq!(&native[108..], &slot[104..108]);
        let mut discard = [0u8; REQUEST_SIZE];
        discard[0] = op::DISCARD;
        discard[4..12].copy_from_slice(&9u64.to_le_bytes());
        discard[12..20].copy_from_slice(&64u64.to_le_bytes());
        discard[20..28].copy_from_slice(&16u64.to_le_bytes());
        assert_eq!(
            Abi::X86_32.to_native(&discard),
            encode::discard(9, 64, 16, false)
        );
        assert_eq!(Abi::X86_64.to_native(&slot), slot);
        assert_eq!(Abi::from_protocol(b"x86_32-abi"), Some(Abi::X86_32));
        assert_eq!(Abi::from_protocol(b"x86_64-abi"), Some(Abi::X86_64));
        assert_eq!(Abi::from_protocol(b"arm-abi"), None);
        assert_eq!(
            (Abi::X86_32.slot_size(), Abi::X86_32.response_size()),
            (108, 12)
        );
    }

    #[test]
    fn indirect_page_segments() {
        let mut page = [0u8; 4096];
        page[..8].copy_from_slice(&seg(5, 0, 7).encode());
        page[8..16].copy_from_slice(&seg(6, 1, 2).encode());
        let segs: alloc::vec::Vec<_> = indirect_segments(&page, 2).collect();
        assert_eq!(segs, [seg(5, 0, 7), seg(6, 1, 2)]);
        assert_eq!(indirect_segments(&page, 600).count(), 512);
    }
}
