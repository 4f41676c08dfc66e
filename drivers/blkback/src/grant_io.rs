//! Moving data between the frontend's granted pages and dom0 buffers.
//!
//! The backend describes each transfer as [`GrantSpan`]s (a byte range inside one granted
//! page) and a dom0 buffer; a [`GrantIo`] moves the bytes. The real one,
//! [`XenGrantCopy`], issues `GNTTABOP_copy` with the grant side naming the frontend's
//! domain id and the dom0 side naming frames of the buffer itself, so Xen checks every
//! access against the frontend's grant table: an invalid, foreign, read-only or revoked
//! grant fails that operation and nothing else, and no byte outside the buffer or the
//! frontend's granted pages is touched.

use alloc::vec::Vec;

use keel_xen::grant_table::{grant_copy, CopyEnd, GnttabCopy, GrantRef};
use keel_xen::hypercall::{DOMID_FIRST_RESERVED, PAGE_SIZE};
use keel_xen::{GntStatus, Hypervisor, XenError};

/// Bytes `offset..offset + len` of the frontend's granted page `gref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantSpan {
    pub gref: GrantRef,
    pub offset: u16,
    pub len: u16,
}

/// A copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyError {
    /// Xen refused the copy of span `span` (bad, foreign, revoked or read-only grant).
    Grant { span: usize, status: GntStatus },
    /// The hypercall itself failed.
    Hypercall(XenError),
    /// The spans do not add up to the buffer, leave their page, or name a reserved domain.
    BadArguments,
    /// No memory for the operation list.
    NoMemory,
}

/// Copies between a frontend's grants and dom0 buffers.
pub trait GrantIo {
    /// Fills `dst` from the spans, in order (`dst.len()` is the spans' total).
    fn copy_from_guest(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        dst: &mut [u8],
    ) -> Result<(), CopyError>;
    /// Writes `src` into the spans, in order.
    fn copy_to_guest(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        src: &[u8],
    ) -> Result<(), CopyError>;
}

/// Checks that `spans` stay in their pages and add up to `len` bytes.
pub fn check_spans(domid: u16, spans: &[GrantSpan], len: usize) -> Result<(), CopyError> {
    if domid >= DOMID_FIRST_RESERVED {
        return Err(CopyError::BadArguments);
    }
    let mut total = 0usize;
    for s in spans {
        if usize::from(s.offset) + usize::from(s.len) > PAGE_SIZE {
            return Err(CopyError::BadArguments);
        }
        total += usize::from(s.len);
    }
    if total != len {
        return Err(CopyError::BadArguments);
    }
    Ok(())
}

/// Where dom0 memory lives for Xen: the guest frame holding a virtual address.
pub trait LocalFrames {
    /// The dom0 guest frame number of the page containing `addr`, if it is RAM.
    fn gfn_of(&self, addr: usize) -> Option<u64>;
}

/// Keel's dom0: virtual addresses equal physical ones (docs/architecture.md, "Memory"),
/// and under PVH a physical address is the guest frame number shifted.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityMapped;

impl LocalFrames for IdentityMapped {
    fn gfn_of(&self, addr: usize) -> Option<u64> {
        Some(addr as u64 >> 12)
    }
}

/// Operations per `GNTTABOP_copy` hypercall.
const COPY_BATCH: usize = 32;

/// [`GrantIo`] by `GNTTABOP_copy`.
pub struct XenGrantCopy<'a, H: ?Sized, L> {
    pub hv: &'a H,
    pub local: L,
}

enum Direction {
    FromGuest,
    ToGuest,
}

impl<H: Hypervisor + ?Sized, L: LocalFrames> XenGrantCopy<'_, H, L> {
    fn copy(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        buf_addr: usize,
        len: usize,
        direction: Direction,
    ) -> Result<(), CopyError> {
        check_spans(domid, spans, len)?;
        let mut ops: Vec<GnttabCopy> = Vec::new();
        let mut owners: Vec<usize> = Vec::new();
        ops.try_reserve(COPY_BATCH)
            .map_err(|_| CopyError::NoMemory)?;
        owners
            .try_reserve(COPY_BATCH)
            .map_err(|_| CopyError::NoMemory)?;
        let mut at = buf_addr;
        for (index, span) in spans.iter().enumerate() {
            let mut done = 0u16;
            while done < span.len {
                // A piece never crosses a dom0 page (the buffer need not be page aligned).
                let in_page = PAGE_SIZE - at % PAGE_SIZE;
                let piece = usize::from(span.len - done).min(in_page) as u16;
                let gfn = self.local.gfn_of(at).ok_or(CopyError::BadArguments)?;
                let local = CopyEnd::Local {
                    gfn,
                    offset: (at % PAGE_SIZE) as u16,
                };
                let grant = CopyEnd::Grant {
                    dom: domid,
                    gref: span.gref,
                    offset: span.offset + done,
                };
                let (source, dest) = match direction {
                    Direction::FromGuest => (grant, local),
                    Direction::ToGuest => (local, grant),
                };
                let op =
                    GnttabCopy::new(source, dest, piece).map_err(|status| CopyError::Grant {
                        span: index,
                        status,
                    })?;
                ops.push(op);
                owners.push(index);
                if ops.len() == COPY_BATCH {
                    Self::issue(self.hv, &mut ops, &owners)?;
                    ops.clear();
                    owners.clear();
                }
                done += piece;
                at += usize::from(piece);
            }
        }
        if !ops.is_empty() {
            Self::issue(self.hv, &mut ops, &owners)?;
        }
        Ok(())
    }

    fn issue(hv: &H, ops: &mut [GnttabCopy], owners: &[usize]) -> Result<(), CopyError> {
        grant_copy(hv, ops).map_err(CopyError::Hypercall)?;
        for (op, span) in ops.iter().zip(owners) {
            op.result().map_err(|status| CopyError::Grant {
                span: *span,
                status,
            })?;
        }
        Ok(())
    }
}

