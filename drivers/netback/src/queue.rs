//! One queue's data path: a tx ring (guest → switch) and an rx ring (switch → guest), both
//! moved by grant copy, so the frontend's pages are never mapped and netback only ever
//! names the frontend's own domain in a copy.
//!
//! tx follows Linux's `xenvif_tx_build_gops`/`xenvif_count_requests` checks: an index that
//! runs ahead, a missing or malformed extra, a packet whose slots do not end in what was
//! published, 20 or more slots, or a slot crossing its page is fatal; 18 or 19 slots, a
//! fragment larger than what the first slot announced, a first slot shorter than an
//! Ethernet header, a frame larger than the MTU without GSO, or a failed copy (a bad grant)
//! answer the packet's slots with `RSP_ERROR` and count it.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::ops::Range;

use keel_xen::evtchn::{send, Port};
use keel_xen::grant_table::{grant_copy, CopyEnd, GnttabCopy, GrantRef, MappedGrant};
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::ring::BackRing;
use keel_xen::Hypervisor;

use crate::env::{CopyBuffer, FramePort, BUFFER_PAGES};
use crate::fault::Fault;
use crate::packet::{fill_l4_checksum, l2_header_len, segment_tcp};
use crate::ratelimit::Credit;
use crate::stats::VifCounters;
use crate::wire::{
    rsp, rxf, txf, Extra, ExtraInfo, GsoType, RxRequest, RxResponse, RxSlot, TxRequest, TxResponse,
    TxRspSlot, TxSlot, ETH_HLEN, FATAL_SLOTS, LEGACY_SLOTS_MAX,
};

/// Bytes the copy buffer holds.
const BUFFER_BYTES: usize = BUFFER_PAGES * PAGE_SIZE;

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
    /// The first request of a packet that waits for rate-limit credit.
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
enum Verdict {
    Okay,
    Error,
}

/// What happens to a gathered packet once the batch's copies are done.
#[derive(Debug, Clone, Copy)]
enum Action {
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
    responses: Range<usize>,
    /// Its copies in `Scratch::ops`.
    ops: Range<usize>,
    /// Where its bytes land in the copy buffer.
    pos: usize,
    total: usize,
    action: Action,
}

/// An rx frame written to the buffer, waiting for its batch's copies.
#[derive(Debug, Clone)]
pub(crate) struct RxPlanned {
    responses: Range<usize>,
    ops: Range<usize>,
    len: usize,
    /// Every copy op could be built.
    ok: bool,
}

/// `len` bytes at `guest_offset` in the frontend's granted page `gref`, and where they sit
/// in the packet (bytes `pos..` of the copy buffer).
struct Span {
    gref: u32,
    guest_offset: usize,
    pos: usize,
    len: usize,
}

