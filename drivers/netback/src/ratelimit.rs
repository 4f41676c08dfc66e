//! Per-VIF transmit rate limit, Linux netback's credit model: every `timeslice_us` the VIF
//! gets `credit_bytes` more credit, capped at one timeslice's worth (or 128 KiB, whichever
//! is larger, so a 64 KiB TSO packet can always pass eventually); a packet larger than the
//! remaining credit waits for the next timeslice. Time is handed in by the caller (ns).
//!
//! xapi's `VIF.qos_algorithm_type = "ratelimit"` with `qos_algorithm_params:kbps` becomes,
//! in xenopsd, a backend `rate` node `"<bytes per interval>,<interval us>"` with a 50 ms
//! interval; [`RateLimit::from_xapi_kbps`] computes the same figures (xenopsd treats
//! `kbps` as KiB per second) and [`RateLimit::parse_rate_node`] reads the node.

/// Linux's burst floor: a 64 KiB GSO packet plus headroom.
const MIN_BURST: u64 = 131_072;
/// xenopsd's default timeslice.
pub const XAPI_TIMESLICE_US: u64 = 50_000;

/// The configured rate: `credit_bytes` every `timeslice_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub credit_bytes: u64,
    pub timeslice_us: u64,
}

impl RateLimit {
    /// The rate xapi's `ratelimit` QoS with `kbps` asks for, or `None` for no limit
    /// (`kbps` 0 or a value too large to express).
    pub fn from_xapi_kbps(kbps: u64) -> Option<Self> {
        let bytes = kbps.checked_mul(1024)?.checked_mul(XAPI_TIMESLICE_US)? / 1_000_000;
        if bytes == 0 || bytes >= 0xffff_ffff {
            return None;
        }
        Some(RateLimit {
            credit_bytes: bytes,
            timeslice_us: XAPI_TIMESLICE_US,
        })
    }

    /// Parses the backend `rate` node, `"<bytes>,<usec>"` (Linux `xen_net_read_rate`).
    pub fn parse_rate_node(value: &str) -> Option<Self> {
        let (b, u) = value.trim().split_once(',')?;
        let credit_bytes = b.trim().parse().ok()?;
        let timeslice_us: u64 = u.trim().parse().ok()?;
        if timeslice_us == 0 || credit_bytes == 0 {
            return None;
        }
        Some(RateLimit {
            credit_bytes,
            timeslice_us,
        })
    }
}

/// The running credit of one VIF.
#[derive(Debug, Clone)]
pub struct Credit {
    limit: Option<RateLimit>,
    remaining: u64,
    window_start_ns: u64,
}

impl Credit {
    pub fn new(limit: Option<RateLimit>, now_ns: u64) -> Self {
        Credit {
            limit,
            remaining: limit.map_or(0, |l| l.credit_bytes),
            window_start_ns: now_ns,
        }
    }

    pub fn limit(&self) -> Option<RateLimit> {
        self.limit
    }

    /// Changes the rate (the VIF's QoS was edited); the new rate applies from `now_ns`.
    pub fn set_limit(&mut self, limit: Option<RateLimit>, now_ns: u64) {
        *self = Credit::new(limit, now_ns);
    }

    fn replenish(&mut self, now_ns: u64) {
        let Some(l) = self.limit else { return };
        let slice_ns = l.timeslice_us.saturating_mul(1000);
        if now_ns.saturating_sub(self.window_start_ns) < slice_ns {
            return;
        }
        let cap = l.credit_bytes.max(MIN_BURST);
        self.remaining = self.remaining.saturating_add(l.credit_bytes).min(cap);
        self.window_start_ns = now_ns;
    }

    /// Takes `bytes` of credit if there is enough; otherwise returns when to try again.
    pub fn try_take(&mut self, bytes: u64, now_ns: u64) -> Result<(), u64> {
        let Some(l) = self.limit else { return Ok(()) };
        self.replenish(now_ns);
        if bytes <= self.remaining {
            self.remaining -= bytes;
            return Ok(());
        }
        Err(self
            .window_start_ns
            .saturating_add(l.timeslice_us.saturating_mul(1000)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xapi_kbps_becomes_a_rate_node() {
        // 1000 KiB/s over 50 ms: 51200 bytes per interval.
        assert_eq!(
            RateLimit::from_xapi_kbps(1000),
            Some(RateLimit {
                credit_bytes: 51_200,
                timeslice_us: 50_000
            })
        );
        assert_eq!(RateLimit::from_xapi_kbps(0), None);
        assert_eq!(RateLimit::from_xapi_kbps(u64::MAX), None);
        assert_eq!(
            RateLimit::parse_rate_node("51200,50000"),
            RateLimit::from_xapi_kbps(1000)
        );
        assert_eq!(RateLimit::parse_rate_node("51200"), None);
        assert_eq!(RateLimit::parse_rate_node("x,1"), None);
        assert_eq!(RateLimit::parse_rate_node("10,0"), None);
    }

    #[test]
    fn unlimited_always_passes() {
        let mut c = Credit::new(None, 0);
        assert_eq!(c.try_take(u64::MAX, 0), Ok(()));
    }

    #[test]
    fn credit_runs_out_and_comes_back_each_timeslice() {
        let l = RateLimit {
            credit_bytes: 3000,
            timeslice_us: 10_000,
        };
        let mut c = Credit::new(Some(l), 0);
        assert_eq!(c.try_take(1500, 1), Ok(()));
        assert_eq!(c.try_take(1500, 2), Ok(()));
        assert_eq!(c.try_take(1500, 3), Err(10_000_000));
        // Not yet a timeslice later.
        assert_eq!(c.try_take(1500, 9_999_999), Err(10_000_000));
        assert_eq!(c.try_take(1500, 10_000_000), Ok(()));
        assert_eq!(c.try_take(1500, 10_000_001), Ok(()));
        assert_eq!(c.try_take(1500, 10_000_002), Err(20_000_000));
    }

    #[test]
    fn bursts_are_capped_but_a_tso_packet_fits() {
        let l = RateLimit {
            credit_bytes: 1000,
            timeslice_us: 1000,
        };
        let mut c = Credit::new(Some(l), 0);
        // A long idle time does not accumulate unbounded credit...
        let mut now = 0;
        for _ in 0..1000 {
            now += 1_000_000;
            let _ = c.try_take(0, now);
        }
        assert_eq!(c.try_take(MIN_BURST + 1, now), Err(now + 1_000_000));
        // ...but enough for one 64 KiB packet.
        assert_eq!(c.try_take(65_535, now), Ok(()));
    }

    #[test]
    fn bytes_over_time_match_the_rate() {
        let l = RateLimit::from_xapi_kbps(800).unwrap();
        let mut c = Credit::new(Some(l), 0);
        let mut sent = 0u64;
        let mut now = 0u64;
        // One simulated second, 1 ms steps, 1514-byte frames.
        while now < 1_000_000_000 {
            while c.try_take(1514, now).is_ok() {
                sent += 1514;
            }
            now += 1_000_000;
        }
        let expected = 800 * 1024;
        assert!(
            sent.abs_diff(expected) < expected / 10,
            "sent {sent} expected about {expected}"
        );
    }
}
