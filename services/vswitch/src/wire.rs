//! Read-only views of the header fields the switch decides on: Ethernet and 802.1Q, ARP,
//! IPv4 (source, protocol, UDP destination port), IPv6 (source, upper protocol after the
//! extension headers) and the neighbour-discovery fields xapi's locking rules match.
//!
//! Hand-written rather than smoltcp's `wire` because the IPv6/NDP views need smoltcp's
//! `proto-ipv6` feature, and Cargo would unify it into the management stack's smoltcp build.
//! Every read is bounds-checked; nothing here panics on guest bytes.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::mac::MacAddr;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Ethernet header without a tag: destination, source, EtherType.
pub const ETH_HEADER: usize = 14;
/// Size of one 802.1Q tag (TPID + TCI).
pub const VLAN_TAG: usize = 4;

pub const IP_PROTO_TCP: u8 = 6;
pub const IP_PROTO_UDP: u8 = 17;
pub const IP_PROTO_ICMPV6: u8 = 58;

/// A frame too short for the header it claims to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

fn be16(bytes: &[u8], at: usize) -> Result<u16, Truncated> {
    match bytes.get(at..at + 2) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(Truncated),
    }
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], Truncated> {
    bytes
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(Truncated)
}

fn byte(bytes: &[u8], at: usize) -> Result<u8, Truncated> {
    bytes.get(at).copied().ok_or(Truncated)
}

/// The Ethernet header, with its 802.1Q tag when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// The VLAN ID of the (outer) 802.1Q tag; 0 for a priority-only tag.
    pub vlan: Option<u16>,
    /// The EtherType after the tag, if any.
    pub ethertype: u16,
    /// Where the payload starts (14, or 18 behind a tag).
    pub payload_at: usize,
}

impl Ethernet {
    pub fn parse(frame: &[u8]) -> Result<Ethernet, Truncated> {
        let dst = MacAddr(array(frame, 0)?);
        let src = MacAddr(array(frame, 6)?);
        let outer = be16(frame, 12)?;
        if outer == ETHERTYPE_VLAN {
            let tci = be16(frame, 14)?;
            let ethertype = be16(frame, 16)?;
            Ok(Ethernet {
                dst,
                src,
                vlan: Some(tci & 0x0fff),
                ethertype,
                payload_at: ETH_HEADER + VLAN_TAG,
            })
        } else {
            Ok(Ethernet {
                dst,
                src,
                vlan: None,
                ethertype: outer,
                payload_at: ETH_HEADER,
            })
        }
    }

    /// The frame's length as it is inside the switch, without an 802.1Q tag.
    pub fn untagged_len(&self, frame_len: usize) -> usize {
        if self.vlan.is_some() {
            frame_len - VLAN_TAG
        } else {
            frame_len
        }
    }
}

/// An ARP packet for IPv4 over Ethernet; any other hardware/protocol pairing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

impl Arp {
    pub fn parse(payload: &[u8]) -> Result<Arp, Truncated> {
        let htype = be16(payload, 0)?;
        let ptype = be16(payload, 2)?;
        let hlen = byte(payload, 4)?;
        let plen = byte(payload, 5)?;
        if htype != 1 || ptype != ETHERTYPE_IPV4 || hlen != 6 || plen != 4 {
            return Err(Truncated);
        }
        Ok(Arp {
            operation: be16(payload, 6)?,
            sender_mac: MacAddr(array(payload, 8)?),
            sender_ip: Ipv4Addr::from(array::<4>(payload, 14)?),
            target_ip: Ipv4Addr::from(array::<4>(payload, 24)?),
        })
    }
}

/// The IPv4 fields the locking rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub protocol: u8,
    /// The UDP destination port, when this is the first fragment of a UDP datagram whose
    /// header is present (as Open vSwitch extracts `tp_dst`).
    pub udp_dst_port: Option<u16>,
}

impl Ipv4 {
    pub fn parse(payload: &[u8]) -> Result<Ipv4, Truncated> {
        let version_ihl = byte(payload, 0)?;
        let header_len = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || header_len < 20 || payload.len() < header_len {
            return Err(Truncated);
        }
        let fragment_offset = be16(payload, 6)? & 0x1fff;
        let protocol = byte(payload, 9)?;
        let src = Ipv4Addr::from(array::<4>(payload, 12)?);
        let udp_dst_port = if protocol == IP_PROTO_UDP && fragment_offset == 0 {
            be16(payload, header_len + 2).ok()
        } else {
            None
        };
        Ok(Ipv4 {
            src,
            protocol,
            udp_dst_port,
        })
    }
}

/// Neighbour-discovery and other ICMPv6 fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv6 {
    /// Neighbour solicitation (type 135) with its source link-layer address option, if any.
    NeighbourSolicitation { source_ll: Option<MacAddr> },
    /// Neighbour advertisement (type 136) and the address it advertises.
    NeighbourAdvertisement { target: Ipv6Addr },
    /// Any other message type (or a later fragment, whose type is unknown: 0).
    Other { message_type: u8 },
}

