//! The host's VIF backends: one [`Netback`] per guest VIF, each with its port on the
//! [`Fabric`], and the XenAPI's [`NetworkBackend`] over them (bridges are the switch's
//! networks).
//!
//! The XenAPI calls [`NetworkBackend`] from the management task, where xenstored (inside
//! the toolstack's host) is not at hand, so those calls change the switch at once (its
//! ports and networks are the fabric's) and only queue the xenstore side; [`Netbacks::serve`],
//! called by the guest task with xenstored lent, runs it: a new VIF's backend and frontend
//! nodes and netback's `start` (features, `InitWait`), the watch events of the backends' own
//! xenstored connection (the frontends' state, the `rate` node), each VIF's rings in both
//! directions through the fabric, and the closing of detached VIFs.
//!
//! A destroyed domain's VIFs go without a call (the XenAPI does not detach them then):
//! `serve` drops the VIFs of a domain xenstored no longer knows once it had known it.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use keel_netback::{
    Config, CopyBuffer, Env, FramePort, Full, NetStore, Netback, RateLimit, RingFrames, StoreError,
    VifCounters, XenbusState,
};
use keel_vswitch::{
    ConfigError, LockingMode, MacAddr, NetworkConfig, NetworkId, NetworkLockingMode, PortCounters,
    PortId, VifConfig,
};
use keel_xen::evtchn::Port;
use keel_xen::hypercall::Hypervisor;
use keel_xenapi::network_backend::{
    BridgeConfig, ByteCounters, NetworkBackend, NetworkBackendError, NetworkCounters,
    TrafficFilter, VifPort,
};
use keel_xenstored::{Access, LocalClient, Perm, Xenstored, XsError};

use crate::fabric::{FabricError, SharedFabric};

/// Queues each VIF offers its frontend (`multi-queue-max-queues`).
pub const MAX_QUEUES: u16 = 4;
/// Ethernet header: a VIF's frames are its MTU plus this.
const ETH_HLEN: usize = 14;

/// A physical NIC the bridges may name as their uplink.
#[derive(Debug, Clone, Copy)]
struct UplinkDevice {
    port: PortId,
    /// The untagged network the kernel made on it before the XenAPI ran (the management
    /// network, with Keel's own stack): the first bridge configured untagged on this
    /// device takes it over.
    untagged: Option<NetworkId>,
}

/// One VIF.
struct Vif {
    port: VifPort,
    switch_port: PortId,
    netback: Netback,
    /// Nodes written and `start` run (the XenAPI's call only queued it).
    started: bool,
    /// xenstored knew the domain at some `serve` (so its absence later means it is gone).
    domain_seen: bool,
    /// Set once the VIF is detached.
    detach: Option<Detach>,
}

/// A detached VIF on its way out.
#[derive(Debug, Clone, Copy)]
struct Detach {
    /// Do not wait for the frontend (`VIF.unplug_force`, a domain that is gone, a VIF that
    /// failed to start).
    force: bool,
    /// netback was closed (backend `Closing`) at this time; the VIF goes when the frontend
    /// has closed too, or [`DETACH_TIMEOUT_NS`] after.
    closed_at_ns: Option<u64>,
}

/// How long a detached VIF waits for its frontend to close before it goes anyway.
pub const DETACH_TIMEOUT_NS: u64 = 5_000_000_000;

/// What one [`Netbacks::serve`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VifsServiced {
    /// Work is left (a budget ran out, frames wait): call again soon.
    pub more: bool,
    /// Call again by then (ns) at the latest: a rate limit holds a packet back.
    pub wake_at_ns: Option<u64>,
    /// Every event channel of every VIF, for the kernel to route to the guest task.
    pub ports: Vec<Port>,
    /// VIFs that failed or were dropped since the last call: (domid, device, reason).
    pub failures: Vec<(u16, u32, String)>,
    /// VIFs taken off the switch since the last call, with their final counters.
    pub removed: Vec<RemovedVif>,
}

/// A VIF taken off the switch and what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedVif {
    pub domid: u16,
    pub device: u32,
    /// The switch's counters of its port: frames it sent and received, what the switch
    /// dropped and why (anti-spoofing, flood bound, a full queue toward it).
    pub switch: PortCounters,
    /// netback's: frames moved, and dropped on its side (a full queue toward a guest that
    /// posts too few receive buffers, a guest's bad packets).
    pub netback: VifCounters,
}

