//! The Xen pvclock: system time from `vcpu_time_info`, and the wallclock from shared_info.
//!
//! Xen publishes, per vCPU, a TSC timestamp, the system time (ns since boot) at that TSC,
//! and a 32.32 fixed-point multiplier with a binary shift. Current system time is
//! `system_time + (((tsc - tsc_timestamp) << shift) * mul) >> 32`, with a negative shift
//! meaning a right shift. Readers follow a seqlock protocol: read `version`, retry while it
//! is odd, read the fields, and retry if `version` changed.

use core::sync::atomic::{fence, Ordering};

use crate::shared_info::{SharedInfo, VcpuTimeInfo};

/// `XEN_PVCLOCK_TSC_STABLE_BIT`: TSC is synchronised across pCPUs.
pub const PVCLOCK_TSC_STABLE: u8 = 1 << 0;
/// `XEN_PVCLOCK_GUEST_STOPPED`.
pub const PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// Reads retried before giving up; Xen's updates take microseconds, so hitting this
/// means the version word is stuck odd, not that we were unlucky.
pub const MAX_SEQ_RETRIES: u32 = 10_000;

/// The versioned data never became consistent within [`MAX_SEQ_RETRIES`] attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornRead;

/// The seqlock read: `version` loads the version word, `read` copies the data.
pub fn seq_read<T>(
    mut version: impl FnMut() -> u32,
    mut read: impl FnMut() -> T,
) -> Result<T, TornRead> {
    for _ in 0..MAX_SEQ_RETRIES {
        let before = version();
        if before & 1 == 1 {
            core::hint::spin_loop();
            continue;
        }
        fence(Ordering::Acquire);
        let value = read();
        fence(Ordering::Acquire);
        if version() == before {
            return Ok(value);
        }
    }
    Err(TornRead)
}

/// `(delta << shift) * mul >> 32`, the pvclock scaling of a TSC delta to nanoseconds.
pub fn scale_tsc_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let amount = u32::from(shift.unsigned_abs());
    let shifted = if shift >= 0 {
        // Shifting out high bits would be a Xen bug; saturate instead of wrapping.
        if delta == 0 {
            0
        } else if delta.leading_zeros() < amount {
            u64::MAX
        } else {
            delta << amount
        }
    } else {
        delta >> amount.min(63)
    };
    ((u128::from(shifted) * u128::from(mul)) >> 32) as u64
}

/// A consistent copy of one vCPU's time parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSnapshot {
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
}

impl TimeSnapshot {
    /// The signed TSC distance from the timestamp. Differences are taken modulo 2^64 and
    /// read as signed, as Linux's pvclock does: with TSC emulation Xen stamps a "negative"
    /// TSC (the guest's TSC was below 0 at the stamp), which a plain comparison would take
    /// for a stamp far in the future.
    fn tsc_delta(&self, tsc: u64) -> i64 {
        tsc.wrapping_sub(self.tsc_timestamp) as i64
    }

    /// Xen system time (ns since boot) at TSC value `tsc`. A TSC behind the timestamp (read
    /// on another pCPU) yields the timestamp's time, so time never runs backwards here.
    pub fn system_time_ns(&self, tsc: u64) -> u64 {
        let delta = self.tsc_delta(tsc).max(0).unsigned_abs();
        self.system_time.saturating_add(scale_tsc_delta(
            delta,
            self.tsc_to_system_mul,
            self.tsc_shift,
        ))
    }

    /// Xen system time at TSC value `tsc`, also for a `tsc` *before* the timestamp (the
    /// kernel-entry TSC, say): then the scaled distance is subtracted, saturating at 0.
    /// Use it on TSC values read on this vCPU; [`TimeSnapshot::system_time_ns`] is the
    /// reader for "now".
    pub fn system_time_at(&self, tsc: u64) -> u64 {
        let delta = self.tsc_delta(tsc);
        if delta >= 0 {
            return self.system_time_ns(tsc);
        }
        let back = scale_tsc_delta(delta.unsigned_abs(), self.tsc_to_system_mul, self.tsc_shift);
        self.system_time.saturating_sub(back)
    }

    /// TSC frequency in Hz implied by the parameters: `((10^9 << 32) / mul) >> shift`.
    pub fn tsc_hz(&self) -> Option<u64> {
        if self.tsc_to_system_mul == 0 {
            return None;
        }
        let base = (1_000_000_000u128 << 32) / u128::from(self.tsc_to_system_mul);
        let hz = if self.tsc_shift >= 0 {
            base >> self.tsc_shift.unsigned_abs()
        } else {
            base << self.tsc_shift.unsigned_abs()
        };
        u64::try_from(hz).ok()
    }

