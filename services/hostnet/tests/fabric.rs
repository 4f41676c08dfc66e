//! The fabric: frames switched into the right ports' outputs with their tag edits, full
//! outputs counted, the management stack's link pumped, ports removed with their queues.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use keel_hostnet::{Fabric, FabricError, UPLINK_QUEUE, VIF_QUEUE};
use keel_netdev::{NetDevice, MAX_FRAME};
use keel_vswitch::{
    local_link, DropReason, LockingMode, MacAddr, NetworkConfig, NetworkLockingMode, SwitchConfig,
    Verdict, VifConfig,
};

const HOST: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST: MacAddr = MacAddr([0x00, 0x16, 0x3e, 0, 0, 1]);
const OUTSIDE: MacAddr = MacAddr([0x52, 0x55, 10, 0, 2, 2]);

fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn tagged(dst: MacAddr, src: MacAddr, vid: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    f[14..16].copy_from_slice(&vid.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn network(uplink: Option<keel_vswitch::PortId>, vlan: Option<u16>) -> NetworkConfig {
    NetworkConfig {
        vlan,
        mtu: 1500,
        uplink,
        default_locking_mode: NetworkLockingMode::Unlocked,
    }
}

fn vif(network: keel_vswitch::NetworkId, mac: MacAddr) -> VifConfig {
    VifConfig {
        network,
        mac,
        locking_mode: LockingMode::Unlocked,
        ipv4_allowed: vec![],
        ipv6_allowed: vec![],
    }
}

fn take(fabric: &mut Fabric, port: keel_vswitch::PortId) -> Option<Vec<u8>> {
    let mut out = None;
    fabric.send_next(port, |f| {
        out = Some(f.to_vec());
        true
    })?;
    out
}

#[test]
fn uplink_local_and_vif_exchange_frames_with_tags() {
    let mut fabric = Fabric::new(SwitchConfig::default());
    let eth0 = fabric.add_uplink(MAX_FRAME, 0).unwrap();
    let mgmt = fabric.add_network(network(Some(eth0), None)).unwrap();
    let tenant = fabric.add_network(network(Some(eth0), Some(10))).unwrap();
    let (mut stack, end) = local_link(HOST, 8).unwrap();
    let local = fabric.add_local(mgmt, end, HOST, 0).unwrap();
    let guest = fabric.add_vif(vif(tenant, GUEST), MAX_FRAME, 0).unwrap();

    // The outside answers the host: only the stack gets it.
    let reply = frame(HOST, OUTSIDE, 60);
    fabric.ingress(1, eth0, &reply);
    // Unknown destination: flooded to the management network's ports (the stack).
    let mut buf = [0u8; MAX_FRAME];
    assert_eq!(stack.receive(&mut buf).unwrap(), Some(60));
    assert_eq!(&buf[..60], &reply[..]);
    assert_eq!(fabric.pending(guest), 0);
    assert!(!fabric.take_guest_frames(), "nothing went to a guest");
    assert!(
        fabric.take_host_frames(),
        "a frame handed to the stack wakes the network task"
    );

    // The stack sends: the pump switches it to the uplink, untagged.
    stack.transmit(&frame(OUTSIDE, HOST, 80)).unwrap();
    assert_eq!(fabric.pump_local(2), 1);
    assert_eq!(fabric.pending(local), 0);
    let out = take(&mut fabric, eth0).unwrap();
    assert_eq!(out, frame(OUTSIDE, HOST, 80));

    // The guest on VLAN 10 sends out: tagged on the uplink.
    assert!(
        fabric.take_host_frames(),
        "the stack's frame for the uplink"
    );
    assert!(!fabric.take_host_frames(), "told once");
    let v = fabric.ingress(3, guest, &frame(OUTSIDE, GUEST, 64));
    assert!(matches!(v, Verdict::Flooded | Verdict::Unicast), "{v:?}");
    assert!(
        fabric.take_host_frames(),
        "a guest's frame for the uplink wakes the network task"
    );
    let out = take(&mut fabric, eth0).unwrap();
    assert_eq!(out, tagged(OUTSIDE, GUEST, 10, 68));
    assert!(
        !fabric.take_guest_frames(),
        "a frame for the uplink wakes no guest"
    );
    // The answer comes back tagged and reaches the guest untagged, not the stack.
    fabric.ingress(4, eth0, &tagged(GUEST, OUTSIDE, 10, 68));
    assert!(
        fabric.take_guest_frames(),
        "a frame queued for a VIF is told once"
    );
    assert!(!fabric.take_guest_frames());
    assert!(
        !fabric.take_host_frames(),
        "a frame for a guest wakes no host task"
    );
    assert_eq!(take(&mut fabric, guest).unwrap(), frame(GUEST, OUTSIDE, 64));
    assert_eq!(stack.receive(&mut buf).unwrap(), None);
    // Nothing left anywhere.
    assert_eq!(take(&mut fabric, eth0), None);
    assert_eq!(take(&mut fabric, guest), None);
}

#[test]
fn a_full_output_drops_and_counts_only_that_copy() {
    let mut fabric = Fabric::new(SwitchConfig::default());
    let eth0 = fabric.add_uplink(MAX_FRAME, 0).unwrap();
    let mgmt = fabric.add_network(network(Some(eth0), None)).unwrap();
    let guest = fabric.add_vif(vif(mgmt, GUEST), MAX_FRAME, 0).unwrap();
    // Teach the switch where the guest is, then send it more than its queue holds.
    fabric.ingress(0, guest, &frame(OUTSIDE, GUEST, 60));
    assert_eq!(fabric.pending(eth0), 1);
    for i in 0..VIF_QUEUE + 5 {
        fabric.ingress(1 + i as u64, eth0, &frame(GUEST, OUTSIDE, 60));
    }
    assert_eq!(fabric.pending(guest), VIF_QUEUE);
    let counters = fabric.switch().counters(guest).unwrap();
    assert_eq!(counters.drops.get(DropReason::EgressQueueFull), 5);
    // The switch counts what it handed the port; the refused copies are counted as drops.
    assert_eq!(counters.tx_packets, VIF_QUEUE as u64 + 5);
    // Draining makes room again.
    assert!(take(&mut fabric, guest).is_some());
    fabric.ingress(100, eth0, &frame(GUEST, OUTSIDE, 60));
    assert_eq!(fabric.pending(guest), VIF_QUEUE);
    // A frame the device refuses is dropped and counted on its port.
    assert_eq!(fabric.send_next(eth0, |_| false), Some(false));
    assert_eq!(
        fabric
            .switch()
            .counters(eth0)
            .unwrap()
            .drops
            .get(DropReason::EgressQueueFull),
        1
    );
    assert_eq!(fabric.pending(eth0), 0);
}

#[test]
fn the_uplink_queue_is_bounded_and_removal_forgets_a_port() {
    let mut fabric = Fabric::new(SwitchConfig::default());
    let eth0 = fabric.add_uplink(MAX_FRAME, 0).unwrap();
    let mgmt = fabric.add_network(network(Some(eth0), None)).unwrap();
    let guest = fabric.add_vif(vif(mgmt, GUEST), MAX_FRAME, 0).unwrap();
    fabric.ingress(0, eth0, &frame(GUEST, OUTSIDE, 60));
    for i in 0..UPLINK_QUEUE + 1 {
        fabric.ingress(i as u64, guest, &frame(OUTSIDE, GUEST, 60));
    }
    assert_eq!(fabric.pending(eth0), UPLINK_QUEUE);
    let final_counters = fabric.remove_port(guest).unwrap();
    assert_eq!(final_counters.rx_packets, UPLINK_QUEUE as u64 + 1);
    assert_eq!(fabric.pending(guest), 0);
    assert_eq!(take(&mut fabric, guest), None);
    assert!(matches!(
        fabric.remove_port(guest),
        Err(FabricError::Config(_))
    ));
    // Frames for the gone guest's MAC no longer go to it.
    fabric.ingress(1000, eth0, &frame(GUEST, OUTSIDE, 60));
    assert_eq!(fabric.pending(guest), 0);
}

#[test]
fn one_local_port_and_ageing_runs_on_its_interval() {
    let mut fabric = Fabric::new(SwitchConfig {
        mac_ageing_ms: 1_000,
        ..SwitchConfig::default()
    });
    let eth0 = fabric.add_uplink(MAX_FRAME, 0).unwrap();
    let mgmt = fabric.add_network(network(Some(eth0), None)).unwrap();
    let (_stack, end) = local_link(HOST, 4).unwrap();
    fabric.add_local(mgmt, end.clone(), HOST, 0).unwrap();
    assert_eq!(
        fabric.add_local(mgmt, end, HOST, 0),
        Err(FabricError::LocalPortTaken)
    );
    fabric.ingress(0, eth0, &frame(HOST, OUTSIDE, 60));
    assert_eq!(fabric.switch().learned_macs(), 1);
    assert!(!fabric.maintain(2_000));
    assert_eq!(fabric.switch().learned_macs(), 1);
    assert!(fabric.maintain(keel_hostnet::AGE_INTERVAL_MS));
    assert_eq!(fabric.switch().learned_macs(), 0);
    assert!(!fabric.maintain(keel_hostnet::AGE_INTERVAL_MS + 1));
}
