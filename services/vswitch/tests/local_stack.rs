//! Keel's real management stack (keel-net over smoltcp) as the switch's local port: a guest
//! on a VIF resolves its address with ARP and pings it through the switch, and a guest on
//! another VLAN cannot reach it.

// The fixtures below are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use keel_net::{Addressing, NetStack};
use keel_vswitch::*;

const KEEL_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST_MAC: MacAddr = MacAddr([0x00, 0x16, 0x3e, 0, 0, 1]);
const OTHER_MAC: MacAddr = MacAddr([0x00, 0x16, 0x3e, 0, 0, 2]);
const KEEL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

struct Host {
    sw: Switch,
    local: PortId,
    end: LocalPortEnd,
    stack: NetStack<LocalDevice>,
    guest: PortId,
    other: PortId,
}

fn host() -> Host {
    let mut sw = Switch::new(SwitchConfig::default());
    let uplink = sw.add_port(PortConfig::Uplink, 0).unwrap();
    let net = |vlan| NetworkConfig {
        vlan,
        mtu: 1500,
        uplink: Some(uplink),
        default_locking_mode: NetworkLockingMode::Unlocked,
    };
    let management = sw.add_network(net(None)).unwrap();
    let tenant = sw.add_network(net(Some(100))).unwrap();
    let local = sw
        .add_port(
            PortConfig::Local {
                network: management,
                mac: KEEL_MAC,
            },
            0,
        )
        .unwrap();
    let vif = |network, mac, ip| {
        PortConfig::Vif(VifConfig {
            network,
            mac,
            locking_mode: LockingMode::Locked,
            ipv4_allowed: vec![ip],
            ipv6_allowed: vec![],
        })
    };
    let guest = sw
        .add_port(vif(management, GUEST_MAC, GUEST_IP), 0)
        .unwrap();
    let other = sw.add_port(vif(tenant, OTHER_MAC, GUEST_IP), 0).unwrap();
    let (device, end) = local_link(KEEL_MAC, 32).unwrap();
    let stack = NetStack::new(
        device,
        Addressing::Static {
            address: KEEL_IP,
            prefix_len: 24,
            gateway: None,
        },
        0,
        1,
    );
    Host {
        sw,
        local,
        end,
        stack,
        guest,
        other,
    }
}

impl Host {
    /// A frame from a guest port: what reached the local port goes to the stack; frames
    /// for anyone else are returned.
    fn guest_sends(&mut self, now: u64, port: PortId, frame: &[u8]) -> Vec<(PortId, Vec<u8>)> {
        let fwd = self.sw.ingress(now, port, frame);
        let mut others = Vec::new();
        for d in fwd.deliveries {
            if d.port == self.local {
                self.end.deliver(frame, d.edit).unwrap();
            } else {
                let mut out = vec![0; d.edit.output_len(frame.len())];
                d.edit.write(frame, &mut out).unwrap();
                others.push((d.port, out));
            }
        }
        others
    }

    /// Polls the stack and switches what it sent; returns the frames that left the switch.
    fn run_stack(&mut self, now: u64) -> Vec<(PortId, Vec<u8>)> {
        self.stack.poll(now);
        let mut out = Vec::new();
        let sw = &mut self.sw;
        let local = self.local;
        while let Some(frames) = self.end.with_transmitted(|frame| {
            let fwd = sw.ingress(now, local, frame);
            fwd.deliveries
                .iter()
                .map(|d| {
                    let mut o = vec![0; d.edit.output_len(frame.len())];
                    d.edit.write(frame, &mut o).unwrap();
                    (d.port, o)
                })
                .collect::<Vec<_>>()
        }) {
            out.extend(frames);
        }
        out
    }
}

fn eth(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp_request(sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&sha.0);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&tpa.octets());
    eth(MacAddr::BROADCAST, sha, 0x0806, &p)
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(src_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"keel-vswitch");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    eth(KEEL_MAC, src_mac, 0x0800, &ip)
}

#[test]
fn a_guest_resolves_and_pings_the_management_stack_through_the_switch() {
    let mut h = host();
    h.run_stack(0);
    // ARP: the request floods (the uplink and the local port), the reply comes back
    // to the guest alone.
    let flooded = h.guest_sends(1, h.guest, &arp_request(GUEST_MAC, GUEST_IP, KEEL_IP));
    assert!(flooded.iter().all(|(p, _)| *p != h.other));
    let replies = h.run_stack(1);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let (to, reply) = &replies[0];
    assert_eq!(*to, h.guest);
    assert_eq!(&reply[0..6], &GUEST_MAC.0);
    assert_eq!(&reply[6..12], &KEEL_MAC.0);
    assert_eq!(&reply[12..14], &[0x08, 0x06]);
    assert_eq!(&reply[20..22], &[0, 2]); // ARP reply
    assert_eq!(&reply[28..32], &KEEL_IP.octets());

    // Ping: straight to the local port (its MAC is pinned), answered to the guest.
    let none = h.guest_sends(2, h.guest, &echo_request(GUEST_MAC, GUEST_IP, KEEL_IP, 1));
    assert!(none.is_empty());
    let replies = h.run_stack(2);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let (to, reply) = &replies[0];
    assert_eq!(*to, h.guest);
    assert_eq!(&reply[12..14], &[0x08, 0x00]);
    assert_eq!(reply[14 + 20], 0); // echo reply
    assert_eq!(&reply[14 + 12..14 + 16], &KEEL_IP.octets());
    assert_eq!(&reply[14 + 16..14 + 20], &GUEST_IP.octets());
    assert_eq!(h.stack.counters().rx_frames, 2);
    assert_eq!(h.sw.counters(h.local).unwrap().tx_packets, 2);
}

#[test]
fn a_guest_on_another_vlan_or_spoofing_cannot_reach_the_stack() {
    let mut h = host();
    h.run_stack(0);
    // Same addresses, other VLAN: the request never reaches the local port.
    let out = h.guest_sends(1, h.other, &arp_request(OTHER_MAC, GUEST_IP, KEEL_IP));
    assert!(out.iter().all(|(p, _)| *p != h.local && *p != h.guest));
    assert!(h.run_stack(1).is_empty());
    // Even sent straight to Keel's MAC.
    let out = h.guest_sends(2, h.other, &echo_request(OTHER_MAC, GUEST_IP, KEEL_IP, 1));
    assert!(out.iter().all(|(p, _)| *p != h.local));
    assert!(h.run_stack(2).is_empty());
    // The locked guest on the management network spoofing another source address.
    let spoofed = echo_request(GUEST_MAC, Ipv4Addr::new(10, 0, 0, 99), KEEL_IP, 2);
    assert!(h.guest_sends(3, h.guest, &spoofed).is_empty());
    assert!(h.run_stack(3).is_empty());
    assert_eq!(h.stack.counters().rx_frames, 0);
    assert_eq!(
        h.sw.counters(h.guest)
            .unwrap()
            .drops
            .get(DropReason::SpoofedIp),
        1
    );
}
