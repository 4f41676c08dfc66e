//! The management server: Keel's face to XenAPI clients.
//!
//! [`ManagementServer`] accepts TCP connections from a listener pool on the management
//! stack, runs one [`keel_http::Connection`] per socket, and routes requests:
//!
//! | request | handled by |
//! |---|---|
//! | `POST /`, `POST /RPC2` (XML-RPC), `POST /jsonrpc` (JSON-RPC) | [`keel_xenapi::XenApi`] |
//! | `GET /` | a one-line text page naming the service |
//! | `CONNECT /console?ref=…`, `GET /console?ref=…` | a guest's console through [`ConsoleAccess`] (docs/guests.md, "Console") |
//! | `PUT /import_raw_vdi`, `GET /export_raw_vdi` | VDI data through the XenAPI's transfers |
//! | `GET /rrd_updates`, `/host_rrd`, `/vm_rrd`, `/usage`; `POST /usage/ack` | performance data and usage through [`MeteringAccess`] (docs/metering.md) |
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
mod console;
mod metering;

use alloc::boxed::Box;
use alloc::vec::Vec;

use connection::Conn;
use keel_http::Limits;
use keel_net::smoltcp::iface::SocketSet;
use keel_net::{ListenerConfig, MemoryBudget, TcpListener};
use keel_xenapi::{Timestamp, XenApi};

pub use console::ConsoleAccess;
pub use metering::{MeteringAccess, Meters, UsageFailure};

/// Heap that decoding a request body may take, per byte of body, at most: what the server
/// charges to its memory budget while a call runs. Measured against bodies built to make the
/// decoders allocate the most per byte (tests/decode_memory.rs): up to about 80 (a JSON array
/// of zeros: serde_json's values, then the XenAPI's, with vectors grown by doubling).
pub const DECODE_BYTES_PER_BODY_BYTE: usize = 96;

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub port: u16,
    /// Sockets kept listening; refilled before every received frame (see
    /// [`ManagementServer::accept`]), so a small number takes any burst of connects.
    pub backlog: usize,
    /// Most simultaneous connections (listening sockets included).
    pub max_connections: usize,
    /// Receive buffer of each TCP socket (its largest window).
    pub socket_rx_bytes: usize,
    /// Send buffer of each TCP socket.
    pub socket_tx_bytes: usize,
    /// A peer that acknowledges nothing for this long is dropped.
    pub peer_timeout_ms: u64,
    pub http: Limits,
    /// Largest XML-RPC or JSON-RPC request body.
    pub max_api_body_bytes: u64,
    /// Heap the server may hold for clients: socket buffers of open connections and request
    /// bodies being received. Past it, new connections are refused and new requests answered
    /// `503`; the kernel sizes it from the heap (docs/architecture.md, "Memory").
    pub memory_budget_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port: 80,
            backlog: 4,
            // Xen Orchestra-style clients hold an `event.from` long-poll beside their calls:
            // 1024 clients, the listening sockets, and room for an administrator's few more.
            max_connections: 1024 + 4 + 72,
            socket_rx_bytes: 8 * 1024,
            socket_tx_bytes: 16 * 1024,
            peer_timeout_ms: 60_000,
            http: Limits::default(),
            // Decoding may take DECODE_BYTES_PER_BODY_BYTE times this: 96 MiB at most.
            max_api_body_bytes: 1024 * 1024,
            memory_budget_bytes: 48 * 1024 * 1024,
        }
    }
}

impl ServerConfig {
    /// Memory one idle keep-alive connection holds: its socket's buffers and slot and its
    /// connection record (its HTTP buffers are released between requests).
    pub fn idle_connection_bytes(&self) -> usize {
        self.socket_rx_bytes
            + self.socket_tx_bytes
            + core::mem::size_of::<keel_net::smoltcp::iface::SocketStorage<'static>>()
            + core::mem::size_of::<Conn>()
    }

    /// This configuration with a memory budget of `budget_bytes`, and no more connections
    /// than three quarters of it can hold idle (the rest is for request bodies and their
    /// decoding), so that the connection table is not sized for clients that would be refused.
    pub fn fitted_to(self, budget_bytes: usize) -> Self {
        let by_memory = budget_bytes / 4 * 3 / self.idle_connection_bytes().max(1);
        ServerConfig {
            memory_budget_bytes: budget_bytes,
            max_connections: self.max_connections.min(by_memory).max(self.backlog + 4),
            ..self
        }
    }
}

/// Counters for the console and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub connections_accepted: u64,
    pub requests: u64,
    pub api_calls: u64,
    /// Requests answered `503` because the memory budget could not hold them.
    pub refused_for_memory: u64,
}

/// The management server.
pub struct ManagementServer {
    listener: TcpListener,
    conns: Vec<Conn>,
    api: XenApi,
    config: ServerConfig,
    stats: ServerStats,
    budget: MemoryBudget,
    /// The guests' consoles, once the kernel has a toolstack; without, `/console` is `404`.
    consoles: Option<Box<dyn ConsoleAccess>>,
    /// The host's metering, once the kernel has one; without, its routes are `404`.
    metering: Option<Box<dyn MeteringAccess>>,
}