/// Every VIF backend of the host and the bridges they plug into.
pub struct Netbacks {
    fabric: SharedFabric,
    uplinks: BTreeMap<String, UplinkDevice>,
    bridges: BTreeMap<String, NetworkId>,
    vifs: BTreeMap<(u16, u32), Vif>,
    /// Detached VIFs whose netback still has to close and whose nodes have to go.
    detached: Vec<Vif>,
    /// Failures found outside `serve` (reported by the next one).
    failures: Vec<(u16, u32, String)>,
    /// VIFs taken off the switch, with their final counters (reported by the next `serve`).
    removed: Vec<RemovedVif>,
    /// The backends' own xenstored connection; opened at the first `serve`.
    client: Option<LocalClient>,
    /// The time of the last `serve` (switch ports added between calls learn from then).
    now_ns: u64,
}

/// The netbacks, shared by the XenAPI (through [`NetbacksHandle`]) and the guest task.
pub type SharedNetbacks = Rc<RefCell<Netbacks>>;

fn vif_token(domid: u16, device: u32) -> String {
    format!("vif/{domid}/{device}")
}

fn backend_path(domid: u16, device: u32) -> String {
    format!("/local/domain/0/backend/vif/{domid}/{device}")
}

fn frontend_path(domid: u16, device: u32) -> String {
    format!("/local/domain/{domid}/device/vif/{device}")
}

fn fabric_error(e: FabricError) -> NetworkBackendError {
    match e {
        FabricError::OutOfMemory => NetworkBackendError::Exhausted("memory for port queues".into()),
        FabricError::Config(ConfigError::UnknownPort(_) | ConfigError::UnknownNetwork(_)) => {
            NetworkBackendError::Failed(format!("{e:?}"))
        }
        other => NetworkBackendError::Failed(format!("{other:?}")),
    }
}

fn mtu16(mtu: u32) -> Result<u16, NetworkBackendError> {
    u16::try_from(mtu).map_err(|_| NetworkBackendError::Failed(format!("MTU {mtu} is too large")))
}

fn domid16(domid: u32) -> Result<u16, NetworkBackendError> {
    u16::try_from(domid).map_err(|_| NetworkBackendError::NoSuchDomain(domid))
}

/// The switch's port configuration of a VIF on `network`.
fn vif_config(port: &VifPort, network: NetworkId) -> VifConfig {
    let (locking_mode, ipv4_allowed, ipv6_allowed) = match &port.filter {
        TrafficFilter::Unlocked => (LockingMode::Unlocked, Vec::new(), Vec::new()),
        TrafficFilter::Disabled => (LockingMode::Disabled, Vec::new(), Vec::new()),
        TrafficFilter::Locked { ipv4, ipv6 } => (LockingMode::Locked, ipv4.clone(), ipv6.clone()),
    };
    VifConfig {
        network,
        mac: MacAddr(port.mac.0),
        locking_mode,
        ipv4_allowed,
        ipv6_allowed,
    }
}

fn rate(port: &VifPort) -> Option<RateLimit> {
    port.rate_limit_kbps.and_then(RateLimit::from_xapi_kbps)
}

impl Netbacks {
    pub fn new(fabric: SharedFabric) -> Self {
        Netbacks {
            fabric,
            uplinks: BTreeMap::new(),
            bridges: BTreeMap::new(),
            vifs: BTreeMap::new(),
            detached: Vec::new(),
            failures: Vec::new(),
            removed: Vec::new(),
            client: None,
            now_ns: 0,
        }
    }

    pub fn shared(fabric: SharedFabric) -> SharedNetbacks {
        Rc::new(RefCell::new(Netbacks::new(fabric)))
    }

    /// Names a NIC's uplink port `device` (`eth0`) for bridges to use; `untagged` is the
    /// network the kernel already runs on it untagged (the management network), which the
    /// first untagged bridge on `device` takes over.
    pub fn add_uplink(&mut self, device: &str, port: PortId, untagged: Option<NetworkId>) {
        self.uplinks
            .insert(String::from(device), UplinkDevice { port, untagged });
    }

    /// The fabric the VIFs are ports of.
    pub fn fabric(&self) -> &SharedFabric {
        &self.fabric
    }

    /// The switch network of `bridge`.
    pub fn bridge(&self, bridge: &str) -> Option<NetworkId> {
        self.bridges.get(bridge).copied()
    }

    /// VIFs attached (not counting detached ones still closing).
    pub fn len(&self) -> usize {
        self.vifs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vifs.is_empty()
    }

