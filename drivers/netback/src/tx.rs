//! tx (guest → switch): gather a packet's slots, check them as Linux's
//! `xenvif_tx_build_gops`/`xenvif_count_requests` do, copy a batch of packets into the copy
//! buffer with one `GNTTABOP_copy`, then checksum or segment each and hand it to the switch.
//!
//! Fatal: an index that runs ahead, a missing or malformed extra, a packet whose slots do
//! not end in what was published, 20 or more slots, a slot crossing its page. Answered with
//! `RSP_ERROR` and counted: 18 or 19 slots, a fragment larger than what the first slot
//! announced, a first slot shorter than an Ethernet header, a frame larger than the MTU
//! without GSO, a failed copy (a bad grant).

use alloc::vec::Vec;

use keel_xen::evtchn::send;
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::Hypervisor;

use crate::env::{CopyBuffer, FramePort};
use crate::fault::Fault;
use crate::packet::{fill_l4_checksum, l2_header_len, segment_tcp};
use crate::queue::{
    ops_ok, push_copy_ops, read_span, run_copies, Action, Ctx, Pass, Planned, Queue, Span, Verdict,
    BUFFER_BYTES, MCAST_MAX,
};
use crate::wire::{
    rsp, txf, Extra, ExtraInfo, GsoType, TxRequest, TxResponse, ETH_HLEN, FATAL_SLOTS,
    LEGACY_SLOTS_MAX,
};

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
