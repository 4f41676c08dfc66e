//! Event channels: the `event_channel_op` hypercall (`xen/include/public/event_channel.h`)
//! and the 2-level ABI's pending/mask bitmaps in shared_info.
//!
//! 2-level delivery: Xen sets the port's bit in `shared_info.evtchn_pending`; if the port's
//! `evtchn_mask` bit is clear and the pending bit went 0→1, it also sets the word's bit in
//! the target vCPU's `evtchn_pending_sel` and then `evtchn_upcall_pending`, and raises the
//! upcall vector. [`scan_pending`] is the guest side of that protocol.

use core::sync::atomic::Ordering;

use crate::error::XenError;
use crate::hypercall::{call_with, HypercallOp, Hypervisor, DOMID_SELF};
use crate::shared_info::{SharedInfo, VcpuInfo, BITS_PER_WORD, EVTCHN_2L_NR_CHANNELS};

const EVTCHNOP_BIND_INTERDOMAIN: u64 = 0;
const EVTCHNOP_BIND_VIRQ: u64 = 1;
const EVTCHNOP_CLOSE: u64 = 3;
const EVTCHNOP_SEND: u64 = 4;
const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
const EVTCHNOP_BIND_IPI: u64 = 7;
const EVTCHNOP_BIND_VCPU: u64 = 8;
const EVTCHNOP_UNMASK: u64 = 9;

/// An event-channel port number (`evtchn_port_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

impl Port {
    /// `(word, bit)` position in the 2-level bitmaps, or `None` beyond 4096 ports.
    fn position(self) -> Option<(usize, u64)> {
        let p = self.0 as usize;
        (p < EVTCHN_2L_NR_CHANNELS).then(|| (p / BITS_PER_WORD, 1u64 << (p % BITS_PER_WORD)))
    }
}

/// A port outside the 2-level ABI's 4096 ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortOutOfRange(pub Port);

/// Virtual IRQs (`VIRQ_*` in `xen.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Virq {
    /// Per vCPU: the one-shot/periodic timer fired.
    Timer = 0,
    Debug = 1,
    /// Dom0: bytes arrived on the emergency console.
    Console = 2,
    /// Dom0: some domain shut down, crashed or died; re-read domain info.
    DomExc = 3,
    Tbuf = 4,
    Debugger = 6,
    Xenoprof = 7,
    /// Dom0: the Xen console ring has new bytes.
    ConRing = 8,
    PcpuState = 9,
    MemEvent = 10,
    Argo = 11,
    /// Dom0: Xen is low on heap memory.
    Enomem = 12,
    Xenpmu = 13,
}

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvtchnAllocUnbound {
    pub dom: u16,
    pub remote_dom: u16,
    pub port: u32,
}

/// `struct evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvtchnBindInterdomain {
    pub remote_dom: u16,
    pub remote_port: u32,
    pub local_port: u32,
}

/// `struct evtchn_bind_virq`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvtchnBindVirq {
    pub virq: u32,
    pub vcpu: u32,
    pub port: u32,
}

/// `struct evtchn_bind_ipi`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvtchnBindIpi {
    pub vcpu: u32,
    pub port: u32,
}

/// `struct evtchn_bind_vcpu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvtchnBindVcpu {
    pub port: u32,
    pub vcpu: u32,
}

/// `struct evtchn_close`, `evtchn_send` and `evtchn_unmask`: just a port.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvtchnPortArg {
    pub port: u32,
}

fn evtchn_op<H: Hypervisor + ?Sized, T>(hv: &H, cmd: u64, arg: &mut T) -> Result<(), XenError> {
    call_with(hv, HypercallOp::EventChannelOp, cmd, arg).map(drop)
}

