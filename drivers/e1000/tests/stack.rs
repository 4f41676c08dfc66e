//! The management stack (`keel-net`, unchanged) on the driver against the device model: it
//! answers ARP and ping through both parts, every frame crossing the rings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use core::net::Ipv4Addr;

use fake::{Delivery, FakeConfig, FakeNic};
use keel_e1000::{Model, Options, E1000};
use keel_net::{Addressing, NetStack};

const OWN_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
const OWN_IP: [u8; 4] = [10, 0, 2, 15];
const PEER_IP: [u8; 4] = [10, 0, 2, 2];

fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp_request() -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&PEER_MAC);
    arp.extend_from_slice(&PEER_IP);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&OWN_IP);
    ethernet([0xff; 6], 0x0806, &arp)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(sequence: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&sequence.to_be_bytes());
    icmp.extend_from_slice(b"keel-e1000 ping");
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&PEER_IP);
    ip.extend_from_slice(&OWN_IP);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ethernet(OWN_MAC, 0x0800, &ip)
}

/// Polls the stack until the device has sent a frame, for at most a few rounds.
fn reply(
    stack: &mut NetStack<E1000<fake::FakeRegs, fake::FakeHal>>,
    fake: &FakeNic,
    now: &mut u64,
) -> Vec<u8> {
    for _ in 0..10 {
        stack.poll(*now);
        *now += 1;
        if let Some(frame) = fake.take_sent() {
            return frame;
        }
    }
    panic!("the stack sent nothing");
}

#[test]
fn the_stack_answers_arp_and_ping_through_both_parts() {
    for model in [Model::I82540Em, Model::I82574L] {
        let config = FakeConfig::new(model);
        let fake = FakeNic::new(config);
        let nic = E1000::start(fake.regs(), fake.hal(), model, Options::default()).unwrap();
        let addressing = Addressing::Static {
            address: Ipv4Addr::from(OWN_IP),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::from(PEER_IP)),
        };
        let mut now = 0;
        let mut stack = NetStack::new(nic, addressing, now, 7);
        assert_eq!(stack.mac_address(), OWN_MAC);
        // Whatever the stack says on its own first (gratuitous traffic) is not checked.
        stack.poll(now);
        while fake.take_sent().is_some() {}

        assert_eq!(fake.inject(&arp_request()), Delivery::Delivered);
        let arp = reply(&mut stack, &fake, &mut now);
        assert_eq!(arp[..6], PEER_MAC, "{model:?}");
        assert_eq!(arp[12..14], [0x08, 0x06]);
        assert_eq!(arp[20..22], [0, 2], "an ARP reply");
        assert_eq!(arp[22..28], OWN_MAC);
        assert_eq!(arp[28..32], OWN_IP);

        for sequence in 0..300 {
            assert_eq!(fake.inject(&echo_request(sequence)), Delivery::Delivered);
            let pong = reply(&mut stack, &fake, &mut now);
            assert_eq!(pong[..6], PEER_MAC);
            assert_eq!(pong[12..14], [0x08, 0x00]);
            assert_eq!(pong[14 + 20], 0, "an echo reply");
            assert_eq!(pong[14 + 26..14 + 28], sequence.to_be_bytes());
        }
    }
}
