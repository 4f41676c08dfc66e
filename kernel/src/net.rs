//! Wiring of the management network: the first virtio-net NIC (or else the first Intel NIC,
//! `net/e1000.rs`) as the virtual switch's uplink (`net/switch.rs`), a `keel-net` stack on
//! the switch's local port, and the task that drives both.
//!
//! Pacing: neither driver configures MSI-X vectors and legacy INTx routing needs the
//! DSDT's AML `_PRT`, which Keel does not interpret, so the NIC is polled. The task polls
//! again at once while there is traffic; otherwise it sleeps until smoltcp's next timer or
//! `keel_net::IdlePoll`'s period, whichever is sooner: 1 ms while frames flow, growing with
//! the quiet to at most 16 ms (a frame after `T` of quiet waits at most `T / 4`). Under Xen
//! the guest task wakes it at once for frames guests switched to the uplink or the stack and
//! for reports the XenAPI must apply. In between the CPU halts.

use core::future::poll_fn;

use keel_cmdline::Config;
use keel_executor::{yield_now, Handle, Signal};
use keel_management::ManagementServer;
use keel_net::{Addressing, IdlePoll, NetEvent, NetStack};
use keel_netdev::NetDevice;
use keel_pci::{DeviceKind, Function};
use keel_virtio::VirtioNet;
use keel_vswitch::LocalDevice;
use keel_xenapi::network_backend::{IpConfigurationMode, Mac, ManagementInterface, NicIdentity};
use keel_xenapi::HostFacts;

use crate::dma::KeelHal;
use crate::pci::PciConfig;
use crate::platform::xen::guests::GuestService;
use crate::platform::xen::vifs::Vifs;
use crate::storage::SharedRepositories;

mod e1000;
pub mod switch;

use switch::Uplink;

/// The management NIC's name in the XenAPI (`PIF.device`).
const MANAGEMENT_DEVICE: &str = "eth0";

/// How often the switch's counters go to the XenAPI (`PIF_metrics`, `VIF_metrics`).
const COUNTERS_INTERVAL_MS: u64 = 5_000;

/// Brings up the management NIC, if there is one, with the management API on it: the first
/// virtio-net NIC, or else the first Intel NIC `keel-e1000` drives. Returns the signal set
/// once the NIC has an address and the API listens.
// The services the XenAPI serves (guests, storage, metering) are passed through to it.
#[allow(clippy::too_many_arguments)]
pub fn start(
    handle: &Handle,
    pci: &'static PciConfig,
    functions: &[Function],
    config: &Config<'static>,
    facts: HostFacts,
    guests: Option<GuestService>,
    storage: Option<SharedRepositories>,
    metering: crate::metering::MeteringService,
) -> Option<Signal> {
    if let Some(function) = functions.iter().find(|f| f.kind == DeviceKind::VirtioNet) {
        let device = open_virtio(pci, function)?;
        return launch(
            handle,
            device,
            "virtio-net",
            function,
            config,
            facts,
            guests,
            storage,
            metering,
        );
    }
    let (function, model) = e1000::find(functions)?;
    let device = e1000::open(pci, function, model)?;
    let name = model.driver_name();
    log::info!(
        "net: {name} ({}) at {} link {}",
        model.name(),
        function.address,
        match device.speed_mbps() {
            Some(mbps) => alloc::format!("up, {mbps} Mb/s"),
            None => alloc::string::String::from("down"),
        }
    );
    launch(
        handle, device, name, function, config, facts, guests, storage, metering,
    )
}

fn open_virtio(pci: &'static PciConfig, function: &Function) -> Option<VirtioNet<KeelHal>> {
    let transport = match keel_virtio::open_transport::<KeelHal>(pci, function.address) {
        Ok(t) => t,
        Err(e) => {
            log::error!("net: {} unusable: {e}", function.address);
            return None;
        }
    };
    match VirtioNet::<KeelHal>::new(transport) {
        Ok(d) => Some(d),
        Err(e) => {
            log::error!(
                "net: virtio-net at {} failed to start: {e:?}",
                function.address
            );
            None
        }
    }
}

