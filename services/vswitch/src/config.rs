//! What the switch is told: its limits, its networks and its ports.

use alloc::vec::Vec;
use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};

use crate::mac::MacAddr;

/// A port, as [`crate::Switch::add_port`] named it. Never reused within one switch, so a
/// stale id cannot reach a newer port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u32);

/// A network, as [`crate::Switch::add_network`] named it. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkId(pub u32);

/// `VIF.locking_mode` as xapi defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockingMode {
    /// Whatever the network's `default_locking_mode` says.
    NetworkDefault,
    /// No filtering.
    Unlocked,
    /// Only the VIF's MAC, and IP sources in `ipv4_allowed`/`ipv6_allowed` (see
    /// docs/vswitch.md for the exact rules).
    Locked,
    /// No traffic to or from the VIF.
    Disabled,
}

/// `network.default_locking_mode` as xapi defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkLockingMode {
    #[default]
    Unlocked,
    Disabled,
}

/// The per-port budget for frames that are flooded (broadcast, multicast, unknown
/// unicast): a token bucket refilled at `frames_per_second`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimit {
    pub frames_per_second: u32,
    pub burst: u32,
}

/// Switch-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchConfig {
    /// A learned address is forgotten this long after its last frame (802.1D default:
    /// 300 s).
    pub mac_ageing_ms: u64,
    /// Learned addresses in the whole table (pinned addresses not included).
    pub max_macs: usize,
    /// Learned addresses one port may hold, so one guest cannot fill the table.
    pub max_macs_per_port: usize,
    /// Flood budget of every port.
    pub flood_limit: FloodLimit,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            mac_ageing_ms: 300_000,
            max_macs: 8192,
            max_macs_per_port: 64,
            flood_limit: FloodLimit {
                frames_per_second: 2000,
                burst: 200,
            },
        }
    }
}

/// Lowest MTU IPv4 requires of a link (RFC 791).
pub const MIN_MTU: u16 = 68;
/// Highest MTU accepted: xapi's jumbo-frame limit.
pub const MAX_MTU: u16 = 9216;
/// Most addresses in one VIF's `ipv4_allowed` or `ipv6_allowed`: each is compared per
/// frame, so the list is bounded.
pub const MAX_ALLOWED_ADDRESSES: usize = 64;

/// A network: a broadcast domain, tagged with `vlan` on `uplink` (or untagged on it when
/// `vlan` is `None`), or internal to the host when `uplink` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkConfig {
    /// 802.1Q VLAN ID, 1..=4094.
    pub vlan: Option<u16>,
    /// The largest IP packet (Ethernet payload) carried, in bytes.
    pub mtu: u16,
    /// The uplink port the network leaves the host through.
    pub uplink: Option<PortId>,
    pub default_locking_mode: NetworkLockingMode,
}

/// A guest's virtual interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifConfig {
    pub network: NetworkId,
    pub mac: MacAddr,
    pub locking_mode: LockingMode,
    pub ipv4_allowed: Vec<Ipv4Addr>,
    pub ipv6_allowed: Vec<Ipv6Addr>,
}

/// What a port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortConfig {
    /// A guest's VIF: an access port on one network, filtered by its locking mode.
    Vif(VifConfig),
    /// A physical NIC: a trunk carrying every network whose `uplink` names it, tagged
    /// with each network's VLAN (untagged for the one without).
    Uplink,
    /// Keel's own TCP/IP stack: a trusted access port on one network. Its MAC is pinned
    /// so no other port can take it over.
    Local { network: NetworkId, mac: MacAddr },
}

impl PortConfig {
    pub(crate) fn network(&self) -> Option<NetworkId> {
        match self {
            PortConfig::Vif(vif) => Some(vif.network),
            PortConfig::Local { network, .. } => Some(*network),
            PortConfig::Uplink => None,
        }
    }
}

/// Why a configuration change was refused. The switch is unchanged when one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    UnknownNetwork(NetworkId),
    UnknownPort(PortId),
    /// A network's `uplink` names a port that is not an uplink.
    NotAnUplink(PortId),
    /// VLAN IDs are 1..=4094.
    InvalidVlan(u16),
    InvalidMtu(u16),
    /// A port's MAC must be a unicast, non-zero address.
    InvalidMac(MacAddr),
    TooManyAllowedAddresses,
    /// Another network already uses this VLAN (or the untagged slot) on this uplink.
    VlanInUse {
        uplink: PortId,
        vlan: Option<u16>,
    },
    /// Another port on the network already has this MAC pinned.
    MacInUse(MacAddr),
    /// The network still has ports; remove or move them first.
    NetworkInUse(NetworkId),
    /// The uplink still carries networks; remove them first.
    UplinkInUse(PortId),
    /// A port cannot change between VIF, uplink and local.
    KindChange(PortId),
    /// An id counter ran out.
    Exhausted,
    /// Memory for the port's state could not be reserved.
    OutOfMemory,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownNetwork(n) => write!(f, "no network {}", n.0),
            ConfigError::UnknownPort(p) => write!(f, "no port {}", p.0),
            ConfigError::NotAnUplink(p) => write!(f, "port {} is not an uplink", p.0),
            ConfigError::InvalidVlan(v) => write!(f, "VLAN {v} is outside 1..=4094"),
            ConfigError::InvalidMtu(m) => {
                write!(f, "MTU {m} is outside {MIN_MTU}..={MAX_MTU}")
            }
            ConfigError::InvalidMac(m) => write!(f, "{m} is not a unicast address"),
            ConfigError::TooManyAllowedAddresses => {
                write!(f, "more than {MAX_ALLOWED_ADDRESSES} allowed addresses")
            }
            ConfigError::VlanInUse { uplink, vlan } => match vlan {
                Some(v) => write!(f, "VLAN {v} is already in use on port {}", uplink.0),
                None => write!(f, "port {} already has an untagged network", uplink.0),
            },
            ConfigError::MacInUse(m) => write!(f, "{m} is already pinned on this network"),
            ConfigError::NetworkInUse(n) => write!(f, "network {} still has ports", n.0),
            ConfigError::UplinkInUse(p) => write!(f, "uplink {} still carries networks", p.0),
            ConfigError::KindChange(p) => write!(f, "port {} cannot change kind", p.0),
            ConfigError::Exhausted => write!(f, "no identifiers left"),
            ConfigError::OutOfMemory => write!(f, "out of memory"),
        }
    }
}