impl ManagementServer {
    /// Starts listening on `config.port` of the stack owning `sockets`.
    pub fn new(sockets: &mut SocketSet<'static>, api: XenApi, config: ServerConfig) -> Self {
        let mut budget = MemoryBudget::new(config.memory_budget_bytes);
        let listener = TcpListener::new(
            sockets,
            ListenerConfig {
                port: config.port,
                backlog: config.backlog,
                max_connections: config.max_connections,
                rx_buffer_bytes: config.socket_rx_bytes,
                tx_buffer_bytes: config.socket_tx_bytes,
                peer_timeout_ms: config.peer_timeout_ms,
            },
            &mut budget,
        );
        // The connection table is made once at its largest, so accepting never reallocates.
        let mut conns = Vec::new();
        if conns.try_reserve_exact(config.max_connections).is_err() {
            log::warn!("management: no memory for the connection table; it grows on demand");
        }
        ManagementServer {
            listener,
            conns,
            api,
            config,
            stats: ServerStats::default(),
            budget,
            consoles: None,
            metering: None,
        }
    }

    /// Serves the guests' consoles on `/console` (docs/guests.md, "Console").
    pub fn set_consoles(&mut self, consoles: Box<dyn ConsoleAccess>) {
        self.consoles = Some(consoles);
    }

    /// Serves the metering routes (`/rrd_updates`, `/usage`, …; docs/metering.md).
    pub fn set_metering(&mut self, metering: Box<dyn MeteringAccess>) {
        self.metering = Some(metering);
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

    /// Most connections the listener opens (listening sockets included); the memory budget
    /// may refuse earlier.
    pub fn max_connections(&self) -> usize {
        self.listener.config().max_connections
    }

    /// The memory budget, for the console and tests.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Memory one idle keep-alive connection holds: its socket (buffers and slot) and its
    /// connection record; its HTTP buffers are released between requests.
    pub fn idle_connection_bytes(&self) -> usize {
        self.config.idle_connection_bytes()
    }

    /// Takes the connections clients have opened and keeps sockets listening. Call it before
    /// every received frame ([`keel_net::NetStack::poll_with`]) so that a burst of connects
    /// all find a listening socket; [`ManagementServer::poll`] calls it too.
    pub fn accept(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut accepted = false;
        while let Some(handle) = self.listener.accept(sockets, &mut self.budget) {
            self.conns.push(Conn::new(handle, self.config.http));
            self.stats.connections_accepted += 1;
            accepted = true;
        }
        accepted
    }

    /// Accepts new connections and services every open one: input, requests, parked calls,
    /// output, timeouts and closing. `mono_ms` is monotonic time (HTTP timeouts), `now` the
    /// wall clock (the XenAPI's timestamps). Returns true when anything happened.
    pub fn poll(&mut self, sockets: &mut SocketSet<'static>, mono_ms: u64, now: Timestamp) -> bool {
        let mut activity = self.accept(sockets);
        if self.api.has_running_tasks() {
            // A job that worked (a VM.start reading its images a piece per step) counts as
            // activity, so the caller steps it again at once instead of after its idle
            // back-off; a job only waiting for a guest does not.
            activity |= self.api.step_tasks(now).worked;
        }
        let verifications = self.api.password_verifications();
        let mut i = 0;
        while i < self.conns.len() {
            let conn = &mut self.conns[i];
            activity |= conn.service(
                sockets,
                &mut self.api,
                &self.config,
                &mut Shared {
                    stats: &mut self.stats,
                    budget: &mut self.budget,
                    consoles: self.consoles.as_deref_mut(),
                    metering: self.metering.as_deref_mut(),
                },
                mono_ms,
                now,
            );
            if conn.is_finished(sockets) {
                let mut conn = self.conns.swap_remove(i);
                conn.abandon(&mut self.api, now);
                conn.release_memory(&mut self.budget);
                self.listener
                    .release(sockets, conn.socket(), &mut self.budget);
                activity = true;
            } else {
                i += 1;
            }
            if self.api.password_verifications() != verifications {
                // One password verification per round: it holds the CPU for the hash's
                // cost, and Keel's other tasks run between rounds. The connections after
                // this one go first in the next round, so a crowd of guessers cannot keep
                // a later client (root) waiting round after round.
                let first = i.min(self.conns.len());
                self.conns.rotate_left(first);
                return true;
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

/// What every connection updates or uses: the counters, the memory budget, the consoles.
pub(crate) struct Shared<'a> {
    pub(crate) stats: &'a mut ServerStats,
    pub(crate) budget: &'a mut MemoryBudget,
    pub(crate) consoles: Option<&'a mut (dyn ConsoleAccess + 'static)>,
    pub(crate) metering: Option<&'a mut (dyn MeteringAccess + 'static)>,
}

#[cfg(test)]
mod tests;