/// Runs a `keel-net` stack and the management API on a started NIC.
// The services the XenAPI serves (guests, storage) are passed through to it.
#[allow(clippy::too_many_arguments)]
fn launch<D: NetDevice + 'static>(
    handle: &Handle,
    device: D,
    name: &str,
    function: &Function,
    config: &Config<'static>,
    facts: HostFacts,
    guests: Option<GuestService>,
    storage: Option<SharedRepositories>,
    metering: crate::metering::MeteringService,
) -> Option<Signal> {
    let addressing = match config.ip {
        Some((address, prefix_len)) => Addressing::Static {
            address,
            prefix_len,
            gateway: config.gateway,
        },
        None => Addressing::Dhcp,
    };
    let now_ms = handle.now_ns() / 1_000_000;
    // Under Xen the switch is the guests' (their VIFs are its other ports).
    let vifs = guests.as_ref().and_then(|g| g.vifs.clone());
    let fabric = match &vifs {
        Some(v) => v.fabric(),
        None => switch::new_fabric(),
    };
    let attached = match switch::attach(&fabric, device, now_ms) {
        Ok(a) => a,
        Err(e) => {
            log::error!("net: {name} cannot join the switch: {e:?}");
            return None;
        }
    };
    if let Some(v) = &vifs {
        // Bridges name the NIC `eth0` (the management PIF's device); the management
        // network becomes the first untagged bridge on it.
        v.netbacks().borrow_mut().add_uplink(
            MANAGEMENT_DEVICE,
            attached.uplink_port,
            Some(attached.management),
        );
    }
    let uplink = attached.uplink;
    let mut stack = NetStack::new(attached.local, addressing, now_ms, crate::arch::rdtsc());
    let mut server = crate::api::start_server(
        config,
        facts.clone(),
        guests.as_ref(),
        storage.as_ref(),
        stack.sockets(),
    );
    if let (Some(server), Some(guests)) = (server.as_mut(), guests.as_ref()) {
        server.set_consoles(guests.consoles());
    }
    if let Some(server) = server.as_mut() {
        server.set_metering(metering.access());
        server.api().set_metering(metering.view());
    }
    let mac = stack.mac_address();
    let reporting = Reporting {
        iface: management_interface(mac, function, config.ip.is_some()),
        vifs,
        next_counters_ms: now_ms + COUNTERS_INTERVAL_MS,
    };
    if let Some(server) = server.as_mut() {
        server
            .api()
            .update_management_interface(&reporting.iface, crate::rtc::now());
    }
    log::info!(
        "net: {name} at {} MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, {}",
        function.address,
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        if config.ip.is_some() {
            "static address"
        } else {
            "DHCP"
        }
    );
    let up = Signal::new();
    handle.spawn(drive(
        handle.clone(),
        uplink,
        stack,
        server,
        reporting,
        guests,
        facts,
        metering,
        up.clone(),
    ));
    Some(up)
}

