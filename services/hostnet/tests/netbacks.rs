//! The netbacks over the real xenstored, with netback's own fake netfront (its rings,
//! grants and channels in `FakeXen`): bridges become switch networks (the management
//! network taken over), a VIF's nodes and handshake, frames both ways between the guest and
//! the uplink with VLAN tags, filters, detach, and a destroyed domain's VIFs going.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

// netback's fake netfront, shared rather than copied.
#[path = "../../../drivers/netback/tests/common/mod.rs"]
mod common;

use common::{Frontend, Options, World, FE};
use keel_hostnet::netbacks::{Netbacks, VifsServiced};
use keel_hostnet::{Fabric, SharedFabric};
use keel_netback::{Config, XenbusState};
use keel_netdev::MAX_FRAME;
use keel_vswitch::{
    local_link, DropReason, LocalDevice, MacAddr, NetworkConfig, NetworkLockingMode, PortId,
    SwitchConfig,
};
use keel_xenapi::network_backend::{
    BridgeConfig, Mac, NetworkBackend, NetworkBackendError, TrafficFilter, Uplink, VifPort,
};
use keel_xenstored::{Access, Perm, Xenstored};

const HOST: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST: [u8; 6] = [0x00, 0x16, 0x3e, 0x11, 0x22, 0x33];
const OUTSIDE: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

struct Host {
    w: World,
    xs: Xenstored,
    fabric: SharedFabric,
    eth0: PortId,
    nbs: Netbacks,
    _stack: LocalDevice,
    now_ns: u64,
}

impl Host {
    fn new() -> Host {
        let fabric = Fabric::shared(SwitchConfig::default());
        let (stack, end) = local_link(HOST, 8).unwrap();
        let (eth0, mgmt) = {
            let mut f = fabric.borrow_mut();
            let eth0 = f.add_uplink(MAX_FRAME, 0).unwrap();
            let mgmt = f
                .add_network(NetworkConfig {
                    vlan: None,
                    mtu: 1500,
                    uplink: Some(eth0),
                    default_locking_mode: NetworkLockingMode::Unlocked,
                })
                .unwrap();
            f.add_local(mgmt, end, HOST, 0).unwrap();
            (eth0, mgmt)
        };
        let mut nbs = Netbacks::new(fabric.clone());
        nbs.add_uplink("eth0", eth0, Some(mgmt));
        let mut xs = Xenstored::new();
        xs.introduce_domain(FE, 1).unwrap();
        Host {
            w: World::new(),
            xs,
            fabric,
            eth0,
            nbs,
            _stack: stack,
            now_ns: 1_000_000,
        }
    }

    fn serve(&mut self) -> VifsServiced {
        self.now_ns += 1_000_000;
        let Host { w, xs, nbs, .. } = self;
        nbs.serve(&*w.fx, xs, &mut w.rings, &mut w.buffer, self.now_ns)
    }

    fn read(&mut self, path: &str) -> Option<String> {
        let c = self.xs.open_local();
        let v = self.xs.read(c, 0, path).ok();
        self.xs.close_local(c);
        v.map(|v| String::from_utf8(v).unwrap())
    }

    /// The fake netfront's nodes (written into its map by `setup`) go into xenstored, as
    /// the guest would write them, then its state.
    fn connect_frontend(&mut self, device: u32) -> Frontend {
        let config = Config::new(FE, device, keel_hostnet::netbacks::MAX_QUEUES);
        let fe = Frontend::setup(&mut self.w, &config, &Options::default());
        let c = self.xs.open_local();
        for (path, value) in &self.w.store.0 {
            self.xs.write(c, 0, path, value).unwrap();
        }
        self.xs
            .write(c, 0, &config.frontend_state_path(), b"4")
            .unwrap();
        self.xs.close_local(c);
        fe
    }

    fn uplink_out(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut f = self.fabric.borrow_mut();
        while f
            .send_next(self.eth0, |frame| {
                out.push(frame.to_vec());
                true
            })
            .is_some()
        {}
        out
    }
}

