//! A guest's console or store page mapped into dom0 through the grant the builder made
//! (`GNTTAB_RESERVED_CONSOLE` = 0, `GNTTAB_RESERVED_XENSTORE` = 1), with an interdomain
//! event channel bound to the guest's port: what xenconsoled and xenstored do when a guest
//! is attached or introduced, and undo when it goes away.
//!
//! The kernel supplies only [`MapFrames`]: dom0 frames with nothing behind them to map into,
//! and the view of a mapped frame as a typed page (its one `unsafe` step).

use alloc::collections::BTreeMap;
use core::ops::Deref;

use keel_console::{ConsolePage, Index};
use keel_xen::evtchn::{bind_interdomain, close, send, Port};
use keel_xen::grant_table::{
    map_grant, unmap_grant, GrantOpError, GrantRef, MappedGrant, GNTTAB_RESERVED_CONSOLE,
    GNTTAB_RESERVED_XENSTORE,
};
use keel_xen::xenstore_ring::XsRingError;
use keel_xen::{Hypervisor, XenError};
use keel_xenstored::RingPage;

use crate::console::ConsolePages;
use crate::store::StoreError;
use crate::xenstored::StoreRings;

/// Dom0 frames to map guest pages into, and their typed views.
pub trait MapFrames {
    /// The mapped page as the backend reads it (`&'static XenconsInterface`,
    /// `&'static XenstoreDomainInterface` in the kernel).
    type View;
    /// A free dom0 frame with no RAM behind it (a hole: Xen frees RAM that a foreign
    /// mapping replaces).
    fn allocate(&mut self) -> Option<u64>;
    fn free(&mut self, gfn: u64);
    /// The page mapped at `gfn`.
    fn view(&self, gfn: u64) -> Self::View;
}

/// Why a guest page could not be mapped or unmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestPageError {
    /// No dom0 frame left to map into.
    NoFrames,
    Map(GrantOpError),
    Bind(XenError),
    /// Unmapping failed: the frame stays allocated, never to be reused.
    Unmap(GrantOpError),
}

/// A mapped guest page and the channel bound to it.
#[derive(Debug)]
pub struct GuestPage<V> {
    domid: u16,
    gfn: u64,
    mapping: MappedGrant,
    port: Port,
    view: V,
}

impl<V> GuestPage<V> {
    pub fn domid(&self) -> u16 {
        self.domid
    }
    /// Our end of the page's event channel: notify through it, and its events are the
    /// guest's.
    pub fn local_port(&self) -> Port {
        self.port
    }
    pub fn view(&self) -> &V {
        &self.view
    }
}

/// Maps grant `gref` of `domid` into a fresh dom0 frame and binds `remote_port`.
pub fn map_guest_page<H: Hypervisor + ?Sized, F: MapFrames>(
    hv: &H,
    frames: &mut F,
    domid: u16,
    gref: GrantRef,
    remote_port: u32,
) -> Result<GuestPage<F::View>, GuestPageError> {
    let gfn = frames.allocate().ok_or(GuestPageError::NoFrames)?;
    let mapping = match map_grant(hv, domid, gref, gfn << 12, false) {
        Ok(m) => m,
        Err(e) => {
            frames.free(gfn);
            return Err(GuestPageError::Map(e));
        }
    };
    let port = match bind_interdomain(hv, domid, Port(remote_port)) {
        Ok(p) => p,
        Err(e) => {
            // The frame is reusable only if the grant really went away.
            if unmap_grant(hv, &mapping).is_ok() {
                frames.free(gfn);
            }
            return Err(GuestPageError::Bind(e));
        }
    };
    Ok(GuestPage {
        domid,
        gfn,
        mapping,
        port,
        view: frames.view(gfn),
    })
}

/// Closes the channel and unmaps the page. The channel is closed even if unmapping fails.
pub fn unmap_guest_page<H: Hypervisor + ?Sized, F: MapFrames>(
    hv: &H,
    frames: &mut F,
    page: GuestPage<F::View>,
) -> Result<(), GuestPageError> {
    // A port the guest already closed answers an error; nothing else to do about it.
    let _ = close(hv, page.port);
    unmap_grant(hv, &page.mapping).map_err(GuestPageError::Unmap)?;
    frames.free(page.gfn);
    Ok(())
}

impl<V: ConsolePage> ConsolePage for GuestPage<V> {
    fn load_index(&self, index: Index) -> u32 {
        self.view.load_index(index)
    }
    fn store_index(&self, index: Index, value: u32) {
        self.view.store_index(index, value)
    }
    fn out_byte(&self, slot: usize) -> u8 {
        self.view.out_byte(slot)
    }
    fn set_in_byte(&self, slot: usize, byte: u8) {
        self.view.set_in_byte(slot, byte)
    }
}

