//! Our grant table (v1): its frames, placed by Xen in guest frames of the [`FrameSpace`],
//! and the reference allocator over them. Foreign grants are mapped into frames of the
//! same space.

use keel_xen::frames::FrameSpaceError;
use keel_xen::grant_access::GrantTable;
use keel_xen::grant_table::{setup_grant_frames, GrantEntryV1, GrantSetupError, ENTRIES_PER_FRAME};
use keel_xen::hypercall::PAGE_SIZE;
use spin::Mutex;

use super::hypercall::Xen;
use crate::memory;

/// Table frames set up at boot: one frame, 504 usable references. Keel grants few pages of
/// its own (backends map other domains' grants instead); each frame costs a hypercall at
/// boot, and Xen allows dom0 up to 64.
pub const TABLE_FRAMES: u64 = 1;

static TABLE: Mutex<Option<GrantTable<'static>>> = Mutex::new(None);

/// Why the grant table could not be set up.
#[derive(Debug)]
pub enum GrantInitError {
    Frames(FrameSpaceError),
    Setup(GrantSetupError),
    Map(memory::MapError),
}

impl core::fmt::Display for GrantInitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GrantInitError::Frames(e) => write!(f, "no frames for the table: {e}"),
            GrantInitError::Setup(e) => write!(f, "Xen refused the table frames: {e:?}"),
            GrantInitError::Map(e) => write!(f, "cannot map the table frames: {e}"),
        }
    }
}

/// Places the table frames and builds the allocator; returns the number of entries.
pub fn init() -> Result<usize, GrantInitError> {
    let first = super::with_frames(|f| f.allocate(TABLE_FRAMES)).map_err(GrantInitError::Frames)?;
    let gfns: [u64; TABLE_FRAMES as usize] = core::array::from_fn(|i| first + i as u64);
    let entries = setup_grant_frames(&Xen, &gfns).map_err(GrantInitError::Setup)?;
    let bytes = TABLE_FRAMES * PAGE_SIZE as u64;
    let base =
        memory::map_firmware(first * PAGE_SIZE as u64, bytes).map_err(GrantInitError::Map)?;
    debug_assert_eq!(entries, TABLE_FRAMES as usize * ENTRIES_PER_FRAME);
    // SAFETY: Xen placed our table frames at these contiguous guest frames, now mapped
    // write-back for the rest of the run; every field of an entry is an atomic.
    let table: &'static [GrantEntryV1] =
        unsafe { core::slice::from_raw_parts(base.as_ptr().cast::<GrantEntryV1>(), entries) };
    *TABLE.lock() = Some(GrantTable::new(table));
    Ok(entries)
}

/// Runs `f` on the grant table, if it was set up.
pub fn with_table<R>(f: impl FnOnce(&mut GrantTable<'static>) -> R) -> Option<R> {
    TABLE.lock().as_mut().map(f)
}