fn bridge(name: &str, vlan: Option<u16>) -> BridgeConfig {
    BridgeConfig {
        bridge: name.into(),
        mtu: 1500,
        uplink: Some(Uplink {
            device: "eth0".into(),
            vlan,
        }),
    }
}

fn vif(device: u32, bridge: &str, filter: TrafficFilter) -> VifPort {
    VifPort {
        domid: u32::from(FE),
        device,
        mac: Mac(GUEST),
        mtu: 1500,
        bridge: bridge.into(),
        filter,
        rate_limit_kbps: None,
        vif_uuid: "6f0c3b1e-0000-4000-8000-000000000001".into(),
    }
}

fn ipv4_frame(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&src_ip);
    f[30..34].copy_from_slice(&[10, 0, 2, 2]);
    f
}

fn tag(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut t = frame[..12].to_vec();
    t.extend_from_slice(&0x8100u16.to_be_bytes());
    t.extend_from_slice(&vid.to_be_bytes());
    t.extend_from_slice(&frame[12..]);
    t
}

#[test]
fn bridges_become_networks_and_the_management_network_is_taken_over() {
    let mut h = Host::new();
    let mgmt = h.fabric.borrow().switch().networks().next().unwrap().0;
    h.nbs.configure_bridge(&bridge("xenbr0", None)).unwrap();
    assert_eq!(h.nbs.bridge("xenbr0"), Some(mgmt));
    // Configuring it again changes it in place.
    h.nbs
        .configure_bridge(&BridgeConfig {
            mtu: 1400,
            ..bridge("xenbr0", None)
        })
        .unwrap();
    assert_eq!(h.fabric.borrow().switch().network(mgmt).unwrap().mtu, 1400);
    h.nbs.configure_bridge(&bridge("xapi1", Some(10))).unwrap();
    let vlan10 = h.nbs.bridge("xapi1").unwrap();
    assert_ne!(vlan10, mgmt);
    assert_eq!(
        h.fabric.borrow().switch().network(vlan10).unwrap().vlan,
        Some(10)
    );
    // A second untagged bridge on eth0 is refused by the switch (one untagged slot).
    assert!(matches!(
        h.nbs.configure_bridge(&bridge("xapi2", None)),
        Err(NetworkBackendError::Failed(_))
    ));
    assert_eq!(
        h.nbs.configure_bridge(&BridgeConfig {
            uplink: Some(Uplink {
                device: "eth9".into(),
                vlan: None
            }),
            ..bridge("xapi3", None)
        }),
        Err(NetworkBackendError::NoSuchDevice("eth9".into()))
    );
    // A VIF without an MTU of its own takes its network's.
    h.nbs
        .attach_vif(&VifPort {
            mtu: 0,
            ..vif(7, "xenbr0", TrafficFilter::Unlocked)
        })
        .unwrap();
    assert_eq!(h.nbs.netback(FE, 7).unwrap().config().mtu, 1400);
    // A private network.
    h.nbs
        .configure_bridge(&BridgeConfig {
            uplink: None,
            ..bridge("xapi4", None)
        })
        .unwrap();
    h.nbs.remove_bridge("xapi1").unwrap();
    assert_eq!(
        h.nbs.remove_bridge("xapi1"),
        Err(NetworkBackendError::NoSuchBridge("xapi1".into()))
    );
    // The management network holds Keel's own port: the switch refuses to remove it.
    assert!(h.nbs.remove_bridge("xenbr0").is_err());
    assert_eq!(
        h.nbs.attach_vif(&vif(0, "nope", TrafficFilter::Unlocked)),
        Err(NetworkBackendError::NoSuchBridge("nope".into()))
    );
}