    /// The netback of `(domid, device)`, e.g. for its state and counters.
    pub fn netback(&self, domid: u16, device: u32) -> Option<&Netback> {
        self.vifs.get(&(domid, device)).map(|v| &v.netback)
    }

    /// The switch port of `(domid, device)`.
    pub fn switch_port(&self, domid: u16, device: u32) -> Option<PortId> {
        self.vifs.get(&(domid, device)).map(|v| v.switch_port)
    }

    /// netback's counters of every VIF.
    pub fn vif_counters(&self) -> impl Iterator<Item = ((u16, u32), VifCounters)> + '_ {
        self.vifs.iter().map(|(k, v)| (*k, v.netback.counters()))
    }

    /// The switch's byte counters of the uplinks and VIFs, for
    /// `XenApi::record_network_counters` (received and sent from the interface's side).
    pub fn counters(&self) -> NetworkCounters {
        let fabric = self.fabric.borrow();
        let switch = fabric.switch();
        let mut out = NetworkCounters::default();
        for (device, uplink) in &self.uplinks {
            if let Some(c) = switch.counters(uplink.port) {
                out.pifs.push((
                    device.clone(),
                    ByteCounters {
                        rx_bytes: c.rx_bytes,
                        tx_bytes: c.tx_bytes,
                    },
                ));
            }
        }
        for ((domid, device), vif) in &self.vifs {
            if let Some(c) = switch.counters(vif.switch_port) {
                // The switch's tx to the port is what the guest received.
                out.vifs.push((
                    (u32::from(*domid), *device),
                    ByteCounters {
                        rx_bytes: c.tx_bytes,
                        tx_bytes: c.rx_bytes,
                    },
                ));
            }
        }
        out
    }

    /// Takes the VIF off the switch at once and queues its closing; false if there is no
    /// such VIF.
    fn detach(&mut self, key: (u16, u32), force: bool) -> bool {
        let Some(mut vif) = self.vifs.remove(&key) else {
            return false;
        };
        let removed = self.fabric.borrow_mut().remove_port(vif.switch_port);
        // Only the report is lost if there is no room for it.
        if let Ok(switch) = removed {
            if self.removed.try_reserve(1).is_ok() {
                self.removed.push(RemovedVif {
                    domid: key.0,
                    device: key.1,
                    switch,
                    netback: vif.netback.counters(),
                });
            }
        }
        vif.detach = Some(Detach {
            force,
            closed_at_ns: None,
        });
        self.detached.push(vif);
        true
    }

    /// Detached VIFs still waiting for their frontend to close.
    pub fn closing(&self) -> usize {
        self.detached.len()
    }

    /// Serves every VIF: writes new ones' nodes and starts them, hands them their watch
    /// events, moves frames both ways, closes detached ones, and drops the VIFs of
    /// domains that are gone.
    pub fn serve<H, R, B>(
        &mut self,
        hv: &H,
        xenstored: &mut Xenstored,
        rings: &mut R,
        buffer: &mut B,
        now_ns: u64,
    ) -> VifsServiced
    where
        H: Hypervisor + ?Sized,
        R: RingFrames,
        B: CopyBuffer,
    {
        self.now_ns = now_ns;
        let now_ms = now_ns / 1_000_000;
        let client = *self.client.get_or_insert_with(|| xenstored.open_local());
        let mut out = VifsServiced {
            failures: core::mem::take(&mut self.failures),
            removed: core::mem::take(&mut self.removed),
            ..VifsServiced::default()
        };

        // Domains that are gone take their VIFs with them.
        let mut gone = Vec::new();
        for (key, vif) in &mut self.vifs {
            let known = xenstored.is_domain_introduced(key.0);
            if known {
                vif.domain_seen = true;
            } else if vif.domain_seen {
                gone.push(*key);
            }
        }
        for key in gone {
            self.detach(key, true);
        }

        // Detached VIFs: close netback (backend Closing), and once the frontend has closed
        // too (or will not), remove the nodes and the watches.
        for mut vif in core::mem::take(&mut self.detached) {
            let (domid, device) = (
                vif.netback.config().frontend_domid,
                vif.netback.config().devid,
            );
            let mut detach = vif.detach.unwrap_or(Detach {
                force: true,
                closed_at_ns: None,
            });
            let closed_at = match detach.closed_at_ns {
                Some(t) => t,
                None => {
                    if vif.started {
                        let mut store = DeviceStore { xenstored, client };
                        let mut env = Env {
                            hv,
                            store: &mut store,
                            rings: &mut *rings,
                            buffer: &mut *buffer,
                        };
                        vif.netback.close(&mut env);
                    }
                    detach.closed_at_ns = Some(now_ns);
                    now_ns
                }
            };
            let deadline = closed_at.saturating_add(DETACH_TIMEOUT_NS);
            let frontend_state = xenstored
                .read(client, 0, &vif.netback.config().frontend_state_path())
                .ok()
                .and_then(|v| core::str::from_utf8(&v).ok()?.trim().parse::<u32>().ok());
            // Closed, gone, or never started (Unknown/Initialising).
            let frontend_done = matches!(frontend_state, None | Some(0 | 1 | 6));
            if !(detach.force || !vif.started || frontend_done || now_ns >= deadline) {
                vif.detach = Some(detach);
                out.wake_at_ns = Some(out.wake_at_ns.map_or(deadline, |w| w.min(deadline)));
                self.detached.push(vif);
                continue;
            }
            if vif.started {
                let token = vif_token(domid, device);
                for path in vif.netback.watch_paths() {
                    let _ = xenstored.unwatch(client, &path, &token);
                }
            }
            for path in [backend_path(domid, device), frontend_path(domid, device)] {
                match xenstored.rm(client, 0, &path) {
                    Ok(()) | Err(XsError::ENOENT) => {}
                    Err(e) => out
                        .failures
                        .push((domid, device, format!("removing {path}: {e:?}"))),
                }
            }
        }

        // New VIFs: their nodes, then netback's features and InitWait.
        let mut failed = Vec::new();
        for (key, vif) in &mut self.vifs {
            if vif.started {
                continue;
            }
            vif.started = true;
            let result = write_nodes(xenstored, client, &vif.port, key.0).and_then(|()| {
                let mut store = DeviceStore { xenstored, client };
                let mut env = Env {
                    hv,
                    store: &mut store,
                    rings: &mut *rings,
                    buffer: &mut *buffer,
                };
                vif.netback
                    .start(&mut env)
                    .map_err(|e| format!("publishing the backend: {e:?}"))?;
                let token = vif_token(key.0, key.1);
                for path in vif.netback.watch_paths() {
                    xenstored
                        .watch(client, &path, &token)
                        .map_err(|e| format!("watching {path}: {e:?}"))?;
                }
                Ok(())
            });
            if let Err(reason) = result {
                failed.push((*key, reason));
            }
        }
        for (key, reason) in failed {
            out.failures.push((key.0, key.1, reason));
            self.detach(key, true);
            out.more = true;
        }

        // Watch events: (token, path) to the VIF the token names.
        let mut events: Vec<(String, String)> = Vec::new();
        while let Some(event) = xenstored.poll_event(client) {
            if events.try_reserve(1).is_ok() {
                events.push((event.token, event.path));
            }
        }
        for (key, vif) in &mut self.vifs {
            let token = vif_token(key.0, key.1);
            let mut store = DeviceStore { xenstored, client };
            let mut env = Env {
                hv,
                store: &mut store,
                rings: &mut *rings,
                buffer: &mut *buffer,
            };
            for (_, path) in events.iter().filter(|(t, _)| *t == token) {
                vif.netback.on_watch(&mut env, path, now_ns);
            }
            let was_faulted = vif.netback.fault().is_some();
            let mut fabric = self.fabric.borrow_mut();
            // Frames switched to the guest, then both rings.
            if vif.netback.state() == XenbusState::Connected {
                let netback = &mut vif.netback;
                while fabric
                    .send_next(vif.switch_port, |frame| netback.push_rx(frame).is_ok())
                    .is_some()
                {}
            }
            let mut port = SwitchPort {
                fabric: &mut fabric,
                port: vif.switch_port,
                now_ms,
            };
            let progress = vif.netback.poll(&mut env, now_ns, &mut port);
            out.more |= progress.more_work;
            if let Some(wake) = progress.wake_at_ns {
                out.wake_at_ns = Some(out.wake_at_ns.map_or(wake, |w| w.min(wake)));
            }
            if let (false, Some(fault)) = (was_faulted, vif.netback.fault()) {
                out.failures.push((key.0, key.1, format!("{fault:?}")));
            }
            out.ports.extend(vif.netback.local_ports());
        }
        out
    }
}