/// `EVTCHNOP_alloc_unbound`: a port in domain `dom` (usually `DOMID_SELF`; a privileged
/// domain may allocate for a guest it builds) that `remote_dom` may bind to.
pub fn alloc_unbound<H: Hypervisor + ?Sized>(
    hv: &H,
    dom: u16,
    remote_dom: u16,
) -> Result<Port, XenError> {
    let mut arg = EvtchnAllocUnbound {
        dom,
        remote_dom,
        port: 0,
    };
    evtchn_op(hv, EVTCHNOP_ALLOC_UNBOUND, &mut arg)?;
    Ok(Port(arg.port))
}

/// `EVTCHNOP_alloc_unbound` for ourselves.
pub fn alloc_unbound_local<H: Hypervisor + ?Sized>(
    hv: &H,
    remote_dom: u16,
) -> Result<Port, XenError> {
    alloc_unbound(hv, DOMID_SELF, remote_dom)
}

/// `EVTCHNOP_bind_interdomain`: connect a local port to `remote_port`, which the remote
/// domain allocated unbound for us.
pub fn bind_interdomain<H: Hypervisor + ?Sized>(
    hv: &H,
    remote_dom: u16,
    remote_port: Port,
) -> Result<Port, XenError> {
    let mut arg = EvtchnBindInterdomain {
        remote_dom,
        remote_port: remote_port.0,
        local_port: 0,
    };
    evtchn_op(hv, EVTCHNOP_BIND_INTERDOMAIN, &mut arg)?;
    Ok(Port(arg.local_port))
}

/// `EVTCHNOP_bind_virq`.
pub fn bind_virq<H: Hypervisor + ?Sized>(hv: &H, virq: Virq, vcpu: u32) -> Result<Port, XenError> {
    let mut arg = EvtchnBindVirq {
        virq: virq as u32,
        vcpu,
        port: 0,
    };
    evtchn_op(hv, EVTCHNOP_BIND_VIRQ, &mut arg)?;
    Ok(Port(arg.port))
}

/// `EVTCHNOP_bind_ipi`: a port that notifies vCPU `vcpu` of ourselves.
pub fn bind_ipi<H: Hypervisor + ?Sized>(hv: &H, vcpu: u32) -> Result<Port, XenError> {
    let mut arg = EvtchnBindIpi { vcpu, port: 0 };
    evtchn_op(hv, EVTCHNOP_BIND_IPI, &mut arg)?;
    Ok(Port(arg.port))
}

/// `EVTCHNOP_bind_vcpu`: deliver `port` to another vCPU.
pub fn bind_vcpu<H: Hypervisor + ?Sized>(hv: &H, port: Port, vcpu: u32) -> Result<(), XenError> {
    evtchn_op(
        hv,
        EVTCHNOP_BIND_VCPU,
        &mut EvtchnBindVcpu { port: port.0, vcpu },
    )
}

/// `EVTCHNOP_send`: notify the other end.
pub fn send<H: Hypervisor + ?Sized>(hv: &H, port: Port) -> Result<(), XenError> {
    evtchn_op(hv, EVTCHNOP_SEND, &mut EvtchnPortArg { port: port.0 })
}

/// `EVTCHNOP_close`.
pub fn close<H: Hypervisor + ?Sized>(hv: &H, port: Port) -> Result<(), XenError> {
    evtchn_op(hv, EVTCHNOP_CLOSE, &mut EvtchnPortArg { port: port.0 })
}

/// `EVTCHNOP_unmask`: Xen clears the mask bit and, if the port is pending, re-raises the
/// upcall, so an event that arrived while masked is not lost.
pub fn unmask<H: Hypervisor + ?Sized>(hv: &H, port: Port) -> Result<(), XenError> {
    evtchn_op(hv, EVTCHNOP_UNMASK, &mut EvtchnPortArg { port: port.0 })
}

/// Sets `port`'s mask bit (a guest-only operation; unmask through [`unmask`]).
pub fn mask(shared: &SharedInfo, port: Port) -> Result<(), PortOutOfRange> {
    let (word, bit) = port.position().ok_or(PortOutOfRange(port))?;
    bitmap_word(&shared.evtchn_mask, word).fetch_or(bit, Ordering::SeqCst);
    Ok(())
}

