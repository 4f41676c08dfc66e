//! The switch: configuration of networks and ports, and the per-frame decision.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::config::{
    ConfigError, LockingMode, NetworkConfig, NetworkId, NetworkLockingMode, PortConfig, PortId,
    SwitchConfig, VifConfig, MAX_ALLOWED_ADDRESSES, MAX_MTU, MIN_MTU,
};
use crate::counters::{DropReason, PortCounters};
use crate::fdb::{Fdb, Learned, Limits};
use crate::flood::FloodBudget;
use crate::forward::{Delivery, Forward, FrameEdit, Verdict};
use crate::locking::{self, Identity};
use crate::mac::MacAddr;
use crate::wire::{Ethernet, ETH_HEADER};

/// What a VIF's locking mode comes to once `network_default` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectiveLocking {
    Unlocked,
    Locked,
    Disabled,
}

impl EffectiveLocking {
    /// xapi's resolution: `network_default` takes the network's `default_locking_mode`.
    pub fn resolve(vif: LockingMode, network: NetworkLockingMode) -> EffectiveLocking {
        match (vif, network) {
            (LockingMode::NetworkDefault, NetworkLockingMode::Unlocked) => {
                EffectiveLocking::Unlocked
            }
            (LockingMode::NetworkDefault, NetworkLockingMode::Disabled) => {
                EffectiveLocking::Disabled
            }
            (LockingMode::Unlocked, _) => EffectiveLocking::Unlocked,
            (LockingMode::Locked, _) => EffectiveLocking::Locked,
            (LockingMode::Disabled, _) => EffectiveLocking::Disabled,
        }
    }
}

#[derive(Debug)]
struct Port {
    config: PortConfig,
    counters: PortCounters,
    flood: FloodBudget,
}

/// A virtual switch. Pure logic: the caller moves the frames and hands in the time.
#[derive(Debug)]
pub struct Switch {
    config: SwitchConfig,
    networks: BTreeMap<NetworkId, NetworkConfig>,
    /// (uplink, VLAN or untagged) → the network carried there.
    trunks: BTreeMap<(PortId, Option<u16>), NetworkId>,
    ports: BTreeMap<PortId, Port>,
    fdb: Fdb,
    next_network: u32,
    next_port: u32,
    /// The last decision's deliveries; room for one per port is reserved when ports are
    /// added, so deciding never allocates.
    deliveries: Vec<Delivery>,
}

impl Switch {
    pub fn new(config: SwitchConfig) -> Switch {
        Switch {
            config,
            networks: BTreeMap::new(),
            trunks: BTreeMap::new(),
            ports: BTreeMap::new(),
            fdb: Fdb::default(),
            next_network: 0,
            next_port: 0,
            deliveries: Vec::new(),
        }
    }

    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    // ---- networks ----

    pub fn add_network(&mut self, config: NetworkConfig) -> Result<NetworkId, ConfigError> {
        self.check_network(&config, None)?;
        let id = NetworkId(self.next_network);
        self.next_network = self
            .next_network
            .checked_add(1)
            .ok_or(ConfigError::Exhausted)?;
        if let Some(uplink) = config.uplink {
            self.trunks.insert((uplink, config.vlan), id);
        }
        self.networks.insert(id, config);
        Ok(id)
    }

    /// Changes a network in place (MTU, default locking mode, VLAN, uplink). Addresses
    /// learned on the old uplink are forgotten when the VLAN or uplink changes.
    pub fn reconfigure_network(
        &mut self,
        id: NetworkId,
        config: NetworkConfig,
    ) -> Result<(), ConfigError> {
        let old = *self
            .networks
            .get(&id)
            .ok_or(ConfigError::UnknownNetwork(id))?;
        self.check_network(&config, Some(id))?;
        if (old.uplink, old.vlan) != (config.uplink, config.vlan) {
            if let Some(uplink) = old.uplink {
                self.trunks.remove(&(uplink, old.vlan));
                self.fdb.forget(|n, p| n == id && p == uplink);
            }
            if let Some(uplink) = config.uplink {
                self.trunks.insert((uplink, config.vlan), id);
            }
        }
        self.networks.insert(id, config);
        Ok(())
    }