/// Writes a VIF's backend and frontend directories (libxl's keys and permissions;
/// ../shared/notes/pvh-guests.md §5), `state` last in each.
fn write_nodes(
    xenstored: &mut Xenstored,
    client: LocalClient,
    port: &VifPort,
    domid: u16,
) -> Result<(), String> {
    let backend = backend_path(domid, port.device);
    let frontend = frontend_path(domid, port.device);
    let fail = |path: &str, e: XsError| format!("writing {path}: {e:?}");
    let dirs = [
        (
            &backend,
            [Perm::new(0, Access::None), Perm::new(domid, Access::Read)],
        ),
        (
            &frontend,
            [Perm::new(domid, Access::None), Perm::new(0, Access::Read)],
        ),
    ];
    for (dir, perms) in &dirs {
        xenstored.mkdir(client, 0, dir).map_err(|e| fail(dir, e))?;
        xenstored
            .set_perms(client, 0, dir, perms)
            .map_err(|e| fail(dir, e))?;
    }
    let mac = format!("{}", port.mac);
    let device = format!("{}", port.device);
    let backend_values = [
        ("frontend", frontend.clone()),
        ("frontend-id", format!("{domid}")),
        ("online", String::from("1")),
        ("mac", mac.clone()),
        ("bridge", port.bridge.clone()),
        ("handle", device.clone()),
        ("type", String::from("vif")),
        ("vif-uuid", port.vif_uuid.clone()),
        ("state", String::from("1")),
    ];
    let frontend_values = [
        ("backend", backend.clone()),
        ("backend-id", String::from("0")),
        ("handle", device),
        ("mac", mac),
        ("mtu", format!("{}", port.mtu)),
        ("trusted", String::from("1")),
        ("state", String::from("1")),
    ];
    for (dir, values) in [
        (&backend, &backend_values[..]),
        (&frontend, &frontend_values[..]),
    ] {
        for (key, value) in values {
            let path = format!("{dir}/{key}");
            xenstored
                .write(client, 0, &path, value.as_bytes())
                .map_err(|e| fail(&path, e))?;
        }
    }
    Ok(())
}