/// Whether `port`'s mask bit is set.
pub fn is_masked(shared: &SharedInfo, port: Port) -> Result<bool, PortOutOfRange> {
    let (word, bit) = port.position().ok_or(PortOutOfRange(port))?;
    Ok(bitmap_word(&shared.evtchn_mask, word).load(Ordering::SeqCst) & bit != 0)
}

/// Whether `port`'s pending bit is set.
pub fn is_pending(shared: &SharedInfo, port: Port) -> Result<bool, PortOutOfRange> {
    let (word, bit) = port.position().ok_or(PortOutOfRange(port))?;
    Ok(bitmap_word(&shared.evtchn_pending, word).load(Ordering::SeqCst) & bit != 0)
}

/// Clears `port`'s pending bit (acknowledges it without a scan).
pub fn clear_pending(shared: &SharedInfo, port: Port) -> Result<(), PortOutOfRange> {
    let (word, bit) = port.position().ok_or(PortOutOfRange(port))?;
    bitmap_word(&shared.evtchn_pending, word).fetch_and(!bit, Ordering::SeqCst);
    Ok(())
}

fn bitmap_word(
    words: &[core::sync::atomic::AtomicU64; BITS_PER_WORD],
    index: usize,
) -> &core::sync::atomic::AtomicU64 {
    // `index` comes from `Port::position` or a selector bit, both < BITS_PER_WORD.
    &words[index % BITS_PER_WORD]
}

/// How many times one upcall re-reads the selector after `evtchn_upcall_pending` was set
/// again during the scan. Bounding it keeps an event storm from pinning the handler; events
/// left over keep `evtchn_upcall_pending` set, so Xen raises the upcall again.
pub const MAX_SCAN_ROUNDS: u32 = 4;

/// Iterator over the pending, unmasked ports signalled to one vCPU; see [`scan_pending`].
pub struct PendingPorts<'a> {
    shared: &'a SharedInfo,
    vcpu: &'a VcpuInfo,
    /// Selector words not yet scanned in this round.
    selector: u64,
    /// Word being scanned and its remaining pending-and-unmasked bits.
    word: usize,
    bits: u64,
    rounds: u32,
}

impl<'a> PendingPorts<'a> {
    /// Starts a round: clear `upcall_pending` *before* taking the selector so that an event
    /// arriving after the exchange sets it again instead of being missed.
    fn start_round(&mut self) -> bool {
        if self.rounds >= MAX_SCAN_ROUNDS
            || self.vcpu.evtchn_upcall_pending.load(Ordering::SeqCst) == 0
        {
            return false;
        }
        self.rounds += 1;
        self.vcpu.evtchn_upcall_pending.store(0, Ordering::SeqCst);
        self.selector = self.vcpu.evtchn_pending_sel.swap(0, Ordering::SeqCst);
        true
    }
}

impl Iterator for PendingPorts<'_> {
    type Item = Port;

    fn next(&mut self) -> Option<Port> {
        loop {
            if self.bits != 0 {
                let bit = self.bits.trailing_zeros() as usize;
                self.bits &= self.bits - 1;
                let mask = 1u64 << bit;
                // Clear before handling: a new event after this point sets the bit again.
                let before = bitmap_word(&self.shared.evtchn_pending, self.word)
                    .fetch_and(!mask, Ordering::SeqCst);
                if before & mask != 0 {
                    return Some(Port((self.word * BITS_PER_WORD + bit) as u32));
                }
                continue;
            }
            if self.selector != 0 {
                self.word = self.selector.trailing_zeros() as usize;
                self.selector &= self.selector - 1;
                let pending =
                    bitmap_word(&self.shared.evtchn_pending, self.word).load(Ordering::SeqCst);
                let masked =
                    bitmap_word(&self.shared.evtchn_mask, self.word).load(Ordering::SeqCst);
                self.bits = pending & !masked;
                continue;
            }
            if !self.start_round() {
                return None;
            }
        }
    }
}

