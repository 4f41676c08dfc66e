//! Frames per second through `Switch::ingress` on the host, for a sense of scale (not a
//! timed test; the numbers go in docs/vswitch.md). Run: `cargo bench -p keel-vswitch`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use keel_vswitch::*;

fn mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x00, 0x16, b[1], b[2], b[3], 1])
}

fn frame(dst: MacAddr, src: MacAddr, ip_src: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&ip_src.octets());
    f.extend_from_slice(&[10, 0, 0, 254, 0x13, 0x88, 0, 53]);
    f.resize(len, 0);
    f
}

fn run(name: &str, sw: &mut Switch, port: PortId, f: &[u8], write: bool) {
    const N: u32 = 1_000_000;
    let mut out = vec![0u8; 2048];
    let start = Instant::now();
    for i in 0..N {
        let fwd = sw.ingress(u64::from(i / 1000), port, f);
        if write {
            for d in fwd.deliveries {
                black_box(d.edit.write(f, &mut out).unwrap());
            }
        } else {
            black_box(fwd.deliveries.len());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<48} {:>6.2} Mframes/s  ({:.0} ns/frame)",
        f64::from(N) / secs / 1e6,
        secs * 1e9 / f64::from(N)
    );
}

fn main() {
    let config = SwitchConfig {
        flood_limit: FloodLimit {
            frames_per_second: u32::MAX,
            burst: u32::MAX,
        },
        ..SwitchConfig::default()
    };
    let mut sw = Switch::new(config);
    let uplink = sw.add_port(PortConfig::Uplink, 0).unwrap();
    let mut vifs = Vec::new();
    // 8 VLAN networks with 16 VIFs each (half locked, half unlocked).
    for v in 0..8u16 {
        let net = sw
            .add_network(NetworkConfig {
                vlan: Some(100 + v),
                mtu: 1500,
                uplink: Some(uplink),
                default_locking_mode: NetworkLockingMode::Unlocked,
            })
            .unwrap();
        for i in 0..16u32 {
            let n = u32::from(v) * 16 + i;
            let ip = Ipv4Addr::new(10, 0, v as u8, i as u8 + 1);
            let locking_mode = if i % 2 == 0 {
                LockingMode::Locked
            } else {
                LockingMode::Unlocked
            };
            let port = sw
                .add_port(
                    PortConfig::Vif(VifConfig {
                        network: net,
                        mac: mac(n),
                        locking_mode,
                        ipv4_allowed: vec![ip],
                        ipv6_allowed: vec![],
                    }),
                    0,
                )
                .unwrap();
            vifs.push((port, mac(n), ip));
        }
    }
    // Everyone announces itself once so unicast is known.
    for (port, m, ip) in &vifs {
        sw.ingress(0, *port, &frame(MacAddr::BROADCAST, *m, *ip, 60));
    }
    let (locked, locked_mac, locked_ip) = vifs[0];
    let (unlocked, unlocked_mac, unlocked_ip) = vifs[1];
    let (_, peer_mac, _) = vifs[3];
    let outside = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    let mut tagged = frame(outside, outside, Ipv4Addr::new(192, 0, 2, 1), 64);
    sw.ingress(0, uplink, &{
        let mut t = frame(MacAddr::BROADCAST, outside, Ipv4Addr::new(192, 0, 2, 1), 60);
        t.splice(12..12, [0x81, 0x00, 0x00, 100]);
        t
    });
    tagged.splice(12..12, [0x81, 0x00, 0x00, 100]);
    tagged[0..6].copy_from_slice(&unlocked_mac.0);

    for len in [64, 1514] {
        run(
            &format!("unlocked VIF → VIF, known unicast, {len} B"),
            &mut sw,
            unlocked,
            &frame(peer_mac, unlocked_mac, unlocked_ip, len),
            false,
        );
        run(
            &format!("locked VIF → VIF, known unicast, {len} B"),
            &mut sw,
            locked,
            &frame(peer_mac, locked_mac, locked_ip, len),
            false,
        );
        run(
            &format!("locked VIF → uplink, push tag + copy, {len} B"),
            &mut sw,
            locked,
            &frame(outside, locked_mac, locked_ip, len),
            true,
        );
    }
    run(
        "uplink tagged → VIF, pop tag + copy, 68 B",
        &mut sw,
        uplink,
        &tagged,
        true,
    );
    run(
        "locked VIF broadcast → 15 VIFs + uplink, 64 B",
        &mut sw,
        locked,
        &frame(MacAddr::BROADCAST, locked_mac, locked_ip, 64),
        false,
    );
    run(
        "locked VIF spoofed source IP (dropped), 64 B",
        &mut sw,
        locked,
        &frame(peer_mac, locked_mac, Ipv4Addr::new(10, 9, 9, 9), 64),
        false,
    );
}