impl<H: Hypervisor + ?Sized, L: LocalFrames> GrantIo for XenGrantCopy<'_, H, L> {
    fn copy_from_guest(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        dst: &mut [u8],
    ) -> Result<(), CopyError> {
        let (addr, len) = (dst.as_mut_ptr() as usize, dst.len());
        self.copy(domid, spans, addr, len, Direction::FromGuest)
    }

    fn copy_to_guest(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        src: &[u8],
    ) -> Result<(), CopyError> {
        let (addr, len) = (src.as_ptr() as usize, src.len());
        self.copy(domid, spans, addr, len, Direction::ToGuest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_xen::fake::{FakeXen, FOREIGN_FRAME_BASE};
    use keel_xen::grant_table::gtf;

    /// Pretends the buffer lives at dom0 frames 0x500.. (the fake keeps its own copy of
    /// "local" frames, so only the issued operations are checked here).
    struct Identity {
        base: usize,
    }
    impl LocalFrames for Identity {
        fn gfn_of(&self, addr: usize) -> Option<u64> {
            Some(0x500 + ((addr - self.base) / PAGE_SIZE) as u64)
        }
    }

    #[test]
    fn pieces_split_at_dom0_pages_and_name_the_frontend() {
        let xen = FakeXen::new();
        xen.add_foreign_grant(5, GrantRef(8), 0, gtf::PERMIT_ACCESS, FOREIGN_FRAME_BASE);
        xen.write_foreign_frame(FOREIGN_FRAME_BASE, 0, &[7u8; 4096]);
        // A dom0 "buffer" starting 512 bytes before a page boundary.
        let base = 0x10_0000 - 512;
        let mut io = XenGrantCopy {
            hv: &xen,
            local: Identity {
                base: base & !(PAGE_SIZE - 1),
            },
        };
        let spans = [GrantSpan {
            gref: GrantRef(8),
            offset: 0,
            len: 2048,
        }];
        io.copy(5, &spans, base, 2048, Direction::FromGuest)
            .unwrap();
        // Two pieces: 512 bytes at the end of the first frame, 1536 at the next.
        assert_eq!(xen.read_local(0x500, 3584, 512), [7u8; 512]);
        assert_eq!(xen.read_local(0x501, 0, 1536), [7u8; 1536]);
        assert_eq!(xen.read_local(0x501, 1536, 1), [0u8]);
    }

    #[test]
    fn bad_grants_fail_with_the_span_named() {
        let xen = FakeXen::new();
        xen.add_foreign_grant(5, GrantRef(8), 0, gtf::PERMIT_ACCESS, FOREIGN_FRAME_BASE);
        xen.add_foreign_grant(
            5,
            GrantRef(9),
            0,
            gtf::PERMIT_ACCESS | gtf::READONLY,
            FOREIGN_FRAME_BASE + 1,
        );
        let mut io = XenGrantCopy {
            hv: &xen,
            local: Identity { base: 0 },
        };
        let span = |g, len| GrantSpan {
            gref: GrantRef(g),
            offset: 0,
            len,
        };
        let buf = [1u8; 1024];
        assert_eq!(
            io.copy_to_guest(5, &[span(8, 512), span(9, 512)], &buf),
            Err(CopyError::Grant {
                span: 1,
                status: GntStatus::PermissionDenied
            })
        );
        let mut dst = [0u8; 512];
        assert_eq!(
            io.copy_from_guest(5, &[span(77, 512)], &mut dst),
            Err(CopyError::Grant {
                span: 0,
                status: GntStatus::BadGntref
            })
        );
        assert_eq!(
            io.copy_from_guest(5, &[span(8, 256)], &mut dst),
            Err(CopyError::BadArguments)
        );
        let outside = GrantSpan {
            gref: GrantRef(8),
            offset: 4000,
            len: 512,
        };
        assert_eq!(
            io.copy_from_guest(5, &[outside], &mut dst),
            Err(CopyError::BadArguments)
        );
        assert_eq!(
            io.copy_from_guest(0x7FF0, &[span(8, 512)], &mut dst),
            Err(CopyError::BadArguments)
        );
    }
}
