//! The forwarding database: which port each MAC was last seen on, per network, with
//! ageing, a per-port and a total bound on learned entries, and pinned entries that
//! learning cannot move.

use alloc::vec::Vec;

use crate::config::{NetworkId, PortId};
use crate::mac::MacAddr;

type Key = (NetworkId, MacAddr);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    port: PortId,
    last_seen_ms: u64,
    /// Set from configuration (a locked VIF's or the local stack's MAC): never aged, never
    /// moved by learning, not counted against the limits.
    pinned: bool,
}

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learned {
    New,
    Refreshed,
    Moved {
        from: PortId,
    },
    RefusedPortLimit,
    /// The table holds its limit, or memory for one more entry could not be had.
    RefusedTableFull,
    /// The address is pinned to another port.
    PinnedElsewhere,
}

/// Memory for the table could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfMemory;

/// Sorted vectors rather than a `BTreeMap`: lookups are a binary search all the same, and
/// growth goes through `try_reserve`, so a guest's frames can never make an allocation
/// failure abort Keel (learning is refused instead). Entries move ports in place; only new
/// addresses and removals shift the vector, and both are bounded by the limits.
#[derive(Debug, Default)]
pub(crate) struct Fdb {
    /// Sorted by key.
    entries: Vec<(Key, Entry)>,
    /// Learned (not pinned) entries in total.
    learned: usize,
    /// Learned entries per registered port, sorted by port.
    ports: Vec<(PortId, usize)>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) ageing_ms: u64,
    pub(crate) max_macs: usize,
    pub(crate) max_macs_per_port: usize,
}

fn expired(entry: &Entry, now_ms: u64, ageing_ms: u64) -> bool {
    !entry.pinned && now_ms.saturating_sub(entry.last_seen_ms) >= ageing_ms
}

