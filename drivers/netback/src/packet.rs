//! What netback must do to a guest's frame before the switch can take it: fill a checksum
//! the guest left blank (`NETTXF_csum_blank`) and cut a TSO super-frame (GSO extra info)
//! into MTU-sized frames. Pure functions over byte slices; the switch only ever sees plain
//! Ethernet frames with correct checksums.
//!
//! Header parsing understands Ethernet II with at most one 802.1Q tag, IPv4 (with options)
//! and IPv6 whose next header is TCP or UDP directly (extension headers are not walked:
//! such frames cannot be checksummed or segmented and are refused with a typed error).

use alloc::vec::Vec;

use crate::wire::GsoType;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// TCP flags touched by segmentation.
mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const PSH: u8 = 0x08;
    pub const CWR: u8 = 0x80;
}

/// Why a frame cannot be checksummed or segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than the headers it claims.
    Truncated,
    /// Not IPv4/IPv6, or an IP version field that disagrees with the EtherType.
    NotIp,
    /// An L4 protocol other than TCP/UDP (or behind IPv6 extension headers).
    UnsupportedL4(u8),
    /// GSO asked for on something that is not TCP of the announced IP version.
    GsoMismatch,
    /// An IPv4 fragment cannot be checksummed or segmented.
    Fragment,
    /// A segment could not be allocated.
    NoMemory,
    /// The IP and TCP headers alone fill the MTU.
    HeadersTooLong,
}

/// Offsets of the headers of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// Start of the IP header.
    pub l3: usize,
    /// Start of the TCP/UDP header.
    pub l4: usize,
    pub ipv6: bool,
    pub proto: u8,
    /// End of the IP packet (frames may carry Ethernet padding after it).
    pub end: usize,
}

fn be16(b: &[u8], at: usize) -> Result<u16, PacketError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(PacketError::Truncated),
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Length of the Ethernet header: 14, or 18 with an 802.1Q tag.
pub fn l2_header_len(frame: &[u8]) -> usize {
    if be16(frame, 12) == Ok(ETHERTYPE_VLAN) {
        18
    } else {
        14
    }
}

/// Finds the IP and L4 headers of an Ethernet frame.
pub fn parse_headers(frame: &[u8]) -> Result<Headers, PacketError> {
    let mut l3 = 14;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16)?;
        l3 = 18;
    }
    match ethertype {
        ETHERTYPE_IPV4 => {
            let vihl = *frame.get(l3).ok_or(PacketError::Truncated)?;
            if vihl >> 4 != 4 {
                return Err(PacketError::NotIp);
            }
            let ihl = usize::from(vihl & 0xf) * 4;
            if ihl < 20 {
                return Err(PacketError::Truncated);
            }
            let total = usize::from(be16(frame, l3 + 2)?);
            let end = l3 + total;
            if total < ihl || end > frame.len() {
                return Err(PacketError::Truncated);
            }
            let frag = be16(frame, l3 + 6)?;
            // More-fragments set, or a non-zero fragment offset.
            if frag & 0x3fff != 0 {
                return Err(PacketError::Fragment);
            }
            let proto = frame[l3 + 9];
            Ok(Headers {
                l3,
                l4: l3 + ihl,
                ipv6: false,
                proto,
                end,
            })
        }
        ETHERTYPE_IPV6 => {
            let v = *frame.get(l3).ok_or(PacketError::Truncated)?;
            if v >> 4 != 6 {
                return Err(PacketError::NotIp);
            }
            let payload = usize::from(be16(frame, l3 + 4)?);
            let end = l3 + 40 + payload;
            if end > frame.len() {
                return Err(PacketError::Truncated);
            }
            Ok(Headers {
                l3,
                l4: l3 + 40,
                ipv6: true,
                proto: frame[l3 + 6],
                end,
            })
        }
        _ => Err(PacketError::NotIp),
    }
}

