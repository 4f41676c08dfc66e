//! The network seam: what the XenAPI needs from the virtual switch and netback, as a trait the
//! kernel implements (so this crate stays independent of both), and what the kernel reports
//! back about the host's own interface and the traffic.
//!
//! # Division of labour
//! The XenAPI owns the model and its rules: networks, VLANs, VIFs, which VIF is plugged,
//! locking modes, QoS settings, error codes, events. The switch owns frames: one bridge per
//! network, one port per VIF (its netback device), the uplink. Bridges are named by
//! `network.bridge`; VIFs by (domid, device number). VM and network references never cross
//! the seam.
//!
//! # The calls
//! Every [`NetworkBackend`] method returns promptly (bounded work). Calls are idempotent
//! where the model may repeat them: [`NetworkBackend::configure_bridge`] both creates a
//! bridge and changes one (a VLAN created on a network gives its bridge an uplink),
//! [`NetworkBackend::update_vif`] carries the whole new port state.
//!
//! | the model | the backend is asked to |
//! |---|---|
//! | host boot, `network.create`, `VLAN.create`, `PIF.plug`, `network.set_MTU` | `configure_bridge` |
//! | `network.destroy`, `VLAN.destroy`, `PIF.unplug` of a VLAN | `remove_bridge` (for `PIF.unplug`: `configure_bridge` without uplink) |
//! | a VM starts (each VIF), `VIF.plug` | `attach_vif` |
//! | a VM stops (each plugged VIF), `VIF.unplug`, `VIF.unplug_force` | `detach_vif` |
//! | `VIF.set_locking_mode`, `*_ipv4_allowed`, `*_ipv6_allowed`, QoS setters, `VIF.move`, `network.set_default_locking_mode` on a plugged VIF | `update_vif` |
//!
//! A domain's end needs no call: the toolstack's `GuestBackend::destroy` removes the
//! domain's backends, and the kernel removes their switch ports with them; the XenAPI then
//! records the VM's VIFs detached.
//!
//! # Wiring (the kernel's implementation)
//! With `keel-vswitch` and `keel-netback`: `configure_bridge` is `Switch::add_network` (or
//! `reconfigure_network` for a bridge it has) with the uplink's port, `vlan` and `mtu`, and
//! `default_locking_mode` left `Unlocked` (the filter of each VIF is already resolved here);
//! `attach_vif` writes the vif backend and frontend nodes (`mac`, `bridge`, `handle`,
//! ../shared/notes/pvh-guests.md §5), starts a `Netback` with
//! `RateLimit::from_xapi_kbps(rate_limit_kbps)` and adds a `PortConfig::Vif` whose
//! `locking_mode` is the [`TrafficFilter`] (`Locked` with its addresses); `update_vif` is
//! `reconfigure_port` plus `Netback::set_rate`; counters are the switch's port counters.
//! keel-vswitch takes VLAN tags 1 to 4094; xapi (and so `VLAN.create`) also allows 0, a
//! bridge the switch will refuse with its reason.
//!
//! # The reports
//! | the kernel sees | it calls |
//! |---|---|
//! | its management NIC at boot, a DHCP lease, a lost carrier | [`crate::XenApi::update_management_interface`] |
//! | switch counters, every few seconds | [`crate::XenApi::record_network_counters`] |

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};

use crate::error::ApiError;
use crate::guest::DomId;

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// `xx:xx:xx:xx:xx:xx` (hex digits of either case), as xapi's `is_valid_MAC` accepts.
    pub fn parse(text: &str) -> Option<Mac> {
        let mut out = [0u8; 6];
        let mut parts = text.split(':');
        for byte in out.iter_mut() {
            let part = parts.next()?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(Mac(out))
    }

    /// Locally administered (bit 1 of the first octet), as generated MACs are.
    pub fn is_local(self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// Group (multicast or broadcast) addresses cannot be an interface's own.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Where a bridge's traffic leaves the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// The physical interface (`PIF.device`, e.g. `eth0`).
    pub device: String,
    /// 802.1Q tag added on the way out and required on the way in; `None`: untagged.
    pub vlan: Option<u16>,
}

/// One network's bridge as the switch must have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// `network.bridge` (`xenbr0`, `xapi3`, ...).
    pub bridge: String,
    /// `network.MTU`, octets.
    pub mtu: u32,
    /// `None`: a private network (VIFs reach each other only).
    pub uplink: Option<Uplink>,
}

/// What a VIF may send (xapi's `VIF.locking_mode`, resolved against the network's
/// `default_locking_mode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrafficFilter {
    /// Anything goes.
    Unlocked,
    /// Only frames from the VIF's MAC, and IP traffic only from the listed addresses
    /// (ARP and neighbour discovery for them included). Empty lists allow no IP traffic.
    /// At most [`MAX_ALLOWED_ADDRESSES`] of each.
    Locked {
        ipv4: Vec<Ipv4Addr>,
        ipv6: Vec<Ipv6Addr>,
    },
    /// Nothing passes, either way.
    Disabled,
}

/// Most addresses a VIF's `ipv4_allowed` (and its `ipv6_allowed`) may hold: the switch
/// compares each per frame.
pub const MAX_ALLOWED_ADDRESSES: usize = 64;