#[test]
fn a_vif_connects_and_frames_flow_to_and_from_the_uplink() {
    let mut h = Host::new();
    h.nbs.configure_bridge(&bridge("xenbr0", None)).unwrap();
    h.nbs.configure_bridge(&bridge("xapi1", Some(10))).unwrap();
    h.nbs
        .attach_vif(&vif(0, "xapi1", TrafficFilter::Unlocked))
        .unwrap();
    assert!(h
        .nbs
        .attach_vif(&vif(0, "xapi1", TrafficFilter::Unlocked))
        .is_err());
    // The XenAPI's call only queued the xenstore side.
    assert_eq!(h.read("/local/domain/0/backend/vif/5/0/state"), None);
    let serviced = h.serve();
    assert!(serviced.failures.is_empty(), "{:?}", serviced.failures);
    let be = "/local/domain/0/backend/vif/5/0";
    let fe = "/local/domain/5/device/vif/0";
    assert_eq!(h.read(&format!("{be}/state")).as_deref(), Some("2"));
    assert_eq!(
        h.read(&format!("{be}/feature-rx-copy")).as_deref(),
        Some("1")
    );
    assert_eq!(h.read(&format!("{be}/bridge")).as_deref(), Some("xapi1"));
    assert_eq!(
        h.read(&format!("{fe}/mac")).as_deref(),
        Some("00:16:3e:11:22:33")
    );
    assert_eq!(h.read(&format!("{fe}/backend")).as_deref(), Some(be));
    let c = h.xs.open_local();
    assert_eq!(
        h.xs.get_perms(c, 0, fe).unwrap(),
        vec![Perm::new(FE, Access::None), Perm::new(0, Access::Read)]
    );
    assert_eq!(
        h.xs.get_perms(c, 0, be).unwrap(),
        vec![Perm::new(0, Access::None), Perm::new(FE, Access::Read)]
    );

    // The frontend connects (its state watch fires on the backends' connection).
    let mut front = h.connect_frontend(0);
    let serviced = h.serve();
    assert_eq!(
        h.nbs.netback(FE, 0).unwrap().state(),
        XenbusState::Connected,
        "{:?}",
        h.nbs.netback(FE, 0).unwrap().fault()
    );
    assert_eq!(h.read(&format!("{be}/state")).as_deref(), Some("4"));
    assert!(!serviced.ports.is_empty());

    // Guest → outside: tagged with VLAN 10 on the uplink.
    let out = ipv4_frame(OUTSIDE, GUEST, [10, 0, 2, 15], 100);
    front.send(&h.w, 0, &out, 0, &[], 4096, 0);
    h.serve();
    assert_eq!(front.tx_responses(0).len(), 1);
    assert_eq!(h.uplink_out(), vec![tag(&out, 10)]);

    // Outside → guest, tagged on the wire, untagged in the guest's buffer.
    let back = ipv4_frame(GUEST, OUTSIDE, [10, 0, 2, 2], 90);
    front.post_rx(&h.w, 0, 4);
    h.fabric.borrow_mut().ingress(5, h.eth0, &tag(&back, 10));
    h.serve();
    let rsps = front.rx_responses(0);
    assert_eq!(front.received(&h.w, &rsps), vec![back.clone()]);
    // Untagged (the management network) does not reach a VIF on VLAN 10.
    h.fabric.borrow_mut().ingress(6, h.eth0, &back);
    h.serve();
    assert!(front.rx_responses(0).is_empty());

    let counters = h.nbs.counters();
    let (_, vif_bytes) = counters.vifs[0];
    assert_eq!((vif_bytes.tx_bytes, vif_bytes.rx_bytes), (100, 90));
    assert_eq!(counters.pifs[0].0, "eth0");

    // Detach: the port goes at once; netback closes (backend Closing) at the next serve and
    // the nodes stay until the frontend has closed too.
    let port = h.nbs.switch_port(FE, 0).unwrap();
    h.nbs.detach_vif(u32::from(FE), 0, false).unwrap();
    assert!(h.fabric.borrow().switch().port(port).is_none());
    assert!(h.nbs.is_empty());
    h.serve();
    assert_eq!(h.read(&format!("{be}/state")).as_deref(), Some("5"));
    assert_eq!(h.nbs.closing(), 1);
    h.serve();
    assert_eq!(h.nbs.closing(), 1, "waits for the frontend");
    let c = h.xs.open_local();
    h.xs.write(c, 0, &format!("{fe}/state"), b"6").unwrap();
    h.serve();
    assert_eq!(h.read(&format!("{be}/state")), None);
    assert_eq!(h.read(&format!("{fe}/state")), None);
    assert_eq!(h.nbs.closing(), 0);
    assert_eq!(
        h.nbs.detach_vif(u32::from(FE), 0, true),
        Err(NetworkBackendError::NoSuchDomain(u32::from(FE)))
    );
}