    /// Removes a network that no VIF or local port is on.
    pub fn remove_network(&mut self, id: NetworkId) -> Result<(), ConfigError> {
        let config = *self
            .networks
            .get(&id)
            .ok_or(ConfigError::UnknownNetwork(id))?;
        if self.ports.values().any(|p| p.config.network() == Some(id)) {
            return Err(ConfigError::NetworkInUse(id));
        }
        if let Some(uplink) = config.uplink {
            self.trunks.remove(&(uplink, config.vlan));
        }
        self.fdb.forget(|n, _| n == id);
        self.networks.remove(&id);
        Ok(())
    }

    pub fn network(&self, id: NetworkId) -> Option<&NetworkConfig> {
        self.networks.get(&id)
    }

    fn check_network(
        &self,
        config: &NetworkConfig,
        this: Option<NetworkId>,
    ) -> Result<(), ConfigError> {
        if let Some(vlan) = config.vlan {
            if !(1..=4094).contains(&vlan) {
                return Err(ConfigError::InvalidVlan(vlan));
            }
        }
        if !(MIN_MTU..=MAX_MTU).contains(&config.mtu) {
            return Err(ConfigError::InvalidMtu(config.mtu));
        }
        if let Some(uplink) = config.uplink {
            match self.ports.get(&uplink) {
                None => return Err(ConfigError::UnknownPort(uplink)),
                Some(p) if p.config != PortConfig::Uplink => {
                    return Err(ConfigError::NotAnUplink(uplink))
                }
                Some(_) => {}
            }
            match self.trunks.get(&(uplink, config.vlan)) {
                Some(holder) if Some(*holder) != this => {
                    return Err(ConfigError::VlanInUse {
                        uplink,
                        vlan: config.vlan,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ---- ports ----

    pub fn add_port(&mut self, config: PortConfig, now_ms: u64) -> Result<PortId, ConfigError> {
        let id = PortId(self.next_port);
        let pin = self.check_port(&config, id)?;
        let next = self
            .next_port
            .checked_add(1)
            .ok_or(ConfigError::Exhausted)?;
        self.deliveries
            .try_reserve(self.ports.len() + 1)
            .map_err(|_| ConfigError::OutOfMemory)?;
        self.fdb.reserve(1).map_err(|_| ConfigError::OutOfMemory)?;
        self.fdb
            .register_port(id)
            .map_err(|_| ConfigError::OutOfMemory)?;
        self.next_port = next;
        if let Some((network, mac)) = pin {
            // check_port made sure nothing else holds it, and room was reserved.
            let _ = self.fdb.pin(network, mac, id);
        }
        self.ports.insert(
            id,
            Port {
                config,
                counters: PortCounters::default(),
                flood: FloodBudget::new(self.config.flood_limit, now_ms),
            },
        );
        Ok(id)
    }

    /// Changes a port's network, MAC, locking mode or allowed addresses. Whatever was
    /// learned on the port is forgotten; its counters are kept.
    pub fn reconfigure_port(&mut self, id: PortId, config: PortConfig) -> Result<(), ConfigError> {
        let old = &self
            .ports
            .get(&id)
            .ok_or(ConfigError::UnknownPort(id))?
            .config;
        if core::mem::discriminant(old) != core::mem::discriminant(&config) {
            return Err(ConfigError::KindChange(id));
        }
        let pin = self.check_port(&config, id)?;
        self.fdb.reserve(1).map_err(|_| ConfigError::OutOfMemory)?;
        self.fdb.forget_port(id);
        if let Some((network, mac)) = pin {
            // check_port made sure nothing else holds it, and room was reserved.
            let _ = self.fdb.pin(network, mac, id);
        }
        if let Some(port) = self.ports.get_mut(&id) {
            port.config = config;
        }
        Ok(())
    }

    /// Removes a port. An uplink must carry no network.
    pub fn remove_port(&mut self, id: PortId) -> Result<PortCounters, ConfigError> {
        let port = self.ports.get(&id).ok_or(ConfigError::UnknownPort(id))?;
        if port.config == PortConfig::Uplink && self.trunks.keys().any(|(p, _)| *p == id) {
            return Err(ConfigError::UplinkInUse(id));
        }
        self.fdb.unregister_port(id);
        let port = self.ports.remove(&id).ok_or(ConfigError::UnknownPort(id))?;
        Ok(port.counters)
    }

    pub fn port(&self, id: PortId) -> Option<&PortConfig> {
        self.ports.get(&id).map(|p| &p.config)
    }

    /// Every port with its configuration and counters, in id order (for `PIF_metrics`,
    /// `VIF_metrics` and metering).
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &PortConfig, &PortCounters)> + '_ {
        self.ports
            .iter()
            .map(|(id, p)| (*id, &p.config, &p.counters))
    }

    /// Every network, in id order.
    pub fn networks(&self) -> impl Iterator<Item = (NetworkId, &NetworkConfig)> + '_ {
        self.networks.iter().map(|(id, n)| (*id, n))
    }

    pub fn counters(&self, id: PortId) -> Option<&PortCounters> {
        self.ports.get(&id).map(|p| &p.counters)
    }

    /// The locking mode in force on a VIF; `None` for other ports and unknown ids.
    pub fn effective_locking(&self, id: PortId) -> Option<EffectiveLocking> {
        match &self.ports.get(&id)?.config {
            PortConfig::Vif(vif) => {
                let network = self.networks.get(&vif.network)?;
                Some(EffectiveLocking::resolve(
                    vif.locking_mode,
                    network.default_locking_mode,
                ))
            }
            _ => None,
        }
    }

    /// Records that a frame the switch handed to `port` could not be queued there.
    pub fn record_egress_drop(&mut self, port: PortId) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.counters.drops.add(DropReason::EgressQueueFull);
        }
    }

    /// Validates a port's configuration; returns the (network, MAC) to pin, if any.
    fn check_port(
        &self,
        config: &PortConfig,
        this: PortId,
    ) -> Result<Option<(NetworkId, MacAddr)>, ConfigError> {
        let (network, mac, pinned) = match config {
            PortConfig::Uplink => return Ok(None),
            PortConfig::Local { network, mac } => (*network, *mac, true),
            PortConfig::Vif(VifConfig {
                network,
                mac,
                locking_mode,
                ipv4_allowed,
                ipv6_allowed,
            }) => {
                if ipv4_allowed.len() > MAX_ALLOWED_ADDRESSES
                    || ipv6_allowed.len() > MAX_ALLOWED_ADDRESSES
                {
                    return Err(ConfigError::TooManyAllowedAddresses);
                }
                (*network, *mac, *locking_mode == LockingMode::Locked)
            }
        };
        if !self.networks.contains_key(&network) {
            return Err(ConfigError::UnknownNetwork(network));
        }
        if !mac.is_unicast() {
            return Err(ConfigError::InvalidMac(mac));
        }
        if !pinned {
            return Ok(None);
        }
        match self.fdb.pinned_port(network, mac) {
            Some(holder) if holder != this => Err(ConfigError::MacInUse(mac)),
            _ => Ok(Some((network, mac))),
        }
    }

    // ---- frames ----

    /// Forgets learned addresses not seen for the ageing time; returns how many. Lookups
    /// already ignore aged entries, so this only reclaims room; call it every few seconds.
    pub fn age(&mut self, now_ms: u64) -> usize {
        self.fdb.age(now_ms, self.config.mac_ageing_ms)
    }

    /// The port `mac` is known on in `network` (learned and not aged, or pinned).
    pub fn lookup(&self, network: NetworkId, mac: MacAddr, now_ms: u64) -> Option<PortId> {
        self.fdb
            .lookup(network, mac, now_ms, self.config.mac_ageing_ms)
    }

    /// Learned addresses in the table (aged ones included until [`Switch::age`]).
    pub fn learned_macs(&self) -> usize {
        self.fdb.learned()
    }

    /// Decides where one frame received on `port` goes. The frame is not copied: the
    /// caller writes each [`Delivery`] with its [`FrameEdit`]. Counters are updated here
    /// (tx as handed out; report queue overflows with [`Switch::record_egress_drop`]).
    pub fn ingress(&mut self, now_ms: u64, port: PortId, frame: &[u8]) -> Forward<'_> {
        self.deliveries.clear();
        let verdict = match self.ports.get_mut(&port) {
            None => Verdict::NoSuchPort,
            Some(p) => {
                p.counters.received(frame.len());
                match self.decide(now_ms, port, frame) {
                    Ok(verdict) => verdict,
                    Err((counted_on, reason)) => {
                        self.deliveries.clear();
                        if let Some(p) = self.ports.get_mut(&counted_on) {
                            p.counters.drops.add(reason);
                        }
                        Verdict::Dropped(reason)
                    }
                }
            }
        };
        if matches!(verdict, Verdict::Unicast | Verdict::Flooded) {
            let Switch {
                ports, deliveries, ..
            } = self;
            for d in deliveries.iter() {
                if let Some(p) = ports.get_mut(&d.port) {
                    p.counters.sent(d.edit.output_len(frame.len()));
                }
            }
        }
        Forward {
            verdict,
            deliveries: &self.deliveries,
        }
    }