/// Through a reference (`&'static XenstoreDomainInterface` in the kernel) or a box.
impl<V> RingPage for GuestPage<V>
where
    V: Deref,
    V::Target: RingPage,
{
    fn read_requests(&self, out: &mut [u8]) -> Result<usize, XsRingError> {
        self.view.read_requests(out)
    }
    fn write_responses(&self, data: &[u8]) -> Result<usize, XsRingError> {
        self.view.write_responses(data)
    }
    fn set_error(&self, code: u32) {
        self.view.set_error(code)
    }
    fn reset(&self, server_features: u32) {
        self.view.reset(server_features)
    }
}

/// What the grant-mapped backends keep between calls.
#[derive(Debug)]
pub struct MappedPages<V> {
    /// Each console's channel (the page itself lives in the `ConsoleSet`).
    pub console_ports: BTreeMap<u16, Port>,
    /// Each introduced guest's store page.
    pub store_rings: BTreeMap<u16, GuestPage<V>>,
    /// Pages that would not unmap (their frames are never reused), for the log.
    pub leaks: u64,
}

impl<V> Default for MappedPages<V> {
    fn default() -> Self {
        MappedPages {
            console_ports: BTreeMap::new(),
            store_rings: BTreeMap::new(),
            leaks: 0,
        }
    }
}

impl<V> MappedPages<V> {
    /// The domain whose console channel is `port`, to route its events to
    /// `ConsoleSet::service`.
    pub fn console_of_port(&self, port: Port) -> Option<u16> {
        self.console_ports
            .iter()
            .find_map(|(d, p)| (*p == port).then_some(*d))
    }

    /// The domain whose store channel is `port`, to route its events to
    /// `Xenstored::service_ring`.
    pub fn store_of_port(&self, port: Port) -> Option<u16> {
        self.store_rings
            .iter()
            .find_map(|(d, p)| (p.local_port() == port).then_some(*d))
    }
}

/// [`ConsolePages`] and [`StoreRings`] through grant mappings, lent for one call.
pub struct GrantMapper<'a, H: ?Sized, F: MapFrames> {
    pub hv: &'a H,
    pub frames: &'a mut F,
    pub pages: &'a mut MappedPages<F::View>,
}

impl<H: Hypervisor + ?Sized, F: MapFrames> ConsolePages for GrantMapper<'_, H, F>
where
    F::View: ConsolePage,
{
    type Page = GuestPage<F::View>;
    type Error = GuestPageError;

    fn map(
        &mut self,
        domid: u16,
        _console_gfn: u64,
        console_port: u32,
    ) -> Result<Self::Page, GuestPageError> {
        // The builder granted the console page as the reserved console grant.
        let page = map_guest_page(
            self.hv,
            self.frames,
            domid,
            GNTTAB_RESERVED_CONSOLE,
            console_port,
        )?;
        self.pages.console_ports.insert(domid, page.local_port());
        Ok(page)
    }

    fn unmap(&mut self, domid: u16, page: Self::Page) {
        self.pages.console_ports.remove(&domid);
        if unmap_guest_page(self.hv, self.frames, page).is_err() {
            self.pages.leaks += 1;
        }
    }

    fn notify(&mut self, domid: u16) {
        if let Some(port) = self.pages.console_ports.get(&domid) {
            // A failed notification is a dead channel; the domain is going away.
            let _ = send(self.hv, *port);
        }
    }
}

impl<H: Hypervisor + ?Sized, F: MapFrames> StoreRings for GrantMapper<'_, H, F>
where
    F::View: Deref,
    <F::View as Deref>::Target: RingPage,
{
    fn map(&mut self, domid: u16, _store_gfn: u64, store_port: u32) -> Result<(), StoreError> {
        if self.pages.store_rings.contains_key(&domid) {
            return Err(StoreError::Exists);
        }
        let page = map_guest_page(
            self.hv,
            self.frames,
            domid,
            GNTTAB_RESERVED_XENSTORE,
            store_port,
        )
        .map_err(|e| StoreError::Other(alloc::format!("store page of {domid}: {e:?}")))?;
        keel_xenstored::prepare(&**page.view());
        self.pages.store_rings.insert(domid, page);
        Ok(())
    }

    fn unmap(&mut self, domid: u16) {
        if let Some(page) = self.pages.store_rings.remove(&domid) {
            if unmap_guest_page(self.hv, self.frames, page).is_err() {
                self.pages.leaks += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_console::XenconsInterface;
    use keel_xen::xenstore_ring::XenstoreDomainInterface;

    fn is_console_page<T: ConsolePage>() {}
    fn is_ring_page<T: RingPage>() {}

    /// The views the kernel will hand out are usable as both pages (checked when compiling).
    #[test]
    fn kernel_views_fit() {
        is_console_page::<GuestPage<&'static XenconsInterface>>();
        is_ring_page::<GuestPage<&'static XenstoreDomainInterface>>();
    }
}
