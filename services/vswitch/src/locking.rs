//! The anti-spoofing rules of a VIF in xapi's `locked` mode.
//!
//! These follow the OpenFlow rules xapi installs for a locked VIF on Open vSwitch
//! (`setup-vif-rules`, `create_vswitch_rules`); they apply to frames *from* the guest only,
//! frames to it are not filtered. In order:
//!
//! * the Ethernet source must be the VIF's MAC;
//! * IPv4 UDP to port 67 (a DHCP client, whatever its source address) passes;
//! * ARP passes when its sender MAC is the VIF's and its sender IP is 0.0.0.0 (a probe)
//!   or in `ipv4_allowed`;
//! * IPv4 passes when its source is in `ipv4_allowed`;
//! * IPv6 neighbour solicitations pass from a source in `ipv6_allowed` carrying the VIF's
//!   MAC as source link-layer option; advertisements from a source in `ipv6_allowed`
//!   whose target is that same source; every other solicitation or advertisement is dropped;
//! * router advertisements, redirects and the mobile-prefix and multicast-router messages
//!   (ICMPv6 134, 137, 146, 147, 151, 152, 153) are dropped whatever their source;
//! * ICMPv6, TCP and UDP over IPv6 pass when the source is in `ipv6_allowed`;
//! * everything else is dropped (other EtherTypes, other IPv6 upper protocols).
//!
//! So a locked VIF with empty lists can still get a DHCP lease and probe ARP, and nothing
//! else.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::counters::DropReason;
use crate::mac::MacAddr;
use crate::wire::{
    Arp, Ethernet, Icmpv6, Ipv4, Ipv6, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6,
    IP_PROTO_ICMPV6, IP_PROTO_TCP, IP_PROTO_UDP,
};

/// DHCP server port: a client's requests go there.
const DHCP_SERVER_PORT: u16 = 67;

/// ICMPv6 types only routers send, dropped from any locked VIF.
const ROUTER_ONLY_ICMPV6: [u8; 7] = [134, 137, 146, 147, 151, 152, 153];

/// What a locked VIF may send as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity<'a> {
    pub(crate) mac: MacAddr,
    pub(crate) ipv4_allowed: &'a [Ipv4Addr],
    pub(crate) ipv6_allowed: &'a [Ipv6Addr],
}

/// Checks one untagged frame from a locked VIF.
pub(crate) fn check(
    identity: Identity<'_>,
    eth: &Ethernet,
    frame: &[u8],
) -> Result<(), DropReason> {
    if eth.src != identity.mac {
        return Err(DropReason::SpoofedMac);
    }
    let payload = frame.get(eth.payload_at..).ok_or(DropReason::Malformed)?;
    match eth.ethertype {
        ETHERTYPE_IPV4 => check_ipv4(identity, payload),
        ETHERTYPE_ARP => check_arp(identity, payload),
        ETHERTYPE_IPV6 => check_ipv6(identity, payload),
        _ => Err(DropReason::ProtocolNotAllowed),
    }
}

fn check_ipv4(identity: Identity<'_>, payload: &[u8]) -> Result<(), DropReason> {
    let ip = Ipv4::parse(payload).map_err(|_| DropReason::Malformed)?;
    if ip.protocol == IP_PROTO_UDP && ip.udp_dst_port == Some(DHCP_SERVER_PORT) {
        return Ok(());
    }
    if identity.ipv4_allowed.contains(&ip.src) {
        Ok(())
    } else {
        Err(DropReason::SpoofedIp)
    }
}

fn check_arp(identity: Identity<'_>, payload: &[u8]) -> Result<(), DropReason> {
    let arp = Arp::parse(payload).map_err(|_| DropReason::Malformed)?;
    let sender_ip_ok =
        arp.sender_ip == Ipv4Addr::UNSPECIFIED || identity.ipv4_allowed.contains(&arp.sender_ip);
    if arp.sender_mac == identity.mac && sender_ip_ok {
        Ok(())
    } else {
        Err(DropReason::SpoofedArp)
    }
}

