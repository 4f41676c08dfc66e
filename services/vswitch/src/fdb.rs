//! The forwarding database: which port each MAC was last seen on, per network, with
//! ageing, a per-port and a total bound on learned entries, and pinned entries that
//! learning cannot move.

use alloc::collections::BTreeMap;

use crate::config::{NetworkId, PortId};
use crate::mac::MacAddr;

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
    RefusedTableFull,
    /// The address is pinned to another port.
    PinnedElsewhere,
}

#[derive(Debug, Default)]
pub(crate) struct Fdb {
    entries: BTreeMap<(NetworkId, MacAddr), Entry>,
    /// Learned (not pinned) entries in total and per port.
    learned: usize,
    learned_per_port: BTreeMap<PortId, usize>,
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
    /// The port `mac` is on in `network`, unless it was never seen or has aged out.
    pub(crate) fn lookup(
        &self,
        network: NetworkId,
        mac: MacAddr,
        now_ms: u64,
        ageing_ms: u64,
    ) -> Option<PortId> {
        let entry = self.entries.get(&(network, mac))?;
        (!expired(entry, now_ms, ageing_ms)).then_some(entry.port)
    }

    /// The port `mac` is pinned to in `network`, if it is pinned.
    pub(crate) fn pinned_port(&self, network: NetworkId, mac: MacAddr) -> Option<PortId> {
        self.entries
            .get(&(network, mac))
            .filter(|e| e.pinned)
            .map(|e| e.port)
    }

    pub(crate) fn learn(
        &mut self,
        network: NetworkId,
        mac: MacAddr,
        port: PortId,
        now_ms: u64,
        limits: Limits,
    ) -> Learned {
        let key = (network, mac);
        let mut moved_from = None;
        if let Some(entry) = self.entries.get(&key).copied() {
            if entry.pinned {
                return if entry.port == port {
                    Learned::Refreshed
                } else {
                    Learned::PinnedElsewhere
                };
            }
            if !expired(&entry, now_ms, limits.ageing_ms) {
                if entry.port == port {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.last_seen_ms = now_ms;
                    }
                    return Learned::Refreshed;
                }
                moved_from = Some(entry.port);
            }
            // Aged or moving: the old entry goes either way; if the new port may not
            // hold the address, frames to it are flooded until it is learned again.
            self.remove_learned(key, entry.port);
        }
        if self.port_count(port) >= limits.max_macs_per_port {
            return Learned::RefusedPortLimit;
        }
        if self.learned >= limits.max_macs {
            return Learned::RefusedTableFull;
        }
        self.entries.insert(
            key,
            Entry {
                port,
                last_seen_ms: now_ms,
                pinned: false,
            },
        );
        self.learned += 1;
        *self.learned_per_port.entry(port).or_insert(0) += 1;
        match moved_from {
            Some(from) => Learned::Moved { from },
            None => Learned::New,
        }
    }

    /// Pins `mac` to `port`, replacing a learned entry. Fails with the holder when another
    /// port has it pinned.
    pub(crate) fn pin(
        &mut self,
        network: NetworkId,
        mac: MacAddr,
        port: PortId,
    ) -> Result<(), PortId> {
        let key = (network, mac);
        if let Some(entry) = self.entries.get(&key).copied() {
            if entry.pinned {
                return if entry.port == port {
                    Ok(())
                } else {
                    Err(entry.port)
                };
            }
            self.remove_learned(key, entry.port);
        }
        self.entries.insert(
            key,
            Entry {
                port,
                last_seen_ms: 0,
                pinned: true,
            },
        );
        Ok(())
    }

    /// Drops every entry, learned or pinned, that points at `port`.
    pub(crate) fn forget_port(&mut self, port: PortId) {
        self.forget(|_, p| p == port);
    }

    /// Drops every entry, learned or pinned, for which `matches(network, port)` holds.
    pub(crate) fn forget(&mut self, matches: impl Fn(NetworkId, PortId) -> bool) {
        let Fdb {
            entries,
            learned,
            learned_per_port,
        } = self;
        entries.retain(|(network, _), e| {
            if !matches(*network, e.port) {
                return true;
            }
            if !e.pinned {
                *learned -= 1;
                if let Some(n) = learned_per_port.get_mut(&e.port) {
                    *n -= 1;
                }
            }
            false
        });
        learned_per_port.retain(|_, n| *n > 0);
    }

    /// Drops learned entries not seen for `ageing_ms`; returns how many.
    pub(crate) fn age(&mut self, now_ms: u64, ageing_ms: u64) -> usize {
        let before = self.entries.len();
        let learned_per_port = &mut self.learned_per_port;
        self.entries.retain(|_, e| {
            let keep = !expired(e, now_ms, ageing_ms);
            if !keep {
                if let Some(n) = learned_per_port.get_mut(&e.port) {
                    *n -= 1;
                }
            }
            keep
        });
        self.learned_per_port.retain(|_, n| *n > 0);
        let removed = before - self.entries.len();
        self.learned -= removed;
        removed
    }

    /// Learned (not pinned) entries, aged ones included until [`Fdb::age`] runs.
    pub(crate) fn learned(&self) -> usize {
        self.learned
    }

    pub(crate) fn port_count(&self, port: PortId) -> usize {
        self.learned_per_port.get(&port).copied().unwrap_or(0)
    }

    fn remove_learned(&mut self, key: (NetworkId, MacAddr), port: PortId) {
        if self.entries.remove(&key).is_some() {
            self.learned -= 1;
            if let Some(n) = self.learned_per_port.get_mut(&port) {
                *n -= 1;
                if *n == 0 {
                    self.learned_per_port.remove(&port);
                }
            }
        }
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

    #[test]
    fn learn_lookup_refresh_and_age() {
        let mut fdb = Fdb::default();
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
        let mut fdb = Fdb::default();
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
        let mut fdb = Fdb::default();
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
    fn pinned_entries_do_not_move_or_age() {
        let mut fdb = Fdb::default();
        fdb.learn(NET, mac(1), P2, 0, LIMITS);
        fdb.pin(NET, mac(1), P1).unwrap();
        assert_eq!(fdb.learned(), 0);
        assert_eq!(fdb.pin(NET, mac(1), P2), Err(P1));
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