    /// The decision, or the port to count the drop on and why.
    fn decide(
        &mut self,
        now_ms: u64,
        in_port: PortId,
        frame: &[u8],
    ) -> Result<Verdict, (PortId, DropReason)> {
        let drop = |reason| (in_port, reason);
        let eth = Ethernet::parse(frame).map_err(|_| drop(DropReason::Malformed))?;
        if !eth.src.is_unicast() {
            return Err(drop(DropReason::InvalidSourceMac));
        }
        let port = self
            .ports
            .get(&in_port)
            .ok_or(drop(DropReason::Malformed))?;
        let network_id = match &port.config {
            PortConfig::Uplink => {
                // A priority-only tag (VID 0) belongs to the untagged network (802.1Q).
                let vlan = eth.vlan.filter(|v| *v != 0);
                *self
                    .trunks
                    .get(&(in_port, vlan))
                    .ok_or(drop(DropReason::UnknownVlan))?
            }
            access => {
                if eth.vlan.is_some() {
                    return Err(drop(DropReason::TaggedOnAccessPort));
                }
                access.network().ok_or(drop(DropReason::Malformed))?
            }
        };
        let network = *self
            .networks
            .get(&network_id)
            .ok_or(drop(DropReason::Malformed))?;

        let locked_vif = match &port.config {
            PortConfig::Vif(vif) => {
                match EffectiveLocking::resolve(vif.locking_mode, network.default_locking_mode) {
                    EffectiveLocking::Disabled => return Err(drop(DropReason::PortDisabled)),
                    EffectiveLocking::Locked => Some(vif),
                    EffectiveLocking::Unlocked => None,
                }
            }
            _ => None,
        };
        if eth.untagged_len(frame.len()) - ETH_HEADER > usize::from(network.mtu) {
            return Err(drop(DropReason::Oversized));
        }
        if let Some(vif) = locked_vif {
            let identity = Identity {
                mac: vif.mac,
                ipv4_allowed: &vif.ipv4_allowed,
                ipv6_allowed: &vif.ipv6_allowed,
            };
            locking::check(identity, &eth, frame).map_err(drop)?;
        }

        match self.fdb.pinned_port(network_id, eth.src) {
            Some(holder) if holder != in_port => {
                return Err(drop(DropReason::PinnedMacConflict));
            }
            _ => {}
        }
        self.learn(network_id, eth.src, in_port, now_ms);

        let from_tagged = eth.vlan.is_some();
        if !eth.dst.is_multicast() {
            if let Some(out) =
                self.fdb
                    .lookup(network_id, eth.dst, now_ms, self.config.mac_ageing_ms)
            {
                if out == in_port {
                    return Err(drop(DropReason::DestinationOnSourcePort));
                }
                if self.is_disabled(out, &network) {
                    return Err((out, DropReason::PortDisabled));
                }
                let edit = self.edit_towards(out, &network, from_tagged);
                self.deliveries.push(Delivery { port: out, edit });
                return Ok(Verdict::Unicast);
            }
        }

        let limit = self.config.flood_limit;
        let budget_left = self
            .ports
            .get_mut(&in_port)
            .is_some_and(|p| p.flood.try_take(limit, now_ms));
        if !budget_left {
            return Err(drop(DropReason::FloodLimited));
        }
        let Switch {
            ports, deliveries, ..
        } = self;
        for (id, port) in ports.iter() {
            if *id == in_port {
                continue;
            }
            let on_network = match &port.config {
                PortConfig::Uplink => network.uplink == Some(*id),
                access => access.network() == Some(network_id),
            };
            if !on_network || port_disabled(&port.config, &network) {
                continue;
            }
            let edit = edit_towards(&port.config, &network, from_tagged);
            deliveries.push(Delivery { port: *id, edit });
        }
        Ok(Verdict::Flooded)
    }