impl Fdb {
    fn find(&self, key: Key) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(&key))
    }

    fn count_mut(&mut self, port: PortId) -> Option<&mut usize> {
        let i = self.ports.binary_search_by_key(&port, |(p, _)| *p).ok()?;
        self.ports.get_mut(i).map(|(_, n)| n)
    }

    fn learned_on(&mut self, port: PortId) {
        self.learned += 1;
        if let Some(n) = self.count_mut(port) {
            *n += 1;
        }
    }

    fn unlearned_on(&mut self, port: PortId) {
        self.learned -= 1;
        if let Some(n) = self.count_mut(port) {
            *n -= 1;
        }
    }

    /// Makes room for a port's count; learning on a port not registered is refused.
    pub(crate) fn register_port(&mut self, port: PortId) -> Result<(), OutOfMemory> {
        if let Err(i) = self.ports.binary_search_by_key(&port, |(p, _)| *p) {
            self.ports.try_reserve(1).map_err(|_| OutOfMemory)?;
            self.ports.insert(i, (port, 0));
        }
        Ok(())
    }

    /// Forgets the port's entries and its count.
    pub(crate) fn unregister_port(&mut self, port: PortId) {
        self.forget_port(port);
        if let Ok(i) = self.ports.binary_search_by_key(&port, |(p, _)| *p) {
            self.ports.remove(i);
        }
    }

    /// Reserves room for `additional` more entries, so a following [`Fdb::pin`] cannot
    /// fail for memory.
    pub(crate) fn reserve(&mut self, additional: usize) -> Result<(), OutOfMemory> {
        self.entries
            .try_reserve(additional)
            .map_err(|_| OutOfMemory)
    }

    /// The port `mac` is on in `network`, unless it was never seen or has aged out.
    pub(crate) fn lookup(
        &self,
        network: NetworkId,
        mac: MacAddr,
        now_ms: u64,
        ageing_ms: u64,
    ) -> Option<PortId> {
        let (_, entry) = self.entries.get(self.find((network, mac)).ok()?)?;
        (!expired(entry, now_ms, ageing_ms)).then_some(entry.port)
    }

    /// The port `mac` is pinned to in `network`, if it is pinned.
    pub(crate) fn pinned_port(&self, network: NetworkId, mac: MacAddr) -> Option<PortId> {
        let (_, entry) = self.entries.get(self.find((network, mac)).ok()?)?;
        entry.pinned.then_some(entry.port)
    }

    pub(crate) fn learn(
        &mut self,
        network: NetworkId,
        mac: MacAddr,
        port: PortId,
        now_ms: u64,
        limits: Limits,
    ) -> Learned {
        let room_on_port = |fdb: &mut Fdb| {
            fdb.count_mut(port)
                .is_some_and(|n| *n < limits.max_macs_per_port)
        };
        match self.find((network, mac)) {
            Ok(i) => {
                let entry = self.entries[i].1;
                if entry.pinned {
                    return if entry.port == port {
                        Learned::Refreshed
                    } else {
                        Learned::PinnedElsewhere
                    };
                }
                let live = !expired(&entry, now_ms, limits.ageing_ms);
                if live && entry.port == port {
                    self.entries[i].1.last_seen_ms = now_ms;
                    return Learned::Refreshed;
                }
                // Aged or moving: the old entry goes either way; if the new port may not
                // hold the address, frames to it are flooded until it is learned again.
                self.unlearned_on(entry.port);
                if !room_on_port(self) {
                    self.entries.remove(i);
                    return Learned::RefusedPortLimit;
                }
                self.entries[i].1 = Entry {
                    port,
                    last_seen_ms: now_ms,
                    pinned: false,
                };
                self.learned_on(port);
                if live {
                    Learned::Moved { from: entry.port }
                } else {
                    Learned::New
                }
            }
            Err(i) => {
                if !room_on_port(self) {
                    return Learned::RefusedPortLimit;
                }
                if self.learned >= limits.max_macs || self.entries.try_reserve(1).is_err() {
                    return Learned::RefusedTableFull;
                }
                self.entries.insert(
                    i,
                    (
                        (network, mac),
                        Entry {
                            port,
                            last_seen_ms: now_ms,
                            pinned: false,
                        },
                    ),
                );
                self.learned_on(port);
                Learned::New
            }
        }
    }

    /// Pins `mac` to `port`, replacing a learned entry. Fails with the holder when another
    /// port has it pinned; `Ok(Err(OutOfMemory))` never happens after [`Fdb::reserve`].
    pub(crate) fn pin(
        &mut self,
        network: NetworkId,
        mac: MacAddr,
        port: PortId,
    ) -> Result<Result<(), OutOfMemory>, PortId> {
        let pinned = Entry {
            port,
            last_seen_ms: 0,
            pinned: true,
        };
        match self.find((network, mac)) {
            Ok(i) => {
                let entry = self.entries[i].1;
                if entry.pinned {
                    return if entry.port == port {
                        Ok(Ok(()))
                    } else {
                        Err(entry.port)
                    };
                }
                self.unlearned_on(entry.port);
                self.entries[i].1 = pinned;
                Ok(Ok(()))
            }
            Err(i) => {
                if self.entries.try_reserve(1).is_err() {
                    return Ok(Err(OutOfMemory));
                }
                self.entries.insert(i, ((network, mac), pinned));
                Ok(Ok(()))
            }
        }
    }

    /// Drops every entry, learned or pinned, that points at `port`.
    pub(crate) fn forget_port(&mut self, port: PortId) {
        self.forget(|_, p| p == port);
    }

    /// Drops every entry, learned or pinned, for which `matches(network, port)` holds.
    pub(crate) fn forget(&mut self, matches: impl Fn(NetworkId, PortId) -> bool) {
        self.remove_where(|(network, _), e| matches(*network, e.port));
    }

    /// Drops learned entries not seen for `ageing_ms`; returns how many.
    pub(crate) fn age(&mut self, now_ms: u64, ageing_ms: u64) -> usize {
        self.remove_where(|_, e| expired(e, now_ms, ageing_ms))
    }

    fn remove_where(&mut self, mut remove: impl FnMut(&Key, &Entry) -> bool) -> usize {
        let Fdb {
            entries,
            learned,
            ports,
        } = self;
        let before = entries.len();
        entries.retain(|(key, e)| {
            if !remove(key, e) {
                return true;
            }
            if !e.pinned {
                *learned -= 1;
                if let Ok(i) = ports.binary_search_by_key(&e.port, |(p, _)| *p) {
                    ports[i].1 -= 1;
                }
            }
            false
        });
        before - entries.len()
    }

    /// Learned (not pinned) entries, aged ones included until [`Fdb::age`] runs.
    pub(crate) fn learned(&self) -> usize {
        self.learned
    }

    #[cfg(test)]
    pub(crate) fn port_count(&self, port: PortId) -> usize {
        self.ports
            .binary_search_by_key(&port, |(p, _)| *p)
            .map_or(0, |i| self.ports[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: NetworkId = NetworkId(1);
    const OTHER_NET: NetworkId = NetworkId(2);
    const P1: PortId = PortId(1);
    const P2: PortId = PortId(2);
    const LIMITS: Limits = Limits {
        ageing_ms: 300_000,
        max_macs: 4,
        max_macs_per_port: 3,
    };

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn fdb() -> Fdb {
        let mut fdb = Fdb::default();
        fdb.register_port(P2).unwrap();
        fdb.register_port(P1).unwrap();
        fdb
    }

    #[test]
    fn learn_lookup_refresh_and_age() {
        let mut fdb = fdb();
        assert_eq!(fdb.learn(NET, mac(1), P1, 0, LIMITS), Learned::New);
        assert_eq!(fdb.lookup(NET, mac(1), 1, LIMITS.ageing_ms), Some(P1));
        // Per network: the same MAC on another network is unknown.
        assert_eq!(fdb.lookup(OTHER_NET, mac(1), 1, LIMITS.ageing_ms), None);
        assert_eq!(
            fdb.learn(NET, mac(1), P1, 200_000, LIMITS),
            Learned::Refreshed
        );
        // Refreshed at 200 s: still there at 499.999 s, gone at 500 s even before age().
        assert_eq!(fdb.lookup(NET, mac(1), 499_999, LIMITS.ageing_ms), Some(P1));
        assert_eq!(fdb.lookup(NET, mac(1), 500_000, LIMITS.ageing_ms), None);
        assert_eq!(fdb.age(499_999, LIMITS.ageing_ms), 0);
        assert_eq!(fdb.age(500_000, LIMITS.ageing_ms), 1);
        assert_eq!((fdb.learned(), fdb.port_count(P1)), (0, 0));
    }

    #[test]
    fn moves_follow_the_address() {
        let mut fdb = fdb();
        fdb.learn(NET, mac(1), P1, 0, LIMITS);
        assert_eq!(
            fdb.learn(NET, mac(1), P2, 5, LIMITS),
            Learned::Moved { from: P1 }
        );
        assert_eq!(fdb.lookup(NET, mac(1), 6, LIMITS.ageing_ms), Some(P2));
        assert_eq!(
            (fdb.port_count(P1), fdb.port_count(P2), fdb.learned()),
            (0, 1, 1)
        );
    }

    #[test]
    fn per_port_and_total_limits() {
        let mut fdb = fdb();
        for n in 0..3 {
            assert_eq!(fdb.learn(NET, mac(n), P1, 0, LIMITS), Learned::New);
        }
        assert_eq!(
            fdb.learn(NET, mac(3), P1, 0, LIMITS),
            Learned::RefusedPortLimit
        );
        assert_eq!(fdb.learn(NET, mac(4), P2, 0, LIMITS), Learned::New);
        assert_eq!(
            fdb.learn(NET, mac(5), P2, 0, LIMITS),
            Learned::RefusedTableFull
        );
        // A move onto a full port drops the old entry instead of leaving it stale.
        fdb.learn(OTHER_NET, mac(9), P2, 0, LIMITS);
        assert_eq!(
            fdb.learn(NET, mac(4), P1, 1, LIMITS),
            Learned::RefusedPortLimit
        );
        assert_eq!(fdb.lookup(NET, mac(4), 1, LIMITS.ageing_ms), None);
        // Forgetting a port frees its share.
        fdb.forget_port(P1);
        assert_eq!((fdb.port_count(P1), fdb.learned()), (0, 0));
        assert_eq!(fdb.learn(NET, mac(5), P2, 2, LIMITS), Learned::New);
    }

    #[test]
    fn unregistered_ports_learn_nothing_and_entries_stay_sorted() {
        let mut fdb = fdb();
        assert_eq!(
            fdb.learn(NET, mac(1), PortId(9), 0, LIMITS),
            Learned::RefusedPortLimit
        );
        for n in [5, 1, 3] {
            fdb.learn(NET, mac(n), P1, 0, LIMITS);
        }
        fdb.learn(OTHER_NET, mac(2), P2, 0, LIMITS);
        assert!(fdb.entries.windows(2).all(|w| w[0].0 < w[1].0));
        // An aged entry is taken over in place by the port that sends next.
        assert_eq!(fdb.learn(NET, mac(3), P2, 300_000, LIMITS), Learned::New);
        assert_eq!(
            (fdb.port_count(P1), fdb.port_count(P2), fdb.learned()),
            (2, 2, 4)
        );
        fdb.unregister_port(P1);
        assert_eq!((fdb.port_count(P1), fdb.learned()), (0, 2));
        assert_eq!(fdb.lookup(NET, mac(5), 1, LIMITS.ageing_ms), None);
        assert_eq!(
            fdb.learn(NET, mac(5), P1, 1, LIMITS),
            Learned::RefusedPortLimit
        );
    }

    #[test]
    fn pinned_entries_do_not_move_or_age() {
        let mut fdb = fdb();
        fdb.learn(NET, mac(1), P2, 0, LIMITS);
        fdb.pin(NET, mac(1), P1).unwrap().unwrap();
        assert_eq!(fdb.learned(), 0);
        assert_eq!(fdb.pin(NET, mac(1), P2), Err(P1));
        assert_eq!(fdb.pin(NET, mac(1), P1), Ok(Ok(())));
        assert_eq!(
            fdb.learn(NET, mac(1), P2, 1, LIMITS),
            Learned::PinnedElsewhere
        );
        assert_eq!(fdb.learn(NET, mac(1), P1, 1, LIMITS), Learned::Refreshed);
        assert_eq!(fdb.age(10_000_000, LIMITS.ageing_ms), 0);
        assert_eq!(
            fdb.lookup(NET, mac(1), 10_000_000, LIMITS.ageing_ms),
            Some(P1)
        );
        assert_eq!(fdb.pinned_port(NET, mac(1)), Some(P1));
        fdb.forget_port(P1);
        assert_eq!(fdb.pinned_port(NET, mac(1)), None);
    }
}
