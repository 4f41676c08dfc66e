//! Keel's guest console backend (what xenconsoled does for libxl): each guest's PV console
//! ring, its output kept in a bounded per-VM [`History`], any number of live readers, and
//! bounded input from clients. See docs/guests.md, "Console", for the wire protocol the
//! management server speaks on top of it.
//!
//! Sans-I/O: the kernel maps the guest's console frame and binds its event channel, then
//! calls [`ConsoleSet::attach`] with the page and [`ConsoleSet::service`] on every event,
//! notifying the guest when told to. The management server's console route opens a
//! [`ConsoleSession`] per client ([`ConsoleSet::open_session`]) and moves bytes with
//! [`ConsoleSet::session_output`] and [`ConsoleSet::session_input`]; [`target`] parses the
//! console location's request target.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod console;
pub mod history;
pub mod page;
pub mod ring;
pub mod set;
pub mod stream;
pub mod target;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use console::{Console, ConsoleError, ConsoleState, Serviced, INPUT_QUEUE_BYTES};
pub use history::{History, HistoryRead, DEFAULT_HISTORY_BYTES};
pub use page::{ConsolePage, Index, XenconsInterface, IN_RING_SIZE, OUT_RING_SIZE};
pub use ring::{ConsoleRing, Ring, RingError};
pub use set::{AttachError, ConsoleSession, ConsoleSet};
pub use stream::{ConsoleStream, SKIP_MARKER_MAX};
pub use target::{
    connect_request, location, parse_connect_response, parse_target, split_location,
    ConnectResponse, ConsoleSelector, ConsoleTarget, LocationError, TargetError, CONNECT_ACCEPTED,
    CONSOLE_PATH,
};
