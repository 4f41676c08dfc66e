//! The switch as a whole: learning, ageing, VLAN isolation and tagging on the uplink,
//! locking modes against spoofed MAC/IP/ARP/NDP, flood bounding, MTU, table limits.

// The fixtures below are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use keel_vswitch::wire::Ethernet;
use keel_vswitch::*;

// ---- frame builders ----

fn mac(n: u8) -> MacAddr {
    MacAddr([0x00, 0x16, 0x3e, 0, 0, n])
}

fn eth(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn tag(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// An IPv4 UDP packet from `src` (not DHCP) padded to `len` payload bytes.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x13, 0x88, 0x00, 0x35]); // 5000 → 53
    p.resize(len.max(24), 0);
    p
}

fn dhcp_discover() -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 1, 0x10, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
    ];
    p.extend_from_slice(&[0, 68, 0, 67, 0, 0, 0, 0]);
    p.resize(272, 0);
    p
}

fn arp(op: u16, sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha.0);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&tpa.octets());
    p
}

fn ipv6(src: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 255]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(l4);
    p
}

fn neighbour_advertisement(target: Ipv6Addr) -> Vec<u8> {
    let mut p = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    p.extend_from_slice(&target.octets());
    p
}

fn neighbour_solicitation(target: Ipv6Addr, sll: MacAddr) -> Vec<u8> {
    let mut p = vec![135, 0, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&target.octets());
    p.extend_from_slice(&[1, 1]);
    p.extend_from_slice(&sll.0);
    p
}

const IPV4: u16 = 0x0800;
const ARP: u16 = 0x0806;
const IPV6: u16 = 0x86dd;
const BCAST: MacAddr = MacAddr::BROADCAST;

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

fn ip6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n)
}

/// A small unicast frame from `src` to `dst`.
fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    eth(dst, src, IPV4, &ipv4(ip(100), ip(101), 46))
}

// ---- switch fixtures ----

fn network(vlan: Option<u16>, uplink: Option<PortId>) -> NetworkConfig {
    NetworkConfig {
        vlan,
        mtu: 1500,
        uplink,
        default_locking_mode: NetworkLockingMode::Unlocked,
    }
}

fn vif(network: NetworkId, mac: MacAddr, locking_mode: LockingMode) -> PortConfig {
    PortConfig::Vif(VifConfig {
        network,
        mac,
        locking_mode,
        ipv4_allowed: Vec::new(),
        ipv6_allowed: Vec::new(),
    })
}

