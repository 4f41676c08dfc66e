//! How long the network task may sleep between polls of a NIC it cannot take interrupts
//! from. Keel polls its NICs; every wake-up of dom0 costs a timer hypercall, a halt and an
//! event under Xen (measured ~0.5 ms of dom0's vCPU each under nested TCG: a 1 ms poll kept
//! an idle dom0 ~55 % busy). So the poll backs off with the quiet: a frame that arrives after
//! `T` of quiet waits at most `T / QUIET_SHARE` (and never more than [`MAX_DELAY_MS`]) before
//! it is seen, while a stream in progress is polled every millisecond. Work other tasks hand
//! the network task (frames a guest sent to the uplink) wakes it at once instead.

/// The longest sleep between polls of an idle NIC: what the first frame after a long quiet
/// can wait at most.
pub const MAX_DELAY_MS: u64 = 16;

/// The shortest sleep: the poll period while traffic flows.
pub const MIN_DELAY_MS: u64 = 1;

/// The sleep is at most this fraction of the quiet so far.
const QUIET_SHARE: u64 = 4;

/// The poll period of one NIC: short while it moves frames, longer the longer it is quiet.
#[derive(Debug, Clone)]
pub struct IdlePoll {
    last_activity_ms: u64,
}

impl IdlePoll {
    pub fn new(now_ms: u64) -> IdlePoll {
        IdlePoll {
            last_activity_ms: now_ms,
        }
    }

    /// Something moved (a frame in or out, a call answered): poll at the shortest period.
    pub fn activity(&mut self, now_ms: u64) {
        self.last_activity_ms = self.last_activity_ms.max(now_ms);
    }

    /// How long to sleep now, in milliseconds, before the next poll.
    pub fn delay_ms(&self, now_ms: u64) -> u64 {
        let quiet = now_ms.saturating_sub(self.last_activity_ms);
        (quiet / QUIET_SHARE).clamp(MIN_DELAY_MS, MAX_DELAY_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_every_millisecond_while_traffic_flows() {
        let mut poll = IdlePoll::new(0);
        for now in 1..100 {
            poll.activity(now);
            assert_eq!(poll.delay_ms(now), MIN_DELAY_MS);
            assert_eq!(poll.delay_ms(now + 7), MIN_DELAY_MS);
        }
    }

    #[test]
    fn backs_off_with_the_quiet_up_to_the_bound() {
        let poll = IdlePoll::new(1_000);
        assert_eq!(poll.delay_ms(1_000), 1);
        assert_eq!(poll.delay_ms(1_040), 10);
        assert_eq!(poll.delay_ms(1_064), MAX_DELAY_MS);
        assert_eq!(poll.delay_ms(u64::MAX), MAX_DELAY_MS);
        // What a frame arriving after the quiet waits is at most a quarter of the quiet.
        for quiet in [4u64, 10, 40, 100] {
            assert!(poll.delay_ms(1_000 + quiet) * QUIET_SHARE <= quiet);
        }
    }

    #[test]
    fn an_idle_host_wakes_about_sixty_times_a_second() {
        // What the back-off is for: count the polls of one idle second after a minute of quiet.
        let poll = IdlePoll::new(0);
        let (mut now, mut polls) = (60_000, 0);
        while now < 61_000 {
            now += poll.delay_ms(now);
            polls += 1;
        }
        assert!(polls <= 1_000 / MAX_DELAY_MS + 1, "{polls} polls");
    }

    #[test]
    fn activity_is_never_moved_back_by_an_older_clock_reading() {
        let mut poll = IdlePoll::new(500);
        poll.activity(100);
        assert_eq!(poll.delay_ms(500), MIN_DELAY_MS);
        assert_eq!(poll.delay_ms(100), MIN_DELAY_MS);
    }
}
