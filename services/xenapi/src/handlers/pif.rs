//! `PIF` and `PIF_metrics`: the host's management interface (made at the first boot, kept
//! in step with what the kernel's network stack reports), VLAN interfaces (`vlan.rs` makes
//! them), `PIF.plug/unplug`, `set_disallow_unplug`, and the deprecated `PIF.create_VLAN` /
//! `PIF.destroy` that old scripts still call.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use super::network::{
    configure_bridge, create_management_network, flag, live_ref, text, DEFAULT_MTU,
    MANAGEMENT_DEVICE,
};
use super::value;
use crate::api::{State, XenApi};
use crate::classes_network::{PIF, PIF_METRICS};
use crate::dispatch::{Args, CallContext, Outcome};
use crate::error::ApiError;
use crate::error_network::NetworkError;
use crate::network_backend::{IpConfigurationMode, ManagementInterface, NetworkCounters};
use crate::store::{consistent, Db};
use crate::time::Timestamp;
use crate::value::Value;

/// The management PIF of `host`, if there is one.
pub(crate) fn management_pif(db: &Db, host: &str) -> Option<String> {
    db.refs("PIF")
        .into_iter()
        .find(|pif| flag(db, pif, "management") && text(db, pif, "host") == host)
}

/// At the first boot: the management network and its PIF (`eth0`, attached, management,
/// no address until the kernel reports one) with its metrics. Returns the PIF.
pub(crate) fn create_management_pif(db: &mut Db, host: &str, now: Timestamp) -> String {
    let network = create_management_network(db, now);
    let metrics = db.create(&PIF_METRICS, Vec::new(), now);
    db.create(
        &PIF,
        vec![
            ("device", Value::str(MANAGEMENT_DEVICE)),
            ("network", Value::String(network)),
            ("host", Value::str(host)),
            ("MTU", Value::Int(DEFAULT_MTU)),
            ("VLAN", Value::Int(-1)),
            ("metrics", Value::String(metrics)),
            ("physical", Value::Bool(true)),
            ("currently_attached", Value::Bool(true)),
            ("ip_configuration_mode", Value::str("None")),
            ("management", Value::Bool(true)),
            ("ipv6_configuration_mode", Value::str("None")),
            ("primary_address_type", Value::str("IPv4")),
            ("managed", Value::Bool(true)),
            ("igmp_snooping_status", Value::str("disabled")),
        ],
        now,
    )
}

/// The netmask of a prefix length, dotted.
fn netmask(prefix_len: u8) -> String {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    core::net::Ipv4Addr::from(bits).to_string()
}

fn hex4(id: u16) -> String {
    let mut out = String::new();
    let _ = write!(out, "{id:04x}");
    out
}

/// Writes what the kernel's stack says about the management interface into its PIF and
/// PIF_metrics, publishing only real changes.
pub(crate) fn apply_management_interface(
    state: &mut State,
    iface: &ManagementInterface,
    now: Timestamp,
) -> Result<(), ApiError> {
    let host = state.host.clone();
    let Some(pif) = management_pif(&state.db, &host) else {
        return Ok(());
    };
    let mode = match iface.mode {
        IpConfigurationMode::None => "None",
        IpConfigurationMode::Dhcp => "DHCP",
        IpConfigurationMode::Static => "Static",
    };
    let (ip, mask) = match iface.ipv4 {
        Some((address, prefix_len)) => (address.to_string(), netmask(prefix_len)),
        None => (String::new(), String::new()),
    };
    let gateway = iface.gateway.map(|g| g.to_string()).unwrap_or_default();
    let dns: Vec<String> = iface.dns.iter().map(|d| d.to_string()).collect();
    let device = if iface.device.is_empty() {
        MANAGEMENT_DEVICE.to_string()
    } else {
        iface.device.clone()
    };
    let mtu = if iface.mtu == 0 {
        DEFAULT_MTU
    } else {
        i64::from(iface.mtu)
    };
    state.db.update(
        &pif,
        vec![
            ("device", Value::String(device)),
            ("MAC", Value::String(iface.mac.to_string())),
            ("MTU", Value::Int(mtu)),
            ("ip_configuration_mode", Value::str(mode)),
            ("IP", Value::String(ip)),
            ("netmask", Value::String(mask)),
            ("gateway", Value::String(gateway)),
            ("DNS", Value::String(dns.join(","))),
        ],
        now,
    )?;
    if let Some(metrics) = live_ref(&state.db, &pif, "metrics") {
        let nic = &iface.nic;
        let nic_fields = vec![
            ("carrier", Value::Bool(nic.carrier)),
            ("vendor_id", Value::String(hex4(nic.vendor_id))),
            ("vendor_name", Value::String(nic.vendor_name.clone())),
            ("device_id", Value::String(hex4(nic.device_id))),
            ("device_name", Value::String(nic.device_name.clone())),
            ("speed", Value::Int(i64::from(nic.speed_mbps))),
            ("duplex", Value::Bool(nic.full_duplex)),
            ("pci_bus_path", Value::String(nic.pci_bus_path.clone())),
        ];
        super::network::update_metrics(&mut state.db, &metrics, nic_fields, now)?;
    }
    Ok(())
}

