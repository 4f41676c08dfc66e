//! `VBD_metrics` from the disk backends' byte counters: the kernel samples each attached
//! disk's totals (blkback's per-device statistics) every few seconds and hands them to
//! [`XenApi::record_disk_io`]; `io_read_kbs` and `io_write_kbs` become the rates since the
//! previous sample, as `VIF_metrics` do from the switch's counters (`network::record_rates`).
//! The rates describe the running host only, so `VBD_metrics` are not kept across a reboot.

use super::network::{prune_samples, record_rates};
use super::vbd_unplug::attached_vbd;
use super::vm_rules::text;
use crate::api::XenApi;
use crate::guest::DomId;
use crate::network_backend::ByteCounters;
use crate::store::consistent;
use crate::time::Timestamp;

/// One attached disk's totals since its backend started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskIoSample {
    pub domid: DomId,
    /// The vbd's devid (`202 << 8 | index << 4`).
    pub devid: u32,
    /// Bytes the guest read from the disk.
    pub read_bytes: u64,
    /// Bytes the guest wrote to it.
    pub write_bytes: u64,
}

impl XenApi {
    /// One sample of the disk backends' counters. A disk no attached VBD matches is
    /// ignored; the first sample of a disk, and one whose totals went down (its backend was
    /// started again), only starts the count.
    pub fn record_disk_io(&mut self, samples: &[DiskIoSample], now: Timestamp) {
        let state = &mut self.state;
        for sample in samples {
            let Some(vbd) = attached_vbd(&state.db, sample.domid, sample.devid) else {
                continue;
            };
            let metrics = text(&state.db, &vbd, "metrics");
            let counters = ByteCounters {
                rx_bytes: sample.read_bytes,
                tx_bytes: sample.write_bytes,
            };
            consistent(record_rates(state, &metrics, counters, now));
        }
        prune_samples(state);
    }
}