fn locked_vif(network: NetworkId, mac: MacAddr, v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> PortConfig {
    PortConfig::Vif(VifConfig {
        network,
        mac,
        locking_mode: LockingMode::Locked,
        ipv4_allowed: v4.to_vec(),
        ipv6_allowed: v6.to_vec(),
    })
}

/// The set of (port, edit) a frame went to, in port order.
fn sent(sw: &mut Switch, now: u64, port: PortId, f: &[u8]) -> (Verdict, Vec<(PortId, FrameEdit)>) {
    let fwd = sw.ingress(now, port, f);
    let mut to: Vec<_> = fwd.deliveries.iter().map(|d| (d.port, d.edit)).collect();
    to.sort_by_key(|(p, _)| *p);
    (fwd.verdict, to)
}

fn drops(sw: &Switch, port: PortId, reason: DropReason) -> u64 {
    sw.counters(port).unwrap().drops.get(reason)
}

/// One uplink, an untagged network on it with three unlocked VIFs.
struct Flat {
    sw: Switch,
    uplink: PortId,
    net: NetworkId,
    a: PortId,
    b: PortId,
    c: PortId,
}

fn flat(config: SwitchConfig) -> Flat {
    let mut sw = Switch::new(config);
    let uplink = sw.add_port(PortConfig::Uplink, 0).unwrap();
    let net = sw.add_network(network(None, Some(uplink))).unwrap();
    let a = sw
        .add_port(vif(net, mac(1), LockingMode::Unlocked), 0)
        .unwrap();
    let b = sw
        .add_port(vif(net, mac(2), LockingMode::Unlocked), 0)
        .unwrap();
    let c = sw
        .add_port(vif(net, mac(3), LockingMode::Unlocked), 0)
        .unwrap();
    Flat {
        sw,
        uplink,
        net,
        a,
        b,
        c,
    }
}

// ---- learning and ageing ----

#[test]
fn unknown_destinations_flood_then_learned_ones_go_straight() {
    let Flat {
        mut sw,
        uplink,
        net,
        a,
        b,
        c,
    } = flat(SwitchConfig::default());
    let as_is = FrameEdit::AsIs;
    // a → b, b unknown: flooded to every other port, a learned.
    let (v, to) = sent(&mut sw, 0, a, &frame(mac(2), mac(1)));
    assert_eq!(v, Verdict::Flooded);
    assert_eq!(to, vec![(uplink, as_is), (b, as_is), (c, as_is)]);
    assert_eq!(sw.lookup(net, mac(1), 0), Some(a));
    // b → a: a is known, so only a gets it; b is learned now.
    assert_eq!(
        sent(&mut sw, 1, b, &frame(mac(1), mac(2))),
        (Verdict::Unicast, vec![(a, as_is)])
    );
    assert_eq!(
        sent(&mut sw, 2, a, &frame(mac(2), mac(1))),
        (Verdict::Unicast, vec![(b, as_is)])
    );
    // An outside host behind the uplink is learned on the uplink.
    let outside = MacAddr([0x52, 0x54, 0, 0, 0, 9]);
    sent(&mut sw, 3, uplink, &frame(BCAST, outside));
    assert_eq!(
        sent(&mut sw, 4, c, &frame(outside, mac(3))),
        (Verdict::Unicast, vec![(uplink, as_is)])
    );
    // A frame to a MAC on its own port is not sent back (no hairpin).
    assert_eq!(
        sent(&mut sw, 5, a, &frame(mac(1), mac(1))).0,
        Verdict::Dropped(DropReason::DestinationOnSourcePort)
    );
    assert_eq!(sw.learned_macs(), 4);
}

#[test]
fn addresses_age_out_after_the_configured_time() {
    let config = SwitchConfig {
        mac_ageing_ms: 10_000,
        ..SwitchConfig::default()
    };
    let Flat {
        mut sw, net, a, b, ..
    } = flat(config);
    sent(&mut sw, 0, a, &frame(BCAST, mac(1)));
    assert_eq!(
        sent(&mut sw, 9_999, b, &frame(mac(1), mac(2))).0,
        Verdict::Unicast
    );
    // a silent for 10 s: frames to it flood again, before and after age() reclaims it.
    assert_eq!(sw.lookup(net, mac(1), 10_000), None);
    assert_eq!(
        sent(&mut sw, 10_000, b, &frame(mac(1), mac(2))).0,
        Verdict::Flooded
    );
    assert_eq!(sw.age(10_000), 1); // a; b was refreshed at 10 s
    assert_eq!(sw.learned_macs(), 1);
    assert_eq!(sw.age(19_999), 0);
    assert_eq!(sw.age(20_000), 1);
    assert_eq!(sw.learned_macs(), 0);
}

#[test]
fn default_ageing_is_300_seconds() {
    assert_eq!(SwitchConfig::default().mac_ageing_ms, 300_000);
    let Flat { mut sw, net, a, .. } = flat(SwitchConfig::default());
    sent(&mut sw, 0, a, &frame(BCAST, mac(1)));
    assert_eq!(sw.lookup(net, mac(1), 299_999), Some(a));
    assert_eq!(sw.lookup(net, mac(1), 300_000), None);
}

#[test]
fn a_moved_address_follows_its_new_port() {
    let Flat {
        mut sw,
        net,
        a,
        b,
        c,
        ..
    } = flat(SwitchConfig::default());
    let roaming = mac(7);
    sent(&mut sw, 0, a, &frame(BCAST, roaming));
    assert_eq!(sw.lookup(net, roaming, 0), Some(a));
    sent(&mut sw, 1, b, &frame(BCAST, roaming));
    assert_eq!(sw.lookup(net, roaming, 1), Some(b));
    assert_eq!(sw.counters(b).unwrap().learning.moves_in, 1);
    assert_eq!(
        sent(&mut sw, 2, c, &frame(roaming, mac(3))),
        (Verdict::Unicast, vec![(b, FrameEdit::AsIs)])
    );
}

#[test]
fn removing_a_port_forgets_its_addresses() {
    let Flat {
        mut sw, net, a, b, ..
    } = flat(SwitchConfig::default());
    sent(&mut sw, 0, a, &frame(BCAST, mac(1)));
    let counters = sw.remove_port(a).unwrap();
    assert_eq!(counters.rx_packets, 1);
    assert_eq!(sw.lookup(net, mac(1), 1), None);
    assert_eq!(
        sent(&mut sw, 1, b, &frame(mac(1), mac(2))).0,
        Verdict::Flooded
    );
    // A stale id is refused, not mistaken for a new port.
    assert_eq!(
        sent(&mut sw, 2, a, &frame(BCAST, mac(1))).0,
        Verdict::NoSuchPort
    );
    let d = sw
        .add_port(vif(net, mac(4), LockingMode::Unlocked), 2)
        .unwrap();
    assert_ne!(d, a);
}

// ---- table limits ----

#[test]
fn one_port_cannot_fill_the_table() {
    let config = SwitchConfig {
        max_macs: 100,
        max_macs_per_port: 10,
        ..SwitchConfig::default()
    };
    let Flat {
        mut sw,
        net,
        a,
        b,
        c,
        ..
    } = flat(config);
    for n in 0..50u8 {
        let src = MacAddr([0x02, 0xaa, 0, 0, 0, n]);
        // Every frame still goes through; only learning is refused.
        let (v, _) = sent(&mut sw, 0, a, &frame(mac(2), src));
        assert_eq!(v, Verdict::Flooded);
    }
    assert_eq!(sw.learned_macs(), 10);
    assert_eq!(sw.counters(a).unwrap().learning.refused_port_limit, 40);
    // The others still learn.
    sent(&mut sw, 1, b, &frame(BCAST, mac(2)));
    assert_eq!(sw.lookup(net, mac(2), 1), Some(b));
    assert_eq!(
        sent(&mut sw, 2, c, &frame(mac(2), mac(3))).0,
        Verdict::Unicast
    );
}

#[test]
fn a_full_table_refuses_new_addresses_until_they_age() {
    let config = SwitchConfig {
        max_macs: 3,
        max_macs_per_port: 2,
        mac_ageing_ms: 1000,
        ..SwitchConfig::default()
    };
    let Flat {
        mut sw,
        net,
        a,
        b,
        c,
        ..
    } = flat(config);
    sent(&mut sw, 0, a, &frame(BCAST, MacAddr([2, 0, 0, 0, 1, 1])));
    sent(&mut sw, 0, a, &frame(BCAST, MacAddr([2, 0, 0, 0, 1, 2])));
    sent(&mut sw, 0, b, &frame(BCAST, mac(2)));
    sent(&mut sw, 0, c, &frame(BCAST, mac(3)));
    assert_eq!(sw.counters(c).unwrap().learning.refused_table_full, 1);
    assert_eq!(sw.lookup(net, mac(3), 0), None);
    assert_eq!(sw.age(1000), 3);
    sent(&mut sw, 1000, c, &frame(BCAST, mac(3)));
    assert_eq!(sw.lookup(net, mac(3), 1000), Some(c));
}

// ---- VLANs ----

/// An uplink carrying VLAN 10 and VLAN 20 and the untagged network; two VIFs on each
/// VLAN network, one on the untagged one, and a host-internal network with one VIF.
struct Vlans {
    sw: Switch,
    uplink: PortId,
    net10: NetworkId,
    red1: PortId,
    red2: PortId,
    blue1: PortId,
    blue2: PortId,
    native: PortId,
    internal: PortId,
}

fn vlans() -> Vlans {
    let mut sw = Switch::new(SwitchConfig::default());
    let uplink = sw.add_port(PortConfig::Uplink, 0).unwrap();
    let net10 = sw.add_network(network(Some(10), Some(uplink))).unwrap();
    let net20 = sw.add_network(network(Some(20), Some(uplink))).unwrap();
    let untagged = sw.add_network(network(None, Some(uplink))).unwrap();
    let private = sw.add_network(network(None, None)).unwrap();
    let unlocked = LockingMode::Unlocked;
    Vlans {
        red1: sw.add_port(vif(net10, mac(11), unlocked), 0).unwrap(),
        red2: sw.add_port(vif(net10, mac(12), unlocked), 0).unwrap(),
        blue1: sw.add_port(vif(net20, mac(21), unlocked), 0).unwrap(),
        blue2: sw.add_port(vif(net20, mac(22), unlocked), 0).unwrap(),
        native: sw.add_port(vif(untagged, mac(31), unlocked), 0).unwrap(),
        internal: sw.add_port(vif(private, mac(41), unlocked), 0).unwrap(),
        sw,
        uplink,
        net10,
    }
}

#[test]
fn broadcasts_stay_on_their_vlan_and_are_tagged_on_the_uplink() {
    let Vlans {
        mut sw,
        uplink,
        red1,
        red2,
        blue1,
        blue2,
        native,
        internal,
        ..
    } = vlans();
    let (v, to) = sent(&mut sw, 0, red1, &frame(BCAST, mac(11)));
    assert_eq!(v, Verdict::Flooded);
    assert_eq!(
        to,
        vec![(uplink, FrameEdit::PushTag(10)), (red2, FrameEdit::AsIs)]
    );
    let (_, to) = sent(&mut sw, 0, blue2, &frame(BCAST, mac(22)));
    assert_eq!(
        to,
        vec![(uplink, FrameEdit::PushTag(20)), (blue1, FrameEdit::AsIs)]
    );
    let (_, to) = sent(&mut sw, 0, native, &frame(BCAST, mac(31)));
    assert_eq!(to, vec![(uplink, FrameEdit::AsIs)]);
    // The host-internal network never reaches the uplink.
    let (v, to) = sent(&mut sw, 0, internal, &frame(BCAST, mac(41)));
    assert_eq!((v, to), (Verdict::Flooded, vec![]));
}

#[test]
fn the_tag_written_on_the_uplink_is_the_networks() {
    let Vlans {
        mut sw,
        uplink,
        red1,
        ..
    } = vlans();
    let f = frame(BCAST, mac(11));
    let fwd = sw.ingress(0, red1, &f);
    let edit = fwd.edit_for(uplink).unwrap();
    let mut out = vec![0; edit.output_len(f.len())];
    let n = edit.write(&f, &mut out).unwrap();
    let e = Ethernet::parse(&out[..n]).unwrap();
    assert_eq!((e.vlan, e.ethertype, e.src), (Some(10), IPV4, mac(11)));
    assert_eq!(&out[18..n], &f[14..]);
}

#[test]
fn tagged_frames_from_the_uplink_reach_only_their_vlan_untagged() {
    let Vlans {
        mut sw,
        uplink,
        red1,
        red2,
        blue1,
        blue2,
        native,
        ..
    } = vlans();
    let outside = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    let (_, to) = sent(&mut sw, 0, uplink, &tag(&frame(BCAST, outside), 20));
    assert_eq!(
        to,
        vec![(blue1, FrameEdit::PopTag), (blue2, FrameEdit::PopTag)]
    );
    let (_, to) = sent(&mut sw, 0, uplink, &tag(&frame(BCAST, outside), 10));
    assert_eq!(
        to,
        vec![(red1, FrameEdit::PopTag), (red2, FrameEdit::PopTag)]
    );
    // Untagged and priority-tagged (VID 0) frames belong to the untagged network.
    let (_, to) = sent(&mut sw, 0, uplink, &frame(BCAST, outside));
    assert_eq!(to, vec![(native, FrameEdit::AsIs)]);
    let (_, to) = sent(&mut sw, 0, uplink, &tag(&frame(BCAST, outside), 0x6000));
    assert_eq!(to, vec![(native, FrameEdit::PopTag)]);
    // The same outside MAC was learned separately on each network: red1 → outside
    // goes to the uplink tagged 10, a unicast.
    assert_eq!(
        sent(&mut sw, 1, red1, &frame(outside, mac(11))),
        (Verdict::Unicast, vec![(uplink, FrameEdit::PushTag(10))])
    );
}

#[test]
fn unknown_vlans_from_the_uplink_are_dropped_and_counted() {
    let Vlans { mut sw, uplink, .. } = vlans();
    let outside = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    assert_eq!(
        sent(&mut sw, 0, uplink, &tag(&frame(BCAST, outside), 30)).0,
        Verdict::Dropped(DropReason::UnknownVlan)
    );
    assert_eq!(drops(&sw, uplink, DropReason::UnknownVlan), 1);
    // An uplink with no untagged network drops untagged frames the same way.
    let mut sw = Switch::new(SwitchConfig::default());
    let trunk = sw.add_port(PortConfig::Uplink, 0).unwrap();
    sw.add_network(network(Some(5), Some(trunk))).unwrap();
    assert_eq!(
        sent(&mut sw, 0, trunk, &frame(BCAST, outside)).0,
        Verdict::Dropped(DropReason::UnknownVlan)
    );
}

#[test]
fn two_vlans_cannot_reach_each_other() {
    let Vlans {
        mut sw,
        uplink,
        red1,
        blue1,
        blue2,
        ..
    } = vlans();
    // blue1 is known (on VLAN 20); red1 sends to its MAC: flooded on VLAN 10 only.
    sent(&mut sw, 0, blue1, &frame(BCAST, mac(21)));
    let (v, to) = sent(&mut sw, 1, red1, &frame(mac(21), mac(11)));
    assert_eq!(v, Verdict::Flooded);
    assert!(to.iter().all(|(p, _)| *p != blue1 && *p != blue2), "{to:?}");
    assert!(to.contains(&(uplink, FrameEdit::PushTag(10))));
    // A guest tagging its own frames for VLAN 20 (VLAN hopping) is dropped.
    assert_eq!(
        sent(&mut sw, 2, red1, &tag(&frame(mac(21), mac(11)), 20)).0,
        Verdict::Dropped(DropReason::TaggedOnAccessPort)
    );
    assert_eq!(drops(&sw, red1, DropReason::TaggedOnAccessPort), 1);
    // Nothing red1 ever sent reached a blue port.
    assert_eq!(sw.counters(blue1).unwrap().tx_packets, 0);
    assert_eq!(sw.counters(blue2).unwrap().tx_packets, 1); // blue1's broadcast
}

#[test]
fn network_configuration_is_checked() {
    let Vlans {
        mut sw,
        uplink,
        net10,
        red1,
        ..
    } = vlans();
    assert_eq!(
        sw.add_network(network(Some(10), Some(uplink))),
        Err(ConfigError::VlanInUse {
            uplink,
            vlan: Some(10)
        })
    );
    assert_eq!(
        sw.add_network(network(None, Some(uplink))),
        Err(ConfigError::VlanInUse { uplink, vlan: None })
    );
    for bad in [0, 4095, 5000] {
        assert_eq!(
            sw.add_network(network(Some(bad), Some(uplink))),
            Err(ConfigError::InvalidVlan(bad))
        );
    }
    let mut jumbo = network(Some(99), Some(uplink));
    jumbo.mtu = 10_000;
    assert_eq!(sw.add_network(jumbo), Err(ConfigError::InvalidMtu(10_000)));
    assert_eq!(
        sw.add_network(network(Some(99), Some(red1))),
        Err(ConfigError::NotAnUplink(red1))
    );
    assert_eq!(
        sw.remove_network(net10),
        Err(ConfigError::NetworkInUse(net10))
    );
    assert_eq!(
        sw.remove_port(uplink),
        Err(ConfigError::UplinkInUse(uplink))
    );
    assert_eq!(
        sw.reconfigure_port(red1, PortConfig::Uplink),
        Err(ConfigError::KindChange(red1))
    );
    // Moving VLAN 10 to VLAN 11: frames tagged 10 are now unknown, 11 reach red.
    let mut moved = *sw.network(net10).unwrap();
    moved.vlan = Some(11);
    sw.reconfigure_network(net10, moved).unwrap();
    let outside = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    assert_eq!(
        sent(&mut sw, 0, uplink, &tag(&frame(BCAST, outside), 10)).0,
        Verdict::Dropped(DropReason::UnknownVlan)
    );
    assert_eq!(
        sent(&mut sw, 0, uplink, &tag(&frame(BCAST, outside), 11))
            .1
            .len(),
        2
    );
}

// ---- MTU ----

#[test]
fn frames_over_the_network_mtu_are_dropped() {
    let Vlans {
        mut sw,
        uplink,
        red1,
        red2,
        ..
    } = vlans();
    let at_mtu = eth(BCAST, mac(11), IPV4, &ipv4(ip(1), ip(2), 1500));
    assert_eq!(at_mtu.len(), 1514);
    assert_eq!(sent(&mut sw, 0, red1, &at_mtu).0, Verdict::Flooded);
    let over = eth(BCAST, mac(11), IPV4, &ipv4(ip(1), ip(2), 1501));
    assert_eq!(
        sent(&mut sw, 0, red1, &over).0,
        Verdict::Dropped(DropReason::Oversized)
    );
    assert_eq!(drops(&sw, red1, DropReason::Oversized), 1);
    // On the uplink the tag does not count against the MTU.
    let outside = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    let tagged = tag(&eth(BCAST, outside, IPV4, &ipv4(ip(1), ip(2), 1500)), 10);
    assert_eq!(tagged.len(), 1518);
    assert_eq!(sent(&mut sw, 0, uplink, &tagged).0, Verdict::Flooded);
    let tagged = tag(&eth(BCAST, outside, IPV4, &ipv4(ip(1), ip(2), 1501)), 10);
    assert_eq!(
        sent(&mut sw, 0, uplink, &tagged).0,
        Verdict::Dropped(DropReason::Oversized)
    );
    // A jumbo network carries 9000.
    let mut sw = Switch::new(SwitchConfig::default());
    let mut jumbo = network(None, None);
    jumbo.mtu = 9000;
    let net = sw.add_network(jumbo).unwrap();
    let a = sw
        .add_port(vif(net, mac(1), LockingMode::Unlocked), 0)
        .unwrap();
    let big = eth(BCAST, mac(1), IPV4, &ipv4(ip(1), ip(2), 9000));
    assert_eq!(sent(&mut sw, 0, a, &big).0, Verdict::Flooded);
    let _ = red2;
}

// ---- locking ----

/// An untagged network with a locked VIF (mac 1, 10.0.0.1, 2001:db8::1), an observer
/// VIF (mac 2), the local stack (mac 0xfe) and an uplink.
struct Locked {
    sw: Switch,
    net: NetworkId,
    uplink: PortId,
    locked: PortId,
    observer: PortId,
    local: PortId,
}

fn locked() -> Locked {
    let mut sw = Switch::new(SwitchConfig::default());
    let uplink = sw.add_port(PortConfig::Uplink, 0).unwrap();
    let net = sw.add_network(network(None, Some(uplink))).unwrap();
    let locked = sw
        .add_port(locked_vif(net, mac(1), &[ip(1)], &[ip6(1)]), 0)
        .unwrap();
    let observer = sw
        .add_port(vif(net, mac(2), LockingMode::Unlocked), 0)
        .unwrap();
    let local = sw
        .add_port(
            PortConfig::Local {
                network: net,
                mac: mac(0xfe),
            },
            0,
        )
        .unwrap();
    Locked {
        sw,
        net,
        uplink,
        locked,
        observer,
        local,
    }
}

fn check_dropped(sw: &mut Switch, port: PortId, f: &[u8], reason: DropReason) {
    let before = drops(sw, port, reason);
    let fwd = sw.ingress(0, port, f);
    assert_eq!(fwd.verdict, Verdict::Dropped(reason));
    assert!(fwd.deliveries.is_empty());
    assert_eq!(drops(sw, port, reason), before + 1);
}

#[test]
fn a_locked_vif_sends_only_as_itself() {
    let Locked {
        mut sw,
        net,
        locked,
        observer,
        ..
    } = locked();
    // Its own MAC and addresses pass.
    let good = eth(BCAST, mac(1), IPV4, &ipv4(ip(1), ip(9), 60));
    assert_eq!(sent(&mut sw, 0, locked, &good).0, Verdict::Flooded);
    let good6 = eth(BCAST, mac(1), IPV6, &ipv6(ip6(1), 17, &[0; 16]));
    assert_eq!(sent(&mut sw, 0, locked, &good6).0, Verdict::Flooded);
    // Spoofed MAC (and it is not learned), spoofed IPv4 and IPv6 sources.
    let spoof_mac = eth(BCAST, mac(9), IPV4, &ipv4(ip(1), ip(9), 60));
    check_dropped(&mut sw, locked, &spoof_mac, DropReason::SpoofedMac);
    assert_eq!(sw.lookup(net, mac(9), 0), None);
    check_dropped(
        &mut sw,
        locked,
        &eth(BCAST, mac(1), IPV4, &ipv4(ip(2), ip(9), 60)),
        DropReason::SpoofedIp,
    );
    check_dropped(
        &mut sw,
        locked,
        &eth(BCAST, mac(1), IPV6, &ipv6(ip6(2), 6, &[0; 20])),
        DropReason::SpoofedIp,
    );
    // The observer received exactly the two good frames.
    assert_eq!(sw.counters(observer).unwrap().tx_packets, 2);
}

#[test]
fn a_locked_vif_cannot_poison_arp_or_neighbour_caches() {
    let Locked { mut sw, locked, .. } = locked();
    let gw = ip(254);
    let ok = eth(BCAST, mac(1), ARP, &arp(1, mac(1), ip(1), gw));
    assert_eq!(sent(&mut sw, 0, locked, &ok).0, Verdict::Flooded);
    let probe = eth(
        BCAST,
        mac(1),
        ARP,
        &arp(1, mac(1), Ipv4Addr::UNSPECIFIED, ip(1)),
    );
    assert_eq!(sent(&mut sw, 0, locked, &probe).0, Verdict::Flooded);
    // Claiming the gateway's address, or another MAC inside the ARP packet.
    let claim = eth(BCAST, mac(1), ARP, &arp(2, mac(1), gw, gw));
    check_dropped(&mut sw, locked, &claim, DropReason::SpoofedArp);
    let inner = eth(BCAST, mac(1), ARP, &arp(2, mac(9), ip(1), gw));
    check_dropped(&mut sw, locked, &inner, DropReason::SpoofedArp);
    // Neighbour discovery for its own address passes; for another one it does not.
    let na = eth(
        BCAST,
        mac(1),
        IPV6,
        &ipv6(ip6(1), 58, &neighbour_advertisement(ip6(1))),
    );
    assert_eq!(sent(&mut sw, 0, locked, &na).0, Verdict::Flooded);
    let steal = eth(
        BCAST,
        mac(1),
        IPV6,
        &ipv6(ip6(1), 58, &neighbour_advertisement(ip6(7))),
    );
    check_dropped(
        &mut sw,
        locked,
        &steal,
        DropReason::SpoofedNeighbourDiscovery,
    );
    let ns = eth(
        BCAST,
        mac(1),
        IPV6,
        &ipv6(ip6(1), 58, &neighbour_solicitation(ip6(7), mac(1))),
    );
    assert_eq!(sent(&mut sw, 0, locked, &ns).0, Verdict::Flooded);
    let ns_other = eth(
        BCAST,
        mac(1),
        IPV6,
        &ipv6(ip6(1), 58, &neighbour_solicitation(ip6(7), mac(9))),
    );
    check_dropped(
        &mut sw,
        locked,
        &ns_other,
        DropReason::SpoofedNeighbourDiscovery,
    );
    // A guest posing as a router.
    let ra = eth(
        BCAST,
        mac(1),
        IPV6,
        &ipv6(ip6(1), 58, &[134, 0, 0, 0, 64, 0, 0, 0]),
    );
    check_dropped(&mut sw, locked, &ra, DropReason::RouterMessage);
}

#[test]
fn a_locked_vif_with_no_addresses_gets_dhcp_and_nothing_else() {
    let mut sw = Switch::new(SwitchConfig::default());
    let net = sw.add_network(network(None, None)).unwrap();
    let bare = sw.add_port(locked_vif(net, mac(1), &[], &[]), 0).unwrap();
    let server = sw
        .add_port(vif(net, mac(2), LockingMode::Unlocked), 0)
        .unwrap();
    let discover = eth(BCAST, mac(1), IPV4, &dhcp_discover());
    assert_eq!(
        sent(&mut sw, 0, bare, &discover),
        (Verdict::Flooded, vec![(server, FrameEdit::AsIs)])
    );
    // The server's offer reaches it: traffic to a locked VIF is not filtered.
    assert_eq!(
        sent(&mut sw, 0, server, &frame(mac(1), mac(2))).0,
        Verdict::Unicast
    );
    check_dropped(
        &mut sw,
        bare,
        &eth(BCAST, mac(1), IPV4, &ipv4(ip(1), ip(2), 40)),
        DropReason::SpoofedIp,
    );
    check_dropped(
        &mut sw,
        bare,
        &eth(BCAST, mac(1), ARP, &arp(1, mac(1), ip(1), ip(2))),
        DropReason::SpoofedArp,
    );
    check_dropped(
        &mut sw,
        bare,
        &eth(BCAST, mac(1), 0x88cc, &[0; 40]),
        DropReason::ProtocolNotAllowed,
    );
    // Once the lease is known and allowed, traffic from it passes.
    let mut config = locked_vif(net, mac(1), &[ip(1)], &[]);
    sw.reconfigure_port(bare, config.clone()).unwrap();
    assert_eq!(
        sent(
            &mut sw,
            1,
            bare,
            &eth(BCAST, mac(1), IPV4, &ipv4(ip(1), ip(2), 40))
        )
        .0,
        Verdict::Flooded
    );
    // And unlocking lets anything through.
    if let PortConfig::Vif(v) = &mut config {
        v.locking_mode = LockingMode::Unlocked;
    }
    sw.reconfigure_port(bare, config).unwrap();
    assert_eq!(
        sent(&mut sw, 2, bare, &eth(BCAST, mac(1), 0x88cc, &[0; 40])).0,
        Verdict::Flooded
    );
}

#[test]
fn pinned_addresses_cannot_be_taken_over() {
    let Locked {
        mut sw,
        net,
        uplink,
        locked,
        observer,
        local,
    } = locked();
    // An unlocked guest sending with the locked guest's MAC, or with Keel's own.
    check_dropped(
        &mut sw,
        observer,
        &frame(BCAST, mac(1)),
        DropReason::PinnedMacConflict,
    );
    check_dropped(
        &mut sw,
        observer,
        &frame(BCAST, mac(0xfe)),
        DropReason::PinnedMacConflict,
    );
    check_dropped(
        &mut sw,
        uplink,
        &frame(BCAST, mac(0xfe)),
        DropReason::PinnedMacConflict,
    );
    assert_eq!(sw.lookup(net, mac(1), 0), Some(locked));
    assert_eq!(sw.lookup(net, mac(0xfe), 0), Some(local));
    // Frames to them go to them at once, without flooding.
    assert_eq!(
        sent(
            &mut sw,
            0,
            uplink,
            &frame(mac(0xfe), MacAddr([0x52, 0x54, 0, 0, 0, 1]))
        ),
        (Verdict::Unicast, vec![(local, FrameEdit::AsIs)])
    );
    // A second port cannot pin the same MAC on the same network.
    assert_eq!(
        sw.add_port(locked_vif(net, mac(1), &[ip(5)], &[]), 0),
        Err(ConfigError::MacInUse(mac(1)))
    );
    assert_eq!(
        sw.add_port(vif(net, MacAddr::BROADCAST, LockingMode::Unlocked), 0),
        Err(ConfigError::InvalidMac(MacAddr::BROADCAST))
    );
    // Once the locked VIF is gone its MAC is free.
    sw.remove_port(locked).unwrap();
    assert_eq!(
        sent(&mut sw, 1, observer, &frame(BCAST, mac(1))).0,
        Verdict::Flooded
    );
}

#[test]
fn a_disabled_vif_neither_sends_nor_receives() {
    let Locked {
        mut sw,
        net,
        uplink,
        observer,
        local,
        ..
    } = locked();
    let d = sw
        .add_port(vif(net, mac(5), LockingMode::Unlocked), 0)
        .unwrap();
    sent(&mut sw, 0, d, &frame(BCAST, mac(5))); // learned while unlocked
    sw.reconfigure_port(d, vif(net, mac(5), LockingMode::Disabled))
        .unwrap();
    check_dropped(&mut sw, d, &frame(BCAST, mac(5)), DropReason::PortDisabled);
    let (_, to) = sent(&mut sw, 1, observer, &frame(BCAST, mac(2)));
    assert!(!to.iter().any(|(p, _)| *p == d), "{to:?}");
    assert!(to.iter().any(|(p, _)| *p == uplink) && to.iter().any(|(p, _)| *p == local));
    assert_eq!(
        sent(&mut sw, 2, observer, &frame(mac(5), mac(2))).0,
        Verdict::Flooded
    );
    assert_eq!(sw.counters(d).unwrap().tx_packets, 0);
}

#[test]
fn network_default_follows_the_networks_default_locking_mode() {
    let mut sw = Switch::new(SwitchConfig::default());
    let mut cfg = network(None, None);
    let net = sw.add_network(cfg).unwrap();
    let a = sw
        .add_port(vif(net, mac(1), LockingMode::NetworkDefault), 0)
        .unwrap();
    let b = sw
        .add_port(vif(net, mac(2), LockingMode::Unlocked), 0)
        .unwrap();
    assert_eq!(sw.effective_locking(a), Some(EffectiveLocking::Unlocked));
    assert_eq!(
        sent(&mut sw, 0, a, &frame(BCAST, mac(1))).0,
        Verdict::Flooded
    );
    cfg.default_locking_mode = NetworkLockingMode::Disabled;
    sw.reconfigure_network(net, cfg).unwrap();
    assert_eq!(sw.effective_locking(a), Some(EffectiveLocking::Disabled));
    assert_eq!(sw.effective_locking(b), Some(EffectiveLocking::Unlocked));
    check_dropped(&mut sw, a, &frame(BCAST, mac(1)), DropReason::PortDisabled);
    // a was learned while unlocked: a unicast to it is now dropped, counted on a.
    let before = drops(&sw, a, DropReason::PortDisabled);
    assert_eq!(
        sent(&mut sw, 1, b, &frame(mac(1), mac(2))).0,
        Verdict::Dropped(DropReason::PortDisabled)
    );
    assert_eq!(drops(&sw, a, DropReason::PortDisabled), before + 1);
    assert_eq!(sw.counters(a).unwrap().tx_packets, 0);
}

// ---- flood bounding ----

#[test]
fn one_guest_flooding_cannot_starve_the_others() {
    let config = SwitchConfig {
        flood_limit: FloodLimit {
            frames_per_second: 100,
            burst: 20,
        },
        ..SwitchConfig::default()
    };
    let Flat {
        mut sw, a, b, c, ..
    } = flat(config);
    let mut passed = 0;
    for _ in 0..1000 {
        if sent(&mut sw, 0, a, &frame(BCAST, mac(1))).0 == Verdict::Flooded {
            passed += 1;
        }
    }
    assert_eq!(passed, 20);
    assert_eq!(drops(&sw, a, DropReason::FloodLimited), 980);
    // b's budget is its own.
    assert_eq!(
        sent(&mut sw, 0, b, &frame(BCAST, mac(2))).0,
        Verdict::Flooded
    );
    // Known unicast does not spend the budget.
    assert_eq!(
        sent(&mut sw, 0, a, &frame(mac(2), mac(1))).0,
        Verdict::Unicast
    );
    // Unknown unicast does.
    assert_eq!(
        sent(&mut sw, 0, a, &frame(mac(77), mac(1))).0,
        Verdict::Dropped(DropReason::FloodLimited)
    );
    // 100 frames/s refill: one more every 10 ms.
    assert_eq!(
        sent(&mut sw, 10, a, &frame(BCAST, mac(1))).0,
        Verdict::Flooded
    );
    assert_eq!(
        sent(&mut sw, 10, a, &frame(BCAST, mac(1))).0,
        Verdict::Dropped(DropReason::FloodLimited)
    );
    let _ = c;
}

// ---- counters and hostile input ----

#[test]
fn counters_count_bytes_both_ways_with_the_tag() {
    let Vlans {
        mut sw,
        uplink,
        red1,
        red2,
        ..
    } = vlans();
    let f = frame(BCAST, mac(11));
    sent(&mut sw, 0, red1, &f);
    let len = f.len() as u64;
    let r1 = *sw.counters(red1).unwrap();
    assert_eq!((r1.rx_packets, r1.rx_bytes, r1.tx_packets), (1, len, 0));
    let r2 = *sw.counters(red2).unwrap();
    assert_eq!((r2.tx_packets, r2.tx_bytes), (1, len));
    let up = *sw.counters(uplink).unwrap();
    assert_eq!((up.tx_packets, up.tx_bytes), (1, len + 4));
    let listed: Vec<_> = sw.ports().map(|(id, _, c)| (id, c.tx_packets)).collect();
    assert_eq!(listed.len(), 7);
    assert!(listed.contains(&(uplink, 1)) && listed.contains(&(red2, 1)));
    assert_eq!(sw.networks().count(), 4);
    sw.record_egress_drop(uplink);
    assert_eq!(drops(&sw, uplink, DropReason::EgressQueueFull), 1);
    // Dropped frames are received (rx) and counted by reason, never sent.
    sent(&mut sw, 1, red1, &[0u8; 10]);
    let r1 = *sw.counters(red1).unwrap();
    assert_eq!((r1.rx_packets, r1.drops.get(DropReason::Malformed)), (2, 1));
    assert_eq!(r1.drops.total(), 1);
    assert_eq!(
        sent(
            &mut sw,
            1,
            red1,
            &frame(BCAST, MacAddr([0x01, 0, 0x5e, 0, 0, 1]))
        )
        .0,
        Verdict::Dropped(DropReason::InvalidSourceMac)
    );
}

/// Random bytes from every port, including frames cut at every length: the switch answers
/// each one, never panics, and never sends anything across networks.
#[test]
fn random_frames_never_panic_or_cross_networks() {
    let Vlans {
        mut sw,
        uplink,
        red1,
        red2,
        blue1,
        blue2,
        native,
        internal,
        ..
    } = vlans();
    let red = [red1, red2];
    let blue = [blue1, blue2];
    let ports = [uplink, red1, red2, blue1, blue2, native, internal];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..20_000u64 {
        let port = ports[(next() % ports.len() as u64) as usize];
        let len = (next() % 120) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Often make it look like Ethernet with interesting EtherTypes and tags.
        if len >= 18 && i % 2 == 0 {
            let ethertypes = [0x0800u16, 0x0806, 0x86dd, 0x8100];
            let et = ethertypes[(next() % 4) as usize];
            f[12..14].copy_from_slice(&et.to_be_bytes());
            f[6] &= 0xfe;
            if et == 0x8100 {
                f[14] &= 0xf0;
                f[15] = [10u8, 20, 0, 30][(next() % 4) as usize];
            }
        }
        let fwd = sw.ingress(i, port, &f);
        for d in fwd.deliveries {
            assert_ne!(d.port, port);
            if red.contains(&port) {
                assert!(!blue.contains(&d.port));
            }
            if blue.contains(&port) {
                assert!(!red.contains(&d.port));
            }
            if port == internal || d.port == internal {
                panic!("internal network crossed: {port:?} → {:?}", d.port);
            }
            let mut out = vec![0u8; d.edit.output_len(f.len())];
            d.edit.write(&f, &mut out).unwrap();
        }
    }
}