impl NetworkBackend for Netbacks {
    fn configure_bridge(&mut self, config: &BridgeConfig) -> Result<(), NetworkBackendError> {
        let mtu = mtu16(config.mtu)?;
        let uplink = match &config.uplink {
            Some(u) => {
                let device = self
                    .uplinks
                    .get(&u.device)
                    .ok_or_else(|| NetworkBackendError::NoSuchDevice(u.device.clone()))?;
                Some((u.device.clone(), *device, u.vlan))
            }
            None => None,
        };
        let network = NetworkConfig {
            vlan: uplink.as_ref().and_then(|u| u.2),
            mtu,
            uplink: uplink.as_ref().map(|u| u.1.port),
            default_locking_mode: NetworkLockingMode::Unlocked,
        };
        let mut fabric = self.fabric.borrow_mut();
        if let Some(id) = self.bridges.get(&config.bridge) {
            return fabric
                .reconfigure_network(*id, network)
                .map_err(fabric_error);
        }
        // The kernel's management network becomes the first untagged bridge on its NIC.
        if let Some((
            device,
            UplinkDevice {
                untagged: Some(id), ..
            },
            None,
        )) = &uplink
        {
            let id = *id;
            if !self.bridges.values().any(|n| *n == id) {
                fabric
                    .reconfigure_network(id, network)
                    .map_err(fabric_error)?;
                self.bridges.insert(config.bridge.clone(), id);
                if let Some(u) = self.uplinks.get_mut(device) {
                    u.untagged = None;
                }
                return Ok(());
            }
        }
        let id = fabric.add_network(network).map_err(fabric_error)?;
        self.bridges.insert(config.bridge.clone(), id);
        Ok(())
    }

    fn remove_bridge(&mut self, bridge: &str) -> Result<(), NetworkBackendError> {
        let id = *self
            .bridges
            .get(bridge)
            .ok_or_else(|| NetworkBackendError::NoSuchBridge(bridge.into()))?;
        self.fabric
            .borrow_mut()
            .remove_network(id)
            .map_err(fabric_error)?;
        self.bridges.remove(bridge);
        Ok(())
    }

