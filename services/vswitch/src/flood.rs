//! The per-port flood budget: a token bucket in integer arithmetic.

use crate::config::FloodLimit;

/// One frame costs this many token units; a second refills `frames_per_second` frames,
/// i.e. `frames_per_second` units per millisecond.
const UNITS_PER_FRAME: u64 = 1000;

#[derive(Debug, Clone)]
pub(crate) struct FloodBudget {
    /// Token units available.
    units: u64,
    /// When `units` was last brought up to date.
    updated_ms: u64,
}

impl FloodBudget {
    /// A full bucket.
    pub(crate) fn new(limit: FloodLimit, now_ms: u64) -> Self {
        FloodBudget {
            units: capacity(limit),
            updated_ms: now_ms,
        }
    }

    /// Takes one frame's worth if there is one. Time going backwards refills nothing.
    pub(crate) fn try_take(&mut self, limit: FloodLimit, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        if elapsed > 0 {
            let refill = elapsed.saturating_mul(u64::from(limit.frames_per_second));
            self.units = self.units.saturating_add(refill).min(capacity(limit));
            self.updated_ms = now_ms;
        }
        if self.units >= UNITS_PER_FRAME {
            self.units -= UNITS_PER_FRAME;
            true
        } else {
            false
        }
    }
}

fn capacity(limit: FloodLimit) -> u64 {
    u64::from(limit.burst) * UNITS_PER_FRAME
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: FloodLimit = FloodLimit {
        frames_per_second: 100,
        burst: 10,
    };

    #[test]
    fn burst_then_rate() {
        let mut b = FloodBudget::new(LIMIT, 0);
        assert_eq!((0..20).filter(|_| b.try_take(LIMIT, 0)).count(), 10);
        // 100 frames/s: one frame every 10 ms.
        assert!(!b.try_take(LIMIT, 9));
        assert!(b.try_take(LIMIT, 10));
        assert!(!b.try_take(LIMIT, 10));
        // A long pause refills no more than the burst.
        assert_eq!((0..50).filter(|_| b.try_take(LIMIT, 60_000)).count(), 10);
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let mut b = FloodBudget::new(LIMIT, 1000);
        for _ in 0..10 {
            assert!(b.try_take(LIMIT, 1000));
        }
        assert!(!b.try_take(LIMIT, 0));
        assert!(!b.try_take(LIMIT, 1000));
        assert!(b.try_take(LIMIT, 1010));
    }

    #[test]
    fn zero_rate_or_burst_floods_nothing() {
        let none = FloodLimit {
            frames_per_second: 0,
            burst: 0,
        };
        let mut b = FloodBudget::new(none, 0);
        assert!(!b.try_take(none, 1_000_000));
    }
}
