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
use core::ops::Deref;
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
        let mut at = 0;
        for (index, span) in spans.iter().enumerate() {
            let len = usize::from(span.len);
            let out = &mut dst[at..at + len];
            if self.ensure_mapped(domid, span, index)? {
                if let Some(m) = self.table.mapped.get(&span.gref.0) {
                    read_words(&m.view, usize::from(span.offset), out);
                }
            } else {
                self.fallback
                    .copy_from_guest(domid, core::slice::from_ref(span), out)
                    .map_err(|e| reindex(e, index))?;
            }
            at += len;
        }
        Ok(())
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
        let mut at = 0;
        for (index, span) in spans.iter().enumerate() {
            let len = usize::from(span.len);
            let data = &src[at..at + len];
            if self.ensure_mapped(domid, span, index)? {
                if let Some(m) = self.table.mapped.get(&span.gref.0) {
                    write_words(&m.view, usize::from(span.offset), data);
                }
            } else {
                self.fallback
                    .copy_to_guest(domid, core::slice::from_ref(span), data)
                    .map_err(|e| reindex(e, index))?;
            }
            at += len;
        }
        Ok(())
    }
}

fn reindex(e: CopyError, index: usize) -> CopyError {
    match e {
        CopyError::Grant { status, .. } => CopyError::Grant {
            span: index,
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
}
