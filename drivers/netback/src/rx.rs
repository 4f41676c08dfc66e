//! rx (switch → guest): frames queued by `push_rx` are written back to back into the copy
//! buffer and copied into the guest's posted buffers (one page per slot, `more_data` on all
//! but the last) with one `GNTTABOP_copy` per batch.

use keel_xen::evtchn::send;
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::Hypervisor;

use crate::env::CopyBuffer;
use crate::fault::Fault;
use crate::queue::{
    ops_ok, push_copy_ops, run_copies, write_span, Ctx, Pass, Queue, RxPlanned, Span, BUFFER_BYTES,
};
use crate::wire::{rsp, rxf, RxRequest, RxResponse};

impl Queue {
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