/// Grant-copy ops moving a span between the frontend's page and the copy buffer, split
/// where the buffer's pages end.
fn push_copy_ops<B: CopyBuffer + ?Sized>(
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
fn run_copies<H: Hypervisor + ?Sized>(hv: &H, ops: &mut [GnttabCopy]) -> bool {
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

fn ops_ok(ops: &[GnttabCopy]) -> bool {
    ops.iter().all(|op| op.result().is_ok())
}

impl Queue {
    /// Takes up to `budget` packets from the tx ring and hands their frames to `port`.
    /// Packets are gathered and checked first, then copied with one `GNTTABOP_copy` per
    /// batch (as many packets as the copy buffer holds), then delivered and answered.
    pub fn process_tx<H, B, P>(
        &mut self,
        ctx: &mut Ctx<'_, H, B>,
        port: &mut P,
        budget: usize,
    ) -> Result<Pass, Fault>
    where
        H: Hypervisor + ?Sized,
        B: CopyBuffer + ?Sized,
        P: FramePort + ?Sized,
    {
        let mut pass = Pass::default();
        let mut answered = false;
        let mut ring_done = false;
        while !ring_done && pass.done < budget {
            ctx.scratch.ops.clear();
            ctx.scratch.responses.clear();
            let mut planned = core::mem::take(&mut ctx.scratch.planned);
            planned.clear();
            let mut pos = 0;
            while pass.done < budget {
                let first = match self.held.take() {
                    Some(r) => r,
                    None => match self.tx.take_request().map_err(Fault::TxRingOverflow)? {
                        Some(slot) => TxRequest::parse(&slot),
                        None => {
                            ring_done = true;
                            break;
                        }
                    },
                };
                if !planned.is_empty() && pos + usize::from(first.size) > BUFFER_BYTES {
                    // The buffer is full: copy this batch, then start the next with it.
                    self.held = Some(first);
                    break;
                }
                if let Err(when) = ctx.credit.try_take(u64::from(first.size), ctx.now_ns) {
                    self.held = Some(first);
                    pass.wake_at_ns = Some(when);
                    ring_done = true;
                    break;
                }
                let plan = self.plan_packet(ctx, first, pos)?;
                if matches!(plan.action, Action::Deliver { .. }) {
                    pos += plan.total;
                }
                planned.push(plan);
                pass.done += 1;
            }
            let copied = run_copies(ctx.hv, &mut ctx.scratch.ops);
            for plan in &planned {
                self.finish_packet(ctx, port, plan, copied);
                answered = true;
            }
            ctx.scratch.planned = planned;
        }
        if answered && self.tx.push_responses() {
            let _ = send(ctx.hv, self.tx_port);
        }
        if self.held.is_none() {
            pass.more = if pass.done == budget {
                true
            } else {
                self.tx
                    .final_check_for_requests()
                    .map_err(Fault::TxRingOverflow)?
            };
        }
        Ok(pass)
    }

    /// Gathers and checks one packet whose first request was taken, and plans its copies
    /// to buffer position `pos` (`xenvif_count_requests` and friends).
    fn plan_packet<H, B>(
        &mut self,
        ctx: &mut Ctx<'_, H, B>,
        mut first: TxRequest,
        pos: usize,
    ) -> Result<Planned, Fault>
    where
        H: Hypervisor + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        let mut work = self
            .tx
            .unconsumed_requests()
            .map_err(Fault::TxRingOverflow)? as usize;
        let s = &mut *ctx.scratch;
        let responses_start = s.responses.len();
        s.frags.clear();
        s.responses.push((first.id, rsp::OKAY));

        // Extra-info slots.
        let mut gso: Option<(GsoType, u16)> = None;
        let mut mcast: Option<Extra> = None;
        let mut more_extras = first.has(txf::EXTRA_INFO);
        while more_extras {
            if work == 0 {
                return Err(Fault::MissingExtra);
            }
            let slot = self
                .tx
                .take_request()
                .map_err(Fault::TxRingOverflow)?
                .ok_or(Fault::MissingExtra)?;
            work -= 1;
            let extra = ExtraInfo::parse_tx_slot(&slot).map_err(Fault::BadExtra)?;
            more_extras = extra.more;
            s.responses.push((0, rsp::NULL));
            match extra.extra {
                Extra::Gso { size, kind, .. } => gso = Some((kind, size)),
                m @ (Extra::McastAdd(_) | Extra::McastDel(_)) => mcast = Some(m),
                Extra::Hash { .. } => {}
            }
        }

        // Data slots after the first.
        let total = usize::from(first.size);
        let mut remaining = first.size;
        let mut drop = false;
        let mut more = first.has(txf::MORE_DATA);
        let mut slots = 0;
        while more {
            if slots >= work {
                return Err(Fault::IncompletePacket { slots: slots + 1 });
            }
            if slots >= FATAL_SLOTS {
                return Err(Fault::TooManySlots { slots });
            }
            if slots >= LEGACY_SLOTS_MAX {
                drop = true;
            }
            let slot = self
                .tx
                .take_request()
                .map_err(Fault::TxRingOverflow)?
                .ok_or(Fault::IncompletePacket { slots: slots + 1 })?;
            let frag = TxRequest::parse(&slot);
            slots += 1;
            if frag.size > remaining {
                drop = true;
            }
            remaining = remaining.saturating_sub(frag.size);
            if usize::from(frag.offset) + usize::from(frag.size) > PAGE_SIZE {
                return Err(Fault::CrossPage {
                    offset: frag.offset,
                    size: frag.size,
                });
            }
            more = frag.has(txf::MORE_DATA);
            s.responses.push((frag.id, rsp::OKAY));
            s.frags.push(frag);
        }
        // The first slot holds what the fragments do not.
        first.size = remaining;
        if usize::from(first.offset) + usize::from(first.size) > PAGE_SIZE {
            return Err(Fault::CrossPage {
                offset: first.offset,
                size: first.size,
            });
        }
        let responses = responses_start..s.responses.len();
        let ops_start = s.ops.len();
        let action = if let Some(m) = mcast {
            Action::Answer(multicast(ctx.mcast, m))
        } else if drop
            || usize::from(first.size) < ETH_HLEN
            || (gso.is_none() && total > ctx.mtu + ETH_HLEN + 4)
        {
            ctx.counters.from_guest_errors += 1;
            Action::Answer(Verdict::Error)
        } else {
            let mut at = pos;
            let mut ok = true;
            for r in core::iter::once(&first).chain(s.frags.iter()) {
                let span = Span {
                    gref: r.gref,
                    guest_offset: usize::from(r.offset),
                    pos: at,
                    len: usize::from(r.size),
                };
                ok &= push_copy_ops(&mut s.ops, &*ctx.buffer, ctx.domid, span, false);
                at += usize::from(r.size);
            }
            if ok && at == pos + total {
                Action::Deliver {
                    gso,
                    csum_blank: first.has(txf::CSUM_BLANK),
                }
            } else {
                s.ops.truncate(ops_start);
                ctx.counters.from_guest_errors += 1;
                Action::Answer(Verdict::Error)
            }
        };
        Ok(Planned {
            responses,
            ops: ops_start..s.ops.len(),
            pos,
            total,
            action,
        })
    }

    /// After the batch's copies: delivers the packet's frames and answers its slots.
    fn finish_packet<H, B, P>(
        &mut self,
        ctx: &mut Ctx<'_, H, B>,
        port: &mut P,
        plan: &Planned,
        copied: bool,
    ) where
        H: Hypervisor + ?Sized,
        B: CopyBuffer + ?Sized,
        P: FramePort + ?Sized,
    {
        let verdict = match plan.action {
            Action::Answer(v) => v,
            Action::Deliver { gso, csum_blank } => {
                let s = &mut *ctx.scratch;
                let ok = (copied || ops_ok(&s.ops[plan.ops.clone()]))
                    && s.frame.try_reserve(plan.total).is_ok();
                if ok {
                    s.frame.clear();
                    s.frame.resize(plan.total, 0);
                    read_span(&*ctx.buffer, plan.pos, &mut s.frame);
                }
                if !ok || (gso.is_none() && plan.total > ctx.mtu + l2_header_len(&s.frame)) {
                    ctx.counters.from_guest_errors += 1;
                    Verdict::Error
                } else {
                    deliver(ctx, port, csum_blank, gso);
                    Verdict::Okay
                }
            }
        };
        for (id, status) in ctx.scratch.responses[plan.responses.clone()]
            .iter()
            .copied()
        {
            let status = match (verdict, status) {
                (Verdict::Error, rsp::OKAY) => rsp::ERROR,
                _ => status,
            };
            // Cannot fail: every response answers a request taken when it was planned.
            let _ = self.tx.queue_response(TxResponse { id, status }.encode());
        }
    }

    /// Answers up to `budget` pending frames into the guest's posted receive buffers,
    /// copying as many frames per `GNTTABOP_copy` as the copy buffer holds.
    pub fn process_rx<H, B>(
        &mut self,
        ctx: &mut Ctx<'_, H, B>,
        budget: usize,
    ) -> Result<Pass, Fault>
    where
        H: Hypervisor + ?Sized,
        B: CopyBuffer + ?Sized,
    {
        let mut pass = Pass::default();
        let mut answered = false;
        let mut stop = false;
        while !stop && pass.done < budget {
            ctx.scratch.ops.clear();
            ctx.scratch.responses.clear();
            let mut planned = core::mem::take(&mut ctx.scratch.rx_planned);
            planned.clear();
            let mut pos = 0;
            while pass.done < budget {
                let Some(frame) = self.rx_pending.front() else {
                    stop = true;
                    break;
                };
                let len = frame.len();
                let needed = len.div_ceil(PAGE_SIZE).max(1);
                let avail = self
                    .rx
                    .unconsumed_requests()
                    .map_err(Fault::RxRingOverflow)? as usize;
                if avail < needed {
                    pass.starved = true;
                    stop = true;
                    break;
                }
                if !planned.is_empty() && pos + len > BUFFER_BYTES {
                    break;
                }
                write_span(&mut *ctx.buffer, pos, frame);
                let s = &mut *ctx.scratch;
                let (responses_start, ops_start) = (s.responses.len(), s.ops.len());
                let mut ok = true;
                for i in 0..needed {
                    let slot = self
                        .rx
                        .take_request()
                        .map_err(Fault::RxRingOverflow)?
                        .ok_or(Fault::RxRingOverflow(keel_xen::ring::RingError::Full))?;
                    let req = RxRequest::parse(&slot);
                    let n = (len - i * PAGE_SIZE).min(PAGE_SIZE);
                    let span = Span {
                        gref: req.gref,
                        guest_offset: 0,
                        pos: pos + i * PAGE_SIZE,
                        len: n,
                    };
                    ok &= push_copy_ops(&mut s.ops, &*ctx.buffer, ctx.domid, span, true);
                    s.responses.push((req.id, n as i16));
                }
                planned.push(RxPlanned {
                    responses: responses_start..s.responses.len(),
                    ops: ops_start..s.ops.len(),
                    len,
                    ok,
                });
                pos += len;
                self.rx_pending_bytes -= len;
                self.rx_pending.pop_front();
                pass.done += 1;
            }
            let copied = run_copies(ctx.hv, &mut ctx.scratch.ops);
            for plan in &planned {
                let s = &*ctx.scratch;
                let ok = plan.ok && (copied || ops_ok(&s.ops[plan.ops.clone()]));
                let last = plan.responses.end.saturating_sub(1);
                for (i, (id, n)) in s.responses[plan.responses.clone()]
                    .iter()
                    .copied()
                    .enumerate()
                {
                    let more = if plan.responses.start + i < last {
                        rxf::MORE_DATA
                    } else {
                        0
                    };
                    let r = RxResponse {
                        id,
                        offset: 0,
                        flags: if ok { more } else { 0 },
                        status: if ok { n } else { rsp::ERROR },
                    };
                    let _ = self.rx.queue_response(r.encode());
                }
                answered = true;
                if ok {
                    ctx.counters.to_guest_frames += 1;
                    ctx.counters.to_guest_bytes += plan.len as u64;
                } else {
                    ctx.counters.to_guest_errors += 1;
                }
            }
            ctx.scratch.rx_planned = planned;
        }
        if answered && self.rx.push_responses() {
            let _ = send(ctx.hv, self.rx_port);
        }
        if pass.starved {
            // Ask for an event when more buffers are posted (`feature-rx-notify`); if some
            // arrived meanwhile, come back at once.
            pass.more = self
                .rx
                .final_check_for_requests()
                .map_err(Fault::RxRingOverflow)?;
        } else {
            pass.more = !self.rx_pending.is_empty();
        }
        Ok(pass)
    }
}

/// Updates the multicast subscriptions (`xenvif_mcast_add`/`_del`).
fn multicast(list: &mut Vec<[u8; 6]>, m: Extra) -> Verdict {
    match m {
        Extra::McastAdd(addr) => {
            if list.contains(&addr) {
                Verdict::Okay
            } else if list.len() >= MCAST_MAX {
                Verdict::Error
            } else {
                list.push(addr);
                Verdict::Okay
            }
        }
        Extra::McastDel(addr) => {
            list.retain(|a| *a != addr);
            Verdict::Okay
        }
        _ => Verdict::Okay,
    }
}

/// Reads packet bytes `pos..pos + out.len()` of the copy buffer.
fn read_span<B: CopyBuffer + ?Sized>(buffer: &B, mut pos: usize, out: &mut [u8]) {
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
fn write_span<B: CopyBuffer + ?Sized>(buffer: &mut B, mut pos: usize, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        let off = pos % PAGE_SIZE;
        let n = (data.len() - done).min(PAGE_SIZE - off);
        buffer.write(pos / PAGE_SIZE, off, &data[done..done + n]);
        done += n;
        pos += n;
    }
}

/// Checksums or segments the copied frame and hands the result to the switch.
fn deliver<H: ?Sized, B: ?Sized, P: FramePort + ?Sized>(
    ctx: &mut Ctx<'_, H, B>,
    port: &mut P,
    csum_blank: bool,
    gso: Option<(GsoType, u16)>,
) {
    let s = &mut *ctx.scratch;
    let counters = &mut *ctx.counters;
    let mtu = ctx.mtu;
    match gso {
        Some((kind, mss)) => {
            let mut refused = false;
            let result = segment_tcp(&s.frame, kind, mss, mtu, &mut s.segment, |seg| {
                if port.deliver(seg).is_ok() {
                    counters.from_guest_frames += 1;
                    counters.from_guest_bytes += seg.len() as u64;
                    true
                } else {
                    refused = true;
                    false
                }
            });
            if result.is_err() || refused {
                counters.from_guest_dropped += 1;
            }
        }
        None => {
            if csum_blank && fill_l4_checksum(&mut s.frame).is_err() {
                counters.from_guest_dropped += 1;
                return;
            }
            if port.deliver(&s.frame).is_ok() {
                counters.from_guest_frames += 1;
                counters.from_guest_bytes += s.frame.len() as u64;
            } else {
                counters.from_guest_dropped += 1;
            }
        }
    }
}
