//! Our own grant table: granting our pages to other domains and revoking the grants.
//!
//! Granting writes `frame` and `domid` first and `flags` last with release ordering: Xen
//! only trusts an entry once `flags` says `GTF_permit_access`, so it must never see the
//! flag before the frame. (On x86 the release store compiles to a plain store behind a
//! compiler barrier, which is the `wmb()` Xen's protocol asks for.)
//!
//! Revoking must not race with the grantee: Xen sets `GTF_reading`/`GTF_writing` while the
//! grantee maps or copies the frame, so the entry is cleared with a compare-exchange that
//! only succeeds when neither bit is set. A busy grant stays granted and allocated; the
//! caller retries later and must not reuse the page meanwhile.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use crate::grant_table::{gtf, GrantEntryV1, GrantRef, GNTTAB_NR_RESERVED_ENTRIES};

/// Why a grant could not be made or revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantError {
    /// Every reference is in use.
    Exhausted,
    /// The v1 entry holds a 32-bit frame number.
    FrameTooLarge(u64),
    /// The reference is reserved, out of range, or not granted by this table.
    NotGranted(GrantRef),
    /// The grantee still has the frame mapped or a copy is in flight; retry later.
    StillInUse(GrantRef),
}

/// Allocator and writer for the entries of our grant table.
pub struct GrantTable<'a> {
    entries: &'a [GrantEntryV1],
    free: Vec<u32>,
    granted: Vec<bool>,
}

impl<'a> GrantTable<'a> {
    /// Manages `entries` (our table frames, mapped contiguously). References below
    /// `GNTTAB_NR_RESERVED_ENTRIES` are never handed out.
    pub fn new(entries: &'a [GrantEntryV1]) -> Self {
        let limit = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        // Hand out low references first (popped from the end).
        let free: Vec<u32> = (GNTTAB_NR_RESERVED_ENTRIES..limit).rev().collect();
        GrantTable {
            entries,
            free,
            granted: alloc::vec![false; entries.len()],
        }
    }

    /// References still available.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Grants `domid` access to our frame `gfn`; returns the reference to advertise.
    pub fn grant_access(
        &mut self,
        domid: u16,
        gfn: u64,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        let frame = u32::try_from(gfn).map_err(|_| GrantError::FrameTooLarge(gfn))?;
        let index = self.free.pop().ok_or(GrantError::Exhausted)?;
        let (Some(entry), Some(granted)) = (
            self.entries.get(index as usize),
            self.granted.get_mut(index as usize),
        ) else {
            // Unreachable by construction (free only holds in-range indices).
            return Err(GrantError::Exhausted);
        };
        entry.frame.store(frame, Ordering::Relaxed);
        entry.domid.store(domid, Ordering::Relaxed);
        let flags = gtf::PERMIT_ACCESS | if readonly { gtf::READONLY } else { 0 };
        entry.flags.store(flags, Ordering::Release);
        *granted = true;
        Ok(GrantRef(index))
    }

    /// Revokes a grant and frees its reference, unless the grantee is still using it.
    pub fn end_access(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        let index = gref.0 as usize;
        let (Some(entry), Some(granted)) = (self.entries.get(index), self.granted.get_mut(index))
        else {
            return Err(GrantError::NotGranted(gref));
        };
        if !*granted {
            return Err(GrantError::NotGranted(gref));
        }
        let mut flags = entry.flags.load(Ordering::Acquire);
        loop {
            if flags & (gtf::READING | gtf::WRITING) != 0 {
                return Err(GrantError::StillInUse(gref));
            }
            match entry.flags.compare_exchange(
                flags,
                gtf::INVALID,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => flags = actual,
            }
        }
        *granted = false;
        self.free.push(gref.0);
        Ok(())
    }

    /// Whether `gref` is currently granted by this table.
    pub fn is_granted(&self, gref: GrantRef) -> bool {
        self.granted.get(gref.0 as usize).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant_table::ENTRIES_PER_FRAME;

    fn frame() -> Vec<GrantEntryV1> {
        (0..ENTRIES_PER_FRAME)
            .map(|_| GrantEntryV1::default())
            .collect()
    }

    #[test]
    fn grants_write_a_complete_entry() {
        let entries = frame();
        let mut t = GrantTable::new(&entries);
        let r = t.grant_access(3, 0x1234, false).unwrap();
        assert_eq!(r, GrantRef(GNTTAB_NR_RESERVED_ENTRIES));
        let e = &entries[r.0 as usize];
        assert_eq!(e.flags.load(Ordering::SeqCst), gtf::PERMIT_ACCESS);
        assert_eq!(e.domid.load(Ordering::SeqCst), 3);
        assert_eq!(e.frame.load(Ordering::SeqCst), 0x1234);
        let ro = t.grant_access(4, 0x99, true).unwrap();
        assert_eq!(
            entries[ro.0 as usize].flags.load(Ordering::SeqCst),
            gtf::PERMIT_ACCESS | gtf::READONLY
        );
        assert!(entries[..GNTTAB_NR_RESERVED_ENTRIES as usize]
            .iter()
            .all(|e| e.flags.load(Ordering::SeqCst) == 0));
    }

    #[test]
    fn end_access_clears_and_recycles() {
        let entries = frame();
        let mut t = GrantTable::new(&entries);
        let before = t.free_count();
        let r = t.grant_access(3, 0x1234, false).unwrap();
        t.end_access(r).unwrap();
        assert_eq!(entries[r.0 as usize].flags.load(Ordering::SeqCst), 0);
        assert_eq!(t.free_count(), before);
        assert_eq!(t.end_access(r), Err(GrantError::NotGranted(r)));
        assert_eq!(t.grant_access(5, 1, true).unwrap(), r);
    }

    #[test]
    fn busy_grant_is_not_revoked() {
        let entries = frame();
        let mut t = GrantTable::new(&entries);
        let r = t.grant_access(3, 0x1234, false).unwrap();
        // Xen marks the entry while the grantee has it mapped.
        entries[r.0 as usize]
            .flags
            .fetch_or(gtf::READING | gtf::WRITING, Ordering::SeqCst);
        assert_eq!(t.end_access(r), Err(GrantError::StillInUse(r)));
        assert!(t.is_granted(r));
        assert_eq!(
            entries[r.0 as usize].flags.load(Ordering::SeqCst) & gtf::PERMIT_ACCESS,
            gtf::PERMIT_ACCESS
        );
        // The grantee unmaps; now revocation succeeds.
        entries[r.0 as usize]
            .flags
            .fetch_and(!(gtf::READING | gtf::WRITING), Ordering::SeqCst);
        t.end_access(r).unwrap();
        assert!(!t.is_granted(r));
    }

    #[test]
    fn exhaustion_and_bad_refs() {
        let entries: Vec<GrantEntryV1> = (0..10).map(|_| GrantEntryV1::default()).collect();
        let mut t = GrantTable::new(&entries);
        assert_eq!(t.free_count(), 2);
        t.grant_access(1, 1, false).unwrap();
        t.grant_access(1, 2, false).unwrap();
        assert_eq!(t.grant_access(1, 3, false), Err(GrantError::Exhausted));
        assert_eq!(
            t.end_access(GrantRef(1)),
            Err(GrantError::NotGranted(GrantRef(1)))
        );
        assert_eq!(
            t.end_access(GrantRef(10)),
            Err(GrantError::NotGranted(GrantRef(10)))
        );
        assert_eq!(
            t.grant_access(1, 1 << 32, false),
            Err(GrantError::FrameTooLarge(1 << 32))
        );
        assert_eq!(t.free_count(), 0);
    }
}