#[test]
fn filters_apply_and_change_on_update() {
    let mut h = Host::new();
    h.nbs.configure_bridge(&bridge("xenbr0", None)).unwrap();
    let locked = TrafficFilter::Locked {
        ipv4: vec![[10, 0, 2, 15].into()],
        ipv6: vec![],
    };
    h.nbs.attach_vif(&vif(0, "xenbr0", locked)).unwrap();
    h.serve();
    let mut front = h.connect_frontend(0);
    h.serve();
    assert_eq!(
        h.nbs.netback(FE, 0).unwrap().state(),
        XenbusState::Connected
    );
    // Allowed source, then a spoofed one.
    front.send(
        &h.w,
        0,
        &ipv4_frame(OUTSIDE, GUEST, [10, 0, 2, 15], 80),
        0,
        &[],
        4096,
        0,
    );
    front.send(
        &h.w,
        0,
        &ipv4_frame(OUTSIDE, GUEST, [10, 0, 2, 99], 80),
        0,
        &[],
        4096,
        0,
    );
    h.serve();
    assert_eq!(h.uplink_out().len(), 1);
    let port = h.nbs.switch_port(FE, 0).unwrap();
    let drops = |h: &Host| {
        h.fabric
            .borrow()
            .switch()
            .counters(port)
            .unwrap()
            .drops
            .get(DropReason::SpoofedIp)
    };
    assert_eq!(drops(&h), 1);
    // Unlocked now: the same frame passes.
    h.nbs
        .update_vif(&vif(0, "xenbr0", TrafficFilter::Unlocked))
        .unwrap();
    front.send(
        &h.w,
        0,
        &ipv4_frame(OUTSIDE, GUEST, [10, 0, 2, 99], 80),
        0,
        &[],
        4096,
        0,
    );
    h.serve();
    assert_eq!(h.uplink_out().len(), 1);
    assert_eq!(drops(&h), 1);
    // Disabled: nothing.
    h.nbs
        .update_vif(&vif(0, "xenbr0", TrafficFilter::Disabled))
        .unwrap();
    front.send(
        &h.w,
        0,
        &ipv4_frame(OUTSIDE, GUEST, [10, 0, 2, 15], 80),
        0,
        &[],
        4096,
        0,
    );
    h.serve();
    assert!(h.uplink_out().is_empty());

    // Unplugged: the next serve reports the port's final counters once, drops included
    // (the kernel logs them; the spoofing test under Xen reads that line).
    h.nbs.detach_vif(u32::from(FE), 0, false).unwrap();
    let serviced = h.serve();
    assert_eq!(serviced.removed.len(), 1, "{:?}", serviced.removed);
    let gone = &serviced.removed[0];
    assert_eq!((gone.domid, gone.device), (FE, 0));
    assert_eq!(gone.switch.drops.get(DropReason::SpoofedIp), 1);
    assert_eq!(gone.switch.drops.get(DropReason::PortDisabled), 1);
    assert_eq!(gone.switch.rx_packets, 4);
    // netback handed all four to the switch; the switch dropped two.
    assert_eq!(gone.netback.from_guest_frames, 4);
    assert_eq!(gone.netback.from_guest_dropped, 0);
    assert!(h.serve().removed.is_empty());
}

