//! Configuration changes interleaved with traffic, from a fixed-seed generator: ports and
//! networks come and go, locking modes and VLANs change, addresses age. After every step
//! the switch's bookkeeping holds (table bounds) and every delivery it makes stays on the
//! frame's network, with the right tag edit.

// The fixtures below are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use keel_vswitch::wire::Ethernet;
use keel_vswitch::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len())])
    }
}

const MACS: usize = 12;

fn mac(n: usize) -> MacAddr {
    MacAddr([0x00, 0x16, 0x3e, 0, 0, n as u8 + 1])
}

fn locking(rng: &mut Rng) -> LockingMode {
    [
        LockingMode::NetworkDefault,
        LockingMode::Unlocked,
        LockingMode::Locked,
        LockingMode::Disabled,
    ][rng.below(4)]
}

fn frame(rng: &mut Rng) -> Vec<u8> {
    let dst = if rng.below(4) == 0 {
        MacAddr::BROADCAST
    } else {
        mac(rng.below(MACS))
    };
    let src = mac(rng.below(MACS));
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    if rng.below(3) == 0 {
        f.extend_from_slice(&[0x81, 0x00, 0x00, [0u8, 10, 20, 30][rng.below(4)]]);
    }
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&Ipv4Addr::new(10, 0, 0, rng.below(4) as u8).octets());
    f.extend_from_slice(&[10, 0, 0, 200]);
    f.resize(f.len() + 20 + rng.below(1600), 0);
    f
}

/// The network a frame from `port` belongs to, as the rules say it should be.
fn ingress_network(sw: &Switch, port: PortId, eth: &Ethernet) -> Option<NetworkId> {
    match sw.port(port)? {
        PortConfig::Uplink => {
            let vlan = eth.vlan.filter(|v| *v != 0);
            sw.networks()
                .find(|(_, n)| n.uplink == Some(port) && n.vlan == vlan)
                .map(|(id, _)| id)
        }
        PortConfig::Vif(v) => Some(v.network),
        PortConfig::Local { network, .. } => Some(*network),
    }
}

#[test]
fn configuration_churn_keeps_every_rule() {
    let config = SwitchConfig {
        mac_ageing_ms: 2_000,
        max_macs: 10,
        max_macs_per_port: 3,
        flood_limit: FloodLimit {
            frames_per_second: 500,
            burst: 10,
        },
    };
    for seed in 1..=8u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let mut sw = Switch::new(config);
        let mut uplinks = vec![sw.add_port(PortConfig::Uplink, 0).unwrap()];
        let mut networks: Vec<NetworkId> = Vec::new();
        let mut ports: Vec<PortId> = uplinks.clone();
        let mut now = 0u64;
        let mut delivered = 0u64;
        for _ in 0..4000 {
            now += rng.below(50) as u64;
            match rng.below(20) {
                0 => {
                    let cfg = NetworkConfig {
                        vlan: [None, Some(10), Some(20)][rng.below(3)],
                        mtu: [1500, 9000, 576][rng.below(3)],
                        uplink: rng.pick(&uplinks).filter(|_| rng.below(4) != 0),
                        default_locking_mode: if rng.below(3) == 0 {
                            NetworkLockingMode::Disabled
                        } else {
                            NetworkLockingMode::Unlocked
                        },
                    };
                    if let Ok(id) = sw.add_network(cfg) {
                        networks.push(id);
                    }
                }
                1 => {
                    if let Some(id) = rng.pick(&networks) {
                        if sw.remove_network(id).is_ok() {
                            networks.retain(|n| *n != id);
                        }
                    }
                }
                2 => {
                    if let Some(id) = rng.pick(&networks) {
                        let mut cfg = *sw.network(id).unwrap();
                        cfg.vlan = [None, Some(10), Some(20), Some(30)][rng.below(4)];
                        cfg.uplink = rng.pick(&uplinks);
                        let _ = sw.reconfigure_network(id, cfg);
                    }
                }
                3..=5 => {
                    if let Some(network) = rng.pick(&networks) {
                        let cfg = if rng.below(6) == 0 {
                            PortConfig::Local {
                                network,
                                mac: mac(rng.below(MACS)),
                            }
                        } else {
                            PortConfig::Vif(VifConfig {
                                network,
                                mac: mac(rng.below(MACS)),
                                locking_mode: locking(&mut rng),
                                ipv4_allowed: vec![Ipv4Addr::new(10, 0, 0, rng.below(4) as u8)],
                                ipv6_allowed: vec![],
                            })
                        };
                        if let Ok(id) = sw.add_port(cfg, now) {
                            ports.push(id);
                        }
                    }
                }
                6 => {
                    if let Some(id) = rng.pick(&ports) {
                        if sw.remove_port(id).is_ok() {
                            ports.retain(|p| *p != id);
                            uplinks.retain(|p| *p != id);
                        }
                    }
                }
                7 => {
                    if let (Some(id), Some(network)) = (rng.pick(&ports), rng.pick(&networks)) {
                        if let Some(PortConfig::Vif(v)) = sw.port(id) {
                            let mut v = v.clone();
                            v.network = network;
                            v.locking_mode = locking(&mut rng);
                            v.mac = mac(rng.below(MACS));
                            let _ = sw.reconfigure_port(id, PortConfig::Vif(v));
                        }
                    }
                }
                8 => {
                    if rng.below(4) == 0 {
                        let id = sw.add_port(PortConfig::Uplink, now).unwrap();
                        uplinks.push(id);
                        ports.push(id);
                    } else {
                        sw.age(now);
                    }
                }
                _ => {
                    let Some(port) = rng.pick(&ports) else {
                        continue;
                    };
                    let f = frame(&mut rng);
                    let eth = Ethernet::parse(&f).unwrap();
                    let expected = ingress_network(&sw, port, &eth);
                    let deliveries = sw.ingress(now, port, &f).deliveries.to_vec();
                    if deliveries.is_empty() {
                        continue;
                    }
                    let net_id = expected.expect("delivered a frame with no network");
                    let network = *sw.network(net_id).unwrap();
                    for d in deliveries {
                        delivered += 1;
                        assert_ne!(d.port, port);
                        match sw.port(d.port).expect("delivery to a removed port") {
                            PortConfig::Uplink => {
                                assert_eq!(network.uplink, Some(d.port));
                                let want = match (network.vlan, eth.vlan.is_some()) {
                                    (Some(v), false) => FrameEdit::PushTag(v),
                                    _ => FrameEdit::AsIs,
                                };
                                assert_eq!(d.edit, want);
                            }
                            access => {
                                let on = match access {
                                    PortConfig::Vif(v) => v.network,
                                    PortConfig::Local { network, .. } => *network,
                                    PortConfig::Uplink => unreachable!(),
                                };
                                assert_eq!(on, net_id, "frame crossed networks");
                                assert_ne!(
                                    sw.effective_locking(d.port),
                                    Some(EffectiveLocking::Disabled)
                                );
                                let want = if eth.vlan.is_some() {
                                    FrameEdit::PopTag
                                } else {
                                    FrameEdit::AsIs
                                };
                                assert_eq!(d.edit, want);
                            }
                        }
                        let untagged = eth.untagged_len(f.len()) - 14;
                        assert!(untagged <= usize::from(network.mtu));
                    }
                }
            }
            assert!(sw.learned_macs() <= config.max_macs);
        }
        assert!(delivered > 500, "seed {seed}: only {delivered} deliveries");
    }
}
