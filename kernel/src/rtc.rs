//! The CMOS real-time clock: the wall-clock date at boot.
//!
//! Read twice until two readings agree, so an update in the middle of a read cannot give a
//! torn date; converted from BCD and 12-hour form when the RTC uses them. Date validation
//! and the epoch arithmetic live in `keel_xenapi::Timestamp::from_civil` (host-tested).

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

/// Unix milliseconds at kernel entry (0 until [`init`] has read the RTC).
static UNIX_MS_AT_ENTRY: AtomicU64 = AtomicU64::new(0);

/// Reads the RTC once and anchors the wall clock to the monotonic clock.
pub fn init() -> Option<RtcTime> {
    let t = read()?;
    let at =
        keel_xenapi::Timestamp::from_civil(t.year, t.month, t.day, t.hour, t.minute, t.second)?;
    let since_entry_ms = crate::time::since_entry_ns() / 1_000_000;
    UNIX_MS_AT_ENTRY.store(at.unix_ms.saturating_sub(since_entry_ms), Ordering::Relaxed);
    Some(t)
}

/// The wall clock: the RTC reading at boot advanced by the monotonic clock.
pub fn now() -> keel_xenapi::Timestamp {
    let ms = UNIX_MS_AT_ENTRY.load(Ordering::Relaxed) + crate::time::since_entry_ns() / 1_000_000;
    keel_xenapi::Timestamp::from_unix_ms(ms)
}

/// A calendar reading (UTC, as Keel hosts keep the RTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcTime {
    pub year: u64,
    pub month: u64,
    pub day: u64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
}

fn read_register(reg: u8) -> u8 {
    // SAFETY: the CMOS index port; bit 7 of the index (NMI disable) is left clear.
    unsafe { Port::<u8>::new(0x70).write(reg & 0x7f) };
    // SAFETY: the CMOS data port, reading the register just selected.
    unsafe { Port::<u8>::new(0x71).read() }
}

fn raw_reading() -> Option<[u8; 7]> {
    // Wait (boundedly) for no update in progress.
    for _ in 0..100_000 {
        if read_register(0x0a) & 0x80 == 0 {
            return Some([0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(read_register));
        }
    }
    None
}

/// Reads the RTC. `None` when it never settles (absent or broken).
pub fn read() -> Option<RtcTime> {
    let mut previous = raw_reading()?;
    let raw = loop {
        let next = raw_reading()?;
        if next == previous {
            break next;
        }
        previous = next;
    };
    let status_b = read_register(0x0b);
    let binary = status_b & 0x04 != 0;
    let hour_24 = status_b & 0x02 != 0;
    let decode = |v: u8| {
        u64::from(if binary {
            v
        } else {
            (v & 0x0f) + (v >> 4) * 10
        })
    };
    let [second, minute, hour, day, month, year, century] = raw;
    let pm = hour & 0x80 != 0;
    let mut hour = decode(hour & 0x7f);
    if !hour_24 {
        hour %= 12;
        if pm {
            hour += 12;
        }
    }
    // Not every RTC has a century register; values that are not one mean the 2000s.
    let century = match decode(century) {
        19..=99 => decode(century),
        _ => 20,
    };
    Some(RtcTime {
        year: century * 100 + decode(year),
        month: decode(month),
        day: decode(day),
        hour,
        minute: decode(minute),
        second: decode(second),
    })
}