fn check_ipv6(identity: Identity<'_>, payload: &[u8]) -> Result<(), DropReason> {
    let ip = Ipv6::parse(payload).map_err(|_| DropReason::Malformed)?;
    let src_allowed = identity.ipv6_allowed.contains(&ip.src);
    match ip.icmp {
        Some(Icmpv6::NeighbourSolicitation { source_ll }) => {
            if src_allowed && source_ll == Some(identity.mac) {
                Ok(())
            } else {
                Err(DropReason::SpoofedNeighbourDiscovery)
            }
        }
        Some(Icmpv6::NeighbourAdvertisement { target }) => {
            if src_allowed && target == ip.src {
                Ok(())
            } else {
                Err(DropReason::SpoofedNeighbourDiscovery)
            }
        }
        Some(Icmpv6::Other { message_type }) if ROUTER_ONLY_ICMPV6.contains(&message_type) => {
            Err(DropReason::RouterMessage)
        }
        _ if !matches!(ip.protocol, IP_PROTO_ICMPV6 | IP_PROTO_TCP | IP_PROTO_UDP) => {
            Err(DropReason::ProtocolNotAllowed)
        }
        _ if src_allowed => Ok(()),
        _ => Err(DropReason::SpoofedIp),
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::wire::build::*;

    const MAC: MacAddr = MacAddr([0, 0x16, 0x3e, 0, 0, 1]);
    const OTHER_MAC: MacAddr = MacAddr([0, 0x16, 0x3e, 0, 0, 2]);
    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);

    fn ip6() -> Ipv6Addr {
        "2001:db8::5".parse().unwrap()
    }
    fn other_ip6() -> Ipv6Addr {
        "2001:db8::6".parse().unwrap()
    }

    fn run(v4: &[Ipv4Addr], v6: &[Ipv6Addr], frame: &[u8]) -> Result<(), DropReason> {
        let identity = Identity {
            mac: MAC,
            ipv4_allowed: v4,
            ipv6_allowed: v6,
        };
        check(identity, &Ethernet::parse(frame).unwrap(), frame)
    }

    fn from(src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        ethernet(MacAddr::BROADCAST, src, ethertype, payload)
    }

    fn v4(src: Ipv4Addr) -> Vec<u8> {
        ipv4(
            src,
            Ipv4Addr::new(10, 0, 0, 1),
            IP_PROTO_UDP,
            &udp(1000, 53, &[0; 8]),
        )
    }

    fn v6(src: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
        ipv6(src, "ff02::1".parse().unwrap(), next, l4)
    }

    #[test]
    fn ipv4_source_must_be_allowed_and_mac_the_vifs() {
        assert_eq!(run(&[IP], &[], &from(MAC, ETHERTYPE_IPV4, &v4(IP))), Ok(()));
        assert_eq!(
            run(&[IP], &[], &from(MAC, ETHERTYPE_IPV4, &v4(OTHER_IP))),
            Err(DropReason::SpoofedIp)
        );
        assert_eq!(
            run(&[IP], &[], &from(OTHER_MAC, ETHERTYPE_IPV4, &v4(IP))),
            Err(DropReason::SpoofedMac)
        );
        assert_eq!(
            run(&[IP], &[], &from(MAC, ETHERTYPE_IPV4, &[0x45, 0])),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn dhcp_client_passes_with_empty_lists_but_nothing_else() {
        let discover = ipv4(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            IP_PROTO_UDP,
            &udp(68, 67, &[0; 240]),
        );
        assert_eq!(run(&[], &[], &from(MAC, ETHERTYPE_IPV4, &discover)), Ok(()));
        // DHCP from a foreign MAC is still a spoof.
        assert_eq!(
            run(&[], &[], &from(OTHER_MAC, ETHERTYPE_IPV4, &discover)),
            Err(DropReason::SpoofedMac)
        );
        // A DHCP *server* reply (to port 68) is not a client request.
        let offer = ipv4(
            OTHER_IP,
            Ipv4Addr::BROADCAST,
            IP_PROTO_UDP,
            &udp(67, 68, &[0; 240]),
        );
        assert_eq!(
            run(&[], &[], &from(MAC, ETHERTYPE_IPV4, &offer)),
            Err(DropReason::SpoofedIp)
        );
        assert_eq!(
            run(&[], &[], &from(MAC, ETHERTYPE_IPV4, &v4(IP))),
            Err(DropReason::SpoofedIp)
        );
    }

    #[test]
    fn arp_sender_must_be_the_vif() {
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let ok = arp(1, MAC, IP, gw);
        assert_eq!(run(&[IP], &[], &from(MAC, ETHERTYPE_ARP, &ok)), Ok(()));
        let reply = arp(2, MAC, IP, gw);
        assert_eq!(run(&[IP], &[], &from(MAC, ETHERTYPE_ARP, &reply)), Ok(()));
        // Probe (sender 0.0.0.0) passes even with no allowed address.
        let probe = arp(1, MAC, Ipv4Addr::UNSPECIFIED, IP);
        assert_eq!(run(&[], &[], &from(MAC, ETHERTYPE_ARP, &probe)), Ok(()));
        // Gratuitous ARP for someone else's address: poisoning.
        let poison = arp(2, MAC, gw, gw);
        assert_eq!(
            run(&[IP], &[], &from(MAC, ETHERTYPE_ARP, &poison)),
            Err(DropReason::SpoofedArp)
        );
        // Sender MAC inside ARP differs from the frame's.
        let inner = arp(2, OTHER_MAC, IP, gw);
        assert_eq!(
            run(&[IP], &[], &from(MAC, ETHERTYPE_ARP, &inner)),
            Err(DropReason::SpoofedArp)
        );
        assert_eq!(
            run(&[IP], &[], &from(MAC, ETHERTYPE_ARP, &ok[..10])),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn neighbour_discovery_claims_only_own_addresses() {
        let allowed = [ip6()];
        let target = other_ip6();
        let ns = v6(
            ip6(),
            IP_PROTO_ICMPV6,
            &neighbour_solicitation(target, Some(MAC)),
        );
        assert_eq!(run(&[], &allowed, &from(MAC, ETHERTYPE_IPV6, &ns)), Ok(()));
        // Solicitation with another link-layer address, or none (xapi matches nd_sll).
        for sll in [Some(OTHER_MAC), None] {
            let ns = v6(ip6(), IP_PROTO_ICMPV6, &neighbour_solicitation(target, sll));
            assert_eq!(
                run(&[], &allowed, &from(MAC, ETHERTYPE_IPV6, &ns)),
                Err(DropReason::SpoofedNeighbourDiscovery)
            );
        }
        // Solicitation from a source not allowed (duplicate address detection from :: too).
        for src in [other_ip6(), Ipv6Addr::UNSPECIFIED] {
            let ns = v6(
                src,
                IP_PROTO_ICMPV6,
                &neighbour_solicitation(target, Some(MAC)),
            );
            assert_eq!(
                run(&[], &allowed, &from(MAC, ETHERTYPE_IPV6, &ns)),
                Err(DropReason::SpoofedNeighbourDiscovery)
            );
        }
        let na = v6(ip6(), IP_PROTO_ICMPV6, &neighbour_advertisement(ip6()));
        assert_eq!(run(&[], &allowed, &from(MAC, ETHERTYPE_IPV6, &na)), Ok(()));
        // Advertising another address, even from an allowed source: a takeover.
        let na = v6(
            ip6(),
            IP_PROTO_ICMPV6,
            &neighbour_advertisement(other_ip6()),
        );
        assert_eq!(
            run(&[], &allowed, &from(MAC, ETHERTYPE_IPV6, &na)),
            Err(DropReason::SpoofedNeighbourDiscovery)
        );
    }

    #[test]
    fn router_messages_never_pass() {
        for t in ROUTER_ONLY_ICMPV6 {
            let f = v6(ip6(), IP_PROTO_ICMPV6, &icmpv6(t));
            assert_eq!(
                run(&[], &[ip6()], &from(MAC, ETHERTYPE_IPV6, &f)),
                Err(DropReason::RouterMessage),
                "type {t}"
            );
        }
        // Echo request from an allowed address passes; from another one does not.
        let echo = v6(ip6(), IP_PROTO_ICMPV6, &icmpv6(128));
        assert_eq!(
            run(&[], &[ip6()], &from(MAC, ETHERTYPE_IPV6, &echo)),
            Ok(())
        );
        let echo = v6(other_ip6(), IP_PROTO_ICMPV6, &icmpv6(128));
        assert_eq!(
            run(&[], &[ip6()], &from(MAC, ETHERTYPE_IPV6, &echo)),
            Err(DropReason::SpoofedIp)
        );
    }

    #[test]
    fn ipv6_upper_protocols_and_other_ethertypes() {
        let tcp = v6(ip6(), IP_PROTO_TCP, &[0; 20]);
        assert_eq!(run(&[], &[ip6()], &from(MAC, ETHERTYPE_IPV6, &tcp)), Ok(()));
        // IPv6 with no allowed address: nothing (not even link-local) passes.
        assert_eq!(
            run(&[IP], &[], &from(MAC, ETHERTYPE_IPV6, &tcp)),
            Err(DropReason::SpoofedIp)
        );
        let sctp = v6(ip6(), 132, &[0; 12]);
        assert_eq!(
            run(&[], &[ip6()], &from(MAC, ETHERTYPE_IPV6, &sctp)),
            Err(DropReason::ProtocolNotAllowed)
        );
        // LLDP, IPX, anything not IP or ARP.
        assert_eq!(
            run(&[IP], &[ip6()], &from(MAC, 0x88cc, &[0; 30])),
            Err(DropReason::ProtocolNotAllowed)
        );
    }
}
