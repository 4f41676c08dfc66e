//! One queue: a tx ring (guest → switch, `tx.rs`) and an rx ring (switch → guest, `rx.rs`),
//! both moved by grant copy through the copy buffer, so the frontend's pages are never
//! mapped and netback only ever names the frontend's own domain in a copy. This file holds
//! what both directions share: the queue's state, scratch space and the copy helpers.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::ops::Range;

use keel_xen::evtchn::Port;
use keel_xen::grant_table::{grant_copy, CopyEnd, GnttabCopy, GrantRef, MappedGrant};
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::ring::BackRing;
use keel_xen::Hypervisor;

use crate::env::{CopyBuffer, BUFFER_PAGES};
use crate::ratelimit::Credit;
use crate::stats::VifCounters;
use crate::wire::{GsoType, RxSlot, TxRequest, TxRspSlot, TxSlot};

/// Bytes the copy buffer holds.
pub(crate) const BUFFER_BYTES: usize = BUFFER_PAGES * PAGE_SIZE;

/// Linux's `XEN_NETBK_MCAST_MAX`.
pub const MCAST_MAX: usize = 64;

/// Dom0 resources one queue holds: mapped ring frames and bound ports.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    pub maps: Vec<(u64, MappedGrant)>,
    pub ports: Vec<Port>,
}

/// One queue's rings and pending receive frames.
pub(crate) struct Queue {
    pub tx: BackRing<'static, TxSlot, TxRspSlot>,
    pub rx: BackRing<'static, RxSlot, RxSlot>,
    pub tx_port: Port,
    pub rx_port: Port,
    pub res: Resources,
    /// The first request of a packet that waits for rate-limit credit or the next batch.
    pub held: Option<TxRequest>,
    pub rx_pending: VecDeque<Vec<u8>>,
    pub rx_pending_bytes: usize,
}

/// Reused buffers (no allocation per packet in the steady state).
#[derive(Default)]
pub(crate) struct Scratch {
    pub frame: Vec<u8>,
    pub segment: Vec<u8>,
    pub ops: Vec<GnttabCopy>,
    pub responses: Vec<(u16, i16)>,
    pub frags: Vec<TxRequest>,
    pub planned: Vec<Planned>,
    pub rx_planned: Vec<RxPlanned>,
}

/// Scratch an idle VIF may keep: about what MTU-sized traffic uses. A burst of large
/// (TSO/GSO) packets grows it to ~128 KiB; kept by every idle VIF that once carried one,
/// that would be dom0 heap per guest for nothing.
pub(crate) const IDLE_SCRATCH_BYTES: usize = 8 * 1024;

impl Scratch {
    /// Heap bytes held.
    fn bytes(&self) -> usize {
        use core::mem::size_of;
        self.frame.capacity()
            + self.segment.capacity()
            + self.ops.capacity() * size_of::<GnttabCopy>()
            + self.responses.capacity() * size_of::<(u16, i16)>()
            + self.frags.capacity() * size_of::<TxRequest>()
            + self.planned.capacity() * size_of::<Planned>()
            + self.rx_planned.capacity() * size_of::<RxPlanned>()
    }

    /// The VIF went idle: give back what a burst grew past [`IDLE_SCRATCH_BYTES`]. Nothing
    /// in it outlives a pass; the next burst allocates again (once, not per packet).
    pub(crate) fn trim_idle(&mut self) {
        if self.bytes() > IDLE_SCRATCH_BYTES {
            *self = Scratch::default();
        }
    }
}

/// Everything a queue's work borrows from its VIF.
pub(crate) struct Ctx<'a, H: ?Sized, B: ?Sized> {
    pub hv: &'a H,
    pub buffer: &'a mut B,
    pub domid: u16,
    pub now_ns: u64,
    pub credit: &'a mut Credit,
    pub counters: &'a mut VifCounters,
    pub scratch: &'a mut Scratch,
    pub mcast: &'a mut Vec<[u8; 6]>,
    pub mtu: usize,
}

/// What one pass over a ring did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pass {
    pub done: usize,
    pub more: bool,
    pub wake_at_ns: Option<u64>,
    /// Frames wait for receive buffers the guest has not posted.
    pub starved: bool,
}

/// How a packet's slots are answered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Verdict {
    Okay,
    Error,
}