pub const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
pub const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
pub const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
pub const ICMPV6_REDIRECT: u8 = 137;

/// The IPv6 fields the locking rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    /// The upper-layer protocol after hop-by-hop, routing, destination-options,
    /// authentication and fragment headers.
    pub protocol: u8,
    /// Present for ICMPv6.
    pub icmp: Option<Icmpv6>,
}

/// At most this many extension headers are walked; more is treated as malformed, so a
/// guest cannot make the switch loop over a long chain.
const MAX_EXTENSION_HEADERS: usize = 8;

impl Ipv6 {
    pub fn parse(payload: &[u8]) -> Result<Ipv6, Truncated> {
        if byte(payload, 0)? >> 4 != 6 {
            return Err(Truncated);
        }
        let src = Ipv6Addr::from(array::<16>(payload, 8)?);
        let mut next = byte(payload, 6)?;
        let mut at = 40;
        let mut later_fragment = false;
        let mut walked = 0;
        loop {
            let header_len = match next {
                // Hop-by-hop, routing, destination options: length in 8-octet units + 1.
                0 | 43 | 60 => (usize::from(byte(payload, at + 1)?) + 1) * 8,
                // Authentication header: length in 4-octet units + 2.
                51 => (usize::from(byte(payload, at + 1)?) + 2) * 4,
                // Fragment header: fixed 8 bytes; a non-zero offset means no L4 header here.
                44 => {
                    if be16(payload, at + 2)? & 0xfff8 != 0 {
                        later_fragment = true;
                    }
                    8
                }
                _ => break,
            };
            walked += 1;
            if walked > MAX_EXTENSION_HEADERS {
                return Err(Truncated);
            }
            next = byte(payload, at)?;
            at += header_len;
        }
        let icmp = if next != IP_PROTO_ICMPV6 {
            None
        } else if later_fragment {
            Some(Icmpv6::Other { message_type: 0 })
        } else {
            Some(parse_icmpv6(payload.get(at..).ok_or(Truncated)?)?)
        };
        Ok(Ipv6 {
            src,
            protocol: next,
            icmp,
        })
    }
}

fn parse_icmpv6(message: &[u8]) -> Result<Icmpv6, Truncated> {
    let message_type = byte(message, 0)?;
    match message_type {
        ICMPV6_NEIGHBOUR_SOLICITATION => {
            // Type, code, checksum, reserved (8), target (16), then options.
            let _target: [u8; 16] = array(message, 8)?;
            let mut at = 24;
            let mut source_ll = None;
            while at < message.len() {
                let option_type = byte(message, at)?;
                let units = usize::from(byte(message, at + 1)?);
                if units == 0 {
                    // RFC 4861 4.6: a zero-length option is invalid; the packet is dropped.
                    return Err(Truncated);
                }
                if option_type == 1 {
                    source_ll = Some(MacAddr(array(message, at + 2)?));
                }
                at += units * 8;
            }
            Ok(Icmpv6::NeighbourSolicitation { source_ll })
        }
        ICMPV6_NEIGHBOUR_ADVERTISEMENT => Ok(Icmpv6::NeighbourAdvertisement {
            target: Ipv6Addr::from(array::<16>(message, 8)?),
        }),
        _ => Ok(Icmpv6::Other { message_type }),
    }
}

