//! Wiring of guests' network interfaces: `keel-hostnet`'s [`Netbacks`] over this machine's
//! hole frames (ring pages), one set of dom0 pages for grant copies, and the host's switch
//! ([`keel_hostnet::Fabric`], whose uplink and management port `net/switch.rs` adds). The
//! guest task serves them (`guests.rs`); the XenAPI attaches and detaches VIFs and
//! configures bridges through [`Vifs::network_backend`].

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::boxed::Box;
use alloc::rc::Rc;
use core::cell::RefCell;

use keel_hostnet::netbacks::{Netbacks, NetbacksHandle, SharedNetbacks, VifsServiced};
use keel_hostnet::SharedFabric;
use keel_netback::wire::{RxSlot, TxRspSlot, TxSlot};
use keel_netback::{CopyBuffer, RingFrames, BUFFER_PAGES};
use keel_xen::grant_table::GrantRef;
use keel_xen::hypercall::PAGE_SIZE;
use keel_xen::ring::SharedRing;
use keel_xenapi::network_backend::NetworkBackend;
use keel_xenstored::Xenstored;

use super::events::Kick;
use super::holes::KernelHoles;
use super::hypercall::Xen;
use crate::time;

/// While a VIF is connected the guest task looks at the switch this often at the latest.
/// Frames the network task switches to a guest wake the task at once ([`Vifs::kick`]); this
/// only bounds what a missed wake-up could cost.
const CONNECTED_POLL_NS: u64 = 50_000_000;

/// The host's VIF backends and the pages their grant copies go through, shared by the
/// XenAPI (attach, detach, bridges) and the guest task (serving).
#[derive(Clone)]
pub struct Vifs {
    netbacks: SharedNetbacks,
    pages: Rc<RefCell<CopyPages>>,
    /// Wakes the guest task when frames wait for a guest.
    kick: Kick,
}

impl Vifs {
    /// The switch the VIFs are ports of; the network task adds the NIC and Keel's stack.
    pub fn fabric(&self) -> SharedFabric {
        self.netbacks.borrow().fabric().clone()
    }

    /// The netbacks, to name the NIC's uplink for bridges and read counters.
    pub fn netbacks(&self) -> &SharedNetbacks {
        &self.netbacks
    }

    /// Tells the guest task that the switch has frames for guests, if it has: the network
    /// task calls it after switching what the NIC brought.
    pub fn kick_if_frames_for_guests(&self) {
        if self
            .netbacks
            .borrow()
            .fabric()
            .borrow_mut()
            .take_guest_frames()
        {
            self.kick.kick();
        }
    }

    /// Tells whether frames were switched to the uplink or Keel's stack since the last
    /// call: the guest task then wakes the network task, which owns both.
    pub fn take_host_frames(&self) -> bool {
        self.netbacks
            .borrow()
            .fabric()
            .borrow_mut()
            .take_host_frames()
    }

    /// What the guest task waits on besides its channels.
    pub fn kicks(&self) -> &Kick {
        &self.kick
    }

    /// The XenAPI's `Config.network`.
    pub fn network_backend(&self) -> Box<dyn NetworkBackend> {
        Box::new(NetbacksHandle(self.netbacks.clone()))
    }
}

/// A fresh switch with no VIFs. `None` (with a log line) if the copy pages cannot be had.
pub fn new() -> Option<Vifs> {
    let pages = CopyPages::new()?;
    Some(Vifs {
        netbacks: Netbacks::shared(crate::net::switch::new_fabric()),
        pages: Rc::new(RefCell::new(pages)),
        kick: Kick::new(),
    })
}

