//! A pool of TCP sockets listening on one port.
//!
//! smoltcp has no accept queue: a listening socket *becomes* the connection. The pool keeps
//! `backlog` sockets in the listening state, hands out each one that a client connected to,
//! and opens a replacement, up to `max_connections` sockets in all. Closed connections are
//! removed by [`TcpListener::release`].

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

/// Listening sockets on one port.
pub struct TcpListener {
    port: u16,
    backlog: usize,
    max_connections: usize,
    buffer_size: usize,
    listening: Vec<SocketHandle>,
    connections: usize,
}

impl TcpListener {
    /// Opens `backlog` listening sockets with `buffer_size`-byte receive and send buffers.
    pub fn new(
        sockets: &mut SocketSet<'static>,
        port: u16,
        backlog: usize,
        max_connections: usize,
        buffer_size: usize,
    ) -> Self {
        let mut l = TcpListener {
            port,
            backlog: backlog.max(1),
            max_connections: max_connections.max(1),
            buffer_size,
            listening: Vec::new(),
            connections: 0,
        };
        l.refill(sockets);
        l
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections handed out and not yet released.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Returns a socket a client has connected to, if any, and refills the pool.
    pub fn accept(&mut self, sockets: &mut SocketSet<'static>) -> Option<SocketHandle> {
        let pos = self
            .listening
            .iter()
            .position(|&h| !matches!(sockets.get::<tcp::Socket>(h).state(), tcp::State::Listen))?;
        let handle = self.listening.swap_remove(pos);
        self.connections += 1;
        self.refill(sockets);
        Some(handle)
    }

    /// Removes a connection's socket (after it is closed or aborted) and refills the pool.
    pub fn release(&mut self, sockets: &mut SocketSet<'static>, handle: SocketHandle) {
        sockets.remove(handle);
        self.connections = self.connections.saturating_sub(1);
        self.refill(sockets);
    }

    fn refill(&mut self, sockets: &mut SocketSet<'static>) {
        while self.listening.len() < self.backlog
            && self.listening.len() + self.connections < self.max_connections
        {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; self.buffer_size]),
                tcp::SocketBuffer::new(vec![0; self.buffer_size]),
            );
            // Request/response servers answer whole messages: Nagle would hold the last
            // segment of an answer until the client's (possibly delayed) ACK.
            socket.set_nagle_enabled(false);
            // Listening on a non-zero port of a fresh socket cannot fail.
            if socket.listen(self.port).is_err() {
                log::error!("net: cannot listen on port {}", self.port);
                return;
            }
            self.listening.push(sockets.add(socket));
        }
    }
}
