//! Controller register offsets and the fields Keel uses (NVMe base specification, "Controller
//! Registers").

pub const CAP: usize = 0x00;
pub const VS: usize = 0x08;
pub const INTMS: usize = 0x0c;
pub const CC: usize = 0x14;
pub const CSTS: usize = 0x1c;
pub const AQA: usize = 0x24;
pub const ASQ: usize = 0x28;
pub const ACQ: usize = 0x30;
/// First doorbell; queue `y`'s submission tail is at `DOORBELLS + 2y * stride`, its
/// completion head at `DOORBELLS + (2y + 1) * stride`.
pub const DOORBELLS: usize = 0x1000;

pub const CC_EN: u32 = 1 << 0;
/// I/O submission queue entry size 2^6 = 64 bytes, completion entry 2^4 = 16 bytes.
pub const CC_IOSQES_64: u32 = 6 << 16;
pub const CC_IOCQES_16: u32 = 4 << 20;
/// Shutdown notification: normal.
pub const CC_SHN_NORMAL: u32 = 1 << 14;

pub const CSTS_RDY: u32 = 1 << 0;
pub const CSTS_CFS: u32 = 1 << 1;
pub const CSTS_SHST_MASK: u32 = 3 << 2;
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;

/// The capabilities register, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Largest queue the controller supports, in entries (MQES + 1).
    pub max_queue_entries: u32,
    /// Queues must be physically contiguous.
    pub contiguous_queues_required: bool,
    /// Worst-case time for CSTS.RDY to follow CC.EN, in milliseconds.
    pub ready_timeout_ms: u32,
    /// Distance between doorbell registers, in bytes.
    pub doorbell_stride: usize,
    /// The NVM command set is supported.
    pub nvm_command_set: bool,
    /// Smallest and largest memory page size, in bytes.
    pub min_page_size: u64,
    pub max_page_size: u64,
}

impl Capabilities {
    pub fn decode(cap: u64) -> Self {
        let field = |shift: u32, bits: u32| (cap >> shift) & ((1u64 << bits) - 1);
        Capabilities {
            max_queue_entries: field(0, 16) as u32 + 1,
            contiguous_queues_required: field(16, 1) == 1,
            ready_timeout_ms: (field(24, 8) as u32).max(1) * 500,
            doorbell_stride: 4 << field(32, 4),
            nvm_command_set: field(37, 1) == 1,
            min_page_size: 1 << (12 + field(48, 4)),
            max_page_size: 1 << (12 + field(52, 4)),
        }
    }

    /// Offset of queue `qid`'s submission-tail doorbell.
    pub fn sq_doorbell(&self, qid: u16) -> usize {
        DOORBELLS + 2 * usize::from(qid) * self.doorbell_stride
    }

    /// Offset of queue `qid`'s completion-head doorbell.
    pub fn cq_doorbell(&self, qid: u16) -> usize {
        DOORBELLS + (2 * usize::from(qid) + 1) * self.doorbell_stride
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_qemu_capabilities() {
        // QEMU 7.2: MQES 2047, CQR, TO 15 (7.5 s), DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = 0x7ff | (1 << 16) | (0xf << 24) | (1 << 37) | (4u64 << 52);
        let c = Capabilities::decode(cap);
        assert_eq!(c.max_queue_entries, 2048);
        assert!(c.contiguous_queues_required);
        assert_eq!(c.ready_timeout_ms, 7500);
        assert_eq!(c.doorbell_stride, 4);
        assert!(c.nvm_command_set);
        assert_eq!((c.min_page_size, c.max_page_size), (4096, 65536));
        assert_eq!(c.sq_doorbell(1), 0x1008);
        assert_eq!(c.cq_doorbell(1), 0x100c);
    }

    #[test]
    fn doorbell_stride_scales_offsets() {
        let c = Capabilities::decode(2u64 << 32);
        assert_eq!(c.doorbell_stride, 16);
        assert_eq!(c.sq_doorbell(0), 0x1000);
        assert_eq!(c.cq_doorbell(0), 0x1010);
        assert_eq!(c.sq_doorbell(2), 0x1040);
        // A zero timeout field still waits a little.
        assert_eq!(c.ready_timeout_ms, 500);
    }
}
