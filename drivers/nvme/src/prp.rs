//! Physical Region Page (PRP) entries: how a data buffer is described to the controller.
//!
//! PRP1 points at the first byte (any dword-aligned offset in its page). If the transfer
//! ends in the next page, PRP2 points at that page; if it spans more, PRP2 points at a PRP
//! list: one page of 8-byte entries, each the address of a following page. Keel limits a
//! transfer so its list fits one page (512 entries), so lists are never chained.

use crate::hal::PAGE_SIZE;

/// Entries in one PRP list page.
pub const LIST_ENTRIES: usize = PAGE_SIZE / 8;

/// The largest transfer one list page can describe whatever the buffer's offset: PRP1's page
/// plus 512 listed pages, less the worst-case offset into the first page.
pub const MAX_TRANSFER_BYTES: usize = LIST_ENTRIES * PAGE_SIZE;

/// How PRP2 is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Second {
    /// The transfer fits in PRP1's page.
    None,
    /// The transfer ends in this (second) page.
    Page(u64),
    /// PRP2 is a list of `count` pages, the first at `first_page`, each following the last.
    List { first_page: u64, count: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub prp1: u64,
    pub second: Second,
}

/// Why a buffer cannot be described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrpError {
    /// PRP entries must be dword aligned.
    Unaligned,
    /// Empty, or more than one list page can describe.
    Length,
}

/// Plans the PRPs for `len` bytes, contiguous on the bus from `bus`.
pub fn plan(bus: u64, len: usize) -> Result<Plan, PrpError> {
    if !bus.is_multiple_of(4) {
        return Err(PrpError::Unaligned);
    }
    if len == 0 || len > MAX_TRANSFER_BYTES {
        return Err(PrpError::Length);
    }
    let page = PAGE_SIZE as u64;
    let in_first = (page - bus % page) as usize;
    let second = if len <= in_first {
        Second::None
    } else {
        let next = bus - bus % page + page;
        let rest = len - in_first;
        if rest <= PAGE_SIZE {
            Second::Page(next)
        } else {
            let count = rest.div_ceil(PAGE_SIZE);
            if count > LIST_ENTRIES {
                return Err(PrpError::Length);
            }
            Second::List {
                first_page: next,
                count,
            }
        }
    };
    Ok(Plan { prp1: bus, second })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_needs_only_prp1() {
        assert_eq!(
            plan(0x10_0000, 4096),
            Ok(Plan {
                prp1: 0x10_0000,
                second: Second::None
            })
        );
        assert_eq!(plan(0x10_0200, 512).map(|p| p.second), Ok(Second::None));
    }

    #[test]
    fn crossing_into_a_second_page_uses_prp2_directly() {
        assert_eq!(
            plan(0x10_0000, 8192).map(|p| p.second),
            Ok(Second::Page(0x10_1000))
        );
        // An offset buffer of one page spans two.
        assert_eq!(
            plan(0x10_0800, 4096).map(|p| p.second),
            Ok(Second::Page(0x10_1000))
        );
    }

    #[test]
    fn longer_transfers_use_a_list() {
        assert_eq!(
            plan(0x10_0000, 3 * 4096).map(|p| p.second),
            Ok(Second::List {
                first_page: 0x10_1000,
                count: 2
            })
        );
        assert_eq!(
            plan(0x10_0ffc, MAX_TRANSFER_BYTES).map(|p| p.second),
            Ok(Second::List {
                first_page: 0x10_1000,
                count: 512
            })
        );
    }

    #[test]
    fn refuses_what_cannot_be_described() {
        assert_eq!(plan(0x10_0002, 512), Err(PrpError::Unaligned));
        assert_eq!(plan(0x10_0000, 0), Err(PrpError::Length));
        assert_eq!(
            plan(0x10_0000, MAX_TRANSFER_BYTES + 4096),
            Err(PrpError::Length)
        );
    }
}
