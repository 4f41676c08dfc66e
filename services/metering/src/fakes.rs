//! An in-memory [`UsageStore`] with power cuts, for tests (in the manner of keel-block's
//! `MemDisk`): every `append` and `compact` is a write boundary at which the power can be
//! cut, and what survives is chosen by the test.
//!
//! Handles are cheap clones sharing one medium, so a test keeps a handle, lets the code
//! under test own another, cuts the power, "reboots" with [`MemUsageStore::power_cycle`] and
//! opens the journal again.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::store::UsageStore;

/// What reaches the medium of the write the power is cut during.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Nothing of it.
    Nothing,
    /// The first `n` bytes of an append (all of it if shorter); a compact is atomic, so any
    /// `n` > 0 means the new journal.
    Prefix(usize),
    /// All of it, but the call still fails (the acknowledgement is lost).
    Everything,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    PowerCut,
    /// A planned failure of one write (the device reported an error; power stays on).
    Io,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub appends: u64,
    pub compactions: u64,
    /// Appends + compactions: the boundaries a cut can be planned at.
    pub writes: u64,
}

#[derive(Debug, Default)]
struct State {
    medium: Vec<u8>,
    powered: bool,
    stats: StoreStats,
    /// (write index at which to cut, what of that write survives)
    cut: Option<(u64, Tear)>,
    /// (write index to fail, what of it is applied)
    fail: Option<(u64, Tear)>,
}

#[derive(Debug, Clone)]
pub struct MemUsageStore {
    state: Rc<RefCell<State>>,
}

impl Default for MemUsageStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemUsageStore {
    pub fn new() -> Self {
        MemUsageStore {
            state: Rc::new(RefCell::new(State {
                powered: true,
                ..State::default()
            })),
        }
    }

    pub fn stats(&self) -> StoreStats {
        self.state.borrow().stats.clone()
    }

    pub fn medium(&self) -> Vec<u8> {
        self.state.borrow().medium.clone()
    }

    /// Cuts the power during the `k`-th write from now (0 = the next one); `tear` says what
    /// of that write reaches the medium. Every later call fails until `power_cycle`.
    pub fn cut_power_at(&self, k: u64, tear: Tear) {
        let mut s = self.state.borrow_mut();
        let at = s.stats.writes + k;
        s.cut = Some((at, tear));
    }

    /// The `k`-th write from now fails with `Io` after applying `tear` of it.
    pub fn fail_write_at(&self, k: u64, tear: Tear) {
        let mut s = self.state.borrow_mut();
        let at = s.stats.writes + k;
        s.fail = Some((at, tear));
    }

    pub fn is_powered(&self) -> bool {
        self.state.borrow().powered
    }

    /// Power back on; planned faults are cleared.
    pub fn power_cycle(&self) {
        let mut s = self.state.borrow_mut();
        s.powered = true;
        s.cut = None;
        s.fail = None;
    }

    /// Flips one bit of the medium (a corrupted sector).
    pub fn corrupt(&self, byte: usize) {
        if let Some(b) = self.state.borrow_mut().medium.get_mut(byte) {
            *b ^= 0x10;
        }
    }

    fn write(&mut self, bytes: &[u8], replace: bool) -> Result<(), StoreError> {
        let mut s = self.state.borrow_mut();
        if !s.powered {
            return Err(StoreError::PowerCut);
        }
        let index = s.stats.writes;
        s.stats.writes += 1;
        if replace {
            s.stats.compactions += 1;
        } else {
            s.stats.appends += 1;
        }
        let fault = match (s.cut, s.fail) {
            (Some((at, tear)), _) if at == index => Some((tear, StoreError::PowerCut)),
            (_, Some((at, tear))) if at == index => Some((tear, StoreError::Io)),
            _ => None,
        };
        let applied = match fault.map(|(tear, _)| tear) {
            None | Some(Tear::Everything) => bytes.len(),
            Some(Tear::Nothing) => 0,
            Some(Tear::Prefix(n)) => n.min(bytes.len()),
        };
        if replace {
            // Atomic: old or new, never a mix.
            let replaced = !matches!(fault, Some((Tear::Nothing | Tear::Prefix(0), _)));
            if replaced {
                s.medium.clear();
                s.medium.extend_from_slice(bytes);
            }
        } else {
            s.medium
                .extend_from_slice(bytes.get(..applied).unwrap_or(bytes));
        }
        match fault {
            Some((_, StoreError::PowerCut)) => {
                s.powered = false;
                Err(StoreError::PowerCut)
            }
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }
}

impl UsageStore for MemUsageStore {
    type Error = StoreError;

    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.write(bytes, false)
    }

    fn read_all(&mut self) -> Result<Vec<u8>, StoreError> {
        let s = self.state.borrow();
        if !s.powered {
            return Err(StoreError::PowerCut);
        }
        Ok(s.medium.clone())
    }

    fn compact(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.write(bytes, true)
    }
}
