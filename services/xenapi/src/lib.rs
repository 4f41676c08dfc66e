//! Keel's XenAPI core: the data model, its semantics, and the XML-RPC and JSON-RPC codecs,
//! independent of any transport.
//!
//! The HTTP server hands [`XenApi::handle`] a request body and the endpoint it arrived on and
//! gets back a response body and content type, or a [`PendingCall`] to poll later (see
//! `api.rs` for the poll model). [`XenApi::call`] is the same without the codecs.
//!
//! Module map: `value` (wire values), `codec`/`xmlrpc`/`jsonrpc` (wire formats), `schema`
//! (declaration vocabulary), `classes`, `classes_storage`, `classes_vm`, `classes_vbd`,
//! `classes_network` (the declared model), `dispatch` (routing and the generated messages),
//! `handlers` (custom messages, one module per class or concern), `store` (objects),
//! `events`, `tasks`, `storage`, `guest` and `network_backend` (the seams to the storage
//! manager, the toolstack and the virtual switch), `transfer` (VDI data over HTTP), `auth`
//! (password hash and login throttle), `time`, `error` and `error_network`.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod api;
pub mod auth;
pub mod classes;
pub mod classes_network;
pub mod classes_storage;
pub mod classes_vbd;
pub mod classes_vm;
pub mod codec;
pub mod dispatch;
pub mod error;
pub mod error_network;
pub mod events;
pub mod guest;
pub mod handlers;
pub mod jsonrpc;
pub mod metrics;
pub mod network_backend;
pub mod persist;
pub mod schema;
pub mod storage;
pub mod store;
pub mod tasks;
pub mod time;
pub mod transfer;
pub mod value;
pub mod xmlrpc;

pub use api::{
    Config, Endpoint, Handled, HostFacts, Limits, PendingCall, Response, Wait, XenApi,
    API_VERSION_MAJOR, API_VERSION_MINOR,
};
pub use auth::{
    hash_password, verification_bytes, HashCost, LoginPolicy, PasswordHashError, VerifierState,
};
pub use dispatch::{Args, CallContext, CallOutcome, Job, JobStep, Outcome};
pub use error::ApiError;
pub use error_network::NetworkError;
pub use guest::{
    BootImage, BootSpec, DiskSpec, DiskVdi, DomId, ExitReason, GuestBackend, GuestError,
    PreparedStart, ShutdownRequest, KERNEL_HEAD_BYTES,
};
pub use handlers::vbd_metrics::DiskIoSample;
pub use handlers::vm_power::ShutdownFailure;
pub use keel_hostdb;
pub use keel_metering;
pub use metrics::{MeteredVm, MeteringView};
pub use network_backend::{
    BridgeConfig, ByteCounters, IpConfigurationMode, Mac, ManagementInterface, NetworkBackend,
    NetworkBackendError, NetworkCounters, NicIdentity, TrafficFilter, Uplink, VifPort,
    MAX_ALLOWED_ADDRESSES,
};
pub use persist::{AutoStart, DatabaseSink, SaveFailed};
pub use storage::{SrFacts, StorageBackend, StorageError, VdiFacts};
pub use store::Entropy;
pub use time::Timestamp;
pub use transfer::{Direction, Transfer, TransferRequest};
pub use value::Value;
