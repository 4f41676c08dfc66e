//! Per-port counters: traffic both ways and drops by reason, read by `PIF_metrics`,
//! `VIF_metrics` and metering.

/// Why the switch threw a frame away. Counted on the port the frame came in on, except
/// [`DropReason::EgressQueueFull`], which the caller reports for the port it went out on,
/// and [`DropReason::PortDisabled`] for a unicast to a disabled VIF, counted on that VIF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Shorter than the headers it claims to carry, or a header that does not parse.
    Malformed,
    /// The source MAC is a group address or all zeroes.
    InvalidSourceMac,
    /// The source MAC is pinned to another port (a locked VIF's or Keel's own address).
    PinnedMacConflict,
    /// From an uplink, with a VLAN no network on that uplink has (or untagged where the
    /// uplink has no untagged network).
    UnknownVlan,
    /// An 802.1Q-tagged frame from an access port (VIF or local stack): a guest may not
    /// pick its own VLAN.
    TaggedOnAccessPort,
    /// Longer than the network's MTU allows.
    Oversized,
    /// To or from a VIF whose locking mode is `disabled`.
    PortDisabled,
    /// Locked VIF: the source MAC is not the VIF's.
    SpoofedMac,
    /// Locked VIF: an IPv4 or IPv6 source address not in `ipv4_allowed`/`ipv6_allowed`.
    SpoofedIp,
    /// Locked VIF: ARP whose sender hardware or protocol address is not the VIF's.
    SpoofedArp,
    /// Locked VIF: a neighbour solicitation or advertisement claiming another address.
    SpoofedNeighbourDiscovery,
    /// Locked VIF: router advertisement, redirect and the other ICMPv6 messages only
    /// routers send.
    RouterMessage,
    /// Locked VIF: an EtherType or IP protocol the locking rules do not let through.
    ProtocolNotAllowed,
    /// Broadcast, multicast or unknown unicast beyond the port's flood budget.
    FloodLimited,
    /// A unicast frame to a MAC learned on the port it came from (no hairpin).
    DestinationOnSourcePort,
    /// The caller could not queue a frame for this port (ring or queue full).
    EgressQueueFull,
}

impl DropReason {
    pub const ALL: [DropReason; 16] = [
        DropReason::Malformed,
        DropReason::InvalidSourceMac,
        DropReason::PinnedMacConflict,
        DropReason::UnknownVlan,
        DropReason::TaggedOnAccessPort,
        DropReason::Oversized,
        DropReason::PortDisabled,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::SpoofedNeighbourDiscovery,
        DropReason::RouterMessage,
        DropReason::ProtocolNotAllowed,
        DropReason::FloodLimited,
        DropReason::DestinationOnSourcePort,
        DropReason::EgressQueueFull,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// A stable name for metrics keys and logs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::InvalidSourceMac => "invalid_source_mac",
            DropReason::PinnedMacConflict => "pinned_mac_conflict",
            DropReason::UnknownVlan => "unknown_vlan",
            DropReason::TaggedOnAccessPort => "tagged_on_access_port",
            DropReason::Oversized => "oversized",
            DropReason::PortDisabled => "port_disabled",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SpoofedNeighbourDiscovery => "spoofed_neighbour_discovery",
            DropReason::RouterMessage => "router_message",
            DropReason::ProtocolNotAllowed => "protocol_not_allowed",
            DropReason::FloodLimited => "flood_limited",
            DropReason::DestinationOnSourcePort => "destination_on_source_port",
            DropReason::EgressQueueFull => "egress_queue_full",
        }
    }
}

/// Drop counts, one per [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// (reason, count) for every reason with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n != 0)
    }

    pub(crate) fn add(&mut self, reason: DropReason) {
        let slot = &mut self.0[reason.index()];
        *slot = slot.saturating_add(1);
    }
}

/// Learning events on a port that did not drop the frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LearningCounts {
    /// Source addresses not learned because the port holds its limit of entries.
    pub refused_port_limit: u64,
    /// Source addresses not learned because the whole table is full.
    pub refused_table_full: u64,
    /// Addresses that moved to this port from another one.
    pub moves_in: u64,
}

/// Counters of one port. `rx` is what the switch received from the port (every frame,
/// dropped ones too), `tx` what it handed out to the port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: DropCounts,
    pub learning: LearningCounts,
}

impl PortCounters {
    pub(crate) fn received(&mut self, len: usize) {
        self.rx_packets = self.rx_packets.saturating_add(1);
        self.rx_bytes = self.rx_bytes.saturating_add(len as u64);
    }

    pub(crate) fn sent(&mut self, len: usize) {
        self.tx_packets = self.tx_packets.saturating_add(1);
        self.tx_bytes = self.tx_bytes.saturating_add(len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let mut d = DropCounts::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            for _ in 0..=i {
                d.add(*r);
            }
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(d.get(*r), i as u64 + 1, "{}", r.name());
        }
        let n = DropReason::ALL.len() as u64;
        assert_eq!(d.total(), n * (n + 1) / 2);
        let mut names: alloc::vec::Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }
}