/// Writes one sample of the switch's counters into the PIF and VIF metrics.
pub(crate) fn apply_counters(
    state: &mut State,
    counters: &NetworkCounters,
    now: Timestamp,
) -> Result<(), ApiError> {
    let host = state.host.clone();
    for (device, bytes) in &counters.pifs {
        let physical = state.db.refs("PIF").into_iter().find(|pif| {
            text(&state.db, pif, "device") == *device
                && text(&state.db, pif, "host") == host
                && flag(&state.db, pif, "physical")
        });
        if let Some(metrics) = physical.and_then(|pif| live_ref(&state.db, &pif, "metrics")) {
            super::network::record_rates(state, &metrics, *bytes, now)?;
        }
    }
    // With a metering, VIF_metrics come from its samples (netback's counters,
    // `XenApi::apply_metering`, docs/metering.md); one writer, or the rates would flap.
    let vifs = if state.metering.is_some() {
        &[][..]
    } else {
        &counters.vifs[..]
    };
    for ((domid, device), bytes) in vifs {
        if let Some(metrics) = super::vif::metrics_of_port(&state.db, *domid, *device) {
            super::network::record_rates(state, &metrics, *bytes, now)?;
        }
    }
    super::network::prune_samples(state);
    Ok(())
}

impl XenApi {
    /// What the kernel's network stack has for the management interface (at boot, when DHCP
    /// answers, when the carrier changes): written into the management PIF (`MAC`, `MTU`,
    /// `ip_configuration_mode`, `IP`, `netmask`, `gateway`, `DNS`) and its `PIF_metrics`
    /// (`carrier`, vendor and device, speed, PCI path), publishing only real changes.
    pub fn update_management_interface(&mut self, iface: &ManagementInterface, now: Timestamp) {
        consistent(apply_management_interface(&mut self.state, iface, now));
        crate::persist::save_if_changed(&mut self.state);
    }

    /// One sample of the switch's byte counters (every few seconds): `io_read_kbs` and
    /// `io_write_kbs` of the PIF and VIF metrics become the rates since the previous sample.
    /// Interfaces the model does not know are ignored.
    pub fn record_network_counters(&mut self, counters: &NetworkCounters, now: Timestamp) {
        consistent(apply_counters(&mut self.state, counters, now));
        crate::persist::save_if_changed(&mut self.state);
    }
}

/// `PIF.plug(self)`: brings the interface up; the network's bridge gets it as its uplink.
pub fn plug(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let pif = args.str(0)?.to_string();
    set_attached(ctx.state, &pif, true, ctx.now)?;
    value(Value::void())
}

/// `PIF.unplug(self)`: not the management interface (`PIF_IS_MANAGEMENT_INTERFACE`), not
/// one marked `disallow_unplug` (`PIF_DOES_NOT_ALLOW_UNPLUG`); the network's bridge stays,
/// without an uplink.
pub fn unplug(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let pif = args.str(0)?.to_string();
    let db = &ctx.state.db;
    if flag(db, &pif, "management") {
        return Err(NetworkError::PifIsManagementInterface { pif }.into());
    }
    if flag(db, &pif, "disallow_unplug") {
        return Err(NetworkError::PifDoesNotAllowUnplug { pif }.into());
    }
    set_attached(ctx.state, &pif, false, ctx.now)?;
    value(Value::void())
}

/// Marks a PIF up or down and reconfigures its network's bridge; on a refusal from the
/// switch the PIF keeps its old state.
pub(crate) fn set_attached(
    state: &mut State,
    pif: &str,
    attached: bool,
    now: Timestamp,
) -> Result<(), ApiError> {
    if flag(&state.db, pif, "currently_attached") == attached {
        return Ok(());
    }
    let attached_value = vec![("currently_attached", Value::Bool(attached))];
    state.db.set(pif, attached_value, now)?;
    let Some(network) = live_ref(&state.db, pif, "network") else {
        return Ok(());
    };
    if let Err(e) = configure_bridge(state, &network) {
        let undo = vec![("currently_attached", Value::Bool(!attached))];
        state.db.set(pif, undo, now)?;
        return Err(e);
    }
    Ok(())
}

/// `PIF.set_disallow_unplug(self, value)`.
pub fn set_disallow_unplug(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let pif = args.str(0)?.to_string();
    let disallow = args.value(1).clone();
    let now = ctx.now;
    ctx.state
        .db
        .update(&pif, vec![("disallow_unplug", disallow)], now)?;
    value(Value::void())
}

/// `PIF.create_VLAN(device, network, host, VLAN)` (deprecated): `VLAN.create` on the
/// host's physical interface named `device`; returns the new VLAN interface.
pub fn create_vlan(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let device = args.str(0)?.to_string();
    let network = args.str(1)?.to_string();
    let host = args.str(2)?.to_string();
    let tag = args.int(3)?;
    let tagged = super::vlan::physical_pif(&ctx.state.db, &host, &device)?;
    let (_, untagged) = super::vlan::create_vlan(ctx, &tagged, tag, &network)?;
    value(Value::String(untagged))
}

/// `PIF.destroy(self)` (deprecated): only a VLAN's interface, which destroys the VLAN
/// (`PIF_IS_PHYSICAL` otherwise).
pub fn destroy(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let pif = args.str(0)?.to_string();
    match live_ref(&ctx.state.db, &pif, "VLAN_master_of") {
        Some(vlan) => {
            super::vlan::destroy_vlan(ctx, &vlan)?;
            value(Value::void())
        }
        None => Err(NetworkError::PifIsPhysical { pif }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_follow_prefix_lengths() {
        assert_eq!(netmask(24), "255.255.255.0");
        assert_eq!(netmask(0), "0.0.0.0");
        assert_eq!(netmask(32), "255.255.255.255");
        assert_eq!(netmask(20), "255.255.240.0");
        assert_eq!(netmask(99), "255.255.255.255");
        assert_eq!(hex4(0x1af4), "1af4");
        assert_eq!(hex4(0x8086), "8086");
    }
}