#[test]
fn a_destroyed_domain_takes_its_vifs_with_it() {
    let mut h = Host::new();
    h.nbs.configure_bridge(&bridge("xenbr0", None)).unwrap();
    h.nbs
        .attach_vif(&vif(0, "xenbr0", TrafficFilter::Unlocked))
        .unwrap();
    h.nbs
        .attach_vif(&vif(1, "xenbr0", TrafficFilter::Unlocked))
        .unwrap();
    h.serve();
    let _front = h.connect_frontend(0);
    h.serve();
    assert_eq!(h.nbs.len(), 2);
    let ports: Vec<PortId> = [0, 1]
        .iter()
        .map(|d| h.nbs.switch_port(FE, *d).unwrap())
        .collect();
    // The toolstack destroys the domain; the XenAPI does not call detach_vif.
    h.xs.domain_destroyed(FE);
    h.serve();
    assert!(h.nbs.is_empty());
    for port in ports {
        assert!(h.fabric.borrow().switch().port(port).is_none());
    }
    assert_eq!(h.read("/local/domain/0/backend/vif/5/0/state"), None);
    assert_eq!(h.read("/local/domain/0/backend/vif/5/1/state"), None);
}

#[test]
fn a_detached_vif_whose_frontend_never_closes_goes_after_the_timeout() {
    let mut h = Host::new();
    h.nbs.configure_bridge(&bridge("xenbr0", None)).unwrap();
    h.nbs
        .attach_vif(&vif(0, "xenbr0", TrafficFilter::Unlocked))
        .unwrap();
    h.serve();
    let _front = h.connect_frontend(0);
    h.serve();
    assert_eq!(
        h.nbs.netback(FE, 0).unwrap().state(),
        XenbusState::Connected
    );
    h.nbs.detach_vif(u32::from(FE), 0, false).unwrap();
    let serviced = h.serve();
    let deadline = serviced
        .wake_at_ns
        .expect("serve asks to be called by the deadline");
    assert_eq!(h.nbs.closing(), 1);
    h.now_ns = deadline - 2_000_000;
    h.serve();
    assert_eq!(h.nbs.closing(), 1);
    h.now_ns = deadline;
    h.serve();
    assert_eq!(h.nbs.closing(), 0);
    assert_eq!(h.read("/local/domain/0/backend/vif/5/0/state"), None);

    // Unplugged and plugged again before the frontend closed: the old device goes without
    // waiting, the new one gets fresh nodes and connects.
    h.nbs
        .attach_vif(&vif(2, "xenbr0", TrafficFilter::Unlocked))
        .unwrap();
    h.serve();
    let _front = h.connect_frontend(2);
    h.serve();
    h.nbs.detach_vif(u32::from(FE), 2, false).unwrap();
    h.serve();
    assert_eq!(h.nbs.closing(), 1);
    assert_eq!(
        h.read("/local/domain/0/backend/vif/5/2/state").as_deref(),
        Some("5")
    );
    h.nbs
        .attach_vif(&vif(2, "xenbr0", TrafficFilter::Unlocked))
        .unwrap();
    h.serve();
    assert_eq!(h.nbs.closing(), 0);
    assert_eq!(
        h.read("/local/domain/0/backend/vif/5/2/state").as_deref(),
        Some("2"),
        "the new device's nodes survive the old one's removal"
    );
    assert_eq!(
        h.read("/local/domain/5/device/vif/2/backend").as_deref(),
        Some("/local/domain/0/backend/vif/5/2")
    );

    // Forced: no waiting at all.
    h.nbs
        .attach_vif(&vif(1, "xenbr0", TrafficFilter::Unlocked))
        .unwrap();
    h.serve();
    let _front = h.connect_frontend(1);
    h.serve();
    assert_eq!(
        h.nbs.netback(FE, 1).unwrap().state(),
        XenbusState::Connected
    );
    h.nbs.detach_vif(u32::from(FE), 1, true).unwrap();
    h.serve();
    assert_eq!(h.nbs.closing(), 0);
    assert_eq!(h.read("/local/domain/0/backend/vif/5/1/state"), None);
}