/// Serves every VIF once, with xenstored lent by the toolstack's host; logs what failed.
/// `wake_at_ns` is brought forward while a VIF is connected (see [`CONNECTED_POLL_NS`]).
pub fn serve(vifs: &Vifs, xenstored: &mut Xenstored) -> VifsServiced {
    static XEN: Xen = Xen;
    let now_ns = time::since_entry_ns();
    let mut pages = vifs.pages.borrow_mut();
    let mut netbacks = vifs.netbacks.borrow_mut();
    let mut serviced = netbacks.serve(&XEN, xenstored, &mut VifFrames, &mut *pages, now_ns);
    for (domid, device, reason) in &serviced.failures {
        log::warn!("vifs: domain {domid} vif {device}: {reason}");
    }
    // What each unplugged VIF did: the switch's drops by reason (anti-spoofing, flood
    // bound, a full queue toward it) and netback's (`VIF_metrics` carries rates only).
    for gone in &serviced.removed {
        let (c, n) = (&gone.switch, &gone.netback);
        let mut drops = alloc::string::String::new();
        for (reason, count) in c.drops.iter().filter(|(_, count)| *count > 0) {
            let _ =
                core::fmt::Write::write_fmt(&mut drops, format_args!(" {}={count}", reason.name()));
        }
        log::info!(
            "vifs: domain {} vif {} off the switch: from guest {} frames, to guest {} frames, dropped{}; netback: to guest dropped {} errors {}, from guest dropped {} errors {}",
            gone.domid,
            gone.device,
            c.rx_packets,
            c.tx_packets,
            if drops.is_empty() { " none" } else { &drops },
            n.to_guest_dropped,
            n.to_guest_errors,
            n.from_guest_dropped,
            n.from_guest_errors
        );
    }
    // A guest's frames switched to another guest are served in the next round.
    serviced.more |= netbacks.fabric().borrow_mut().take_guest_frames();
    if !serviced.ports.is_empty() {
        let soon = now_ns.saturating_add(CONNECTED_POLL_NS);
        serviced.wake_at_ns = Some(serviced.wake_at_ns.map_or(soon, |w| w.min(soon)));
    }
    serviced
}

/// Dom0 frames for guests' netif rings: hole frames, one per ring page.
struct VifFrames;

impl VifFrames {
    /// The ring view of a hole frame a frontend's ring page is grant-mapped at.
    fn ring<Req, Rsp>(gfn: u64) -> Option<SharedRing<'static, Req, Rsp>>
    where
        Req: keel_xen::ring::RingEntry,
        Rsp: keel_xen::ring::RingEntry,
    {
        // SAFETY: `gfn` came from `allocate` (an identity-mapped hole frame of our own) and
        // netback asks for the view only once Xen has mapped the frontend's ring page
        // there; netback drops the view before it unmaps the grant and frees the frame, and
        // touches the page only through the ring types.
        unsafe { SharedRing::from_raw((gfn * PAGE_SIZE as u64) as *mut u8, PAGE_SIZE) }.ok()
    }
}

impl RingFrames for VifFrames {
    fn allocate(&mut self) -> Option<u64> {
        use keel_domain_builder::HoleFrames;
        KernelHoles.allocate(1)
    }

    fn free(&mut self, gfn: u64) {
        use keel_domain_builder::HoleFrames;
        KernelHoles.free(gfn);
    }

    fn tx_ring(
        &mut self,
        gfn: u64,
        _domid: u16,
        _gref: GrantRef,
    ) -> Option<SharedRing<'static, TxSlot, TxRspSlot>> {
        Self::ring(gfn)
    }

    fn rx_ring(
        &mut self,
        gfn: u64,
        _domid: u16,
        _gref: GrantRef,
    ) -> Option<SharedRing<'static, RxSlot, RxSlot>> {
        Self::ring(gfn)
    }
}

/// The dom0 RAM pages every VIF's grant copies land in (netback polls one VIF at a time).
/// Allocated once and never freed, page-aligned; Keel's RAM is identity-mapped, so a
/// page's frame number is its address >> 12.
struct CopyPages {
    base: *mut u8,
}

impl CopyPages {
    fn new() -> Option<CopyPages> {
        let layout = Layout::from_size_align(BUFFER_PAGES * PAGE_SIZE, PAGE_SIZE).ok()?;
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            log::error!("vifs: no memory for the grant-copy pages; guests get no network");
            return None;
        }
        Some(CopyPages { base })
    }

    /// The bytes at `page`, `offset`, `len`, clamped to the buffer.
    fn span(&self, page: usize, offset: usize, len: usize) -> Option<*mut u8> {
        let start = page.checked_mul(PAGE_SIZE)?.checked_add(offset)?;
        let end = start.checked_add(len)?;
        (end <= BUFFER_PAGES * PAGE_SIZE).then(|| self.base.wrapping_add(start))
    }
}

impl CopyBuffer for CopyPages {
    fn gfn(&self, page: usize) -> u64 {
        (self.base as u64 + (page * PAGE_SIZE) as u64) / PAGE_SIZE as u64
    }

    fn read(&self, page: usize, offset: usize, out: &mut [u8]) {
        if let Some(src) = self.span(page, offset, out.len()) {
            // SAFETY: `src..src + out.len()` lies in the buffer (checked by `span`), which
            // lives forever; Xen writes it only during a grant-copy hypercall, never while
            // this runs (one CPU, netback reads after the copy returned).
            unsafe { core::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        }
    }

    fn write(&mut self, page: usize, offset: usize, data: &[u8]) {
        if let Some(dst) = self.span(page, offset, data.len()) {
            // SAFETY: as in `read`; `data` is not part of the buffer (netback's own memory).
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        }
    }
}