#[allow(clippy::too_many_arguments)]
async fn drive<D: NetDevice>(
    handle: Handle,
    mut uplink: Uplink<D>,
    mut stack: NetStack<LocalDevice>,
    mut server: Option<ManagementServer>,
    mut reporting: Reporting,
    guests: Option<GuestService>,
    mut facts: HostFacts,
    metering: crate::metering::MeteringService,
    up: Signal,
) {
    let mut next_wait_report_ms = 10_000;
    // Keel polls its NICs: the poll backs off while nothing moves (an idle dom0 woken every
    // millisecond spent ~55 % of its vCPU on it under Xen), and the guest task wakes this
    // task for what guests hand it.
    let mut idle_poll = IdlePoll::new(handle.now_ns() / 1_000_000);
    let host_wake = guests.as_ref().map(|g| g.host_wake().clone());
    loop {
        let now_ms = handle.now_ns() / 1_000_000;
        // What the NIC brought reaches the stack in this round, and what the stack sent
        // leaves in it.
        let mut busy = uplink.poll(now_ms);
        busy |= match server.as_mut() {
            // The listener is refilled before every frame: a burst of connects all find a
            // listening socket instead of a reset (keel-net's TcpListener).
            Some(server) => stack.poll_with(now_ms, |sockets| {
                server.accept(sockets);
            }),
            None => stack.poll(now_ms),
        };
        if let (Some(server), Some(guests)) = (server.as_mut(), guests.as_ref()) {
            // Guests that acknowledged a shutdown or exited: the XenAPI applies their
            // actions and answers the calls waiting for them.
            busy |= guests.deliver_reports(server.api(), crate::rtc::now());
        }
        if let Some(server) = server.as_mut() {
            busy |= crate::storage::hostdb::start_auto_poweron_when_ready(server.api());
            busy |= metering.sync(server.api(), crate::rtc::now());
            if server.poll(stack.sockets(), now_ms, crate::rtc::now()) {
                // Send what the server just queued without waiting for the next round. Frames
                // that arrived meanwhile are taken in too, so the listener is refilled before
                // each of them here as well: a plain poll would reset a burst of SYNs.
                stack.poll_with(now_ms, |sockets| {
                    server.accept(sockets);
                });
                busy = true;
            }
        }
        busy |= uplink.poll(now_ms);
        busy |= uplink.pending() > 0;
        if let Some(vifs) = &reporting.vifs {
            vifs.kick_if_frames_for_guests();
            // Frames for the NIC or the stack flagged so far were switched by this task (or
            // by the guest task before this round) and are moved or still pending (`busy`):
            // clear the flag so the guest task wakes this task only for frames it adds.
            vifs.take_host_frames();
        }
        match stack.take_event() {
            Some(NetEvent::Configured(c)) => {
                match c.gateway {
                    Some(gw) => log::info!("net: address {}/{} via {gw}", c.address, c.prefix_len),
                    None => log::info!("net: address {}/{}", c.address, c.prefix_len),
                }
                if let Some(server) = server.as_mut() {
                    facts.address = alloc::format!("{}", c.address);
                    server.api().update_host_facts(&facts, crate::rtc::now());
                    reporting.iface.ipv4 = Some((c.address, c.prefix_len));
                    reporting.iface.gateway = c.gateway;
                    server
                        .api()
                        .update_management_interface(&reporting.iface, crate::rtc::now());
                }
                up.set();
            }
            Some(NetEvent::Deconfigured) => log::warn!("net: lease lost; no address"),
            None => {}
        }
        if let (Some(server), Some(vifs)) = (server.as_mut(), reporting.vifs.as_ref()) {
            if now_ms >= reporting.next_counters_ms {
                reporting.next_counters_ms = now_ms + COUNTERS_INTERVAL_MS;
                let counters = vifs.netbacks().borrow().counters();
                server
                    .api()
                    .record_network_counters(&counters, crate::rtc::now());
            }
        }
        if !up.is_set() && now_ms >= next_wait_report_ms {
            log::warn!(
                "net: no address yet after {} s (waiting for DHCP)",
                now_ms / 1000
            );
            next_wait_report_ms += 10_000;
        }
        if busy {
            idle_poll.activity(now_ms);
            yield_now().await;
            continue;
        }
        let delay_ns = stack
            .poll_delay_ms(now_ms)
            .unwrap_or(u64::MAX)
            .min(idle_poll.delay_ms(now_ms))
            .saturating_mul(1_000_000);
        match &host_wake {
            Some(wake) => {
                let woken = poll_fn(|cx| wake.poll_kicked(cx));
                let _ = handle.timeout(delay_ns, woken).await;
            }
            None => handle.sleep(delay_ns).await,
        }
    }
}

/// What the network task reports to the XenAPI: the management interface (at boot and on
/// each lease) and, under Xen, the switch's counters every [`COUNTERS_INTERVAL_MS`].
struct Reporting {
    iface: ManagementInterface,
    vifs: Option<Vifs>,
    next_counters_ms: u64,
}

/// The management interface before it has an address.
fn management_interface(mac: [u8; 6], function: &Function, static_ip: bool) -> ManagementInterface {
    ManagementInterface {
        device: alloc::string::String::from(MANAGEMENT_DEVICE),
        mac: Mac(mac),
        mtu: 1500,
        mode: if static_ip {
            IpConfigurationMode::Static
        } else {
            IpConfigurationMode::Dhcp
        },
        ipv4: None,
        gateway: None,
        dns: alloc::vec::Vec::new(),
        nic: NicIdentity {
            vendor_id: function.vendor_id,
            device_id: function.device_id,
            pci_bus_path: alloc::format!("0000:{}", function.address),
            carrier: true,
            ..NicIdentity::default()
        },
    }
}
