//! A pool of TCP sockets listening on one port.
//!
//! smoltcp has no accept queue: a listening socket *becomes* the connection, and a SYN that
//! finds no listening socket is answered with a reset. The pool keeps `backlog` sockets
//! listening and opens a replacement for each one a client connects to. Driven between
//! single frames ([`crate::NetStack::poll_with`] calls [`TcpListener::accept`] before each
//! received frame), even a small backlog takes any burst of SYNs: every SYN finds a fresh
//! listening socket, as long as the pool is below `max_connections` and the
//! [`MemoryBudget`] can pay for the socket's buffers.
//!
//! Beyond either bound no socket listens, so a new client's SYN is answered with a reset —
//! a clean "connection refused" — while every connection already accepted keeps being
//! served. Sockets are made on demand and their buffers are charged to the budget, so
//! memory follows the number of connections actually open
//! ([`TcpListener::connection_bytes`] each).

use core::mem::size_of;

use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Duration;

use crate::budget::MemoryBudget;

/// Shape of a listener pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerConfig {
    pub port: u16,
    /// Sockets kept listening; refilled before every received frame, so this bounds only
    /// the SYNs of one frame batch that the caller does not interleave with refills.
    pub backlog: usize,
    /// Most sockets in all (listening and connected).
    pub max_connections: usize,
    /// Receive buffer of each socket: the largest TCP window it advertises.
    pub rx_buffer_bytes: usize,
    /// Send buffer of each socket.
    pub tx_buffer_bytes: usize,
    /// A peer that acknowledges nothing for this long (SYN-ACK or data outstanding) is
    /// dropped, so half-open connections do not hold memory forever.
    pub peer_timeout_ms: u64,
}

/// Listening sockets on one port.
pub struct TcpListener {
    config: ListenerConfig,
    listening: Vec<SocketHandle>,
    connections: usize,
}

impl TcpListener {
    /// Opens the first `backlog` listening sockets (as many as `budget` allows).
    pub fn new(
        sockets: &mut SocketSet<'static>,
        config: ListenerConfig,
        budget: &mut MemoryBudget,
    ) -> Self {
        let mut l = TcpListener {
            config: ListenerConfig {
                backlog: config.backlog.max(1),
                max_connections: config.max_connections.max(1),
                ..config
            },
            listening: Vec::new(),
            connections: 0,
        };
        l.refill(sockets, budget);
        l
    }

    pub fn port(&self) -> u16 {
        self.config.port
    }

    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// Connections handed out and not yet released.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Sockets currently listening.
    pub fn listening(&self) -> usize {
        self.listening.len()
    }

    /// Memory one socket of this pool holds while it exists: its two buffers and its slot in
    /// the socket set. This is what an idle connection costs at the TCP layer.
    pub fn connection_bytes(&self) -> usize {
        socket_bytes(&self.config)
    }

    /// Returns a socket a client has connected to, if any, and refills the pool.
    pub fn accept(
        &mut self,
        sockets: &mut SocketSet<'static>,
        budget: &mut MemoryBudget,
    ) -> Option<SocketHandle> {
        let pos = self
            .listening
            .iter()
            .position(|&h| !matches!(sockets.get::<tcp::Socket>(h).state(), tcp::State::Listen));
        let Some(pos) = pos else {
            // Nothing connected; a pool emptied by an earlier shortage fills up again here.
            self.refill(sockets, budget);
            return None;
        };
        let handle = self.listening.swap_remove(pos);
        self.connections += 1;
        self.refill(sockets, budget);
        Some(handle)
    }

    /// Removes a connection's socket (after it is closed or aborted), returns its memory to
    /// `budget` and refills the pool.
    pub fn release(
        &mut self,
        sockets: &mut SocketSet<'static>,
        handle: SocketHandle,
        budget: &mut MemoryBudget,
    ) {
        sockets.remove(handle);
        budget.release(self.connection_bytes());
        self.connections = self.connections.saturating_sub(1);
        self.refill(sockets, budget);
    }

    fn refill(&mut self, sockets: &mut SocketSet<'static>, budget: &mut MemoryBudget) {
        while self.listening.len() < self.config.backlog
            && self.listening.len() + self.connections < self.config.max_connections
        {
            match self.open(budget) {
                Some(socket) => self.listening.push(sockets.add(socket)),
                None => return,
            }
        }
    }

    /// A new listening socket with buffers charged to `budget`, or `None` when it cannot pay.
    fn open(&self, budget: &mut MemoryBudget) -> Option<tcp::Socket<'static>> {
        let overhead =
            socket_bytes(&self.config) - self.config.rx_buffer_bytes - self.config.tx_buffer_bytes;
        budget.reserve(overhead).ok()?;
        let Ok(rx) = budget.zeroed(self.config.rx_buffer_bytes) else {
            budget.release(overhead);
            return None;
        };
        let Ok(tx) = budget.zeroed(self.config.tx_buffer_bytes) else {
            budget.release(overhead + rx.len());
            return None;
        };
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        // Request/response servers answer whole messages: Nagle would hold the last
        // segment of an answer until the client's (possibly delayed) ACK.
        socket.set_nagle_enabled(false);
        socket.set_timeout(Some(Duration::from_millis(self.config.peer_timeout_ms)));
        // Listening on a non-zero port of a fresh socket cannot fail.
        if socket.listen(self.config.port).is_err() {
            log::error!("net: cannot listen on port {}", self.config.port);
            budget.release(socket_bytes(&self.config));
            return None;
        }
        Some(socket)
    }
}

/// Buffers plus the socket's slot in the set.
fn socket_bytes(config: &ListenerConfig) -> usize {
    config.rx_buffer_bytes + config.tx_buffer_bytes + size_of::<SocketStorage<'static>>()
}