    fn learn(&mut self, network: NetworkId, mac: MacAddr, port: PortId, now_ms: u64) {
        let limits = Limits {
            ageing_ms: self.config.mac_ageing_ms,
            max_macs: self.config.max_macs,
            max_macs_per_port: self.config.max_macs_per_port,
        };
        let outcome = self.fdb.learn(network, mac, port, now_ms, limits);
        if let Some(p) = self.ports.get_mut(&port) {
            let learning = &mut p.counters.learning;
            match outcome {
                Learned::RefusedPortLimit => learning.refused_port_limit += 1,
                Learned::RefusedTableFull => learning.refused_table_full += 1,
                Learned::Moved { .. } => learning.moves_in += 1,
                // Pinned elsewhere was refused before learning; new and refreshed need
                // no count.
                Learned::New | Learned::Refreshed | Learned::PinnedElsewhere => {}
            }
        }
    }

    fn is_disabled(&self, port: PortId, network: &NetworkConfig) -> bool {
        self.ports
            .get(&port)
            .is_none_or(|p| port_disabled(&p.config, network))
    }

    fn edit_towards(&self, port: PortId, network: &NetworkConfig, from_tagged: bool) -> FrameEdit {
        match self.ports.get(&port) {
            Some(p) => edit_towards(&p.config, network, from_tagged),
            None => FrameEdit::AsIs,
        }
    }
}

fn port_disabled(config: &PortConfig, network: &NetworkConfig) -> bool {
    match config {
        PortConfig::Vif(vif) => {
            EffectiveLocking::resolve(vif.locking_mode, network.default_locking_mode)
                == EffectiveLocking::Disabled
        }
        _ => false,
    }
}

/// Inside the switch frames are untagged; the uplink sees the network's VLAN tag.
fn edit_towards(config: &PortConfig, network: &NetworkConfig, from_tagged: bool) -> FrameEdit {
    match (config, network.vlan, from_tagged) {
        (PortConfig::Uplink, Some(vlan), false) => FrameEdit::PushTag(vlan),
        (PortConfig::Uplink, _, _) => FrameEdit::AsIs,
        (_, _, true) => FrameEdit::PopTag,
        (_, _, false) => FrameEdit::AsIs,
    }
}