    pub fn tsc_stable(&self) -> bool {
        self.flags & PVCLOCK_TSC_STABLE != 0
    }
}

impl VcpuTimeInfo {
    /// A consistent snapshot, following the version protocol.
    pub fn snapshot(&self) -> Result<TimeSnapshot, TornRead> {
        seq_read(
            || self.version.load(Ordering::Acquire),
            || TimeSnapshot {
                tsc_timestamp: self.tsc_timestamp.load(Ordering::Relaxed),
                system_time: self.system_time.load(Ordering::Relaxed),
                tsc_to_system_mul: self.tsc_to_system_mul.load(Ordering::Relaxed),
                tsc_shift: self.tsc_shift.load(Ordering::Relaxed),
                flags: self.flags.load(Ordering::Relaxed),
            },
        )
    }

    /// Xen system time at TSC value `tsc` (the kernel passes `rdtsc`).
    pub fn system_time_ns(&self, tsc: u64) -> Result<u64, TornRead> {
        Ok(self.snapshot()?.system_time_ns(tsc))
    }
}

/// A point in wall-clock time since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WallClock {
    pub sec: u64,
    pub nsec: u32,
}

impl WallClock {
    /// This wallclock advanced by `ns` nanoseconds.
    pub fn plus_ns(self, ns: u64) -> WallClock {
        let total_nsec = u64::from(self.nsec) + ns % 1_000_000_000;
        WallClock {
            sec: self.sec + ns / 1_000_000_000 + total_nsec / 1_000_000_000,
            nsec: (total_nsec % 1_000_000_000) as u32,
        }
    }
}

impl SharedInfo {
    /// Wall-clock time at Xen system time 0 (boot), consistent per `wc_version`.
    pub fn boot_wallclock(&self) -> Result<WallClock, TornRead> {
        seq_read(
            || self.wc_version.load(Ordering::Acquire),
            || WallClock {
                sec: (u64::from(self.wc_sec_hi.load(Ordering::Relaxed)) << 32)
                    | u64::from(self.wc_sec.load(Ordering::Relaxed)),
                nsec: self.wc_nsec.load(Ordering::Relaxed),
            },
        )
    }