#[cfg(test)]
pub(crate) mod build {
    //! Frame builders for tests: just enough of each protocol for the parsers and rules.
    use alloc::vec::Vec;
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    pub fn ethernet(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&frame[..12]);
        f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
        f.extend_from_slice(&frame[12..]);
        f
    }

    pub fn arp(op: u16, sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&1u16.to_be_bytes());
        p.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        p.extend_from_slice(&[6, 4]);
        p.extend_from_slice(&op.to_be_bytes());
        p.extend_from_slice(&sha.0);
        p.extend_from_slice(&spa.octets());
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&tpa.octets());
        p
    }

    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.push(0x45);
        p.push(0);
        p.extend_from_slice(&(20 + l4.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 64, protocol, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(l4);
        p
    }

    pub fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&src_port.to_be_bytes());
        p.extend_from_slice(&dst_port.to_be_bytes());
        p.extend_from_slice(&(8 + data.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(data);
        p
    }

    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        p.push(next);
        p.push(255);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(l4);
        p
    }

    pub fn neighbour_solicitation(target: Ipv6Addr, source_ll: Option<MacAddr>) -> Vec<u8> {
        let mut p = Vec::from([ICMPV6_NEIGHBOUR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&target.octets());
        if let Some(mac) = source_ll {
            p.extend_from_slice(&[1, 1]);
            p.extend_from_slice(&mac.0);
        }
        p
    }

    pub fn neighbour_advertisement(target: Ipv6Addr) -> Vec<u8> {
        let mut p = Vec::from([ICMPV6_NEIGHBOUR_ADVERTISEMENT, 0, 0, 0, 0x60, 0, 0, 0]);
        p.extend_from_slice(&target.octets());
        p
    }

    pub fn icmpv6(message_type: u8) -> Vec<u8> {
        Vec::from([message_type, 0, 0, 0, 0, 0, 0, 0])
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    #[test]
    fn ethernet_untagged_and_tagged() {
        let plain = ethernet(B, A, ETHERTYPE_IPV4, &[0; 20]);
        let e = Ethernet::parse(&plain).unwrap();
        assert_eq!(
            (e.dst, e.src, e.vlan, e.ethertype, e.payload_at),
            (B, A, None, 0x0800, 14)
        );
        assert_eq!(e.untagged_len(plain.len()), 34);

        let t = tagged(&plain, 0x2000 | 42); // PCP 1, VID 42
        let e = Ethernet::parse(&t).unwrap();
        assert_eq!((e.vlan, e.ethertype, e.payload_at), (Some(42), 0x0800, 18));
        assert_eq!(e.untagged_len(t.len()), 34);
    }

    #[test]
    fn short_frames_are_truncated() {
        assert_eq!(Ethernet::parse(&[0; 13]), Err(Truncated));
        let mut t = tagged(&ethernet(B, A, 0x0800, &[]), 5);
        t.truncate(17);
        assert_eq!(Ethernet::parse(&t), Err(Truncated));
    }

    #[test]
    fn arp_fields_and_foreign_arp_is_refused() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let p = arp(2, A, ip, Ipv4Addr::new(10, 0, 0, 2));
        let a = Arp::parse(&p).unwrap();
        assert_eq!((a.operation, a.sender_mac, a.sender_ip), (2, A, ip));
        let mut wrong = p.clone();
        wrong[4] = 8; // hardware length 8
        assert_eq!(Arp::parse(&wrong), Err(Truncated));
        assert_eq!(Arp::parse(&p[..20]), Err(Truncated));
    }

    #[test]
    fn ipv4_udp_port_only_in_first_fragment() {
        let src = Ipv4Addr::new(0, 0, 0, 0);
        let dst = Ipv4Addr::BROADCAST;
        let mut p = ipv4(src, dst, IP_PROTO_UDP, &udp(68, 67, &[0; 4]));
        let v = Ipv4::parse(&p).unwrap();
        assert_eq!((v.src, v.protocol, v.udp_dst_port), (src, 17, Some(67)));
        p[7] = 1; // fragment offset 8 bytes
        assert_eq!(Ipv4::parse(&p).unwrap().udp_dst_port, None);
        // A header length beyond the packet is malformed.
        let mut bad = ipv4(src, dst, 6, &[]);
        bad[0] = 0x4f;
        assert_eq!(Ipv4::parse(&bad), Err(Truncated));
    }

    #[test]
    fn ipv6_walks_extension_headers_to_icmpv6() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "ff02::1".parse().unwrap();
        let target: Ipv6Addr = "2001:db8::1".parse().unwrap();
        // Hop-by-hop header (8 bytes) in front of a neighbour advertisement.
        let mut l4 = Vec::from([IP_PROTO_ICMPV6, 0, 0, 0, 0, 0, 0, 0]);
        l4.extend_from_slice(&neighbour_advertisement(target));
        let v = Ipv6::parse(&ipv6(src, dst, 0, &l4)).unwrap();
        assert_eq!(v.src, src);
        assert_eq!(v.protocol, IP_PROTO_ICMPV6);
        assert_eq!(v.icmp, Some(Icmpv6::NeighbourAdvertisement { target }));
    }

    #[test]
    fn ipv6_neighbour_solicitation_options() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let target: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let with = ipv6(src, target, 58, &neighbour_solicitation(target, Some(A)));
        assert_eq!(
            Ipv6::parse(&with).unwrap().icmp,
            Some(Icmpv6::NeighbourSolicitation { source_ll: Some(A) })
        );
        let without = ipv6(src, target, 58, &neighbour_solicitation(target, None));
        assert_eq!(
            Ipv6::parse(&without).unwrap().icmp,
            Some(Icmpv6::NeighbourSolicitation { source_ll: None })
        );
        let mut zero_len = neighbour_solicitation(target, Some(A));
        zero_len[25] = 0;
        assert_eq!(
            Ipv6::parse(&ipv6(src, target, 58, &zero_len)),
            Err(Truncated)
        );
    }

    #[test]
    fn ipv6_extension_chain_is_bounded() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut l4 = Vec::new();
        for _ in 0..MAX_EXTENSION_HEADERS + 1 {
            l4.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]); // destination options → again
        }
        l4.extend_from_slice(&icmpv6(128));
        assert_eq!(Ipv6::parse(&ipv6(src, src, 60, &l4)), Err(Truncated));
    }

    #[test]
    fn ipv6_later_fragment_has_no_icmp_type() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut l4 = Vec::from([IP_PROTO_ICMPV6, 0, 0, 8, 0, 0, 0, 1]); // offset 1 (×8)
        l4.extend_from_slice(&icmpv6(ICMPV6_ROUTER_ADVERTISEMENT));
        let v = Ipv6::parse(&ipv6(src, src, 44, &l4)).unwrap();
        assert_eq!(v.icmp, Some(Icmpv6::Other { message_type: 0 }));
    }
}
