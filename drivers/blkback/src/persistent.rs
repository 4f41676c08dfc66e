//! Persistent grants (`feature-persistent`): a frontend that asks for them keeps a pool
//! of granted pages and reuses them for every request, so the backend maps each grant
//! once, keeps it mapped, and moves data with plain copies to and from the mapping
//! instead of a `GNTTABOP_copy` per request.
//!
//! Bounded as Linux's `max_persistent_grants`: once [`PersistentGrants::limit`] grants are
//! mapped, further grants go through the fallback [`GrantIo`] (grant copy). Grants are
//! mapped writable (blkif.h, note 8: the frontend must allow it, since a grant used for a
//! write may later be used for a read); a grant that cannot be mapped fails its request.
//! Every mapping goes away when the device disconnects.

use alloc::collections::BTreeMap;
use core::ops::{Deref, Range};
use core::sync::atomic::Ordering;

use keel_xen::grant_table::{map_grant, unmap_grant, GrantOpError, MappedGrant};
use keel_xen::{GntStatus, Hypervisor};

use crate::grant_io::{check_spans, CopyError, GrantIo, GrantSpan};
use crate::ring::{PageWords, RingFrames};

struct Mapped<P> {
    gfn: u64,
    grant: MappedGrant,
    view: P,
}

/// The grants of one device kept mapped.
pub struct PersistentGrants<P> {
    limit: usize,
    mapped: BTreeMap<u32, Mapped<P>>,
}

impl<P: Deref<Target = PageWords>> PersistentGrants<P> {
    pub fn new(limit: usize) -> Self {
        PersistentGrants {
            limit,
            mapped: BTreeMap::new(),
        }
    }

    /// Grants mapped now.
    pub fn len(&self) -> usize {
        self.mapped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mapped.is_empty()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Unmaps every grant; returns how many would not unmap (their frames are never
    /// reused).
    pub fn unmap_all<H, F>(&mut self, hv: &H, frames: &mut F) -> usize
    where
        H: Hypervisor + ?Sized,
        F: RingFrames<Page = P>,
    {
        let mut leaked = 0;
        for (_, m) in core::mem::take(&mut self.mapped) {
            drop(m.view);
            if unmap_grant(hv, &m.grant).is_ok() {
                frames.free(m.gfn);
            } else {
                leaked += 1;
            }
        }
        leaked
    }
}

/// [`GrantIo`] through persistently mapped grants, falling back to `fallback` beyond the
/// limit. Lent for one call.
pub struct PersistentIo<'a, H: ?Sized, F: RingFrames> {
    pub hv: &'a H,
    pub frames: &'a mut F,
    pub table: &'a mut PersistentGrants<F::Page>,
    pub fallback: &'a mut dyn GrantIo,
}

impl<H: Hypervisor + ?Sized, F: RingFrames> PersistentIo<'_, H, F> {
    /// Maps `span`'s grant if it is not yet and the limit allows; `false`: copy instead.
    fn ensure_mapped(
        &mut self,
        domid: u16,
        span: &GrantSpan,
        index: usize,
    ) -> Result<bool, CopyError> {
        if self.table.mapped.contains_key(&span.gref.0) {
            return Ok(true);
        }
        if self.table.mapped.len() >= self.table.limit {
            return Ok(false);
        }
        let Some(gfn) = self.frames.allocate() else {
            return Ok(false);
        };
        let grant = match map_grant(self.hv, domid, span.gref, gfn << 12, false) {
            Ok(g) => g,
            Err(e) => {
                self.frames.free(gfn);
                let status = match e {
                    GrantOpError::Status(s) => s,
                    GrantOpError::Hypercall(_) => GntStatus::GeneralError,
                };
                return Err(CopyError::Grant {
                    span: index,
                    status,
                });
            }
        };
        let view = self.frames.view(gfn, domid, span.gref);
        self.table
            .mapped
            .insert(span.gref.0, Mapped { gfn, grant, view });
        Ok(true)
    }
}

fn read_words(page: &PageWords, offset: usize, dst: &mut [u8]) {
    for (i, chunk) in dst.chunks_exact_mut(4).enumerate() {
        let w = page
            .get(offset / 4 + i)
            .map_or(0, |w| w.load(Ordering::Relaxed));
        chunk.copy_from_slice(&w.to_le_bytes());
    }
}

fn write_words(page: &PageWords, offset: usize, src: &[u8]) {
    for (i, chunk) in src.chunks_exact(4).enumerate() {
        if let Some(w) = page.get(offset / 4 + i) {
            w.store(
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                Ordering::Relaxed,
            );
        }
    }
}