/// What happens to a gathered packet once the batch's copies are done.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    /// Nothing to copy (a multicast request, or refused before copying).
    Answer(Verdict),
    /// Copied into the buffer: checksum or segment, then hand to the switch.
    Deliver {
        gso: Option<(GsoType, u16)>,
        csum_blank: bool,
    },
}

/// A tx packet gathered and checked, waiting for its batch's copies.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    /// Its slots' answers in `Scratch::responses`.
    pub responses: Range<usize>,
    /// Its copies in `Scratch::ops`.
    pub ops: Range<usize>,
    /// Where its bytes land in the copy buffer.
    pub pos: usize,
    pub total: usize,
    pub action: Action,
}

/// An rx frame written to the buffer, waiting for its batch's copies.
#[derive(Debug, Clone)]
pub(crate) struct RxPlanned {
    pub responses: Range<usize>,
    pub ops: Range<usize>,
    pub len: usize,
    /// Every copy op could be built.
    pub ok: bool,
}

/// `len` bytes at `guest_offset` in the frontend's granted page `gref`, and where they sit
/// in the packet (bytes `pos..` of the copy buffer).
pub(crate) struct Span {
    pub gref: u32,
    pub guest_offset: usize,
    pub pos: usize,
    pub len: usize,
}

/// Grant-copy ops moving a span between the frontend's page and the copy buffer, split
/// where the buffer's pages end.
pub(crate) fn push_copy_ops<B: CopyBuffer + ?Sized>(
    ops: &mut Vec<GnttabCopy>,
    buffer: &B,
    domid: u16,
    span: Span,
    to_guest: bool,
) -> bool {
    let Span {
        gref,
        mut guest_offset,
        mut pos,
        mut len,
    } = span;
    while len > 0 {
        let page = pos / PAGE_SIZE;
        let page_off = pos % PAGE_SIZE;
        let n = len.min(PAGE_SIZE - page_off);
        let guest = CopyEnd::Grant {
            dom: domid,
            gref: GrantRef(gref),
            offset: guest_offset as u16,
        };
        let local = CopyEnd::Local {
            gfn: buffer.gfn(page),
            offset: page_off as u16,
        };
        let op = if to_guest {
            GnttabCopy::new(local, guest, n as u16)
        } else {
            GnttabCopy::new(guest, local, n as u16)
        };
        match op {
            Ok(op) => ops.push(op),
            Err(_) => return false,
        }
        guest_offset += n;
        pos += n;
        len -= n;
    }
    true
}

/// Issues a batch of copies; `true` if every one succeeded. Otherwise each packet looks
/// at its own ops' status ([`ops_ok`]): one bad grant fails only its packet.
pub(crate) fn run_copies<H: Hypervisor + ?Sized>(hv: &H, ops: &mut [GnttabCopy]) -> bool {
    if ops.is_empty() {
        return true;
    }
    if grant_copy(hv, ops).is_err() {
        // The hypercall itself failed: no status was written, so fail every op.
        for op in ops.iter_mut() {
            op.status = keel_xen::GntStatus::GeneralError.code();
        }
        return false;
    }
    ops_ok(ops)
}

pub(crate) fn ops_ok(ops: &[GnttabCopy]) -> bool {
    ops.iter().all(|op| op.result().is_ok())
}

/// Reads packet bytes `pos..pos + out.len()` of the copy buffer.
pub(crate) fn read_span<B: CopyBuffer + ?Sized>(buffer: &B, mut pos: usize, out: &mut [u8]) {
    let mut done = 0;
    while done < out.len() {
        let off = pos % PAGE_SIZE;
        let n = (out.len() - done).min(PAGE_SIZE - off);
        buffer.read(pos / PAGE_SIZE, off, &mut out[done..done + n]);
        done += n;
        pos += n;
    }
}

/// Writes `data` at packet bytes `pos..` of the copy buffer.
pub(crate) fn write_span<B: CopyBuffer + ?Sized>(buffer: &mut B, mut pos: usize, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        let off = pos % PAGE_SIZE;
        let n = (data.len() - done).min(PAGE_SIZE - off);
        buffer.write(pos / PAGE_SIZE, off, &data[done..done + n]);
        done += n;
        pos += n;
    }
}