/// The 2-level upcall scan for `vcpu`: clears `evtchn_upcall_pending`, exchanges the
/// selector with 0, and for each selected word yields every pending-and-unmasked port,
/// clearing its pending bit first. Masked ports stay pending for [`unmask`]. If Xen signals
/// again during the scan, the scan repeats (up to [`MAX_SCAN_ROUNDS`] rounds).
pub fn scan_pending<'a>(shared: &'a SharedInfo, vcpu: &'a VcpuInfo) -> PendingPorts<'a> {
    PendingPorts {
        shared,
        vcpu,
        selector: 0,
        word: 0,
        bits: 0,
        rounds: 0,
    }
}

/// Xen's side of 2-level delivery to `vcpu`, for fakes and tests: set pending, and if the
/// port is unmasked and was not already pending, set the selector bit and upcall flag.
/// Returns whether an upcall should be raised.
pub fn raise_2l(shared: &SharedInfo, vcpu: &VcpuInfo, port: Port) -> Result<bool, PortOutOfRange> {
    let (word, bit) = port.position().ok_or(PortOutOfRange(port))?;
    let before = bitmap_word(&shared.evtchn_pending, word).fetch_or(bit, Ordering::SeqCst);
    if before & bit != 0 || bitmap_word(&shared.evtchn_mask, word).load(Ordering::SeqCst) & bit != 0
    {
        return Ok(false);
    }
    let sel_before = vcpu
        .evtchn_pending_sel
        .fetch_or(1u64 << word, Ordering::SeqCst);
    if sel_before & (1u64 << word) != 0 {
        return Ok(false);
    }
    Ok(vcpu.evtchn_upcall_pending.swap(1, Ordering::SeqCst) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use alloc::vec::Vec;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_xen_417() {
        assert_eq!(size_of::<EvtchnAllocUnbound>(), 8);
        assert_eq!(offset_of!(EvtchnAllocUnbound, remote_dom), 2);
        assert_eq!(offset_of!(EvtchnAllocUnbound, port), 4);
        assert_eq!(size_of::<EvtchnBindInterdomain>(), 12);
        assert_eq!(offset_of!(EvtchnBindInterdomain, remote_port), 4);
        assert_eq!(offset_of!(EvtchnBindInterdomain, local_port), 8);
        assert_eq!(size_of::<EvtchnBindVirq>(), 12);
        assert_eq!(offset_of!(EvtchnBindVirq, port), 8);
        assert_eq!(size_of::<EvtchnBindIpi>(), 8);
        assert_eq!(size_of::<EvtchnBindVcpu>(), 8);
        assert_eq!(size_of::<EvtchnPortArg>(), 4);
    }

    fn raise(s: &SharedInfo, port: u32) {
        raise_2l(s, &s.vcpu_info[0], Port(port)).unwrap();
    }

    fn scan(s: &SharedInfo) -> Vec<u32> {
        scan_pending(s, &s.vcpu_info[0]).map(|p| p.0).collect()
    }

    #[test]
    fn scan_yields_pending_ports_in_order_and_clears_them() {
        let s = SharedInfo::zeroed();
        for p in [4095, 3, 64, 65, 0] {
            raise(&s, p);
        }
        assert_eq!(scan(&s), [0, 3, 64, 65, 4095]);
        assert_eq!(
            s.vcpu_info[0].evtchn_upcall_pending.load(Ordering::SeqCst),
            0
        );
        assert_eq!(s.vcpu_info[0].evtchn_pending_sel.load(Ordering::SeqCst), 0);
        assert!(s
            .evtchn_pending
            .iter()
            .all(|w| w.load(Ordering::SeqCst) == 0));
        assert!(scan(&s).is_empty());
    }

    #[test]
    fn masked_ports_stay_pending() {
        let s = SharedInfo::zeroed();
        mask(&s, Port(7)).unwrap();
        raise(&s, 7);
        raise(&s, 8);
        // Port 8 raised the upcall for word 0; port 7 is skipped but kept pending.
        assert_eq!(scan(&s), [8]);
        assert!(is_pending(&s, Port(7)).unwrap());
        assert!(is_masked(&s, Port(7)).unwrap());
    }

    #[test]
    fn no_upcall_pending_means_no_scan() {
        let s = SharedInfo::zeroed();
        s.evtchn_pending[0].store(1, Ordering::SeqCst);
        s.vcpu_info[0].evtchn_pending_sel.store(1, Ordering::SeqCst);
        assert!(scan(&s).is_empty());
    }

    #[test]
    fn event_arriving_during_scan_is_picked_up() {
        let s = SharedInfo::zeroed();
        raise(&s, 1);
        let mut it = scan_pending(&s, &s.vcpu_info[0]);
        assert_eq!(it.next(), Some(Port(1)));
        // Port 1 fires again and port 200 fires while the handler runs.
        raise(&s, 1);
        raise(&s, 200);
        let rest: Vec<u32> = it.map(|p| p.0).collect();
        assert_eq!(rest, [1, 200]);
    }

    #[test]
    fn storm_is_bounded_and_not_lost() {
        let s = SharedInfo::zeroed();
        raise(&s, 9);
        let mut seen = 0;
        for port in scan_pending(&s, &s.vcpu_info[0]) {
            assert_eq!(port, Port(9));
            seen += 1;
            raise(&s, 9);
        }
        assert_eq!(seen, MAX_SCAN_ROUNDS);
        // The last event is still flagged for the next upcall.
        assert_eq!(
            s.vcpu_info[0].evtchn_upcall_pending.load(Ordering::SeqCst),
            1
        );
        assert_eq!(scan(&s).len(), 1);
    }

    #[test]
    fn ports_beyond_2l_are_rejected() {
        let s = SharedInfo::zeroed();
        assert_eq!(mask(&s, Port(4096)), Err(PortOutOfRange(Port(4096))));
        assert_eq!(
            is_pending(&s, Port(u32::MAX)),
            Err(PortOutOfRange(Port(u32::MAX)))
        );
        assert_eq!(
            raise_2l(&s, &s.vcpu_info[0], Port(5000)),
            Err(PortOutOfRange(Port(5000)))
        );
    }

    #[test]
    fn hypercalls_allocate_bind_send_close() {
        let xen = FakeXen::new();
        let unbound = alloc_unbound_local(&xen, 3).unwrap();
        let timer = bind_virq(&xen, Virq::Timer, 0).unwrap();
        assert_ne!(unbound, timer);
        let remote = xen.foreign_unbound_port(7, 0);
        let local = bind_interdomain(&xen, 7, remote).unwrap();
        assert_eq!(bind_interdomain(&xen, 7, Port(999)), Err(XenError::EINVAL));
        send(&xen, local).unwrap();
        assert_eq!(xen.sent_notifications(), [(7, remote)]);
        close(&xen, local).unwrap();
        assert_eq!(send(&xen, local), Err(XenError::EINVAL));
        let ipi = bind_ipi(&xen, 1).unwrap();
        bind_vcpu(&xen, ipi, 0).unwrap();
    }

    #[test]
    fn virq_fires_through_shared_info_and_unmask_redelivers() {
        let xen = FakeXen::new();
        let port = bind_virq(&xen, Virq::DomExc, 0).unwrap();
        let shared = xen.shared_info();
        mask(shared, port).unwrap();
        xen.fire_virq(Virq::DomExc);
        assert!(scan(shared).is_empty());
        unmask(&xen, port).unwrap();
        assert!(!is_masked(shared, port).unwrap());
        assert_eq!(scan(shared), [port.0]);
    }
}