    fn attach_vif(&mut self, port: &VifPort) -> Result<(), NetworkBackendError> {
        let domid = domid16(port.domid)?;
        let key = (domid, port.device);
        if self.vifs.contains_key(&key) {
            return Err(NetworkBackendError::Failed(format!(
                "vif {} of domain {domid} is already attached",
                port.device
            )));
        }
        let network = self
            .bridge(&port.bridge)
            .ok_or_else(|| NetworkBackendError::NoSuchBridge(port.bridge.clone()))?;
        // Plugged again while the old device still waits for its frontend: the old one goes
        // at the next serve without waiting, before the new one's nodes are written (so its
        // removal cannot take them).
        for old in &mut self.detached {
            let config = old.netback.config();
            if (config.frontend_domid, config.devid) == key {
                if let Some(d) = old.detach.as_mut() {
                    d.force = true;
                }
            }
        }
        // No MTU of its own (0): the network's.
        let mtu = match port.mtu {
            0 => self
                .fabric
                .borrow()
                .switch()
                .network(network)
                .map_or(1500, |n| n.mtu),
            mtu => mtu16(mtu)?,
        };
        let max_frame = usize::from(mtu) + ETH_HLEN;
        let config = Config {
            mtu: usize::from(mtu),
            rate: rate(port),
            ..Config::new(domid, port.device, MAX_QUEUES)
        };
        let switch_port = self
            .fabric
            .borrow_mut()
            .add_vif(
                vif_config(port, network),
                max_frame,
                self.now_ns / 1_000_000,
            )
            .map_err(fabric_error)?;
        self.vifs.insert(
            key,
            Vif {
                port: port.clone(),
                switch_port,
                netback: Netback::new(config),
                started: false,
                domain_seen: false,
                detach: None,
            },
        );
        Ok(())
    }

    fn detach_vif(
        &mut self,
        domid: u32,
        device: u32,
        force: bool,
    ) -> Result<(), NetworkBackendError> {
        let key = (domid16(domid)?, device);
        if self.detach(key, force) {
            Ok(())
        } else {
            Err(NetworkBackendError::NoSuchDomain(domid))
        }
    }

    fn update_vif(&mut self, port: &VifPort) -> Result<(), NetworkBackendError> {
        let key = (domid16(port.domid)?, port.device);
        let network = self
            .bridge(&port.bridge)
            .ok_or_else(|| NetworkBackendError::NoSuchBridge(port.bridge.clone()))?;
        let vif = self
            .vifs
            .get_mut(&key)
            .ok_or(NetworkBackendError::NoSuchDomain(port.domid))?;
        self.fabric
            .borrow_mut()
            .reconfigure_vif(vif.switch_port, vif_config(port, network))
            .map_err(fabric_error)?;
        vif.netback.set_rate(rate(port), self.now_ns);
        vif.port = port.clone();
        Ok(())
    }
}

/// The XenAPI's handle on the shared netbacks (`Config.network`).
pub struct NetbacksHandle(pub SharedNetbacks);

impl NetworkBackend for NetbacksHandle {
    fn configure_bridge(&mut self, config: &BridgeConfig) -> Result<(), NetworkBackendError> {
        self.0.borrow_mut().configure_bridge(config)
    }

    fn remove_bridge(&mut self, bridge: &str) -> Result<(), NetworkBackendError> {
        self.0.borrow_mut().remove_bridge(bridge)
    }

    fn attach_vif(&mut self, port: &VifPort) -> Result<(), NetworkBackendError> {
        self.0.borrow_mut().attach_vif(port)
    }

    fn detach_vif(
        &mut self,
        domid: u32,
        device: u32,
        force: bool,
    ) -> Result<(), NetworkBackendError> {
        self.0.borrow_mut().detach_vif(domid, device, force)
    }

    fn update_vif(&mut self, port: &VifPort) -> Result<(), NetworkBackendError> {
        self.0.borrow_mut().update_vif(port)
    }
}

/// A VIF's frames from the guest go into the switch.
struct SwitchPort<'a> {
    fabric: &'a mut crate::fabric::Fabric,
    port: PortId,
    now_ms: u64,
}

impl FramePort for SwitchPort<'_> {
    fn deliver(&mut self, frame: &[u8]) -> Result<(), Full> {
        // The switch decides and counts; a frame it drops is not the guest's error.
        self.fabric.ingress(self.now_ms, self.port, frame);
        Ok(())
    }
}

/// netback's xenstore over the backends' own privileged xenstored connection.
struct DeviceStore<'a> {
    xenstored: &'a mut Xenstored,
    client: LocalClient,
}

impl NetStore for DeviceStore<'_> {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.xenstored.read(self.client, 0, path) {
            Ok(v) => Ok(Some(v)),
            Err(XsError::ENOENT) => Ok(None),
            Err(_) => Err(StoreError),
        }
    }

    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError> {
        self.xenstored
            .write(self.client, 0, path, value)
            .map_err(|_| StoreError)
    }
}
