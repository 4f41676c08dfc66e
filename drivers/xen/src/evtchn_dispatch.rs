//! Routing event-channel ports to handlers.
//!
//! The upcall handler feeds the ports from [`crate::evtchn::scan_pending`] through an
//! [`EventDispatcher`], which maps each port to whatever the kernel registered for it: a
//! waker, a handler id, a driver index. Ports with no binding are counted, not dropped
//! silently, so a missing registration shows up in statistics.

use alloc::vec::Vec;

use crate::evtchn::Port;
use crate::shared_info::EVTCHN_2L_NR_CHANNELS;

/// Why a binding was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The port is beyond the 2-level ABI's 4096 ports.
    OutOfRange(Port),
    /// Another handler is already bound; unbind it first.
    AlreadyBound(Port),
}

/// Counters of one dispatch pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DispatchStats {
    pub delivered: u32,
    /// Ports that fired with nothing bound (e.g. closed just before the event landed).
    pub unbound: u32,
}

/// Port → handler table for the 2-level ABI.
pub struct EventDispatcher<T> {
    handlers: Vec<Option<T>>,
    unbound_total: u64,
}

impl<T> Default for EventDispatcher<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> EventDispatcher<T> {
    pub fn new() -> Self {
        let mut handlers = Vec::with_capacity(EVTCHN_2L_NR_CHANNELS);
        handlers.resize_with(EVTCHN_2L_NR_CHANNELS, || None);
        EventDispatcher {
            handlers,
            unbound_total: 0,
        }
    }

    /// Registers `handler` for `port`.
    pub fn bind(&mut self, port: Port, handler: T) -> Result<(), BindError> {
        let slot = self
            .handlers
            .get_mut(port.0 as usize)
            .ok_or(BindError::OutOfRange(port))?;
        if slot.is_some() {
            return Err(BindError::AlreadyBound(port));
        }
        *slot = Some(handler);
        Ok(())
    }

    /// Removes and returns the handler of `port`.
    pub fn unbind(&mut self, port: Port) -> Option<T> {
        self.handlers
            .get_mut(port.0 as usize)
            .and_then(Option::take)
    }

    /// The handler bound to `port`.
    pub fn handler(&self, port: Port) -> Option<&T> {
        self.handlers.get(port.0 as usize).and_then(Option::as_ref)
    }

    /// Calls `deliver(port, handler)` for every port with a handler.
    pub fn dispatch(
        &mut self,
        ports: impl IntoIterator<Item = Port>,
        mut deliver: impl FnMut(Port, &T),
    ) -> DispatchStats {
        let mut stats = DispatchStats::default();
        for port in ports {
            match self.handlers.get(port.0 as usize).and_then(Option::as_ref) {
                Some(handler) => {
                    deliver(port, handler);
                    stats.delivered += 1;
                }
                None => stats.unbound += 1,
            }
        }
        self.unbound_total += u64::from(stats.unbound);
        stats
    }

    /// Events that arrived on unbound ports since creation.
    pub fn unbound_total(&self) -> u64 {
        self.unbound_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evtchn::{raise_2l, scan_pending};
    use crate::shared_info::SharedInfo;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Driver {
        Xenstore,
        Blkback(u16),
    }

    #[test]
    fn routes_scanned_ports_to_handlers() {
        let s = SharedInfo::zeroed();
        let mut d = EventDispatcher::new();
        d.bind(Port(5), Driver::Xenstore).unwrap();
        d.bind(Port(70), Driver::Blkback(3)).unwrap();
        for p in [70, 5, 6] {
            raise_2l(&s, &s.vcpu_info[0], Port(p)).unwrap();
        }
        let mut got = alloc::vec::Vec::new();
        let stats = d.dispatch(scan_pending(&s, &s.vcpu_info[0]), |port, h| {
            got.push((port.0, *h))
        });
        assert_eq!(got, [(5, Driver::Xenstore), (70, Driver::Blkback(3))]);
        assert_eq!(
            stats,
            DispatchStats {
                delivered: 2,
                unbound: 1
            }
        );
        assert_eq!(d.unbound_total(), 1);
    }

    #[test]
    fn binding_rules() {
        let mut d = EventDispatcher::new();
        d.bind(Port(1), 10u32).unwrap();
        assert_eq!(d.bind(Port(1), 11), Err(BindError::AlreadyBound(Port(1))));
        assert_eq!(
            d.bind(Port(4096), 11),
            Err(BindError::OutOfRange(Port(4096)))
        );
        assert_eq!(d.handler(Port(1)), Some(&10));
        assert_eq!(d.unbind(Port(1)), Some(10));
        assert_eq!(d.unbind(Port(1)), None);
        assert_eq!(d.unbind(Port(9999)), None);
        d.bind(Port(1), 12).unwrap();
    }
}
