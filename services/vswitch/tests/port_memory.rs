//! The heap a guest's switch port costs, with a counting allocator: `n` locked VIF ports
//! on one network (one allowed IPv4 address each, as the XenAPI configures them), each
//! having sent frames (its MAC learned), against the same switch with none.
//!
//! `cargo test -p keel-vswitch --test port_memory -- --nocapture` prints the figure
//! (docs/benchmarks.md, "dom0 heap per running guest").

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use keel_heap_count::{held_bytes, CountingAlloc};
use keel_vswitch::*;

/// Counts the bytes each thread holds (other tests of the binary run on other threads).
#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc;

fn mac(n: u8) -> MacAddr {
    MacAddr([0x00, 0x16, 0x3e, 0, 0, n])
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// A UDP frame from guest `n` to its neighbour, as its IP stack sends it.
fn frame(n: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&mac(n + 1).0);
    f.extend_from_slice(&mac(n).0);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut p = vec![0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&ip(n).octets());
    p.extend_from_slice(&ip(n + 1).octets());
    p.extend_from_slice(&[0x13, 0x88, 0x00, 0x35]);
    p.resize(46, 0);
    f.extend_from_slice(&p);
    f
}

/// Heap the switch holds with `n` guest ports that each sent a frame.
fn switch_bytes(n: u8) -> i64 {
    let before = held_bytes();
    let mut sw = Switch::new(SwitchConfig::default());
    let uplink = sw.add_port(PortConfig::Uplink, 0).unwrap();
    let net = sw
        .add_network(NetworkConfig {
            vlan: None,
            mtu: 1500,
            uplink: Some(uplink),
            default_locking_mode: NetworkLockingMode::Unlocked,
        })
        .unwrap();
    let ports: Vec<PortId> = (1..=n)
        .map(|i| {
            let config = PortConfig::Vif(VifConfig {
                network: net,
                mac: mac(i),
                locking_mode: LockingMode::Locked,
                ipv4_allowed: vec![ip(i)],
                ipv6_allowed: vec![],
            });
            sw.add_port(config, 0).unwrap()
        })
        .collect();
    for (i, port) in (1..=n).zip(&ports) {
        let forwarded = sw.ingress(1, *port, &frame(i));
        assert!(
            matches!(forwarded.verdict, Verdict::Unicast | Verdict::Flooded),
            "guest {i}: {:?}",
            forwarded.verdict
        );
    }
    let kept = held_bytes() - before;
    drop(sw);
    kept
}

/// A guest's port is its configuration, counters and learned address: well under a KiB.
#[test]
fn a_guest_port_costs_the_switch_little() {
    // 40 ports, so the maps' nodes split as they do on a filled host.
    let each = (switch_bytes(40) - switch_bytes(0)) / 40;
    println!("vswitch heap per guest port: {each} B");
    assert!(each > 0 && each < 1024, "{each} B per port");
}
