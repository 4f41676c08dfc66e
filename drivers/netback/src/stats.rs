//! Per-VIF counters for metering (`VIF_metrics`) and for telling a hostile guest apart.
//! Directions are named from the guest's side: `from_guest` is what the guest transmitted
//! (the tx ring), `to_guest` what it received (the rx ring).

/// Counters of one VIF, summed over its queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VifCounters {
    /// Frames handed to the switch (after segmentation: one per MTU frame).
    pub from_guest_frames: u64,
    pub from_guest_bytes: u64,
    /// Packets the guest sent that were dropped: refused by the switch (full), too many
    /// slots, or not segmentable.
    pub from_guest_dropped: u64,
    /// Packets answered with an error: a bad grant, a bad size.
    pub from_guest_errors: u64,
    /// Frames copied into the guest's receive buffers.
    pub to_guest_frames: u64,
    pub to_guest_bytes: u64,
    /// Frames for the guest thrown away: its queue was full, the frame was larger than the
    /// guest accepts, or the VIF was not connected.
    pub to_guest_dropped: u64,
    /// Frames whose copy into the guest failed (bad receive grant).
    pub to_guest_errors: u64,
    /// Times the frontend was found misbehaving badly enough to be disconnected.
    pub fatal_errors: u64,
}