/// Spans are whole sectors, so offsets and lengths are multiples of 4.
fn word_aligned(spans: &[GrantSpan]) -> bool {
    spans
        .iter()
        .all(|s| s.offset.is_multiple_of(4) && s.len.is_multiple_of(4))
}

impl<H: Hypervisor + ?Sized, F: RingFrames> GrantIo for PersistentIo<'_, H, F> {
    fn copy_from_guest(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        dst: &mut [u8],
    ) -> Result<(), CopyError> {
        check_spans(domid, spans, dst.len())?;
        if !word_aligned(spans) {
            return self.fallback.copy_from_guest(domid, spans, dst);
        }
        self.for_each_piece(domid, spans, |io, piece| match piece {
            Piece::Mapped {
                gref,
                offset,
                bytes,
            } => {
                if let Some(m) = io.table.mapped.get(&gref) {
                    read_words(&m.view, offset, &mut dst[bytes]);
                }
                Ok(())
            }
            Piece::Copied { spans: run, bytes } => io
                .fallback
                .copy_from_guest(domid, &spans[run.clone()], &mut dst[bytes])
                .map_err(|e| reindex(e, run.start)),
        })
    }

    fn copy_to_guest(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        src: &[u8],
    ) -> Result<(), CopyError> {
        check_spans(domid, spans, src.len())?;
        if !word_aligned(spans) {
            return self.fallback.copy_to_guest(domid, spans, src);
        }
        self.for_each_piece(domid, spans, |io, piece| match piece {
            Piece::Mapped {
                gref,
                offset,
                bytes,
            } => {
                if let Some(m) = io.table.mapped.get(&gref) {
                    write_words(&m.view, offset, &src[bytes]);
                }
                Ok(())
            }
            Piece::Copied { spans: run, bytes } => io
                .fallback
                .copy_to_guest(domid, &spans[run.clone()], &src[bytes])
                .map_err(|e| reindex(e, run.start)),
        })
    }
}

/// Where one part of a request's data goes.
enum Piece {
    /// One span through its mapping: `offset` in the grant's page, `bytes` of the buffer.
    Mapped {
        gref: u32,
        offset: usize,
        bytes: Range<usize>,
    },
    /// Consecutive spans not mapped (over the limit), copied by the fallback in one call —
    /// one `GNTTABOP_copy` for the run instead of one per span.
    Copied {
        spans: Range<usize>,
        bytes: Range<usize>,
    },
}

impl<H: Hypervisor + ?Sized, F: RingFrames> PersistentIo<'_, H, F> {
    /// Maps what the limit allows and hands `f` the request's pieces in order.
    fn for_each_piece(
        &mut self,
        domid: u16,
        spans: &[GrantSpan],
        mut f: impl FnMut(&mut Self, Piece) -> Result<(), CopyError>,
    ) -> Result<(), CopyError> {
        let mut at = 0;
        // The unmapped run so far: its first span and where its bytes start.
        let mut run: Option<(usize, usize)> = None;
        for (index, span) in spans.iter().enumerate() {
            let len = usize::from(span.len);
            if self.ensure_mapped(domid, span, index)? {
                if let Some((first, from)) = run.take() {
                    f(
                        self,
                        Piece::Copied {
                            spans: first..index,
                            bytes: from..at,
                        },
                    )?;
                }
                f(
                    self,
                    Piece::Mapped {
                        gref: span.gref.0,
                        offset: usize::from(span.offset),
                        bytes: at..at + len,
                    },
                )?;
            } else if run.is_none() {
                run = Some((index, at));
            }
            at += len;
        }
        if let Some((first, from)) = run {
            f(
                self,
                Piece::Copied {
                    spans: first..spans.len(),
                    bytes: from..at,
                },
            )?;
        }
        Ok(())
    }
}

