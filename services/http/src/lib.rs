//! An HTTP/1.1 server as a sans-I/O state machine.
//!
//! Keel's management API (XML-RPC, JSON-RPC) and its disk-data transfers run over HTTP/1.1 on
//! the in-kernel TCP stack. This crate knows nothing about sockets or clocks: the glue hands a
//! [`Connection`] the bytes it read and the current time, takes [`Event`]s out of it for the
//! handler, and moves the bytes of [`Connection::output`] into the socket as the socket accepts
//! them. Every call does bounded work, every buffer has a configured bound ([`Limits`]), and
//! each connection is independent, so one misbehaving client cannot stall another.
//!
//! See the crate's `README.md` for the state machine and the glue's driving loop.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod buffer;
mod chunked;
mod connection;
mod error;
mod head;
mod limits;
mod query;
mod request;
mod response;
mod status;

pub use connection::{CloseKind, Connection, Event};
pub use error::{HttpError, ResponseError};
pub use limits::Limits;
pub use query::{percent_decode, query_param, QueryError};
pub use request::{BodyKind, Header, Method, Request, Version};
pub use response::ResponseBody;
pub use status::reason_phrase;
