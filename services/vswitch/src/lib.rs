//! Keel's virtual switch: the logic that moves Ethernet frames between guests' VIFs, the
//! physical NICs (uplinks) and Keel's own TCP/IP stack.
//!
//! Frames in, decisions out: [`Switch::ingress`] takes the time, the port a frame came in
//! on and its bytes, and returns the ports it goes to, each with the [`FrameEdit`] (802.1Q
//! tag pushed, popped or neither) the caller applies while copying it there. No I/O, no
//! clock, no allocation per frame. What it enforces:
//!
//! * **Networks** ([`NetworkConfig`]): a network is a broadcast domain with an MTU, an
//!   optional VLAN ID and an optional uplink. VIFs and the local stack are access ports on
//!   one network (untagged); an uplink is a trunk carrying each of its networks tagged
//!   with their VLAN (untagged for the one without). No frame crosses networks; a tagged
//!   frame from an access port, or a frame from an uplink with a VLAN it does not carry,
//!   is dropped and counted.
//! * **MAC learning** per network with ageing ([`SwitchConfig::mac_ageing_ms`]), bounded in
//!   total and per port, learning only from frames that passed the port's filters.
//!   Locked VIFs' and the local stack's MACs are pinned: no other port can take them.
//! * **Anti-spoofing** per VIF as xapi's `VIF.locking_mode`, `ipv4_allowed` and
//!   `ipv6_allowed` define it (see the `locking` module and docs/vswitch.md).
//! * **Flood bounding**: broadcast, multicast and unknown unicast spend a per-port token
//!   bucket ([`FloodLimit`]).
//! * **Counters** per port ([`PortCounters`]): bytes and packets both ways, drops by
//!   [`DropReason`], learning refusals.
//!
//! * **The management stack as a port**: [`local_link`] gives `keel-net`'s `NetStack` a
//!   [`LocalDevice`] (a `NetDevice`) in place of the NIC, and the glue a [`LocalPortEnd`];
//!   both directions are bounded [`FrameQueue`]s.
//!
//! See docs/vswitch.md for the rules in full and how the kernel wires it.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod config;
mod counters;
mod fdb;
mod flood;
mod forward;
mod local;
mod locking;
mod mac;
mod queue;
mod switch;
pub mod wire;

pub use config::{
    ConfigError, FloodLimit, LockingMode, NetworkConfig, NetworkId, NetworkLockingMode, PortConfig,
    PortId, SwitchConfig, VifConfig, MAX_ALLOWED_ADDRESSES, MAX_MTU, MIN_MTU,
};
pub use counters::{DropCounts, DropReason, LearningCounts, PortCounters};
pub use forward::{Delivery, EditError, Forward, FrameEdit, Verdict};
pub use local::{local_link, LocalDevice, LocalPortEnd, LOCAL_MAX_FRAME};
pub use mac::MacAddr;
pub use queue::{FrameQueue, QueueError};
pub use switch::{EffectiveLocking, Switch};
