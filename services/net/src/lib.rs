//! Keel's TCP/IP stack: a smoltcp interface over any [`NetDevice`].
//!
//! [`NetStack`] owns the device adapter, the smoltcp interface and its sockets. It gets its
//! IPv4 address from DHCP (the default) or from static configuration, answers ARP and ICMP
//! echo, and hosts TCP listener pools ([`TcpListener`]) for servers such as the management
//! API. It is driven by calls to [`NetStack::poll`] with the current time; it never blocks
//! and never spins, so the kernel decides how to pace it (see docs/architecture.md).

#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod budget;
mod device;
mod idle_poll;
mod listener;

use core::net::Ipv4Addr;

pub use budget::{try_zeroed, BudgetError, MemoryBudget};
pub use device::DeviceAdapter;
pub use idle_poll::IdlePoll;
pub use keel_netdev::{Counters, NetDevice};
pub use listener::{ListenerConfig, TcpListener};
pub use smoltcp;
use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};

/// How the interface gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Dhcp,
    Static {
        address: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    },
}

/// The interface's current IPv4 configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Config {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// What changed during a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetEvent {
    /// An address was configured (from DHCP or statically).
    Configured(Ipv4Config),
    /// The DHCP lease was lost; the interface has no address.
    Deconfigured,
}

/// A smoltcp interface with its sockets.
pub struct NetStack<D: NetDevice> {
    device: DeviceAdapter<D>,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    config: Option<Ipv4Config>,
    pending_event: Option<NetEvent>,
}

impl<D: NetDevice> NetStack<D> {
    /// Creates the interface. `seed` randomises TCP sequence numbers and ports; pass
    /// something that differs per boot (the TSC).
    pub fn new(device: D, addressing: Addressing, now_ms: u64, seed: u64) -> Self {
        let mac = EthernetAddress(device.mac_address());
        let mut device = DeviceAdapter::new(device);
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = seed;
        let iface = Interface::new(config, &mut device, instant(now_ms));
        let mut stack = NetStack {
            device,
            iface,
            sockets: SocketSet::new(alloc::vec::Vec::new()),
            dhcp: None,
            config: None,
            pending_event: None,
        };
        match addressing {
            Addressing::Dhcp => {
                stack.dhcp = Some(stack.sockets.add(dhcpv4::Socket::new()));
            }
            Addressing::Static {
                address,
                prefix_len,
                gateway,
            } => {
                stack.apply(Some(Ipv4Config {
                    address,
                    prefix_len,
                    gateway,
                }));
            }
        }
        stack
    }

    /// Moves frames and runs protocol timers. Returns true when anything happened, in which
    /// case the caller should poll again soon. A stack with a [`TcpListener`] on it must be
    /// polled with [`NetStack::poll_with`] instead, every time, or SYNs beyond the listening
    /// sockets of the moment are reset.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        self.poll_with(now_ms, |_| {})
    }

    /// [`NetStack::poll`] that calls `before_frame` with the sockets before each received
    /// frame is processed. A server refills its listening sockets there
    /// ([`TcpListener::accept`]), which gives smoltcp's listener pool the SYN queue it lacks:
    /// every SYN of a burst finds a listening socket, not only the first `backlog`.
    pub fn poll_with(
        &mut self,
        now_ms: u64,
        mut before_frame: impl FnMut(&mut SocketSet<'static>),
    ) -> bool {
        let now = instant(now_ms);
        let mut activity = false;
        self.iface.poll_maintenance(now);
        loop {
            before_frame(&mut self.sockets);
            match self
                .iface
                .poll_ingress_single(now, &mut self.device, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed
                | PollIngressSingleResult::SocketStateChanged => activity = true,
            }
        }
        while self
            .iface
            .poll_egress(now, &mut self.device, &mut self.sockets)
            != PollResult::None
        {
            activity = true;
        }
        if let Some(handle) = self.dhcp {
            // The event borrows the socket: copy out what we keep before reconfiguring.
            let change = match self.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
                Some(dhcpv4::Event::Configured(lease)) => Some(Some(Ipv4Config {
                    address: lease.address.address(),
                    prefix_len: lease.address.prefix_len(),
                    gateway: lease.router,
                })),
                Some(dhcpv4::Event::Deconfigured) => Some(None),
                None => None,
            };
            if let Some(config) = change {
                self.apply(config);
            }
        }
        activity
    }

    /// How long until the stack needs polling even without new frames (TCP timers, DHCP).
    pub fn poll_delay_ms(&mut self, now_ms: u64) -> Option<u64> {
        self.iface
            .poll_delay(instant(now_ms), &self.sockets)
            .map(|d| d.total_millis())
    }

    /// The event of the last configuration change, once.
    pub fn take_event(&mut self) -> Option<NetEvent> {
        self.pending_event.take()
    }

    pub fn ipv4(&self) -> Option<Ipv4Config> {
        self.config
    }

    pub fn mac_address(&self) -> [u8; 6] {
        self.device.inner().mac_address()
    }

    pub fn counters(&self) -> Counters {
        self.device.inner().counters()
    }

    /// The interface context, for opening client connections (tests, outbound services).
    pub fn iface_context(&mut self) -> &mut smoltcp::iface::Context {
        self.iface.context()
    }

    /// The socket set, for servers built on this stack.
    pub fn sockets(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    fn apply(&mut self, config: Option<Ipv4Config>) {
        if config == self.config {
            // smoltcp reports "deconfigured" when DHCP starts, and renewals repeat the lease.
            return;
        }
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Some(c) = config {
                // Cannot fail: the list was just cleared and holds at least one address.
                let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(c.address, c.prefix_len)));
            }
        });
        self.iface.routes_mut().remove_default_ipv4_route();
        if let Some(gw) = config.and_then(|c| c.gateway) {
            // Only fails when the route table is full, and we just removed the one route.
            let _ = self.iface.routes_mut().add_default_ipv4_route(gw);
        }
        self.config = config;
        self.pending_event = Some(match config {
            Some(c) => NetEvent::Configured(c),
            None => NetEvent::Deconfigured,
        });
    }
}

fn instant(ms: u64) -> Instant {
    Instant::from_millis(ms as i64)
}

#[cfg(test)]
mod tests;
