//! The management server: Keel's face to XenAPI clients.
//!
//! [`ManagementServer`] accepts TCP connections from a listener pool on the management
//! stack, runs one [`keel_http::Connection`] per socket, and routes requests:
//!
//! | request | handled by |
//! |---|---|
//! | `POST /`, `POST /RPC2` (XML-RPC), `POST /jsonrpc` (JSON-RPC) | [`keel_xenapi::XenApi`] |
//! | `GET /` | a one-line text page naming the service |
//! | anything else | `404` (wrong method on an API path: `405`) |
//!
//! Calls that wait (`event.from`, `event.next`, a synchronous call on a running task) are
//! parked on their connection and polled again when the event id moves or their deadline
//! passes, so one waiting client never blocks another.
//!
//! Like the rest of the stack it is driven by [`ManagementServer::poll`] with the time; it
//! never blocks.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod connection;

use alloc::vec::Vec;

use connection::Conn;
use keel_http::Limits;
use keel_net::smoltcp::iface::SocketSet;
use keel_net::TcpListener;
use keel_xenapi::{Timestamp, XenApi};

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub port: u16,
    /// Sockets kept listening for new connections.
    pub backlog: usize,
    /// Most simultaneous connections (listening sockets included).
    pub max_connections: usize,
    /// Receive and send buffer of each TCP socket.
    pub socket_buffer_bytes: usize,
    pub http: Limits,
    /// Largest XML-RPC or JSON-RPC request body.
    pub max_api_body_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port: 80,
            // smoltcp has no SYN queue: a SYN finds a listening socket or gets a reset, so
            // the backlog is the largest burst of simultaneous connects that all succeed.
            backlog: 64,
            max_connections: 128,
            socket_buffer_bytes: 32 * 1024,
            http: Limits::default(),
            max_api_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Counters for the console and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub connections_accepted: u64,
    pub requests: u64,
    pub api_calls: u64,
}

/// The management server.
pub struct ManagementServer {
    listener: TcpListener,
    conns: Vec<Conn>,
    api: XenApi,
    config: ServerConfig,
    stats: ServerStats,
}

impl ManagementServer {
    /// Starts listening on `config.port` of the stack owning `sockets`.
    pub fn new(sockets: &mut SocketSet<'static>, api: XenApi, config: ServerConfig) -> Self {
        let listener = TcpListener::new(
            sockets,
            config.port,
            config.backlog,
            config.max_connections,
            config.socket_buffer_bytes,
        );
        ManagementServer {
            listener,
            conns: Vec::new(),
            api,
            config,
            stats: ServerStats::default(),
        }
    }

    pub fn api(&mut self) -> &mut XenApi {
        &mut self.api
    }

    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accepts new connections and services every open one: input, requests, parked calls,
    /// output, timeouts and closing. `mono_ms` is monotonic time (HTTP timeouts), `now` the
    /// wall clock (the XenAPI's timestamps). Returns true when anything happened.
    pub fn poll(&mut self, sockets: &mut SocketSet<'static>, mono_ms: u64, now: Timestamp) -> bool {
        let mut activity = false;
        while let Some(handle) = self.listener.accept(sockets) {
            self.conns.push(Conn::new(handle, self.config.http));
            self.stats.connections_accepted += 1;
            activity = true;
        }
        if self.api.has_running_tasks() {
            self.api.run_tasks(now);
        }
        let mut i = 0;
        while i < self.conns.len() {
            let conn = &mut self.conns[i];
            activity |= conn.service(
                sockets,
                &mut self.api,
                &self.config,
                &mut self.stats,
                mono_ms,
                now,
            );
            if conn.is_finished(sockets) {
                let mut conn = self.conns.swap_remove(i);
                conn.abandon(&mut self.api, now);
                self.listener.release(sockets, conn.socket());
                activity = true;
            } else {
                i += 1;
            }
        }
        activity
    }

    /// The earliest monotonic time at which [`ManagementServer::poll`] has timer work to do
    /// (HTTP timeouts); parked calls with a wall-clock deadline report it via `wall_wake`.
    pub fn next_wake(&mut self, mono_ms: u64, now: Timestamp) -> Option<u64> {
        let mut next: Option<u64> = None;
        for conn in &mut self.conns {
            for t in [
                conn.http_deadline(mono_ms),
                conn.wall_wake(now).map(|ms| mono_ms + ms),
            ]
            .into_iter()
            .flatten()
            {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        if self.api.has_running_tasks() {
            next = Some(mono_ms);
        }
        next
    }
}

#[cfg(test)]
mod tests;