/// An error of the fallback's call on the spans from `first` on, named by the request's span.
fn reindex(e: CopyError, first: usize) -> CopyError {
    match e {
        CopyError::Grant { span, status } => CopyError::Grant {
            span: first + span,
            status,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeFrames, FakeGrantCopy, FrontPages};
    use keel_xen::fake::{FakeXen, FOREIGN_FRAME_BASE};
    use keel_xen::grant_table::{gtf, GrantRef};

    fn span(gref: u32, offset: u16, len: u16) -> GrantSpan {
        GrantSpan {
            gref: GrantRef(gref),
            offset,
            len,
        }
    }

    #[test]
    fn maps_once_copies_by_memory_and_falls_back_past_the_limit() {
        let xen = FakeXen::new();
        let front = FrontPages::default();
        for g in [10, 11, 12] {
            xen.add_foreign_grant(
                5,
                GrantRef(g),
                0,
                gtf::PERMIT_ACCESS,
                FOREIGN_FRAME_BASE + u64::from(g),
            );
            front.add(5, GrantRef(g));
        }
        front.write(5, GrantRef(10), 512, &[0xAB; 1024]);
        xen.write_foreign_frame(FOREIGN_FRAME_BASE + 12, 0, &[0xCD; 512]);
        let mut frames = FakeFrames::new(&front);
        let mut table = PersistentGrants::new(2);
        let mut copier = FakeGrantCopy::new(&xen);
        let mut io = PersistentIo {
            hv: &xen,
            frames: &mut frames,
            table: &mut table,
            fallback: &mut copier,
        };
        let mut dst = [0u8; 1024];
        io.copy_from_guest(5, &[span(10, 512, 1024)], &mut dst)
            .unwrap();
        assert_eq!(dst, [0xAB; 1024]);
        io.copy_to_guest(5, &[span(11, 0, 512)], &[0x11; 512])
            .unwrap();
        assert_eq!(front.read(5, GrantRef(11))[..512], [0x11; 512]);
        // Third grant: over the limit of 2, copied by the hypervisor instead.
        let mut small = [0u8; 512];
        io.copy_from_guest(5, &[span(12, 0, 512)], &mut small)
            .unwrap();
        assert_eq!(small, [0xCD; 512]);
        // A bad grant fails with its span named.
        assert_eq!(
            io.copy_from_guest(5, &[span(10, 0, 512), span(99, 0, 512)], &mut dst),
            Err(CopyError::Grant {
                span: 1,
                status: GntStatus::BadGntref
            })
        );
        assert_eq!(table.len(), 2);
        // Xen holds the mappings: the frontend cannot take the pages back meanwhile.
        assert_ne!(xen.foreign_grant_flags(5, GrantRef(10)) & gtf::WRITING, 0);
        assert_eq!(table.unmap_all(&xen, &mut frames), 0);
        assert_eq!(frames.in_use(), 0);
        assert_eq!(xen.foreign_grant_flags(5, GrantRef(10)), gtf::PERMIT_ACCESS);
    }

    #[test]
    fn spans_past_the_limit_are_copied_in_one_call_per_run() {
        let xen = FakeXen::new();
        let front = FrontPages::default();
        for g in 20..24 {
            xen.add_foreign_grant(
                5,
                GrantRef(g),
                0,
                gtf::PERMIT_ACCESS,
                FOREIGN_FRAME_BASE + u64::from(g),
            );
            front.add(5, GrantRef(g));
            // The mapped grant's page is the frontend's; the others are read by copy.
            front.write(5, GrantRef(g), 0, &[g as u8; 512]);
            xen.write_foreign_frame(FOREIGN_FRAME_BASE + u64::from(g), 0, &[g as u8; 512]);
        }
        let mut frames = FakeFrames::new(&front);
        let mut table = PersistentGrants::new(1);
        let mut copier = FakeGrantCopy::new(&xen);
        let mut io = PersistentIo {
            hv: &xen,
            frames: &mut frames,
            table: &mut table,
            fallback: &mut copier,
        };
        let spans = [
            span(20, 0, 512),
            span(21, 0, 512),
            span(22, 0, 512),
            span(23, 0, 512),
        ];
        let mut dst = [0u8; 2048];
        io.copy_from_guest(5, &spans, &mut dst).unwrap();
        for (i, chunk) in dst.chunks(512).enumerate() {
            assert_eq!(chunk, [20 + i as u8; 512]);
        }
        io.copy_to_guest(5, &spans, &[0x77; 2048]).unwrap();
        assert_eq!(front.read(5, GrantRef(20))[..512], [0x77; 512]);
        // A bad grant inside a copied run is named by its place in the request.
        assert_eq!(
            io.copy_from_guest(
                5,
                &[span(20, 0, 512), span(21, 0, 512), span(99, 0, 512)],
                &mut dst[..1536]
            ),
            Err(CopyError::Grant {
                span: 2,
                status: GntStatus::BadGntref
            })
        );
        // The three unmapped spans went in one hypercall each way, not one per span.
        assert_eq!((copier.ops, copier.calls), (3 + 3 + 2, 3));
        assert_eq!(
            xen.read_foreign_frame(FOREIGN_FRAME_BASE + 23, 0, 512),
            [0x77; 512]
        );
        assert_eq!(table.unmap_all(&xen, &mut frames), 0);
    }
}