/// A VIF as the switch and netback must have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VifPort {
    pub domid: DomId,
    /// `VIF.device`: the netfront device number (`device/vif/<n>`).
    pub device: u32,
    /// The MAC the guest is given (netback's `mac` node) and may send from.
    pub mac: Mac,
    /// `VIF.MTU`, or the network's when the VIF has none (0).
    pub mtu: u32,
    /// The bridge of the VIF's network.
    pub bridge: String,
    pub filter: TrafficFilter,
    /// `qos_algorithm_type = "ratelimit"` with `qos_algorithm_params:kbps`: the most the guest
    /// may send, KiB/s (netback's `rate` node). `None`: unlimited.
    pub rate_limit_kbps: Option<u64>,
    /// The VIF's UUID, for the backend's logs and xenstore's `vif-uuid`.
    pub vif_uuid: String,
}

/// Why the switch or netback refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkBackendError {
    /// The domain does not exist (any more).
    NoSuchDomain(DomId),
    /// No bridge of that name.
    NoSuchBridge(String),
    /// The uplink device does not exist on this host.
    NoSuchDevice(String),
    /// Too many ports, bridges or VLANs for the switch's tables.
    Exhausted(String),
    /// Anything else; the message says what.
    Failed(String),
}

impl NetworkBackendError {
    pub fn to_api_error(&self) -> ApiError {
        let message = match self {
            NetworkBackendError::NoSuchDomain(domid) => {
                alloc::format!("switch: domain {domid} does not exist")
            }
            NetworkBackendError::NoSuchBridge(bridge) => {
                alloc::format!("switch: no bridge {bridge}")
            }
            NetworkBackendError::NoSuchDevice(device) => {
                alloc::format!("switch: no interface {device}")
            }
            NetworkBackendError::Exhausted(what) => alloc::format!("switch: out of {what}"),
            NetworkBackendError::Failed(message) => alloc::format!("switch: {message}"),
        };
        ApiError::InternalError { message }
    }
}

/// The virtual switch and netback, as the XenAPI uses them. See the module documentation for
/// when each is called.
pub trait NetworkBackend {
    /// Creates the bridge, or brings an existing one to `config` (MTU, uplink). Ports stay.
    fn configure_bridge(&mut self, config: &BridgeConfig) -> Result<(), NetworkBackendError>;

    /// Removes a bridge that has no VIF ports left. One already gone is `NoSuchBridge`.
    fn remove_bridge(&mut self, bridge: &str) -> Result<(), NetworkBackendError>;

    /// Creates the VIF's netback device for the domain (its xenstore nodes, so the guest's
    /// netfront connects) and its port on `port.bridge`. Returns once the backend is set up;
    /// the frontend connects in its own time.
    fn attach_vif(&mut self, port: &VifPort) -> Result<(), NetworkBackendError>;

    /// Removes the VIF's port and its netback device. `force`: do not wait for the frontend
    /// to close (`VIF.unplug_force`, or the domain is gone); otherwise the frontend is asked
    /// to close and the device goes when it has. One already gone is `NoSuchDomain`.
    fn detach_vif(
        &mut self,
        domid: DomId,
        device: u32,
        force: bool,
    ) -> Result<(), NetworkBackendError>;

    /// Brings an attached VIF's port to `port` (filter, rate limit, bridge). The MAC and
    /// device number do not change.
    fn update_vif(&mut self, port: &VifPort) -> Result<(), NetworkBackendError>;
}

/// How the management interface got its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IpConfigurationMode {
    /// No address yet (before DHCP is tried, or no stack).
    #[default]
    None,
    Dhcp,
    Static,
}

/// The host's management interface as its network stack has it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ManagementInterface {
    /// `eth0`.
    pub device: String,
    pub mac: Mac,
    pub mtu: u32,
    pub mode: IpConfigurationMode,
    /// Address and prefix length, once there is one.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// What the NIC is (for `PIF_metrics`).
    pub nic: NicIdentity,
}

/// A NIC's identity and link, as `PIF_metrics` reports them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NicIdentity {
    /// PCI vendor and device ids (`1af4`, `1000` for virtio-net).
    pub vendor_id: u16,
    pub device_id: u16,
    pub vendor_name: String,
    pub device_name: String,
    /// `0000:00:03.0`.
    pub pci_bus_path: String,
    /// Mbit/s; 0 unknown.
    pub speed_mbps: u32,
    pub full_duplex: bool,
    pub carrier: bool,
}

/// Bytes through one interface since it appeared (the switch's port counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ByteCounters {
    /// Received by the interface: for a VIF, what the guest received; for a PIF, what came
    /// in from the wire.
    pub rx_bytes: u64,
    /// Sent by the interface.
    pub tx_bytes: u64,
}

/// One sample of the switch's counters.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NetworkCounters {
    /// Physical interfaces by device name (`eth0`).
    pub pifs: Vec<(String, ByteCounters)>,
    /// VIFs by (domid, device number).
    pub vifs: Vec<((DomId, u32), ByteCounters)>,
}