/// One's-complement sum of `data` added to `sum` (not folded).
fn sum_bytes(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so a 64 KiB packet cannot overflow.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data` (RFC 1071).
pub fn internet_checksum(data: &[u8]) -> u16 {
    fold(sum_bytes(0, data))
}

fn pseudo_header_sum(frame: &[u8], h: &Headers, l4_len: usize) -> u32 {
    let mut sum = 0;
    if h.ipv6 {
        sum = sum_bytes(sum, &frame[h.l3 + 8..h.l3 + 40]);
        sum = sum_bytes(sum, &(l4_len as u32).to_be_bytes());
    } else {
        sum = sum_bytes(sum, &frame[h.l3 + 12..h.l3 + 20]);
        sum = sum_bytes(sum, &(l4_len as u16).to_be_bytes());
    }
    sum_bytes(sum, &[0, h.proto])
}

fn checksum_field(proto: u8) -> Result<usize, PacketError> {
    match proto {
        IPPROTO_TCP => Ok(16),
        IPPROTO_UDP => Ok(6),
        other => Err(PacketError::UnsupportedL4(other)),
    }
}

/// Computes and stores the TCP/UDP checksum of `frame` from scratch (pseudo-header
/// included), whatever the field held: netfront leaves the pseudo-header sum there, older
/// frontends leave zero.
pub fn fill_l4_checksum(frame: &mut [u8]) -> Result<(), PacketError> {
    let h = parse_headers(frame)?;
    fill_l4_checksum_at(frame, &h)
}

fn fill_l4_checksum_at(frame: &mut [u8], h: &Headers) -> Result<(), PacketError> {
    let field = h.l4 + checksum_field(h.proto)?;
    let min_l4 = if h.proto == IPPROTO_TCP { 20 } else { 8 };
    if h.l4 + min_l4 > h.end {
        return Err(PacketError::Truncated);
    }
    let l4_len = h.end - h.l4;
    put16(frame, field, 0);
    let sum = sum_bytes(pseudo_header_sum(frame, h, l4_len), &frame[h.l4..h.end]);
    let mut csum = fold(sum);
    // UDP sends a computed zero as all ones (zero means "no checksum" over IPv4).
    if h.proto == IPPROTO_UDP && csum == 0 {
        csum = 0xffff;
    }
    put16(frame, field, csum);
    Ok(())
}

/// Cuts a TCP super-frame into frames of at most `mss` payload bytes each, and IP packets
/// of at most `mtu` bytes (a guest announcing an MSS larger than the network's MTU gets
/// smaller segments, which TCP accepts), handing each to `emit` (which may refuse to take
/// more by returning `false`; the count delivered so far is returned). Each segment gets the original headers with: IPv4 total length, identification
/// (+1 per segment) and header checksum; IPv6 payload length; TCP sequence number advanced,
/// FIN and PSH only on the last segment, CWR only on the first; TCP checksum recomputed.
pub fn segment_tcp(
    frame: &[u8],
    kind: GsoType,
    mss: u16,
    mtu: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]) -> bool,
) -> Result<usize, PacketError> {
    let h = parse_headers(frame)?;
    if h.proto != IPPROTO_TCP || h.ipv6 != (kind == GsoType::TcpV6) {
        return Err(PacketError::GsoMismatch);
    }
    let doff = usize::from(*frame.get(h.l4 + 12).ok_or(PacketError::Truncated)? >> 4) * 4;
    let payload_start = h.l4 + doff;
    if doff < 20 || payload_start > h.end {
        return Err(PacketError::Truncated);
    }
    let headers = payload_start - h.l3;
    if mtu <= headers {
        return Err(PacketError::HeadersTooLong);
    }
    let mss = usize::from(mss.max(1)).min(mtu - headers);
    let payload = &frame[payload_start..h.end];
    let seq0 = u32::from_be_bytes([
        frame[h.l4 + 4],
        frame[h.l4 + 5],
        frame[h.l4 + 6],
        frame[h.l4 + 7],
    ]);
    let flags0 = frame[h.l4 + 13];
    let id0 = if h.ipv6 { 0 } else { be16(frame, h.l3 + 4)? };
    let chunks = payload.len().div_ceil(mss).max(1);
    scratch.clear();
    scratch
        .try_reserve(payload_start + mss)
        .map_err(|_| PacketError::NoMemory)?;
    let mut sent = 0;
    for i in 0..chunks {
        let start = i * mss;
        let end = (start + mss).min(payload.len());
        let chunk = &payload[start..end];
        scratch.clear();
        scratch.extend_from_slice(&frame[..payload_start]);
        scratch.extend_from_slice(chunk);
        let seg = scratch.as_mut_slice();
        let ip_len = seg.len() - h.l3;
        if h.ipv6 {
            put16(seg, h.l3 + 4, (ip_len - 40) as u16);
        } else {
            put16(seg, h.l3 + 2, ip_len as u16);
            put16(seg, h.l3 + 4, id0.wrapping_add(i as u16));
            put16(seg, h.l3 + 10, 0);
            let c = internet_checksum(&seg[h.l3..h.l4]);
            put16(seg, h.l3 + 10, c);
        }
        let seq = seq0.wrapping_add(start as u32);
        seg[h.l4 + 4..h.l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 != chunks {
            flags &= !(tcp_flags::FIN | tcp_flags::PSH);
        }
        if i != 0 {
            flags &= !tcp_flags::CWR;
        }
        seg[h.l4 + 13] = flags;
        let seg_h = Headers {
            end: seg.len(),
            ..h
        };
        fill_l4_checksum_at(seg, &seg_h)?;
        if !emit(seg) {
            return Ok(sent);
        }
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;

    /// Builds Ethernet + IPv4 + TCP with `payload`; checksums left as `csum` (blank or not).
    pub(crate) fn tcp4(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[0x00, 0x16, 0x3e, 0, 0, 2]);
        f[6..12].copy_from_slice(&[0x00, 0x16, 0x3e, 0, 0, 1]);
        put16(&mut f, 12, ETHERTYPE_IPV4);
        f[14] = 0x45;
        put16(&mut f, 16, (40 + payload.len()) as u16);
        put16(&mut f, 18, 0x1000); // id
        put16(&mut f, 20, 0x4000); // DF
        f[22] = 64;
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        let c = internet_checksum(&f[14..34]);
        put16(&mut f, 24, c);
        put16(&mut f, 34, 40000);
        put16(&mut f, 36, 80);
        f[38..42].copy_from_slice(&1000u32.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = flags;
        put16(&mut f, 48, 65535);
        f.extend_from_slice(payload);
        f
    }

    pub(crate) fn tcp6(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 20];
        put16(&mut f, 12, ETHERTYPE_IPV6);
        f[14] = 0x60;
        put16(&mut f, 18, (20 + payload.len()) as u16);
        f[20] = IPPROTO_TCP;
        f[21] = 64;
        f[22..38].copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f[38..54].copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        put16(&mut f, 54, 40000);
        put16(&mut f, 56, 22);
        f[58..62].copy_from_slice(&7u32.to_be_bytes());
        f[66] = 5 << 4;
        f[67] = flags;
        f.extend_from_slice(payload);
        f
    }

    /// Verifies the L4 checksum the way a receiver does: the sum over pseudo-header and
    /// segment including the checksum folds to zero.
    pub(crate) fn l4_checksum_ok(frame: &[u8]) -> bool {
        let h = parse_headers(frame).unwrap();
        let sum = sum_bytes(
            pseudo_header_sum(frame, &h, h.end - h.l4),
            &frame[h.l4..h.end],
        );
        fold(sum) == 0
    }

    fn ipv4_header_ok(frame: &[u8]) -> bool {
        internet_checksum(&frame[14..34]) == 0
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum 0xddf2, checksum its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(internet_checksum(&[0x12]), !0x1200);
    }

    #[test]
    fn blank_tcp4_and_tcp6_checksums_are_filled() {
        for mut f in [tcp4(b"hello world", 0x18), tcp6(b"hello six", 0x18)] {
            let h = parse_headers(&f).unwrap();
            // netfront leaves a pseudo-header sum; any junk must be overwritten.
            put16(&mut f, h.l4 + 16, 0xbeef);
            assert!(!l4_checksum_ok(&f));
            fill_l4_checksum(&mut f).unwrap();
            assert!(l4_checksum_ok(&f));
        }
    }

    #[test]
    fn udp_checksum_and_padding() {
        let mut f = tcp4(&[], 0);
        f[23] = IPPROTO_UDP;
        f.truncate(34);
        f.extend_from_slice(&[
            0x13, 0x88, 0x00, 0x35, 0x00, 0x0c, 0, 0, b'a', b'b', b'c', b'd',
        ]);
        put16(&mut f, 16, 32);
        f[24] = 0;
        f[25] = 0;
        let c = internet_checksum(&f[14..34]);
        put16(&mut f, 24, c);
        // Ethernet padding after the IP packet is not part of the checksum.
        f.extend_from_slice(&[0xff; 14]);
        fill_l4_checksum(&mut f).unwrap();
        assert!(l4_checksum_ok(&f));
        assert_ne!(be16(&f, 40).unwrap(), 0);
    }

    #[test]
    fn vlan_tagged_frames_are_parsed() {
        let f = tcp4(b"x", 0);
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&f[12..]);
        let h = parse_headers(&tagged).unwrap();
        assert_eq!((h.l3, h.l4, h.proto), (18, 38, IPPROTO_TCP));
        fill_l4_checksum(&mut tagged).unwrap();
        assert!(l4_checksum_ok(&tagged));
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(parse_headers(&[0; 10]), Err(PacketError::Truncated));
        let mut arp = tcp4(b"", 0);
        put16(&mut arp, 12, 0x0806);
        assert_eq!(parse_headers(&arp), Err(PacketError::NotIp));
        let mut lying = tcp4(b"abc", 0);
        put16(&mut lying, 16, 9000);
        assert_eq!(parse_headers(&lying), Err(PacketError::Truncated));
        let mut frag = tcp4(b"abc", 0);
        put16(&mut frag, 20, 0x2000);
        assert_eq!(parse_headers(&frag), Err(PacketError::Fragment));
        let mut icmp = tcp4(b"abc", 0);
        icmp[23] = 1;
        assert_eq!(
            fill_l4_checksum(&mut icmp),
            Err(PacketError::UnsupportedL4(1))
        );
        let mut bad_ihl = tcp4(b"abc", 0);
        bad_ihl[14] = 0x41;
        assert_eq!(parse_headers(&bad_ihl), Err(PacketError::Truncated));
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn tso_v4_cuts_into_mss_frames() {
        let data = payload(4000);
        let f = tcp4(&data, 0x80 | 0x18 | 0x01); // CWR PSH ACK FIN
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let mut scratch = Vec::new();
        let n = segment_tcp(&f, GsoType::TcpV4, 1460, 1500, &mut scratch, |s| {
            segs.push(s.to_vec());
            true
        })
        .unwrap();
        assert_eq!(n, 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(ipv4_header_ok(s), "segment {i} IPv4 checksum");
            assert!(l4_checksum_ok(s), "segment {i} TCP checksum");
            let len = if i < 2 { 1460 } else { 4000 - 2920 };
            assert_eq!(s.len(), 54 + len);
            assert_eq!(be16(s, 16).unwrap() as usize, 40 + len);
            assert_eq!(be16(s, 18).unwrap(), 0x1000 + i as u16);
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 1000 + (i as u32) * 1460);
            let flags = s[47];
            assert_eq!(flags & 0x80 != 0, i == 0, "CWR on the first only");
            assert_eq!(flags & 0x09 != 0, i == 2, "FIN/PSH on the last only");
            assert!(flags & 0x10 != 0, "ACK kept");
            joined.extend_from_slice(&s[54..]);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn tso_v6_cuts_and_fixes_payload_length() {
        let data = payload(3000);
        let f = tcp6(&data, 0x10);
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let mut scratch = Vec::new();
        segment_tcp(&f, GsoType::TcpV6, 1440, 1500, &mut scratch, |s| {
            segs.push(s.to_vec());
            true
        })
        .unwrap();
        assert_eq!(segs.len(), 3);
        for (i, s) in segs.iter().enumerate() {
            assert!(l4_checksum_ok(s));
            assert_eq!(be16(s, 18).unwrap() as usize, s.len() - 54);
            let seq = u32::from_be_bytes([s[58], s[59], s[60], s[61]]);
            assert_eq!(seq, 7 + (i as u32) * 1440);
        }
        assert_eq!(segs[2].len(), 74 + 120);
    }

    #[test]
    fn gso_type_must_match_the_frame() {
        let mut scratch = Vec::new();
        let f = tcp4(&payload(100), 0);
        assert_eq!(
            segment_tcp(&f, GsoType::TcpV6, 50, 1500, &mut scratch, |_| true),
            Err(PacketError::GsoMismatch)
        );
        let mut udp = f.clone();
        udp[23] = IPPROTO_UDP;
        assert_eq!(
            segment_tcp(&udp, GsoType::TcpV4, 50, 1500, &mut scratch, |_| true),
            Err(PacketError::GsoMismatch)
        );
    }

    #[test]
    fn an_mss_beyond_the_mtu_is_clamped() {
        let data = payload(9000);
        let f = tcp4(&data, 0x10);
        let mut sizes = Vec::new();
        let mut scratch = Vec::new();
        let n = segment_tcp(&f, GsoType::TcpV4, 8960, 1500, &mut scratch, |s| {
            assert!(l4_checksum_ok(s));
            sizes.push(s.len());
            true
        })
        .unwrap();
        assert_eq!(n, 9000usize.div_ceil(1460));
        assert!(sizes.iter().all(|s| *s <= 1514));
        assert_eq!(
            segment_tcp(&f, GsoType::TcpV4, 1460, 40, &mut scratch, |_| true),
            Err(PacketError::HeadersTooLong)
        );
    }

    #[test]
    fn emit_can_stop_segmentation() {
        let mut scratch = Vec::new();
        let f = tcp4(&payload(1000), 0);
        let mut left = 2;
        let n = segment_tcp(&f, GsoType::TcpV4, 100, 1500, &mut scratch, |_| {
            left -= 1;
            left > 0
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}