    /// Current wall-clock time given the current Xen system time.
    pub fn wallclock_now(&self, system_time_ns: u64) -> Result<WallClock, TornRead> {
        Ok(self.boot_wallclock()?.plus_ns(system_time_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    #[test]
    fn scaling_matches_known_clocks() {
        // 2 GHz TSC: 0.5 ns per tick = mul 2^31, shift 0.
        assert_eq!(scale_tsc_delta(1000, 0x8000_0000, 0), 500);
        // 1 GHz TSC expressed as mul 2^31, shift 1.
        assert_eq!(scale_tsc_delta(1000, 0x8000_0000, 1), 1000);
        // 4 GHz TSC expressed as mul 2^31, shift -1.
        assert_eq!(scale_tsc_delta(1000, 0x8000_0000, -1), 250);
        // 3 GHz: mul = 2^32 / 3 = 0x55555555; one second of ticks ≈ 1e9 ns.
        let ns = scale_tsc_delta(3_000_000_000, 0x5555_5555, 0);
        assert!((999_999_999..=1_000_000_000).contains(&ns), "{ns}");
    }

    #[test]
    fn large_deltas_do_not_overflow() {
        // An hour at 3 GHz with a left shift still fits through the 128-bit product.
        let ticks = 3_000_000_000u64 * 3600;
        let ns = scale_tsc_delta(ticks << 1, 0x5555_5555, -1);
        assert!(
            (3_599_999_999_000..=3_600_000_000_000).contains(&ns),
            "{ns}"
        );
        assert_eq!(
            scale_tsc_delta(u64::MAX, 0xffff_ffff, 1),
            ((u128::from(u64::MAX) * 0xffff_ffff) >> 32) as u64
        );
    }

    fn time_info(version: u32, tsc: u64, sys: u64, mul: u32, shift: i8, flags: u8) -> VcpuTimeInfo {
        let t = VcpuTimeInfo::default();
        t.version.store(version, Ordering::Relaxed);
        t.tsc_timestamp.store(tsc, Ordering::Relaxed);
        t.system_time.store(sys, Ordering::Relaxed);
        t.tsc_to_system_mul.store(mul, Ordering::Relaxed);
        t.tsc_shift.store(shift, Ordering::Relaxed);
        t.flags.store(flags, Ordering::Relaxed);
        t
    }

    #[test]
    fn system_time_from_snapshot() {
        let t = time_info(2, 10_000, 5_000_000, 0x8000_0000, 0, PVCLOCK_TSC_STABLE);
        assert_eq!(t.system_time_ns(12_000), Ok(5_001_000));
        // TSC behind the timestamp never goes backwards.
        assert_eq!(t.system_time_ns(9_000), Ok(5_000_000));
        let snap = t.snapshot().unwrap();
        assert!(snap.tsc_stable());
        assert_eq!(snap.tsc_hz(), Some(2_000_000_000));
        assert_eq!(
            time_info(0, 0, 0, 0x8000_0000, 1, 0)
                .snapshot()
                .unwrap()
                .tsc_hz(),
            Some(1_000_000_000)
        );
        assert_eq!(
            time_info(0, 0, 0, 0, 0, 0).snapshot().unwrap().tsc_hz(),
            None
        );
    }

    #[test]
    fn system_time_extrapolates_to_an_earlier_tsc() {
        // 2 GHz: 2000 ticks are 1 µs.
        let t = time_info(2, 10_000, 5_000_000, 0x8000_0000, 0, 0);
        let snap = t.snapshot().unwrap();
        assert_eq!(snap.system_time_at(8_000), 4_999_000);
        assert_eq!(snap.system_time_at(12_000), 5_001_000);
        // Before system time 0: saturates rather than wrapping.
        assert_eq!(snap.system_time_at(0), 4_995_000);
        let early = time_info(2, 10_000_000_000, 1_000, 0x8000_0000, 0, 0);
        assert_eq!(early.snapshot().unwrap().system_time_at(0), 0);
    }

    #[test]
    fn a_negative_tsc_stamp_from_tsc_emulation_still_advances() {
        // Measured under Xen 4.17 with TSC emulation: the stamp is -152540712 as u64.
        let stamp = (-152_540_712i64) as u64;
        let t = time_info(2, stamp, 821_565_902, 3_512_652_224, -1, 0);
        let snap = t.snapshot().unwrap();
        let (a, b) = (1_087_056_902u64, 1_740_587_697u64);
        let (ta, tb) = (snap.system_time_ns(a), snap.system_time_ns(b));
        assert!(ta > 821_565_902, "{ta}");
        // 653 M ticks at 2.445 GHz: about 267 ms.
        let elapsed = tb - ta;
        assert!((266_000_000..=268_000_000).contains(&elapsed), "{elapsed}");
        // The entry TSC lies after the stamp too: time since the stamp, not before it.
        assert!(snap.system_time_at(963_240_363) > 821_565_902);
    }

    #[test]
    fn odd_version_never_yields_data() {
        let t = time_info(3, 0, 0, 1, 0, 0);
        assert_eq!(t.snapshot(), Err(TornRead));
    }

    #[test]
    fn changed_version_forces_a_reread() {
        // Versions seen: 4 (before) 6 (after: torn) 6 (before) 6 (after: ok).
        let versions = [4u32, 6, 6, 6];
        let idx = Cell::new(0usize);
        let reads = Cell::new(0u32);
        let out = seq_read(
            || {
                let v = versions[idx.get()];
                idx.set(idx.get() + 1);
                v
            },
            || {
                reads.set(reads.get() + 1);
                reads.get()
            },
        );
        assert_eq!(out, Ok(2));
    }

    #[test]
    fn odd_then_even_version_waits() {
        let versions = [5u32, 6, 6];
        let idx = Cell::new(0usize);
        let out = seq_read(
            || {
                let v = versions[idx.get()];
                idx.set(idx.get() + 1);
                v
            },
            || 42,
        );
        assert_eq!(out, Ok(42));
        assert_eq!(idx.get(), 3);
    }

    #[test]
    fn wallclock_combines_high_seconds_and_system_time() {
        let s = SharedInfo::zeroed();
        s.wc_sec.store(0x0000_0010, Ordering::Relaxed);
        s.wc_sec_hi.store(1, Ordering::Relaxed);
        s.wc_nsec.store(900_000_000, Ordering::Relaxed);
        s.wc_version.store(2, Ordering::Relaxed);
        assert_eq!(
            s.boot_wallclock(),
            Ok(WallClock {
                sec: (1 << 32) | 0x10,
                nsec: 900_000_000
            })
        );
        assert_eq!(
            s.wallclock_now(2_200_000_000),
            Ok(WallClock {
                sec: (1 << 32) | 0x13,
                nsec: 100_000_000
            })
        );
        s.wc_version.store(3, Ordering::Relaxed);
        assert_eq!(s.boot_wallclock(), Err(TornRead));
    }
}
